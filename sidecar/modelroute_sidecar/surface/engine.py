"""The surface's operations through the gateway's engine: same attempts, failover, retries,
key rotation, breakers, metrics and access log as chat; only the request and the answer differ.

Every per-model operation here is safe to repeat on another backend: each is a pure
function of its request (an image, a transcript, scores, a completion) with no state left
upstream, so from the caller's side a repeat is the same as the first try (a failed
attempt may still have been billed upstream, as with chat). Files and batches, which do
leave state, never come through here (see files.py).
"""

from __future__ import annotations

import asyncio
import copy
from typing import TYPE_CHECKING, Any, ClassVar

import orjson
from aiohttp import web
from aiohttp.client_exceptions import ClientError

from ..canonical import Usage
from ..engine import Call, Engine, session_timeout
from ..errors import GatewayError
from ..providers.base import PreparedRequest
from ..router import Backend, Route, Runtime
from ..sse import SSEParser
from ..wire.base import Ingress
from ..wire.openai_chat.caller import OpenAIChat
from .multipart import Form, encode
from .operations import Operation, unsupported_message
from .upstream import model_url

FORM = "\x00form"  # where a multipart ingress keeps its Form (never serialised)
MOCK_PREFIX = "mock:surface/"
_STREAM_CHUNK = 64 * 1024

if TYPE_CHECKING:
    from ..engine import UpstreamResponse


class SurfaceDialect(OpenAIChat):
    """OpenAI's errors and stream framing, with the operation's own usage and name."""

    name: ClassVar[str] = "openai"

    def __init__(self, op: Operation) -> None:
        self.op = op
        self.name = f"openai-{op.name}"  # type: ignore[misc]  # per operation, for the access log

    def native_usage(self, body: dict[str, Any]) -> Any:
        return self.op.usage(body)


def serving(route: Route, op: Operation) -> Route:
    """The route, less the backends whose kind lacks ``op``; a 400 when none is left."""
    kinds = [b.adapter.kind for b in route.backends]
    if all(k in op.kinds for k in kinds):
        return route
    able = [b for b in route.backends if b.adapter.kind in op.kinds]
    if not able:
        raise GatewayError(400, unsupported_message(op, route.name, kinds), param="model",
                           code="unsupported_operation")
    narrowed = copy.copy(route)
    narrowed.backends = able
    keep = frozenset(id(b) for b in able)
    order = route.order
    narrowed.order = lambda: [b for b in order() if id(b) in keep]
    return narrowed


