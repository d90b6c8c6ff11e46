"""Files and batches: account-wide resources, not per-model calls.

A file or a batch lives in one provider account, and every later call about it (retrieve,
content, delete, cancel, the batch that reads the file) must reach that same account. So
these requests name a route in the ``x-modelroute-route`` header (a model name, as in a
chat request; an OpenAI client sets it once with ``default_headers``), and go to the
account of that route's first backend that has files and batches (kind openai,
azure-openai, openai-compatible or mock), always the same one, never failed over:
another account knows nothing of the file. The route's allowedServiceAccounts apply.

Repeats: creating a file or a batch is not safe to repeat (a lost answer may hide a
created object), so it is tried once; only an answer that says nothing was done
(401/403/429) moves on to the ProviderKey's next key. Reads, deletes and cancels are
idempotent and also get one more try after a connection failure or a 5xx.

A batch input file (``purpose=batch``) names models per line; a line whose ``body.model``
is the route's name is rewritten to the backend's model on upload, so a batch file can
be written against the gateway's names.
"""

# No `from __future__ import annotations` here: TypedDict turns every string annotation into a
# ForwardRef, compiling each one at import (for a request shape: ~1 ms and ~25 KiB in each pod).
import asyncio
import logging
from dataclasses import dataclass
from typing import Any, NotRequired

import aiohttp
import orjson
from aiohttp import web
from aiohttp.client_exceptions import ClientError
from typing_extensions import TypedDict

from ..app import (
    GATEWAY,
    OPENAI_CHAT,
    REQUEST_ID,
    _check_access,
    _checked_headers,
    _refuse,
    log_refused,
)
from ..engine import AttemptFailed, credential_headers, parse_retry_after, request_id
from ..errors import GatewayError, bad_request, model_not_found
from ..logs import access_log
from ..providers.base import PreparedRequest
from ..request_body import read_body
from ..router import Backend, Route, Runtime
from ..syntax import MODEL_NAME_RULE, path_segment, valid_model_name
from ..wire.openai_chat.validation import parse_json_object
from ..wire.shapes import Shape
from .multipart import Form, Part, encode, read_form
from .upstream import account_url

log = logging.getLogger("modelroute.gateway")

ROUTE_HEADER = "x-modelroute-route"
ACCOUNT_KINDS = frozenset({"openai", "azure-openai", "openai-compatible", "mock"})
LIST_QUERY = {"files": ("purpose", "limit", "order", "after"), "batches": ("limit", "after")}
_OPEN: dict[str, Any] = {"extra": "allow"}  # pydantic's TypedDict config (see wire/shapes.py)


