"""Anthropic Messages ingress (Claude Code) <-> canonical, checked with the official SDK."""

from __future__ import annotations

from typing import Any, cast

import anthropic
import orjson
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from pydantic import TypeAdapter

from modelroute_sidecar.canonical import ChatChunk, ChatResponse, Usage
from modelroute_sidecar.errors import GatewayError
from modelroute_sidecar.sse import SSEEvent
from modelroute_sidecar.wire.anthropic.caller import (
    AnthropicMessages,
    from_canonical,
    parse_request,
    to_canonical,
)
from modelroute_sidecar.wire.anthropic.upstream import build_request
from modelroute_sidecar.wire.gemini import upstream as gemini

from .helpers import anthropic_client, canonical_stream, chunk, events
from .test_anthropic_provider import TOOL_STREAM

D = AnthropicMessages()
STREAM_EVENT: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)

# What Claude Code sends, give or take: every field here must be accepted.
CLAUDE_CODE = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 32000,
    "stream": True,
    "temperature": 1,
    "system": [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
               {"type": "text", "text": "Be brief."}],
    "metadata": {"user_id": "user_abc_account_123_session_456"},
    "thinking": {"type": "enabled", "budget_tokens": 4000},
    "context_management": {"edits": [{"type": "clear_tool_uses_20250919"}]},
    "service_tier": "auto",
    "top_k": 5,
    "output_config": {"effort": "high"},
    "some_future_field": {"x": 1},
    "tool_choice": {"type": "auto"},
    "tools": [
        {"name": "Read", "description": "Read a file",
         "input_schema": {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
                          "additionalProperties": False, "required": ["file_path"],
                          "properties": {"file_path": {"type": "string"},
                                         "limit": {"type": "number", "exclusiveMinimum": 0}}}},
        {"name": "TodoWrite", "input_schema": {"type": "object", "properties": {}}, "cache_control": {
            "type": "ephemeral"}},
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
        {"type": "bash_20250124", "name": "bash"},
    ],
    "messages": [
        {"role": "user", "content": [{"type": "text", "text": "read a.txt", "cache_control": {"type": "ephemeral"}}]},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "I should read it.", "signature": "sig"},
            {"type": "redacted_thinking", "data": "xyz"},
            {"type": "text", "text": "Reading."},
            {"type": "tool_use", "id": "toolu_01", "name": "Read", "input": {"file_path": "a.txt"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01", "is_error": False, "content": [
                {"type": "text", "text": "hello"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}}]},
            {"type": "text", "text": "and now?"}]},
    ],
}


