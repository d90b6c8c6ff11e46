"""The request path's one stop for budgets: reserve before the engine, settle after.

:func:`admit` picks the budgets that count a call (precomputed per model, route and
caller), reserves the call's worst case from their leases, and on exhaustion either
refuses (429 ``budget_exceeded`` in the caller's dialect, ``Retry-After`` until the window
resets) or, for ``onExceeded: Downgrade``, serves the call through ``downgradeTo``'s route,
counted by that route's budgets except the ones that sent it there.

The reservation is the call's worst case: an upper bound on its input tokens from the raw
body (input_bound.py: two bytes a token for ASCII, a token per byte beyond it, images by their
pixel size), plus ``max_tokens`` (or :data:`~.holder.DEFAULT_OUTPUT_RESERVATION`), in USD at
the route's most expensive backend.
"""

from __future__ import annotations

from typing import Any

from ..canonical import Usage
from ..errors import GatewayError
from ..router import Route, Runtime
from .holder import DEFAULT_OUTPUT_RESERVATION, BudgetExceeded, Budgets, Ticket
from .input_bound import input_tokens_bound
from .ledger import Amount
from .windows import rfc3339

_CAP_KEYS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


def output_cap(body: dict[str, Any]) -> int | None:
    """The caller's cap on output tokens, in any of the four dialects."""
    for k in _CAP_KEYS:
        v = body.get(k)
        if type(v) is int and v > 0:
            return v
    gen = body.get("generationConfig") or body.get("generation_config")
    if isinstance(gen, dict):
        v = gen.get("maxOutputTokens", gen.get("max_output_tokens"))
        if type(v) is int and v > 0:
            return v
    return None


def reservation(route: Route, body: dict[str, Any], raw: bytes | None, body_bytes: int, operation: str) -> Amount:
    """``raw``: the JSON body as received; without it (a body the handler parsed as it read it),
    ``body_bytes`` at a token a byte, which holds for any script."""
    inp = input_tokens_bound(body, raw) if raw is not None else body_bytes + 1
    out = 0 if operation == "embeddings" else (output_cap(body) or DEFAULT_OUTPUT_RESERVATION)
    price_in, price_out = route.max_price
    return Amount((inp * price_in + out * price_out) / 1_000_000, inp + out, 1)


class Spend:
    """What the engine calls when a call ends (``settle``), and the handler after it (``release``)."""

    __slots__ = ("budgets", "ticket")

    def __init__(self, budgets: Budgets, ticket: Ticket) -> None:
        self.budgets = budgets
        self.ticket = ticket

    def settle(self, usage: Usage | None, cost: float, output_started: bool) -> None:
        """From the upstream's usage. A stream that ended (or was cut off) before reporting any
        counts its whole reservation, the most the upstream can bill for it."""
        t = self.ticket
        if usage is not None:
            actual = Amount(cost, usage.input_tokens + usage.output_tokens, 1)
        elif output_started:
            actual = t.amount
        else:
            actual = Amount(requests=1)  # the upstream answered, with an error: no tokens
        t.settle(self.budgets.granter, actual)

    def release(self) -> None:
        """The call ended without an upstream answer (every attempt failed): nothing spent."""
        self.ticket.settle(self.budgets.granter, Amount())


def exceeded_error(e: BudgetExceeded, now: float) -> GatewayError:
    lease = e.lease
    retry = lease.window.retry_after(now)
    limits = lease.limit
    what = " + ".join(([f"${limits.usd:g}"] if limits.usd is not None else [])
                      + ([f"{limits.tokens:g} tokens"] if limits.tokens is not None else [])
                      + ([f"{limits.requests:g} requests"] if limits.requests is not None else []))
    too_big = [f"{e.amount.get(u):g} {u}" for u in limits.units if e.amount.get(u) > limits.get(u)]
    if too_big:
        # No wait helps: this request alone may spend more than the window allows.
        return GatewayError(429, f"Budget '{e.budget.name}' (window {lease.window.name}, limit {what}): this "
                            f"request alone may spend more than the limit (it reserves {', '.join(too_big)}: its "
                            "input estimate plus max_tokens); lower max_tokens", type="rate_limit_error",
                            code="budget_exceeded", headers={"retry-after": str(retry)})
    if e.unreachable and lease.refusal is not None:
        message = (f"Budget '{e.budget.name}' (window {lease.window.name}): this gateway's lease is spent and the "
                   f"budget operator grants none ({lease.refusal}; failurePolicy Closed); retry later")
        retry = min(retry, 30)
    elif e.unreachable:
        message = (f"Budget '{e.budget.name}' (window {lease.window.name}): this gateway's lease is spent and the "
                   "budget operator cannot be reached (failurePolicy Closed); retry later")
        retry = min(retry, 30)
    else:
        message = (f"Budget '{e.budget.name}' is exhausted for window {lease.window.name} (limit {what}); "
                   f"it resets at {rfc3339(lease.end)}, in {retry} s")
    return GatewayError(429, message, type="rate_limit_error", code="budget_exceeded",
                        headers={"retry-after": str(retry)})


async def admit(budgets: Budgets, rt: Runtime, route: Route, caller: str | None, model: str,
                body: dict[str, Any], raw: bytes | None, body_bytes: int,
                operation: str) -> tuple[Route, Spend | None]:
    """The route to serve the call with, and its reservation; a 429 GatewayError when over budget."""
    selected = budgets.select(model, _route_name(route), caller)
    if not selected:
        return route, None
    amount = reservation(route, body, raw, body_bytes, operation)
    ticket = budgets.try_reserve(selected, amount)  # the common case: no await, no I/O
    if ticket is not None:
        return route, Spend(budgets, ticket)
    try:
        return route, Spend(budgets, await budgets.reserve(selected, amount))
    except BudgetExceeded as e:
        target = e.budget.config.downgrade_to
        # Downgrade whenever the lease cannot cover the call, exhausted or not topped up in time
        # (the operator unreachable or slow): the app keeps working, within the target's budgets.
        if e.budget.config.on_exceeded != "Downgrade" or target is None:
            raise _reject(budgets, e) from None
        first = e
    # Downgrade: once, through the target's route, not counted by the budget that sent it there.
    down = rt.resolve(target)
    if down is None or not down.backends:
        raise _reject(budgets, first) from None
    if not down.permits(caller):
        raise _reject(budgets, first) from None  # over budget, and the way down is not this caller's
    selected = budgets.select(target, _route_name(down), caller, frozenset({first.budget.name}))
    if not selected:
        return down, None
    try:
        amount = reservation(down, body, raw, body_bytes, operation)
        return down, Spend(budgets, await budgets.reserve(selected, amount))
    except BudgetExceeded as e:
        raise _reject(budgets, e) from None


def _reject(budgets: Budgets, e: BudgetExceeded) -> GatewayError:
    e.budget.rejections += 1
    return exceeded_error(e, budgets.clock())


def _route_name(route: Route) -> str | None:
    """A ModelRoute's own name (selectors may name it as well as the model)."""
    return route.source[11:] if route.source.startswith("ModelRoute/") else None
