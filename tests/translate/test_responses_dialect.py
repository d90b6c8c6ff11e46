"""OpenAI Responses ingress (Codex) <-> canonical, checked with the official openai SDK."""

from __future__ import annotations

from typing import Any, cast

import openai
import orjson
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from modelroute_sidecar.canonical import ChatChunk, ChatResponse, Usage
from modelroute_sidecar.config import ProviderKeyConfig, from_data
from modelroute_sidecar.errors import GatewayError
from modelroute_sidecar.providers.openai import OpenAIAdapter, OpenAICompatibleAdapter
from modelroute_sidecar.sse import SSEParser
from modelroute_sidecar.wire.base import Ingress
from modelroute_sidecar.wire.openai_responses.caller import OpenAIResponses, from_canonical, to_canonical
from modelroute_sidecar.wire.pairs import BRIDGE, TRANSLATE, passes, path

from .helpers import canonical_stream, chunk, events, openai_client

D = OpenAIResponses()
STREAM_EVENT: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)

# What Codex sends, give or take.
CODEX: dict[str, Any] = {
    "model": "gpt-5-codex",
    "instructions": "You are Codex.",
    "input": [
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "<env>linux</env>"}]},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "fix it"},
            {"type": "input_image", "image_url": "data:image/png;base64,AAA", "detail": "auto"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAA"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Looking."}]},
        {"type": "function_call", "name": "shell", "arguments": '{"command":["ls"]}', "call_id": "call_1"},
        {"type": "function_call", "name": "shell", "arguments": '{"command":["pwd"]}', "call_id": "call_2"},
        {"type": "function_call_output", "call_id": "call_1", "output": "a.py"},
        {"type": "function_call_output", "call_id": "call_2", "output": [
            {"type": "input_text", "text": "/src"}, {"type": "input_image", "image_url": "https://x.test/s.png"}]},
        {"type": "custom_tool_call", "name": "apply_patch", "input": "*** Begin Patch", "call_id": "call_3"},
        {"type": "custom_tool_call_output", "call_id": "call_3", "output": "Done"},
    ],
    "tools": [
        {"type": "function", "name": "shell", "description": "Run", "strict": False,
         "parameters": {"type": "object", "properties": {"command": {"type": "array", "items": {"type": "string"}}},
                        "required": ["command"], "additionalProperties": False}},
        {"type": "custom", "name": "apply_patch", "format": {"type": "grammar", "syntax": "lark", "definition": "x"}},
        {"type": "web_search"},
        {"type": "local_shell"},
    ],
    "tool_choice": "auto",
    "parallel_tool_calls": True,
    "reasoning": {"effort": "medium", "summary": "auto"},
    "store": False,
    "stream": True,
    "include": ["reasoning.encrypted_content"],
    "prompt_cache_key": "conv-1",
    "text": {"verbosity": "low"},
}


def test_codex_request_parses_and_translates() -> None:
    ing = D.parse(orjson.dumps(CODEX))
    assert (ing.model, ing.stream) == ("gpt-5-codex", True)
    canon = D.to_canonical(ing)
    assert canon["messages"] == [
        {"role": "system", "content": "You are Codex."},
        {"role": "developer", "content": "<env>linux</env>"},
        {"role": "user", "content": [{"type": "text", "text": "fix it"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}}]},
        {"role": "assistant", "content": "Looking.", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "shell", "arguments": '{"command":["ls"]}'}},
            {"id": "call_2", "type": "function", "function": {"name": "shell", "arguments": '{"command":["pwd"]}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "a.py"},
        {"role": "tool", "tool_call_id": "call_2", "content": "/src"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x.test/s.png"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_3", "type": "function",
             "function": {"name": "apply_patch", "arguments": '{"input":"*** Begin Patch"}'}}]},
        {"role": "tool", "tool_call_id": "call_3", "content": "Done"},
    ]
    assert canon["tools"] == [
        {"type": "function", "function": {
            "name": "shell", "description": "Run", "strict": False, "parameters": CODEX["tools"][0]["parameters"]}},
        # A freeform tool becomes a function of one string, `input` (and comes back as one).
        {"type": "function", "function": {"name": "apply_patch", "parameters": {
            "type": "object", "properties": {"input": {"type": "string", "description": "The tool's raw input."}},
            "required": ["input"], "additionalProperties": False}}}]
    assert (canon["tool_choice"], canon["parallel_tool_calls"]) == ("auto", True)
    assert canon["reasoning_effort"] == "medium"
    assert canon["prompt_cache_key"] == "conv-1"
    assert canon["stream_options"] == {"include_usage": True}
    for dropped in ("store", "include", "text", "reasoning", "instructions", "input"):
        assert dropped not in canon


