"""The compiled sidecar configuration: the contract between operator and sidecar.

The operator (and ``modelroute serve``) compiles ModelRoute/ProviderKey resources into
one :class:`GatewayConfig`, which holds no secret, and a :data:`Keys` mapping of
ProviderKey name to its key strings. In a pod they arrive as the ConfigMap
``modelroute-config`` (file ``config.json``) and the Secret ``modelroute-keys`` (one
file per ProviderKey, one key per line).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from .syntax import (
    CALLER_NAME_MAX,
    CALLER_NAME_PATTERN,
    MODEL_NAME_RULE,
    valid_header_name,
    valid_header_value,
    valid_model_name,
)

ProviderKind = Literal["openai", "anthropic", "gemini", "azure-openai", "openai-compatible", "mock", "bedrock",
                       "vertex"]
# How `POST /v1/responses` reaches an OpenAI-shaped upstream: passed through (native),
# translated to Chat Completions (bridge), or passed through until the upstream answers
# 404/405 there, then bridged for good (auto).
ResponsesAPI = Literal["native", "bridge", "auto"]
Strategy = Literal["failover", "weighted", "latency"]

CONFIG_VERSION = 1

# How the compiled config reaches a pod; the operator writes these, the sidecar reads them.
CONFIGMAP_NAME = "modelroute-config"
KEYS_SECRET_NAME = "modelroute-keys"
CONFIG_FILE = "config.json"  # key in the ConfigMap
CONFIG_SUBDIR = "config"  # <config-dir>/config/config.json  (ConfigMap volume)
KEYS_SUBDIR = "keys"  # <config-dir>/keys/<ProviderKey name>  (Secret volume, one key per line)
DEFAULT_CONFIG_DIR = "/etc/modelroute"
DEFAULT_PORT = 8700  # API, bound to 127.0.0.1 only
DEFAULT_METRICS_PORT = 8701  # /metrics, /healthz, /readyz on all interfaces (kubelet probes the pod IP)
# Slow or stalled callers must not pin connections: seconds from accepting a connection (or
# finishing its last response) to a complete request head, which also bounds an idle
# keep-alive connection; and seconds for a whole request body to arrive.
DEFAULT_HEADER_TIMEOUT = 30.0
DEFAULT_BODY_TIMEOUT = 60.0

# ProviderKey name -> key strings, in rotation order.
Keys = dict[str, list[str]]

# ServiceAccount names (caller names in `serve`) allowed to use a route; empty: everyone.
CallerName = Annotated[str, StringConstraints(min_length=1, max_length=CALLER_NAME_MAX, pattern=CALLER_NAME_PATTERN)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class RetryPolicy(_Model):
    """How many attempts a request gets across a route's backends, and how they wait."""

    max_attempts: int = Field(3, ge=1, le=20, alias="maxAttempts")
    backoff_base_seconds: float = Field(0.1, ge=0, le=30, alias="backoffBaseSeconds")
    backoff_max_seconds: float = Field(2.0, ge=0, le=120, alias="backoffMaxSeconds")
    # A Retry-After longer than this is not waited for; the next backend is tried instead.
    max_retry_after_seconds: float = Field(10.0, ge=0, le=600, alias="maxRetryAfterSeconds")


class Timeouts(_Model):
    connect_seconds: float = Field(5.0, gt=0, le=300, alias="connectSeconds")
    first_byte_seconds: float = Field(60.0, gt=0, le=3600, alias="firstByteSeconds")
    between_chunks_seconds: float = Field(60.0, gt=0, le=3600, alias="betweenChunksSeconds")
    total_seconds: float = Field(600.0, gt=0, le=86400, alias="totalSeconds")


class CircuitBreaker(_Model):
    failure_threshold: int = Field(5, ge=1, le=1000, alias="failureThreshold")
    open_seconds: float = Field(30.0, gt=0, le=3600, alias="openSeconds")


class KeyCooldowns(_Model):
    """How long a key rests after the upstream refused it."""

    auth_seconds: float = Field(300.0, ge=0, alias="authSeconds")  # 401/403
    rate_limit_seconds: float = Field(20.0, ge=0, alias="rateLimitSeconds")  # 429 without Retry-After


