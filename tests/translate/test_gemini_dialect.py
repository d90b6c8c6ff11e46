"""The Gemini caller dialect's pure translators: GenerateContentRequest -> canonical, and
canonical responses and chunks -> Gemini answers, in both stream framings."""

from __future__ import annotations

from typing import Any, cast

import orjson
import pytest

from modelroute_sidecar.canonical import ChatChunk, ChatResponse, Usage
from modelroute_sidecar.errors import GatewayError
from modelroute_sidecar.sse import SSEParser
from modelroute_sidecar.wire.gemini.caller import (
    GeminiGenerate,
    _schema,
    estimate_tokens,
    from_canonical,
    parse_count,
    parse_generate,
    status_name,
    to_canonical,
    usage_metadata,
)


def canon(body: dict[str, Any], stream: bool = False) -> dict[str, Any]:
    return cast(dict[str, Any], to_canonical(parse_generate(orjson.dumps(body)), "route", stream))


@pytest.mark.parametrize(("gemini", "json_schema"), [
    ({"type": "STRING"}, {"type": "string"}),
    ({"type": "OBJECT", "properties": {"a": {"type": "INTEGER", "nullable": True}}, "propertyOrdering": ["a"]},
     {"type": "object", "properties": {"a": {"type": ["integer", "null"]}}}),
    ({"type": "ARRAY", "items": {"type": "NUMBER", "enum": ["1"]}}, {"type": "array", "items": {"type": "number",
                                                                                                 "enum": ["1"]}}),
    ({"anyOf": [{"type": "BOOLEAN"}, {"type": "NULL"}]}, {"anyOf": [{"type": "boolean"}, {"type": "null"}]}),
])
def test_schema_becomes_json_schema(gemini: dict[str, Any], json_schema: dict[str, Any]) -> None:
    assert _schema(gemini) == json_schema


def test_conversation_with_tools() -> None:
    out = canon({
        "systemInstruction": {"parts": [{"text": "be "}, {"text": "brief"}]},
        "contents": [
            {"role": "user", "parts": [{"text": "look "}, {"text": "up x"}]},
            {"role": "model", "parts": [{"text": "thinking", "thought": True},
                                        {"functionCall": {"name": "f", "args": {"q": 1}}, "thoughtSignature": "sig"},
                                        {"functionCall": {"name": "g", "args": {}, "id": "mine"}}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "g", "id": "mine", "response": {"output": "G"}}},
                                       {"functionResponse": {"name": "f", "response": {"a": 1}}},
                                       {"text": "and now?"}]},
        ],
        "tools": [{"functionDeclarations": [{"name": "f", "parameters": {"type": "OBJECT"}},
                                            {"name": "g", "parametersJsonSchema": {"type": "object"}}]}],
        "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["f"]}},
        "generationConfig": {"maxOutputTokens": 9, "topP": 0.5, "stopSequences": list("abcdef"),
                             "thinkingConfig": {"thinkingBudget": 20000}},
    }, stream=True)
    msgs = out["messages"]
    assert msgs[0] == {"role": "system", "content": "be brief"}
    assert msgs[1] == {"role": "user", "content": "look up x"}
    call_f, call_g = msgs[2]["tool_calls"]
    assert msgs[2]["reasoning_content"] == "thinking" and msgs[2]["content"] is None
    assert call_f["function"] == {"name": "f", "arguments": '{"q":1}'}
    assert call_f["extra_content"] == {"google": {"thought_signature": "sig"}}
    assert call_g["id"] == "mine"
    # Results answer their calls (by id, else by name), before the user's new text.
    assert msgs[3] == {"role": "tool", "tool_call_id": "mine", "content": "G"}
    assert msgs[4] == {"role": "tool", "tool_call_id": call_f["id"], "content": '{"a":1}'}
    assert msgs[5] == {"role": "user", "content": "and now?"}
    assert out["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert [t["function"]["parameters"] for t in out["tools"]] == [{"type": "object"}, {"type": "object"}]
    assert (out["max_completion_tokens"], out["top_p"], out["stop"]) == (9, 0.5, list("abcd"))
    assert out["reasoning_effort"] == "high"
    assert out["stream"] is True and out["stream_options"] == {"include_usage": True}


def test_media_parts() -> None:
    [_, user] = canon({"systemInstruction": {"parts": [{"text": "s"}]}, "contents": [{"parts": [
        {"text": "see"}, {"inlineData": {"mimeType": "image/png", "data": "AAA"}},
        {"inlineData": {"mimeType": "application/pdf", "data": "BBB"}},
        {"inlineData": {"mimeType": "audio/mp3", "data": "CCC"}},
        {"fileData": {"fileUri": "https://x/y.png", "mimeType": "image/png"}}]}]})["messages"]
    assert user["content"] == [
        {"type": "text", "text": "see"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}},
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,BBB"}},
        {"type": "input_audio", "input_audio": {"data": "CCC", "format": "mp3"}},
        {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]


@pytest.mark.parametrize(("config", "fmt"), [
    ({"responseMimeType": "application/json"}, {"type": "json_object"}),
    ({"responseMimeType": "application/json", "responseSchema": {"type": "OBJECT"}},
     {"type": "json_schema", "json_schema": {"name": "response", "schema": {"type": "object"}}}),
    ({"responseMimeType": "text/plain"}, None),
])
def test_structured_output(config: dict[str, Any], fmt: dict[str, Any] | None) -> None:
    out = canon({"contents": [{"parts": [{"text": "x"}]}], "generationConfig": config})
    assert out.get("response_format") == fmt


def test_proto_field_names_are_read_and_tool_data_kept() -> None:
    req = parse_generate(b'{"system_instruction": {"parts": [{"text": "s"}]}, "contents": [{"role": "model", '
                         b'"parts": [{"function_call": {"name": "f", "args": {"my_key": 1}}}]}], '
                         b'"generation_config": {"max_output_tokens": 3}}')
    assert req["systemInstruction"] == {"parts": [{"text": "s"}]}
    assert req["contents"][0]["parts"][0]["functionCall"]["args"] == {"my_key": 1}
    assert req["generationConfig"]["maxOutputTokens"] == 3


@pytest.mark.parametrize("body", [b"", b"[]", b"{}", b'{"contents": []}', b'{"contents": [{"parts": "x"}]}',
                                  b'{"contents": [{"parts": [{"text": 1}]}]}',
                                  b'{"contents": [{"parts": [{"text": "a"}]}], "generationConfig": {"topP": NaN}}',
                                  b'{"contents": [{"parts": [{"text": "a"}]}], "generationConfig": '
                                  b'{"maxOutputTokens": 99999999999999999999999}}'])
def test_bad_bodies_are_400s(body: bytes) -> None:
    with pytest.raises(GatewayError) as e:
        parse_generate(body)
    assert e.value.status == 400


def test_count_tokens_body() -> None:
    assert parse_count(b'{"contents": [{"parts": [{"text": "a"}]}]}') == {"contents": [{"parts": [{"text": "a"}]}]}
    inner = parse_count(b'{"generateContentRequest": {"model": "models/x", "contents": [{"parts": [{"text": "a"}]}]}}')
    assert inner == {"contents": [{"parts": [{"text": "a"}]}]}
    with pytest.raises(GatewayError):
        parse_count(b"{}")
    assert estimate_tokens({"contents": [{"parts": [{"text": "x" * 400}]}]}) >= 100


RESPONSE: ChatResponse = {"id": "r1", "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
    "role": "assistant", "content": "ok", "reasoning_content": "hmm",
    "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'},
                    "extra_content": {"google": {"thought_signature": "sig"}}}]}}],
    "usage": {"prompt_tokens": 10, "completion_tokens": 7, "completion_tokens_details": {"reasoning_tokens": 2},
              "prompt_tokens_details": {"cached_tokens": 4}}}


