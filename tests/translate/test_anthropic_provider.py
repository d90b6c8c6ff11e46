"""Canonical <-> Anthropic Messages API (the upstream direction), table-driven."""

from __future__ import annotations

from typing import Any, cast

import orjson
import pytest

from modelroute_sidecar.canonical import ChatRequest, Message, Usage, usage_from_openai
from modelroute_sidecar.config import ProviderKeyConfig, from_data
from modelroute_sidecar.providers.anthropic import AnthropicAdapter
from modelroute_sidecar.sse import SSEEvent, frame
from modelroute_sidecar.wire.anthropic.upstream import (
    API_VERSION,
    AnthropicStreamDecoder,
    build_request,
    default_max_tokens,
    error_info,
    parse_response,
)
from modelroute_sidecar.wire.base import StreamError
from modelroute_sidecar.wire.pairs import passes

from .helpers import decode, reassemble, split_at

U: Message = {"role": "user", "content": "hi"}

BUILD_CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("system messages go top-level, in order",
     {"messages": [{"role": "system", "content": "a"}, {"role": "developer", "content": "b"}, U]},
     {"system": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
      "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}),
    ("consecutive same-role messages merge",
     {"messages": [U, {"role": "user", "content": "again"}]},
     {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "again"}]}]}),
    ("max_tokens from max_completion_tokens first",
     {"messages": [U], "max_completion_tokens": 77, "max_tokens": 5}, {"max_tokens": 77}),
    ("max_tokens from max_tokens", {"messages": [U], "max_tokens": 5}, {"max_tokens": 5}),
    ("max_tokens defaults per model", {"messages": [U]}, {"max_tokens": 8192}),
    ("stop string becomes stop_sequences", {"messages": [U], "stop": "END"}, {"stop_sequences": ["END"]}),
    ("whitespace-only stop sequences are dropped",
     {"messages": [U], "stop": ["\n", "END"]}, {"stop_sequences": ["END"]}),
    ("sampling parameters dropped for 2026-10-21",
     {"messages": [U], "temperature": 0.2, "top_p": 0.5}, {"temperature": None, "top_p": None}),
    ("user becomes metadata.user_id", {"messages": [U], "user": "u-1"}, {"metadata": {"user_id": "u-1"}}),
    ("tools and their schemas",
     {"messages": [U], "tools": [{"type": "function", "function": {
         "name": "f", "description": "d", "parameters": {"type": "object", "properties": {"a": {"type": "string"}}}}}]},
     {"tools": [{"name": "f", "description": "d",
                 "input_schema": {"type": "object", "properties": {"a": {"type": "string"}}}}]}),
    ("a tool without parameters gets an empty object schema",
     {"messages": [U], "tools": [{"type": "function", "function": {"name": "f"}}]},
     {"tools": [{"name": "f", "input_schema": {"type": "object", "properties": {}}}]}),
    ("tool_choice required -> any",
     {"messages": [U], "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required"},
     {"tool_choice": {"type": "any"}}),
    ("tool_choice none -> none",
     {"messages": [U], "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "none"},
     {"tool_choice": {"type": "none"}}),
    ("tool_choice named -> tool",
     {"messages": [U], "tools": [{"type": "function", "function": {"name": "f"}}],
      "tool_choice": {"type": "function", "function": {"name": "f"}}},
     {"tool_choice": {"type": "tool", "name": "f"}}),
    ("parallel_tool_calls false -> disable_parallel_tool_use",
     {"messages": [U], "tools": [{"type": "function", "function": {"name": "f"}}], "parallel_tool_calls": False},
     {"tool_choice": {"type": "auto", "disable_parallel_tool_use": True}}),
    ("tool_choice without tools is dropped", {"messages": [U], "tool_choice": "required"}, {"tool_choice": None}),
    ("assistant tool calls -> tool_use, tool results -> user tool_result",
     {"messages": [U,
                   {"role": "assistant", "content": None, "tool_calls": [
                       {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}},
                       {"id": "functions.g:1", "type": "function", "function": {"name": "g", "arguments": ""}}]},
                   {"role": "tool", "tool_call_id": "call_1", "content": "one"},
                   {"role": "tool", "tool_call_id": "functions.g:1", "content": "two"},
                   {"role": "user", "content": "thanks"}]},
     {"messages": [
         {"role": "user", "content": [{"type": "text", "text": "hi"}]},
         {"role": "assistant", "content": [
             {"type": "tool_use", "id": "call_1", "name": "f", "input": {"x": 1}},
             {"type": "tool_use", "id": "functions_g_1", "name": "g", "input": {}}]},
         {"role": "user", "content": [
             {"type": "tool_result", "tool_use_id": "call_1", "content": "one"},
             {"type": "tool_result", "tool_use_id": "functions_g_1", "content": "two"},
             {"type": "text", "text": "thanks"}]}]}),
    ("images: data URL -> base64, http -> url",
     {"messages": [{"role": "user", "content": [
         {"type": "text", "text": "see"},
         {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
         {"type": "image_url", "image_url": {"url": "https://x.test/a.jpg"}}]}]},
     {"messages": [{"role": "user", "content": [
         {"type": "text", "text": "see"},
         {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
         {"type": "image", "source": {"type": "url", "url": "https://x.test/a.jpg"}}]}]}),
    ("empty assistant messages vanish",
     {"messages": [U, {"role": "assistant", "content": ""}, {"role": "user", "content": "b"}]},
     {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "b"}]}]}),
    ("json_schema response_format -> output_config.format",
     {"messages": [U], "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
         "type": "object"}}}},
     {"output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}}}),
    ("stream flag", {"messages": [U], "stream": True}, {"stream": True}),
]


