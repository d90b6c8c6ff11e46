"""The budget ledger: pure accounting shared by the operator (which imports it) and the
sidecar's serve mode.

Every number is cumulative per (budget, window, window start, holder), so each lease
message is idempotent and a lost reply or a restart loses nothing. A holder is one
sidecar process (``<namespace>/<pod>/<start nonce>``; ``local`` in serve mode). Per holder
the ledger keeps ``granted`` (its cumulative lease) and ``used`` (its cumulative spend as
reported). The invariant, per unit the limit sets:

    sum over holders of max(granted, used) <= limit

holds for every grant: the operator never grants past the limit. Spend can still pass it
only by what requests in flight use beyond their reservation (and, under failurePolicy
Open, what is served while the operator is unreachable); see docs/budgets.md.

Grant rule (per unit the limit sets), for a holder that reports ``used`` and wants to hold
``want`` free after the grant:

    remaining = limit - sum over holders of max(granted, used)
    need      = max(0, want - (max(granted, used) - used))
    share     = remaining / (2 * active holders)         (seen within the last TTL)
    grant     = min(remaining, max(need, share))          added to max(granted, used)

(rounded down to whole tokens and requests),
so a holder gets at least what it needs while the budget has it, and at most a shrinking
share of what remains: slices halve as the budget nears its end. A unit the limit does not
set is unlimited and never granted.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from .windows import parse_rfc3339, rfc3339

UNITS: Final = ("usd", "tokens", "requests")
RETIRED: Final = "retired"  # the entry stale holders are collapsed into
_EPS: Final = 1e-9  # USD sums are floats; a remainder this small is nothing


@dataclass(slots=True)
class Amount:
    """An amount in the three units: USD, tokens (input + output), requests."""

    usd: float = 0.0
    tokens: float = 0.0
    requests: float = 0.0

    def get(self, unit: str) -> float:
        return float(getattr(self, unit))

    def add(self, other: Amount) -> None:
        self.usd += other.usd
        self.tokens += other.tokens
        self.requests += other.requests

    def sub(self, other: Amount) -> None:
        self.usd -= other.usd
        self.tokens -= other.tokens
        self.requests -= other.requests

    def copy(self) -> Amount:
        return Amount(self.usd, self.tokens, self.requests)

    def to_json(self, units: Iterable[str] = UNITS) -> dict[str, float]:
        out: dict[str, float] = {}
        for unit in units:
            v = getattr(self, unit)
            # tokens and requests are counts; usd keeps its fraction
            out[unit] = round(v, 9) if unit == "usd" else round(v)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Amount:
        """Missing units are 0; anything that is not a finite number >= 0 is a ValueError."""
        if not data:
            return cls()
        if not isinstance(data, Mapping):
            raise ValueError("an amount is an object of usd, tokens, requests")
        values = []
        for unit in UNITS:
            v = data.get(unit, 0)
            if isinstance(v, bool) or not isinstance(v, int | float) or not v >= 0 or v == float("inf"):
                raise ValueError(f"{unit} must be a finite number >= 0")
            values.append(float(v))
        return cls(*values)


@dataclass(frozen=True, slots=True)
class Limit:
    """One window's limits; None means that unit is not limited."""

    usd: float | None = None
    tokens: float | None = None
    requests: float | None = None

    @property
    def units(self) -> tuple[str, ...]:
        return tuple(u for u in UNITS if getattr(self, u) is not None)

    def get(self, unit: str) -> float:
        v = getattr(self, unit)
        return float("inf") if v is None else float(v)


@dataclass(slots=True)
class HolderEntry:
    granted: Amount = field(default_factory=Amount)
    used: Amount = field(default_factory=Amount)
    seen: float = 0.0  # POSIX seconds of the holder's last message

    def committed(self, unit: str) -> float:
        return max(self.granted.get(unit), self.used.get(unit))

    def to_json(self) -> dict[str, Any]:
        return {"granted": self.granted.to_json(), "used": self.used.to_json(), "seen": self.seen}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> HolderEntry:
        return cls(Amount.from_json(data.get("granted")), Amount.from_json(data.get("used")),
                   float(data.get("seen", 0.0)))


@dataclass(frozen=True, slots=True)
class Grant:
    granted: Amount  # the holder's cumulative lease after this message
    exhausted: bool  # some limited unit has nothing left to grant


@dataclass(slots=True)
class WindowLedger:
    """The ledger of one budget window (one window start)."""

    window_start: float
    holders: dict[str, HolderEntry] = field(default_factory=dict)

    def committed(self, unit: str) -> float:
        return sum(h.committed(unit) for h in self.holders.values())

    def spent(self) -> Amount:
        total = Amount()
        for h in self.holders.values():
            total.add(h.used)
        return total

    def report(self, holder: str, used: Amount, now: float) -> HolderEntry:
        """Record a holder's cumulative spend (never decreasing: a stale or repeated report
        changes nothing)."""
        entry = self.holders.get(holder)
        if entry is None:
            entry = self.holders[holder] = HolderEntry()
        u = entry.used
        u.usd, u.tokens, u.requests = max(u.usd, used.usd), max(u.tokens, used.tokens), max(
            u.requests, used.requests)
        entry.seen = max(entry.seen, now)
        return entry

    def active_holders(self, now: float, ttl: float) -> int:
        return sum(1 for name, h in self.holders.items() if name != RETIRED and h.seen >= now - ttl)

    def grant(self, holder: str, used: Amount, want: Amount, limit: Limit, now: float, ttl: float) -> Grant:
        """Report ``used`` for ``holder`` and grant toward ``want`` free (the module's rule)."""
        entry = self.report(holder, used, now)
        active = max(1, self.active_holders(now, ttl))
        exhausted = False
        for unit in limit.units:
            base = entry.committed(unit)
            remaining = limit.get(unit) - self.committed(unit)
            need = max(0.0, want.get(unit) - (base - entry.used.get(unit)))
            add = 0.0
            if need > 0 and remaining > _EPS:
                add = min(remaining, max(need, remaining / (2 * active)))
                if unit != "usd":  # tokens and requests are granted whole
                    add = float(math.floor(add))
            setattr(entry.granted, unit, base + add)
            if remaining - add <= _EPS:
                exhausted = True
        return Grant(entry.granted.copy(), exhausted)

    def retire_stale(self, now: float, ttl: float) -> None:
        """Collapse holders not seen for 2 TTLs into the ``retired`` entry: their spend stays
        counted, their unspent lease returns to the budget. (A retired holder that comes back
        is counted again from its cumulative figures: conservative, never under.)"""
        stale = [n for n, h in self.holders.items() if n != RETIRED and h.seen < now - 2 * ttl]
        if not stale:
            return
        retired = self.holders.setdefault(RETIRED, HolderEntry())
        for name in stale:
            retired.used.add(self.holders.pop(name).used)
        retired.granted = retired.used.copy()
        retired.seen = now

    def to_json(self) -> dict[str, Any]:
        return {"windowStart": rfc3339(self.window_start), "holders": {n: h.to_json() for n, h in self.holders.items()}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WindowLedger:
        return cls(parse_rfc3339(str(data["windowStart"])),
                   {str(n): HolderEntry.from_json(h) for n, h in (data.get("holders") or {}).items()})
