"""Sidecar injection as pure functions of (pod, settings), and the webhook configuration.

Who reaches the webhook is decided by the API server, from the configuration built by
:func:`webhook_configuration` (so unrelated pods never wait on the operator):

* ``pods.inject.modelroute.dev``: pods annotated ``modelroute.dev/inject: "true"``, in
  namespaces *not* labelled ``modelroute.dev/injection: enabled``. Annotations cannot be
  selected by an objectSelector, so a CEL ``matchCondition`` (GA in Kubernetes 1.30)
  tests the annotation in the API server.
* ``namespaces.inject.modelroute.dev``: every pod of a namespace labelled
  ``modelroute.dev/injection: enabled``, unless annotated ``modelroute.dev/inject: "false"``.

:func:`mutate_pod` itself injects whatever reaches it, except a pod that opted out.
It is idempotent: ``mutate_pod(mutate_pod(p)) == mutate_pod(p)``.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jsonpatch

from modelroute_sidecar.config import (
    CONFIG_SUBDIR,
    CONFIGMAP_NAME,
    KEYS_SECRET_NAME,
    KEYS_SUBDIR,
    ConfigInvalid,
    WorkloadIdentity,
    from_data,
)
from modelroute_sidecar.credentials.projection import TOKEN_DIR as IDENTITY_DIR
from modelroute_sidecar.credentials.projection import TOKEN_EXPIRATION_SECONDS as IDENTITY_TOKEN_SECONDS
from modelroute_sidecar.credentials.projection import TokenProjection, projections
from modelroute_sidecar.credentials.projection import sidecar_env as identity_env

from . import names
from .settings import InjectionSettings, WebhookSettings, check_quantity

Pod = dict[str, Any]
JSONPatch = list[dict[str, Any]]


class InjectionError(ValueError):
    """The pod asks for something the webhook cannot do (e.g. a bad override annotation)."""


# --- selection ----------------------------------------------------------------------------


def _annotations(pod: Mapping[str, Any]) -> Mapping[str, str]:
    return (pod.get("metadata") or {}).get("annotations") or {}


def opted_out(pod: Mapping[str, Any]) -> bool:
    return _annotations(pod).get(names.INJECT_ANNOTATION) == "false"


def should_inject(pod: Mapping[str, Any], namespace_labels: Mapping[str, str]) -> bool:
    """The selection rule the webhook configuration gives the API server, as a function."""
    value = _annotations(pod).get(names.INJECT_ANNOTATION)
    if namespace_labels.get(names.INJECTION_NAMESPACE_LABEL) == names.INJECTION_NAMESPACE_VALUE:
        return value != "false"
    return value == "true"


# --- per-pod overrides ----------------------------------------------------------------------


def _port(value: str, annotation: str) -> int:
    try:
        port = int(value)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise InjectionError(f"annotation {annotation}: {value!r} is not a port number (1-65535)")
    return port


def _quantity(value: str, annotation: str) -> str:
    try:
        check_quantity(value)
    except ValueError as e:
        raise InjectionError(f"annotation {annotation}: {e}") from None
    return value


def effective_settings(pod: Mapping[str, Any], settings: InjectionSettings) -> InjectionSettings:
    """The settings with the pod's ``modelroute.dev/*`` override annotations applied."""
    ann = _annotations(pod)
    update: dict[str, Any] = {}
    if (image := ann.get(names.IMAGE_ANNOTATION)) is not None:
        if not image.strip() or any(c.isspace() for c in image):
            raise InjectionError(f"annotation {names.IMAGE_ANNOTATION}: {image!r} is not an image reference")
        update["image"] = image
    if (port := ann.get(names.PORT_ANNOTATION)) is not None:
        update["port"] = _port(port, names.PORT_ANNOTATION)
    if (mport := ann.get(names.METRICS_PORT_ANNOTATION)) is not None:
        update["metrics_port"] = _port(mport, names.METRICS_PORT_ANNOTATION)
    for annotation, field in (
        (names.CPU_REQUEST_ANNOTATION, "cpu_request"),
        (names.CPU_LIMIT_ANNOTATION, "cpu_limit"),
        (names.MEMORY_REQUEST_ANNOTATION, "memory_request"),
        (names.MEMORY_LIMIT_ANNOTATION, "memory_limit"),
    ):
        if (value := ann.get(annotation)) is not None:
            update[field] = _quantity(value, annotation)
    if (native := ann.get(names.NATIVE_SIDECAR_ANNOTATION)) is not None:
        if native not in ("true", "false"):
            raise InjectionError(f"annotation {names.NATIVE_SIDECAR_ANNOTATION}: {native!r} is not true or false")
        update["native_sidecar"] = native == "true"
    if not update:
        return settings
    port, mport = update.get("port", settings.port), update.get("metrics_port", settings.metrics_port)
    if port == mport:
        raise InjectionError(f"annotations {names.PORT_ANNOTATION} and {names.METRICS_PORT_ANNOTATION}: "
                             f"the API port and the metrics port must differ (both are {port})")
    return settings.model_copy(update=update)


