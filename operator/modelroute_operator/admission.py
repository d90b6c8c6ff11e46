"""Serving the webhook (kopf's WebhookServer) and registering it with the API server.

The MutatingWebhookConfiguration is written by the operator once the server listens
(and again whenever kopf restarts the server, e.g. on renewed certificate files), so
the API server is never told about an endpoint that does not answer yet.

Certificate renewal: kopf re-reads the certificate files every ``cert_check_seconds``
and, when they changed, restarts its HTTPS server with them (new connections get the new
certificate); the configuration is then written again with the CA from the new ``ca.crt``.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import kopf

from . import names
from .certs import CertFiles, not_after, problems
from .kube import WEBHOOKS_PATH, ApiError, Kube
from .metrics import OperatorMetrics, timed
from .settings import WebhookSettings
from .webhook import webhook_configuration

CLUSTERROLES_PATH = "/apis/rbac.authorization.k8s.io/v1/clusterroles"

logger = logging.getLogger("modelroute.operator")


def client_config(settings: WebhookSettings, ca_pem: bytes) -> dict[str, Any]:
    """How the API server reaches the webhook: a URL out of cluster, a Service in cluster."""
    ca = base64.b64encode(ca_pem).decode("ascii")
    path = f"/{names.WEBHOOK_HANDLER_ID}"
    if settings.service is not None:
        name, namespace = settings.service
        return {"service": {"name": name, "namespace": namespace, "port": settings.service_port, "path": path},
                "caBundle": ca}
    if settings.address is None:
        raise ValueError("the webhook has neither an address nor a service")
    host, port = settings.address
    host = f"[{host}]" if ":" in host else host
    return {"url": f"https://{host}:{port}{path}", "caBundle": ca}


class OwnerError(Exception):
    """The webhook configuration's owner (--webhook-owner-clusterrole) cannot be read."""


async def clusterrole_owner(kube: Kube, name: str) -> dict[str, Any]:
    """An ownerReference to ClusterRole ``name`` (its uid read from the API server)."""
    try:
        role = await kube.get(f"{CLUSTERROLES_PATH}/{name}")
    except ApiError as e:
        raise OwnerError(f"cannot read ClusterRole {name}, the owner of the webhook configuration "
                         f"(--webhook-owner-clusterrole): {e.status} {e.reason}: {e.message}; the operator's "
                         f"ClusterRole needs get on it") from None
    if role is None:
        raise OwnerError(f"ClusterRole {name}, the owner of the webhook configuration (--webhook-owner-clusterrole), "
                         "does not exist")
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "name": name,
            "uid": role["metadata"]["uid"]}


async def register(kube: Kube, desired: Mapping[str, Any]) -> bool:
    """Create or update the MutatingWebhookConfiguration; False when it was already so."""
    name = desired["metadata"]["name"]
    existing = await kube.get(f"{WEBHOOKS_PATH}/{name}")
    if existing is None:
        await kube.create(WEBHOOKS_PATH, desired)
        return True
    # The owners exactly: an owner this operator no longer names would have it deleted.
    owners = existing["metadata"].get("ownerReferences") or []
    if _contains(existing, desired) and _contains(owners, desired["metadata"].get("ownerReferences") or []):
        return False
    await kube.replace(f"{WEBHOOKS_PATH}/{name}", {**desired, "metadata": {
        **desired["metadata"], "resourceVersion": existing["metadata"]["resourceVersion"]}})
    return True


async def unregister(kube: Kube, name: str = names.WEBHOOK_CONFIGURATION) -> None:
    try:
        await kube.delete(f"{WEBHOOKS_PATH}/{name}")
    except ApiError as e:
        logger.warning("could not remove the MutatingWebhookConfiguration %s: %s", name, e)


def _contains(actual: Any, desired: Any) -> bool:
    """Whether ``actual`` has everything ``desired`` has (the server adds defaults)."""
    if isinstance(desired, Mapping):
        return isinstance(actual, Mapping) and all(_contains(actual.get(k), v) for k, v in desired.items())
    if isinstance(desired, list):
        return isinstance(actual, list) and len(actual) == len(desired) and all(
            _contains(a, d) for a, d in zip(actual, desired, strict=True))
    return bool(actual == desired)


class RegisteringWebhookServer(kopf.WebhookServer):
    """kopf's HTTPS webhook server that registers the webhook configuration once listening,
    and again with the new CA whenever it restarts for renewed certificate files."""

    def __init__(self, *, kube: Kube, settings: WebhookSettings, certs: CertFiles, namespaces: tuple[str, ...],
                 checked_hosts: tuple[str, ...] = (), owner: Mapping[str, Any] | None = None,
                 metrics: OperatorMetrics | None = None) -> None:
        addr, port = settings.address if settings.address is not None else settings.listen
        super().__init__(addr=addr, port=port, certfile=certs.cert, pkeyfile=certs.key, cafile=certs.ca,
                         file_check_interval=settings.cert_check_seconds)
        self._kube = kube
        self._settings = settings
        self._certs = certs
        self._namespaces = namespaces
        self._checked_hosts = checked_hosts
        self._owner = owner
        self._metrics = metrics
        self.registered = False  # the configuration was written (or found up to date) by this server

    async def __call__(self, fn: kopf.WebhookFn) -> AsyncIterator[kopf.WebhookClientConfig]:
        metrics = self._metrics

        async def observed(request: Any, *, webhook: str | None = None, headers: kopf.Headers | None = None,
                           sslpeer: kopf.SSLPeer | None = None) -> Any:
            return await timed(metrics, lambda: fn(request, webhook=webhook, headers=headers, sslpeer=sslpeer))

        served = 0
        async for config in super().__call__(observed):
            served += 1
            if served > 1:  # kopf restarted the server: the certificate files changed
                found = problems(self._certs, self._checked_hosts) if self._checked_hosts else []
                if found:
                    logger.error("the renewed webhook certificate %s cannot serve the webhook: %s", self._certs.cert,
                                 "; ".join(found))
                else:
                    logger.info("serving the renewed webhook certificate %s", self._certs.cert)
            self._observe_expiry()
            ca = base64.b64decode(config.get("caBundle") or "")
            desired = webhook_configuration(client_config(self._settings, ca), self._settings,
                                            namespaces=self._namespaces, owner=self._owner)
            changed = await register(self._kube, desired)
            self.registered = True
            logger.info("webhook listening on %s:%s; configuration %s %s", self.addr, self.port,
                        names.WEBHOOK_CONFIGURATION, "registered" if changed else "already up to date")
            yield config

    def _observe_expiry(self) -> None:
        if self._metrics is None:
            return
        try:
            self._metrics.certificate_expiry.set(not_after(self._certs.cert.read_bytes()).timestamp())
        except (OSError, ValueError) as e:
            logger.warning("cannot read the webhook certificate's expiry: %s", e)
