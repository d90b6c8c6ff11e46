"""The namespace work queue: coalescing, retries, isolation (no API server involved)."""

from __future__ import annotations

import asyncio

from modelroute_operator.handlers import needs_reconcile
from modelroute_operator.reconcile import Reconciler
from tests.fakes.base import wait_until


async def wait_idle(r: Reconciler) -> None:
    await wait_until(lambda: not r.busy, within=5)


async def test_a_burst_of_triggers_is_coalesced() -> None:
    calls: list[str] = []
    gate = asyncio.Event()

    async def fn(ns: str) -> None:
        calls.append(ns)
        await gate.wait()

    r = Reconciler(fn, settle_seconds=0.01)
    for _ in range(50):
        r.trigger("a")
    await wait_until(lambda: bool(calls), within=5)
    for _ in range(50):  # while the first pass runs: exactly one more pass
        r.trigger("a")
    gate.set()
    await wait_idle(r)
    assert calls == ["a", "a"]


async def test_a_failing_namespace_is_retried_and_does_not_block_others() -> None:
    attempts: dict[str, int] = {"bad": 0, "good": 0}

    async def fn(ns: str) -> None:
        attempts[ns] += 1
        if ns == "bad" and attempts[ns] < 3:
            raise RuntimeError("boom")

    r = Reconciler(fn, settle_seconds=0, backoff_seconds=(0.01, 0.02))
    r.trigger("bad")
    r.trigger("good")
    await wait_idle(r)
    assert attempts == {"bad": 3, "good": 1}
    assert r.failures == 2


async def test_concurrency_is_bounded() -> None:
    running = 0
    peak = 0

    async def fn(ns: str) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        running -= 1

    r = Reconciler(fn, concurrency=3, settle_seconds=0)
    for i in range(12):
        r.trigger(f"ns-{i}")
    await wait_idle(r)
    assert peak == 3
    assert r.passes == 12


async def test_close_cancels_work() -> None:
    async def fn(ns: str) -> None:
        await asyncio.sleep(60)

    started = asyncio.Event()

    async def fn_started(ns: str) -> None:
        started.set()
        await fn(ns)

    r = Reconciler(fn_started, settle_seconds=0)
    r.trigger("a")
    await asyncio.wait_for(started.wait(), 5)  # the pass is running
    await r.close()
    assert not r.busy


def test_needs_reconcile_skips_only_our_own_status_writes() -> None:
    def body(generation: int, observed: int | None) -> dict:
        return {"metadata": {"generation": generation},
                "status": {} if observed is None else {"observedGeneration": observed}}

    assert needs_reconcile(None, body(1, 1))  # initial listing
    assert needs_reconcile("ADDED", body(1, None))
    assert needs_reconcile("DELETED", body(1, 1))
    assert needs_reconcile("MODIFIED", body(2, 1))  # spec changed
    assert not needs_reconcile("MODIFIED", body(2, 2))  # status write
