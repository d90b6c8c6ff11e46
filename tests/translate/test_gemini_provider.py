"""Canonical <-> Gemini API (generateContent, streamGenerateContent, embeddings), table-driven."""

from __future__ import annotations

from typing import Any, cast

import orjson
import pytest

from modelroute_sidecar.canonical import ChatRequest, Message, Usage, usage_from_openai
from modelroute_sidecar.config import ProviderKeyConfig, from_data
from modelroute_sidecar.errors import GatewayError
from modelroute_sidecar.providers.gemini import GeminiAdapter
from modelroute_sidecar.sse import frame
from modelroute_sidecar.wire.base import StreamError
from modelroute_sidecar.wire.gemini.upstream import (
    FOREIGN_SIGNATURE,
    GeminiStreamDecoder,
    build_embeddings,
    build_request,
    error_info,
    gemini_schema,
    parse_embeddings,
    parse_response,
)
from modelroute_sidecar.wire.pairs import passes

from .helpers import decode, reassemble, split_at

U: Message = {"role": "user", "content": "hi"}
F = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
    "a": {"type": "string"}}}}}

BUILD_CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("system -> systemInstruction, roles user/model",
     {"messages": [{"role": "system", "content": "s"}, U, {"role": "assistant", "content": "yo"}]},
     {"systemInstruction": {"parts": [{"text": "s"}]},
      "contents": [{"role": "user", "parts": [{"text": "hi"}]}, {"role": "model", "parts": [{"text": "yo"}]}]}),
    ("generationConfig",
     {"messages": [U], "max_tokens": 50, "temperature": 0.3, "top_p": 0.8, "stop": ["a", "b"], "seed": 4},
     {"generationConfig": {"maxOutputTokens": 50, "temperature": 0.3, "topP": 0.8, "stopSequences": ["a", "b"],
                           "seed": 4}}),
    ("at most 5 stop sequences", {"messages": [U], "stop": list("abcdefg")},
     {"generationConfig": {"stopSequences": list("abcde")}}),
    ("tools -> functionDeclarations", {"messages": [U], "tools": [F]},
     {"tools": [{"functionDeclarations": [{"name": "f", "parameters": {
         "type": "object", "properties": {"a": {"type": "string"}}}}]}]}),
    ("a tool without parameters has no parameters",
     {"messages": [U], "tools": [{"type": "function", "function": {"name": "g", "parameters": {
         "type": "object", "properties": {}, "additionalProperties": False}}}]},
     {"tools": [{"functionDeclarations": [{"name": "g"}]}]}),
    ("tool_choice auto leaves toolConfig out", {"messages": [U], "tools": [F], "tool_choice": "auto"},
     {"toolConfig": None}),
    ("tool_choice required -> ANY", {"messages": [U], "tools": [F], "tool_choice": "required"},
     {"toolConfig": {"functionCallingConfig": {"mode": "ANY"}}}),
    ("tool_choice none -> NONE", {"messages": [U], "tools": [F], "tool_choice": "none"},
     {"toolConfig": {"functionCallingConfig": {"mode": "NONE"}}}),
    ("named tool_choice -> ANY + allowedFunctionNames",
     {"messages": [U], "tools": [F], "tool_choice": {"type": "function", "function": {"name": "f"}}},
     {"toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["f"]}}}),
    ("function calls and responses matched by id",
     {"messages": [U,
                   {"role": "assistant", "content": "calling", "tool_calls": [
                       {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a":"x"}'}},
                       {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"},
                        "extra_content": {"google": {"thought_signature": "SIG"}}}]},
                   {"role": "tool", "tool_call_id": "c2", "content": "G"},
                   {"role": "tool", "tool_call_id": "c1", "content": "F"}]},
     {"contents": [
         {"role": "user", "parts": [{"text": "hi"}]},
         {"role": "model", "parts": [
             {"text": "calling"},
             {"functionCall": {"name": "f", "args": {"a": "x"}}, "thoughtSignature": FOREIGN_SIGNATURE},
             {"functionCall": {"name": "g", "args": {}}, "thoughtSignature": "SIG"}]},
         {"role": "user", "parts": [
             {"functionResponse": {"name": "g", "response": {"output": "G"}}},
             {"functionResponse": {"name": "f", "response": {"output": "F"}}}]}]}),
    ("a known signature on the first call is kept",
     {"messages": [U, {"role": "assistant", "tool_calls": [
         {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"},
          "extra_content": {"google": {"thought_signature": "REAL"}}}]}]},
     {"contents": [{"role": "user", "parts": [{"text": "hi"}]},
                   {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}},
                                                "thoughtSignature": "REAL"}]}]}),
    ("images: data URL -> inlineData, http -> fileData",
     {"messages": [{"role": "user", "content": [
         {"type": "text", "text": "see"},
         {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
         {"type": "image_url", "image_url": {"url": "https://x.test/a.jpg?v=1"}}]}]},
     {"contents": [{"role": "user", "parts": [
         {"text": "see"}, {"inlineData": {"mimeType": "image/png", "data": "AAAA"}},
         {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://x.test/a.jpg?v=1"}}]}]}),
    ("json_schema -> responseJsonSchema",
     {"messages": [U], "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {
         "type": "object", "additionalProperties": False}}}},
     {"generationConfig": {"responseMimeType": "application/json",
                           "responseJsonSchema": {"type": "object", "additionalProperties": False}}}),
    ("json_object -> responseMimeType", {"messages": [U], "response_format": {"type": "json_object"}},
     {"generationConfig": {"responseMimeType": "application/json"}}),
    ("system-only prompts become the user turn", {"messages": [{"role": "system", "content": "only"}]},
     {"contents": [{"role": "user", "parts": [{"text": "only"}]}], "systemInstruction": None}),
]


@pytest.mark.parametrize(("name", "req", "expect"), BUILD_CASES, ids=[c[0] for c in BUILD_CASES])
def test_build_request(name: str, req: dict[str, Any], expect: dict[str, Any]) -> None:
    body = build_request(cast(ChatRequest, {"model": "alias", **req}), "gemini-2.5-flash")
    for key, value in expect.items():
        if key == "generationConfig" and value is not None:
            for k, v in value.items():
                assert body[key].get(k) == v, k
        else:
            assert body.get(key) == value, key


SCHEMA_CASES: list[tuple[str, dict[str, Any], dict[str, Any] | None]] = [
    ("keys Gemini rejects are dropped",
     {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object", "additionalProperties": False,
      "properties": {"a": {"type": "integer", "exclusiveMinimum": 0, "minimum": 1}}, "required": ["a"]},
     {"type": "object", "properties": {"a": {"type": "integer", "minimum": 1}}, "required": ["a"]}),
    ("type lists with null -> nullable",
     {"type": "object", "properties": {"a": {"type": ["string", "null"]}}},
     {"type": "object", "properties": {"a": {"type": "string", "nullable": True}}}),
    ("anyOf with null -> nullable",
     {"type": "object", "properties": {"a": {"anyOf": [{"type": "number"}, {"type": "null"}]}}},
     {"type": "object", "properties": {"a": {"type": "number", "nullable": True}}}),
    ("local $refs are inlined",
     {"type": "object", "$defs": {"P": {"type": "object", "properties": {"x": {"type": "string"}}}},
      "properties": {"p": {"$ref": "#/$defs/P"}}},
     {"type": "object", "properties": {"p": {"type": "object", "properties": {"x": {"type": "string"}}}}}),
    ("recursive $refs stop",
     {"type": "object", "definitions": {"N": {"type": "object", "properties": {"n": {"$ref": "#/definitions/N"}}}},
      "properties": {"root": {"$ref": "#/definitions/N"}}},
     None),
    ("const -> enum", {"type": "object", "properties": {"k": {"const": "x"}}},
     {"type": "object", "properties": {"k": {"type": "string", "enum": ["x"]}}}),
    ("non-string enums are dropped", {"type": "object", "properties": {"k": {"type": "integer", "enum": [1, 2]}}},
     {"type": "object", "properties": {"k": {"type": "integer"}}}),
    ("unsupported formats dropped, supported kept",
     {"type": "object", "properties": {"u": {"type": "string", "format": "uri"},
                                       "d": {"type": "string", "format": "date-time"}}},
     {"type": "object", "properties": {"u": {"type": "string"}, "d": {"type": "string", "format": "date-time"}}}),
    ("required names only existing properties",
     {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a", "ghost"]},
     {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}),
    ("arrays keep their items", {"type": "array", "items": {"type": "string", "propertyNames": {}}, "maxItems": 3},
     {"type": "array", "items": {"type": "string"}, "maxItems": 3}),
]


@pytest.mark.parametrize(("name", "schema", "expect"), SCHEMA_CASES, ids=[c[0] for c in SCHEMA_CASES])
def test_gemini_schema(name: str, schema: dict[str, Any], expect: dict[str, Any] | None) -> None:
    out = gemini_schema(schema)
    if expect is not None:
        assert out == expect
    text = orjson.dumps(out).decode()
    for bad in ("$schema", "$ref", "$defs", "additionalProperties", "exclusiveMinimum", "propertyNames"):
        assert bad not in text


def _resp(parts: list[dict[str, Any]], finish: str = "STOP", usage: dict[str, Any] | None = None,
          ) -> dict[str, Any]:
    return {"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": finish, "index": 0}],
            "usageMetadata": usage or {"promptTokenCount": 4, "candidatesTokenCount": 2, "totalTokenCount": 6},
            "responseId": "r1"}


@pytest.mark.parametrize(("finish", "parts", "expect"), [
    ("STOP", [{"text": "a"}], "stop"),
    ("STOP", [{"functionCall": {"name": "f", "args": {}}}], "tool_calls"),
    ("MAX_TOKENS", [{"text": "a"}], "length"),
    ("SAFETY", [], "content_filter"),
    ("RECITATION", [{"text": "a"}], "content_filter"),
    ("MALFORMED_FUNCTION_CALL", [], "stop"),
    ("OTHER", [{"text": "a"}], "stop"),
])
def test_finish_reasons(finish: str, parts: list[dict[str, Any]], expect: str) -> None:
    assert parse_response(_resp(parts, finish), "g")["choices"][0]["finish_reason"] == expect


def test_parse_function_calls_get_ids_and_signatures() -> None:
    resp = parse_response(_resp([
        {"text": "thinking...", "thought": True},
        {"text": "Sure."},
        {"functionCall": {"name": "f", "args": {"a": 1}}, "thoughtSignature": "SIG"},
        {"functionCall": {"name": "g", "args": {}, "id": "given"}}]), "g")
    msg = resp["choices"][0]["message"]
    assert msg["content"] == "Sure."
    assert msg["reasoning_content"] == "thinking..."
    a, b = msg["tool_calls"]
    assert a["id"].startswith("call_") and len(a["id"]) > 10
    assert a["function"] == {"name": "f", "arguments": '{"a":1}'}
    assert a["extra_content"] == {"google": {"thought_signature": "SIG"}}
    assert b["id"] == "given" and "extra_content" not in b


def test_parse_usage() -> None:
    resp = parse_response(_resp([{"text": "a"}], usage={
        "promptTokenCount": 100, "cachedContentTokenCount": 60, "candidatesTokenCount": 10,
        "thoughtsTokenCount": 30, "toolUsePromptTokenCount": 5}), "g")
    u = resp["usage"]
    assert usage_from_openai(u) == Usage(105, 40, 60, 0)
    assert u["completion_tokens_details"] == {"reasoning_tokens": 30}


def test_blocked_prompt() -> None:
    resp = parse_response({"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 3}},
                          "g")
    assert resp["choices"][0]["finish_reason"] == "content_filter"
    assert resp["choices"][0]["message"]["content"] == ""


def _events(*chunks: dict[str, Any]) -> bytes:
    return b"".join(frame(orjson.dumps(c)) for c in chunks)


STREAM = _events(
    {"candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}]}}], "responseId": "r7",
     "usageMetadata": {"promptTokenCount": 9}},
    {"candidates": [{"content": {"role": "model", "parts": [{"text": "lo", "thought": False}]}}]},
    {"candidates": [{"content": {"role": "model", "parts": [
        {"functionCall": {"name": "f", "args": {"x": "é"}}, "thoughtSignature": "S"},
        {"functionCall": {"name": "g", "args": {}}}]}, "finishReason": "STOP"}],
     "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 4, "thoughtsTokenCount": 2,
                       "cachedContentTokenCount": 1}},
)


@pytest.mark.parametrize("cuts", [[], [3], list(range(0, 2000, 5))])
def test_stream_decoder(cuts: list[int]) -> None:
    dec = GeminiStreamDecoder("gemini-x")
    got = reassemble(decode(split_at(STREAM, cuts), dec))
    assert got.text == "Hello"
    assert [(n, a) for _, n, a in got.tools] == [("f", '{"x":"é"}'), ("g", "{}")]
    assert all(i.startswith("call_") for i, _, _ in got.tools)
    assert got.finish == "tool_calls"
    assert got.usage == Usage(9, 6, 1, 0)
    assert dec.done


def test_stream_error_event() -> None:
    dec = GeminiStreamDecoder("g")
    body = _events({"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}})
    with pytest.raises(StreamError) as e:
        decode([body], dec)
    assert e.value.info == ("The model is overloaded.", "overloaded_error", True)


EMBED_CASES: list[tuple[dict[str, Any], str, dict[str, Any]]] = [
    ({"input": "a"}, "embedContent", {"content": {"parts": [{"text": "a"}]}}),
    ({"input": "a", "dimensions": 8}, "embedContent", {"content": {"parts": [{"text": "a"}]},
                                                       "outputDimensionality": 8}),
    ({"input": ["a", "b"]}, "batchEmbedContents", {"requests": [
        {"model": "models/text-embedding-004", "content": {"parts": [{"text": "a"}]}},
        {"model": "models/text-embedding-004", "content": {"parts": [{"text": "b"}]}}]}),
]


@pytest.mark.parametrize(("req", "method", "body"), EMBED_CASES)
def test_build_embeddings(req: dict[str, Any], method: str, body: dict[str, Any]) -> None:
    assert build_embeddings(req, "text-embedding-004") == (method, body)


def test_token_array_embeddings_are_a_400() -> None:
    with pytest.raises(GatewayError) as e:
        build_embeddings({"input": [[1, 2]]}, "m")
    assert e.value.status == 400


def test_parse_embeddings() -> None:
    one = parse_embeddings({"embedding": {"values": [0.1, 0.2]}}, "m")
    assert one["data"] == [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}]
    many = parse_embeddings({"embeddings": [{"values": [1.0]}, {"values": [2.0]}]}, "m")
    assert [d["embedding"] for d in many["data"]] == [[1.0], [2.0]]
    assert many["object"] == "list" and many["usage"] == {"prompt_tokens": 0, "total_tokens": 0}


ERROR_CASES: list[tuple[int, Any, str, bool]] = [
    (400, {"error": {"code": 400, "message": "bad", "status": "INVALID_ARGUMENT"}}, "invalid_request_error", False),
    (400, {"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.",
                     "status": "INVALID_ARGUMENT", "details": [{"reason": "API_KEY_INVALID"}]}},
     "authentication_error", False),
    (403, {"error": {"code": 403, "message": "no", "status": "PERMISSION_DENIED"}}, "permission_error", False),
    (404, {"error": {"code": 404, "message": "no model", "status": "NOT_FOUND"}}, "not_found_error", False),
    (429, {"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED"}}, "rate_limit_error", True),
    (500, {"error": {"code": 500, "message": "x", "status": "INTERNAL"}}, "api_error", True),
    (503, {"error": {"code": 503, "message": "x", "status": "UNAVAILABLE"}}, "overloaded_error", True),
    (504, {"error": {"code": 504, "message": "x", "status": "DEADLINE_EXCEEDED"}}, "timeout_error", True),
    (503, [{"error": {"code": 503, "message": "x", "status": "UNAVAILABLE"}}], "overloaded_error", True),
    (502, b"Bad Gateway", "api_error", True),
]


@pytest.mark.parametrize(("status", "body", "etype", "retryable"), ERROR_CASES)
def test_error_info(status: int, body: Any, etype: str, retryable: bool) -> None:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    info = error_info(status, raw)
    assert (info.type, info.retryable) == (etype, retryable)


def test_adapter_urls_and_headers() -> None:
    pk = from_data({"name": "g", "provider": "gemini",
                    "baseURL": "https://generativelanguage.googleapis.com"}, ProviderKeyConfig)
    ad = GeminiAdapter(pk)
    assert ad.chat({"messages": [U]}, "gemini-2.5-pro", False).url == (
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-pro:generateContent")
    assert ad.chat({"messages": [U]}, "models/gemini-2.5-pro", True).url == (
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse")
    assert ad.embeddings({"input": ["a"]}, "text-embedding-004").url.endswith(
        "/v1beta/models/text-embedding-004:batchEmbedContents")
    assert ad.auth_headers("AIza") == {"x-goog-api-key": "AIza"}
    assert passes("gemini", ad) and not passes("openai-chat", ad)  # only Gemini callers pass through


def test_a_streamed_call_first_carries_the_role_with_content_null() -> None:
    # As OpenAI streams a tool call, and as the unstreamed answer has it: no content "" to reassemble.
    parts = [{"functionCall": {"name": "f", "args": {}}}]
    call = _events({"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP"}],
                    "responseId": "r1"})
    first = decode([call], GeminiStreamDecoder("g"))[0]["choices"][0]["delta"]
    assert first["role"] == "assistant" and first["content"] is None
    assert first["tool_calls"][0]["function"]["name"] == "f"
    text = _events({"candidates": [{"content": {"role": "model", "parts": [{"text": "hi"}]}}], "responseId": "r2"})
    assert decode([text], GeminiStreamDecoder("g"))[0]["choices"][0]["delta"] == {"role": "assistant", "content": "hi"}
