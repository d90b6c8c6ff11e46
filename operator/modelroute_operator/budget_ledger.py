"""A ModelBudget's ledger as the operator keeps it: pure functions from (the object, a lease
request, now) to (the new status, the answer).

The accounting itself is :mod:`modelroute_sidecar.budget.ledger` (shared with ``serve``);
this module decides where it lives in the object and what ``kubectl`` shows:

* ``status.ledger[<window>]`` holds ``current`` and ``previous`` window ledgers (each
  ``{windowStart, holders: {holder: {granted, used, seen}}}``). ``previous`` takes the
  reports of sidecars that settle the last window's requests after the roll-over, so
  nothing spent at a window's end is lost; an older window's report is answered with an
  error and not counted.
* ``status.windows[]``, ``status.window``/``status.spent`` (printer columns) and the
  conditions ``Ready`` and ``Exceeded`` are derived from the ledger and the spec.

Nothing here reads a clock or the API server; times are POSIX seconds passed in.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from modelroute_sidecar.budget.ledger import UNITS, Amount, Limit, WindowLedger
from modelroute_sidecar.budget.windows import parse_rfc3339, parse_window, rfc3339

from . import names

EXCEEDED = "Exceeded"
_EPS = 1e-9


class LeaseRequestError(ValueError):
    """A lease request the server cannot read: a 400 with this message."""


@dataclass(frozen=True, slots=True)
class LeaseEntry:
    """One element of a request's ``leases``, validated."""

    budget: str
    window: str
    window_start: float
    window_start_text: str
    used: Amount
    want: Amount


def parse_entry(raw: Any) -> LeaseEntry:
    if not isinstance(raw, Mapping):
        raise LeaseRequestError("each lease is an object")
    budget, window, start = raw.get("budget"), raw.get("window"), raw.get("windowStart")
    if not isinstance(budget, str) or not budget or len(budget) > 253:
        raise LeaseRequestError("budget: a ModelBudget name")
    if not isinstance(window, str):
        raise LeaseRequestError("window: a window such as 1h")
    try:
        parse_window(window)
    except ValueError as e:
        raise LeaseRequestError(f"window: {e}") from None
    if not isinstance(start, str):
        raise LeaseRequestError("windowStart: an RFC 3339 time")
    try:
        ts = parse_rfc3339(start)
    except ValueError:
        raise LeaseRequestError("windowStart: an RFC 3339 time") from None
    try:
        used, want = Amount.from_json(raw.get("used")), Amount.from_json(raw.get("want"))
    except ValueError as e:
        raise LeaseRequestError(f"used/want: {e}") from None
    return LeaseEntry(budget, window, ts, start, used, want)


def limits_of(spec: Mapping[str, Any]) -> dict[str, Limit]:
    """The spec's limits by window (the API server has validated them)."""
    out: dict[str, Limit] = {}
    for item in spec.get("limits") or []:
        if isinstance(item, Mapping) and isinstance(item.get("window"), str):
            out[item["window"]] = Limit(*(float(item[u]) if item.get(u) is not None else None for u in UNITS))
    return out


# --- the ledger in the status -----------------------------------------------------------------


@dataclass(slots=True)
class WindowPair:
    current: WindowLedger
    previous: WindowLedger | None

    def to_json(self) -> dict[str, Any]:
        return {"current": self.current.to_json(),
                **({"previous": self.previous.to_json()} if self.previous is not None else {})}


def load_pair(status: Mapping[str, Any], window: str, now: float) -> WindowPair:
    """The window's ledgers as of ``now``: rolled over (the old current becomes previous, a
    new one starts at zero) when ``now`` is past the stored window."""
    start = parse_window(window).start(now)
    raw = ((status.get("ledger") or {}).get(window)) or {}
    current = WindowLedger.from_json(raw["current"]) if raw.get("current") else WindowLedger(start)
    previous = WindowLedger.from_json(raw["previous"]) if raw.get("previous") else None
    if current.window_start < start:
        # Only the window right before the new one is still settled into; older is history.
        prior = parse_window(window).start(start - 1)
        previous = current if current.window_start == prior else None
        current = WindowLedger(start)
    return WindowPair(current, previous)


