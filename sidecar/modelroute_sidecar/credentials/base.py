"""Credentials that expire: what they are, and a source that keeps one fresh.

A :class:`CredentialSource` hands out the current credential of one ProviderKey. The
refreshing kind fetches a new one *before* the old one expires, in the background, one
fetch at a time however many requests ask (single flight); a request waits only when
there is no usable credential at all (the first one, or after refreshes failed until
expiry). Static keys from Secrets are sources too (:class:`StaticSource`), so adapters
that sign requests (Bedrock's SigV4) take either.

Credential values never appear in ``repr``, log lines or error messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

logger = logging.getLogger("modelroute.credentials")


@dataclass(frozen=True, slots=True)
class BearerToken:
    """An OAuth 2.0 access token (Entra ID, Google), sent as ``Authorization: Bearer``."""

    token: str = field(repr=False)
    expires_at: float | None = None  # seconds since the epoch; None: does not expire


@dataclass(frozen=True, slots=True)
class AwsCredentials:
    """AWS credentials for SigV4 (temporary ones carry a session token)."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    expires_at: float | None = None  # seconds since the epoch; None: does not expire


Credential = BearerToken | AwsCredentials
C = TypeVar("C", BearerToken, AwsCredentials)
C_co = TypeVar("C_co", BearerToken, AwsCredentials, covariant=True)


class CredentialError(Exception):
    """No usable credential. The message names the source and what went wrong, never a secret."""


class CredentialSource(Protocol[C_co]):
    """Where one ProviderKey's credential comes from."""

    @property
    def label(self) -> str:
        """What the source is, for logs and errors (e.g. ``aws-web-identity arn:aws:iam::1:role/x``)."""
        ...

    def secrets(self) -> list[str]:
        """The secret strings currently held (for redaction)."""
        ...

    async def get(self) -> C_co:
        """The current credential; raises :class:`CredentialError` when there is none."""
        ...

    def renew(self) -> bool:
        """The upstream refused the current credential: get a new one early, in the background.
        False when there is nothing to renew (a static key), or a renewal just happened."""
        ...

    async def close(self) -> None: ...


class StaticSource(Generic[C]):
    """A credential that never changes (a key from a Secret)."""

    def __init__(self, credential: C, label: str = "static") -> None:
        self._credential: C = credential
        self._label = label

    @property
    def label(self) -> str:
        return self._label

    def secrets(self) -> list[str]:
        return _secrets_of(self._credential)

    async def get(self) -> C:
        return self._credential

    def renew(self) -> bool:
        return False

    async def close(self) -> None:
        return None


class UnavailableSource:
    """A source that cannot work as configured (a missing setting): every get() says why."""

    def __init__(self, label: str, message: str) -> None:
        self._label = label
        self._message = message

    @property
    def label(self) -> str:
        return self._label

    def secrets(self) -> list[str]:
        return []

    async def get(self) -> Credential:
        raise CredentialError(self._message)

    def renew(self) -> bool:
        return False

    async def close(self) -> None:
        return None


def _secrets_of(c: Credential | None) -> list[str]:
    if isinstance(c, BearerToken):
        return [c.token]
    if isinstance(c, AwsCredentials):
        return [s for s in (c.secret_access_key, c.session_token) if s]
    return []


# How early a credential is renewed: a third of its lifetime before expiry, at most five
# minutes (an hour-long token renews at 55 minutes; a 30 s one at 20 s). It is *used* until
# shortly before expiry, so that a request never leaves with a token that expires in flight.
REFRESH_AHEAD_MAX = 300.0
USE_MARGIN_MAX = 10.0
RETRY_MIN = 0.5
RETRY_MAX = 30.0
# A refused credential is renewed early at most this often: a refusal that a new credential
# does not cure (a missing role assignment) must not become a stream of token requests.
FORCED_RENEWAL_INTERVAL = 30.0


def refresh_at(fetched_at: float, expires_at: float) -> float:
    lifetime = max(expires_at - fetched_at, 0.0)
    return expires_at - min(REFRESH_AHEAD_MAX, lifetime / 3)


def usable_until(fetched_at: float, expires_at: float) -> float:
    lifetime = max(expires_at - fetched_at, 0.0)
    return expires_at - min(USE_MARGIN_MAX, lifetime / 5)