def test_claude_code_request_parses_and_translates() -> None:
    ing = D.parse(orjson.dumps(CLAUDE_CODE))
    assert (ing.model, ing.stream) == ("claude-sonnet-4-5", True)
    canon = D.to_canonical(ing)
    assert canon["messages"] == [
        {"role": "system", "content": "You are Claude Code.\n\nBe brief."},
        {"role": "user", "content": "read a.txt"},
        {"role": "assistant", "content": "Reading.", "tool_calls": [
            {"id": "toolu_01", "type": "function",
             "function": {"name": "Read", "arguments": '{"file_path":"a.txt"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_01", "content": "hello"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
                                     {"type": "text", "text": "and now?"}]},
    ]
    assert [t["function"]["name"] for t in canon["tools"]] == ["Read", "TodoWrite"]
    assert canon["tool_choice"] == "auto"
    assert canon["temperature"] == 1
    assert "max_completion_tokens" not in canon  # 32000 is "as much as it takes"
    for dropped in ("thinking", "metadata", "context_management", "top_k", "service_tier", "some_future_field"):
        assert dropped not in canon
    # ... and every backend's translator takes it.
    g = orjson.dumps(gemini.build_request(canon, "gemini-2.5-pro")).decode()
    assert "additionalProperties" not in g and "$schema" not in g and "exclusiveMinimum" not in g
    a = build_request(canon, "claude-sonnet-4-5", True)
    assert a["messages"][1]["content"][1] == {"type": "tool_use", "id": "toolu_01", "name": "Read",
                                              "input": {"file_path": "a.txt"}}


PARSE_ERRORS: list[tuple[bytes, str]] = [
    (b"{not json", "There was an error parsing the body of your request: it is not valid JSON"),
    (b"[]", "The request body must be a JSON object."),
    (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 5}', "model: Field required"),
    (b'{"model": "m", "max_tokens": 5}', "messages: Field required"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "x"}]}', "max_tokens: Field required"),
    (b'{"model": "m", "messages": [], "max_tokens": 5}', "messages: at least one message is required"),
    # Anthropic's own words (Claude Code falls back on them): a system message must follow a user turn.
    (b'{"model": "m", "messages": [{"role": "system", "content": "x"}], "max_tokens": 5}',
     'messages: Unexpected role "system". The Messages API accepts a top-level `system` parameter, not '
     '"system" as an input message role.'),
    (b'{"model": "m", "messages": [{"role": "tool", "content": "x"}], "max_tokens": 5}',
     "messages.0.role: Input should be 'user', 'assistant' or 'system'"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}',
     "max_tokens: Input should be greater than or equal to 1"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": "lots"}',
     "max_tokens: Input should be a valid integer"),
    # Strict, as the OpenAI dialects: no coercion, and no number JSON cannot carry, anywhere.
    (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": "5"}',
     "max_tokens: Input should be a valid integer"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5.0}',
     "max_tokens: Input should be a valid integer"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5, "stream": "yes"}',
     "stream: Input should be a valid boolean"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5, "stream": 1}',
     "stream: Input should be a valid boolean"),
    (b'{"model": 5, "messages": [{"role": "user", "content": "x"}], "max_tokens": 5}',
     "model: Input should be a valid string"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5, "temperature": NaN}',
     "temperature: Input should be a finite number"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5, "temperature": "0.5"}',
     "temperature: Input should be a valid number"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5, "top_k": "5"}',
     "top_k: Input should be a valid integer"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5, "top_p": 1e999}',
     "top_p: Input should be a finite number"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5, "future": [1, -Infinity]}',
     "future.1: Input should be a finite number"),
    (b'{"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "x", "n": NaN}]}], '
     b'"max_tokens": 5}', "messages.0.content.0.n: Input should be a finite number"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5, "metadata": "me"}',
     "metadata: Input should be an object"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5, "seed": 1' + b"0" * 1000 + b"}",
     "seed: Input should be a 64-bit integer"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5, "stop_sequences": "END"}',
     "stop_sequences: Input should be a valid array"),
]


@pytest.mark.parametrize(("body", "message"), PARSE_ERRORS)
def test_parse_errors_are_anthropic_400s(body: bytes, message: str) -> None:
    with pytest.raises(GatewayError) as e:
        D.parse(body)
    assert (e.value.status, e.value.type, e.value.message) == (400, "invalid_request_error", message)
    assert orjson.loads(D.render_error(e.value)) == {"type": "error", "error": {
        "type": "invalid_request_error", "message": message}}


TO_CANONICAL: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("string system", {"system": "s"}, {"messages": [{"role": "system", "content": "s"},
                                                      {"role": "user", "content": "hi"}]}),
    ("small max_tokens kept", {"max_tokens": 100}, {"max_completion_tokens": 100}),
    ("stop_sequences -> stop (max 4)", {"stop_sequences": list("abcdef")}, {"stop": list("abcd")}),
    ("tool_choice any -> required", {"tools": [{"name": "f", "input_schema": {"type": "object"}}],
                                     "tool_choice": {"type": "any"}}, {"tool_choice": "required"}),
    ("tool_choice tool -> named", {"tools": [{"name": "f", "input_schema": {"type": "object"}}],
                                   "tool_choice": {"type": "tool", "name": "f"}},
     {"tool_choice": {"type": "function", "function": {"name": "f"}}}),
    ("disable_parallel_tool_use", {"tools": [{"name": "f", "input_schema": {"type": "object"}}],
                                   "tool_choice": {"type": "auto", "disable_parallel_tool_use": True}},
     {"tool_choice": "auto", "parallel_tool_calls": False}),
    ("tool_choice without client tools is dropped",
     {"tools": [{"type": "web_search_20250305", "name": "web_search"}], "tool_choice": {"type": "any"}},
     {"tools": None, "tool_choice": None}),
    ("structured output", {"output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}}},
     {"response_format": {"type": "json_schema", "json_schema": {"name": "output", "schema": {"type": "object"}}}}),
    ("stream asks for usage", {"stream": True}, {"stream": True, "stream_options": {"include_usage": True}}),
]


