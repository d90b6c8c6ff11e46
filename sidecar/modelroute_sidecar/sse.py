"""Incremental Server-Sent Events parsing and framing.

Upstreams deliver SSE in arbitrary TCP chunks; :class:`SSEParser` reassembles them
into events without copying more than the unparsed tail. Only ``event`` and ``data``
fields matter to LLM APIs; ``id``/``retry`` and comments are dropped.
"""

from __future__ import annotations

from typing import NamedTuple


class SSEEvent(NamedTuple):
    event: str | None
    data: bytes
    raw: bytes  # the whole event as received, terminator included, for pass-through


# The longest event accepted; more bytes without an event's end is not an event stream.
MAX_EVENT_BYTES = 16 * 1024 * 1024
_FIELDS = frozenset((b"data", b"event", b"id", b"retry"))


class SSEError(ValueError):
    """The bytes are not an event stream (an HTML page, plain text, a runaway line)."""


class SSEParser:
    """Feed bytes, get complete events. Handles ``\\n``, ``\\r\\n`` and ``\\r`` line ends.

    Raises :class:`SSEError` for a line that is no SSE field, or an event past
    :data:`MAX_EVENT_BYTES`: an upstream sending that is broken, not saying something.
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        events, failure = self.read(chunk)
        if failure is not None:
            raise failure
        return events

    def read(self, chunk: bytes) -> tuple[list[SSEEvent], SSEError | None]:
        """The complete events, and the failure that stopped reading after them: the events
        before a broken line are kept, whichever network read the line arrived in."""
        buf = self._buf + chunk if self._buf else chunk
        if b"\r" in buf:
            # Normalise once so the splitting below only deals with LF.
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        events: list[SSEEvent] = []
        start = 0
        while True:
            end = buf.find(b"\n\n", start)
            if end < 0:
                break
            block = buf[start:end]
            start = end + 2
            try:
                ev = _parse_block(block)
            except SSEError as e:
                return events, e
            if ev is not None:
                events.append(ev)
        self._buf = buf[start:]
        if len(self._buf) > MAX_EVENT_BYTES:
            return events, SSEError(f"an event longer than {MAX_EVENT_BYTES} bytes")
        return events, None

    @property
    def pending(self) -> bytes:
        return self._buf


def _parse_block(block: bytes) -> SSEEvent | None:
    event: str | None = None
    data_lines: list[bytes] = []
    for line in block.split(b"\n"):
        if not line or line[0] == 0x3A:  # ':' comment / keep-alive
            continue
        field, sep, value = line.partition(b":")
        if sep and value[:1] == b" ":
            value = value[1:]
        if field == b"data":
            data_lines.append(value)
        elif field == b"event":
            event = value.decode("utf-8", "replace")
        elif field not in _FIELDS:
            raise SSEError("a line that is not an SSE field")
    if not data_lines and event is None:
        return None
    return SSEEvent(event, b"\n".join(data_lines), block + b"\n\n")


def frame(data: bytes, event: str | None = None) -> bytes:
    """One SSE event; ``data`` must not contain newlines (JSON from orjson never does)."""
    if event is None:
        return b"data: " + data + b"\n\n"
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"
