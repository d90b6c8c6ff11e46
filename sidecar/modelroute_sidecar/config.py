"""The compiled sidecar configuration: the contract between operator and sidecar.

The operator (and ``modelroute serve``) compiles ModelRoute/ProviderKey resources into
one :class:`GatewayConfig`, which holds no secret, and a :data:`Keys` mapping of
ProviderKey name to its key strings. In a pod they arrive as the ConfigMap
``modelroute-config`` (file ``config.json``) and the Secret ``modelroute-keys`` (one
file per ProviderKey, one key per line).

The schema is records of our own (:mod:`.schema`: slotted classes, a validating reader of
parsed JSON), not a library's: the sidecar runs in every pod and loads only this, so what
it imports is paid for in each. pydantic costs about 10 MiB and 130 ms; msgspec, used here
before, 1.15 MiB of resident memory with this module (its C core, ``decimal`` and
``numbers``, its inspect, JSON-schema, TOML and YAML modules) and 5 ms; the records cost
0.25 MiB and 3 ms (VmRSS and time around the import, byte-compiled, after aiohttp). Reading
is slower, 0.25 s for 20,000 routes (12 MB) against msgspec's 0.07 s, in the reload thread and
one route at a time, so requests are not stalled; the config then holds 8 MiB against
msgspec's 18 (routes share their equal retries, timeouts and backends). ``modelroute serve``
and the operator, which validate the custom resources with pydantic, derive their models of
the shared parts from these records (:mod:`.pydantic_schema`), so there is one schema.
"""

from typing import Annotated, Any, Literal, TypeVar

from .schema import ConfigInvalid as ConfigInvalid
from .schema import Record, Rule, convert, dump_json, field, read_json, to_data
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
CallerName = Annotated[str, Rule(min_length=1, max_length=CALLER_NAME_MAX, pattern=CALLER_NAME_PATTERN)]


class _Model(Record):
    """Immutable, unknown fields refused, JSON names in camelCase (as in the resources)."""


class RetryPolicy(_Model):
    """How many attempts a request gets across a route's backends, and how they wait."""

    max_attempts: Annotated[int, Rule(ge=1, le=20)] = 3
    backoff_base_seconds: Annotated[float, Rule(ge=0, le=30)] = 0.1
    backoff_max_seconds: Annotated[float, Rule(ge=0, le=120)] = 2.0
    # A Retry-After longer than this is not waited for; the next backend is tried instead.
    max_retry_after_seconds: Annotated[float, Rule(ge=0, le=600)] = 10.0


class Timeouts(_Model):
    connect_seconds: Annotated[float, Rule(gt=0, le=300)] = 5.0
    first_byte_seconds: Annotated[float, Rule(gt=0, le=3600)] = 60.0
    between_chunks_seconds: Annotated[float, Rule(gt=0, le=3600)] = 60.0
    total_seconds: Annotated[float, Rule(gt=0, le=86400)] = 600.0


class CircuitBreaker(_Model):
    failure_threshold: Annotated[int, Rule(ge=1, le=1000)] = 5
    open_seconds: Annotated[float, Rule(gt=0, le=3600)] = 30.0


class KeyCooldowns(_Model):
    """How long a key rests after the upstream refused it."""

    auth_seconds: Annotated[float, Rule(ge=0)] = 300.0  # 401/403
    rate_limit_seconds: Annotated[float, Rule(ge=0)] = 20.0  # 429 without Retry-After


class Price(_Model):
    """USD per million tokens."""

    input: Annotated[float, Rule(ge=0)]
    output: Annotated[float, Rule(ge=0)]
    cache_read: Annotated[float, Rule(ge=0)] | None = None
    cache_write: Annotated[float, Rule(ge=0)] | None = None


