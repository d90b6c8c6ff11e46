"""The operator's ledger in a ModelBudget's status, as pure functions: grants, late settles after a
roll-over, what kubectl shows, the conditions and Events; and who a TokenReview names."""

from __future__ import annotations

from typing import Any

import pytest

from modelroute_operator import budget_ledger as bl
from modelroute_operator.tokenauth import Identity, identity_of
from modelroute_sidecar.budget.windows import rfc3339

HOUR = 3600.0
T0 = 1_800_000_000.0 - 1_800_000_000.0 % HOUR  # an hour's start


def body(*limits: dict[str, Any], status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "team", "namespace": "ns", "generation": 2},
            "spec": {"limits": list(limits) or [{"window": "1h", "usd": 1.0}], **spec}, "status": status or {}}


def entry(window: str = "1h", start: float = T0, used: dict[str, float] | None = None,
          want: dict[str, float] | None = None) -> bl.LeaseEntry:
    return bl.parse_entry({"budget": "team", "window": window, "windowStart": rfc3339(start),
                           "used": used or {}, "want": want or {}})


def lease(b: dict[str, Any], holder: str, e: bl.LeaseEntry, now: float) -> tuple[dict[str, Any], dict[str, Any]]:
    status, [answer] = bl.apply_leases(b, holder, [e], now, 30.0)
    b["status"] = bl.derived_status(b, status, now, rfc3339(now))
    return b, answer


def test_grants_stop_at_the_limit_and_spend_is_kept_across_the_roll_over() -> None:
    b = body()
    b, a = lease(b, "ns/p/1", entry(want={"usd": 0.3}), T0 + 10)
    assert a["granted"] == {"usd": 0.5} and not a["exhausted"]  # max(need, remaining / 2)
    assert a["resetAt"] == rfc3339(T0 + HOUR)
    b, a = lease(b, "ns/q/1", entry(want={"usd": 0.9}), T0 + 11)
    assert a["granted"] == {"usd": 0.5} and a["exhausted"]
    assert b["status"]["spent"] == "$0.00/$1.00" and b["status"]["window"] == "1h"
    exceeded = bl.condition(b["status"], bl.EXCEEDED)
    assert exceeded is not None and exceeded["status"] == "True" and exceeded["reason"] == "LimitReached"
    # After the hour: a new window at zero; a late settle of the old one still counts there.
    b, a = lease(b, "ns/p/1", entry(start=T0, used={"usd": 0.45}), T0 + HOUR + 5)
    assert a["exhausted"] and a["granted"] == {"usd": 0.5}
    ledger = b["status"]["ledger"]["1h"]
    assert ledger["previous"]["holders"]["ns/p/1"]["used"]["usd"] == 0.45
    assert ledger["current"]["windowStart"] == rfc3339(T0 + HOUR) and ledger["current"]["holders"] == {}
    assert b["status"]["windows"][0]["start"] == rfc3339(T0 + HOUR)
    assert bl.condition(b["status"], bl.EXCEEDED)["status"] == "False"  # type: ignore[index]
    # Two windows on: the old one is history, its report an error.
    b, a = lease(b, "ns/p/1", entry(start=T0), T0 + 2 * HOUR + 5)
    assert "error" in a and a["currentWindowStart"] == rfc3339(T0 + 2 * HOUR)


def test_spent_text_and_the_window_shown_is_the_fullest() -> None:
    b = body({"window": "1h", "usd": 10.0}, {"window": "1d", "tokens": 10_000, "requests": 100})
    b, _ = lease(b, "ns/p/1", entry("1d", start=T0 - T0 % 86400, used={"tokens": 3400, "requests": 17}), T0 + 1)
    assert b["status"]["window"] == "1d"
    assert b["status"]["spent"] == "3,400/10,000 tokens, 17/100 requests"
    assert [w["window"] for w in b["status"]["windows"]] == ["1h", "1d"]
    assert b["status"]["windows"][1]["limit"] == {"tokens": 10_000, "requests": 100}
    assert b["status"]["observedGeneration"] == 2


