"""HTTP handlers of the per-model operations: read and check the body, then the shared
``serve_dialect`` path (caller identity, model-name gate, routing, allowedServiceAccounts,
refusal logging) with the surface's engine. Imported on the first such request.
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..app import GATEWAY, Gateway, serve_dialect
from ..errors import bad_request
from ..request_body import read_body
from ..wire.base import Ingress
from ..wire.openai_chat.validation import parse_json_object
from .engine import FORM, SurfaceDialect, SurfaceEngine
from .multipart import read_form
from .operations import OPERATIONS, Operation

Reader = Callable[[web.Request, int, float], Awaitable[Ingress]]

_ENGINES: weakref.WeakKeyDictionary[Gateway, SurfaceEngine] = weakref.WeakKeyDictionary()


def engine_of(gw: Gateway) -> SurfaceEngine | None:
    """The gateway's surface engine, sharing its HTTP clients (None before it started)."""
    if gw.engine is None:
        return None
    engine = _ENGINES.get(gw)
    if engine is None or engine.lean is not gw.lean:
        engine = _ENGINES[gw] = SurfaceEngine(gw.client_session, gw.lean)
    return engine


def json_reader(op: Operation) -> Reader:
    assert op.schema is not None
    schema = op.schema

    async def read(request: web.Request, limit: int, seconds: float) -> Ingress:
        req = parse_json_object(await read_body(request, limit, seconds), schema)
        stream = op.streams and bool(req.get("stream"))
        include_usage = stream and bool((req.get("stream_options") or {}).get("include_usage"))
        return Ingress(req, req["model"], stream, include_usage)

    return read


def form_reader(op: Operation) -> Reader:
    async def read(request: web.Request, limit: int, seconds: float) -> Ingress:
        form = await read_form(request, limit, seconds)
        model = form.field("model")
        if not model:
            raise bad_request("Missing required parameter: 'model'.", "model")
        for name in op.required:
            if form.file(name) is None:
                raise bad_request(f"Missing required parameter: '{name}' (a file part).", name)
        return Ingress({FORM: form}, model, False, False)

    return read


_HANDLERS: dict[str, tuple[SurfaceDialect, Reader, str]] = {
    path: (SurfaceDialect(op), json_reader(op) if op.body == "json" else form_reader(op), op.name)
    for path, op in OPERATIONS.items()
}


async def serve(request: web.Request) -> web.StreamResponse:
    dialect, read, operation = _HANDLERS[request.path]
    engine = engine_of(request.app[GATEWAY])
    return await serve_dialect(request, dialect, operation, read=read, engine=engine)