class MockSettings(_Model):
    """A ``mock`` ProviderKey's behaviour: latency and failure injection (all off by default).

    Failures are chosen by a hash of the request, not by a random draw: the same request
    meets the same fate on every run, which keeps tests and drills reproducible.
    """

    first_byte_ms: Annotated[int, Rule(ge=0, le=600_000)] = 0  # before the response starts
    chunk_interval_ms: Annotated[int, Rule(ge=0, le=60_000)] = 0  # between stream chunks
    failure_rate: Annotated[float, Rule(ge=0, le=1)] = 0.0  # share of requests that fail
    fail_status: Annotated[int, Rule(ge=400, le=599)] = 503  # the HTTP status they fail with
    fail_after_chunks: Annotated[int, Rule(ge=0, le=1_000_000)] | None = None  # streams break here
    # A fixed answer text instead of one derived from the prompt.
    reply: Annotated[str, Rule(max_length=65536)] | None = None


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

    role_arn: Annotated[str, Rule(pattern=r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/.+$",
                                  max_length=2048)] | None = None
    region: Annotated[str, Rule(pattern=r"^[a-z]{2}(-[a-z]+)+-[0-9]+$")] | None = None  # else AWS_REGION
    session_name: Annotated[str, Rule(pattern=r"^[\w+=,.@-]{2,64}$")] | None = None


class GcpIdentity(_Model):
    """Workload identity federation when ``audience`` is set (the pod's token exchanged at
    Google's STS, then optionally for ``serviceAccount``'s token), else the GKE metadata server."""

    audience: Annotated[str, Rule(min_length=1, max_length=1024)] | None = None
    service_account: Annotated[str, Rule(pattern=r"^[^@\s/]+@[^@\s/]+$")] | None = None
    scopes: tuple[str, ...] = (GCP_SCOPE,)
    token_url: Annotated[str, Rule(pattern=r"^https?://")] = field(name="tokenURL", default=GCP_STS_URL)
    iam_credentials_url: Annotated[str, Rule(pattern=r"^https?://")] = field(name="iamCredentialsURL",
                                                                           default=GCP_IAM_CREDENTIALS_URL)


class AzureIdentity(_Model):
    """Entra ID workload identity: the pod's token as a client assertion for an app's access
    token. Unset fields come from AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_AUTHORITY_HOST."""

    tenant_id: Annotated[str, Rule(pattern=r"^[A-Za-z0-9.-]{1,256}$")] | None = None
    client_id: Annotated[str, Rule(pattern=r"^[A-Za-z0-9-]{1,256}$")] | None = None
    authority_host: Annotated[str, Rule(pattern=r"^https?://")] | None = None
    scope: str = AZURE_OPENAI_SCOPE


class WorkloadIdentity(_Model):
    aws: AwsIdentity | None = None
    gcp: GcpIdentity | None = None
    azure: AzureIdentity | None = None

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.aws, self.gcp, self.azure)) != 1:
            raise ValueError("workloadIdentity takes exactly one of aws, gcp, azure")

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

    def dump_json(self) -> str:
        return dump_json(self)


class ProviderKeyConfig(_Model):
    name: str
    provider: ProviderKind
    base_url: str = field(name="baseURL")
    models: tuple[str, ...] = ()
    api_version: str | None = None  # azure-openai
    headers: dict[str, str] = field(default_factory=dict)  # extra, non-secret upstream headers
    mock: MockSettings | None = None  # provider mock only
    region: str | None = None  # bedrock: the AWS region requests are signed for
    project: str | None = None  # vertex: the Google Cloud project
    location: str | None = None  # vertex: the region, or "global"
    responses_api: ResponsesAPI = field(name="responsesAPI", default="auto")  # openai, openai-compatible
    # Who may use the model names this key serves by its globs (empty: everyone).
    allowed_service_accounts: tuple[CallerName, ...] = ()
    # The credential comes from the cloud, not from keys (see credentials/).
    workload_identity: WorkloadIdentity | None = None

    def __post_init__(self) -> None:
        # compile refuses these already; a config.json from elsewhere must not fail every request.
        for name, value in self.headers.items():
            if not (valid_header_name(name) and valid_header_value(value)):
                raise ValueError(f"header {name!r} cannot be sent: names are HTTP tokens, values visible ASCII, "
                                 "spaces and tabs")


