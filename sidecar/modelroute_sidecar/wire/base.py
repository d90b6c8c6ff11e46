"""The interfaces of a wire format's two sides.

Upstream side (``wire/<format>/upstream.py``): a :class:`StreamDecoder` turns the format's
stream into canonical chunks, :class:`UpstreamErrorInfo` says what an error body meant.

Caller side (``wire/<format>/caller.py``): a :class:`Dialect` validates the caller's body,
translates it to the canonical request, and translates canonical responses, streams and
errors back. When the pair table (``pairs.py``) says the request passes through, the engine
skips translation and uses the ``native_*`` hooks only to read usage and errors from the
passed-through traffic.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, NamedTuple

from ..canonical import ChatChunk, ChatRequest, ChatResponse, Usage
from ..errors import ErrorType, GatewayError
from ..sse import SSEEvent

# ------------------------------------------------------------------ upstream side


class UpstreamErrorInfo(NamedTuple):
    """An upstream error, read from its body, in gateway terms."""

    message: str
    type: ErrorType
    retryable: bool  # worth another backend or key (overloaded, rate limit, server error)


class StreamError(Exception):
    """An upstream reported an error inside a stream (e.g. Anthropic's ``error`` event)."""

    def __init__(self, info: UpstreamErrorInfo) -> None:
        super().__init__(info.message)
        self.info = info


class StreamDecoder(ABC):
    """Turns one upstream stream's SSE events into canonical chunks.

    ``feed`` returns the chunks an event yields (often none) and raises
    :class:`StreamError` for an in-band error event. ``usage`` is set once known.
    ``done`` becomes True when the upstream signalled a proper end.
    """

    usage: Usage | None = None
    done: bool = False

    @abstractmethod
    def feed(self, event: SSEEvent) -> list[ChatChunk]: ...

    def finish(self) -> list[ChatChunk]:
        """Chunks to flush when the upstream's byte stream ends."""
        return []


# -------------------------------------------------------------------- caller side


class Ingress(NamedTuple):
    """A validated caller request: the body as a dict, plus what routing needs."""

    body: dict[str, Any]
    model: str
    stream: bool
    include_usage: bool  # whether the caller wants usage in its stream


class StreamEncoder(ABC):
    """Canonical chunks in, the caller's SSE bytes out."""

    @abstractmethod
    def chunk(self, chunk: ChatChunk) -> bytes: ...

    def note_usage(self, usage: Usage) -> None:  # noqa: B027 - most dialects report usage only at the end
        """The upstream's usage so far (called as it becomes known, before the chunks it came with)."""

    @abstractmethod
    def end(self) -> bytes:
        """The dialect's proper ending (``[DONE]``, ``message_stop``, ``response.completed``)."""

    @abstractmethod
    def error(self, err: GatewayError) -> bytes:
        """A well-formed error event that ends the stream after an upstream failure."""

    def frame(self, event: SSEEvent) -> bytes:
        """A passed-through event in the caller's framing (see :attr:`NativeTap.reframe`)."""
        return event.raw

    def close(self) -> bytes:
        """The end of a passed-through stream in the caller's framing."""
        return b""


class NativeTap(ABC):
    """Watches a passed-through stream for usage, in-band errors and its proper end."""

    usage: Usage | None = None
    done: bool = False
    error: UpstreamErrorInfo | None = None  # set when the upstream sent an in-band error event
    # True when the caller wants another framing than the upstream's SSE (Gemini's JSON
    # array): events then go out through StreamEncoder.frame instead of as they came.
    reframe: bool = False

    @abstractmethod
    def feed(self, event: SSEEvent) -> bool:
        """Inspect one event; return False to drop it instead of passing it on."""


class Dialect(ABC):
    name: ClassVar[str]
    stream_content_type: str = "text/event-stream; charset=utf-8"
    # Caller headers passed on to an upstream that speaks this dialect natively
    # (e.g. ``anthropic-beta``, which Claude Code uses to switch features on).
    forward_headers: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def parse(self, body: bytes) -> Ingress:
        """Validate the raw body; raise GatewayError (4xx) on bad input."""

    @abstractmethod
    def to_canonical(self, ingress: Ingress) -> ChatRequest: ...

    @abstractmethod
    def from_canonical(self, resp: ChatResponse, model: str) -> dict[str, Any]: ...

    @abstractmethod
    def stream_encoder(self, model: str, include_usage: bool) -> StreamEncoder: ...

    def response_for(self, resp: ChatResponse, ingress: Ingress) -> dict[str, Any]:
        """The translated answer to ``ingress`` (a dialect whose answers depend on what the
        request offered, e.g. Responses' freeform tools, overrides this)."""
        return self.from_canonical(resp, ingress.model)

    def encoder_for(self, ingress: Ingress) -> StreamEncoder:
        """The stream encoder for ``ingress``; see :meth:`response_for`."""
        return self.stream_encoder(ingress.model, ingress.include_usage)

    @abstractmethod
    def render_error(self, err: GatewayError) -> bytes:
        """The error body in this dialect (the status is ``err.status``)."""

    def native_usage(self, body: dict[str, Any]) -> Usage | None:
        """Usage of a passed-through non-streaming response."""
        return None

    def native_tap(self, include_usage: bool) -> NativeTap:
        raise NotImplementedError
