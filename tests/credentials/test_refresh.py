"""The refreshing credential source: single flight, renewal ahead of expiry in the
background, failed renewals retried while the old credential serves, and a clear error
only when nothing usable is left."""

from __future__ import annotations

import asyncio
import time

import pytest

from modelroute_sidecar.credentials import BearerToken, CredentialError, RefreshingSource
from modelroute_sidecar.credentials.base import refresh_at, usable_until
from tests.fakes.base import wait_until


class Issuer(RefreshingSource[BearerToken]):
    """Hands out token-1, token-2, ... living ``lifetime`` seconds; can be held or made to fail."""

    def __init__(self, lifetime: float) -> None:
        super().__init__("test issuer")
        self.lifetime = lifetime
        self.calls = 0
        self.concurrent = 0
        self.max_concurrent = 0
        self.gate: asyncio.Event | None = None  # when set, fetches wait for it
        self.failing = False

    async def fetch(self) -> BearerToken:
        self.calls += 1
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            if self.gate is not None:
                await self.gate.wait()
            else:
                await asyncio.sleep(0)
            if self.failing:
                raise CredentialError("test issuer: refused")
            return BearerToken(f"token-{self.calls}", time.time() + self.lifetime)
        finally:
            self.concurrent -= 1


def test_renewal_times() -> None:
    assert refresh_at(0, 3600) == 3300  # five minutes ahead for an hour-long token
    assert refresh_at(0, 30) == 20  # a third of a short one
    assert usable_until(0, 3600) == 3590 and usable_until(0, 30) == 24


async def test_many_waiters_share_one_fetch() -> None:
    src = Issuer(3600)
    src.gate = asyncio.Event()
    waiters = [asyncio.create_task(src.get()) for _ in range(200)]
    await wait_until(lambda: src.calls == 1)
    src.gate.set()
    tokens = await asyncio.gather(*waiters)
    assert {t.token for t in tokens} == {"token-1"} and src.calls == 1
    await src.close()


async def test_renewed_in_the_background_before_expiry_without_making_requests_wait() -> None:
    src = Issuer(1.5)
    first = await src.get()
    src.gate = asyncio.Event()  # the renewal will hang until released
    await wait_until(lambda: src.calls == 2, within=5)  # the timer started it, ahead of expiry
    assert first.expires_at is not None and time.time() < first.expires_at
    t = time.perf_counter()
    assert (await src.get()) is first  # served at once from the cache while the renewal is held
    assert time.perf_counter() - t < 0.05
    src.gate.set()
    await wait_until(lambda: src._current is not first)
    assert (await src.get()).token == "token-2" and src.max_concurrent == 1
    await src.close()


async def test_failed_renewals_retry_while_the_old_token_serves_then_fail_clearly() -> None:
    src = Issuer(2.0)
    first = await src.get()
    assert first.expires_at is not None
    end = usable_until(first.expires_at - 2.0, first.expires_at)
    src.failing = True
    await wait_until(lambda: src.calls >= 3, within=5)  # retried with backoff, not once
    if time.time() < end:
        assert (await src.get()) is first
    await wait_until(lambda: time.time() >= end, within=5)
    with pytest.raises(CredentialError, match="test issuer: refused"):
        await src.get()
    calls = src.calls
    for _ in range(20):  # callers during the backoff get the reason at once, and ask the issuer nothing
        with pytest.raises(CredentialError, match="test issuer: refused"):
            await src.get()
    assert src.calls <= calls + 1  # (a retry timer may have fired meanwhile)
    src.failing = False
    await wait_until(lambda: src._last_error is None, within=40)  # the backoff's next retry succeeds
    assert (await src.get()).token.startswith("token-")
    await src.close()


async def test_a_closed_source_stops_renewing() -> None:
    src = Issuer(0.6)
    first = await src.get()
    assert first.expires_at is not None
    await src.close()
    assert src._timer is None and src._inflight is None  # nothing left to fire
    calls = src.calls
    await wait_until(lambda: time.time() > first.expires_at, within=5)  # type: ignore[operator]
    with pytest.raises(CredentialError, match="closed"):
        await src.get()
    assert src.calls == calls
