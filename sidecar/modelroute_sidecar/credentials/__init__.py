"""Credentials without static keys: workload identity for AWS, Google Cloud and Azure.

A ProviderKey with ``workloadIdentity`` gets a :class:`CredentialSource` instead of keys;
the engine asks it for the current credential on each attempt and the adapter turns that
into headers (:meth:`ProviderAdapter.credential_headers`). Sources outlive config reloads
(:class:`CredentialSources`), so a reload neither refetches nor drops a fresh token.

The cloud modules (and their libraries, botocore and google-auth) are imported only when
a ProviderKey uses them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..config import ProviderKeyConfig, WorkloadIdentity
from ..redact import Redactor

if TYPE_CHECKING:
    from .base import (
        AwsCredentials,
        BearerToken,
        Credential,
        CredentialError,
        CredentialSource,
        RefreshingSource,
        StaticSource,
        UnavailableSource,
    )

__all__ = [
    "AwsCredentials",
    "BearerToken",
    "Credential",
    "CredentialError",
    "CredentialSource",
    "CredentialSources",
    "RefreshingSource",
    "StaticSource",
    "UnavailableSource",
    "source_for",
]


def __getattr__(name: str) -> Any:
    """The credential classes load with their first user (a ProviderKey with workload identity,
    or a provider that signs requests): a pod with neither never imports them."""
    if name in __all__:
        from . import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def source_for(pk: ProviderKeyConfig, env: Mapping[str, str] | None = None) -> CredentialSource[Any]:
    """The credential source of a ProviderKey with workload identity."""
    wi = pk.workload_identity
    if wi is None:
        raise ValueError(f"ProviderKey {pk.name} has no workloadIdentity")
    from .base import CredentialError, UnavailableSource

    env = os.environ if env is None else env
    try:
        return _build(pk.name, wi, env)
    except CredentialError as e:
        return UnavailableSource(f"ProviderKey {pk.name}", str(e))


def _build(name: str, wi: WorkloadIdentity, env: Mapping[str, str]) -> CredentialSource[Any]:
    if wi.aws is not None:
        from .aws import aws_source

        return aws_source(name, wi.aws, env)
    if wi.gcp is not None:
        from .gcp import gcp_source

        return gcp_source(name, wi.gcp, env)
    assert wi.azure is not None
    from .azure import azure_source

    return azure_source(name, wi.azure, env)


def _identity_key(name: str, wi: WorkloadIdentity) -> str:
    return f"{name}|{wi.dump_json()}"


class CredentialSources:
    """The sources of the live config's ProviderKeys, kept across reloads while unchanged."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self._env = env
        self._sources: dict[str, CredentialSource[Any]] = {}
        self._stale: list[CredentialSource[Any]] = []
        self._closing: set[asyncio.Task[None]] = set()
        # The credentials held now, for redacting upstream text and logs (an upstream may
        # quote the token it was sent); rebuilt at each renewal, not per request.
        self.redactor = Redactor(())
        self.version = 0
        self.listener: Callable[[], None] | None = None  # told after each renewal
        self.by_name: dict[str, CredentialSource[Any]] = {}  # the live config's, by ProviderKey (metrics)

    def sources(self, provider_keys: Iterable[ProviderKeyConfig]) -> dict[str, CredentialSource[Any]]:
        """ProviderKey name -> source, for those with workload identity. Safe in any thread
        (reloads build Runtimes in one): the sources start, and those of keys gone or
        changed close, at :meth:`activate`, on the event loop."""
        out: dict[str, CredentialSource[Any]] = {}
        live: dict[str, CredentialSource[Any]] = {}
        for pk in provider_keys:
            if pk.workload_identity is None:
                continue
            key = _identity_key(pk.name, pk.workload_identity)
            src = self._sources.get(key)
            if src is None:
                from .base import RefreshingSource

                src = source_for(pk, self._env)
                if isinstance(src, RefreshingSource):
                    src.on_renew = self._renewed
            live[key] = out[pk.name] = src
        self._stale += [s for k, s in self._sources.items() if k not in live]
        self._sources = live
        self.by_name = out
        return out

    def activate(self) -> None:
        """On the event loop, once a config is installed: close what it no longer uses, and
        start fetching new credentials so the first request does not wait for them."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a test building a Runtime by hand): sources fetch on first use
        stale, self._stale = self._stale, []
        for s in stale:
            task = loop.create_task(s.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        if not self._sources:
            return
        from .base import RefreshingSource

        for s in self._sources.values():
            if isinstance(s, RefreshingSource):
                s.start()

    def secrets(self) -> list[str]:
        return [x for s in self._sources.values() for x in s.secrets()]

    def _renewed(self) -> None:
        self.redactor = Redactor(self.secrets())
        self.version += 1
        if self.listener is not None:
            self.listener()

    async def close(self) -> None:
        for s in self._sources.values():
            with contextlib.suppress(Exception):
                await s.close()
        self._sources = {}
