"""The sidecar's side of budgets: local leases, reserve before and settle after each call.

Each (budget, window) is a :class:`WindowLease`: what this process was granted, has used,
and holds reserved for requests in flight. A request reserves from every lease of the
budgets that select it (no I/O when the leases have room: the common case) and settles
from the usage the upstream reported. Where leases come from is a :class:`Granter`: the
operator's lease server in a cluster (client.py), or, in ``serve``, the limit itself with
the spend kept in a journal under ``--state-dir`` (journal.py).

A request that straddles a window boundary is counted in the window it settles in.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from ..config import BudgetConfig, GatewayConfig
from .ledger import UNITS, Amount, Limit
from .windows import Window, parse_window, rfc3339

log = logging.getLogger("modelroute.budget")

# Output tokens reserved for a request that sets no max_tokens (documented in README).
DEFAULT_OUTPUT_RESERVATION = 4096
# How long a request may wait for the operator to top its lease up.
TOP_UP_DEADLINE = 0.5
# Seconds a lease the granter called exhausted is not asked about again on the request path.
EXHAUSTED_RECHECK = 1.0


class WindowLease:
    """One budget window as this process sees it."""

    __slots__ = ("answered", "budget", "end", "exhausted", "granted", "last", "limit", "previous", "refusal",
                 "reported", "reserved", "slice", "slice_given", "start", "start_text", "units", "used", "want",
                 "window")

    def __init__(self, budget: str, window: Window, limit: Limit, now: float) -> None:
        self.budget = budget
        self.window = window
        self.limit = limit
        self.units = limit.units
        self.start = window.start(now)
        self.end = window.end(now)
        self.start_text = rfc3339(self.start)  # for the journal and the lease protocol
        self.granted = Amount()
        self.used = Amount()  # cumulative in this window, settled
        self.reserved = Amount()  # held by requests in flight (carried across a window boundary)
        self.reported = Amount()  # what the granter last acknowledged of `used`
        self.slice = Amount()  # the last grant's size: renew when the free part falls under half of it
        self.want = Amount()  # the reservation that last came up short (what to ask for)
        self.last = Amount()  # the last reservation: renewals ask for a few of these
        self.exhausted = False
        self.slice_given = False  # whether a granter answered for this window yet
        self.answered = 0.0  # when a granter last answered (clock time)
        # The last window's (start, spend) while part of it is unreported (settles just before the
        # boundary): the lease client reports it, the operator counts it in that window.
        self.previous: tuple[str, Amount] | None = None
        self.refusal: str | None = None  # why the granter would not lease this window ("not found"...)

    def roll(self, now: float) -> None:
        """Start the next window when ``now`` has passed this one's end."""
        if now >= self.end:
            if self.used != self.reported:
                self.previous = (self.start_text, self.used)
            self.start = self.window.start(now)
            self.end = self.window.end(now)
            self.start_text = rfc3339(self.start)
            self.granted, self.used, self.reported, self.slice = Amount(), Amount(), Amount(), Amount()
            self.exhausted = self.slice_given = False

    def free(self, unit: str) -> float:
        return self.granted.get(unit) - self.used.get(unit) - self.reserved.get(unit)

    # Written out per unit: these run for every request, and getattr by unit name costs
    # more than the arithmetic.
    def fits(self, a: Amount) -> bool:
        g, u, r, lim = self.granted, self.used, self.reserved, self.limit
        return ((lim.usd is None or g.usd - u.usd - r.usd >= a.usd)
                and (lim.tokens is None or g.tokens - u.tokens - r.tokens >= a.tokens)
                and (lim.requests is None or g.requests - u.requests - r.requests >= a.requests))

    def low(self) -> bool:
        """Whether to renew in the background: the free part is under half the last slice."""
        g, u, r, s, lim = self.granted, self.used, self.reserved, self.slice, self.limit
        return ((lim.usd is not None and g.usd - u.usd - r.usd < s.usd / 2)
                or (lim.tokens is not None and g.tokens - u.tokens - r.tokens < s.tokens / 2)
                or (lim.requests is not None and g.requests - u.requests - r.requests < s.requests / 2))

    def spent(self) -> Amount:
        """Spend as this process knows it: settled, plus what is still reserved."""
        total = self.used.copy()
        total.add(self.reserved)
        return total


class Granter(Protocol):
    """Where leases come from. ``top_up`` returns whether it could ask (False: unreachable)."""

    reachable: bool
    checked: float  # when it last tried to reach its source (clock time)

    def load(self, leases: Iterable[WindowLease], now: float) -> None: ...

    async def top_up(self, leases: list[WindowLease]) -> None: ...

    def start(self) -> None: ...

    def reserved(self, ticket: Ticket) -> None: ...

    def settled(self, ticket: Ticket, actual: Amount) -> None: ...

    def wake(self) -> None: ...

    async def close(self) -> None: ...


class BudgetExceeded(Exception):
    def __init__(self, budget: BudgetState, lease: WindowLease, unreachable: bool, amount: Amount) -> None:
        super().__init__(budget.name)
        self.budget = budget
        self.lease = lease
        self.unreachable = unreachable
        self.amount = amount  # what the refused request would have reserved


class BudgetState:
    """One ModelBudget: its config and its window leases (kept across reloads)."""

    __slots__ = ("config", "leases", "name", "rejections", "route_globs", "service_accounts")

    def __init__(self, config: BudgetConfig, now: float) -> None:
        self.name = config.name
        self.config = config
        self.leases = [WindowLease(config.name, parse_window(lim.window),
                                   Limit(lim.usd, lim.tokens, lim.requests), now) for lim in config.limits]
        self.rejections = 0
        self.route_globs = [re.compile(fnmatch.translate(g)) for g in config.selector.routes]
        self.service_accounts = frozenset(config.selector.service_accounts)

    def selects(self, model: str, route_name: str | None, caller: str | None) -> bool:
        if self.service_accounts and caller not in self.service_accounts:
            return False
        if not self.route_globs:
            return True
        return any(rx.match(model) or (route_name is not None and rx.match(route_name)) for rx in self.route_globs)


