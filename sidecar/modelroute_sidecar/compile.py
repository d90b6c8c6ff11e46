"""Compile ModelRoute, ProviderKey and Secret documents into sidecar config and keys.

One pure function, :func:`compile_resources`, serves both ``modelroute serve`` (YAML
files) and the operator (objects read from the API server). It never raises on bad
input: every document gets an :class:`ObjectStatus`, and a broken document only takes
itself out of the result, never its neighbours.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError

from .config import (
    BackendConfig,
    BudgetConfig,
    BudgetLimit,
    BudgetSelector,
    GatewayConfig,
    Keys,
    MockSettings,
    ProviderKeyConfig,
    RouteConfig,
    UnreadyKey,
    split_keys,
)
from .resources import DEFAULT_AZURE_API_VERSION, GROUP, ModelBudget, ModelRoute, ProviderKey, Secret
from .schema import replace

Kind = Literal["ProviderKey", "ModelRoute", "ModelBudget"]

# Environment fallbacks for `modelroute serve`, most specific first.
PROVIDER_ENV_VARS: dict[str, tuple[str, ...]] = {
    "openai": ("OPENAI_API_KEY",),
    "anthropic": ("ANTHROPIC_API_KEY",),
    "gemini": ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
    "azure-openai": ("AZURE_OPENAI_API_KEY",),
    "openai-compatible": (),
    "mock": (),
    "bedrock": ("AWS_BEARER_TOKEN_BEDROCK",),  # a Bedrock API key, as the AWS SDKs read it
    "vertex": (),
}


@dataclass(frozen=True, slots=True)
class SourceDoc:
    """A document and where it came from, so errors can name it."""

    origin: str
    body: Mapping[str, Any]


@dataclass(slots=True)
class ObjectStatus:
    kind: Kind
    name: str
    ready: bool
    reason: str
    message: str
    generation: int | None = None
    # What `kubectl get` shows: backends usable / total (ModelRoute), keys (ProviderKey).
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class CompileResult:
    config: GatewayConfig
    keys: Keys
    statuses: dict[tuple[Kind, str], ObjectStatus]
    errors: list[str]  # documents that could not be read at all, each naming document and field
    referenced_secrets: set[str]

    @property
    def ok(self) -> bool:
        return not self.errors and all(s.ready for s in self.statuses.values())


def env_var_for(provider_key: str) -> str:
    """``MODELROUTE_KEY_<NAME>``: the per-ProviderKey environment variable `serve` reads."""
    return "MODELROUTE_KEY_" + re.sub(r"[^A-Za-z0-9]", "_", provider_key).upper()


def compile_resources(
    docs: Iterable[SourceDoc | Mapping[str, Any]],
    *,
    env: Mapping[str, str] | None = None,
    base: GatewayConfig | None = None,
) -> CompileResult:
    """Compile one namespace's documents. ``env`` enables environment key fallbacks.

    ``base`` supplies the gateway-wide settings (timeouts, prices, ...) that are not
    expressed by the resources themselves.
    """
    errors: list[str] = []
    keys_docs: list[ProviderKey] = []
    route_docs: list[ModelRoute] = []
    budget_docs: list[ModelBudget] = []
    secrets: dict[str, Secret] = {}

    for doc in docs:
        src = doc if isinstance(doc, SourceDoc) else SourceDoc(
            _origin(doc) if isinstance(doc, Mapping) else f"document of type {type(doc).__name__}", doc)
        if not isinstance(src.body, Mapping):
            errors.append(f"{src.origin}: not a mapping")
            continue
        kind = src.body.get("kind")
        try:
            if kind == "ProviderKey":
                keys_docs.append(ProviderKey.model_validate(src.body))
            elif kind == "ModelRoute":
                route_docs.append(ModelRoute.model_validate(src.body))
            elif kind == "ModelBudget":
                budget_docs.append(ModelBudget.model_validate(src.body))
            elif kind == "Secret":
                s = Secret.model_validate(src.body)
                secrets[s.metadata.name] = s
            elif str(src.body.get("apiVersion", "")).startswith(GROUP + "/"):
                # Ours, but a kind we do not know: a typo ("Modelroute") must not vanish silently.
                errors.append(f"{src.origin}: kind: unknown kind {kind!r} in {GROUP} "
                              "(expected ModelRoute, ProviderKey or ModelBudget)")
            # Anything else (a Deployment in the same file, say) is not ours to judge.
        except ValidationError as e:
            errors.append(format_validation_error(src.origin, e))

    # The same object twice (two files of `serve -f dir/`): the last one wins, as with
    # `kubectl apply`, for every kind alike; it is one object, not a conflict with itself.
    keys_docs = list({d.metadata.name: d for d in keys_docs}.values())
    route_docs = list({d.metadata.name: d for d in route_docs}.values())
    budget_docs = list({d.metadata.name: d for d in budget_docs}.values())

    statuses: dict[tuple[Kind, str], ObjectStatus] = {}
    provider_keys: dict[str, ProviderKeyConfig] = {}
    unready: dict[str, UnreadyKey] = {}
    keys: Keys = {}
    referenced: set[str] = set()

    for pk in sorted(keys_docs, key=lambda d: d.metadata.name):
        name = pk.metadata.name
        if pk.spec.secret_ref is not None:
            referenced.add(pk.spec.secret_ref.name)
        found, reason, message = _resolve_keys(pk, secrets, env)
        status = ObjectStatus("ProviderKey", name, found is not None, reason, message, pk.metadata.generation)
        status.summary = {"provider": pk.spec.provider, "keys": len(found or [])}
        statuses[("ProviderKey", name)] = status
        if found is None:
            unready[name] = UnreadyKey(models=pk.spec.resolved_models(), message=f"{reason}: {message}")
            continue
        provider_keys[name] = ProviderKeyConfig(
            name=name,
            provider=pk.spec.provider,
            base_url=pk.spec.resolved_base_url(),
            models=pk.spec.resolved_models(),
            api_version=pk.spec.api_version
            or (DEFAULT_AZURE_API_VERSION if pk.spec.provider == "azure-openai" else None),
            headers=pk.spec.headers,
            mock=(pk.spec.mock.to_record() if pk.spec.mock else MockSettings()) if pk.spec.provider == "mock"
            else None,
            responses_api=pk.spec.responses_api,
            allowed_service_accounts=tuple(sorted(set(pk.spec.allowed_service_accounts))),
            workload_identity=pk.spec.workload_identity.to_record() if pk.spec.workload_identity else None,
            region=pk.spec.region,
            project=pk.spec.project,
            location=pk.spec.location,
        )
        keys[name] = found

    routes: dict[str, RouteConfig] = {}
    # Oldest name first, so that a conflict resolves the same way on every compile.
    for mr in sorted(route_docs, key=lambda d: d.metadata.name):
        name = mr.metadata.name
        spec = mr.spec
        if spec.model in routes:
            statuses[("ModelRoute", name)] = ObjectStatus(
                "ModelRoute", name, False, "Conflict",
                f"model {spec.model!r} is already routed by ModelRoute {routes[spec.model].source.split('/')[-1]}",
                mr.metadata.generation,
            )
            continue
        backends: list[BackendConfig] = []
        missing: list[str] = []
        why: list[str] = []
        for b in spec.backends:
            if b.provider_key in provider_keys:
                backends.append(BackendConfig(provider_key=b.provider_key, model=b.model or spec.model,
                                              weight=b.weight))
            else:
                state = statuses.get(("ProviderKey", b.provider_key))
                missing.append(f"{b.provider_key} ({'not ready: ' + state.reason if state else 'not found'})")
                why.append(f"ProviderKey {b.provider_key}: " + (state.message if state else "not found"))
        routes[spec.model] = RouteConfig(
            model=spec.model, strategy=spec.strategy, backends=tuple(backends),
            retries=spec.retries.to_record(), timeouts=spec.timeouts.to_record(), source=f"ModelRoute/{name}",
            unavailable=tuple(why),
            allowed_service_accounts=tuple(sorted(set(spec.allowed_service_accounts))),
        )
        total = len(spec.backends)
        if missing:
            reason = "ProviderKeyNotFound" if any("not found" in m for m in missing) else "ProviderKeyNotReady"
            msg = f"{len(backends)}/{total} backends usable; unavailable: {', '.join(missing)}"
            status = ObjectStatus("ModelRoute", name, False, reason, msg, mr.metadata.generation)
        else:
            status = ObjectStatus("ModelRoute", name, True, "Compiled",
                                  f"{total}/{total} backends usable", mr.metadata.generation)
        status.summary = {"model": spec.model, "backends": f"{len(backends)}/{total}", "strategy": spec.strategy}
        statuses[("ModelRoute", name)] = status

    budgets = _compile_budgets(budget_docs, routes, provider_keys, statuses)
    # Every part was validated on its way in (the resources by pydantic, ``base`` as a config).
    config = replace(base or GatewayConfig(), routes=routes, provider_keys=provider_keys,
                     unready_provider_keys=unready, budgets=budgets)
    return CompileResult(config, keys, statuses, errors, referenced)


def _compile_budgets(docs: list[ModelBudget], routes: Mapping[str, RouteConfig],
                     provider_keys: Mapping[str, ProviderKeyConfig],
                     statuses: dict[tuple[Kind, str], ObjectStatus]) -> dict[str, BudgetConfig]:
    """ModelBudgets into the config's ``budgets``. A budget whose downgradeTo names no route is
    still enforced (it rejects instead of downgrading) and its status says why."""
    out: dict[str, BudgetConfig] = {}
    for mb in sorted(docs, key=lambda d: d.metadata.name):
        name, spec = mb.metadata.name, mb.spec
        out[name] = BudgetConfig(
            name=name,
            selector=BudgetSelector(routes=tuple(spec.selector.routes),
                                    service_accounts=tuple(sorted(set(spec.selector.service_accounts)))),
            limits=tuple(BudgetLimit(window=lim.window, usd=lim.usd, tokens=lim.tokens, requests=lim.requests)
                         for lim in spec.limits),
            on_exceeded=spec.on_exceeded, downgrade_to=spec.downgrade_to, failure_policy=spec.failure_policy)
        limits = ", ".join(_limit_text(lim) for lim in spec.limits)
        target = spec.downgrade_to
        if target is not None and not _routed(target, routes, provider_keys):
            status = ObjectStatus("ModelBudget", name, False, "DowngradeTargetNotFound",
                                  f"downgradeTo {target!r} is not a routed model name (no ModelRoute has it as "
                                  "spec.model, no ready ProviderKey's models match it): over budget, requests "
                                  "are rejected instead", mb.metadata.generation)
        else:
            status = ObjectStatus("ModelBudget", name, True, "Compiled", f"limits {limits}",
                                  mb.metadata.generation)
        status.summary = {"limits": limits, "onExceeded": spec.on_exceeded}
        statuses[("ModelBudget", name)] = status
    return out


def _limit_text(lim: Any) -> str:
    parts = ([f"${lim.usd:.2f}"] if lim.usd is not None else []) + \
        ([f"{lim.tokens} tokens"] if lim.tokens is not None else []) + \
        ([f"{lim.requests} requests"] if lim.requests is not None else [])
    return f"{' + '.join(parts)} per {lim.window}"


def _routed(model: str, routes: Mapping[str, RouteConfig], provider_keys: Mapping[str, ProviderKeyConfig]) -> bool:
    return model in routes or any(fnmatch.fnmatchcase(model, p) for pk in provider_keys.values() for p in pk.models)


def format_validation_error(origin: str, err: ValidationError) -> str:
    """``origin: spec.backends[0].providerKey: Field required; ...``: each error at its place."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in e["loc"]).replace(".[", "[")
        parts.append(f"{loc or '(document)'}: {e['msg']}")
    return f"{origin}: " + "; ".join(parts)


def _origin(body: Mapping[str, Any]) -> str:
    meta = body.get("metadata") or {}
    name = meta.get("name", "<unnamed>") if isinstance(meta, Mapping) else "<unnamed>"
    ns = meta.get("namespace") if isinstance(meta, Mapping) else None
    return f"{body.get('kind', '<no kind>')} {ns + '/' if ns else ''}{name}"


# Obvious stand-ins for a key, as examples and templates write them. Compared lower-case;
# none can occur by chance in a real key (random letters and digits, or base64).
_PLACEHOLDER_WORDS = ("replace", "changeme", "change-me", "change_me", "your-key", "your_key", "yourkey",
                      "your-api-key", "your_api_key", "yourapikey", "placeholder", "insert-", "<", ">", "...",
                      "\u2026", "xxxxxx")
_ONLY_X = re.compile(r"(sk-(ant-|proj-)?)?[x*.]{3,}", re.IGNORECASE)


def is_placeholder(key: str) -> bool:
    """Whether ``key`` is an obvious placeholder (``sk-REPLACE-ME``, ``changeme``, ``sk-...``, ``xxx``)."""
    low = key.lower()
    return any(w in low for w in _PLACEHOLDER_WORDS) or _ONLY_X.fullmatch(low) is not None


def key_sources(pk_name: str, provider: str) -> list[str]:
    """The environment variables `serve` reads for a ProviderKey, most specific first."""
    return [env_var_for(pk_name), *PROVIDER_ENV_VARS[provider]]


# bedrock: ACCESS_KEY_ID:SECRET_ACCESS_KEY[:SESSION_TOKEN], or a Bedrock API key (no ':').
_AWS_KEY_LINE = re.compile(r"^([^:]+|[A-Z0-9]{16,128}:[^:]+(:[^:]+)?)$")


def key_format_error(provider: str, keys: list[str]) -> str | None:
    """Why key lines cannot be a ``provider``'s credentials, or None (never quotes a line)."""
    if provider == "bedrock":
        for i, line in enumerate(keys):
            if not _AWS_KEY_LINE.match(line):
                return (f"line {i + 1} is not ACCESS_KEY_ID:SECRET_ACCESS_KEY[:SESSION_TOKEN] "
                        "(or a Bedrock API key, which holds no ':')")
    return None


def _resolve_keys(
    pk: ProviderKey, secrets: Mapping[str, Secret], env: Mapping[str, str] | None
) -> tuple[list[str] | None, str, str]:
    """The key strings of a ProviderKey, or None with a reason. Never puts a key in a message.

    Messages about a missing key say what would satisfy it: the Secret (and its key) and,
    for `serve`, the environment variables. A placeholder is no key: in `serve` the
    environment may still supply one.
    """
    if pk.spec.provider == "mock":
        return [], "NoKeyRequired", "provider mock answers in-process: no key, no network"
    if pk.spec.workload_identity is not None:
        return [], "WorkloadIdentity", f"credentials from {pk.spec.workload_identity.to_record().describe()}, no Secret"
    ref = pk.spec.secret_ref
    variables = key_sources(pk.metadata.name, pk.spec.provider) if env is not None else []
    env_hint = f", or set {' or '.join(variables)}" if variables else ""
    placeholder: str | None = None  # where a placeholder was found
    if ref is not None and ref.name in secrets:
        secret = secrets[ref.name]
        value = _secret_value(secret, ref.key)
        if value is None:
            return None, "SecretKeyNotFound", f"Secret {ref.name} has no key {ref.key!r}{env_hint}"
        if value is _NOT_BASE64:
            return None, "KeyInvalid", (f"Secret {ref.name} key {ref.key!r} is not valid base64 (a Secret's data "
                                        "holds base64; put a plain key under stringData)")
        found = split_keys(value)
        if not found:
            return None, "KeyEmpty", f"Secret {ref.name} key {ref.key!r} holds no API key{env_hint}"
        if not any(map(is_placeholder, found)):
            bad = key_format_error(pk.spec.provider, found)
            if bad is not None:
                return None, "KeyInvalid", f"Secret {ref.name} key {ref.key!r}: {bad}"
            return found, "KeysLoaded", f"{len(found)} key(s) from Secret {ref.name}"
        placeholder = f"Secret {ref.name} key {ref.key!r}"
    for var in variables:
        assert env is not None
        if env.get(var, "").strip():
            found = split_keys(env[var])
            if not any(map(is_placeholder, found)):
                bad = key_format_error(pk.spec.provider, found)
                if bad is not None:
                    return None, "KeyInvalid", f"environment variable {var}: {bad}"
                return found, "KeysLoaded", f"{len(found)} key(s) from environment variable {var}"
            placeholder = placeholder or f"environment variable {var}"
    if placeholder is not None:
        return None, "KeyPlaceholder", (f"{placeholder} holds a placeholder, not an API key: "
                                        f"put the provider's key there{env_hint}")
    if ref is None and pk.spec.provider == "openai-compatible":
        # Self-hosted backends (vLLM, Ollama) need no key: requests go without auth.
        return [], "NoKeyRequired", "no secretRef: requests are sent without an API key"
    if ref is None:
        # A hosted provider always wants a key; without one every request would be a 401.
        return None, "SecretRefMissing", (f"provider {pk.spec.provider} needs an API key: "
                                          f"set spec.secretRef to a Secret holding it{env_hint}")
    if env is not None:
        return None, "SecretNotFound", (f"Secret {ref.name} not found: add a Secret document {ref.name} with "
                                        f"stringData.{ref.key}{env_hint}")
    return None, "SecretNotFound", (f"Secret {ref.name} not found: kubectl create secret generic {ref.name} "
                                    f"--from-literal={ref.key}=<API key>")


_NOT_BASE64 = "\0not base64"  # a marker no decoded key can equal (split_keys never yields it)


def _secret_value(secret: Secret, key: str) -> str | None:
    if key in secret.string_data:
        return secret.string_data[key]
    if key in secret.data:
        try:
            return base64.b64decode(secret.data[key], validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return _NOT_BASE64
    return None