@pytest.mark.parametrize(("name", "req", "expect"), BUILD_CASES, ids=[c[0] for c in BUILD_CASES])
def test_build_request(name: str, req: dict[str, Any], expect: dict[str, Any]) -> None:
    body = build_request(cast(ChatRequest, {"model": "alias", **req}), "claude-sonnet-4-5", bool(req.get("stream")))
    assert body["model"] == "claude-sonnet-4-5"
    for key, value in expect.items():
        assert body.get(key) == value, key


def test_legacy_version_keeps_sampling() -> None:
    body = build_request({"messages": [U], "temperature": 0.2, "top_p": 0.9}, "m", False, sampling=True)
    assert (body["temperature"], body["top_p"]) == (0.2, 0.9)


@pytest.mark.parametrize(("model", "expect"), [
    ("claude-3-haiku-20240307", 4096), ("claude-3-opus-latest", 4096), ("claude-3-5-haiku-latest", 8192),
    ("claude-3-7-sonnet-latest", 8192), ("claude-sonnet-4-5", 8192), ("claude-opus-5-5", 8192)])
def test_default_max_tokens(model: str, expect: int) -> None:
    assert default_max_tokens(model) == expect


def _message(content: list[dict[str, Any]], stop: str, usage: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude", "content": content,
            "stop_reason": stop, "stop_sequence": None,
            "usage": usage or {"input_tokens": 10, "output_tokens": 3}}


@pytest.mark.parametrize(("stop", "finish"), [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"), ("tool_use", "tool_calls"),
    ("refusal", "content_filter"), ("pause_turn", "stop"), ("model_context_window_exceeded", "length")])
def test_parse_stop_reasons(stop: str, finish: str) -> None:
    resp = parse_response(_message([{"type": "text", "text": "x"}], stop), "m")
    assert resp["choices"][0]["finish_reason"] == finish


def test_parse_text_and_tools() -> None:
    resp = parse_response(_message([
        {"type": "thinking", "thinking": "hmm", "signature": "s"},
        {"type": "text", "text": "a"}, {"type": "text", "text": "b"},
        {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"q": [1, 2]}}], "tool_use"), "m")
    msg = resp["choices"][0]["message"]
    assert msg["content"] == "ab"
    assert msg["reasoning_content"] == "hmm"
    assert msg["tool_calls"] == [{"id": "toolu_1", "type": "function",
                                  "function": {"name": "f", "arguments": '{"q":[1,2]}'}}]