def answer_entry(entry: LeaseEntry, **fields: Any) -> dict[str, Any]:
    return {"budget": entry.budget, "window": entry.window, "windowStart": entry.window_start_text, **fields}


def apply_leases(body: Mapping[str, Any], holder: str, entries: Sequence[LeaseEntry], now: float,
                 ttl: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The new ``status`` of ModelBudget ``body`` after ``holder``'s reports and requests, and the
    answer for each entry (all of them name this budget)."""
    spec = body.get("spec") or {}
    status = copy.deepcopy(dict(body.get("status") or {}))
    limits = limits_of(spec)
    pairs: dict[str, WindowPair] = {}
    answers = []
    for entry in entries:
        limit = limits.get(entry.window)
        if limit is None:
            answers.append(answer_entry(entry, error="no such window"))
            continue
        pair = pairs.get(entry.window) or pairs.setdefault(entry.window, load_pair(status, entry.window, now))
        w = parse_window(entry.window)
        if entry.window_start == pair.current.window_start:
            pair.current.retire_stale(now, ttl)
            grant = pair.current.grant(holder, entry.used, entry.want, limit, now, ttl)
            answers.append(answer_entry(entry, granted=grant.granted.to_json(limit.units), exhausted=grant.exhausted,
                                        resetAt=rfc3339(w.end(entry.window_start))))
        elif pair.previous is not None and entry.window_start == pair.previous.window_start:
            # The last window's late settles: counted, nothing more granted.
            held = pair.previous.report(holder, entry.used, now)
            granted = Amount(*(held.committed(u) for u in UNITS))
            answers.append(answer_entry(entry, granted=granted.to_json(limit.units), exhausted=True,
                                        resetAt=rfc3339(w.end(entry.window_start))))
        else:
            answers.append(answer_entry(entry, error="windowStart is not the current or the previous window",
                                        currentWindowStart=rfc3339(pair.current.window_start)))
    ledger = dict(status.get("ledger") or {})
    for window, pair in pairs.items():
        ledger[window] = pair.to_json()
    status["ledger"] = ledger
    return status, answers


# --- what kubectl shows ---------------------------------------------------------------------


def _money(v: float) -> str:
    return f"${v:,.2f}" if v >= 0.01 or v == 0 else f"${v:.4f}"


def _count(v: float) -> str:
    return f"{round(v):,}"


def spent_text(spent: Amount, limit: Limit) -> str:
    """``$0.41/$1.00``, ``3,400/10,000 tokens``, ``17/100 requests``, joined by ``, ``."""
    parts = []
    for unit in limit.units:
        if unit == "usd":
            parts.append(f"{_money(spent.usd)}/{_money(limit.get('usd'))}")
        else:
            parts.append(f"{_count(spent.get(unit))}/{_count(limit.get(unit))} {unit}")
    return ", ".join(parts)


def _fill(ledger: WindowLedger, limit: Limit) -> float:
    """How full the window is: the largest committed/limit over its units."""
    return max((ledger.committed(u) / limit.get(u) if limit.get(u) > 0 else 1.0) for u in limit.units)


def exhausted(ledger: WindowLedger, limit: Limit) -> bool:
    """Nothing left to grant in some unit: every sidecar is about to refuse (or downgrade)."""
    return any(ledger.committed(u) >= limit.get(u) - _EPS for u in limit.units)


PER_POD = "enforced per pod: no lease server (budgets disabled), so N pods may spend N times the limit"


def per_pod_verdict(ready: tuple[bool, str, str]) -> tuple[bool, str, str]:
    """The compiler's Ready verdict for an operator that serves no leases: still Ready (each
    sidecar enforces the budget), its message saying the limit holds per pod only."""
    return ready[0], ready[1], f"{ready[2]}; {PER_POD}"


def derived_status(body: Mapping[str, Any], status: Mapping[str, Any], now: float, now_text: str,
                   ready: tuple[bool, str, str] | None = None) -> dict[str, Any]:
    """``status`` with windows, printer fields and conditions computed from its ledger as of
    ``now`` (windows past their end shown as new, empty ones). ``ready``: (ok, reason, message)
    from validation; None keeps the present Ready condition."""
    spec = body.get("spec") or {}
    out = dict(status)
    windows = []
    shown: tuple[float, str, str] | None = None
    over: list[str] = []
    ledger_json = dict(out.get("ledger") or {})
    limits = limits_of(spec)
    for window, limit in limits.items():
        pair = load_pair(out, window, now)
        ledger_json[window] = pair.to_json()
        w = parse_window(window)
        spent = pair.current.spent()
        full = exhausted(pair.current, limit)
        windows.append({"window": window, "start": rfc3339(pair.current.window_start),
                        "end": rfc3339(w.end(pair.current.window_start)),
                        "spent": spent.to_json(), "limit": {u: (limit.get(u) if u == "usd" else int(limit.get(u)))
                                                            for u in limit.units},
                        "exceeded": full})
        text = spent_text(spent, limit)
        fill = _fill(pair.current, limit)
        if shown is None or fill > shown[0]:
            shown = (fill, window, text)
        if full:
            over.append(f"window {window}: {text} (resets at {rfc3339(w.end(pair.current.window_start))})")
    # Windows no longer in the spec go; their spend is history.
    out["ledger"] = {w: v for w, v in ledger_json.items() if w in limits}
    out["windows"] = windows
    if shown is not None:
        out["window"], out["spent"] = shown[1], shown[2]
    generation = (body.get("metadata") or {}).get("generation")
    if generation is not None:
        out["observedGeneration"] = generation
    conditions = {c.get("type"): c for c in out.get("conditions") or [] if isinstance(c, Mapping)}
    if ready is not None:
        conditions[names.READY] = _condition(conditions.get(names.READY), names.READY, ready[0], ready[1], ready[2],
                                             now_text, generation)
    conditions[EXCEEDED] = _condition(
        conditions.get(EXCEEDED), EXCEEDED, bool(over), "LimitReached" if over else "WithinLimits",
        "; ".join(over) if over else "every window has budget left", now_text, generation)
    out["conditions"] = [conditions[t] for t in (names.READY, EXCEEDED) if t in conditions]
    return out


def _condition(old: Mapping[str, Any] | None, kind: str, state: bool, reason: str, message: str, now: str,
               generation: Any) -> dict[str, Any]:
    value = "True" if state else "False"
    since = old.get("lastTransitionTime") if old and old.get("status") == value else None
    cond = {"type": kind, "status": value, "reason": reason, "message": message, "lastTransitionTime": since or now}
    if generation is not None:
        cond["observedGeneration"] = generation
    return cond


def condition(status: Mapping[str, Any] | None, kind: str) -> Mapping[str, Any] | None:
    for c in (status or {}).get("conditions") or []:
        if isinstance(c, Mapping) and c.get("type") == kind:
            return c
    return None


def exceeded_event(old: Mapping[str, Any] | None,
                   new: Mapping[str, Any]) -> tuple[Literal["Normal", "Warning"], str, str] | None:
    """(type, reason, message) of the Event for a change of ``Exceeded``, if it changed."""
    before, after = condition(old, EXCEEDED), condition(new, EXCEEDED)
    was = before is not None and before.get("status") == "True"
    now = after is not None and after.get("status") == "True"
    if now and not was:
        return "Warning", "BudgetExceeded", str(after.get("message") if after else "")
    if was and not now:
        return "Normal", "BudgetAvailable", "every window has budget left"
    return None
