"""Bedrock's streams, ``application/vnd.amazon.eventstream``, read as the engine's SSE events.

The framing (prelude with lengths and a CRC32, typed headers, payload, message CRC32) is
decoded by botocore's ``EventStreamBuffer``: the AWS SDK's own decoder, kept by AWS, which
checks both CRCs and the length limits. It is imported with the Bedrock adapter only
(about 2 MB and 40 ms; see ``providers/bedrock.py``).

Each ``:message-type: event`` message becomes an ``SSEEvent`` named by its ``:event-type``
header, so stream decoders and pass-through taps read Bedrock like any SSE upstream.
``exception`` and ``error`` messages raise :class:`StreamError`; a damaged frame
(checksum, length) raises ``ValueError``, which the engine reports as an invalid stream.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson
from botocore.eventstream import EventStreamBuffer, ParserError

from ..sse import SSEEvent, frame
from .base import StreamError
from .bedrock_converse.upstream import exception_info

CONTENT_TYPE = "application/vnd.amazon.eventstream"


class EventStreamError(ValueError):
    """The bytes are not a valid AWS event stream."""


class EventStreamParser:
    """Feed bytes, get one ``SSEEvent`` per complete event message.

    ``unwrap_chunks``: InvokeModelWithResponseStream wraps each of the model's own stream
    events as ``{"bytes": "<base64 JSON>"}`` in a ``chunk`` event; unwrapped, an Anthropic
    model's events come out exactly as Anthropic's SSE would carry them (``raw`` included,
    for pass-through), without Bedrock's ``amazon-bedrock-invocationMetrics`` addition.
    """

    __slots__ = ("_buf", "_unwrap")

    def __init__(self, unwrap_chunks: bool = False) -> None:
        self._buf = EventStreamBuffer()
        self._unwrap = unwrap_chunks

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        events, failure = self.read(chunk)
        if failure is not None:
            raise failure
        return events

    def read(self, chunk: bytes) -> tuple[list[SSEEvent], Exception | None]:
        """The complete events, and the exception message or damage that stopped reading
        after them: events before it are kept, whichever network read it arrived in."""
        self._buf.add_data(chunk)
        events: list[SSEEvent] = []
        try:
            for message in self._buf:
                ev = self._event(message.headers, message.payload)
                if ev is not None:
                    events.append(ev)
        except ParserError as e:
            return events, EventStreamError(f"invalid event stream: {type(e).__name__}")
        except (StreamError, ValueError, KeyError, TypeError) as e:  # an exception message; a bad chunk
            return events, e
        return events, None

    def _event(self, headers: dict[str, Any], payload: bytes) -> SSEEvent | None:
        mtype = headers.get(":message-type")
        if mtype == "exception":
            name = str(headers.get(":exception-type") or "")
            raise StreamError(exception_info(name, _message(payload)))
        if mtype == "error":
            raise StreamError(exception_info(str(headers.get(":error-code") or ""),
                                             str(headers.get(":error-message") or "")))
        if mtype != "event":
            return None
        name = str(headers.get(":event-type") or "")
        if not self._unwrap:
            return SSEEvent(name, payload, frame(payload, name))
        if name != "chunk":
            return None
        inner = orjson.loads(base64.b64decode(orjson.loads(payload)["bytes"], validate=True))
        if not isinstance(inner, dict):
            raise EventStreamError("a chunk that is not a JSON object")
        inner.pop("amazon-bedrock-invocationMetrics", None)
        data = orjson.dumps(inner)
        etype = inner.get("type")
        etype = etype if isinstance(etype, str) else None
        return SSEEvent(etype, data, frame(data, etype))


def _message(payload: bytes) -> str:
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return payload[:300].decode("utf-8", "replace")
    msg = data.get("message") or data.get("Message") if isinstance(data, dict) else None
    return msg if isinstance(msg, str) else ""
