"""The cumulative ledger: idempotent reports, the grant rule, the invariant."""

import random

import pytest

from modelroute_sidecar.budget.ledger import RETIRED, Amount, Limit, WindowLedger

TTL = 30.0


def test_first_grant_is_half_of_what_remains_or_the_need() -> None:
    led = WindowLedger(0.0)
    g = led.grant("a", Amount(), Amount(requests=1), Limit(requests=100), now=1.0, ttl=TTL)
    assert g.granted.requests == 50 and not g.exhausted
    g = led.grant("b", Amount(), Amount(requests=1), Limit(requests=100), now=1.0, ttl=TTL)
    assert g.granted.requests == 12  # two active holders: remaining 50 / (2 * 2), whole
    # a need bigger than the share is met while the budget has it
    g = led.grant("c", Amount(), Amount(requests=30), Limit(requests=100), now=1.0, ttl=TTL)
    assert g.granted.requests == 30


def test_a_repeated_message_grants_nothing_more() -> None:
    led = WindowLedger(0.0)
    limit = Limit(usd=1.0)
    first = led.grant("a", Amount(usd=0.1), Amount(usd=0.05), limit, now=1.0, ttl=TTL)
    again = led.grant("a", Amount(usd=0.1), Amount(usd=0.05), limit, now=2.0, ttl=TTL)
    assert again.granted == first.granted
    # an older report (lost and retried late) never lowers the spend
    led.grant("a", Amount(usd=0.05), Amount(), limit, now=3.0, ttl=TTL)
    assert led.holders["a"].used.usd == 0.1


def test_units_the_limit_does_not_set_are_not_granted() -> None:
    led = WindowLedger(0.0)
    g = led.grant("a", Amount(), Amount(usd=1, tokens=10, requests=1), Limit(tokens=1000), now=1.0, ttl=TTL)
    assert g.granted.tokens == 500 and g.granted.usd == 0 and g.granted.requests == 0


def test_exhaustion() -> None:
    led = WindowLedger(0.0)
    limit = Limit(requests=2)
    g = led.grant("a", Amount(), Amount(requests=2), limit, now=1.0, ttl=TTL)
    assert g.granted.requests == 2 and g.exhausted
    g = led.grant("b", Amount(), Amount(requests=1), limit, now=1.0, ttl=TTL)
    assert g.granted.requests == 0 and g.exhausted


def test_spend_beyond_the_grant_counts_and_blocks_further_grants() -> None:
    led = WindowLedger(0.0)
    limit = Limit(tokens=100)
    led.grant("a", Amount(), Amount(tokens=10), limit, now=1.0, ttl=TTL)  # granted 50
    led.grant("a", Amount(tokens=120), Amount(), limit, now=2.0, ttl=TTL)  # overshot (failurePolicy Open)
    g = led.grant("b", Amount(), Amount(tokens=1), limit, now=2.0, ttl=TTL)
    assert g.granted.tokens == 0 and g.exhausted
    assert led.spent().tokens == 120


def test_stale_holders_retire_keeping_their_spend() -> None:
    led = WindowLedger(0.0)
    limit = Limit(requests=100)
    led.grant("a", Amount(requests=10), Amount(requests=1), limit, now=0.0, ttl=TTL)
    led.grant("b", Amount(requests=5), Amount(requests=1), limit, now=100.0, ttl=TTL)
    led.retire_stale(now=100.0, ttl=TTL)
    assert set(led.holders) == {"b", RETIRED}
    assert led.holders[RETIRED].used.requests == 10
    assert led.holders[RETIRED].granted.requests == 10  # a's unspent lease went back
    assert led.spent().requests == 15


def test_json_round_trip() -> None:
    led = WindowLedger(1_764_547_200.0)
    led.grant("ns/pod/abc", Amount(usd=0.123456789, tokens=10), Amount(usd=0.5), Limit(usd=2.0), 5.0, TTL)
    back = WindowLedger.from_json(led.to_json())
    assert back.to_json() == led.to_json()
    assert led.to_json()["windowStart"] == "2025-12-01T00:00:00Z"


@pytest.mark.parametrize("bad", [{"usd": -1}, {"tokens": "5"}, {"requests": True}, {"usd": float("nan")},
                                 {"usd": float("inf")}, [1, 2]])
def test_bad_amounts_are_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        Amount.from_json(bad)  # type: ignore[arg-type]


def test_the_invariant_holds_under_random_traffic() -> None:
    """sum over holders of max(granted, used) <= limit whenever every holder spends only
    what it was granted; grants shrink as the budget nears its end."""
    rnd = random.Random(7)
    limit = Limit(usd=10.0, tokens=50_000, requests=400)
    led = WindowLedger(0.0)
    used = {f"h{i}": Amount() for i in range(5)}
    granted = {h: Amount() for h in used}
    for step in range(4000):
        h = rnd.choice(list(used))
        cost = Amount(usd=rnd.uniform(0, 0.05), tokens=rnd.randint(1, 400), requests=1)
        free_ok = all(granted[h].get(u) - used[h].get(u) >= cost.get(u) for u in limit.units)
        if free_ok:
            used[h].add(cost)
        g = led.grant(h, used[h], cost, limit, now=float(step), ttl=TTL)
        granted[h] = g.granted
        for unit in limit.units:
            assert led.committed(unit) <= limit.get(unit) + 1e-9
    spent = led.spent()
    assert spent.requests <= 400 and spent.tokens <= 50_000 and spent.usd <= 10.0 + 1e-9
    assert spent.requests > 300 or spent.tokens > 45_000 or spent.usd > 9.0  # and most of it was usable
