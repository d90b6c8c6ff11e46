"""The HTTP surface: thin handlers that parse, resolve a route, and hand over to the engine.

Two applications: the API (127.0.0.1 only; the pod's own containers are its callers)
and the admin one (``/metrics``, ``/healthz``, ``/readyz`` on all interfaces, for kubelet
probes and Prometheus).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import aiohttp
import orjson
from aiohttp import web
from aiohttp.client_exceptions import ClientConnectionResetError, ClientError
from aiohttp.typedefs import Handler

from .config import DEFAULT_BODY_TIMEOUT, DEFAULT_HEADER_TIMEOUT, GatewayConfig, Keys
from .engine import AttemptFailed, Engine, credential_headers, request_id
from .errors import GatewayError, access_denied, bad_request, model_not_found
from .identity import Callers
from .logs import access_log, redact_with
from .metrics import Metrics
from .redact import Redactor
from .request_body import read_body
from .router import Clock, KeyEntry, Route, Runtime, State
from .syntax import MODEL_NAME_RULE, valid_header_value, valid_model_name
from .upstream import LeanClient
from .wire.base import Dialect, Ingress
from .wire.openai_chat.caller import OpenAIChat, parse_embeddings, render_openai_error
from .wire.pairs import passes

if TYPE_CHECKING:
    from .budget.gate import Spend
    from .budget.holder import Budgets

log = logging.getLogger("modelroute.gateway")

# "lean": modelroute's own upstream client (upstream.py), about half the CPU per request of
# "aiohttp" (its ClientSession; still used for ProviderKeys behind a proxy).
UPSTREAM_CLIENTS = ("lean", "aiohttp")
DEFAULT_UPSTREAM_CLIENT = "lean"

OPENAI_CHAT = OpenAIChat()
_LAZY_DIALECTS: dict[str, Dialect] = {}


def anthropic_messages() -> Dialect:
    """The Anthropic dialect, imported on its first caller: a pod that never sees one never loads it."""
    d = _LAZY_DIALECTS.get("anthropic-messages")
    if d is None:
        from .wire.anthropic.caller import AnthropicMessages

        d = _LAZY_DIALECTS["anthropic-messages"] = AnthropicMessages()
    return d


def openai_responses() -> Dialect:
    """The Responses dialect (Codex), imported on its first caller."""
    d = _LAZY_DIALECTS.get("openai-responses")
    if d is None:
        from .wire.openai_responses.caller import OpenAIResponses

        d = _LAZY_DIALECTS["openai-responses"] = OpenAIResponses()
    return d


def gemini_generate(sse: bool = True) -> Dialect:
    """The Gemini dialect (google-genai, gemini-cli) in one of its stream framings, imported on first use."""
    key = "gemini" if sse else "gemini-array"
    d = _LAZY_DIALECTS.get(key)
    if d is None:
        from .wire.gemini.caller import GeminiGenerate

        d = _LAZY_DIALECTS[key] = GeminiGenerate(sse)
    return d


class Gateway:
    """Holds the current Runtime and what outlives reloads (state, metrics, HTTP client)."""

    def __init__(self, metrics: Metrics | None = None, upstream_client: str = DEFAULT_UPSTREAM_CLIENT,
                 clock: Clock = time.monotonic, header_timeout: float = DEFAULT_HEADER_TIMEOUT,
                 body_timeout: float = DEFAULT_BODY_TIMEOUT, callers: Callable[[], Callers] | None = None,
                 budgets: Budgets | Callable[[], Budgets] | None = None) -> None:
        if upstream_client not in UPSTREAM_CLIENTS:
            raise ValueError(f"upstream_client must be one of {UPSTREAM_CLIENTS}, not {upstream_client!r}")
        self.upstream_client = upstream_client
        self.lean: LeanClient | None = None
        self.metrics = metrics or Metrics()
        self.state = State(clock=clock)  # breakers and key cooldowns tell time by this clock
        self.runtime: Runtime | None = None
        self._log_keys = Redactor(())
        self._session: aiohttp.ClientSession | None = None
        self._running = False
        self.engine: Engine | None = None
        self.models_body = b'{"object":"list","data":[]}'
        self.draining = False
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        # Who the callers are, asked at each load (caller keys reload with the config).
        self.callers = callers or Callers
        # ModelBudgets: outlive reloads, as their spend must. Given as a factory, made (and the
        # budget package imported) only when a config first has a budget: most pods have none.
        self.budgets: Budgets | None = None
        self.admit: Callable[..., Awaitable[tuple[Route, Spend | None]]] | None = None
        self._make_budgets: Callable[[], Budgets] | None = None
        if callable(budgets):
            self._make_budgets = budgets
        elif budgets is not None:
            self._use_budgets(budgets)
        self.metrics.budgets = self.budgets

    def _use_budgets(self, budgets: Budgets) -> None:
        # The budget gate, imported here once (not per request, nor without budgets).
        from .budget.gate import admit

        self.budgets = self.metrics.budgets = budgets
        self.admit = admit

    def apply(self, config: GatewayConfig, keys: Keys) -> None:
        """Swap in a new config. Requests in flight keep the Runtime they started with."""
        self.install(self.prepare(config, keys))

    def prepare(self, config: GatewayConfig, keys: Keys) -> tuple[Runtime, bytes]:
        """Everything a config needs before it serves; safe to run in a thread (reloads do)."""
        new = Runtime(config, keys, self.state, self.metrics, self.callers())
        return new, new.models_body(new.callers.fixed)

    def install(self, prepared: tuple[Runtime, bytes]) -> None:
        """Swap a prepared config in, on the event loop: one assignment, nothing to wait for."""
        new, self.models_body = prepared
        old = self.runtime
        if old is not None:
            old.retire()
            new.continue_rotation(old)
        # Requests on the old config may still log its keys' echoes: redact both sets.
        self._log_keys = new.key_redactor | old.key_redactor if old is not None else new.key_redactor
        if self.budgets is None and self._make_budgets is not None and new.config.budgets:
            budgets = self._make_budgets()
            self._use_budgets(budgets)
            if self.engine is not None:  # started already: else start() starts it
                budgets.granter.start()
        if self.budgets is not None:
            self.budgets.apply(new.config)
        self.runtime = new
        self._credentials_renewed()
        self.state.credentials.listener = self._credentials_renewed
        self.metrics.credentials = self.state.credentials
        self.state.credentials.activate()

    def _credentials_renewed(self) -> None:
        """Logs redact the keys and the workload identity credentials held now."""
        creds = self.state.credentials.redactor
        redact_with(self._log_keys | creds if creds else self._log_keys)

    @property
    def session(self) -> aiohttp.ClientSession | None:
        """aiohttp's client (None unless started): ProviderKeys behind a proxy, ``--upstream-client
        aiohttp`` and a few endpoints use it. Made on first use, as aiohttp's client is imported
        then: most pods never need it (see aiohttp_client_deferred)."""
        if self._session is None and self._running:
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60)
            # Upstream answers are read as they are; the caller gets them uncompressed.
            # No cookie jar: one provider's Set-Cookie must never ride along on another caller's
            # request. No trust_env: proxies are resolved once per ProviderKey (see env_proxy).
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=True, trust_env=False,
                                                  cookie_jar=aiohttp.DummyCookieJar(),
                                                  skip_auto_headers=("User-Agent",))
        return self._session

    def client_session(self) -> aiohttp.ClientSession:
        session = self.session
        if session is None:
            raise RuntimeError("the gateway is not running")
        return session

    async def start(self) -> None:
        self._running = True
        if self.upstream_client == "lean":
            # Our own HTTP/1.1 client for upstream calls (see upstream.py); the session stays
            # for ProviderKeys behind a proxy.
            self.lean = LeanClient(keepalive_timeout=60)
        self.engine = Engine(self.client_session, self.lean)
        if self.budgets is not None:
            self.budgets.granter.start()

    async def close(self) -> None:
        await self.state.credentials.close()
        if self.budgets is not None:
            await self.budgets.close()
        if self.lean is not None:
            await self.lean.close()
        self._running = False
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def ready(self) -> bool:
        return self.runtime is not None and not self.draining


GATEWAY = web.AppKey("gateway", Gateway)
REQUEST_ID = "x-request-id"
MAX_FORWARDED_HEADER = 1024


def _dialect_error(dialect: Dialect, err: GatewayError, rid: str | None = None) -> web.Response:
    headers = dict(err.headers)
    if rid:
        headers.setdefault("x-request-id", rid)
    return web.Response(status=err.status, body=dialect.render_error(err), content_type="application/json",
                        headers=headers)


def access(request: web.Request, dialect: str | None, status: int, reason: str | None, rid: str | None,
           model: str | None = None, message: str | None = None) -> None:
    """The access-log line of a request the engine did not answer (refused, or not a model call)."""
    if access_log.enabled:
        access_log.write("request", {
            "request_id": rid, "status": status, "method": request.method, "path": request.path,
            "dialect": dialect, "model": model[:256] if isinstance(model, str) else model, "reason": reason,
            "message": message[:300] if message else None})


def log_refused(request: web.Request, dialect: Dialect | None, err: GatewayError, model: str | None,
                rid: str | None) -> str:
    """Log a refused request (404, 400, 413, 503...): one line, like every other; returns its id.

    ``rid`` is the caller's x-request-id once checked (it is echoed in the response).
    """
    rid = err.headers.get("x-request-id") or rid or request_id()
    access(request, dialect.name if dialect else None, err.status, err.code or err.type, rid, model, err.message)
    return rid


async def _refuse(request: web.Request, dialect: Dialect, err: GatewayError, rid: str | None = None) -> web.Response:
    resp = _dialect_error(dialect, err, rid)
    if err.status == 408:
        # A caller too slow to send its body loses the connection at once: aiohttp would
        # otherwise linger, reading what is left of the body, for another 10 s.
        resp.force_close()
        await resp.prepare(request)
        await resp.write_eof()
        if request.transport is not None:
            request.transport.close()  # after the response: a transport flushes before it closes
    return resp


def _checked_headers(request: web.Request, dialect: Dialect) -> str | None:
    """The caller's x-request-id, once the headers the gateway echoes or forwards are known good.

    HTTP parsers refuse CR and LF, but bytes beyond ASCII arrive (as surrogates) and could not
    be echoed in a response header or forwarded upstream: a 400 here, before any upstream call.
    """
    headers = request.headers
    for name in (REQUEST_ID, *dialect.forward_headers):
        value = headers.get(name)
        if value is not None and not (valid_header_value(value) and len(value) <= MAX_FORWARDED_HEADER):
            raise bad_request(f"Invalid header {name}: at most {MAX_FORWARDED_HEADER} characters of visible ASCII, "
                              "spaces and tabs", name, "invalid_header")
    return headers.get(REQUEST_ID) or None


def _check_access(gw: Gateway, route: Route, caller: str | None, model: str) -> None:
    if not route.permits(caller):
        gw.metrics.access_denied.labels(route.label).inc()
        raise access_denied(model, route.who_decides(), caller)


def _look_up_model(gw: Gateway, request: web.Request, name: str) -> None:
    """GET of one model: a name the caller may use, or the GatewayError that says why not."""
    rt = gw.runtime
    caller = rt.callers.identify(request) if rt is not None else None
    route = rt.resolve(name) if rt is not None and valid_model_name(name) else None
    if route is None:
        raise model_not_found(name)
    _check_access(gw, route, caller, name)


def _check_model_name(model: str) -> None:
    """The one gate for caller-chosen names (every handler that routes calls it): nothing
    past here sees URL syntax."""
    if not valid_model_name(model):
        raise bad_request(f"Invalid 'model': {MODEL_NAME_RULE}.", "model", "invalid_model_name")


async def serve_dialect(request: web.Request, dialect: Dialect, operation: str = "chat",
                        parse: Callable[[bytes], Ingress] | None = None,
                        read: Callable[[web.Request, int, float], Awaitable[Ingress]] | None = None,
                        engine: Engine | None = None) -> web.StreamResponse:
    """One model call: identify the caller, read and check the body (``read``, else
    ``parse`` of the raw body), route, check access, and hand over to ``engine``."""
    gw = request.app[GATEWAY]
    rt = gw.runtime  # this request's config, whatever reloads happen meanwhile
    rid: str | None = None
    model: str | None = None
    try:
        rid = _checked_headers(request, dialect)
        if rt is None or gw.engine is None:
            raise GatewayError(503, "The gateway has no configuration yet", type="api_error", code="not_ready")
        caller = rt.callers.identify(request)  # before the body: a stranger costs no read
        if read is not None:
            ingress = await read(request, rt.max_body_bytes, gw.body_timeout)
            # An upload's bytes are no measure of its tokens (audio is about 10 tokens a second).
            size = 0 if request.content_type.startswith("multipart/") else request.content_length or 0
            raw: bytes | None = None
        else:
            raw = await read_body(request, rt.max_body_bytes, gw.body_timeout)
            ingress = (parse or dialect.parse)(raw)
            size = len(raw)
        model = ingress.model
        _check_model_name(model)
        route = rt.resolve(ingress.model)
        if route is None:
            raise model_not_found(ingress.model, rt.why_unrouted(ingress.model))
        _check_access(gw, route, caller, model)
        engine = engine or gw.engine
        if gw.admit is None or gw.budgets is None or not gw.budgets.states:
            return await engine.handle(request, rt, route, dialect, ingress, operation, caller)
        route, spend = await gw.admit(gw.budgets, rt, route, caller, model, ingress.body, raw, size, operation)
        try:
            return await engine.handle(request, rt, route, dialect, ingress, operation, caller, spend)
        finally:
            if spend is not None and not spend.ticket.settled:
                spend.release()  # the engine settles every call that reached an upstream
    except GatewayError as err:
        if err.status < 500 and err.code not in ("rate_limit_exceeded", "budget_exceeded"):
            gw.metrics.unrouted(err.status)
        return await _refuse(request, dialect, err, log_refused(request, dialect, err, model, rid))
    except (ConnectionResetError, ClientConnectionResetError):
        raise
    except Exception:
        rid = rid or request_id()
        log.exception("internal error", extra={"fields": {"request_id": rid}})
        access(request, dialect.name, 500, "internal_error", rid, model)
        return _dialect_error(dialect, GatewayError(500, f"Internal gateway error (request {rid})",
                                                    type="api_error"), rid)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await serve_dialect(request, OPENAI_CHAT)


async def messages(request: web.Request) -> web.StreamResponse:
    return await serve_dialect(request, anthropic_messages())


async def count_tokens(request: web.Request) -> web.StreamResponse:
    return await count_message_tokens(request, anthropic_messages())


async def responses(request: web.Request) -> web.StreamResponse:
    return await serve_dialect(request, openai_responses())


async def embeddings(request: web.Request) -> web.StreamResponse:
    return await serve_dialect(request, OPENAI_CHAT, "embeddings", parse_embeddings)


# The rest of the OpenAI surface (surface/): per-model operations, and the account-wide
# files and batches. Loaded on the first such request.
SURFACE_OPERATIONS = ("/v1/images/generations", "/v1/audio/speech", "/v1/audio/transcriptions",
                      "/v1/audio/translations", "/v1/moderations", "/v1/completions", "/v1/rerank")


async def surface_operation(request: web.Request) -> web.StreamResponse:
    from .surface.handlers import serve

    return await serve(request)


async def surface_account(request: web.Request) -> web.StreamResponse:
    from .surface.files import serve

    return await serve(request)


def _gemini_caller(request: web.Request) -> bool:
    """A Gemini client on a path OpenAI shares (``GET /v1/models``): it sends its key as
    ``x-goog-api-key`` or ``?key=``, which OpenAI clients never do."""
    return "x-goog-api-key" in request.headers or "key" in request.query


async def models(request: web.Request) -> web.Response:
    if _gemini_caller(request):
        return await gemini_models(request)
    gw = request.app[GATEWAY]
    rt = gw.runtime
    body = gw.models_body
    if rt is not None:
        try:
            body = rt.models_body(rt.callers.identify(request))
        except GatewayError as err:
            return _dialect_error(OPENAI_CHAT, err, log_refused(request, None, err, None, None))
    access(request, None, 200, None, request.headers.get("x-request-id"))
    return web.Response(body=body, content_type="application/json")


async def model(request: web.Request) -> web.Response:
    if _gemini_caller(request):
        return await gemini_model(request)
    gw = request.app[GATEWAY]
    name = request.match_info["name"]
    try:
        _look_up_model(gw, request, name)
    except GatewayError as err:
        return _dialect_error(OPENAI_CHAT, err, log_refused(request, None, err, name, None))
    access(request, None, 200, None, request.headers.get("x-request-id"), name)
    return web.json_response({"id": name, "object": "model", "created": 0, "owned_by": "modelroute"},
                             dumps=lambda o: orjson.dumps(o).decode())


GEMINI_METHODS = ("generateContent", "streamGenerateContent", "countTokens")
_MODELS_SEGMENT = "/models/"


def _raw_target(request: web.Request) -> str:
    """``{model}:{method}`` as the caller sent it, percent-decoded once. Not the routed path:
    that one had its dot segments resolved (``x%2F..%2Fy`` became ``y``), and a name must be
    judged as sent, not as normalised into another."""
    raw = unquote(request.raw_path.split("?", 1)[0])
    at = raw.find(_MODELS_SEGMENT)  # the first one: the route's own (a name comes after it)
    return raw[at + len(_MODELS_SEGMENT):] if at >= 0 else request.match_info["target"]


async def gemini_model_method(request: web.Request) -> web.StreamResponse:
    """``POST /v1beta/models/{model}:{method}``. The caller's key (``x-goog-api-key`` or
    ``?key=``) is never forwarded; only ``serve --caller-keys`` checks it."""
    model_name, _, method = _raw_target(request).rpartition(":")
    stream = method == "streamGenerateContent"
    dialect = gemini_generate(sse=not stream or request.query.get("alt") == "sse")
    if method == "countTokens":
        return await count_gemini_tokens(request, dialect, model_name)
    if method not in GEMINI_METHODS:
        err = GatewayError(404, f"Unknown request URL: {request.method} {request.path}: the methods served are "
                           f"{', '.join(GEMINI_METHODS)}.", type="not_found_error", code="unknown_url")
        return _dialect_error(dialect, err, log_refused(request, dialect, err, None, request.headers.get(REQUEST_ID)))
    from .wire.gemini.caller import GeminiGenerate

    assert isinstance(dialect, GeminiGenerate)
    return await serve_dialect(request, dialect, parse=lambda body: dialect.parse_for(body, model_name, stream))


async def gemini_models(request: web.Request) -> web.Response:
    from .wire.gemini.caller import model_entry

    gw = request.app[GATEWAY]
    rt = gw.runtime
    try:
        names = rt.models_for(rt.callers.identify(request)) if rt is not None else []
    except GatewayError as err:
        dialect = gemini_generate()
        return _dialect_error(dialect, err, log_refused(request, dialect, err, None, None))
    access(request, "gemini", 200, None, request.headers.get(REQUEST_ID))
    return web.Response(body=orjson.dumps({"models": [model_entry(n) for n in names]}),
                        content_type="application/json")


async def gemini_model(request: web.Request) -> web.Response:
    from .wire.gemini.caller import model_entry

    gw = request.app[GATEWAY]
    name = request.match_info.get("target") or request.match_info["name"]
    name = name.removeprefix("models/")
    try:
        _look_up_model(gw, request, name)
    except GatewayError as err:
        dialect = gemini_generate()
        return _dialect_error(dialect, err, log_refused(request, dialect, err, name, None))
    access(request, "gemini", 200, None, request.headers.get(REQUEST_ID), name)
    return web.Response(body=orjson.dumps(model_entry(name)), content_type="application/json")


async def count_gemini_tokens(request: web.Request, dialect: Dialect, model_name: str) -> web.Response:
    """Gemini's ``countTokens``: asked of the route's first backend where that is Gemini,
    else estimated (text by characters, images by pixel size), marked ``x-modelroute-estimate``."""
    from .wire.gemini.caller import estimate_tokens, parse_count

    gw = request.app[GATEWAY]
    try:
        rid = _checked_headers(request, dialect)
        rt = gw.runtime
        caller = rt.callers.identify(request) if rt is not None else None
        body = await read_body(request, rt.max_body_bytes if rt else 32 * 1024 * 1024, gw.body_timeout)
        req = parse_count(body)
        _check_model_name(model_name)
        route = rt.resolve(model_name) if rt is not None else None
        if route is None:
            raise model_not_found(model_name, rt.why_unrouted(model_name) if rt is not None else None)
        _check_access(gw, route, caller, model_name)
        access(request, dialect.name, 200, None, rid, model_name)
        counted = await _gemini_upstream_count(gw, route.backends[0] if route.backends else None, req)
        if counted is not None:
            return web.json_response({"totalTokens": counted[0]}, headers={"x-modelroute-backend": counted[1]})
        return web.json_response({"totalTokens": estimate_tokens(req)}, headers={"x-modelroute-estimate": "true"})
    except GatewayError as err:
        return await _refuse(request, dialect, err, log_refused(request, dialect, err, model_name, None))


async def _gemini_upstream_count(gw: Gateway, backend: Any, req: dict[str, Any]) -> tuple[int, str] | None:
    """(tokens, backend) as a Gemini first backend counts them, or None."""
    if backend is None or backend.adapter.kind not in ("gemini", "vertex") or gw.engine is None:
        return None
    adapter = backend.adapter
    try:
        prepared = adapter.count_native(req, backend.model)  # None: a Vertex model that is not Google's
    except orjson.JSONEncodeError as e:
        raise GatewayError(400, f"The request holds a value that cannot be forwarded: {e}.") from None
    key = backend.keyring.pick()
    if key is None or prepared is None:
        return None
    return await _ask_count(gw, backend, prepared, {**prepared.headers, **key.headers}, key)


async def _ask_count(gw: Gateway, backend: Any, prepared: Any, headers: dict[str, str],
                     key: KeyEntry) -> tuple[int, str] | None:
    """POST a prepared token-count request: (tokens, backend), or None (the caller then
    estimates) when the upstream fails or refuses."""
    adapter = backend.adapter
    try:
        if key.source is not None:
            headers.update(await credential_headers(backend, key, prepared))
        status, answer = await _post_once(gw, adapter, prepared, headers)
        if status != 200:
            log.info("token count: %s answered %d; estimating", backend.id, status)
            return None
        return adapter.token_count(answer), backend.id
    except (ClientError, OSError, TimeoutError, ValueError, KeyError, TypeError, AttemptFailed) as e:
        log.info("token count: %s failed (%s); estimating", backend.id, type(e).__name__)
        return None


async def _post_once(gw: Gateway, adapter: Any, prepared: Any, headers: dict[str, str]) -> tuple[int, bytes]:
    """One POST and its whole answer, within COUNT_TOKENS_SECONDS: through the lean client, or
    aiohttp's session for a ProviderKey behind a proxy (or with ``--upstream-client aiohttp``)."""
    async with asyncio.timeout(COUNT_TOKENS_SECONDS):
        if gw.lean is not None and adapter.proxy is None:
            resp = await gw.lean.post(prepared.url, prepared.body, headers)
            try:
                return resp.status, await resp.read()
            finally:
                resp.close()
        async with gw.client_session().post(prepared.url, data=prepared.body, headers=headers, proxy=adapter.proxy,
                                            proxy_auth=adapter.proxy_auth) as answer:
            return answer.status, await answer.read()


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def readyz(request: web.Request) -> web.Response:
    if request.app[GATEWAY].ready:
        return web.Response(text="ready")
    return web.Response(status=503, text="not ready")