TO_CANONICAL: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("string input", {"input": "hello"}, {"messages": [{"role": "user", "content": "hello"}]}),
    ("max_output_tokens", {"input": "x", "max_output_tokens": 64}, {"max_completion_tokens": 64}),
    ("named tool_choice", {"input": "x", "tools": [{"type": "function", "name": "f"}],
                           "tool_choice": {"type": "function", "name": "f"}},
     {"tool_choice": {"type": "function", "function": {"name": "f"}}}),
    ("allowed_tools -> mode", {"input": "x", "tools": [{"type": "function", "name": "f"}],
                               "tool_choice": {"type": "allowed_tools", "mode": "required", "tools": []}},
     {"tool_choice": "required"}),
    ("text.format json_schema", {"input": "x", "text": {"format": {"type": "json_schema", "name": "n",
                                                                   "schema": {"type": "object"}, "strict": True}}},
     {"response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "object"},
                                                                 "strict": True}}}),
    ("text.format json_object", {"input": "x", "text": {"format": {"type": "json_object"}}},
     {"response_format": {"type": "json_object"}}),
    ("parallel_tool_calls without tools is dropped", {"input": "x", "parallel_tool_calls": False},
     {"parallel_tool_calls": None}),
    ("a message item without type", {"input": [{"role": "user", "content": "typed-less"}]},
     {"messages": [{"role": "user", "content": "typed-less"}]}),
]


@pytest.mark.parametrize(("name", "req", "expect"), TO_CANONICAL, ids=[c[0] for c in TO_CANONICAL])
def test_to_canonical(name: str, req: dict[str, Any], expect: dict[str, Any]) -> None:
    canon = to_canonical(D.parse(orjson.dumps({"model": "m", **req})).body)
    for k, v in expect.items():
        assert canon.get(k) == v, k


@pytest.mark.parametrize("req", [
    {"model": "m", "input": "x", "previous_response_id": "resp_1"},
    {"model": "m", "input": "x", "conversation": "conv_1"},
    {"model": "m"},
])
def test_stateful_or_empty_requests_are_400_when_translated(req: dict[str, Any]) -> None:
    ing = D.parse(orjson.dumps(req))  # valid: an OpenAI backend passes it through
    with pytest.raises(GatewayError) as e:
        D.to_canonical(ing)
    assert e.value.status == 400
    body = orjson.loads(D.render_error(e.value))
    assert set(body["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(("body", "param"), [
    (b'{"input": "x"}', "model"),
    (b'{"model": 5, "input": "x"}', "model"),
    (b'{"model": "m", "input": 5}', "input"),
    (b'{"model": "m", "max_output_tokens": "many"}', "max_output_tokens"),
    (b"{oops", None),
])
def test_parse_errors_are_openai_400s(body: bytes, param: str | None) -> None:
    with pytest.raises(GatewayError) as e:
        D.parse(body)
    assert e.value.status == 400 and e.value.param == param


def _canon(message: dict[str, Any], finish: str) -> ChatResponse:
    return cast(ChatResponse, {
        "id": "chatcmpl-9", "object": "chat.completion", "created": 1700000000, "model": "x",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 50, "completion_tokens": 8, "total_tokens": 58,
                  "prompt_tokens_details": {"cached_tokens": 40},
                  "completion_tokens_details": {"reasoning_tokens": 3}}})


