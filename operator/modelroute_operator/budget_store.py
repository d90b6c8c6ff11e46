"""The ledger's home: each ModelBudget's status, written before a lease is answered.

Every change is a read-modify-write of the status subresource with the resourceVersion read
(an update, so the API server refuses it with 409 if anyone wrote meanwhile: another operator
replica, or this one's reconcile); the change is then recomputed from the fresh object. A
grant is answered only after its write succeeded, so a SIGKILL between the two loses nothing
the sidecar was told. In-process writers of one budget queue on a lock, so the common case
is one write per request.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import budget_ledger as bl
from . import names, objects
from .kube import ApiError, Kube, core_path, custom_path

if TYPE_CHECKING:
    from modelroute_sidecar.compile import ObjectStatus

logger = logging.getLogger("modelroute.operator")

PLURAL = "modelbudgets"
CONFLICT_RETRIES = 20

Key = tuple[str, str]  # (namespace, name)
Change = Callable[[dict[str, Any], float], tuple[dict[str, Any], Any]]


class BudgetNotFound(Exception):
    pass


class BudgetStore:
    def __init__(self, kube: Kube, *, ttl: float = 30.0, clock: Callable[[], float] = time.time,
                 instance: str = names.EVENT_SOURCE, per_pod: bool = False) -> None:
        self._kube = kube
        # No lease server (budgets disabled): each sidecar enforces every budget alone, which the
        # Ready condition says where a platform engineer looks (kubectl describe mb).
        self.per_pod = per_pod
        self.ttl = ttl
        self._clock = clock
        self._instance = instance
        self._locks: dict[Key, asyncio.Lock] = {}
        self._known: dict[Key, dict[str, Any]] = {}  # the last object read or written
        self._events: set[asyncio.Task[None]] = set()
        self.writes = 0
        self.conflicts = 0

    def forget(self, key: Key) -> None:
        self._known.pop(key, None)

    async def change(self, key: Key, fn: Change, ready: ObjectStatus | None = None) -> tuple[Any, bool]:
        """Apply ``fn(body, now) -> (new status, result)`` and write the status; (``result``, whether
        anything was written) once written. ``ready``: the compiler's verdict, for its Event.
        Raises :class:`BudgetNotFound`, or :class:`ApiError` when it cannot be written."""
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            body = self._known.get(key)
            for attempt in range(CONFLICT_RETRIES):
                if body is None or attempt > 0:
                    body = await self._kube.get(custom_path(PLURAL, *key))
                    if body is None:
                        self._known.pop(key, None)
                        raise BudgetNotFound(f"{key[0]}/{key[1]}")
                now = self._clock()
                status, result = fn(body, now)
                if status == body.get("status"):
                    self._known[key] = body
                    return result, False
                update = {"apiVersion": body.get("apiVersion", names.GROUP + "/" + names.VERSION),
                          "kind": "ModelBudget", "metadata": body["metadata"], "spec": body.get("spec"),
                          "status": status}
                try:
                    written: dict[str, Any] = await self._kube.replace(custom_path(PLURAL, *key, sub="status"), update)
                except ApiError as e:
                    if e.status == 409:
                        # Another writer (a second replica, a reconcile) got there first: read again,
                        # after a jittered pause that grows, so two writers do not keep colliding.
                        self.conflicts += 1
                        await asyncio.sleep(random.uniform(0, 0.005 * (attempt + 1)))
                        continue
                    if e.status == 404:
                        self._known.pop(key, None)
                        raise BudgetNotFound(f"{key[0]}/{key[1]}") from None
                    self._known.pop(key, None)
                    raise
                self.writes += 1
                self._known[key] = written
                self._post_event(body, written, ready)
                return result, True
            self._known.pop(key, None)
            raise ApiError(409, "Conflict", f"{CONFLICT_RETRIES} conflicting writes in a row", "PUT",
                           custom_path(PLURAL, *key, sub="status"))

    async def lease(self, namespace: str, budget: str, holder: str,
                    entries: list[bl.LeaseEntry]) -> list[dict[str, Any]]:
        def fn(body: dict[str, Any], now: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
            status, answers = bl.apply_leases(body, holder, entries, now, self.ttl)
            return bl.derived_status(body, status, now, _rfc3339(now)), answers

        result: list[dict[str, Any]] = (await self.change((namespace, budget), fn))[0]
        return result

    async def refresh(self, namespace: str, name: str, ready: ObjectStatus | None = None) -> bool:
        """Recompute the status without a lease: windows rolled over, and with ``ready`` (the
        compiler's verdict) the Ready condition. Whether anything was written."""
        verdict = (ready.ready, ready.reason, ready.message) if ready is not None else None
        if verdict is not None and self.per_pod:
            verdict = bl.per_pod_verdict(verdict)

        def fn(body: dict[str, Any], now: float) -> tuple[dict[str, Any], None]:
            return bl.derived_status(body, dict(body.get("status") or {}), now, _rfc3339(now), verdict), None

        return (await self.change((namespace, name), fn, ready))[1]

    def _post_event(self, old: dict[str, Any], new: dict[str, Any], ready: ObjectStatus | None) -> None:
        events = [objects.event_for(ready, old.get("status"))] if ready is not None else []
        if (exceeded := bl.exceeded_event(old.get("status"), new.get("status") or {})) is not None:
            events.append(objects.EventSpec(*exceeded))
        for event in events:
            if event is not None:
                task = asyncio.create_task(self._create_event(new, event))
                self._events.add(task)
                task.add_done_callback(self._events.discard)

    async def _create_event(self, body: dict[str, Any], spec: objects.EventSpec) -> None:
        meta = body["metadata"]
        reason = spec.reason
        try:
            await self._kube.create(core_path("events", meta["namespace"]), objects.event_body(
                {**body, "kind": "ModelBudget"}, spec, _rfc3339(self._clock()), instance=self._instance))
        except ApiError as e:  # a courtesy: never fails the write it reports
            if e.namespace_terminating:
                return  # going away, and its budget with it
            logger.warning("could not post event %s on ModelBudget %s/%s: %s", reason, meta["namespace"],
                           meta["name"], e)

    async def close(self) -> None:
        for task in list(self._events):
            task.cancel()
        await asyncio.gather(*self._events, return_exceptions=True)


def _rfc3339(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