# --- what is injected ---------------------------------------------------------------------


SERVICE_ACCOUNT_ENV = "MODELROUTE_SERVICE_ACCOUNT"
NAMESPACE_ENV = "MODELROUTE_NAMESPACE"


def service_account(pod: Mapping[str, Any]) -> str:
    """The pod's ServiceAccount, as the API server's ServiceAccount admission (which runs
    before webhooks) set it; ``default`` is what it sets when the pod names none."""
    spec = pod.get("spec") or {}
    return str(spec.get("serviceAccountName") or spec.get("serviceAccount") or "default")


def sidecar_env(pod: Mapping[str, Any], s: InjectionSettings | None = None) -> list[dict[str, Any]]:
    """Who the sidecar's callers are: the containers of this pod, so the pod's ServiceAccount
    (immutable once the pod exists) and namespace (from the downward API); and, with a lease
    server, where it is and which CA signs its certificate."""
    env: list[dict[str, Any]] = [
        {"name": SERVICE_ACCOUNT_ENV, "value": service_account(pod)},
        {"name": NAMESPACE_ENV, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}},
    ]
    if s is not None and s.budget_url:
        # The pod's name makes the sidecar's holder name (<namespace>/<pod>/<nonce>), which the
        # lease server checks against the pod its token is bound to.
        env += [{"name": names.BUDGET_URL_ENV, "value": s.budget_url},
                {"name": names.BUDGET_CA_ENV, "value": f"{s.config_dir}/{CONFIG_SUBDIR}/{names.BUDGET_CA_KEY}"},
                {"name": names.POD_NAME_ENV, "valueFrom": {"fieldRef": {"apiVersion": "v1",
                                                                        "fieldPath": "metadata.name"}}}]
    return env


def token_volume() -> dict[str, Any]:
    """The ServiceAccount token the sidecar shows the lease server: audience ``modelroute`` (the
    API server refuses it), an hour long; kubelet rotates the file well before it expires."""
    return {"name": names.TOKEN_VOLUME, "projected": {"sources": [{"serviceAccountToken": {
        "audience": names.TOKEN_AUDIENCE, "expirationSeconds": names.TOKEN_EXPIRATION_SECONDS,
        "path": names.TOKEN_FILE}}]}}