def test_parse_usage_counts_cache_tokens_as_input() -> None:
    resp = parse_response(_message([], "end_turn", {"input_tokens": 10, "output_tokens": 5,
                                                    "cache_read_input_tokens": 100,
                                                    "cache_creation_input_tokens": 20}), "m")
    u = resp["usage"]
    assert (u["prompt_tokens"], u["completion_tokens"], u["total_tokens"]) == (130, 5, 135)
    assert u["prompt_tokens_details"] == {"cached_tokens": 100, "cache_write_tokens": 20}
    assert usage_from_openai(u) == Usage(130, 5, 100, 20)


def _sse(*events: dict[str, Any]) -> bytes:
    return b"".join(frame(orjson.dumps(e), e["type"]) for e in events)


TOOL_STREAM = _sse(
    {"type": "message_start", "message": {"id": "msg_9", "type": "message", "role": "assistant", "content": [],
                                          "model": "c", "stop_reason": None,
                                          "usage": {"input_tokens": 7, "output_tokens": 1,
                                                    "cache_read_input_tokens": 3}}},
    {"type": "ping"},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me "}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "check."}},
    {"type": "content_block_stop", "index": 0},
    {"type": "content_block_start", "index": 1,
     "content_block": {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"q":1}'}},
    {"type": "content_block_stop", "index": 1},
    {"type": "content_block_start", "index": 2,
     "content_block": {"type": "tool_use", "id": "toolu_a", "name": "get", "input": {}}},
    {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": '{"city": '}},
    {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": '"Paris"}'}},
    {"type": "content_block_stop", "index": 2},
    {"type": "content_block_start", "index": 3,
     "content_block": {"type": "tool_use", "id": "toolu_b", "name": "now", "input": {}}},
    {"type": "content_block_delta", "index": 3, "delta": {"type": "input_json_delta", "partial_json": ""}},
    {"type": "content_block_stop", "index": 3},
    {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
     "usage": {"output_tokens": 42, "input_tokens": 7, "cache_read_input_tokens": 3}},
    {"type": "message_stop"},
)


@pytest.mark.parametrize("cuts", [[], [1], [5, 17, 200, 201, 202], list(range(0, 3000, 7))])
def test_stream_decoder(cuts: list[int]) -> None:
    dec = AnthropicStreamDecoder("claude-x")
    chunks = decode(split_at(TOOL_STREAM, cuts), dec)
    got = reassemble(chunks)
    assert got.role == "assistant"
    assert got.text == "Let me check."
    assert got.tools == [("toolu_a", "get", '{"city": "Paris"}'), ("toolu_b", "now", "")]
    assert got.finish == "tool_calls"
    assert got.usage == Usage(10, 42, 3, 0)
    assert dec.done and dec.usage == Usage(10, 42, 3, 0)
    assert chunks[-1]["choices"] == []  # the usage chunk comes last
    assert {c["id"] for c in chunks} == {"msg_9"}


def test_stream_decoder_without_message_stop_is_not_done() -> None:
    dec = AnthropicStreamDecoder("m")
    decode([TOOL_STREAM.rsplit(b"event: message_stop", 1)[0]], dec)
    assert not dec.done


def test_stream_error_event_raises() -> None:
    dec = AnthropicStreamDecoder("m")
    ev = SSEEvent("error", b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}', b"")
    with pytest.raises(StreamError) as e:
        dec.feed(ev)
    assert e.value.info == ("Overloaded", "overloaded_error", True)


ERROR_CASES: list[tuple[int, bytes, str, bool]] = [
    (400, b'{"type":"error","error":{"type":"invalid_request_error","message":"bad"}}', "invalid_request_error",
     False),
    (401, b'{"type":"error","error":{"type":"authentication_error","message":"key"}}', "authentication_error",
     False),
    (403, b'{"type":"error","error":{"type":"billing_error","message":"pay"}}', "permission_error", False),
    (404, b'{"type":"error","error":{"type":"not_found_error","message":"model"}}', "not_found_error", False),
    (413, b'{"type":"error","error":{"type":"request_too_large","message":"big"}}', "invalid_request_error",
     False),
    (429, b'{"type":"error","error":{"type":"rate_limit_error","message":"slow"}}', "rate_limit_error", True),
    (500, b'{"type":"error","error":{"type":"api_error","message":"oops"}}', "api_error", True),
    (529, b'{"type":"error","error":{"type":"overloaded_error","message":"busy"}}', "overloaded_error", True),
    (504, b'{"type":"error","error":{"type":"timeout_error","message":"slow"}}', "timeout_error", True),
    (502, b"<html>bad gateway</html>", "api_error", True),
    (529, b"", "overloaded_error", True),
]


@pytest.mark.parametrize(("status", "body", "etype", "retryable"), ERROR_CASES)
def test_error_info(status: int, body: bytes, etype: str, retryable: bool) -> None:
    info = error_info(status, body)
    assert (info.type, info.retryable) == (etype, retryable)
    assert info.message


def _pk(**kw: Any) -> ProviderKeyConfig:
    return from_data({"name": "a", "provider": "anthropic",
                      "baseURL": kw.pop("base", "https://api.anthropic.com"), **kw}, ProviderKeyConfig)


def test_adapter_request() -> None:
    ad = AnthropicAdapter(_pk(headers={"x-extra": "1"}))
    prep = ad.chat({"model": "alias", "messages": [U], "temperature": 1}, "claude-sonnet-4-5", True)
    assert prep.url == "https://api.anthropic.com/v1/messages"
    assert prep.headers["anthropic-version"] == API_VERSION == "2026-10-21"
    assert prep.headers["x-extra"] == "1"
    body = orjson.loads(prep.body)
    assert body["stream"] is True and "temperature" not in body
    assert ad.auth_headers("sk-ant") == {"x-api-key": "sk-ant"}
    assert AnthropicAdapter(_pk(base="http://proxy.test/v1/")).url == "http://proxy.test/v1/messages"
    legacy = AnthropicAdapter(_pk(apiVersion="2023-06-01"))
    assert legacy.headers["anthropic-version"] == "2023-06-01"
    assert orjson.loads(legacy.chat({"messages": [U], "temperature": 1}, "m", False).body)["temperature"] == 1


def test_native_passes_everything_but_the_model() -> None:
    ad = AnthropicAdapter(_pk())
    req = {"model": "alias", "max_tokens": 10, "system": [{"type": "text", "text": "s",
                                                            "cache_control": {"type": "ephemeral"}}],
           "thinking": {"type": "adaptive"}, "context_management": {"edits": []}, "future_field": 1,
           "messages": [U], "stream": True}
    prep = ad.native("anthropic-messages", req, "claude-opus-5-5", True)
    assert orjson.loads(prep.body) == {**req, "model": "claude-opus-5-5"}
    assert req["model"] == "alias"  # the caller's body is not mutated (failover reuses it)
    assert passes("anthropic-messages", ad) and not passes("openai-chat", ad)


def test_a_streamed_call_first_carries_the_role_with_content_null() -> None:
    # As OpenAI streams a tool call, and as the unstreamed answer has it: no content "" to reassemble.
    chunks = decode(split_at(TOOL_STREAM, []), AnthropicStreamDecoder("m"))
    roles = [c["choices"][0]["delta"] for c in chunks if c["choices"] and "role" in c["choices"][0]["delta"]]
    assert roles == [{"role": "assistant", "content": ""}]  # text comes first in TOOL_STREAM
    call_first = frame(orjson.dumps({"type": "message_start", "message": {"id": "msg_1"}}), event="message_start") + \
        frame(orjson.dumps({"type": "content_block_start", "index": 0, "content_block": {
            "type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}}), event="content_block_start")
    first = decode([call_first], AnthropicStreamDecoder("m"))[0]["choices"][0]["delta"]
    assert first["role"] == "assistant" and first["content"] is None and first["tool_calls"][0]["id"] == "toolu_1"
