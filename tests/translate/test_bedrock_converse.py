"""The Converse wire format (wire/bedrock_converse), the AWS event stream reader
(wire/aws_eventstream), Bedrock key lines and cloud model ids in pricing: table-driven."""

from __future__ import annotations

import base64
from typing import Any, cast

import orjson
import pytest

from modelroute_sidecar.canonical import ChatRequest
from modelroute_sidecar.config import ProviderKeyConfig, from_data
from modelroute_sidecar.errors import GatewayError
from modelroute_sidecar.pricing import find_price, list_name
from modelroute_sidecar.providers.aws_sigv4 import parse_key_line
from modelroute_sidecar.providers.bedrock import BedrockAdapter
from modelroute_sidecar.sse import SSEEvent
from modelroute_sidecar.wire.aws_eventstream import EventStreamError, EventStreamParser
from modelroute_sidecar.wire.base import StreamError
from modelroute_sidecar.wire.bedrock_converse.upstream import (
    ConverseStreamDecoder,
    build_request,
    error_info,
    parse_response,
)
from tests.fakes.aws_wire import encode_message, event, exception

PNG = base64.b64encode(b"\x89PNG....").decode()
CALL = {"id": "functions.lookup:0", "type": "function", "function": {"name": "lookup", "arguments": '{"q": 1}'}}
SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}
SPECS = [{"toolSpec": {"name": "lookup", "inputSchema": {"json": SCHEMA}}}]
TOOL: dict[str, Any] = {"type": "function", "function": {"name": "lookup", "parameters": SCHEMA}}

REQUESTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "system-and-developer": (
        {"messages": [{"role": "system", "content": "a"}, {"role": "developer", "content": "b"},
                      {"role": "user", "content": "hi"}]},
        {"system": [{"text": "a"}, {"text": "b"}], "messages": [{"role": "user", "content": [{"text": "hi"}]}]}),
    "tool-round-trip-merges-results-and-cleans-ids": (
        {"messages": [{"role": "user", "content": "go"}, {"role": "assistant", "content": None,
                                                          "tool_calls": [CALL, {**CALL, "id": "b"}]},
                      {"role": "tool", "tool_call_id": "functions.lookup:0", "content": "one"},
                      {"role": "tool", "tool_call_id": "b", "content": [{"type": "text", "text": "two"}]}],
         "tools": [TOOL], "tool_choice": "required"},
        {"messages": [
            {"role": "user", "content": [{"text": "go"}]},
            {"role": "assistant", "content": [
                {"toolUse": {"toolUseId": "functions_lookup_0", "name": "lookup", "input": {"q": 1}}},
                {"toolUse": {"toolUseId": "b", "name": "lookup", "input": {"q": 1}}}]},
            {"role": "user", "content": [
                {"toolResult": {"toolUseId": "functions_lookup_0", "content": [{"text": "one"}]}},
                {"toolResult": {"toolUseId": "b", "content": [{"text": "two"}]}}]}],
         "toolConfig": {"tools": SPECS, "toolChoice": {"any": {}}}}),
    "tool-choice-none-keeps-the-tools-history-needs": (
        {"messages": [{"role": "user", "content": "go"}, {"role": "assistant", "tool_calls": [CALL]},
                      {"role": "tool", "tool_call_id": "x", "content": "r"}], "tool_choice": "none"},
        {"toolConfig": {"tools": [{"toolSpec": {"name": "lookup", "inputSchema": {"json": {"type": "object"}}}}]}}),
    "tool-choice-none-without-history-sends-no-tools": (
        {"messages": [{"role": "user", "content": "go"}], "tools": [TOOL], "tool_choice": "none"}, {}),
    "named-tool": (
        {"messages": [{"role": "user", "content": "go"}], "tools": [TOOL],
         "tool_choice": {"type": "function", "function": {"name": "lookup"}}},
        {"toolConfig": {"tools": SPECS, "toolChoice": {"tool": {"name": "lookup"}}}}),
    "inference-config": (
        {"messages": [{"role": "user", "content": "go"}], "max_tokens": 50, "temperature": 0.2, "top_p": 0.9,
         "stop": ["END"]},
        {"inferenceConfig": {"maxTokens": 50, "temperature": 0.2, "topP": 0.9, "stopSequences": ["END"]}}),
    "media-and-cache-points": (
        {"messages": [{"role": "user", "content": [
            {"type": "text", "text": "look", "cache_control": {"type": "ephemeral"}},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
            {"type": "image_url", "image_url": {"url": "s3://bucket/cat.jpg"}},
            {"type": "file", "file": {"file_data": f"data:application/pdf;base64,{PNG}"}}]}]},
        {"messages": [{"role": "user", "content": [
            {"text": "look"}, {"cachePoint": {"type": "default"}},
            {"image": {"format": "png", "source": {"bytes": PNG}}},
            {"image": {"format": "jpeg", "source": {"s3Location": {"uri": "s3://bucket/cat.jpg"}}}},
            {"document": {"format": "pdf", "name": "document-1", "source": {"bytes": PNG}}}]}]}),
    "blank-text-is-left-out-and-an-empty-tool-result-says-so": (
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "  "}, {"type": "text", "text": "go"}]},
                      {"role": "assistant", "content": " ", "tool_calls": [{**CALL, "id": "c"}]},
                      {"role": "tool", "tool_call_id": "c", "content": ""}], "tools": [TOOL]},
        {"messages": [{"role": "user", "content": [{"text": "go"}]},
                      {"role": "assistant", "content": [
                          {"toolUse": {"toolUseId": "c", "name": "lookup", "input": {"q": 1}}}]},
                      {"role": "user", "content": [
                          {"toolResult": {"toolUseId": "c", "content": [{"text": "(empty)"}]}}]}]}),
    "a-conversation-starts-with-a-user-turn": (
        {"messages": [{"role": "assistant", "content": "hello"}, {"role": "user", "content": "hi"}]},
        {"messages": [{"role": "user", "content": [{"text": "."}]},
                      {"role": "assistant", "content": [{"text": "hello"}]},
                      {"role": "user", "content": [{"text": "hi"}]}]}),
}