def sidecar_container(s: InjectionSettings, pod: Mapping[str, Any] | None = None,
                      tokens: Sequence[TokenProjection] = ()) -> dict[str, Any]:
    """The ``modelroute-sidecar`` container (without ``restartPolicy``) for ``pod``; with
    ``tokens``, the workload identity tokens mounted and pointed at, in this container only."""
    requests = {k: v for k, v in (("cpu", s.cpu_request), ("memory", s.memory_request)) if v}
    limits = {k: v for k, v in (("cpu", s.cpu_limit), ("memory", s.memory_limit)) if v}
    resources: dict[str, Any] = {}
    if requests:
        resources["requests"] = requests
    if limits:
        resources["limits"] = limits

    def probe(path: str, **timing: int) -> dict[str, Any]:
        return {"httpGet": {"path": path, "port": s.metrics_port, "scheme": "HTTP"}, **timing}

    container: dict[str, Any] = {
        "name": names.SIDECAR_CONTAINER,
        "image": s.image,
        "args": ["sidecar", "--config-dir", s.config_dir, "--port", str(s.port),
                 "--metrics-port", str(s.metrics_port)],
        "env": sidecar_env(pod or {}, s),
        "ports": [{"name": names.METRICS_PORT_NAME, "containerPort": s.metrics_port, "protocol": "TCP"}],
        # /healthz: the process serves; the app may start. /readyz: the config is loaded.
        "startupProbe": probe("/healthz", periodSeconds=1, failureThreshold=120, timeoutSeconds=1),
        "readinessProbe": probe("/readyz", periodSeconds=5, failureThreshold=2, timeoutSeconds=2),
        "livenessProbe": probe("/healthz", periodSeconds=10, failureThreshold=3, timeoutSeconds=2),
        "resources": resources,
        "volumeMounts": [
            {"name": names.CONFIG_VOLUME, "mountPath": f"{s.config_dir}/{CONFIG_SUBDIR}", "readOnly": True},
            {"name": names.KEYS_VOLUME, "mountPath": f"{s.config_dir}/{KEYS_SUBDIR}", "readOnly": True},
            {"name": names.TMP_VOLUME, "mountPath": "/tmp"},
            *([{"name": names.TOKEN_VOLUME, "mountPath": names.TOKEN_DIR, "readOnly": True}] if s.budget_url else []),
        ],
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": s.run_as_user,
            "runAsGroup": s.run_as_user,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if s.image_pull_policy:
        container["imagePullPolicy"] = s.image_pull_policy
    if tokens:
        container["env"] += identity_env(tokens)
        container["volumeMounts"].append({"name": names.IDENTITY_VOLUME, "mountPath": IDENTITY_DIR, "readOnly": True})
    return container


def identity_tokens(identities: Iterable[Mapping[str, Any]]) -> list[TokenProjection]:
    """The tokens for a namespace's ``spec.workloadIdentity`` values (invalid ones, which
    compile refuses anyway, need none)."""
    found: list[WorkloadIdentity] = []
    for wi in identities:
        with contextlib.suppress(ConfigInvalid):
            found.append(from_data(wi, WorkloadIdentity))
    return projections(found)


def identity_volume(tokens: Sequence[TokenProjection]) -> dict[str, Any]:
    """One projected volume with a ServiceAccount token per audience the namespace's
    ProviderKeys need (STS, Entra, a Google pool provider); kubelet renews them."""
    return {"name": names.IDENTITY_VOLUME, "projected": {"sources": [
        {"serviceAccountToken": {"audience": t.audience, "expirationSeconds": IDENTITY_TOKEN_SECONDS,
                                 "path": t.file}} for t in tokens]}}


def sidecar_volumes(s: InjectionSettings | None = None) -> list[dict[str, Any]]:
    # optional: a pod may start before the operator's first compile of its namespace;
    # kubelet fills the volumes in when the objects appear.
    return [
        {"name": names.CONFIG_VOLUME, "configMap": {"name": CONFIGMAP_NAME, "optional": True}},
        {"name": names.KEYS_VOLUME, "secret": {"secretName": KEYS_SECRET_NAME, "optional": True}},
        {"name": names.TMP_VOLUME, "emptyDir": {"sizeLimit": "16Mi"}},
        *([token_volume()] if s is not None and s.budget_url else []),
    ]


def app_env(s: InjectionSettings) -> list[dict[str, str]]:
    """What every app container gets, unless it already sets the variable."""
    return [
        {"name": "OPENAI_BASE_URL", "value": f"http://127.0.0.1:{s.port}/v1"},
        {"name": "OPENAI_API_KEY", "value": names.PLACEHOLDER_API_KEY},
        {"name": "ANTHROPIC_BASE_URL", "value": f"http://127.0.0.1:{s.port}"},
        {"name": "ANTHROPIC_API_KEY", "value": names.PLACEHOLDER_API_KEY},
    ]


def scrape_annotations(s: InjectionSettings) -> dict[str, str]:
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(s.metrics_port),
            "prometheus.io/path": "/metrics"}


_OUR_VOLUMES = frozenset({names.CONFIG_VOLUME, names.KEYS_VOLUME, names.TMP_VOLUME, names.TOKEN_VOLUME,
                          names.IDENTITY_VOLUME})


def mutate_pod(pod: Mapping[str, Any], settings: InjectionSettings,
               tokens: Sequence[TokenProjection] = ()) -> Pod:
    """The pod with the sidecar injected (a new dict; the argument is not modified).

    ``tokens``: the ServiceAccount tokens the namespace's workload identities need
    (:func:`modelroute_sidecar.credentials.projection.projections`). They reach the sidecar
    only: app containers get neither the volume nor the variables.

    Idempotent: a pod already injected comes out the same, with its sidecar container
    and volumes rebuilt in place and app env that is already set left alone.
    Raises :class:`InjectionError` for override annotations that make no sense.
    """
    out: Pod = copy.deepcopy(dict(pod))
    if opted_out(out):
        return out
    s = effective_settings(out, settings)
    spec = out.setdefault("spec", {})
    meta = out.setdefault("metadata", {})

    containers = [c for c in spec.get("containers") or [] if c.get("name") != names.SIDECAR_CONTAINER]
    inits = [c for c in spec.get("initContainers") or [] if c.get("name") != names.SIDECAR_CONTAINER]
    sidecar = sidecar_container(s, out, tokens)
    if s.native_sidecar:
        # First, so it runs (and is started) before any other init container.
        inits.insert(0, {**sidecar, "restartPolicy": "Always"})
    else:
        containers.append(sidecar)

    env_add = app_env(s)
    for c in containers:
        if c.get("name") == names.SIDECAR_CONTAINER:
            continue
        env = list(c.get("env") or [])
        present = {e.get("name") for e in env}
        env.extend(copy.deepcopy(e) for e in env_add if e["name"] not in present)
        c["env"] = env

    spec["containers"] = containers
    if inits:
        spec["initContainers"] = inits
    else:
        spec.pop("initContainers", None)
    volumes = [v for v in spec.get("volumes") or [] if v.get("name") not in _OUR_VOLUMES]
    spec["volumes"] = volumes + sidecar_volumes(s) + ([identity_volume(tokens)] if tokens else [])
    if not (spec.get("serviceAccountName") or spec.get("serviceAccount")):
        # A projected token needs the pod's ServiceAccount named. The ServiceAccount admission
        # plugin (before webhooks) names `default` when the pod does not; where it is off, we do,
        # whatever is projected (so that injecting again, with other tokens, gives the same pod).
        spec["serviceAccountName"] = service_account(out)

    annotations = dict(meta.get("annotations") or {})
    if not any(k in annotations for k in ("prometheus.io/scrape", "prometheus.io/port")):
        annotations.update(scrape_annotations(s))
    if not s.native_sidecar and "kubectl.kubernetes.io/default-container" not in annotations:
        first_app = next((c.get("name") for c in containers if c.get("name") != names.SIDECAR_CONTAINER), None)
        if first_app:
            annotations["kubectl.kubernetes.io/default-container"] = first_app
    annotations[names.INJECTED_ANNOTATION] = "true"
    meta["annotations"] = annotations
    return out