@dataclass(slots=True)
class Ticket:
    """One request's reservation across the leases that count it; settled once."""

    leases: tuple[WindowLease, ...]
    amount: Amount
    rid: int
    settled: bool = False

    def settle(self, granter: Granter, actual: Amount) -> None:
        if self.settled:
            return
        self.settled = True
        a = self.amount
        low = False
        for lease in self.leases:  # Amount.sub and .add written out: this runs for every request
            r, u = lease.reserved, lease.used
            r.usd -= a.usd
            r.tokens -= a.tokens
            r.requests -= a.requests
            u.usd += actual.usd
            u.tokens += actual.tokens
            u.requests += actual.requests
            low = low or lease.low()
        granter.settled(self, actual)
        if low:
            granter.wake()


_ticket_ids = iter(range(1, 1 << 62))
_SELECTION_MAX = 4096


class Budgets:
    """Every budget of the gateway; outlives config reloads (the spend must)."""

    def __init__(self, granter: Granter, clock: Callable[[], float] = time.time) -> None:
        self.granter = granter
        self.clock = clock
        self.states: dict[str, BudgetState] = {}
        # (model, route name, caller, left out) -> the budgets that count it; rebuilt per config
        self._selection: dict[tuple[str, str | None, str | None, frozenset[str]], tuple[BudgetState, ...]] = {}

    def apply(self, config: GatewayConfig) -> None:
        """Take a config's budgets; a window that stays keeps its lease and its spend."""
        now = self.clock()
        new: dict[str, BudgetState] = {}
        for name, bc in config.budgets.items():
            state = BudgetState(bc, now)
            old = self.states.get(name)
            if old is not None:
                kept = {lease.window.name: lease for lease in old.leases}
                for i, lease in enumerate(state.leases):
                    prev = kept.get(lease.window.name)
                    if prev is not None:
                        prev.limit, prev.units = lease.limit, lease.limit.units
                        state.leases[i] = prev
                state.rejections = old.rejections
            new[name] = state
        self.states = new
        self._selection = {}
        self.granter.load([lease for s in new.values() for lease in s.leases], now)

    def select(self, model: str, route_name: str | None, caller: str | None,
               without: frozenset[str] = frozenset()) -> tuple[BudgetState, ...]:
        """The budgets that count a call (computed once per model, route and caller)."""
        key = (model, route_name, caller, without)
        found = self._selection.get(key)
        if found is None:
            found = tuple(s for s in self.states.values()
                          if s.name not in without and s.selects(model, route_name, caller))
            if len(self._selection) >= _SELECTION_MAX:
                del self._selection[next(iter(self._selection))]  # bounded, whatever names callers send
            self._selection[key] = found
        return found

    def try_reserve(self, budgets: tuple[BudgetState, ...], amount: Amount) -> Ticket | None:
        """The common case, without I/O: every lease has room."""
        now = self.clock()
        leases: list[WindowLease] = []
        for b in budgets:
            for lease in b.leases:
                if now >= lease.end:
                    lease.roll(now)
                if not lease.fits(amount):
                    return None
                leases.append(lease)
        return self._hold(tuple(leases), amount)

    async def reserve(self, budgets: tuple[BudgetState, ...], amount: Amount) -> Ticket:
        """Reserve, asking the granter for more where a lease is short; BudgetExceeded when
        one stays short (under failurePolicy Open an unreachable operator does not refuse)."""
        ticket = self.try_reserve(budgets, amount)
        if ticket is not None:
            return ticket
        short = [lease for b in budgets for lease in b.leases if not lease.fits(amount)]
        for lease in short:
            for u in lease.units:
                setattr(lease.want, u, max(0.0, amount.get(u) - lease.free(u)))
        now = self.clock()
        # A budget the granter just called exhausted is refused without asking again: a burst of
        # refused requests must not become a burst of lease calls (its leases come back with time).
        # Nor is an unreachable operator asked again on the request path for a second (the
        # background task keeps trying): requests do not each wait out a connection attempt.
        quiet = not self.granter.reachable and now - self.granter.checked < EXHAUSTED_RECHECK
        if not quiet and not all(lease.exhausted and now - lease.answered < EXHAUSTED_RECHECK for lease in short):
            try:
                async with asyncio.timeout(TOP_UP_DEADLINE):
                    await self.granter.top_up(short)
            except TimeoutError:
                self.granter.reachable = False
        leases: list[WindowLease] = []
        for b in budgets:
            for lease in b.leases:
                if not lease.fits(amount):
                    # a lease the operator cannot give (it does not know the budget yet) is as good
                    # as an unreachable operator: failurePolicy decides
                    unreachable = not self.granter.reachable or lease.refusal is not None
                    if not (unreachable and b.config.failure_policy == "Open"):
                        raise BudgetExceeded(b, lease, unreachable, amount)
                leases.append(lease)
        return self._hold(tuple(leases), amount)

    def _hold(self, leases: tuple[WindowLease, ...], amount: Amount) -> Ticket:
        for lease in leases:
            r = lease.reserved
            r.usd += amount.usd
            r.tokens += amount.tokens
            r.requests += amount.requests
            lease.last = amount
        ticket = Ticket(leases, amount, next(_ticket_ids))
        self.granter.reserved(ticket)
        return ticket

    async def close(self) -> None:
        await self.granter.close()


__all__ = ["UNITS", "BudgetExceeded", "BudgetState", "Budgets", "Granter", "Ticket", "WindowLease"]
