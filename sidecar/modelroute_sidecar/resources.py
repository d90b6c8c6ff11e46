"""pydantic models of the custom resources (group ``modelroute.dev``, ``v1alpha1``).

These mirror the CRD schemas in ``crds/``; the compiler validates every document with
them so that ``modelroute serve`` and the operator reject the same things with the same
words.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from . import config
from .config import WINDOW_PATTERN, FailurePolicy, OnExceeded, ProviderKind, ResponsesAPI, Strategy
from .pydantic_schema import RecordModel, model_of
from .syntax import (
    CALLER_NAME_MAX,
    CALLER_NAME_PATTERN,
    MODEL_NAME_MAX,
    MODEL_NAME_RULE,
    valid_header_name,
    valid_header_value,
    valid_model_name,
)

# The parts of the compiled config a resource spells out, as pydantic models of its records
# (one schema; ``.to_record()`` gives the config's value).
if TYPE_CHECKING:
    RetryPolicy: TypeAlias = RecordModel
    Timeouts: TypeAlias = RecordModel
    MockSettings: TypeAlias = RecordModel
    WorkloadIdentity: TypeAlias = RecordModel
else:
    RetryPolicy = model_of(config.RetryPolicy)
    Timeouts = model_of(config.Timeouts)
    MockSettings = model_of(config.MockSettings)
    WorkloadIdentity = model_of(config.WorkloadIdentity)
CallerName = Annotated[str, StringConstraints(min_length=1, max_length=CALLER_NAME_MAX, pattern=CALLER_NAME_PATTERN)]

GROUP = "modelroute.dev"
_WINDOW = re.compile(WINDOW_PATTERN)
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

DEFAULT_BASE_URLS: dict[str, str] = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
    "gemini": "https://generativelanguage.googleapis.com",
    "mock": "mock://local",  # answered in-process; never a network address
}

DEFAULT_MODELS: dict[str, tuple[str, ...]] = {
    "openai": ("gpt-*", "o[0-9]*", "chatgpt-*", "text-embedding-*"),
    "anthropic": ("claude-*",),
    "gemini": ("gemini-*", "text-embedding-*", "embedding-*"),
}

DEFAULT_AZURE_API_VERSION = "2024-10-21"

# Which clouds' workload identity each provider kind can authenticate with (the CRD's CEL
# rules say the same). Kinds not listed use keys only.
WORKLOAD_IDENTITY_CLOUDS: dict[str, frozenset[str]] = {
    "azure-openai": frozenset({"azure"}),
    "openai-compatible": frozenset({"azure", "gcp"}),  # Azure AI Foundry, Vertex's OpenAI-compatible endpoint
    "gemini": frozenset({"gcp"}),
    "bedrock": frozenset({"aws"}),
    "vertex": frozenset({"gcp"}),
}
# Where a region or project ends up in a host name or URL path: a fixed alphabet, as in the CRD.
AWS_REGION_PATTERN = r"^[a-z]{2}(-[a-z0-9]+)+-[0-9]+$"
GCP_PROJECT_PATTERN = r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$"
GCP_LOCATION_PATTERN = r"^(global|[a-z]+(-[a-z0-9]+)+)$"


def cloud_base_url(provider: str, region: str | None, location: str | None) -> str | None:
    """The default endpoint of a bedrock or vertex ProviderKey (it names its region)."""
    if provider == "bedrock" and region:
        return f"https://bedrock-runtime.{region}.amazonaws.com"
    if provider == "vertex":
        loc = location or "global"
        return "https://aiplatform.googleapis.com" if loc == "global" else f"https://{loc}-aiplatform.googleapis.com"
    return None

# Headers that carry credentials: refused in ProviderKey.spec.headers (they end up in a
# ConfigMap), as the CRD refuses them. Compared case-insensitively.
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "x-api-key", "api-key", "x-goog-api-key"})


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Metadata(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1)
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None


class SecretKeyRef(_Spec):
    name: str = Field(min_length=1)
    key: str = "apiKey"


class ProviderKeySpec(_Spec):
    provider: ProviderKind
    base_url: str | None = Field(None, alias="baseURL", min_length=1)
    secret_ref: SecretKeyRef | None = Field(None, alias="secretRef")
    models: list[str] | None = None
    api_version: str | None = Field(None, alias="apiVersion", min_length=1)
    headers: dict[str, str] = Field(default_factory=dict)
    mock: MockSettings | None = None
    responses_api: ResponsesAPI = Field("auto", alias="responsesAPI")
    region: str | None = Field(None, pattern=AWS_REGION_PATTERN)  # bedrock (required)
    project: str | None = Field(None, pattern=GCP_PROJECT_PATTERN)  # vertex (required)
    location: str | None = Field(None, pattern=GCP_LOCATION_PATTERN)  # vertex; default global
    # Who may use the names this key serves by its globs (not ModelRoutes: they have their own).
    allowed_service_accounts: list[CallerName] = Field(default_factory=list, alias="allowedServiceAccounts",
                                                       max_length=256)
    workload_identity: WorkloadIdentity | None = Field(None, alias="workloadIdentity")

    @field_validator("headers")
    @classmethod
    def _headers(cls, headers: dict[str, str]) -> dict[str, str]:
        if any(h.lower() in CREDENTIAL_HEADERS for h in headers):
            raise ValueError("headers must not carry credentials (Authorization, x-api-key, api-key, "
                             "x-goog-api-key): put the key in the Secret named by secretRef")
        # Refused here, not at request time: a bad header would fail every request of the key.
        for name, value in headers.items():
            if not valid_header_name(name):
                raise ValueError(f"header names must be HTTP tokens (letters, digits, !#$%&*+.^_|~-): {name!r}")
            if not valid_header_value(value):
                raise ValueError(f"header {name}: the value may hold only visible ASCII, spaces and tabs "
                                 "(no CR, LF or other control characters)")
        return headers

    @model_validator(mode="after")
    def _base_url_required(self) -> ProviderKeySpec:
        if self.base_url is None and self.provider not in DEFAULT_BASE_URLS | {"bedrock": "", "vertex": ""}:
            raise ValueError(f"baseURL is required for provider {self.provider!r}")
        if self.base_url is not None and not self.base_url.startswith(("http://", "https://")):
            raise ValueError("baseURL must start with http:// or https://")
        if self.mock is not None and self.provider != "mock":
            raise ValueError("spec.mock is only for provider mock")
        if self.workload_identity is not None:
            if self.secret_ref is not None:
                raise ValueError("secretRef and workloadIdentity are exclusive: the credential comes from one of them")
            cloud = self.workload_identity.to_record().cloud
            if cloud not in WORKLOAD_IDENTITY_CLOUDS.get(self.provider, frozenset()):
                kinds = sorted(k for k, clouds in WORKLOAD_IDENTITY_CLOUDS.items() if cloud in clouds)
                raise ValueError(f"workloadIdentity.{cloud} is for provider {' or '.join(kinds)}, "
                                 f"not {self.provider}")
        if (self.provider == "bedrock") != (self.region is not None):
            raise ValueError("region is required for provider bedrock, and only for it")
        if (self.provider == "vertex") != (self.project is not None):
            raise ValueError("project is required for provider vertex, and only for it")
        if self.location is not None and self.provider != "vertex":
            raise ValueError("location is only for provider vertex")
        return self

    def resolved_base_url(self) -> str:
        if self.provider == "mock":
            return DEFAULT_BASE_URLS["mock"]  # no network: a baseURL means nothing to it
        cloud = cloud_base_url(self.provider, self.region, self.location)
        return (self.base_url or cloud or DEFAULT_BASE_URLS[self.provider]).rstrip("/")

    def resolved_models(self) -> tuple[str, ...]:
        if self.models is not None:
            return tuple(self.models)
        return DEFAULT_MODELS.get(self.provider, ())


def _model_name(name: str | None) -> str | None:
    if name is not None and not valid_model_name(name):
        raise ValueError(MODEL_NAME_RULE)  # the same rule callers' names meet at ingress
    return name


class BackendSpec(_Spec):
    provider_key: str = Field(alias="providerKey", min_length=1)
    model: str | None = Field(None, min_length=1, max_length=MODEL_NAME_MAX)
    weight: int = Field(1, ge=0, le=1_000_000)

    _model = field_validator("model")(_model_name)


class ModelRouteSpec(_Spec):
    model: str = Field(min_length=1, max_length=MODEL_NAME_MAX)
    strategy: Strategy = "failover"
    backends: list[BackendSpec] = Field(min_length=1)
    retries: RetryPolicy = RetryPolicy()
    timeouts: Timeouts = Timeouts()
    allowed_service_accounts: list[CallerName] = Field(default_factory=list, alias="allowedServiceAccounts",
                                                       max_length=256)

    _model = field_validator("model")(_model_name)

    # As the CRD's rules: only when both fields are written (an unset one takes its default).
    @field_validator("retries")
    @classmethod
    def _backoff_order(cls, r: RetryPolicy) -> RetryPolicy:
        if {"backoff_base_seconds", "backoff_max_seconds"} <= r.model_fields_set \
                and r.backoff_base_seconds > r.backoff_max_seconds:
            raise ValueError("backoffBaseSeconds must not exceed backoffMaxSeconds")
        return r

    @field_validator("timeouts")
    @classmethod
    def _first_byte_within_total(cls, t: Timeouts) -> Timeouts:
        if {"first_byte_seconds", "total_seconds"} <= t.model_fields_set and t.first_byte_seconds > t.total_seconds:
            raise ValueError("firstByteSeconds must not exceed totalSeconds")
        return t

    @model_validator(mode="after")
    def _weights(self) -> ModelRouteSpec:
        if self.strategy == "weighted" and not any(b.weight > 0 for b in self.backends):
            raise ValueError("a weighted route needs at least one backend with weight > 0")
        return self


class BudgetSelectorSpec(_Spec):
    routes: list[str] = Field(default_factory=list, max_length=256)
    service_accounts: list[CallerName] = Field(default_factory=list, alias="serviceAccounts", max_length=256)

    @field_validator("routes")
    @classmethod
    def _globs(cls, routes: list[str]) -> list[str]:
        for r in routes:
            if not 1 <= len(r) <= MODEL_NAME_MAX:
                raise ValueError(f"route names and globs are 1-{MODEL_NAME_MAX} characters")
        return routes


class BudgetLimitSpec(_Spec):
    window: str
    usd: float | None = Field(None, ge=0, allow_inf_nan=False)
    tokens: int | None = Field(None, ge=0)
    requests: int | None = Field(None, ge=0)

    @field_validator("window")
    @classmethod
    def _window(cls, window: str) -> str:
        if not _WINDOW.match(window):
            raise ValueError(f"window {window!r}: windows are Nm, Nh or Nd (N from 1 to 999999; fixed, aligned in "
                             "UTC) or month (the calendar month, UTC)")
        return window

    @model_validator(mode="after")
    def _some_unit(self) -> BudgetLimitSpec:
        if self.usd is None and self.tokens is None and self.requests is None:
            raise ValueError("a limit sets at least one of usd, tokens, requests")
        return self


class ModelBudgetSpec(_Spec):
    selector: BudgetSelectorSpec = Field(default_factory=BudgetSelectorSpec)
    limits: list[BudgetLimitSpec] = Field(min_length=1, max_length=8)
    on_exceeded: OnExceeded = Field("Reject", alias="onExceeded")
    downgrade_to: str | None = Field(None, alias="downgradeTo", min_length=1, max_length=MODEL_NAME_MAX)
    failure_policy: FailurePolicy = Field("Closed", alias="failurePolicy")

    _downgrade_to = field_validator("downgrade_to")(_model_name)

    @model_validator(mode="after")
    def _rules(self) -> ModelBudgetSpec:
        if self.on_exceeded == "Downgrade" and self.downgrade_to is None:
            raise ValueError("onExceeded: Downgrade needs downgradeTo (the model name to serve instead)")
        if self.on_exceeded != "Downgrade" and self.downgrade_to is not None:
            raise ValueError("downgradeTo is only for onExceeded: Downgrade")
        windows = [lim.window for lim in self.limits]
        if len(set(windows)) != len(windows):
            raise ValueError("limits: each window at most once")
        return self


class ProviderKey(BaseModel):
    model_config = ConfigDict(extra="ignore")
    api_version: Literal["modelroute.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["ProviderKey"]
    metadata: Metadata
    spec: ProviderKeySpec


class ModelRoute(BaseModel):
    model_config = ConfigDict(extra="ignore")
    api_version: Literal["modelroute.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["ModelRoute"]
    metadata: Metadata
    spec: ModelRouteSpec


class ModelBudget(BaseModel):
    model_config = ConfigDict(extra="ignore")
    api_version: Literal["modelroute.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["ModelBudget"]
    metadata: Metadata
    spec: ModelBudgetSpec


class Secret(BaseModel):
    model_config = ConfigDict(extra="ignore")
    kind: Literal["Secret"]
    metadata: Metadata
    data: dict[str, str] = Field(default_factory=dict)  # base64
    string_data: dict[str, str] = Field(default_factory=dict, alias="stringData")


__all__ = [
    "API_VERSION",
    "DEFAULT_AZURE_API_VERSION",
    "DEFAULT_BASE_URLS",
    "DEFAULT_MODELS",
    "WORKLOAD_IDENTITY_CLOUDS",
    "BackendSpec",
    "ModelBudget",
    "ModelBudgetSpec",
    "ModelRoute",
    "ModelRouteSpec",
    "ProviderKey",
    "ProviderKeySpec",
    "Secret",
    "SecretKeyRef",
]