class RefreshingSource(ABC, Generic[C]):
    """A credential fetched from somewhere (an STS, a metadata server) and renewed before expiry.

    Subclasses implement :meth:`fetch`. Renewal is scheduled on the event loop when a
    credential arrives; a failed renewal is retried with backoff while the old credential
    is still usable, and requests keep using it meanwhile. ``clock`` is the wall clock
    (credential expiries are wall-clock times).
    """

    def __init__(self, label: str, *, clock: Callable[[], float] = time.time) -> None:
        self._label = label
        self._clock = clock
        self._current: C | None = None
        self._previous: C | None = None  # may still be on requests in flight
        self.on_renew: Callable[[], None] | None = None  # told of each new credential (redaction)
        self._usable_until = 0.0
        self._refresh_at = 0.0
        self._retry_at = 0.0  # after a failure, not before this (the backoff), unless nothing is usable
        self._forced_at = -FORCED_RENEWAL_INTERVAL
        self._inflight: asyncio.Task[C] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._failures = 0
        self._last_error: str | None = None
        self._closed = False
        self.fetches = 0  # completed fetch attempts, successful or not (for tests)
        self.renewals = {"success": 0, "failure": 0}  # for metrics

    @property
    def label(self) -> str:
        return self._label

    @abstractmethod
    async def fetch(self) -> C:
        """A new credential from the issuer. Raise :class:`CredentialError` with a safe message."""

    def secrets(self) -> list[str]:
        return _secrets_of(self._current) + _secrets_of(self._previous)

    async def get(self) -> C:
        current = self._current
        if current is not None:
            now = self._clock()
            if now < self._usable_until:
                if now >= self._refresh_at and now >= self._retry_at and self._inflight is None:
                    self._start()  # the timer did not fire (suspended process?): renew now, in the background
                return current
        if self._closed:
            raise CredentialError(f"{self._label}: the credential source is closed")
        task = self._inflight
        if task is None:
            if self._last_error is not None and self._clock() < self._retry_at:
                # The issuer just failed: answer with why until the backoff's retry (the timer
                # makes it), rather than send it one request per caller.
                raise CredentialError(self._last_error)
            task = self._start()
        # Nothing usable: wait for the one fetch in flight.
        return await asyncio.shield(task)

    @property
    def expires_at(self) -> float | None:
        """When the credential held now expires (None: none held, or it does not expire)."""
        return self._current.expires_at if self._current is not None else None

    def renew(self) -> bool:
        now = self._clock()
        if self._closed or now < self._forced_at + FORCED_RENEWAL_INTERVAL:
            return False
        self._forced_at = now
        self._usable_until = min(self._usable_until, now)  # refused: no further request gets it
        if self._inflight is None:
            self._start()
        return True

    def start(self) -> None:
        """Fetch the first credential now, in the background (call with a running loop)."""
        if self._current is None and self._inflight is None and not self._closed:
            self._start()

    def _start(self) -> asyncio.Task[C]:
        task = asyncio.get_running_loop().create_task(self._refresh(), name=f"credentials {self._label}")
        self._inflight = task
        task.add_done_callback(_consume)
        return task

    async def _refresh(self) -> C:
        try:
            try:
                fetched_at = self._clock()
                credential = await self.fetch()
            except CredentialError as e:
                self._failed(str(e))
                raise
            except Exception as e:  # a library's surprise must not escape as a 500 with its text
                self._failed(f"{self._label}: {type(e).__name__} while fetching the credential")
                raise CredentialError(self._last_error or "") from None
            self.fetches += 1
            self.renewals["success"] += 1
            self._accept(credential, fetched_at)
            return credential
        finally:
            self._inflight = None

    def _accept(self, credential: C, fetched_at: float) -> None:
        self._previous, self._current = self._current, credential
        if self.on_renew is not None:
            self.on_renew()
        self._failures = 0
        self._last_error = None
        expires = credential.expires_at
        if expires is None:
            self._usable_until = self._refresh_at = float("inf")
            return
        self._usable_until = usable_until(fetched_at, expires)
        self._refresh_at = refresh_at(fetched_at, expires)
        self._schedule(self._refresh_at - self._clock())

    def _failed(self, message: str) -> None:
        self.fetches += 1
        self.renewals["failure"] += 1
        self._failures += 1
        self._last_error = message
        # Retry sooner than the credential's end, with backoff; log without any secret.
        delay = min(RETRY_MAX, RETRY_MIN * 2 ** (self._failures - 1))
        self._retry_at = self._clock() + delay
        left = self._usable_until - self._clock()
        if left > 0:
            logger.warning("credential renewal failed (%s); the current one is usable for %.0fs more, retrying in "
                           "%.1fs", message, left, delay)
        else:
            logger.warning("credential fetch failed (%s); retrying in %.1fs", message, delay)
        self._schedule(delay)

    def _schedule(self, delay: float) -> None:
        if self._closed:
            return
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(max(delay, 0.0), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._inflight is None and not self._closed:
            self._start()

    async def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        task = self._inflight
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, CredentialError):
                await task


def _consume(task: asyncio.Task[object]) -> None:
    # A background renewal's failure is logged by _failed; do not let asyncio report it again.
    if not task.cancelled():
        task.exception()