class SurfaceEngine(Engine):
    async def handle(self, request: web.Request, rt: Runtime, route: Route, dialect: Any, ingress: Ingress,
                     operation: str = "chat", caller: str | None = None, spend: Any = None) -> web.StreamResponse:
        assert isinstance(dialect, SurfaceDialect)
        return await super().handle(request, rt, serving(route, dialect.op), dialect, ingress, operation, caller,
                                    spend)

    def _prepare_request(self, call: Call, backend: Backend) -> tuple[PreparedRequest, bool]:
        op = _op(call)
        ingress = call.ingress
        adapter = backend.adapter
        model = backend.model
        form: Form | None = ingress.body.get(FORM)
        if adapter.in_process:
            payload = ({**form.fields(), "model": model, "file": _file_facts(form)} if form is not None
                       else {**ingress.body, "model": model})
            return PreparedRequest(MOCK_PREFIX + op.path, orjson.dumps(payload), {}), True
        url = model_url(adapter.pk, op.path, model)
        if form is not None:
            return PreparedRequest(url, b"", {"accept": "application/json", **adapter.pk.headers}), True
        body = {**ingress.body, "model": model}
        if ingress.stream:
            # The gateway meters the stream: usage in its last chunk (dropped for a caller
            # who did not ask; see the chat tap).
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        headers = {"content-type": "application/json", **adapter.pk.headers}
        if ingress.stream:
            headers["accept"] = "text/event-stream"
        return PreparedRequest(url, orjson.dumps(body), headers), True

    async def _send(self, call: Call, backend: Backend, prepared: PreparedRequest,
                    headers: dict[str, str]) -> UpstreamResponse:
        form: Form | None = call.ingress.body.get(FORM)
        adapter = backend.adapter
        if form is None or adapter.in_process:
            return await super()._send(call, backend, prepared, headers)
        encoded = encode(form, {"model": backend.model})  # a fresh body each attempt
        return await self.session.post(
            prepared.url, data=encoded.stream(), timeout=session_timeout(call.route), proxy=adapter.proxy,
            proxy_auth=adapter.proxy_auth, headers={**headers, "content-type": encoded.content_type,
                                                    "content-length": str(encoded.length)})

    async def _complete(self, request: web.Request, rt: Runtime, call: Call, backend: Backend,
                        resp: UpstreamResponse, native: bool) -> web.StreamResponse:
        """A JSON answer is read whole (for its usage); anything else (audio, text, SRT, an
        SSE transcript) streams through as it comes, with the upstream's content type."""
        ctype = resp.headers.get("content-type", "application/octet-stream")
        if ctype.startswith("application/json"):
            return await super()._complete(request, rt, call, backend, resp, native)
        out = web.StreamResponse(status=200, headers={"content-type": ctype, **self._headers(call, backend)})
        # A streamed transcript (or SSE speech) reports its usage in its last event.
        meter = _SSEUsage(_op(call)) if ctype.startswith("text/event-stream") else None
        loop = asyncio.get_running_loop()
        between = call.route.timeouts.between_chunks_seconds
        error: str | None = None
        try:
            await out.prepare(request)
            while True:
                try:
                    async with asyncio.timeout_at(min(call.deadline, loop.time() + between)):
                        data = await resp.content.readany()
                except TimeoutError:
                    error = "upstream_timeout"
                    break
                except (ClientError, OSError, ValueError):  # the upstream broke off
                    error = "upstream_stream_ended"
                    break
                if not data:
                    break
                await out.write(data)  # a caller gone raises ConnectionResetError: client_closed below
                if meter is not None:
                    meter.feed(data)
            if error is None:
                await out.write_eof()
                backend.metrics.attempt("200")
                backend.succeeded()  # only now, as for a stream
            else:
                # Bytes already went out and a binary body has no error event: the caller
                # sees a body cut short (no final chunk), never a complete-looking one.
                backend.metrics.attempt("stream_error")
                backend.failed()
                if request.transport is not None:
                    request.transport.abort()
        except (ConnectionResetError, asyncio.CancelledError):
            backend.metrics.attempt("client_closed")
            self._finish(rt, call, backend, meter.usage if meter is not None else None, "client_closed")
            raise
        self._finish(rt, call, backend, meter.usage if meter is not None else None, error)
        return out


class _SSEUsage:
    """Reads the usage of a passed-through SSE answer (``transcript.text.done``,
    ``speech.audio.done``); the bytes go to the caller as they came, whatever this makes of them."""

    __slots__ = ("broken", "op", "parser", "usage")

    def __init__(self, op: Operation) -> None:
        self.op = op
        self.parser = SSEParser()
        self.usage: Usage | None = None
        self.broken = False

    def feed(self, data: bytes) -> None:
        if self.broken:
            return
        try:
            for event in self.parser.feed(data):
                if b'"usage"' in event.data:
                    body = orjson.loads(event.data)
                    if isinstance(body, dict):
                        self.usage = self.op.usage(body) or self.usage
        except (ValueError, TypeError, AttributeError):  # not SSE, not JSON: nothing to meter
            self.broken = True


def _op(call: Call) -> Operation:
    dialect = call.dialect
    assert isinstance(dialect, SurfaceDialect)
    return dialect.op


def _file_facts(form: Form) -> dict[str, Any]:
    f = next((p for p in form.parts if p.filename is not None), None)
    return {"filename": f.filename, "bytes": f.size, "content_type": f.content_type} if f else {}
