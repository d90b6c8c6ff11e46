"""The sidecar's leases and serve's journal, without a process: reserve, settle, roll over,
replay after a crash."""

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from modelroute_sidecar.budget.holder import BudgetExceeded, Budgets
from modelroute_sidecar.budget.journal import JOURNAL, LocalGranter, replay
from modelroute_sidecar.budget.ledger import Amount
from modelroute_sidecar.config import GatewayConfig, from_data


class Clock:
    def __init__(self, t: datetime) -> None:
        self.now = t.timestamp()

    def __call__(self) -> float:
        return self.now


def config(**limit: float) -> GatewayConfig:
    return from_data({"budgets": {"b": {"name": "b", "limits": [{"window": "month", **limit}]}}}, GatewayConfig)


def test_reserve_settle_and_refuse(tmp_path: Path) -> None:
    clock = Clock(datetime(2026, 11, 30, 23, 59, tzinfo=UTC))
    budgets = Budgets(LocalGranter(tmp_path), clock)
    budgets.apply(config(tokens=100))
    sel = budgets.select("m", None, None)
    t1 = asyncio.run(budgets.reserve(sel, Amount(0, 60, 1)))
    with pytest.raises(BudgetExceeded) as e:  # 60 reserved of 100: another 60 does not fit
        asyncio.run(budgets.reserve(sel, Amount(0, 60, 1)))
    assert e.value.lease.window.retry_after(clock()) == 60
    t1.settle(budgets.granter, Amount(0, 30, 1))  # it used less than it reserved
    t2 = asyncio.run(budgets.reserve(sel, Amount(0, 60, 1)))
    t2.settle(budgets.granter, Amount(0, 70, 1))  # and this one more: spend is what was used
    lease = sel[0].leases[0]
    assert lease.used.tokens == 100 and lease.reserved.tokens == 0


def test_a_new_month_starts_from_zero_and_a_call_across_it_counts_in_the_new_one(tmp_path: Path) -> None:
    clock = Clock(datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC))
    budgets = Budgets(LocalGranter(tmp_path), clock)
    budgets.apply(config(requests=2))
    sel = budgets.select("m", None, None)
    asyncio.run(budgets.reserve(sel, Amount(requests=1))).settle(budgets.granter, Amount(requests=1))
    in_flight = asyncio.run(budgets.reserve(sel, Amount(requests=1)))
    with pytest.raises(BudgetExceeded):
        asyncio.run(budgets.reserve(sel, Amount(requests=1)))
    clock.now = datetime(2027, 1, 1, tzinfo=UTC).timestamp()  # the first instant of January
    ticket = asyncio.run(budgets.reserve(sel, Amount(requests=1)))  # room again (one still in flight)
    in_flight.settle(budgets.granter, Amount(requests=1))
    ticket.settle(budgets.granter, Amount(requests=1))
    lease = sel[0].leases[0]
    assert lease.start == datetime(2027, 1, 1, tzinfo=UTC).timestamp() and lease.used.requests == 2


def test_replay_counts_unsettled_reservations_in_full() -> None:
    key = ["b", "month", "2026-11-01T00:00:00Z"]
    lines = [orjson.dumps(r) for r in (
        {"t": key, "a": [0.5, 100, 3]},
        {"r": 1, "l": [key], "a": [0.1, 50, 1]},
        {"s": 1, "l": [key], "a": [0.02, 10, 1]},
        {"r": 2, "l": [key], "a": [0.1, 50, 1]},  # never settled: the process died mid-call
    )] + [b'{"s": 3, "l": [["b", "mon']  # a line torn by the kill
    total = replay(lines)[("b", "month", "2026-11-01T00:00:00Z")]
    assert total == Amount(pytest.approx(0.62), 160, 5)  # type: ignore[arg-type]


def test_the_journal_survives_a_process_that_never_closed_it(tmp_path: Path) -> None:
    clock = Clock(datetime(2026, 11, 15, tzinfo=UTC))
    first = Budgets(LocalGranter(tmp_path), clock)
    first.apply(config(requests=10))
    sel = first.select("m", None, None)
    asyncio.run(first.reserve(sel, Amount(requests=1))).settle(first.granter, Amount(requests=1))
    asyncio.run(first.reserve(sel, Amount(requests=1)))  # in flight when "killed": no close()
    second = Budgets(LocalGranter(tmp_path), clock)
    second.apply(config(requests=10))
    assert second.select("m", None, None)[0].leases[0].used.requests == 2
    assert (tmp_path / JOURNAL).read_bytes().count(b"\n") == 1  # compacted