@pytest.mark.parametrize(("name", "extra", "expect"), TO_CANONICAL, ids=[c[0] for c in TO_CANONICAL])
def test_to_canonical(name: str, extra: dict[str, Any], expect: dict[str, Any]) -> None:
    req = {"model": "m", "max_tokens": 20000, "messages": [{"role": "user", "content": "hi"}], **extra}
    canon = to_canonical(D.parse(orjson.dumps(req)).body)
    for k, v in expect.items():
        assert canon.get(k) == v, k


def _canon(message: dict[str, Any], finish: str, usage: dict[str, Any] | None = None) -> ChatResponse:
    return cast(ChatResponse, {
        "id": "chatcmpl-abc", "object": "chat.completion", "created": 1, "model": "gpt-x",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": usage or {"prompt_tokens": 30, "completion_tokens": 7, "total_tokens": 37,
                           "prompt_tokens_details": {"cached_tokens": 20}}})


FROM_CANONICAL: list[tuple[dict[str, Any], str, list[dict[str, Any]], str]] = [
    ({"role": "assistant", "content": "Hi"}, "stop", [{"type": "text", "text": "Hi"}], "end_turn"),
    ({"role": "assistant", "content": "cut"}, "length", [{"type": "text", "text": "cut"}], "max_tokens"),
    ({"role": "assistant", "content": None, "refusal": "no"}, "content_filter", [{"type": "text", "text": "no"}],
     "refusal"),
    ({"role": "assistant", "content": "ok", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": [1]}'}}]},
     "tool_calls",
     [{"type": "text", "text": "ok"}, {"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": [1]}}],
     "tool_use"),
    ({"role": "assistant", "content": ""}, "stop", [], "end_turn"),
]


@pytest.mark.parametrize(("message", "finish", "content", "stop"), FROM_CANONICAL)
def test_from_canonical_is_a_valid_message(message: dict[str, Any], finish: str, content: list[dict[str, Any]],
                                           stop: str) -> None:
    out = from_canonical(_canon(message, finish), "claude-alias")
    msg = Message.model_validate(out)
    assert msg.id.startswith("msg_") and msg.model == "claude-alias"
    assert out["content"] == content
    assert msg.stop_reason == stop
    assert (msg.usage.input_tokens, msg.usage.cache_read_input_tokens, msg.usage.output_tokens) == (10, 20, 7)
    # and what the SDK makes of the bytes the gateway sends:
    sdk = anthropic_client(orjson.dumps(out)).messages.create(model="claude-alias", max_tokens=5,
                                                              messages=[{"role": "user", "content": "x"}])
    assert sdk.model_dump(exclude_none=True) == msg.model_dump(exclude_none=True)


def _encode(chunks: list[ChatChunk], model: str = "claude-alias") -> bytes:
    enc = D.stream_encoder(model, True)
    return b"".join(enc.chunk(c) for c in chunks) + enc.end()


STREAM_CHUNKS = canonical_stream(["Let me ", "look."], [("call_a", "get", ['{"city"', ': "Paris"}']),
                                                         ("call_b", "now", [])],
                                 "tool_calls", Usage(120, 33, 100, 5))


def test_stream_event_sequence() -> None:
    evs = events(_encode(STREAM_CHUNKS))
    for name, data in evs:
        assert name == data["type"]
        if name != "ping":  # not part of the SDK's event union
            STREAM_EVENT.validate_python(data)
    assert [d["type"] for _, d in evs] == [
        "message_start", "ping",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_stop",
        "message_delta", "message_stop"]
    starts = [d for _, d in evs if d["type"] == "content_block_start"]
    assert [s["index"] for s in starts] == [0, 1, 2]
    assert starts[1]["content_block"] == {"type": "tool_use", "id": "call_a", "name": "get", "input": {}}
    delta = evs[-2][1]
    assert delta["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert delta["usage"] == {"input_tokens": 15, "output_tokens": 33, "cache_creation_input_tokens": 5,
                              "cache_read_input_tokens": 100}