def pod_patch(pod: Mapping[str, Any], settings: InjectionSettings,
              tokens: Sequence[TokenProjection] = ()) -> JSONPatch:
    """The JSON patch (RFC 6902) the webhook answers with: from ``pod`` to the injected pod."""
    ops: JSONPatch = jsonpatch.JsonPatch.from_diff(dict(pod), mutate_pod(pod, settings, tokens)).patch
    return ops


# --- the MutatingWebhookConfiguration -------------------------------------------------------


def _annotation_cel(value: str) -> str:
    key = names.INJECT_ANNOTATION
    return (f"has(object.metadata.annotations) && '{key}' in object.metadata.annotations && "
            f"object.metadata.annotations['{key}'] == '{value}'")


def webhook_configuration(
    client_config: Mapping[str, Any],
    settings: WebhookSettings,
    *,
    namespaces: Sequence[str] = (),
    name: str = names.WEBHOOK_CONFIGURATION,
    owner: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The MutatingWebhookConfiguration: two webhooks, one per way of opting in, disjoint.

    ``client_config`` is ``{"url": ...}`` or ``{"service": {...}}``, with ``caBundle``; the
    handler path is the caller's. ``namespaces`` restricts injection to the namespaces the
    operator compiles (empty: all). ``owner`` is an ownerReference (a cluster-scoped object,
    e.g. the chart's ClusterRole): the garbage collector deletes the configuration with it.
    """
    label = names.INJECTION_NAMESPACE_LABEL
    scope = [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": sorted(namespaces)}] \
        if namespaces else []
    common: dict[str, Any] = {
        "clientConfig": dict(client_config),
        "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"],
                   "operations": ["CREATE"], "scope": "Namespaced"}],
        "failurePolicy": settings.failure_policy,
        "matchPolicy": "Equivalent",
        "sideEffects": "None",
        "timeoutSeconds": settings.timeout_seconds,
        "admissionReviewVersions": ["v1"],
        # Webhooks after ours may add containers: run again so they get the env too.
        "reinvocationPolicy": "IfNeeded",
        "objectSelector": {},
    }
    pods = {
        **common,
        "name": names.POD_WEBHOOK,
        "namespaceSelector": {"matchExpressions": [
            {"key": label, "operator": "NotIn", "values": [names.INJECTION_NAMESPACE_VALUE]}, *scope]},
        "matchConditions": [{"name": "pod-opted-in", "expression": _annotation_cel("true")}],
    }
    in_namespace = {
        **common,
        "name": names.NAMESPACE_WEBHOOK,
        "namespaceSelector": {"matchExpressions": [
            {"key": label, "operator": "In", "values": [names.INJECTION_NAMESPACE_VALUE]}, *scope]},
        "matchConditions": [{"name": "pod-not-opted-out", "expression": f"!({_annotation_cel('false')})"}],
    }
    metadata: dict[str, Any] = {"name": name, "labels": {names.MANAGED_BY_LABEL: names.MANAGED_BY_VALUE,
                                                         names.PART_OF_LABEL: names.PART_OF_VALUE}}
    if owner is not None:
        metadata["ownerReferences"] = [dict(owner)]
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": metadata,
        "webhooks": [pods, in_namespace],
    }