def test_unknown_window_and_bad_entries() -> None:
    _, [a] = bl.apply_leases(body(), "h", [entry("1d", start=T0 - T0 % 86400)], T0, 30)
    assert a["error"] == "no such window"
    for raw, words in [({}, "budget"), ({"budget": "b", "window": "2w"}, "window"),
                       ({"budget": "b", "window": "1h", "windowStart": "yesterday"}, "windowStart"),
                       ({"budget": "b", "window": "1h", "windowStart": rfc3339(T0), "used": {"usd": "1"}}, "usd"),
                       ({"budget": "b", "window": "1h", "windowStart": rfc3339(T0), "want": {"tokens": -1}}, "tokens")]:
        with pytest.raises(bl.LeaseRequestError, match=words):
            bl.parse_entry(raw)


def test_events_on_a_change_of_exceeded_only() -> None:
    on = {"conditions": [{"type": "Exceeded", "status": "True", "message": "window 1h: $1.00/$1.00"}]}
    off = {"conditions": [{"type": "Exceeded", "status": "False"}]}
    assert bl.exceeded_event(off, on) == ("Warning", "BudgetExceeded", "window 1h: $1.00/$1.00")
    assert bl.exceeded_event(None, on) is not None
    assert bl.exceeded_event(on, on) is None and bl.exceeded_event(off, off) is None
    assert bl.exceeded_event(on, off) == ("Normal", "BudgetAvailable", "every window has budget left")


@pytest.mark.parametrize(("status", "expected"), [
    ({"authenticated": True, "audiences": ["modelroute"], "user": {
        "username": "system:serviceaccount:team-a:web",
        "extra": {"authentication.kubernetes.io/pod-name": ["web-1"]}}}, Identity("team-a", "web", "web-1")),
    ({"authenticated": True, "user": {"username": "system:serviceaccount:team-a:web"}},
     Identity("team-a", "web", None)),
    ({"authenticated": True, "audiences": ["https://kubernetes.default.svc"],
      "user": {"username": "system:serviceaccount:team-a:web"}}, None),
    ({"authenticated": True, "user": {"username": "alice"}}, None),
    ({"authenticated": True, "user": {"username": "system:serviceaccount:team-a"}}, None),
    ({"authenticated": False, "error": "invalid bearer token"}, None),
])
def test_identity_of_a_token_review(status: dict[str, Any], expected: Identity | None) -> None:
    assert identity_of(status) == expected


class _StatusOnlyKube:
    """The three calls BudgetStore makes, over one stored ModelBudget."""

    def __init__(self, stored: dict[str, Any]) -> None:
        self.stored = stored

    async def get(self, path: str) -> dict[str, Any]:
        return self.stored

    async def replace(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.stored = body
        return body

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return body


@pytest.mark.parametrize("per_pod", [False, True])
def test_ready_says_enforced_per_pod_when_the_operator_serves_no_leases(per_pod: bool) -> None:
    import asyncio

    from modelroute_operator.budget_store import BudgetStore
    from modelroute_sidecar.compile import ObjectStatus

    kube = _StatusOnlyKube(body())
    store = BudgetStore(kube, clock=lambda: T0 + 5, per_pod=per_pod)  # type: ignore[arg-type]

    async def refresh() -> None:
        verdict = ObjectStatus("ModelBudget", "team", True, "Compiled", "limits $1.00 per 1h", 2)
        await store.refresh("ns", "team", verdict)
        await store.close()

    asyncio.run(refresh())
    [ready] = [c for c in kube.stored["status"]["conditions"] if c["type"] == "Ready"]
    assert ready["status"] == "True" and ready["reason"] == "Compiled"
    assert ready["message"] == ("limits $1.00 per 1h; enforced per pod: no lease server (budgets disabled), so N pods "
                                "may spend N times the limit" if per_pod else "limits $1.00 per 1h")