async def not_found(request: web.Request) -> web.Response:
    err = GatewayError(404, f"Unknown request URL: {request.method} {request.path}.", code="unknown_url",
                       type="not_found_error")
    log_refused(request, None, err, None, request.headers.get("x-request-id"))
    return web.Response(status=404, body=render_openai_error(err), content_type="application/json")


COUNT_TOKENS_SECONDS = 10.0


async def count_message_tokens(request: web.Request, dialect: Dialect) -> web.Response:
    """Anthropic's ``count_tokens``, which Claude Code calls to size its context.

    Where the route's first backend can count (Anthropic's own ``count_tokens``, Gemini's
    ``countTokens``) it does; otherwise, or when it fails, the answer is an estimate (text
    by characters, images by pixel size: see tokens.py), marked ``x-modelroute-estimate``.
    """
    gw = request.app[GATEWAY]
    rt = gw.runtime
    try:
        caller = rt.callers.identify(request) if rt is not None else None
        body = await read_body(request, rt.max_body_bytes if rt else 32 * 1024 * 1024, gw.body_timeout)
        from .wire.anthropic.caller import parse_count_tokens

        req = parse_count_tokens(body)  # the same validation as /v1/messages: a bad body is a 400
        _checked_headers(request, dialect)  # the same gates too: the count may be asked upstream
        _check_model_name(req["model"])
        route = rt.resolve(req["model"]) if rt is not None else None
        if route is not None:
            _check_access(gw, route, caller, req["model"])
        access(request, dialect.name, 200, None, request.headers.get("x-request-id"))
        counted = await _upstream_count(request, gw, req)
        if counted is not None:
            return web.json_response({"input_tokens": counted[0]}, headers={"x-modelroute-backend": counted[1]})
        from .tokens import estimate_messages_tokens  # loaded on first use, as the dialects are

        return web.json_response({"input_tokens": estimate_messages_tokens(req)},
                                 headers={"x-modelroute-estimate": "true"})
    except GatewayError as err:
        return await _refuse(request, dialect, err, log_refused(request, dialect, err, None, None))


