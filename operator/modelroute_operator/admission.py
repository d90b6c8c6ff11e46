"""Serving the webhook (kopf's WebhookServer) and registering it with the API server.

The MutatingWebhookConfiguration is written by the operator once the server listens
(and again whenever kopf restarts the server, e.g. on renewed certificate files), so
the API server is never told about an endpoint that does not answer yet.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import kopf

from . import names
from .certs import CertFiles
from .kube import WEBHOOKS_PATH, ApiError, Kube
from .settings import WebhookSettings
from .webhook import webhook_configuration

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


async def register(kube: Kube, desired: Mapping[str, Any]) -> bool:
    """Create or update the MutatingWebhookConfiguration; False when it was already so."""
    name = desired["metadata"]["name"]
    existing = await kube.get(f"{WEBHOOKS_PATH}/{name}")
    if existing is None:
        await kube.create(WEBHOOKS_PATH, desired)
        return True
    if _contains(existing, desired):
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
    """kopf's HTTPS webhook server that registers the webhook configuration once listening."""

    def __init__(self, *, kube: Kube, settings: WebhookSettings, certs: CertFiles,
                 namespaces: tuple[str, ...]) -> None:
        addr, port = settings.address if settings.address is not None else settings.listen
        super().__init__(addr=addr, port=port, certfile=certs.cert, pkeyfile=certs.key, cafile=certs.ca)
        self._kube = kube
        self._settings = settings
        self._namespaces = namespaces

    async def __call__(self, fn: kopf.WebhookFn) -> AsyncIterator[kopf.WebhookClientConfig]:
        async for config in super().__call__(fn):
            ca = base64.b64decode(config.get("caBundle") or "")
            desired = webhook_configuration(client_config(self._settings, ca), self._settings,
                                            namespaces=self._namespaces)
            changed = await register(self._kube, desired)
            logger.info("webhook listening on %s:%s; configuration %s %s", self.addr, self.port,
                        names.WEBHOOK_CONFIGURATION, "registered" if changed else "already up to date")
            yield config
