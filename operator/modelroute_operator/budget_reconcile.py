"""ModelBudgets' windows rolled over when their time is up, even without traffic: after each
pass over a namespace's budgets it is triggered again at the next window end, so ``kubectl get
mb`` shows the new window at zero (and Exceeded cleared) without anyone asking for a lease.
(Ready comes from the namespace's compile, reconcile.py.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from modelroute_sidecar.budget.windows import parse_window

from . import budget_ledger as bl
from .budget_store import PLURAL, BudgetNotFound, BudgetStore
from .kube import Kube, custom_path

logger = logging.getLogger("modelroute.operator")


async def reconcile_budgets(kube: Kube, store: BudgetStore, namespace: str,
                            clock: Callable[[], float] = time.time) -> float | None:
    """Refresh every ModelBudget of ``namespace``; the next window end among them (POSIX), if any."""
    budgets = await kube.list(custom_path(PLURAL, namespace))
    if not budgets:
        return None
    now = clock()
    next_end: float | None = None
    for body in budgets:
        name = body["metadata"]["name"]
        try:
            await store.refresh(namespace, name)
        except BudgetNotFound:
            continue
        for window in bl.limits_of(body.get("spec") or {}):
            end = parse_window(window).end(now)
            next_end = end if next_end is None else min(next_end, end)
    return next_end


class RollOver:
    """Triggers a namespace again when its next window starts."""

    def __init__(self, trigger: Callable[[str], None], clock: Callable[[], float] = time.time) -> None:
        self._trigger = trigger
        self._clock = clock
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def at(self, namespace: str, when: float | None) -> None:
        old = self._timers.pop(namespace, None)
        if old is not None:
            old.cancel()
        if when is None:
            return
        delay = max(0.0, when - self._clock()) + 0.5  # just past the boundary
        self._timers[namespace] = asyncio.get_running_loop().call_later(delay, self._trigger, namespace)

    def close(self) -> None:
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