def test_sdk_accumulates_the_stream() -> None:
    client = anthropic_client(_encode(STREAM_CHUNKS), stream=True)
    with client.messages.stream(model="claude-alias", max_tokens=10,
                                messages=[{"role": "user", "content": "x"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == "Let me look."
    assert [b.type for b in final.content] == ["text", "tool_use", "tool_use"]
    assert final.content[1].input == {"city": "Paris"} and final.content[2].input == {}  # type: ignore[union-attr]
    assert final.stop_reason == "tool_use"
    assert (final.usage.input_tokens, final.usage.output_tokens, final.usage.cache_read_input_tokens,
            final.usage.cache_creation_input_tokens) == (15, 33, 100, 5)


def test_stream_error_event_raises_in_the_sdk() -> None:
    enc = D.stream_encoder("m", True)
    body = enc.chunk(chunk({"role": "assistant", "content": ""})) + enc.chunk(chunk({"content": "par"}))
    body += enc.error(GatewayError(502, "upstream went away", type="overloaded_error"))
    evs = events(body)
    assert evs[-1] == ("error", {"type": "error", "error": {"type": "overloaded_error",
                                                            "message": "upstream went away"}})
    client = anthropic_client(body, stream=True)
    with pytest.raises(anthropic.APIStatusError, match="upstream went away"), client.messages.stream(
            model="m", max_tokens=10, messages=[{"role": "user", "content": "x"}]) as s:
        s.get_final_message()


def test_empty_stream_still_ends_properly() -> None:
    enc = D.stream_encoder("m", True)
    assert [d["type"] for _, d in events(enc.end())] == ["message_start", "ping", "message_delta", "message_stop"]


@pytest.mark.parametrize(("err", "etype"), [
    (GatewayError(400, "x"), "invalid_request_error"),
    (GatewayError(404, "x", type="not_found_error"), "not_found_error"),
    (GatewayError(413, "x"), "request_too_large"),
    (GatewayError(429, "x", type="rate_limit_error"), "rate_limit_error"),
    (GatewayError(503, "x", type="overloaded_error"), "overloaded_error"),
    (GatewayError(504, "x", type="timeout_error"), "timeout_error"),
    (GatewayError(502, "x", type="api_error"), "api_error"),
])
def test_render_error(err: GatewayError, etype: str) -> None:
    assert orjson.loads(D.render_error(err)) == {"type": "error", "error": {"type": etype, "message": "x"}}


def test_native_tap_and_usage() -> None:
    from modelroute_sidecar.sse import SSEParser

    tap = D.native_tap(True)
    for ev in SSEParser().feed(TOOL_STREAM):
        assert tap.feed(ev)
    assert tap.done and tap.error is None
    assert tap.usage == Usage(10, 42, 3, 0)
    tap = D.native_tap(True)
    tap.feed(SSEEvent("error", b'{"type":"error","error":{"type":"overloaded_error","message":"busy"}}', b""))
    assert tap.error is not None and tap.error.retryable and tap.error.type == "overloaded_error"
    assert D.native_usage({"usage": {"input_tokens": 1, "output_tokens": 2, "cache_creation_input_tokens": 3}}) == (
        Usage(4, 2, 0, 3))
    assert AnthropicMessages.forward_headers == ("anthropic-version", "anthropic-beta")


def test_current_roles_and_blocks_translate() -> None:
    """Every role and block of the current Messages API is accepted; what another provider can
    use arrives, what it cannot (thinking, server tools, tool references) is dropped."""
    body = {"model": "m", "max_tokens": 100, "messages": [
        {"role": "user", "content": [
            {"type": "text", "text": "read these"},
            {"type": "document", "source": {"type": "content", "content": [{"type": "text", "text": "doc text"}]}},
            {"type": "document", "source": {"type": "url", "url": "https://x.test/a.pdf"}},
            {"type": "container_upload", "file_id": "file_1"}]},
        {"role": "system", "content": "be brief"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "sig"},
            {"type": "redacted_thinking", "data": "xyz"},
            {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "q"}},
            {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []},
            {"type": "text", "text": "looking"},
            {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"file_path": "a"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [
            {"type": "text", "text": "line"},
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "plain"}},
            {"type": "search_result", "source": "s", "title": "t", "content": [{"type": "text", "text": "found"}]},
            {"type": "tool_reference", "tool_name": "Bash"}]}]},
    ]}
    canon = to_canonical(parse_request(orjson.dumps(body)))
    assert canon["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "read these"}, {"type": "text", "text": "doc text"},
                                     {"type": "text", "text": "[document: https://x.test/a.pdf]"}]},
        {"role": "system", "content": "be brief"},
        {"role": "assistant", "content": "looking", "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "Read", "arguments": '{"file_path":"a"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "line\nplain\nfound"},
    ]