@pytest.mark.parametrize("case", sorted(REQUESTS))
def test_build_request(case: str) -> None:
    req, want = REQUESTS[case]
    got = build_request(cast(ChatRequest, req))
    for key, value in want.items():
        assert got[key] == value, key
    if not want:
        assert "toolConfig" not in got


def test_thinking_goes_to_additional_fields_with_its_budget_on_top_and_no_sampling() -> None:
    got = build_request({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100, "temperature": 0.5},
                        thinking={"type": "enabled", "budget_tokens": 1024})
    assert got["additionalModelRequestFields"] == {"thinking": {"type": "enabled", "budget_tokens": 1024}}
    assert got["inferenceConfig"] == {"maxTokens": 1124}


@pytest.mark.parametrize("url, words", [("https://example.com/a.png", "base64 data URLs"),
                                        ("data:image/bmp;base64,AAAA", "png, jpeg, gif and webp")])
def test_images_converse_cannot_take_are_a_400(url: str, words: str) -> None:
    with pytest.raises(GatewayError) as e:
        build_request({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]})
    assert e.value.status == 400 and words in e.value.message


def test_parse_response() -> None:
    body = {"output": {"message": {"role": "assistant", "content": [
        {"reasoningContent": {"reasoningText": {"text": "hmm", "signature": "s"}}}, {"text": "ok"},
        {"toolUse": {"toolUseId": "t1", "name": "lookup", "input": {"q": 1}}}]}},
        "stopReason": "tool_use", "usage": {"inputTokens": 5, "outputTokens": 7, "totalTokens": 42,
                                            "cacheReadInputTokens": 20, "cacheWriteInputTokens": 10}}
    got = parse_response(body, "m")
    msg = got["choices"][0]["message"]
    assert (msg["content"], msg["reasoning_content"]) == ("ok", "hmm")
    assert msg["tool_calls"] == [{"id": "t1", "type": "function", "function": {"name": "lookup",
                                                                                "arguments": '{"q":1}'}}]
    assert got["choices"][0]["finish_reason"] == "tool_calls"
    u = got["usage"]
    assert (u["prompt_tokens"], u["completion_tokens"], u["prompt_tokens_details"]["cached_tokens"]) == (35, 7, 20)
    assert u["prompt_tokens_details"]["cache_write_tokens"] == 10