def _check_model_name(name: str) -> None:
    # compile refuses these already; a config.json from elsewhere must not put URL syntax
    # into upstream paths or a line break into a response header.
    if not valid_model_name(name):
        raise ValueError(MODEL_NAME_RULE)


class BackendConfig(_Model):
    provider_key: str
    model: str
    weight: Annotated[int, Rule(ge=0, le=1_000_000)] = 1

    def __post_init__(self) -> None:
        _check_model_name(self.model)


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
    allowed_service_accounts: tuple[CallerName, ...] = ()  # empty: all

    def __post_init__(self) -> None:
        _check_model_name(self.model)

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

    window: Annotated[str, Rule(pattern=WINDOW_PATTERN)]
    usd: Annotated[float, Rule(ge=0)] | None = None  # JSON has no NaN or infinity; 1e999 is refused
    tokens: Annotated[int, Rule(ge=0)] | None = None
    requests: Annotated[int, Rule(ge=0)] | None = None


class BudgetSelector(_Model):
    """Which traffic a budget counts; an empty list matches everything."""

    # Globs matched against the requested model name and the ModelRoute's own name.
    routes: tuple[str, ...] = ()
    service_accounts: tuple[CallerName, ...] = ()


class BudgetConfig(_Model):
    """A ModelBudget, compiled."""

    name: str
    selector: BudgetSelector = BudgetSelector()
    limits: Annotated[tuple[BudgetLimit, ...], Rule(min_length=1)]
    on_exceeded: OnExceeded = "Reject"
    downgrade_to: str | None = None  # a routed model name
    failure_policy: FailurePolicy = "Closed"


class GatewayConfig(_Model):
    version: int = CONFIG_VERSION
    provider_keys: dict[str, ProviderKeyConfig] = field(default_factory=dict)
    # Named in the 404 of a model one of them would serve, so the caller learns what is missing.
    unready_provider_keys: dict[str, UnreadyKey] = field(default_factory=dict)
    routes: dict[str, RouteConfig] = field(default_factory=dict)
    # Used for pattern-routed models (no ModelRoute): a ProviderKey chain.
    default_retries: RetryPolicy = RetryPolicy()
    default_timeouts: Timeouts = Timeouts()
    circuit_breaker: CircuitBreaker = CircuitBreaker()
    key_cooldowns: KeyCooldowns = KeyCooldowns()
    prices: dict[str, Price] = field(default_factory=dict)  # overrides of the built-in table
    max_body_bytes: Annotated[int, Rule(ge=1024)] = 32 * 1024 * 1024
    budgets: dict[str, BudgetConfig] = field(default_factory=dict)  # ModelBudgets, by name

    def dump_json(self) -> str:
        return dump_json(self, indent=True)


S = TypeVar("S")


def from_data(data: Any, schema: type[S]) -> S:
    """``data`` (parsed JSON or YAML: dicts, lists, scalars) as ``schema``, validated as from JSON.

    Raises :class:`ConfigInvalid` (a ValueError), whose text names the rule and where
    (``Expected `int` >= 1 - at `$.routes[...].retries.maxAttempts```).
    """
    return convert(data, schema)


def from_json(raw: bytes | str, schema: type[S]) -> S:
    """JSON text as ``schema``; :class:`ConfigInvalid` for a value against the schema, or text
    that is not JSON (as one message, so callers handle one error)."""
    return read_json(raw, schema)


def as_data(value: Record) -> dict[str, Any]:
    """A record as JSON data (camelCase names, every field): what :func:`from_data` reads back."""
    data: dict[str, Any] = to_data(value)
    return data


def split_keys(value: str) -> list[str]:
    """One key per line; blank lines and surrounding whitespace ignored."""
    return [line.strip() for line in value.splitlines() if line.strip()]


def format_config_error(origin: str, err: Exception) -> str:
    """``origin: <rule> - at `$.path``` for a value against the schema."""
    return f"{origin}: {err}"
