"""The lease server: ``POST /budget/v1/leases`` over HTTPS (docs/budgets.md, "Lease protocol").

Thin: authenticate (the sidecar's projected ServiceAccount token, by TokenReview), check
that the holder is of the token's namespace (and pod, when the token is bound to one), read
the body, and hand each budget's entries to :class:`~modelroute_operator.budget_store.BudgetStore`,
which answers only after the ledger is written. Served with the webhook's certificate, which
names the operator's Service; renewed files are picked up without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from . import budget_ledger as bl
from .budget_store import BudgetNotFound, BudgetStore
from .certs import CertFiles
from .kube import ApiError
from .metrics import OperatorMetrics
from .tokenauth import Identity, TokenReviewer, TokenReviewUnavailable

logger = logging.getLogger("modelroute.operator")

PATH = "/budget/v1/leases"
MAX_BODY = 64 * 1024
MAX_ENTRIES = 64
MAX_HOLDER = 512
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": {"message": message}}, status=status, headers=headers)


def bearer_token(request: web.Request) -> str | None:
    value = request.headers.get("Authorization", "")
    scheme, _, token = value.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def holder_allowed(holder: str, who: Identity) -> bool:
    """A holder is ``<namespace>/<pod>/<nonce>``: of the token's namespace, and of its pod when
    the token is bound to one (so a pod cannot report for another pod's holder)."""
    namespace, _, rest = holder.partition("/")
    if namespace != who.namespace:
        return False
    return who.pod is None or rest.partition("/")[0] == who.pod


class LeaseServer:
    def __init__(self, store: BudgetStore, reviewer: TokenReviewer, *, namespaces: tuple[str, ...] = (),
                 ttl: float = 30.0, metrics: OperatorMetrics | None = None) -> None:
        self.store = store
        self.reviewer = reviewer
        self.namespaces = frozenset(namespaces)
        self.ttl = ttl
        self.metrics = metrics
        self.app = web.Application(client_max_size=MAX_BODY, middlewares=[self._observe])
        self.app.router.add_post(PATH, self.leases)
        self._runner: web.AppRunner | None = None
        self._watch: asyncio.Task[None] | None = None

    @web.middleware
    async def _observe(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        code = 500
        try:
            response = await handler(request)
        except web.HTTPException as e:  # 404, 405 from the router: the same JSON shape as every error
            response = _error(e.status, e.reason, **({"Allow": e.headers["Allow"]} if "Allow" in e.headers else {}))
        try:
            code = response.status
            return response
        finally:
            if self.metrics is not None:
                self.metrics.leases.labels(str(code)).inc()
                self.metrics.lease_duration.labels(str(code)).observe(time.perf_counter() - start)

    async def leases(self, request: web.Request) -> web.Response:
        token = bearer_token(request)
        if token is None:
            return _error(401, "a ServiceAccount token (audience modelroute) is required: Authorization: Bearer",
                          **{"WWW-Authenticate": "Bearer"})
        try:
            who = await self.reviewer.identify(token)
        except TokenReviewUnavailable as e:
            logger.warning("lease request: %s", e)
            return _error(503, "cannot check the token now; retry", **{"Retry-After": "1"})
        del token
        if who is None:
            return _error(401, "the token is not a valid ServiceAccount token for audience modelroute",
                          **{"WWW-Authenticate": 'Bearer error="invalid_token"'})
        if self.namespaces and who.namespace not in self.namespaces:
            return _error(403, f"the operator does not serve namespace {who.namespace}")
        try:
            body = await request.json(loads=json.loads)
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"the body is larger than {MAX_BODY} bytes")
        except (ValueError, UnicodeDecodeError):
            return _error(400, "the body is not JSON")
        try:
            holder, entries = self._read(body)
        except bl.LeaseRequestError as e:
            return _error(400, str(e))
        if not holder_allowed(holder, who):
            return _error(403, f"ServiceAccount {who.namespace}/{who.service_account} may not hold leases as "
                               f"{holder!r}: a holder is <namespace>/<pod>/<nonce> of the token's own namespace "
                               "and pod")
        by_budget: dict[str, list[bl.LeaseEntry]] = {}
        for entry in entries:
            by_budget.setdefault(entry.budget, []).append(entry)
        answers: dict[int, dict[str, Any]] = {}
        results = await asyncio.gather(*(self._one(who.namespace, name, holder, group)
                                         for name, group in by_budget.items()), return_exceptions=True)
        for (name, group), result in zip(by_budget.items(), results, strict=True):
            if isinstance(result, ApiError | OSError):
                logger.warning("lease for ModelBudget %s/%s: cannot write the ledger: %s", who.namespace, name,
                               result)
                return _error(503, "cannot write the ledger now; retry", **{"Retry-After": "1"})
            if isinstance(result, BaseException):
                raise result
            for entry, answer in zip(group, result, strict=True):
                answers[id(entry)] = answer
        return web.json_response({"leases": [answers[id(e)] for e in entries], "ttlSeconds": self.ttl})

    async def _one(self, namespace: str, name: str, holder: str,
                   entries: list[bl.LeaseEntry]) -> list[dict[str, Any]]:
        try:
            return await self.store.lease(namespace, name, holder, entries)
        except BudgetNotFound:
            return [bl.answer_entry(e, error="not found") for e in entries]

    @staticmethod
    def _read(body: Any) -> tuple[str, list[bl.LeaseEntry]]:
        if not isinstance(body, dict):
            raise bl.LeaseRequestError("the body is an object with holder and leases")
        holder, leases = body.get("holder"), body.get("leases")
        if not isinstance(holder, str) or not 0 < len(holder) <= MAX_HOLDER or not holder.isprintable():
            raise bl.LeaseRequestError("holder: <namespace>/<pod>/<nonce>")
        if not isinstance(leases, list) or len(leases) > MAX_ENTRIES:
            raise bl.LeaseRequestError(f"leases: a list of at most {MAX_ENTRIES}")
        return holder, [bl.parse_entry(e) for e in leases]

    # --- serving ---------------------------------------------------------------------------

    async def start(self, host: str, port: int, certs: CertFiles, check_seconds: float = 60.0) -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(certs.cert, certs.key)
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port, ssl_context=context).start()
        self._watch = asyncio.create_task(self._reload_forever(context, certs, check_seconds))
        logger.info("lease server listening on https://%s:%d%s", host, port, PATH)

    async def _reload_forever(self, context: ssl.SSLContext, certs: CertFiles, interval: float) -> None:
        """A renewed certificate is served to new connections (the context is shared)."""
        seen = _stamp(certs)
        while True:
            await asyncio.sleep(interval)
            now = _stamp(certs)
            if now == seen:
                continue
            try:
                context.load_cert_chain(certs.cert, certs.key)
            except (OSError, ssl.SSLError) as e:
                logger.error("cannot load the renewed certificate for the lease server: %s", e)
                continue
            seen = now
            logger.info("lease server: serving the renewed certificate %s", certs.cert)

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self._runner is not None:
            await self._runner.cleanup()


def _stamp(certs: CertFiles) -> tuple[float, float]:
    try:
        return certs.cert.stat().st_mtime, certs.key.stat().st_mtime
    except OSError:
        return 0.0, 0.0
