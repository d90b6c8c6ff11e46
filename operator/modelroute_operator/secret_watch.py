"""Following key rotation: a Secret watch per namespace whose ProviderKeys reference Secrets.

The operator may read Secrets only in the namespaces an administrator enabled (a RoleBinding
to the operator's namespace ClusterRole, see deploy/), so there is no cluster-wide Secret
watch: after each reconcile, :meth:`SecretWatches.follow` is told which Secrets the namespace
references, and a watch runs in that namespace while there are any. An event for a referenced
Secret triggers a reconcile of the namespace (which GETs the Secrets afresh); the watched
Secrets' content is never kept, logged or compared here.

The watch uses a server-side field selector that leaves out the kinds that are never API keys
and can be large or many (service-account tokens, Helm releases, TLS, ...), and our own
``modelroute-keys``. Where the watch is refused (403: the namespace is not enabled, or no
longer), it stops: the namespace's reconcile reports that on its objects and retries, and a
successful reconcile starts the watch again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from modelroute_sidecar.config import KEYS_SECRET_NAME

from .kube import ApiError, Kube, core_path

logger = logging.getLogger("modelroute.operator")

FIELD_SELECTOR = ",".join(
    [f"metadata.name!={KEYS_SECRET_NAME}"]
    + [f"type!={t}" for t in (
        "kubernetes.io/service-account-token",
        "helm.sh/release.v1",
        "kubernetes.io/tls",
        "kubernetes.io/dockerconfigjson",
        "kubernetes.io/dockercfg",
        "bootstrap.kubernetes.io/token",
    )]
)


class SecretWatches:
    """One watch task per namespace with referenced Secrets; ``on_change(namespace)`` is called
    for every change to one of them (and once when a watch (re)starts, for what it may have missed)."""

    def __init__(self, kube: Kube, on_change: Callable[[str], None], *,
                 backoff_seconds: tuple[float, float] = (0.5, 30.0), timeout_seconds: int = 300) -> None:
        self._kube = kube
        self._on_change = on_change
        self._backoff = backoff_seconds
        self._timeout = timeout_seconds
        self._names: dict[str, frozenset[str]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def follow(self, namespace: str, names: frozenset[str]) -> None:
        """Watch ``names`` in ``namespace`` from now on (none: stop watching it)."""
        if not names:
            self._names.pop(namespace, None)
            task = self._tasks.pop(namespace, None)
            if task is not None:
                task.cancel()
            return
        self._names[namespace] = names
        if namespace not in self._tasks:
            self._tasks[namespace] = asyncio.create_task(self._run(namespace), name=f"secrets:{namespace}")

    def watching(self) -> set[str]:
        return set(self._tasks)

    async def _run(self, namespace: str) -> None:
        delay = self._backoff[0]
        path = core_path("secrets", namespace)
        try:
            while True:
                try:
                    await self._watch(namespace, path)
                    delay = self._backoff[0]
                except ApiError as e:
                    if e.status in (403, 404):
                        # Not (or no longer) enabled, or the namespace is gone: the reconcile says so
                        # and starts the watch again once it can read the Secrets.
                        logger.info("not watching Secrets in namespace %s (answered %d)", namespace, e.status)
                        return
                    logger.warning("watching Secrets in namespace %s failed, retrying in %.1fs: %s",
                                   namespace, delay, e)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._backoff[1])
                except Exception as e:  # connection lost, a bad line...: the loop must not die
                    logger.warning("watching Secrets in namespace %s failed, retrying in %.1fs: %s: %s",
                                   namespace, delay, type(e).__name__, e)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._backoff[1])
        finally:
            if self._tasks.get(namespace) is asyncio.current_task():
                del self._tasks[namespace]

    async def _watch(self, namespace: str, path: str) -> None:
        """List once (for a resourceVersion), then watch from there until the server ends it."""
        page = await self._kube.request("GET", path, query={"fieldSelector": FIELD_SELECTOR, "limit": "1"})
        version = str((page.get("metadata") or {}).get("resourceVersion") or "")
        self._on_change(namespace)  # whatever changed between the reconcile's reads and this list
        while True:
            query = {"fieldSelector": FIELD_SELECTOR, "allowWatchBookmarks": "true", "resourceVersion": version}
            async for event in self._kube.watch(path, query, timeout_seconds=self._timeout):
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:  # too old: list again
                        return
                    raise ApiError(int(obj.get("code") or 500), str(obj.get("reason") or ""),
                                   str(obj.get("message") or ""), "WATCH", path)
                meta = obj.get("metadata") or {}
                version = str(meta.get("resourceVersion") or version)
                if kind != "BOOKMARK" and meta.get("name") in self._names.get(namespace, frozenset()):
                    self._on_change(namespace)

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