class _BatchCreate(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: NotRequired[dict[str, str] | None]


_BATCH = Shape(_BatchCreate)


@dataclass(frozen=True, slots=True)
class Action:
    """One files/batches request, as the upstream will get it."""

    name: str  # files.create, batches.cancel...: the access log's reason-free label
    method: str
    path: str  # under the account's base, segments escaped
    query: dict[str, str]
    idempotent: bool
    body: bytes | None = None
    form: Form | None = None


def account_of(route: Route) -> Backend:
    for b in route.backends:
        if b.adapter.kind in ACCOUNT_KINDS:
            return b
    kinds = ", ".join(sorted({b.adapter.kind for b in route.backends})) or "none"
    raise GatewayError(400, f"Route '{route.name}' has no backend with files and batches (its kinds: {kinds}); "
                       "they need an openai, azure-openai, openai-compatible or mock backend.",
                       param=ROUTE_HEADER, code="unsupported_operation")


def rewrite_batch_models(part: Part, route: str, model: str) -> None:
    """Lines whose ``body.model`` is the route's name get the backend's model (in place).
    Lines that are not JSON objects are left for the upstream to judge."""
    if route == model:
        return
    lines = b"".join(part.chunks).split(b"\n")
    changed = False
    for i, line in enumerate(lines):
        if b'"model"' not in line:
            continue
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        body = item.get("body") if isinstance(item, dict) else None
        if isinstance(body, dict) and body.get("model") == route:
            body["model"] = model
            lines[i] = orjson.dumps(item)
            changed = True
    if changed:
        part.chunks = [b"\n".join(lines)]
        part.size = len(part.chunks[0])


async def action_for(request: web.Request, rt: Runtime, seconds: float, route: Route,
                     backend: Backend) -> Action:
    parts = request.path.strip("/").split("/")[1:]  # files | files/{id} | files/{id}/content | batches...
    kind, rest = parts[0], parts[1:]
    ident = path_segment(request.match_info["id"]) if "id" in request.match_info else ""
    method = request.method
    if not rest:
        if method == "GET":
            query = {k: request.query[k] for k in LIST_QUERY[kind] if k in request.query}
            return Action(f"{kind}.list", "GET", kind, query, True)
        if kind == "files":
            form = await read_form(request, rt.max_body_bytes, seconds)
            file = form.file("file")
            if file is None:
                raise bad_request("Missing required parameter: 'file' (a file part).", "file")
            purpose = form.field("purpose")
            if not purpose:
                raise bad_request("Missing required parameter: 'purpose'.", "purpose")
            if purpose == "batch":
                rewrite_batch_models(file, route.name, backend.model)
            return Action("files.create", "POST", "files", {}, False, form=form)
        body = parse_json_object(await read_body(request, rt.max_body_bytes, seconds), _BATCH)
        return Action("batches.create", "POST", "batches", {}, False, body=orjson.dumps(body))
    if rest[-1] == "content":
        return Action("files.content", "GET", f"files/{ident}/content", {}, True)
    if rest[-1] == "cancel":
        return Action("batches.cancel", "POST", f"batches/{ident}/cancel", {}, True, body=b"")
    name = {"GET": "retrieve", "DELETE": "delete"}[method]
    return Action(f"{kind}.{name}", method, f"{kind}/{ident}", {}, True)


async def serve(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    rt = gw.runtime
    name = request.headers.get(ROUTE_HEADER)
    rid: str | None = None
    try:
        rid = _checked_headers(request, OPENAI_CHAT)
        if rt is None or gw.engine is None:
            raise GatewayError(503, "The gateway has no configuration yet", type="api_error", code="not_ready")
        caller = rt.callers.identify(request)
        if not name:
            raise bad_request(f"Files and batches live in one provider account: name the route whose account holds "
                              f"them (a model name) in the {ROUTE_HEADER} header.", ROUTE_HEADER, "missing_route")
        if not valid_model_name(name):
            raise bad_request(f"Invalid {ROUTE_HEADER}: it names a route by model name, and {MODEL_NAME_RULE}.",
                              ROUTE_HEADER, "invalid_model_name")
        route = rt.resolve(name)
        if route is None:
            raise model_not_found(name, rt.why_unrouted(name))
        _check_access(gw, route, caller, name)
        backend = account_of(route)
        action = await action_for(request, rt, gw.body_timeout, route, backend)
        rid = rid or request_id()
        return await _forward(request, rt, gw.client_session(), route, backend, action, rid, caller)
    except GatewayError as err:
        if err.status < 500:
            gw.metrics.unrouted(err.status)
        return await _refuse(request, OPENAI_CHAT, err, log_refused(request, OPENAI_CHAT, err, name, rid))


async def _forward(request: web.Request, rt: Runtime, session: aiohttp.ClientSession, route: Route,
                   backend: Backend, action: Action, rid: str, caller: str | None) -> web.StreamResponse:
    loop = asyncio.get_running_loop()
    started = loop.time()
    adapter = backend.adapter
    headers = {"x-modelroute-backend": backend.id, REQUEST_ID: rid}
    if adapter.in_process:
        from .mock_files import answer

        status, ctype, body = answer(adapter, action)
        headers["x-modelroute-attempts"] = "1"
        return _done(request, rt, route, backend, action, rid, caller, started,
                     web.Response(status=status, body=body, content_type=ctype, headers=headers))
    url = account_url(adapter.pk, action.path, action.query)
    timeout = aiohttp.ClientTimeout(total=route.timeouts.total_seconds, sock_connect=route.timeouts.connect_seconds)
    keys = backend.keyring
    tries = max(len(keys.entries), 2 if action.idempotent else 1)
    for attempt in range(1, tries + 1):
        key = keys.pick()
        assert key is not None
        send_headers = {"accept": "application/json", **adapter.pk.headers, **key.headers}
        data: Any = action.body
        if action.form is not None:
            encoded = encode(action.form, {})
            data = encoded.stream()
            send_headers.update({"content-type": encoded.content_type, "content-length": str(encoded.length)})
        elif action.body is not None:
            send_headers["content-type"] = "application/json"
        if key.source is not None:  # workload identity (e.g. Entra for azure-openai)
            try:
                send_headers.update(await credential_headers(
                    backend, key, PreparedRequest(url, action.body or b"", send_headers)))
            except AttemptFailed as e:
                raise GatewayError(503, rt.redactor.text(e.info.message), type="api_error",
                                   code="upstream_unavailable") from None
        last = attempt == tries
        try:
            resp = await session.request(action.method, url, data=data, headers=send_headers, timeout=timeout,
                                         proxy=adapter.proxy, proxy_auth=adapter.proxy_auth)
        except (ClientError, OSError, TimeoutError) as e:
            backend.metrics.attempt("connect_error")
            log.warning("attempt failed", extra={"fields": {"request_id": rid, "route": route.name,
                                                            "backend": backend.id, "key": key.label,
                                                            "reason": "connect_error", "error": type(e).__name__}})
            if action.idempotent and not last:
                continue
            raise GatewayError(502, f"Could not reach {backend.id}: {type(e).__name__}", type="api_error",
                               code="upstream_unavailable") from None
        try:
            nothing_done = resp.status in (401, 403, 429)
            if not last and (nothing_done or (action.idempotent and resp.status >= 500)):
                if nothing_done:
                    cool = (rt.config.key_cooldowns.auth_seconds if resp.status != 429 else
                            parse_retry_after(resp.headers) or rt.config.key_cooldowns.rate_limit_seconds)
                    keys.cool_down(key, cool)
                backend.metrics.attempt(str(resp.status))
                continue
            headers["x-modelroute-attempts"] = str(attempt)
            return await _answer(request, rt, route, backend, action, rid, caller, started, resp, headers)
        finally:
            resp.release()
    raise AssertionError("unreachable: the last try answers or raises")


async def _read(resp: aiohttp.ClientResponse, backend: Backend) -> bytes:
    """The whole upstream body; a 502 (nothing was sent to the caller yet) when it breaks off."""
    try:
        return await resp.read()
    except (ClientError, OSError, TimeoutError) as e:
        raise GatewayError(502, f"{backend.id} broke off its answer: {type(e).__name__}", type="api_error",
                           code="upstream_unavailable") from None


async def _answer(request: web.Request, rt: Runtime, route: Route, backend: Backend, action: Action, rid: str,
                  caller: str | None, started: float, resp: aiohttp.ClientResponse,
                  headers: dict[str, str]) -> web.StreamResponse:
    ctype = resp.headers.get("content-type", "application/octet-stream")
    if resp.status >= 400:
        # An upstream error, redacted whole (it may quote a key); in OpenAI's shape when it is not JSON.
        body = rt.redactor.body(await _read(resp, backend))
        try:
            orjson.loads(body)
        except orjson.JSONDecodeError:
            body = orjson.dumps({"error": {"message": f"{backend.id} answered HTTP {resp.status}",
                                           "type": "api_error", "param": None, "code": None}})
        out = web.Response(status=resp.status, body=body, content_type="application/json", headers=headers)
        return _done(request, rt, route, backend, action, rid, caller, started, out)
    if action.name != "files.content":
        out = web.Response(status=resp.status, body=await _read(resp, backend),
                           headers={**headers, "content-type": ctype})
        return _done(request, rt, route, backend, action, rid, caller, started, out)
    stream = web.StreamResponse(status=resp.status, headers={**headers, "content-type": ctype})
    await stream.prepare(request)
    try:
        async for chunk in resp.content.iter_any():
            await stream.write(chunk)
    except (ClientError, OSError):
        if request.transport is not None:
            request.transport.abort()  # cut short, never complete-looking
        return _done(request, rt, route, backend, action, rid, caller, started, stream, "upstream_stream_ended")
    await stream.write_eof()
    return _done(request, rt, route, backend, action, rid, caller, started, stream)


def _done(request: web.Request, rt: Runtime, route: Route, backend: Backend, action: Action, rid: str,
          caller: str | None, started: float, out: web.StreamResponse, error: str | None = None) -> web.StreamResponse:
    elapsed = asyncio.get_running_loop().time() - started
    backend.metrics.attempt("stream_error" if error else str(out.status))
    backend.metrics.duration.observe(elapsed)
    if access_log.enabled:
        access_log.write("request", {
            "request_id": rid, "status": out.status, "method": request.method, "path": request.path,
            "route": route.name, "caller": caller, "dialect": "openai", "operation": action.name,
            "backend": backend.id, "latency_ms": round(elapsed * 1000, 2), "reason": error})
    return out