def test_response() -> None:
    out = from_canonical(RESPONSE, "route")
    [cand] = out["candidates"]
    assert cand["content"] == {"role": "model", "parts": [
        {"text": "hmm", "thought": True}, {"text": "ok"},
        {"functionCall": {"id": "c1", "name": "f", "args": {"a": 1}}, "thoughtSignature": "sig"}]}
    assert cand["finishReason"] == "STOP"  # as Gemini says it after a function call
    assert out["usageMetadata"] == {"promptTokenCount": 10, "candidatesTokenCount": 5, "thoughtsTokenCount": 2,
                                    "totalTokenCount": 17, "cachedContentTokenCount": 4}
    assert out["modelVersion"] == "route"


@pytest.mark.parametrize(("status", "name"), [(400, "INVALID_ARGUMENT"), (401, "UNAUTHENTICATED"),
                                              (404, "NOT_FOUND"), (413, "INVALID_ARGUMENT"),
                                              (429, "RESOURCE_EXHAUSTED"), (502, "UNAVAILABLE"),
                                              (504, "DEADLINE_EXCEEDED"), (418, "FAILED_PRECONDITION")])
def test_error_status_names(status: int, name: str) -> None:
    assert status_name(status) == name
    body = orjson.loads(GeminiGenerate().render_error(GatewayError(status, "why")))
    assert body == {"error": {"code": status, "message": "why", "status": name}}


CHUNKS: list[ChatChunk] = [
    {"id": "c", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
    {"id": "c", "choices": [{"index": 0, "delta": {"content": "he"}}]},
    {"id": "c", "choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "id": "c1", "function": {"name": "f", "arguments": '{"a"'}}]}}]},
    {"id": "c", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}}]},
    {"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    {"id": "c", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 5}},
]


def _encode(sse: bool) -> bytes:
    enc = GeminiGenerate(sse).stream_encoder("route", True)
    return b"".join(enc.chunk(c) for c in CHUNKS) + enc.end()


def test_sse_stream() -> None:
    events = [orjson.loads(e.data) for e in SSEParser().feed(_encode(True))]
    assert [e["candidates"][0]["content"]["parts"] for e in events] == [
        [{"text": "he"}], [{"functionCall": {"id": "c1", "name": "f", "args": {"a": 1}}}]]
    assert events[-1]["candidates"][0]["finishReason"] == "STOP"
    assert events[-1]["usageMetadata"] == {"promptTokenCount": 3, "candidatesTokenCount": 5, "totalTokenCount": 8}


def test_json_array_stream_is_the_same_events() -> None:
    items = orjson.loads(_encode(False))
    assert items == [orjson.loads(e.data) for e in SSEParser().feed(_encode(True))]


def test_stream_errors_end_the_framing() -> None:
    enc = GeminiGenerate(False).stream_encoder("route", True)
    out = enc.chunk(CHUNKS[1]) + enc.error(GatewayError(502, "gone", type="api_error"))
    items = orjson.loads(out)
    assert items[-1] == {"error": {"code": 502, "message": "gone", "status": "UNAVAILABLE"}}


def test_usage_metadata_from_a_usage() -> None:
    assert usage_metadata(Usage(5, 2, cache_read_tokens=1)) == {
        "promptTokenCount": 5, "candidatesTokenCount": 2, "totalTokenCount": 7, "cachedContentTokenCount": 1}
