"""One request through a route: attempts, failover, retries, streaming, metering.

The loop reads top to bottom: pick the next backend from the route's plan, prepare the
upstream request (pass-through when the upstream speaks the caller's dialect, else
through the canonical form), send it, and either answer the caller or record why the
attempt failed and move on. Nothing reaches the caller before an attempt has produced
its first byte of output, so every failure before that point can still fail over.
"""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import logging
import math
import os
import random
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
from aiohttp import web
from aiohttp.client_exceptions import ClientConnectionError, ClientError, ClientPayloadError

from .canonical import ChatRequest, Usage, chunks_from_response, usage_from_openai
from .errors import ErrorType, GatewayError, bad_request
from .logs import access_log
from .pricing import cost_usd
from .providers.base import InProcessResponse, PreparedRequest
from .router import Backend, KeyEntry, Route, Runtime
from .sse import SSEEvent
from .upstream import LeanClient, LeanResponse
from .wire.base import Dialect, Ingress, NativeTap, StreamDecoder, StreamEncoder, StreamError, UpstreamErrorInfo
from .wire.pairs import BRIDGE, passes, path

log = logging.getLogger("modelroute.access")

_ids = itertools.count(1)
_ID_PREFIX = os.urandom(4).hex()
JSON = "application/json"


# The failover reason of an attempt that found no Responses API upstream; the same backend
# is tried again at once through the Chat Completions bridge.
BRIDGE_REASON = "no_responses_api"


def request_id() -> str:
    return f"mr-{_ID_PREFIX}-{next(_ids):x}"


class AttemptFailed(Exception):
    """Why one attempt did not produce output; the loop decides what comes next."""

    def __init__(self, reason: str, status: str, info: UpstreamErrorInfo, retry_after: float | None = None,
                 http_status: int = 502) -> None:
        super().__init__(reason)  # not the message: it is upstream text, redacted in Engine._failed
        self.reason = reason  # failover reason label: connect_error, timeout, rate_limit, auth, server_error...
        self.status = status  # requests_total status label
        self.info = info
        self.retry_after = retry_after
        self.http_status = http_status


async def credential_headers(backend: Backend, key: KeyEntry, prepared: PreparedRequest) -> Mapping[str, str]:
    """The headers of a workload-identity credential; waits only when none is usable yet."""
    assert key.source is not None
    try:
        return backend.adapter.credential_headers(await key.source.get(), prepared)
    except Exception as e:
        from .credentials.base import CredentialError  # loaded already, with the key's source

        if not isinstance(e, CredentialError):
            raise
        raise AttemptFailed("credentials", "credentials", UpstreamErrorInfo(
            f"no credential for {backend.id}: {e}", "authentication_error", True), http_status=503) from None


class CallerError(Exception):
    """A 4xx the upstream blamed on the request itself: goes back to the caller as is."""

    def __init__(self, status: int, body: bytes, info: UpstreamErrorInfo, native: bool) -> None:
        super().__init__(status)  # not the message: it is upstream text, redacted in Engine._caller_error
        self.status = status
        self.body = body
        self.info = info
        self.native = native


class Call:
    """One caller request in flight."""

    __slots__ = ("attempts", "caller", "canonical", "deadline", "dialect", "finished", "ingress", "operation",
                 "rid", "route", "spend", "started")

    def __init__(self, rid: str, route: Route, dialect: Dialect, ingress: Ingress, operation: str, started: float,
                 deadline: float, caller: str | None = None, spend: Any = None) -> None:
        self.rid = rid
        self.route = route
        self.dialect = dialect
        self.ingress = ingress
        self.operation = operation  # "chat" or "embeddings"
        self.started = started
        self.deadline = deadline
        self.attempts = 0
        self.canonical: ChatRequest | None = None
        self.finished = False  # metrics and the access log written
        self.caller = caller  # the ServiceAccount or caller-key name, for the access log
        self.spend = spend  # a budget reservation (budget/gate.Spend), settled in _finish


_MAX_RETRY_AFTER = 86400.0  # longer means "not soon" to every policy; and never inf or nan


def _seconds(value: str, scale: float = 1.0) -> float | None:
    try:
        seconds = float(value) / scale
    except ValueError:
        return None
    return min(max(seconds, 0.0), _MAX_RETRY_AFTER) if math.isfinite(seconds) else None