class Price(_Model):
    """USD per million tokens."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cache_read: float | None = Field(None, ge=0, alias="cacheRead")
    cache_write: float | None = Field(None, ge=0, alias="cacheWrite")


class MockSettings(_Model):
    """A ``mock`` ProviderKey's behaviour: latency and failure injection (all off by default).

    Failures are chosen by a hash of the request, not by a random draw: the same request
    meets the same fate on every run, which keeps tests and drills reproducible.
    """

    first_byte_ms: int = Field(0, ge=0, le=600_000, alias="firstByteMs")  # before the response starts
    chunk_interval_ms: int = Field(0, ge=0, le=60_000, alias="chunkIntervalMs")  # between stream chunks
    failure_rate: float = Field(0.0, ge=0, le=1, alias="failureRate")  # share of requests that fail
    fail_status: int = Field(503, ge=400, le=599, alias="failStatus")  # the HTTP status they fail with
    fail_after_chunks: int | None = Field(None, ge=0, le=1_000_000, alias="failAfterChunks")  # streams break here
    reply: str | None = Field(None, max_length=65536)  # fixed answer text instead of one derived from the prompt


# Workload identity: the ProviderKey's credential comes from the cloud, for the pod's
# ServiceAccount, instead of a key in a Secret. Exactly one of aws, gcp, azure.
AWS_STS_AUDIENCE = "sts.amazonaws.com"
EKS_POD_IDENTITY_AUDIENCE = "pods.eks.amazonaws.com"
AZURE_AUDIENCE = "api://AzureADTokenExchange"
AZURE_OPENAI_SCOPE = "https://cognitiveservices.azure.com/.default"
AZURE_AUTHORITY = "https://login.microsoftonline.com"
GCP_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
GCP_STS_URL = "https://sts.googleapis.com/v1/token"
GCP_IAM_CREDENTIALS_URL = "https://iamcredentials.googleapis.com"


class AwsIdentity(_Model):
    """IRSA when ``roleArn`` is set (the pod's token exchanged at STS AssumeRoleWithWebIdentity),
    else EKS Pod Identity (the pod identity agent's credentials endpoint)."""

    role_arn: str | None = Field(None, alias="roleArn", pattern=r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/.+$",
                                 max_length=2048)
    region: str | None = Field(None, pattern=r"^[a-z]{2}(-[a-z]+)+-[0-9]+$")  # STS region; else AWS_REGION
    session_name: str | None = Field(None, alias="sessionName", pattern=r"^[\w+=,.@-]{2,64}$")


class GcpIdentity(_Model):
    """Workload identity federation when ``audience`` is set (the pod's token exchanged at
    Google's STS, then optionally for ``serviceAccount``'s token), else the GKE metadata server."""

    audience: str | None = Field(None, min_length=1, max_length=1024)
    service_account: str | None = Field(None, alias="serviceAccount", pattern=r"^[^@\s/]+@[^@\s/]+$")
    scopes: tuple[str, ...] = (GCP_SCOPE,)
    token_url: str = Field(GCP_STS_URL, alias="tokenURL", pattern=r"^https?://")
    iam_credentials_url: str = Field(GCP_IAM_CREDENTIALS_URL, alias="iamCredentialsURL", pattern=r"^https?://")


class AzureIdentity(_Model):
    """Entra ID workload identity: the pod's token as a client assertion for an app's access
    token. Unset fields come from AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_AUTHORITY_HOST."""

    tenant_id: str | None = Field(None, alias="tenantId", pattern=r"^[A-Za-z0-9.-]{1,256}$")
    client_id: str | None = Field(None, alias="clientId", pattern=r"^[A-Za-z0-9-]{1,256}$")
    authority_host: str | None = Field(None, alias="authorityHost", pattern=r"^https?://")
    scope: str = AZURE_OPENAI_SCOPE


class WorkloadIdentity(_Model):
    aws: AwsIdentity | None = None
    gcp: GcpIdentity | None = None
    azure: AzureIdentity | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> WorkloadIdentity:
        if sum(x is not None for x in (self.aws, self.gcp, self.azure)) != 1:
            raise ValueError("workloadIdentity takes exactly one of aws, gcp, azure")
        return self

    @property
    def cloud(self) -> Literal["aws", "gcp", "azure"]:
        return "aws" if self.aws is not None else "gcp" if self.gcp is not None else "azure"

    def describe(self) -> str:
        """What the credential comes from, for status and logs (no secret in it)."""
        if self.aws is not None:
            return f"AWS role {self.aws.role_arn} (IRSA)" if self.aws.role_arn else "EKS Pod Identity"
        if self.gcp is not None:
            if self.gcp.audience is None:
                return "the GKE metadata server"
            via = f", as {self.gcp.service_account}" if self.gcp.service_account else ""
            return f"Google workload identity federation{via}"
        assert self.azure is not None
        return "Entra workload identity" + (f" (client {self.azure.client_id})" if self.azure.client_id else "")


class ProviderKeyConfig(_Model):
    name: str
    provider: ProviderKind
    base_url: str = Field(alias="baseURL")
    models: tuple[str, ...] = ()
    api_version: str | None = Field(None, alias="apiVersion")  # azure-openai
    headers: dict[str, str] = Field(default_factory=dict)  # extra, non-secret upstream headers
    mock: MockSettings | None = None  # provider mock only
    region: str | None = None  # bedrock: the AWS region requests are signed for
    project: str | None = None  # vertex: the Google Cloud project
    location: str | None = None  # vertex: the region, or "global"
    responses_api: ResponsesAPI = Field("auto", alias="responsesAPI")  # openai, openai-compatible
    # Who may use the model names this key serves by its globs (empty: everyone).
    allowed_service_accounts: tuple[CallerName, ...] = Field((), alias="allowedServiceAccounts")
    # The credential comes from the cloud, not from keys (see credentials/).
    workload_identity: WorkloadIdentity | None = Field(None, alias="workloadIdentity")

    @field_validator("headers")
    @classmethod
    def _sendable(cls, headers: dict[str, str]) -> dict[str, str]:
        # compile refuses these already; a config.json from elsewhere must not fail every request.
        for name, value in headers.items():
            if not (valid_header_name(name) and valid_header_value(value)):
                raise ValueError(f"header {name!r} cannot be sent: names are HTTP tokens, values visible ASCII, "
                                 "spaces and tabs")
        return headers


def _model_name(name: str) -> str:
    # compile refuses these already; a config.json from elsewhere must not put URL syntax
    # into upstream paths or a line break into a response header.
    if not valid_model_name(name):
        raise ValueError(MODEL_NAME_RULE)
    return name


class BackendConfig(_Model):
    provider_key: str = Field(alias="providerKey")
    model: str
    weight: int = Field(1, ge=0, le=1_000_000)

    _model = field_validator("model")(_model_name)


class RouteConfig(_Model):
    model: str
    strategy: Strategy = "failover"
    # May be empty when no backend is usable yet: requests then get a clear 503.
    backends: tuple[BackendConfig, ...] = ()
    retries: RetryPolicy = RetryPolicy()
    timeouts: Timeouts = Timeouts()
    source: str = ""  # e.g. "ModelRoute default/chat", for logs and status
    # Backends left out, each with why and what would fix it: the 503 a request gets says so.
    unavailable: tuple[str, ...] = ()
    allowed_service_accounts: tuple[CallerName, ...] = Field((), alias="allowedServiceAccounts")  # empty: all

    _model = field_validator("model")(_model_name)

    def backends_as_pairs(self) -> list[tuple[str, str, int]]:
        return [(b.provider_key, b.model, b.weight) for b in self.backends]


class UnreadyKey(_Model):
    """A ProviderKey left out of the config (no usable key): what it would serve, and why it cannot."""

    models: tuple[str, ...] = ()
    message: str = ""


WINDOW_PATTERN = r"^(month|[1-9][0-9]{0,5}[mhd])$"  # budget/windows.py and the CRD use the same
OnExceeded = Literal["Reject", "Downgrade"]
FailurePolicy = Literal["Closed", "Open"]


class BudgetLimit(_Model):
    """One window's limits; an unset unit is not limited (at least one is set)."""

    window: str = Field(pattern=WINDOW_PATTERN)
    usd: float | None = Field(None, ge=0, allow_inf_nan=False)
    tokens: int | None = Field(None, ge=0)
    requests: int | None = Field(None, ge=0)


class BudgetSelector(_Model):
    """Which traffic a budget counts; an empty list matches everything."""

    # Globs matched against the requested model name and the ModelRoute's own name.
    routes: tuple[str, ...] = ()
    service_accounts: tuple[CallerName, ...] = Field((), alias="serviceAccounts")


class BudgetConfig(_Model):
    """A ModelBudget, compiled."""

    name: str
    selector: BudgetSelector = BudgetSelector()
    limits: tuple[BudgetLimit, ...] = Field(min_length=1)
    on_exceeded: OnExceeded = Field("Reject", alias="onExceeded")
    downgrade_to: str | None = Field(None, alias="downgradeTo")  # a routed model name
    failure_policy: FailurePolicy = Field("Closed", alias="failurePolicy")


class GatewayConfig(_Model):
    version: int = CONFIG_VERSION
    provider_keys: dict[str, ProviderKeyConfig] = Field(default_factory=dict, alias="providerKeys")
    # Named in the 404 of a model one of them would serve, so the caller learns what is missing.
    unready_provider_keys: dict[str, UnreadyKey] = Field(default_factory=dict, alias="unreadyProviderKeys")
    routes: dict[str, RouteConfig] = Field(default_factory=dict)
    # Used for pattern-routed models (no ModelRoute): a ProviderKey chain.
    default_retries: RetryPolicy = Field(RetryPolicy(), alias="defaultRetries")
    default_timeouts: Timeouts = Field(Timeouts(), alias="defaultTimeouts")
    circuit_breaker: CircuitBreaker = Field(CircuitBreaker(), alias="circuitBreaker")
    key_cooldowns: KeyCooldowns = Field(KeyCooldowns(), alias="keyCooldowns")
    prices: dict[str, Price] = Field(default_factory=dict)  # overrides of the built-in table
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024, alias="maxBodyBytes")
    budgets: dict[str, BudgetConfig] = Field(default_factory=dict)  # ModelBudgets, by name

    def dump_json(self) -> str:
        return self.model_dump_json(by_alias=True, exclude_defaults=False, indent=2)


def split_keys(value: str) -> list[str]:
    """One key per line; blank lines and surrounding whitespace ignored."""
    return [line.strip() for line in value.splitlines() if line.strip()]


def format_validation_error(origin: str, err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in e["loc"]).replace(".[", "[")
        parts.append(f"{loc or '(document)'}: {e['msg']}")
    return f"{origin}: " + "; ".join(parts)