@pytest.mark.parametrize(("message", "finish", "types", "status"), [
    ({"role": "assistant", "content": "Hi"}, "stop", ["message"], "completed"),
    ({"role": "assistant", "content": "cut"}, "length", ["message"], "incomplete"),
    ({"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}},
        {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": "{}"}}]},
     "tool_calls", ["function_call", "function_call"], "completed"),
    ({"role": "assistant", "content": "ok", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
     "tool_calls", ["message", "function_call"], "completed"),
])
def test_from_canonical_is_a_valid_response(message: dict[str, Any], finish: str, types: list[str],
                                            status: str) -> None:
    out = from_canonical(_canon(message, finish), "codex-alias")
    resp = Response.model_validate(out)
    assert resp.id.startswith("resp_") and resp.object == "response" and resp.model == "codex-alias"
    assert [o.type for o in resp.output] == types
    assert resp.status == status
    if status == "incomplete":
        assert resp.incomplete_details is not None and resp.incomplete_details.reason == "max_output_tokens"
    assert resp.usage is not None
    assert (resp.usage.input_tokens, resp.usage.output_tokens, resp.usage.total_tokens) == (50, 8, 58)
    assert resp.usage.input_tokens_details.cached_tokens == 40
    assert resp.usage.output_tokens_details.reasoning_tokens == 3
    calls = [o for o in resp.output if o.type == "function_call"]
    assert [(c.call_id, c.name, c.arguments) for c in calls] == [
        (tc["id"], tc["function"]["name"], tc["function"]["arguments"]) for tc in message.get("tool_calls", [])]
    sdk = openai_client(orjson.dumps(out)).responses.create(model="codex-alias", input="x")
    assert sdk.output_text == (message["content"] or "")


def _encode(chunks: list[ChatChunk]) -> bytes:
    enc = D.stream_encoder("codex-alias", True)
    return b"".join(enc.chunk(c) for c in chunks) + enc.end()


STREAM_CHUNKS = canonical_stream(["Hel", "lo"], [("call_a", "get", ['{"city"', ': "Paris"}']),
                                                 ("call_b", "now", [])], "tool_calls", Usage(90, 12, 64, 0))


def test_stream_event_sequence() -> None:
    evs = events(_encode(STREAM_CHUNKS))
    for i, (name, data) in enumerate(evs):
        assert name == data["type"]
        assert data["sequence_number"] == i
        STREAM_EVENT.validate_python(data)
    assert [d["type"] for _, d in evs] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.done", "response.output_item.done",
        "response.completed"]
    final = Response.model_validate(evs[-1][1]["response"])
    assert [o.type for o in final.output] == ["message", "function_call", "function_call"]
    assert final.output_text == "Hello"
    assert final.usage is not None and final.usage.input_tokens_details.cached_tokens == 64
    assert {d["response"]["id"] for _, d in evs if "response" in d} == {final.id}


def test_sdk_accumulates_the_stream() -> None:
    client = openai_client(_encode(STREAM_CHUNKS), stream=True)
    with client.responses.stream(model="codex-alias", input="x") as s:
        deltas = [e.delta for e in s if e.type == "response.output_text.delta"]
        final = s.get_final_response()
    assert "".join(deltas) == "Hello" == final.output_text
    calls = [o for o in final.output if o.type == "function_call"]
    assert [(c.call_id, c.name, c.arguments) for c in calls] == [
        ("call_a", "get", '{"city": "Paris"}'), ("call_b", "now", "")]


def test_incomplete_stream_ends_with_response_incomplete() -> None:
    evs = events(_encode(canonical_stream(["cut"], [], "length", Usage(1, 1))))
    assert evs[-1][0] == "response.incomplete"
    assert evs[-1][1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert evs[-1][1]["response"]["output"][0]["status"] == "incomplete"


def test_stream_error_events() -> None:
    enc = D.stream_encoder("m", True)
    body = enc.chunk(chunk({"role": "assistant", "content": ""})) + enc.chunk(chunk({"content": "par"}))
    body += enc.error(GatewayError(502, "upstream went away", type="api_error", code="upstream_error"))
    evs = events(body)
    for _, data in evs:
        STREAM_EVENT.validate_python(data)
    assert [n for n, _ in evs[-2:]] == ["error", "response.failed"]
    assert evs[-2][1]["message"] == "upstream went away"
    failed = evs[-1][1]["response"]
    assert failed["status"] == "failed" and failed["error"] == {"code": "server_error", "message": "upstream went away"}


def test_native_tap() -> None:
    tap = D.native_tap(True)
    for ev in SSEParser().feed(_encode(STREAM_CHUNKS)):
        assert tap.feed(ev)
    assert tap.done and tap.error is None and tap.usage == Usage(90, 12, 64, 0)
    tap = D.native_tap(True)
    enc = D.stream_encoder("m", True)
    for ev in SSEParser().feed(enc.error(GatewayError(500, "boom", type="api_error"))):
        tap.feed(ev)
    assert tap.error is not None and tap.error.message == "boom"
    assert D.native_usage({"usage": {"input_tokens": 5, "output_tokens": 2, "total_tokens": 7,
                                     "input_tokens_details": {"cached_tokens": 1, "cache_write_tokens": 2}}}) == (
        Usage(5, 2, 1, 2))


def test_openai_backends_pass_responses_through() -> None:
    pk = from_data({"name": "o", "provider": "openai", "baseURL": "https://api.openai.com/v1"}, ProviderKeyConfig)
    prep = OpenAIAdapter(pk).native("openai-responses", {"model": "alias", "input": "x", "store": False},
                                    "gpt-5", True)
    assert prep.url == "https://api.openai.com/v1/responses"
    assert orjson.loads(prep.body) == {"model": "gpt-5", "input": "x", "store": False}
    assert path("openai-responses", "openai-compatible") is BRIDGE
    assert path("openai-responses", "azure-openai") is TRANSLATE


def test_sdk_raises_on_error_body() -> None:
    err = GatewayError(404, "The model 'x' does not exist", type="not_found_error", param="model",
                       code="model_not_found")
    client = openai_client(D.render_error(err), status=404)
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.create(model="x", input="hi")
    assert e.value.code == "model_not_found"


# What Codex 0.171 sends for its default model: no top-level `tools`; an `additional_tools`
# input item holding namespaces of function and freeform (custom) tools.
CODEX_LITE: dict[str, Any] = {
    "model": "gpt-6.2-sol", "stream": True,
    "input": [
        {"type": "additional_tools", "id": "at_1", "role": "developer", "tools": [
            {"type": "namespace", "name": "functions", "description": "", "tools": [
                {"type": "custom", "name": "exec", "description": "Run JavaScript",
                 "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"}},
                {"type": "function", "name": "wait", "strict": False,
                 "parameters": {"type": "object", "properties": {"ms": {"type": "number"}}}}]},
            {"type": "namespace", "name": "clock", "description": "Time", "tools": [
                {"type": "function", "name": "sleep", "parameters": {"type": "object", "properties": {}}}]}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "go"}]},
    ],
}


def test_additional_tools_namespaces_and_freeform_tools_translate_both_ways() -> None:
    ing = D.parse(orjson.dumps(CODEX_LITE))
    canon = D.to_canonical(ing)
    assert [t["function"]["name"] for t in canon["tools"]] == ["exec", "wait", "sleep"]
    assert canon["tools"][0]["function"]["parameters"]["required"] == ["input"]
    assert canon["messages"] == [{"role": "user", "content": "go"}]
    answer: ChatResponse = {"id": "chatcmpl-9", "created": 1, "choices": [{
        "index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None, "tool_calls": [
            {"id": "call_x", "type": "function", "function": {"name": "exec", "arguments": '{"input": "text(1)"}'}},
            {"id": "call_y", "type": "function", "function": {"name": "sleep", "arguments": "{}"}}]}}]}
    out = Response.model_validate(D.response_for(answer, ing))
    custom, fn = out.output
    assert (custom.type, custom.call_id, custom.name, custom.input) == (  # type: ignore[union-attr]
        "custom_tool_call", "call_x", "exec", "text(1)")
    assert (fn.type, fn.name, fn.arguments) == ("function_call", "sleep", "{}")  # type: ignore[union-attr]
    raw = D.response_for(answer, ing)["output"]
    assert (raw[0]["namespace"], raw[1]["namespace"]) == ("functions", "clock")
    # Streamed: the freeform input is whole once its JSON arguments are.
    enc = D.encoder_for(ing)
    body = b"".join(enc.chunk(c) for c in canonical_stream(
        [], [("call_x", "exec", ['{"inp', 'ut": "text(', '1)"}'])], "tool_calls", Usage(3, 5))) + enc.end()
    evs = events(body)
    for _, data in evs:
        STREAM_EVENT.validate_python(data)
    kinds = [d["type"] for _, d in evs]
    assert "response.function_call_arguments.delta" not in kinds
    done = next(d for _, d in evs if d["type"] == "response.custom_tool_call_input.done")
    assert done["input"] == "text(1)"
    final = evs[-1][1]["response"]["output"][0]
    assert (final["type"], final["input"], final["namespace"]) == ("custom_tool_call", "text(1)", "functions")
    # A later turn sends the call and its output back: they become a tool call and its result.
    later = {**CODEX_LITE, "input": [*CODEX_LITE["input"],
             {"type": "custom_tool_call", "namespace": "functions", "name": "exec", "call_id": "call_x",
              "input": "text(1)"},
             {"type": "custom_tool_call_output", "call_id": "call_x",
              "output": [{"type": "input_text", "text": "1"}]}]}
    msgs = D.to_canonical(Ingress(later, "gpt-6.2-sol", True, True))["messages"]
    assert msgs[-2:] == [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_x", "type": "function", "function": {
            "name": "exec", "arguments": '{"input":"text(1)"}'}}]},
        {"role": "tool", "tool_call_id": "call_x", "content": "1"}]