async def _upstream_count(request: web.Request, gw: Gateway, req: dict[str, Any]) -> tuple[int, str] | None:
    """(tokens, backend) as the route's first backend counts them, or None."""
    rt = gw.runtime
    route = rt.resolve(req["model"]) if rt is not None else None
    if route is None or not route.backends or gw.engine is None:
        return None
    from .wire.anthropic.caller import to_canonical as messages_to_canonical

    backend = route.backends[0]
    adapter = backend.adapter
    try:
        prepared = adapter.count_tokens(req, lambda: messages_to_canonical({**req, "max_tokens": 1}), backend.model)
    except orjson.JSONEncodeError as e:  # as in Engine._prepare: e.g. an integer beyond 64 bits
        raise GatewayError(400, f"The request holds a value that cannot be forwarded: {e}.") from None
    key = backend.keyring.pick()
    if prepared is None or key is None:
        return None
    headers = {**prepared.headers, **key.headers}
    dialect = anthropic_messages()
    if passes(dialect.name, adapter, backend.model):
        for h in dialect.forward_headers:  # betas change what counts
            if h in request.headers:
                headers[h] = request.headers[h]
    return await _ask_count(gw, backend, prepared, headers, key)


def _caller_dialect(request: web.Request) -> Dialect:
    if request.path.startswith("/v1/messages"):
        return anthropic_messages()
    if request.path.startswith("/v1beta/") or ":" in request.path:
        return gemini_generate()
    return OPENAI_CHAT


