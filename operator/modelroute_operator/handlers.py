"""The kopf handlers: thin. They only decide *which namespace* needs a reconcile, or
hand a pod to :func:`~modelroute_operator.webhook.mutate_pod`.

What is watched, and why:

* ModelRoutes and ProviderKeys, every event. A MODIFIED event whose generation the
  status already reflects (i.e. our own status write) is ignored.
* Secrets, to follow key rotation. Secrets are watched with a server-side field
  selector that leaves out the kinds that are never API keys and can be large or many
  (service-account tokens, Helm releases, TLS, docker configs, bootstrap tokens, and
  our own ``modelroute-keys``). The handler looks each event up in a kopf index of
  ``(namespace, secret name)`` referenced by ProviderKeys and triggers only on a hit; the
  Secret's content is never kept, logged or compared here (a reconcile GETs the
  referenced Secrets afresh). A Secret created after its ProviderKey is seen too.
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from modelroute_sidecar.config import KEYS_SECRET_NAME

from . import names
from .reconcile import Reconciler
from .settings import InjectionSettings
from .webhook import InjectionError, mutate_pod

logger = logging.getLogger("modelroute.operator")

# Server-side filter of the Secret watch; see the module docstring.
SECRET_FIELD_SELECTOR = ",".join(
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


def needs_reconcile(event_type: str | None, body: Mapping[str, Any]) -> bool:
    """False only for a modification that the status already reflects (a status write)."""
    if event_type != "MODIFIED":
        return True  # None (initial listing), ADDED, DELETED
    generation = (body.get("metadata") or {}).get("generation")
    observed = (body.get("status") or {}).get("observedGeneration")
    return generation is None or generation != observed


def configure(settings: kopf.OperatorSettings) -> None:
    settings.watching.field_selectors["v1", "secrets"] = SECRET_FIELD_SELECTOR
    # The operator posts the Events a user must act on itself (objects.event_for); kopf's
    # per-object log-to-Event posting would also post on Secrets.
    settings.posting.enabled = False
    # Admission is configured by the operator (webhook_configuration), not kopf: kopf's
    # managed mode can express neither namespaceSelector nor matchConditions.
    settings.admission.managed = None


def build_registry(reconciler: Reconciler, injection: InjectionSettings | None) -> kopf.OperatorRegistry:
    """Handlers for a reconciler; with ``injection``, the pod webhook too."""
    registry = kopf.OperatorRegistry()

    @kopf.on.login(id="login", registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_via_client(**kwargs)

    @kopf.index(names.GROUP, names.VERSION, "providerkeys", id="secret_refs", registry=registry)
    def secret_refs(namespace: str | None, name: str | None, spec: kopf.Spec, **_: Any) -> dict[Any, Any] | None:
        ref = spec.get("secretRef")
        secret = ref.get("name") if isinstance(ref, Mapping) else None
        return {(namespace, secret): name} if namespace and isinstance(secret, str) else None

    @kopf.on.event(names.GROUP, names.VERSION, "modelroutes", id="modelroute", registry=registry)
    @kopf.on.event(names.GROUP, names.VERSION, "providerkeys", id="providerkey", registry=registry)
    async def source_changed(type: str | None, body: kopf.Body, namespace: str | None, **_: Any) -> None:
        if namespace and needs_reconcile(type, body):
            reconciler.trigger(namespace)

    @kopf.on.event("v1", "secrets", id="secret", registry=registry)
    async def secret_changed(namespace: str | None, name: str, **kwargs: Any) -> None:
        refs: kopf.Index[tuple[str, str], str] = kwargs["secret_refs"]  # the index above
        if namespace and (namespace, name) in refs:
            reconciler.trigger(namespace)

    if injection is not None:
        settings = injection

        @kopf.on.mutate("v1", "pods", id=names.WEBHOOK_HANDLER_ID, operations=["CREATE"], registry=registry)
        async def inject(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
            try:
                mutated = mutate_pod(body, settings)
            except InjectionError as e:
                raise kopf.AdmissionError(str(e), code=400) from None
            patch.fns.append(functools.partial(_become, mutated))

    return registry


def _become(target: Mapping[str, Any], body: dict[str, Any]) -> None:
    """A kopf patch function: turn the admitted body into ``target``; kopf diffs the two
    into the JSON patch it answers with."""
    body.clear()
    body.update(copy.deepcopy(dict(target)))