@pytest.mark.parametrize(("setting", "passes_through"), [("native", True), ("auto", True), ("bridge", False)])
def test_responses_api_setting(setting: str, passes_through: bool) -> None:
    pk = from_data({"name": "c", "provider": "openai-compatible",
                    "baseURL": "http://vllm.test/v1", "responsesAPI": setting}, ProviderKeyConfig)
    adapter = OpenAICompatibleAdapter(pk)
    assert passes("openai-responses", adapter) is passes_through
    assert passes("openai-chat", adapter)
    assert adapter.probes_responses is (setting == "auto")
    adapter.bridge_responses()
    assert not passes("openai-responses", adapter)
    assert adapter.probes_responses is (setting == "auto")  # requests sent before the bridge still meet a 404


def test_reasoning_comes_back_as_a_reasoning_summary() -> None:
    chunks = [chunk({"role": "assistant", "content": ""}), chunk({"reasoning_content": "Let me "}),
              chunk({"reasoning_content": "think."}), chunk({"content": "Done"}), chunk({}, "stop")]
    evs = events(_encode(chunks))
    for _, data in evs:
        STREAM_EVENT.validate_python(data)
    kinds = [d["type"] for _, d in evs]
    assert kinds[2:7] == ["response.output_item.added", "response.reasoning_summary_part.added",
                          "response.reasoning_summary_text.delta", "response.reasoning_summary_text.delta",
                          "response.reasoning_summary_text.done"]
    final = Response.model_validate(evs[-1][1]["response"])
    assert [o.type for o in final.output] == ["reasoning", "message"]
    assert final.output[0].summary[0].text == "Let me think."  # type: ignore[union-attr]
    answer: ChatResponse = {"id": "chatcmpl-1", "created": 1, "choices": [{
        "index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": "Done", "reasoning_content": "Let me think."}}]}
    out = Response.model_validate(from_canonical(answer, "m"))
    assert [o.type for o in out.output] == ["reasoning", "message"] and out.output_text == "Done"