@pytest.mark.parametrize("stop, finish", [("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"),
                                          ("model_context_window_exceeded", "length"),
                                          ("guardrail_intervened", "content_filter"),
                                          ("content_filtered", "content_filter")])
def test_stop_reasons(stop: str, finish: str) -> None:
    got = parse_response({"output": {"message": {"content": [{"text": "x"}]}}, "stopReason": stop}, "m")
    assert got["choices"][0]["finish_reason"] == finish


def test_stream_decoder_in_bedrocks_order() -> None:
    dec = ConverseStreamDecoder("m")
    events = [("messageStart", {"role": "assistant"}),
              ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "hi"}}),
              ("contentBlockStop", {"contentBlockIndex": 0}),
              ("contentBlockStart", {"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "t", "name": "f"}}}),
              ("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": '{"a"'}}}),
              ("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": ":1}"}}}),
              ("messageStop", {"stopReason": "tool_use"})]
    chunks = [c for name, data in events for c in dec.feed(SSEEvent(name, orjson.dumps(data), b""))]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": "hi"}  # the role with what comes first
    assert deltas[1]["tool_calls"][0] == {"index": 0, "id": "t", "type": "function",
                                          "function": {"name": "f", "arguments": ""}}
    assert "".join(d["tool_calls"][0]["function"]["arguments"] for d in deltas[1:4]) == '{"a":1}'
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert not dec.done  # usage comes after messageStop, in metadata
    [last] = dec.feed(SSEEvent("metadata", orjson.dumps({"usage": {"inputTokens": 3, "outputTokens": 2}}), b""))
    assert dec.done and last["choices"] == [] and last["usage"]["prompt_tokens"] == 3


def test_a_streamed_call_first_carries_the_role_with_content_null() -> None:
    dec = ConverseStreamDecoder("m")
    events = [("messageStart", {"role": "assistant"}),
              ("contentBlockStart", {"contentBlockIndex": 0, "start": {"toolUse": {"toolUseId": "t", "name": "f"}}})]
    [chunk] = [c for name, data in events for c in dec.feed(SSEEvent(name, orjson.dumps(data), b""))]
    first = chunk["choices"][0]["delta"]
    assert first["role"] == "assistant" and first["content"] is None and first["tool_calls"][0]["id"] == "t"


def test_event_stream_parser_reassembles_messages_split_anywhere() -> None:
    stream = event("messageStart", b'{"role":"assistant","p":"abc"}') + event("contentBlockDelta", b'{"x":1}')
    parser = EventStreamParser()
    got = [ev for i in range(len(stream)) for ev in parser.feed(stream[i:i + 1])]
    assert [(e.event, e.data) for e in got] == [("messageStart", b'{"role":"assistant","p":"abc"}'),
                                                ("contentBlockDelta", b'{"x":1}')]


@pytest.mark.parametrize("name, etype, retryable", [("throttlingException", "rate_limit_error", True),
                                                    ("validationException", "invalid_request_error", False),
                                                    ("modelStreamErrorException", "api_error", True),
                                                    ("serviceUnavailableException", "overloaded_error", True)])
def test_an_exception_message_is_a_stream_error(name: str, etype: str, retryable: bool) -> None:
    with pytest.raises(StreamError) as e:
        EventStreamParser().feed(exception(name, b'{"message":"slow down"}'))
    assert (e.value.info.message, e.value.info.type, e.value.info.retryable) == ("slow down", etype, retryable)


@pytest.mark.parametrize("where", [3, 8, -1])  # the total length, the prelude CRC, the message CRC
def test_a_damaged_frame_is_refused(where: int) -> None:
    frame = bytearray(encode_message({":event-type": "x", ":message-type": "event"}, b"{}"))
    frame[where] ^= 0x01
    with pytest.raises(EventStreamError):
        EventStreamParser().feed(bytes(frame))


