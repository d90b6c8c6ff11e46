"""Reconciling a namespace: read its sources, compile, write what changed.

A namespace is the unit: the sidecar's config is per namespace, so any change to a
ModelRoute, a ProviderKey or a Secret they reference re-compiles the whole namespace
from what the API server holds now. That makes a reconcile idempotent and a restart
harmless: nothing depends on which events were seen before.

:class:`Reconciler` coalesces triggers: a namespace is reconciled by at most one task
at a time; triggers that arrive meanwhile cause exactly one more pass. Failures are
retried with backoff; one namespace failing never holds up another.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from modelroute_sidecar.compile import ObjectStatus, compile_resources
from modelroute_sidecar.config import CONFIGMAP_NAME, KEYS_SECRET_NAME, GatewayConfig

from . import names, objects
from .budget_store import BudgetNotFound, BudgetStore
from .kube import ApiError, Kube, core_path, custom_path
from .metrics import OperatorMetrics, ReconcileResult

logger = logging.getLogger("modelroute.operator")

PLURALS = {"ModelRoute": "modelroutes", "ProviderKey": "providerkeys", "ModelBudget": "modelbudgets"}
STATUS_WRITES_IN_FLIGHT = 8  # per namespace


def utcnow() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(slots=True)
class Report:
    """What one reconcile did; for logs and tests (never holds key material)."""

    namespace: str
    routes: int = 0
    provider_keys: int = 0
    ready: int = 0
    # Sources by (kind, Ready); empty when the namespace has none.
    objects: collections.Counter[tuple[str, bool]] = field(default_factory=collections.Counter)
    wrote: list[str] = field(default_factory=list)
    status_writes: int = 0
    failures: list[str] = field(default_factory=list)
    terminating: bool = False  # the namespace is being deleted: nothing was done
    # The Secrets its ProviderKeys reference, and whether the operator may read them here.
    referenced: frozenset[str] = frozenset()
    secrets_readable: bool = True
    # Why the namespace's config could not be written (the reason its objects carry), if so.
    problem: Problem | None = None


@dataclass(frozen=True, slots=True)
class Problem:
    """Why a namespace's config was not written: every source gets Ready=False with it."""

    reason: str
    message: str


NOT_ENABLED = "NamespaceNotEnabled"
WRITE_FAILED = "ConfigWriteFailed"


def not_enabled(namespace: str) -> Problem:
    return Problem(NOT_ENABLED, f"the operator is not enabled in namespace {namespace} (it may not read Secrets "
                                "or write its config there): an administrator enables a namespace with a "
                                "RoleBinding to the operator's namespace ClusterRole (see docs/install.md)")


# What the namespace ClusterRole grants and a reconcile needs (verb, resource).
NAMESPACE_ACCESS = (("get", "secrets"), ("create", "secrets"), ("create", "configmaps"))


async def enabled_in(kube: Kube, namespace: str) -> bool:
    """Whether RBAC lets the operator do its work in ``namespace`` (True when it cannot tell)."""
    try:
        answers = await asyncio.gather(*(kube.allowed(v, r, namespace) for v, r in NAMESPACE_ACCESS))
    except ApiError:
        return True
    return all(answers)


