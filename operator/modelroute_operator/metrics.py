"""The operator's own Prometheus metrics, served on ``GET /metrics`` (``--metrics-listen``).

* ``modelroute_operator_reconciles_total{result}``: namespace reconciles; ``result`` is
  ``changed``, ``unchanged``, ``error`` or ``terminating``;
  ``modelroute_operator_reconcile_duration_seconds{result}``, a histogram of the same.
* ``modelroute_operator_objects{namespace, kind, ready}``: ModelRoutes and ProviderKeys by
  their Ready condition (``ready`` is ``true`` or ``false``).
* ``modelroute_operator_admission_requests_total{result}``: the webhook's answers; ``result``
  is ``injected``, ``unchanged``, ``refused`` or ``error``;
  ``modelroute_operator_admission_duration_seconds{result}``, a histogram of the same.
* ``modelroute_operator_webhook_certificate_expiry_timestamp_seconds``: the served certificate's
  notAfter.
* ``modelroute_operator_lease_requests_total{code}``: the lease server's answers by HTTP status;
  ``modelroute_operator_lease_duration_seconds{code}``, a histogram of the same (a grant's
  time includes its ledger write).

plus the process's own (``process_*``, ``python_*``). A registry of its own: nothing else in
the process adds to it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal, TypeVar

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    gc_collector,
    generate_latest,
    platform_collector,
    process_collector,
)

logger = logging.getLogger("modelroute.operator")

ReconcileResult = Literal["changed", "unchanged", "error", "terminating"]
AdmissionResult = Literal["injected", "unchanged", "refused", "error"]
KINDS = ("ModelRoute", "ProviderKey")

_RECONCILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_ADMISSION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        process_collector.ProcessCollector(registry=r)
        platform_collector.PlatformCollector(registry=r)
        gc_collector.GCCollector(registry=r)
        self.reconciles = Counter(
            "modelroute_operator_reconciles", "Namespace reconciles by result: changed (wrote the config, the keys "
            "or a status), unchanged, error (retried with backoff), terminating (the namespace is being deleted).",
            ["result"], registry=r)
        self.reconcile_duration = Histogram(
            "modelroute_operator_reconcile_duration_seconds", "Time to reconcile one namespace, by result.",
            ["result"], buckets=_RECONCILE_BUCKETS, registry=r)
        self.objects = Gauge(
            "modelroute_operator_objects", "ModelRoutes and ProviderKeys by namespace, kind and Ready condition "
            "(true or false), as of the namespace's last reconcile.", ["namespace", "kind", "ready"], registry=r)
        self.admissions = Counter(
            "modelroute_operator_admission_requests", "Admission requests the injection webhook answered, by result: "
            "injected, unchanged (nothing to add), refused (a 4xx answer, e.g. a bad override annotation), error.",
            ["result"], registry=r)
        self.admission_duration = Histogram(
            "modelroute_operator_admission_duration_seconds", "Time to answer one admission request, by result.",
            ["result"], buckets=_ADMISSION_BUCKETS, registry=r)
        self.certificate_expiry = Gauge(
            "modelroute_operator_webhook_certificate_expiry_timestamp_seconds",
            "When the certificate the webhook serves expires, in Unix time.", registry=r)
        self.leases = Counter(
            "modelroute_operator_lease_requests", "Lease requests (POST /budget/v1/leases) by HTTP status: 200, "
            "400 (malformed), 401 (no or a bad token), 403 (another namespace's or pod's holder), 503 (the API "
            "server could not review the token or store the ledger).", ["code"], registry=r)
        self.lease_duration = Histogram(
            "modelroute_operator_lease_duration_seconds", "Time to answer one lease request (with its ledger "
            "write), by HTTP status.", ["code"], buckets=_ADMISSION_BUCKETS, registry=r)
        for code in ("200", "400", "401", "403", "503"):
            self.leases.labels(code)
        for result in ("changed", "unchanged", "error", "terminating"):
            self.reconciles.labels(result)
        for result in ("injected", "unchanged", "refused", "error"):
            self.admissions.labels(result)

    def reconciled(self, namespace: str, result: ReconcileResult, seconds: float,
                   objects: Mapping[tuple[str, bool], int] | None = None) -> None:
        """One reconcile of ``namespace``; ``objects`` counts its sources by (kind, ready),
        None when the pass did not get that far. No sources at all: the namespace's series go."""
        self.reconciles.labels(result).inc()
        self.reconcile_duration.labels(result).observe(seconds)
        if objects is None:
            return
        for kind in KINDS:
            for ready in (True, False):
                labels = (namespace, kind, "true" if ready else "false")
                if objects:
                    self.objects.labels(*labels).set(objects.get((kind, ready), 0))
                else:
                    with contextlib.suppress(KeyError):
                        self.objects.remove(*labels)

    def admitted(self, result: AdmissionResult, seconds: float) -> None:
        self.admissions.labels(result).inc()
        self.admission_duration.labels(result).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def admission_result(response: Mapping[str, Any]) -> AdmissionResult:
    """What an AdmissionReview answer did (kopf answers a handler's crash with a 500 status)."""
    payload = response.get("response") or {}
    if payload.get("allowed"):
        return "injected" if payload.get("patch") else "unchanged"
    code = (payload.get("status") or {}).get("code") or 500
    return "refused" if 400 <= int(code) < 500 else "error"


Answer = TypeVar("Answer", bound=Mapping[str, Any])


async def timed(metrics: OperatorMetrics | None, call: Callable[[], Awaitable[Answer]]) -> Answer:
    """``call()`` (one admission review), counted and timed."""
    start = time.perf_counter()
    try:
        response = await call()
    except Exception:
        if metrics is not None:
            metrics.admitted("error", time.perf_counter() - start)
        raise
    if metrics is not None:
        metrics.admitted(admission_result(response), time.perf_counter() - start)
    return response


async def serve_metrics(metrics: OperatorMetrics, host: str, port: int) -> web.AppRunner:
    """``GET /metrics`` on host:port, until the returned runner is cleaned up."""

    async def handle(_: web.Request) -> web.Response:
        return web.Response(body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    logger.info("metrics on http://%s:%d/metrics", host, port)
    return runner
