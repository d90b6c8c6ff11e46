"""The engine's stream reader: good events, then an in-stream error, however the upstream's bytes are cut.

Each upstream wire format's stream of a few good events and then its documented error (OpenAI's
``data: {"error": ...}``, Anthropic's ``event: error``, Gemini's error chunk, a Bedrock
event-stream ``exception`` message), fed to the reader in pieces cut at arbitrary points: the
caller's bytes and the reported error are those of one event per read. The gateway-level
twin, through a real `modelroute serve`, is tests/dialects/test_stream_error_bursts.py.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelroute_sidecar.engine import _Reader
from modelroute_sidecar.sse import SSEParser, frame
from modelroute_sidecar.wire.anthropic.caller import AnthropicMessages
from modelroute_sidecar.wire.anthropic.upstream import AnthropicStreamDecoder
from modelroute_sidecar.wire.aws_eventstream import EventStreamParser
from modelroute_sidecar.wire.base import Dialect, StreamDecoder, UpstreamErrorInfo
from modelroute_sidecar.wire.bedrock_converse.upstream import ConverseStreamDecoder
from modelroute_sidecar.wire.gemini.caller import GeminiGenerate
from modelroute_sidecar.wire.gemini.upstream import GeminiStreamDecoder
from modelroute_sidecar.wire.openai_chat.caller import OpenAIChat
from modelroute_sidecar.wire.openai_chat.upstream import OpenAIStreamDecoder
from tests.fakes.aws_wire import event as aws_event
from tests.fakes.aws_wire import exception as aws_exception

from .helpers import split_at


def _chat(delta: dict[str, Any]) -> bytes:
    return frame(orjson.dumps({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                               "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}))


def _anthropic(ev: dict[str, Any]) -> bytes:
    return frame(orjson.dumps(ev), ev["type"])


def _gemini(text: str) -> bytes:
    return frame(orjson.dumps({"candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}],
                               "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 2,
                                                 "totalTokenCount": 6}, "responseId": "r1"}))


OPENAI = [_chat({"role": "assistant", "content": ""}), _chat({"content": "echo:"}), _chat({"content": " one"}),
          frame(b'{"error":{"message":"broke","type":"server_error","code":null}}')]
ANTHROPIC = [
    _anthropic({"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [], "stop_reason": None,
        "stop_sequence": None, "usage": {"input_tokens": 4, "output_tokens": 1}}}),
    _anthropic({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    _anthropic({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "echo:"}}),
    _anthropic({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " one"}}),
    _anthropic({"type": "error", "error": {"type": "overloaded_error", "message": "broke"}}),
]
GEMINI = [_gemini("echo:"), _gemini(" one"),
          frame(b'{"error":{"code":500,"message":"broke","status":"INTERNAL"}}')]
BEDROCK = [aws_event("messageStart", b'{"role":"assistant","p":"abc"}'),
           aws_event("contentBlockDelta", b'{"contentBlockIndex":0,"delta":{"text":"echo:"},"p":"ab"}'),
           aws_event("contentBlockDelta", b'{"contentBlockIndex":0,"delta":{"text":" one"},"p":"a"}'),
           aws_exception("internalServerException", b'{"message":"broke"}')]

CHAT_BODY = b'{"model":"m","stream":true,"messages":[{"role":"user","content":"one"}]}'
MESSAGES_BODY = b'{"model":"m","stream":true,"max_tokens":10,"messages":[{"role":"user","content":"one"}]}'
GEMINI_BODY = b'{"contents":[{"role":"user","parts":[{"text":"one"}]}]}'

# name: (upstream events, parser, decoder, caller dialect, its request, pass-through)
CASES: dict[str, tuple[list[bytes], type, type[StreamDecoder], Dialect, bytes, bool]] = {
    "openai-native": (OPENAI, SSEParser, OpenAIStreamDecoder, OpenAIChat(), CHAT_BODY, True),
    "anthropic-native": (ANTHROPIC, SSEParser, AnthropicStreamDecoder, AnthropicMessages(), MESSAGES_BODY, True),
    "anthropic-to-chat": (ANTHROPIC, SSEParser, AnthropicStreamDecoder, OpenAIChat(), CHAT_BODY, False),
    "gemini-native": (GEMINI, SSEParser, GeminiStreamDecoder, GeminiGenerate(), GEMINI_BODY, True),
    "gemini-to-messages": (GEMINI, SSEParser, GeminiStreamDecoder, AnthropicMessages(), MESSAGES_BODY, False),
    "bedrock-to-chat": (BEDROCK, EventStreamParser, ConverseStreamDecoder, OpenAIChat(), CHAT_BODY, False),
    "openai-to-gemini": (OPENAI, SSEParser, OpenAIStreamDecoder, GeminiGenerate(), GEMINI_BODY, False),
}


def reader(case: str) -> _Reader:
    _, parser, decoder, dialect, body, native = CASES[case]
    ingress = dialect.parse_for(body, "m", True) if isinstance(dialect, GeminiGenerate) else dialect.parse(body)
    adapter = SimpleNamespace(stream_parser=lambda model, native: parser(),
                              stream_decoder=lambda model: decoder(*(() if decoder is OpenAIStreamDecoder else ("m",))))
    call: Any = SimpleNamespace(dialect=dialect, ingress=ingress)
    backend: Any = SimpleNamespace(id="up/m", adapter=adapter, model="m")
    return _Reader(call, backend, native)


def run(case: str, pieces: list[bytes]) -> tuple[list[Any], UpstreamErrorInfo | None, Any]:
    """The caller's events (ids and times left out), the error reported, the usage counted."""
    r = reader(case)
    out = b""
    for piece in pieces:
        out += r.process(piece)
        if r.error is not None or r.finished:
            break
    payloads = [orjson.loads(ev.data) for ev in SSEParser().feed(out)]
    for p in payloads:
        for key in ("id", "created", "responseId"):
            p.pop(key, None)
        (p.get("message") or {}).pop("id", None)
    return payloads, r.error, r.usage


@pytest.mark.parametrize("case", list(CASES))
def test_one_read_delivers_the_good_events_then_reports_the_error(case: str) -> None:
    events = CASES[case][0]
    paced = run(case, events)
    assert paced[0] and paced[1] is not None and "broke" in paced[1].message
    assert run(case, [b"".join(events)]) == paced
    if case.startswith(("anthropic-native", "gemini")):
        assert paced[2] is not None and paced[2].input_tokens == 4  # usage known before the error counts


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(list(CASES)), st.lists(st.integers(0, 1 << 12), max_size=12))
def test_any_cut_of_the_bytes_gives_the_same(case: str, cuts: list[int]) -> None:
    events = CASES[case][0]
    assert run(case, split_at(b"".join(events), cuts)) == run(case, events)