def parse_retry_after(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms`` or ``retry-after``; None for anything unreadable.

    These are upstream text: garbage (a huge exponent, a quoted key) must never fail the request.
    """
    ms = headers.get("retry-after-ms")
    if ms and (seconds := _seconds(ms, 1000.0)) is not None:
        return seconds
    value = headers.get("retry-after")
    if not value:
        return None
    if (seconds := _seconds(value)) is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return min(max(when.timestamp() - time.time(), 0.0), _MAX_RETRY_AFTER)


def session_timeout(route: Route) -> aiohttp.ClientTimeout:
    """The timeout of an attempt through aiohttp's session (the lean client is given seconds)."""
    return aiohttp.ClientTimeout(total=None, sock_connect=route.timeouts.connect_seconds)


if TYPE_CHECKING:  # aiohttp's client is imported on use only (aiohttp_client_deferred)
    UpstreamResponse = aiohttp.ClientResponse | LeanResponse | InProcessResponse


class Engine:
    def __init__(self, session: Callable[[], aiohttp.ClientSession], lean: LeanClient | None = None) -> None:
        self._session = session  # made on first use: most pods never need aiohttp's client
        self.lean = lean  # the lean upstream client, when on; the session still serves proxied keys

    @property
    def session(self) -> aiohttp.ClientSession:
        return self._session()

    async def handle(self, request: web.Request, rt: Runtime, route: Route, dialect: Dialect, ingress: Ingress,
                     operation: str = "chat", caller: str | None = None, spend: Any = None) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        now = loop.time()
        call = Call(request.headers.get("x-request-id") or request_id(), route, dialect, ingress, operation,
                    now, now + route.timeouts.total_seconds, caller=caller, spend=spend)
        plan = route.plan()
        if not plan:
            why = ("; ".join(route.unavailable) if route.unavailable else "none of its ProviderKeys is ready "
                   "(a missing Secret or key?); see the gateway's log, or `kubectl get providerkeys` in a cluster")
            raise GatewayError(503, f"Route '{route.name}' has no usable backend ({route.source}): {why}",
                               type="api_error", code="no_backend")
        # Every backend once, then around again up to maxAttempts; a key refusal adds one
        # more try on the same backend with its next key (at most once per key).
        budget = max(route.retries.max_attempts, len(plan))
        spare_keys: dict[str, int] = {}
        queue = list(plan)
        tries: dict[str, int] = {}
        last: AttemptFailed | None = None
        prev: Backend | None = None
        i = 0
        while call.attempts < budget:
            if i >= len(queue):
                queue.extend(plan)
            backend = queue[i]
            i += 1
            if prev is not None and last is not None:
                rt.metrics.failovers.labels(route.label, prev.label, backend.label, last.reason).inc()
                wait = self._wait_before(backend, tries.get(backend.id, 0), last, route)
                if wait is None or loop.time() + wait >= call.deadline:
                    if wait is not None and i < len(queue):
                        continue  # too long to wait here; another backend may answer now
                    break
                if wait > 0:
                    await asyncio.sleep(wait)
            tries[backend.id] = tries.get(backend.id, 0) + 1
            call.attempts += 1
            prev = backend
            key = backend.keyring.pick()
            assert key is not None  # every ring has at least a no-key entry
            backend.start_attempt()
            try:
                return await self._attempt(request, rt, call, backend, key)
            except asyncio.CancelledError:
                # The caller went away (aiohttp cancels the handler): the upstream request
                # is closed on the way out; count it once.
                backend.abandoned()
                if not call.finished:
                    backend.metrics.attempt("client_closed")
                    self._finish(rt, call, backend, None, "client_closed")
                raise
            except AttemptFailed as failed:
                last = failed
                if self._failed(rt, call, backend, key, failed, spare_keys):
                    budget += 1
                    queue.insert(i, backend)  # another key of the same account, right away
            except CallerError as err:
                backend.metrics.attempt(str(err.status))
                backend.first_byte(loop.time() - call.started)
                backend.succeeded()  # the backend is fine; the request is not
                return self._caller_error(rt, call, backend, err)
        assert last is not None
        raise self._exhausted(rt, call, last)

    def _failed(self, rt: Runtime, call: Call, backend: Backend, key: KeyEntry, failed: AttemptFailed,
                spare_keys: dict[str, int]) -> bool:
        """Record a failed attempt; True when the same backend should be retried with another key."""
        # Every failed attempt passes here before its text is logged or can reach the caller
        # (the last one becomes the caller's error): the one place its upstream text is redacted.
        failed.info = failed.info._replace(message=rt.redactor.text(failed.info.message))
        backend.metrics.attempt(failed.status)
        self._log_attempt(call, backend, key, failed)
        if failed.reason == BRIDGE_REASON:
            return True  # not the backend's fault: again, bridged
        if failed.reason == "auth":
            # A refused workload identity credential is renewed early; a refused key rests.
            if key.source is None or not key.source.renew():
                backend.keyring.cool_down(key, rt.config.key_cooldowns.auth_seconds)  # the key, not the backend
        else:
            backend.failed()
            if failed.reason != "rate_limit":
                return False
            backend.keyring.cool_down(key, failed.retry_after or rt.config.key_cooldowns.rate_limit_seconds)
        left = spare_keys.get(backend.id, len(backend.keyring.entries) - 1)
        if left <= 0 or not backend.keyring.pick_available():
            return False
        spare_keys[backend.id] = left - 1
        failed.retry_after = 0.0  # no wait: it is another key
        return True

    def _wait_before(self, backend: Backend, tried: int, last: AttemptFailed, route: Route) -> float | None:
        """Seconds to wait before this attempt, or None to give up on waiting."""
        if tried == 0:
            return 0.0  # a different backend: fail over at once
        policy = route.retries
        if last.retry_after is not None:
            return last.retry_after if last.retry_after <= policy.max_retry_after_seconds else None
        backoff = min(policy.backoff_max_seconds, policy.backoff_base_seconds * (2 ** (tried - 1)))
        return backoff * random.uniform(0.5, 1.0)

    def _prepare(self, call: Call, backend: Backend) -> tuple[PreparedRequest, bool]:
        try:
            return self._prepare_request(call, backend)
        except orjson.JSONEncodeError as e:
            # e.g. an integer beyond 64 bits, which JSON allows and no upstream takes.
            raise bad_request(f"The request holds a value that cannot be forwarded: {e}.") from None

    def _prepare_request(self, call: Call, backend: Backend) -> tuple[PreparedRequest, bool]:
        adapter = backend.adapter
        ingress = call.ingress
        # The one place that decides pass-through or translation: the pair table.
        native = passes(call.dialect.name, adapter, backend.model)
        if call.operation == "embeddings":
            # The caller speaks OpenAI embeddings: as Chat Completions callers do, they pass
            # through to OpenAI-shaped upstreams only.
            return adapter.embeddings(ingress.body, backend.model), native
        if native:
            return adapter.native(call.dialect.name, ingress.body, backend.model, ingress.stream), True
        if call.canonical is None:
            call.canonical = call.dialect.to_canonical(ingress)
        return adapter.chat(call.canonical, backend.model, ingress.stream), False

    async def _attempt(self, request: web.Request, rt: Runtime, call: Call, backend: Backend,
                       key: KeyEntry) -> web.StreamResponse:
        prepared, native = self._prepare(call, backend)
        if native and call.dialect.forward_headers:
            forwarded = {h: v for h in call.dialect.forward_headers if (v := request.headers.get(h)) is not None}
            if forwarded:
                prepared = backend.adapter.with_forwarded(prepared, forwarded)
        headers = {**prepared.headers, **key.headers}
        loop = asyncio.get_running_loop()
        timeouts = call.route.timeouts
        started = loop.time()
        first_byte_at = min(call.deadline, started + timeouts.first_byte_seconds)
        resp: UpstreamResponse | None = None
        try:
            try:
                async with asyncio.timeout_at(first_byte_at):
                    if key.source is not None:
                        headers.update(await credential_headers(backend, key, prepared))
                    resp = await self._send(call, backend, prepared, headers)
                    if resp.status >= 400:
                        body = await resp.read()
                        if native and resp.status in (404, 405) and backend.adapter.probes_responses \
                                and path(call.dialect.name, backend.adapter.kind) is BRIDGE \
                                and not _names_a_model(body):
                            raise self._no_responses_api(rt, backend, resp.status)
                        raise self._classify(rt, backend, resp, body, native)
                    if call.ingress.stream:
                        first, reader = await self._first_output(resp, call, backend, native)
            except TimeoutError:
                raise AttemptFailed("timeout", "timeout", UpstreamErrorInfo(
                    f"no response from {backend.id} within {timeouts.first_byte_seconds:g}s", "timeout_error",
                    True), http_status=504) from None
            except (ClientConnectionError, ClientPayloadError, OSError) as e:
                raise AttemptFailed("connect_error", "connect_error", UpstreamErrorInfo(
                    f"could not reach {backend.id}: {type(e).__name__}", "api_error", True)) from None
            backend.first_byte(loop.time() - started)
            if call.ingress.stream:
                return await self._stream(request, rt, call, backend, resp, first, reader)
            return await self._complete(request, rt, call, backend, resp, native)
        finally:
            if resp is not None:
                resp.close()  # a finished body was already released; an unfinished one must not be reused

    async def _send(self, call: Call, backend: Backend, prepared: PreparedRequest,
                    headers: dict[str, str]) -> UpstreamResponse:
        """POST one attempt's request: in-process, through the lean client, or aiohttp's."""
        adapter = backend.adapter
        if adapter.in_process:
            return await adapter.respond(prepared)
        if self.lean is not None and adapter.proxy is None:
            return await self.lean.post(prepared.url, prepared.body, headers, call.route.timeouts.connect_seconds)
        return await self.session.post(prepared.url, data=prepared.body, headers=headers,
                                       timeout=session_timeout(call.route), proxy=adapter.proxy,
                                       proxy_auth=adapter.proxy_auth)

    def _no_responses_api(self, rt: Runtime, backend: Backend, status: int) -> AttemptFailed:
        """An upstream without ``/v1/responses`` (many OpenAI-compatible servers): bridge it to
        Chat Completions from now on, remembered across reloads, and try it again at once."""
        adapter = backend.adapter
        adapter.bridge_responses()
        rt.state.no_responses_api.add(f"{adapter.pk.name}|{adapter.pk.base_url}")
        return AttemptFailed(BRIDGE_REASON, str(status), UpstreamErrorInfo(
            f"{backend.id} has no Responses API (HTTP {status} on /responses); bridged to Chat Completions",
            "not_found_error", True), retry_after=0.0, http_status=502)

    def _classify(self, rt: Runtime, backend: Backend, resp: UpstreamResponse, body: bytes,
                  native: bool) -> Exception:
        status = resp.status
        info = backend.adapter.error_info(status, body)
        if status in (401, 403) or info.type == "authentication_error":  # Gemini: 400 API_KEY_INVALID
            # The gateway's credentials were refused: the caller can do nothing about it.
            return AttemptFailed("auth", str(status), info._replace(
                message=f"{backend.id} refused the gateway's credentials (HTTP {status})"), http_status=502)
        if status == 429:
            return AttemptFailed("rate_limit", "429", info, parse_retry_after(resp.headers), http_status=429)
        if status >= 500 or info.retryable:
            return AttemptFailed("server_error", str(status), info, parse_retry_after(resp.headers),
                                 http_status=503 if status in (503, 529) else 502)
        return CallerError(status, body, info, native)

    async def _complete(self, request: web.Request, rt: Runtime, call: Call, backend: Backend,
                        resp: UpstreamResponse, native: bool) -> web.StreamResponse:
        try:
            async with asyncio.timeout_at(call.deadline):
                body = await resp.read()
        except TimeoutError:
            raise AttemptFailed("timeout", "timeout", UpstreamErrorInfo(
                f"{backend.id} did not finish within {call.route.timeouts.total_seconds:g}s", "timeout_error",
                True), http_status=504) from None
        except (ClientError, OSError) as e:
            raise AttemptFailed("connect_error", "connect_error", UpstreamErrorInfo(
                f"{backend.id} broke off its response: {type(e).__name__}", "api_error", True)) from None
        try:
            if call.operation == "embeddings":
                parsed = backend.adapter.parse_embeddings(body, backend.model)
                u = parsed.get("usage") or {}
                usage: Usage | None = Usage(int(u.get("prompt_tokens") or 0), 0)
                out = body if native else orjson.dumps(parsed)
            elif native:
                usage = call.dialect.native_usage(orjson.loads(body))
                out = body
            else:
                canon = backend.adapter.parse_chat(body, backend.model)
                usage = usage_from_openai(canon.get("usage"))
                out = orjson.dumps(call.dialect.response_for(canon, call.ingress))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            raise AttemptFailed("bad_response", "bad_response", UpstreamErrorInfo(
                f"{backend.id} sent a response that could not be read", "api_error", True)) from None
        backend.metrics.attempt(str(resp.status))
        backend.succeeded()
        self._finish(rt, call, backend, usage, None)
        return web.Response(body=out, status=200, content_type=JSON, headers=self._headers(call, backend))

    async def _first_output(self, resp: UpstreamResponse, call: Call, backend: Backend,
                            native: bool) -> tuple[bytes, _Reader]:
        """Read until the stream produces output for the caller; failures here can fail over."""
        reader = _Reader(call, backend, native)
        if resp.headers.get("content-type", "").startswith("application/json"):
            return self._json_as_stream(await resp.read(), reader, backend), reader
        while True:
            data = await resp.content.readany()
            if not data:
                raise AttemptFailed("stream_error", "stream_error", UpstreamErrorInfo(
                    f"{backend.id} ended its stream before any output", "api_error", True))
            out = reader.process(data)
            if out:
                return out, reader  # a failure after it (reader.error) follows it to the caller
            if reader.error is not None:
                raise AttemptFailed("stream_error", "stream_error", reader.error, http_status=502)

    def _json_as_stream(self, body: bytes, reader: _Reader, backend: Backend) -> bytes:
        """An upstream that answered a stream request with one JSON body (some OpenAI-compatible
        servers ignore ``stream``): the whole answer, as the caller's stream."""
        try:
            canon = backend.adapter.parse_chat(body, backend.model)
            if not isinstance(canon, dict) or not canon.get("choices"):
                raise ValueError("not a chat response")
            chunks = chunks_from_response(canon)
        except (ValueError, KeyError, TypeError, AttributeError, IndexError):
            raise AttemptFailed("stream_error", "stream_error", UpstreamErrorInfo(
                f"{backend.id} answered a stream request with a plain JSON body that is not a response",
                "api_error", True)) from None
        encode = reader.encoder.chunk
        out = b"".join([encode(c) for c in chunks]) + reader.encoder.end()
        reader.usage = usage_from_openai(canon.get("usage"))
        reader.finished = reader.converted = True
        return out

    async def _stream(self, request: web.Request, rt: Runtime, call: Call, backend: Backend,
                      resp: UpstreamResponse, first: bytes, reader: _Reader) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        out = web.StreamResponse(status=200, headers={
            "content-type": call.dialect.stream_content_type, "cache-control": "no-cache",
            **self._headers(call, backend)})
        ttft: float | None = None
        error: GatewayError | None = None
        between = call.route.timeouts.between_chunks_seconds
        try:
            await out.prepare(request)
            await out.write(first)
            ttft = loop.time() - call.started
            backend.metrics.ttft.observe(ttft)
            try:
                async with asyncio.timeout_at(min(call.deadline, loop.time() + between)) as cm:
                    while not reader.finished and reader.error is None:
                        data = await _read_upstream(resp)
                        if not data:
                            break
                        cm.reschedule(min(call.deadline, loop.time() + between))
                        chunk = reader.process(data)
                        if chunk:
                            await out.write(chunk)
                if reader.error is not None:
                    error = GatewayError(502, reader.error.message, type=reader.error.type, code="upstream_error")
                elif not reader.finished:
                    error = GatewayError(502, f"{backend.id} ended its stream early", type="api_error",
                                         code="upstream_stream_ended")
            except TimeoutError:
                error = GatewayError(504, f"{backend.id} stopped sending for {between:g}s", type="timeout_error",
                                     code="upstream_timeout")
            except _UpstreamBroke as e:
                error = GatewayError(502, f"{backend.id} broke off its stream: {e}", type="api_error",
                                     code="upstream_stream_ended")
            if error is not None:
                error.message = rt.redactor.text(error.message)  # upstream text, after the first byte
                backend.metrics.attempt("stream_error")
                backend.failed()
                await out.write(reader.encoder.error(error))
            else:
                backend.metrics.attempt("200")
                backend.succeeded()  # only now: a stream that breaks after output is a failure
                tail = reader.end()
                if tail:
                    await out.write(tail)
            await out.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            # The caller went away: leaving here closes the upstream response (see _attempt).
            backend.metrics.attempt("client_closed")
            self._finish(rt, call, backend, reader.usage, "client_closed", ttft)
            raise
        self._finish(rt, call, backend, reader.usage, error.code if error else None, ttft)
        return out

    def _headers(self, call: Call, backend: Backend) -> dict[str, str]:
        return {"x-modelroute-backend": backend.id, "x-modelroute-attempts": str(call.attempts),
                "x-request-id": call.rid}

    def _finish(self, rt: Runtime, call: Call, backend: Backend, usage: Usage | None, error: str | None,
                ttft: float | None = None) -> None:
        call.finished = True
        elapsed = asyncio.get_running_loop().time() - call.started
        m = backend.metrics
        m.duration.observe(elapsed)
        cost = 0.0
        if usage is not None:
            m.input_tokens.inc(usage.input_tokens)
            m.output_tokens.inc(usage.output_tokens)
            cost = cost_usd(backend.price, usage)
            if cost:
                m.cost.inc(cost)
        if call.spend is not None:
            # Without usage, an upstream that started answering (or was left mid-answer) may bill it all.
            call.spend.settle(usage, cost, ttft is not None or error == "client_closed")
        m.genai(call.operation, elapsed, usage.input_tokens if usage else None,
                usage.output_tokens if usage else None, error or "")
        if access_log.enabled:
            # The status the caller got: a stream that failed after its first byte was a 200.
            status = 499 if error == "client_closed" else int(error[5:]) if error and error[:5] == "http_" else 200
            access_log.write("request", {
                "request_id": call.rid, "status": status, "route": call.route.name, "caller": call.caller,
                "dialect": call.dialect.name,
                "backend": backend.id, "attempts": call.attempts, "stream": call.ingress.stream,
                "latency_ms": round(elapsed * 1000, 2),
                "ttft_ms": round(ttft * 1000, 2) if ttft is not None else None,
                "input_tokens": usage.input_tokens if usage else None,
                "output_tokens": usage.output_tokens if usage else None,
                "cost_usd": round(cost, 8), "reason": error})

    def _log_attempt(self, call: Call, backend: Backend, key: KeyEntry, failed: AttemptFailed) -> None:
        log.warning("attempt failed", extra={"fields": {
            "request_id": call.rid, "route": call.route.name, "backend": backend.id, "key": key.label,
            "attempt": call.attempts, "reason": failed.reason, "status": failed.status,
            "error": failed.info.message}})

    def _caller_error(self, rt: Runtime, call: Call, backend: Backend, err: CallerError) -> web.Response:
        self._finish(rt, call, backend, None, f"http_{err.status}")
        headers = self._headers(call, backend)
        if err.native and err.body and backend.adapter.native_errors:
            try:
                orjson.loads(err.body)
                # An upstream's own error body, passed on: redacted whole (any JSON escaping).
                body = rt.redactor.body(err.body)
                return web.Response(body=body, status=err.status, content_type=JSON, headers=headers)
            except orjson.JSONDecodeError:
                pass
        gerr = GatewayError(err.status, rt.redactor.text(err.info.message), type=err.info.type)
        return web.Response(body=call.dialect.render_error(gerr), status=err.status, content_type=JSON,
                            headers=headers)

    def _exhausted(self, rt: Runtime, call: Call, last: AttemptFailed) -> GatewayError:
        log.warning("request failed", extra={"fields": {
            "request_id": call.rid, "route": call.route.name, "attempts": call.attempts, "reason": last.reason}})
        kind: ErrorType = last.info.type if last.http_status != 502 else "api_error"
        err = GatewayError(last.http_status, f"All backends of route '{call.route.name}' failed after "
                           f"{call.attempts} attempt(s); last: {last.info.message}", type=kind,
                           code="upstream_unavailable" if last.reason != "rate_limit" else "rate_limit_exceeded")
        err.headers = {"x-modelroute-attempts": str(call.attempts), "x-request-id": call.rid}
        if last.retry_after is not None and last.reason == "rate_limit":
            err.headers["retry-after"] = str(max(1, round(last.retry_after)))
        return err


def _names_a_model(body: bytes) -> bool:
    """Whether a 404 is about the model ("model_not_found", "The model ... does not exist"),
    which says nothing about the upstream having a Responses API."""
    return b"model" in body.lower()


class _UpstreamBroke(Exception):
    pass


async def _read_upstream(resp: UpstreamResponse) -> bytes:
    """Read the next upstream bytes; upstream failures become :class:`_UpstreamBroke`."""
    try:
        return await resp.content.readany()
    except (ClientError, OSError) as e:
        raise _UpstreamBroke(type(e).__name__) from None


class _Reader:
    """Turns upstream bytes into caller bytes: pass-through with a tap, or decode + encode."""

    __slots__ = ("backend_id", "converted", "decoder", "encoder", "error", "finished", "native", "parser", "tap",
                 "usage")

    def __init__(self, call: Call, backend: Backend, native: bool) -> None:
        self.backend_id = backend.id
        self.parser = backend.adapter.stream_parser(backend.model, native)
        self.native = native
        self.usage: Usage | None = None
        self.finished = False
        self.converted = False  # a JSON answer, written whole as the caller's stream
        self.error: UpstreamErrorInfo | None = None  # an in-band error or invalid stream, after the output before it
        self.tap: NativeTap | None = None
        self.decoder: StreamDecoder | None = None
        self.encoder: StreamEncoder = call.dialect.encoder_for(call.ingress)
        if native:
            self.tap = call.dialect.native_tap(call.ingress.include_usage)
        else:
            self.decoder = backend.adapter.stream_decoder(backend.model)

    def process(self, data: bytes) -> bytes:
        """Caller bytes for these upstream bytes, up to an in-band error event or bytes that are
        not a valid stream (never passed on as content): that failure is kept in ``error``, to be
        reported after the events that came before it, however the upstream's bytes were split."""
        out: list[bytes] = []
        try:
            events, failure = self.parser.read(data)
            self._events(events, out)
            if failure is not None and not self.finished:
                raise failure
        except StreamError as e:
            self.error = e.info
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as e:  # JSONDecodeError, SSEError
            self.error = UpstreamErrorInfo(
                f"{self.backend_id} sent an invalid stream ({type(e).__name__})", "api_error", True)
        return b"".join(out)

    def _events(self, events: list[SSEEvent], out: list[bytes]) -> None:
        """Append each event's caller bytes to ``out``, in order, until the upstream's proper end
        (what follows it is ignored, as in a later read); a failure leaves the earlier ones."""
        if self.tap is not None:
            tap = self.tap
            emit = self.encoder.frame if tap.reframe else None
            for ev in events:
                # Passed through unread otherwise: parse each payload once (about a microsecond),
                # so `data: {not json}` fails the attempt instead of reaching the caller.
                if ev.data and ev.data != b"[DONE]" and not isinstance(orjson.loads(ev.data), dict):
                    raise ValueError("an event that is not a JSON object")
                passed = tap.feed(ev)
                self.usage = tap.usage
                if tap.error is not None:
                    raise StreamError(tap.error)
                if passed:
                    out.append(emit(ev) if emit is not None else ev.raw)
                if tap.done:
                    self.finished = True
                    return
            return
        decoder = self.decoder
        assert decoder is not None
        encoder = self.encoder
        encode = encoder.chunk
        for ev in events:
            chunks = decoder.feed(ev)
            if decoder.usage is not self.usage and decoder.usage is not None:
                self.usage = decoder.usage
                encoder.note_usage(decoder.usage)  # e.g. for Anthropic's message_start
            for chunk in chunks:
                out.append(encode(chunk))
            if decoder.done:
                self.finished = True
                return

    def end(self) -> bytes:
        if self.converted:
            return b""  # written with the rest
        if self.native:
            return self.encoder.close()  # the upstream's own ending was passed through
        assert self.decoder is not None
        tail = b"".join(self.encoder.chunk(c) for c in self.decoder.finish())
        return tail + self.encoder.end()



__all__ = ["Engine", "bad_request"]