def test_invoke_chunks_unwrap_to_anthropic_events_without_bedrock_metrics() -> None:
    inner = {"type": "message_stop", "amazon-bedrock-invocationMetrics": {"inputTokenCount": 3}}
    payload = orjson.dumps({"bytes": base64.b64encode(orjson.dumps(inner)).decode(), "p": "abcd"})
    [ev] = EventStreamParser(unwrap_chunks=True).feed(event("chunk", payload))
    assert (ev.event, ev.data) == ("message_stop", b'{"type":"message_stop"}')
    assert ev.raw == b'event: message_stop\ndata: {"type":"message_stop"}\n\n'


@pytest.mark.parametrize("status, body, etype, retryable", [
    (400, b'{"message":"bad"}', "invalid_request_error", False),
    (403, b'{"message":"The security token included in the request is invalid."}', "permission_error", False),
    (429, b'{"message":"Too many requests"}', "rate_limit_error", True),
    (424, b'{"message":"The model returned an error."}', "api_error", True),
    (503, b'{"Message":"busy"}', "api_error", True),
    (500, b"<html>oops</html>", "api_error", True),
])
def test_error_info(status: int, body: bytes, etype: str, retryable: bool) -> None:
    info = error_info(status, body)
    assert (info.type, info.retryable) == (etype, retryable)
    assert info.message


@pytest.mark.parametrize("line, want", [
    ("AKIAIOSFODNN7EXAMPLE:secret/with+chars", ("AKIAIOSFODNN7EXAMPLE", "secret/with+chars", None)),
    ("ASIAQEXAMPLE2TEMPKEY:s:tok/en+=", ("ASIAQEXAMPLE2TEMPKEY", "s", "tok/en+=")),
    ("ABSKQmVkcm9ja0FQSUtleQ==", None),  # a Bedrock API key: a bearer token
])
def test_key_lines(line: str, want: tuple[str, str, str | None] | None) -> None:
    got = parse_key_line(line)
    assert (None if got is None else (got.access_key_id, got.secret_access_key, got.session_token)) == want


@pytest.mark.parametrize("line", ["akia-lower:secret", "AKIAIOSFODNN7EXAMPLE:", "AKIAIOSFODNN7EXAMPLE:a:b:c"])
def test_bad_key_lines_are_refused_without_quoting_them(line: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_key_line(line)
    assert line not in str(e.value)


@pytest.mark.parametrize("model, name", [
    ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5-20250929"),
    ("anthropic.claude-3-5-haiku-20241022-v1:0", "claude-3-5-haiku-20241022"),
    ("arn:aws:bedrock:us-east-1:123456789012:inference-profile/global.anthropic.claude-haiku-4-5-20251001-v1:0",
     "claude-haiku-4-5-20251001"),
    ("amazon.nova-pro-v1:0", "nova-pro"),
    ("claude-sonnet-4-5@20250929", "claude-sonnet-4-5"),
    ("gemini-2.5-flash", "gemini-2.5-flash"),
    ("gpt-4o", "gpt-4o"),
])
def test_cloud_model_ids_price_as_the_model_inside(model: str, name: str) -> None:
    assert list_name(model) == name
    assert find_price(model) == find_price(name) is not None


@pytest.mark.parametrize("model, top_p", [("us.anthropic.claude-haiku-4-5-20251001-v1:0", False),
                                          ("amazon.nova-pro-v1:0", True)])
def test_claude_gets_temperature_or_top_p_not_both(model: str, top_p: bool) -> None:
    adapter = BedrockAdapter(from_data(
        {"name": "b", "provider": "bedrock", "baseURL": "https://bedrock-runtime.us-east-1.amazonaws.com",
         "region": "us-east-1"}, ProviderKeyConfig))
    prepared = adapter.chat({"messages": [{"role": "user", "content": "hi"}], "temperature": 0.3, "top_p": 0.8},
                            model, False)
    inference = orjson.loads(prepared.body)["inferenceConfig"]
    assert inference["temperature"] == 0.3 and ("topP" in inference) == top_p
    assert prepared.url.endswith(f"/model/{model}/converse")