class ConfigWriteError(Exception):
    """``modelroute-config`` or ``modelroute-keys`` could not be written; the message is the user's
    (the API server's reason, never object content)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


async def reconcile_namespace(
    kube: Kube, namespace: str, *, base: GatewayConfig | None = None, instance: str | None = None,
    extra: Mapping[str, str] | None = None, budgets: BudgetStore | None = None,
) -> Report:
    """``extra``: more files of the ConfigMap (the lease server's CA). ``budgets``: where
    ModelBudgets' status goes (with their ledger; without it, their status is not written)."""
    report = Report(namespace)
    routes, keys, budget_bodies = await asyncio.gather(
        kube.list(custom_path("modelroutes", namespace)), kube.list(custom_path("providerkeys", namespace)),
        kube.list(custom_path("modelbudgets", namespace)),
    )
    for body in routes:
        body.setdefault("kind", "ModelRoute")
    for body in keys:
        body.setdefault("kind", "ProviderKey")
    for body in budget_bodies:
        body.setdefault("kind", "ModelBudget")
    sources = keys + routes + budget_bodies
    report.routes, report.provider_keys = len(routes), len(keys)

    if not sources:
        generated = (core_path("configmaps", namespace, CONFIGMAP_NAME),
                     core_path("secrets", namespace, KEYS_SECRET_NAME))
        for path in generated:
            try:
                existing = await kube.get(path)
                if existing is not None and objects.is_ours(existing):
                    await kube.delete(path, resource_version=existing["metadata"].get("resourceVersion"))
                    report.wrote.append(f"deleted {path.rsplit('/', 1)[-1]} (no sources left)")
            except ApiError as e:
                if e.status != 403:
                    raise
                # Not enabled: the operator cannot have written anything here (or no longer may).
        return report

    secret_names = sorted(objects.referenced_secret_names(keys))
    report.referenced = frozenset(secret_names)
    try:
        fetched = await asyncio.gather(*(kube.get(core_path("secrets", namespace, n)) for n in secret_names))
    except ApiError as e:
        if e.status != 403:
            raise
        fetched, report.secrets_readable, report.problem = [], False, not_enabled(namespace)
    secrets = [s for s in fetched if s is not None]
    result = compile_resources(objects.source_docs(sources, secrets), base=base)
    del secrets, fetched  # key material stays in `result.keys` only

    if report.problem is None:
        owners = objects.owner_references(sources)
        outputs = (objects.desired_configmap(namespace, result, owners, extra),
                   objects.desired_keys_secret(namespace, result, owners))
        try:
            changed = await asyncio.gather(*(_apply(kube, desired) for desired in outputs))
        except ApiError as e:
            if e.namespace_terminating:  # it is going, and everything in it: nothing to do
                report.terminating = True
                return report
            raise
        except ConfigWriteError as e:
            # A 403 is RBAC (not enabled, e.g. its RoleBinding going with the namespace) or an
            # admission plugin (a quota, a policy): only the latter's reason is worth showing.
            report.problem = not_enabled(namespace) if e.status == 403 and not await enabled_in(kube, namespace) \
                else Problem(WRITE_FAILED, objects.redact(str(e), result.keys))
        else:
            report.wrote += [f"{d['kind']} {d['metadata']['name']}"
                             for d, c in zip(outputs, changed, strict=True) if c]

    statuses = objects.all_statuses(result, sources)
    if report.problem is not None:
        statuses = objects.failed_statuses(statuses, report.problem.reason, report.problem.message)
    now = utcnow()
    writes = asyncio.Semaphore(STATUS_WRITES_IN_FLIGHT)

    async def write_status(body: dict[str, Any], status: ObjectStatus) -> None:
        async with writes:
            try:
                if body["kind"] == "ModelBudget":
                    # One writer of a budget's status: the store, which also holds its ledger.
                    if budgets is not None:
                        report.status_writes += await budgets.refresh(namespace, body["metadata"]["name"], status)
                    return
                report.status_writes += await _write_status(kube, body, status, now, instance or socket.gethostname())
            except BudgetNotFound:
                pass  # deleted meanwhile, and its deletion triggers another pass
            except ApiError as e:
                if e.status != 404:  # 404: deleted meanwhile, and its deletion triggers another pass
                    report.failures.append(f"{body['kind']}/{body['metadata'].get('name')}: {e}")

    pending = []
    for body in sources:
        status = statuses.get((body["kind"], str((body.get("metadata") or {}).get("name"))))
        if status is not None:
            report.ready += status.ready
            report.objects[(body["kind"], status.ready)] += 1
            pending.append(write_status(body, status))
    await asyncio.gather(*pending)
    if report.failures:
        # The other objects got their status; a retry of the namespace will finish these.
        raise ReconcileIncomplete("; ".join(report.failures), report)
    if report.problem is not None:
        # Said on every object (and in an Event); retried with backoff until it can be written.
        raise ReconcileIncomplete(f"{report.problem.reason}: {report.problem.message}", report)
    return report


class ReconcileIncomplete(Exception):
    """Some objects' status could not be written, or the namespace's config could not be."""

    def __init__(self, message: str, report: Report) -> None:
        super().__init__(message)
        self.report = report


FollowFn = Callable[[str, frozenset[str]], None]


async def reconcile_and_log(kube: Kube, namespace: str, metrics: OperatorMetrics | None = None,
                            follow: FollowFn | None = None,
                            extra: Callable[[], Mapping[str, str]] | None = None,
                            budgets: BudgetStore | None = None) -> Report:
    """Reconcile, count and log; ``follow(namespace, secret names)`` is told which Secrets to
    watch for rotation afterwards (none where they cannot be read)."""
    start = time.perf_counter()
    try:
        report = await reconcile_namespace(kube, namespace, extra=extra() if extra is not None else None,
                                           budgets=budgets)
    except Exception as e:
        if metrics is not None:
            metrics.reconciled(namespace, "error", time.perf_counter() - start)
        if follow is not None and isinstance(e, ReconcileIncomplete):
            follow(namespace, e.report.referenced if e.report.secrets_readable else frozenset())
        raise
    if follow is not None:
        follow(namespace, report.referenced)
    if metrics is not None:
        result: ReconcileResult = "terminating" if report.terminating else \
            "changed" if report.wrote or report.status_writes else "unchanged"
        metrics.reconciled(namespace, result, time.perf_counter() - start,
                           None if report.terminating else report.objects)
    if report.terminating:
        logger.debug("namespace %s is being deleted; not reconciling it", namespace)
    elif report.wrote:
        logger.info("namespace %s: %d ProviderKey(s), %d ModelRoute(s), %d ready; wrote %s", namespace,
                    report.provider_keys, report.routes, report.ready, ", ".join(report.wrote))
    else:
        logger.debug("namespace %s: up to date", namespace)
    return report


async def _write_status(kube: Kube, body: dict[str, Any], status: ObjectStatus, now: str, instance: str) -> bool:
    """Patch the object's status if it differs; False when it did not."""
    meta = body["metadata"]
    old = body.get("status")
    patch = objects.status_patch(status, old, now)
    if patch is None:
        return False
    await kube.merge_patch(custom_path(PLURALS[body["kind"]], meta["namespace"], meta["name"], "status"), patch)
    event = objects.event_for(status, old)
    if event is not None:
        try:
            await kube.create(core_path("events", meta["namespace"]), objects.event_body(body, event, now,
                                                                                       instance=instance))
        except ApiError as e:  # an Event is a courtesy: never fail the reconcile for one
            if e.namespace_terminating:
                return True
            logger.warning("could not post event %s on %s/%s: %s", event.reason, body["kind"], meta["name"], e)
    return True


async def _apply(kube: Kube, desired: dict[str, Any]) -> bool:
    """Create or update ``desired``; False when it was already so. Raises on conflict
    (someone else wrote it meanwhile): the caller's retry re-reads and re-compiles."""
    meta = desired["metadata"]
    plural = "configmaps" if desired["kind"] == "ConfigMap" else "secrets"
    path = core_path(plural, meta["namespace"], meta["name"])
    what = f"{desired['kind']} {meta['name']}"
    try:
        existing = await kube.get(path)
        if existing is None:
            await kube.create(core_path(plural, meta["namespace"]), desired)
            return True
        if not objects.is_ours(existing):
            raise ConfigWriteError(f"cannot write {what}: an object of that name exists that the operator does "
                                   f"not manage (no label {names.MANAGED_BY_LABEL}={names.MANAGED_BY_VALUE}); "
                                   "rename or delete it")
        update = objects.merged_for_update(existing, desired)
        if update is None:
            return False
        await kube.replace(path, update)
        return True
    except ApiError as e:
        if e.namespace_terminating or e.status == 409 or e.status >= 500:
            raise  # going away, a concurrent write, or the server's trouble: retried as it is
        # Refused: by RBAC (not enabled), an admission policy or webhook, a quota, validation...
        raise ConfigWriteError(f"cannot write {what}: {e.message or e.reason} ({e.status})", e.status) from None


ReconcileFn = Callable[[str], Awaitable[object]]


class Reconciler:
    """Runs ``fn(namespace)`` for triggered namespaces: coalesced, retried, bounded."""

    def __init__(
        self,
        fn: ReconcileFn,
        *,
        concurrency: int = 8,
        settle_seconds: float = 0.05,
        backoff_seconds: tuple[float, float] = (0.5, 60.0),
    ) -> None:
        self._fn = fn
        self._semaphore = asyncio.Semaphore(concurrency)
        self._settle = settle_seconds
        self._backoff = backoff_seconds
        self._dirty: set[str] = set()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.seen: set[str] = set()
        self.passes = 0
        self.failures = 0

    def trigger(self, namespace: str) -> None:
        self.seen.add(namespace)
        self._dirty.add(namespace)
        if namespace not in self._tasks:
            self._tasks[namespace] = asyncio.create_task(self._run(namespace), name=f"reconcile:{namespace}")

    def trigger_all(self) -> None:
        for namespace in sorted(self.seen):
            self.trigger(namespace)

    @property
    def busy(self) -> bool:
        return bool(self._tasks)

    async def _run(self, namespace: str) -> None:
        delay = self._backoff[0]
        try:
            while namespace in self._dirty:
                # A burst (e.g. `kubectl apply -f` of a dozen objects) becomes one pass.
                await asyncio.sleep(self._settle)
                self._dirty.discard(namespace)
                async with self._semaphore:
                    try:
                        await self._fn(namespace)
                        self.passes += 1
                        delay = self._backoff[0]
                    except asyncio.CancelledError:
                        raise
                    except Exception as e:
                        self.failures += 1
                        logger.warning("reconciling namespace %s failed, retrying in %.1fs: %s",
                                       namespace, delay, _describe(e))
                        self._dirty.add(namespace)
                        failed = True
                    else:
                        failed = False
                if failed:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._backoff[1])
        finally:
            self._tasks.pop(namespace, None)

    async def resync_forever(self, interval: float) -> None:
        """Re-reconcile every namespace seen, now and then: a safety net, not the mechanism."""
        while True:
            await asyncio.sleep(interval)
            self.trigger_all()

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _describe(e: BaseException) -> str:
    # ApiError messages come from the API server (names and reasons, no object bodies).
    return str(e) if isinstance(e, ApiError) else f"{type(e).__name__}: {e}"
