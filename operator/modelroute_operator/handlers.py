"""The kopf handlers: thin. They only decide *which namespace* needs a reconcile, or
hand a pod to :func:`~modelroute_operator.webhook.mutate_pod`.

What is watched, and why:

* ModelRoutes and ProviderKeys, every event. A MODIFIED event whose generation the
  status already reflects (i.e. our own status write) is ignored.
* Not Secrets: the operator may read them only in the namespaces an administrator enabled,
  so key rotation is followed by a watch per namespace that references Secrets
  (:mod:`~modelroute_operator.secret_watch`), started after its reconcile.
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from . import names
from .reconcile import Reconciler
from .settings import InjectionSettings
from .webhook import InjectionError, identity_tokens, mutate_pod

logger = logging.getLogger("modelroute.operator")

def needs_reconcile(event_type: str | None, body: Mapping[str, Any]) -> bool:
    """False only for a modification that the status already reflects (a status write)."""
    if event_type != "MODIFIED":
        return True  # None (initial listing), ADDED, DELETED
    generation = (body.get("metadata") or {}).get("generation")
    observed = (body.get("status") or {}).get("observedGeneration")
    return generation is None or generation != observed


def configure(settings: kopf.OperatorSettings) -> None:
    # The operator posts the Events a user must act on itself (objects.event_for); kopf's
    # per-object log-to-Event posting would also post on Secrets.
    settings.posting.enabled = False
    # Admission is configured by the operator (webhook_configuration), not kopf: kopf's
    # managed mode can express neither namespaceSelector nor matchConditions.
    settings.admission.managed = None


def build_registry(reconciler: Reconciler, injection: InjectionSettings | None,
                   budgets: Reconciler | None = None) -> kopf.OperatorRegistry:
    """Handlers for a reconciler; with ``injection``, the pod webhook too; with ``budgets``, the
    ModelBudgets' roll-over (per namespace, like the config)."""
    registry = kopf.OperatorRegistry()

    @kopf.on.login(id="login", registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_via_client(**kwargs)

    @kopf.on.event(names.GROUP, names.VERSION, "modelroutes", id="modelroute", registry=registry)
    @kopf.on.event(names.GROUP, names.VERSION, "providerkeys", id="providerkey", registry=registry)
    @kopf.on.event(names.GROUP, names.VERSION, "modelbudgets", id="modelbudget", registry=registry)
    async def source_changed(type: str | None, body: kopf.Body, namespace: str | None, **_: Any) -> None:
        if namespace and needs_reconcile(type, body):
            reconciler.trigger(namespace)
            if budgets is not None and body.get("kind") == "ModelBudget":
                budgets.trigger(namespace)  # its windows' roll-over timers

    if injection is not None:
        settings = injection

        # Each namespace's workload identities, kept in memory from the ProviderKeys watch, so
        # the webhook projects the tokens they need without asking the API server.
        @kopf.index(names.GROUP, names.VERSION, "providerkeys", id="workload_identities", registry=registry)
        def workload_identities(namespace: str | None, spec: kopf.Spec, **_: Any) -> dict[str, Any] | None:
            wi = spec.get("workloadIdentity")
            return {namespace: dict(wi)} if namespace and isinstance(wi, Mapping) else None

        @kopf.on.mutate("v1", "pods", id=names.WEBHOOK_HANDLER_ID, operations=["CREATE"], registry=registry)
        async def inject(body: kopf.Body, patch: kopf.Patch, **kwargs: Any) -> None:
            index: kopf.Index[str, Any] = kwargs["workload_identities"]  # kopf passes indices by id
            tokens = identity_tokens(index.get(body.metadata.namespace or "", []))
            try:
                mutated = mutate_pod(body, settings, tokens)
            except InjectionError as e:
                raise kopf.AdmissionError(str(e), code=400) from None
            patch.fns.append(functools.partial(_become, mutated))

    return registry


def _become(target: Mapping[str, Any], body: dict[str, Any]) -> None:
    """A kopf patch function: turn the admitted body into ``target``; kopf diffs the two
    into the JSON patch it answers with."""
    body.clear()
    body.update(copy.deepcopy(dict(target)))
