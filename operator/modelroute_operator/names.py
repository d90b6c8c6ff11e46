"""Public names of the operator: labels, annotations, object names. A contract, like
``modelroute_sidecar.config``: users, the chart, docs and tests rely on them."""

from __future__ import annotations

from typing import Final

from modelroute_sidecar.resources import GROUP, VERSION

__all__ = ["GROUP", "VERSION"]

# --- opting in to injection ----------------------------------------------------------
# Pod annotation: "true" injects the pod, "false" opts it out of a labelled namespace.
INJECT_ANNOTATION: Final = "modelroute.dev/inject"
# Namespace label: "enabled" injects every pod of the namespace that does not opt out.
INJECTION_NAMESPACE_LABEL: Final = "modelroute.dev/injection"
INJECTION_NAMESPACE_VALUE: Final = "enabled"

# --- per-pod overrides (pod annotations) -----------------------------------------------
IMAGE_ANNOTATION: Final = "modelroute.dev/image"
PORT_ANNOTATION: Final = "modelroute.dev/port"
METRICS_PORT_ANNOTATION: Final = "modelroute.dev/metrics-port"
CPU_REQUEST_ANNOTATION: Final = "modelroute.dev/cpu-request"
CPU_LIMIT_ANNOTATION: Final = "modelroute.dev/cpu-limit"
MEMORY_REQUEST_ANNOTATION: Final = "modelroute.dev/memory-request"
MEMORY_LIMIT_ANNOTATION: Final = "modelroute.dev/memory-limit"
NATIVE_SIDECAR_ANNOTATION: Final = "modelroute.dev/native-sidecar"  # "true" | "false"

# Written by the webhook on every pod it injected.
INJECTED_ANNOTATION: Final = "modelroute.dev/injected"

# --- what the injection adds ------------------------------------------------------------
SIDECAR_CONTAINER: Final = "modelroute-sidecar"
CONFIG_VOLUME: Final = "modelroute-config"
KEYS_VOLUME: Final = "modelroute-keys"
TMP_VOLUME: Final = "modelroute-tmp"
METRICS_PORT_NAME: Final = "mr-metrics"
PLACEHOLDER_API_KEY: Final = "modelroute-placeholder"
# The sidecar's ServiceAccount token for the operator's lease server (budgets): a projected
# volume, audience "modelroute", so the token is good for nothing else (not the API server).
TOKEN_VOLUME: Final = "modelroute-token"
# Projected ServiceAccount tokens for the clouds' workload identity (ProviderKey spec.workloadIdentity).
IDENTITY_VOLUME: Final = "modelroute-identity"
TOKEN_AUDIENCE: Final = "modelroute"
TOKEN_DIR: Final = "/var/run/secrets/modelroute"
TOKEN_FILE: Final = "token"
TOKEN_EXPIRATION_SECONDS: Final = 3600
# Sidecar env: the lease server's URL, and the CA its certificate is checked with (a file of the
# modelroute-config ConfigMap, key BUDGET_CA_KEY, which the operator writes).
BUDGET_URL_ENV: Final = "MODELROUTE_BUDGET_URL"
BUDGET_CA_ENV: Final = "MODELROUTE_BUDGET_CA"
BUDGET_CA_KEY: Final = "budget-ca.crt"
POD_NAME_ENV: Final = "MODELROUTE_POD_NAME"

# --- the admission webhook ------------------------------------------------------------
WEBHOOK_CONFIGURATION: Final = "modelroute.dev"  # MutatingWebhookConfiguration name
WEBHOOK_HANDLER_ID: Final = "inject"  # kopf handler id, also the webhook URL path
POD_WEBHOOK: Final = "pods.inject.modelroute.dev"
NAMESPACE_WEBHOOK: Final = "namespaces.inject.modelroute.dev"

# --- what the operator writes ------------------------------------------------------------
FIELD_MANAGER: Final = "modelroute-operator"
MANAGED_BY_LABEL: Final = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE: Final = "modelroute-operator"
PART_OF_LABEL: Final = "app.kubernetes.io/part-of"
PART_OF_VALUE: Final = "modelroute"
EVENT_SOURCE: Final = "modelroute-operator"
READY: Final = "Ready"
