"""Who sent a lease request: the sidecar's projected ServiceAccount token, checked by the API
server (a TokenReview for audience ``modelroute``), remembered briefly by the token's hash.

A token is never logged, kept only as its SHA-256, and never put in an answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from . import names
from .kube import Kube

logger = logging.getLogger("modelroute.operator")

TOKENREVIEWS_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
SA_PREFIX = "system:serviceaccount:"
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"


@dataclass(frozen=True, slots=True)
class Identity:
    namespace: str
    service_account: str
    pod: str | None  # the pod the token is bound to (projected tokens are), if the server says


class TokenReviewUnavailable(Exception):
    """The API server could not answer the review (a 503 to the caller, who retries)."""


def identity_of(review_status: dict[str, object]) -> Identity | None:
    """The ServiceAccount a TokenReview's status authenticates, or None."""
    if review_status.get("authenticated") is not True:
        return None
    audiences = review_status.get("audiences")
    if isinstance(audiences, list) and names.TOKEN_AUDIENCE not in audiences:
        return None
    user = review_status.get("user")
    if not isinstance(user, dict):
        return None
    username = user.get("username")
    if not isinstance(username, str) or not username.startswith(SA_PREFIX):
        return None  # a person's or a node's token: not a sidecar
    namespace, sep, account = username[len(SA_PREFIX):].partition(":")
    if not sep or not namespace or not account:
        return None
    extra = user.get("extra") if isinstance(user.get("extra"), dict) else {}
    pods = extra.get(POD_NAME_EXTRA) if isinstance(extra, dict) else None
    pod = pods[0] if isinstance(pods, list) and pods and isinstance(pods[0], str) else None
    return Identity(namespace, account, pod)


class TokenReviewer:
    """``await identify(token)``: the token's ServiceAccount, or None when it is not one for
    ``modelroute``. Answers are cached by token hash: ``ttl`` seconds for a good token (never
    past the review's own answer), ``negative_ttl`` for a refused one; at most ``size`` entries."""

    def __init__(self, kube: Kube, *, ttl: float = 60.0, negative_ttl: float = 5.0, size: int = 4096,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._kube = kube
        self._ttl, self._negative_ttl, self._size = ttl, negative_ttl, size
        self._clock = clock
        self._cache: OrderedDict[bytes, tuple[float, Identity | None]] = OrderedDict()
        self._pending: dict[bytes, asyncio.Future[Identity | None]] = {}
        self.reviews = 0  # TokenReviews asked (for tests and metrics)

    async def identify(self, token: str) -> Identity | None:
        key = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        now = self._clock()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        # Concurrent requests with one new token ask the API server once.
        pending = self._pending.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Identity | None] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            identity = await self._review(token)
        except BaseException as e:
            future.set_exception(e)
            future.exception()  # retrieved: no "never retrieved" warning when nobody waits
            raise
        else:
            future.set_result(identity)
        finally:
            del self._pending[key]
        self._cache[key] = (self._clock() + (self._ttl if identity is not None else self._negative_ttl), identity)
        self._cache.move_to_end(key)
        while len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return identity

    async def _review(self, token: str) -> Identity | None:
        from .kube import ApiError  # local: keeps the import list of the module about auth

        self.reviews += 1
        try:
            review = await self._kube.request("POST", TOKENREVIEWS_PATH, body={
                "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "spec": {"token": token, "audiences": [names.TOKEN_AUDIENCE]}}, request_timeout=10.0)
        except ApiError as e:
            # e.message is the server's words about the request, never the token (it is in the body).
            raise TokenReviewUnavailable(f"TokenReview failed: {e.status} {e.reason}") from None
        except Exception as e:  # the connection: refused, reset, timed out
            raise TokenReviewUnavailable(f"TokenReview failed: {type(e).__name__}") from None
        status = review.get("status") if isinstance(review, dict) else None
        return identity_of(status) if isinstance(status, dict) else None