@web.middleware
async def internal_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The last line: an exception no handler expected is a 500 in the caller's dialect,
    logged with its traceback; never aiohttp's plain-text page."""
    try:
        return await handler(request)
    except (web.HTTPException, asyncio.CancelledError, ConnectionResetError, ClientConnectionResetError):
        raise
    except Exception:
        rid = request_id()
        log.exception("internal error", extra={"fields": {"request_id": rid, "path": request.path}})
        access(request, None, 500, "internal_error", rid)
        return _dialect_error(_caller_dialect(request), GatewayError(
            500, f"Internal gateway error (request {rid})", type="api_error"), rid)


def api_app(gateway: Gateway) -> web.Application:
    # The body limit is enforced per config in read_body; this is only the hard ceiling.
    app = web.Application(client_max_size=256 * 1024 * 1024, middlewares=[internal_errors])
    app[GATEWAY] = gateway
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/chat/completions", chat_completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/v1/models/{name:.+}", model)
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", count_tokens)
    app.router.add_post("/v1/responses", responses)
    for path in SURFACE_OPERATIONS:
        app.router.add_post(path, surface_operation)
    for method, path in (("POST", "/v1/files"), ("GET", "/v1/files"), ("GET", "/v1/files/{id}"),
                         ("DELETE", "/v1/files/{id}"), ("GET", "/v1/files/{id}/content"), ("POST", "/v1/batches"),
                         ("GET", "/v1/batches"), ("GET", "/v1/batches/{id}"), ("POST", "/v1/batches/{id}/cancel")):
        app.router.add_route(method, path, surface_account)
    # Gemini callers; the model name, which may hold '/', ends at the last ':'. Patterns
    # match the decoded path: [\s\S], not '.', so that an encoded newline still routes here.
    app.router.add_post(r"/v1beta/models/{target:[\s\S]+}", gemini_model_method)
    app.router.add_post(r"/v1/models/{target:[\s\S]+:[A-Za-z]+}", gemini_model_method)
    app.router.add_get("/v1beta/models", gemini_models)
    app.router.add_get(r"/v1beta/models/{target:[\s\S]+}", gemini_model)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_route("*", r"/{tail:[\s\S]*}", not_found)
    return app


def api_runner(gateway: Gateway) -> web.AppRunner:
    """The API's runner: the gateway decodes request bodies itself (request_body.py), under
    its limits, and a connection without a complete request head is closed after
    ``header_timeout`` (aiohttp's keep-alive timer runs from the connection's start and
    from each response's end until the next head is complete)."""
    return web.AppRunner(api_app(gateway), handler_cancellation=True, access_log=None, auto_decompress=False,
                         keepalive_timeout=gateway.header_timeout)


def admin_app(gateway: Gateway) -> web.Application:
    app = web.Application()
    app[GATEWAY] = gateway

    async def metrics(request: web.Request) -> web.Response:
        # In a thread: the page grows with the config, and requests must not wait for it.
        return web.Response(body=await asyncio.to_thread(gateway.metrics.render),
                            headers={"content-type": "text/plain; version=0.0.4; charset=utf-8"})

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
