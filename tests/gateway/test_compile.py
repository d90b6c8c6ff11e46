"""compile_resources (documents -> config, keys, statuses) and route resolution, table-driven.

The compiler is shared by `modelroute serve` and the operator, so what is pinned here is
what both tell a user: provider defaults, where keys come from, why an object is not ready
(never with key text), which document and field is wrong, and which backends a model name
reaches (`Runtime.resolve`) and which names `/v1/models` lists.
"""

from __future__ import annotations

import base64
import itertools
from typing import Any

import orjson
import pytest

from modelroute_sidecar.app import Gateway
from modelroute_sidecar.compile import CompileResult, SourceDoc, compile_resources, env_var_for
from modelroute_sidecar.config import GatewayConfig, from_data, from_json
from modelroute_sidecar.metrics import Metrics
from modelroute_sidecar.router import Runtime, State

API = "modelroute.dev/v1alpha1"
NS = "default"
KEY = "sk-compile-SECRET-7f3a9c"  # must never appear in a status message or an error
KEY2 = "sk-compile-SECRET-second-b21e"


def meta(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "namespace": NS, **extra}


def pk(name: str, provider: str = "openai", secret: str | None = None, key: str | None = None,
       **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"provider": provider, **spec}
    if secret is not None:
        body["secretRef"] = {"name": secret, **({"key": key} if key else {})}
    return {"apiVersion": API, "kind": "ProviderKey", "metadata": meta(name), "spec": body}


def secret(name: str, string_data: dict[str, str] | None = None, data: dict[str, str] | None = None) -> dict:
    doc: dict[str, Any] = {"apiVersion": "v1", "kind": "Secret", "metadata": meta(name)}
    if string_data is not None:
        doc["stringData"] = string_data
    if data is not None:
        doc["data"] = data
    return doc


def route(name: str, model: str, *backends: str | dict[str, Any], **spec: Any) -> dict[str, Any]:
    bs = [{"providerKey": b} if isinstance(b, str) else b for b in backends]
    return {"apiVersion": API, "kind": "ModelRoute", "metadata": meta(name, generation=3),
            "spec": {"model": model, "backends": bs, **spec}}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def no_key_text(result: CompileResult) -> None:
    """Statuses, errors and the compiled config (a ConfigMap) never carry key material."""
    texts = [s.message for s in result.statuses.values()] + result.errors + [result.config.dump_json()]
    for text in texts:
        for k in (KEY, KEY2, KEY[-6:], KEY2[-6:], b64(KEY)):
            assert k not in text, text


# ---- provider defaults ---------------------------------------------------------------------

DEFAULTS = {
    "openai": (pk("p", "openai", "s"), "https://api.openai.com/v1",
               ("gpt-*", "o[0-9]*", "chatgpt-*", "text-embedding-*"), None),
    "anthropic": (pk("p", "anthropic", "s"), "https://api.anthropic.com", ("claude-*",), None),
    "gemini": (pk("p", "gemini", "s"), "https://generativelanguage.googleapis.com",
               ("gemini-*", "text-embedding-*", "embedding-*"), None),
    "azure-openai": (pk("p", "azure-openai", "s", baseURL="https://acme.openai.azure.com/"),
                     "https://acme.openai.azure.com", (), "2024-10-21"),
    "azure-openai-explicit-version": (pk("p", "azure-openai", "s", baseURL="https://acme.openai.azure.com",
                                         apiVersion="v1"), "https://acme.openai.azure.com", (), "v1"),
    "openai-compatible": (pk("p", "openai-compatible", "s", baseURL="http://vllm:8000/v1/"),
                          "http://vllm:8000/v1", (), None),
    "openai-own-base-url-and-models": (pk("p", "openai", "s", baseURL="https://proxy.example/v1",
                                          models=["gpt-4o", "ft:*"]),
                                       "https://proxy.example/v1", ("gpt-4o", "ft:*"), None),
    "anthropic-no-models": (pk("p", "anthropic", "s", models=[]), "https://api.anthropic.com", (), None),
}


@pytest.mark.parametrize(("doc", "base_url", "models", "api_version"), list(DEFAULTS.values()), ids=list(DEFAULTS))
def test_provider_defaults(doc: dict, base_url: str, models: tuple[str, ...], api_version: str | None) -> None:
    result = compile_resources([doc, secret("s", {"apiKey": KEY})])
    assert result.errors == [] and result.ok
    cfg = result.config.provider_keys["p"]
    assert (cfg.provider, cfg.base_url, cfg.models, cfg.api_version) == (
        doc["spec"]["provider"], base_url, models, api_version)
    assert result.keys == {"p": [KEY]}
    no_key_text(result)


# ---- where keys come from, and why a ProviderKey is not ready -----------------------------

AWS_LINES = "AKIAIOSFODNN7EXAMPLE:wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY\nASIAQEXAMPLE2TEMPKEY:s3cret:FwoG/tok+en="
KEY_SOURCES: dict[str, tuple[list[dict], dict[str, str] | None, list[str] | None, str, tuple[str, ...]]] = {
    # id: (docs, env, keys expected (None: not ready), reason, words in the message)
    "stringData": ([pk("p", secret="s"), secret("s", {"apiKey": KEY})], None, [KEY], "KeysLoaded",
                   ("1 key(s)", "Secret s")),
    "data-base64": ([pk("p", secret="s"), secret("s", data={"apiKey": b64(KEY)})], None, [KEY], "KeysLoaded", ()),
    "several-keys-one-per-line": ([pk("p", secret="s"), secret("s", {"apiKey": f"  {KEY}\n\n{KEY2}  \n"})], None,
                                  [KEY, KEY2], "KeysLoaded", ("2 key(s)",)),
    "several-keys-in-base64": ([pk("p", secret="s"), secret("s", data={"apiKey": b64(f"{KEY}\r\n{KEY2}\n")})], None,
                               [KEY, KEY2], "KeysLoaded", ()),
    "custom-key-name": ([pk("p", secret="s", key="token"), secret("s", {"apiKey": KEY2, "token": KEY})], None,
                        [KEY], "KeysLoaded", ()),
    "stringData-wins-over-data": ([pk("p", secret="s"), secret("s", {"apiKey": KEY}, {"apiKey": b64(KEY2)})], None,
                                  [KEY], "KeysLoaded", ()),
    "secret-missing": ([pk("p", secret="s")], None, None, "SecretNotFound", ("Secret s", "not found")),
    "key-missing-in-secret": ([pk("p", secret="s"), secret("s", {"token": KEY})], None, None, "SecretKeyNotFound",
                              ("Secret s", "'apiKey'")),
    "key-empty": ([pk("p", secret="s"), secret("s", {"apiKey": ""})], None, None, "KeyEmpty", ("'apiKey'",)),
    "key-only-whitespace": ([pk("p", secret="s"), secret("s", data={"apiKey": b64(" \n \n")})], None, None,
                            "KeyEmpty", ("no API key",)),
    "data-not-base64": ([pk("p", secret="s"), secret("s", data={"apiKey": KEY})], None, None, "KeyInvalid",
                        ("base64", "stringData")),
    "secret-of-another-name": ([pk("p", secret="s"), secret("other", {"apiKey": KEY})], None, None,
                               "SecretNotFound", ("Secret s",)),
    # serve's environment fallbacks (env given); the operator passes none.
    "env-per-providerkey": ([pk("my-openai.prod")], {"MODELROUTE_KEY_MY_OPENAI_PROD": KEY}, [KEY], "KeysLoaded",
                            ("MODELROUTE_KEY_MY_OPENAI_PROD",)),
    "env-provider-variable": ([pk("p")], {"OPENAI_API_KEY": KEY}, [KEY], "KeysLoaded", ("OPENAI_API_KEY",)),
    "env-per-providerkey-beats-provider-variable": ([pk("p")], {"OPENAI_API_KEY": KEY2, "MODELROUTE_KEY_P": KEY},
                                                    [KEY], "KeysLoaded", ("MODELROUTE_KEY_P",)),
    "env-when-the-secret-is-missing": ([pk("p", secret="s")], {"OPENAI_API_KEY": KEY}, [KEY], "KeysLoaded", ()),
    "secret-beats-env": ([pk("p", secret="s"), secret("s", {"apiKey": KEY})], {"OPENAI_API_KEY": KEY2}, [KEY],
                         "KeysLoaded", ("Secret s",)),
    "env-several-keys": ([pk("p")], {"OPENAI_API_KEY": f"{KEY}\n{KEY2}"}, [KEY, KEY2], "KeysLoaded", ()),
    "env-blank-is-ignored": ([pk("p", secret="s")], {"OPENAI_API_KEY": "  "}, None, "SecretNotFound", ()),
    "env-anthropic": ([pk("p", "anthropic")], {"ANTHROPIC_API_KEY": KEY, "OPENAI_API_KEY": KEY2}, [KEY],
                      "KeysLoaded", ()),
    "env-gemini": ([pk("p", "gemini")], {"GEMINI_API_KEY": KEY, "GOOGLE_API_KEY": KEY2}, [KEY], "KeysLoaded", ()),
    "env-google-for-gemini": ([pk("p", "gemini")], {"GOOGLE_API_KEY": KEY}, [KEY], "KeysLoaded",
                              ("GOOGLE_API_KEY",)),
    "env-azure": ([pk("p", "azure-openai", baseURL="https://a.example")], {"AZURE_OPENAI_API_KEY": KEY}, [KEY],
                  "KeysLoaded", ()),
    "no-env-for-the-operator": ([pk("p", secret="s")], None, None, "SecretNotFound", ()),
    "hosted-provider-without-any-key": ([pk("p")], {}, None, "SecretRefMissing", ("needs an API key",)),
    "hosted-provider-without-secretref-for-the-operator": ([pk("p", "anthropic")], None, None,
                                                           "SecretRefMissing", ("spec.secretRef",)),
    "openai-compatible-without-secret": ([pk("p", "openai-compatible", baseURL="http://ollama:11434/v1")],
                                         {"OPENAI_API_KEY": KEY}, [], "NoKeyRequired", ("without an API key",)),
    "openai-compatible-env-per-providerkey": ([pk("p", "openai-compatible", baseURL="http://vllm/v1")],
                                              {"MODELROUTE_KEY_P": KEY}, [KEY], "KeysLoaded", ()),
    "bedrock-access-keys": ([pk("p", "bedrock", region="us-east-1", secret="s"), secret("s", {"apiKey": AWS_LINES})],
                            None, AWS_LINES.split("\n"), "KeysLoaded", ("2 key(s)",)),
    "bedrock-line-not-aws": ([pk("p", "bedrock", region="us-east-1", secret="s"),
                              secret("s", {"apiKey": "AKIAIOSFODNN7EXAMPLE:s3cret:tok:extra"})], None, None,
                             "KeyInvalid", ("line 1", "ACCESS_KEY_ID:SECRET_ACCESS_KEY")),
    "env-bedrock-api-key": ([pk("p", "bedrock", region="us-east-1")], {"AWS_BEARER_TOKEN_BEDROCK": KEY}, [KEY],
                            "KeysLoaded", ("AWS_BEARER_TOKEN_BEDROCK",)),
    "env-bedrock-line-not-aws": ([pk("p", "bedrock", region="us-east-1")], {"MODELROUTE_KEY_P": "lower:s3cret"},
                                 None, "KeyInvalid", ("MODELROUTE_KEY_P",)),
}


@pytest.mark.parametrize(("docs", "env", "keys", "reason", "says"), list(KEY_SOURCES.values()), ids=list(KEY_SOURCES))
def test_key_sources_and_provider_key_status(docs: list[dict], env: dict[str, str] | None, keys: list[str] | None,
                                             reason: str, says: tuple[str, ...]) -> None:
    name = docs[0]["metadata"]["name"]
    result = compile_resources(docs, env=env)
    assert result.errors == []
    status = result.statuses[("ProviderKey", name)]
    assert (status.ready, status.reason) == (keys is not None, reason), status
    for word in says:
        assert word in status.message, status.message
    if keys is None:
        assert name not in result.config.provider_keys and name not in result.keys
    else:
        assert result.keys[name] == keys and name in result.config.provider_keys
    assert status.summary["keys"] == len(keys or [])
    no_key_text(result)


def test_env_var_names() -> None:
    assert env_var_for("openai") == "MODELROUTE_KEY_OPENAI"
    assert env_var_for("azure-east.prod") == "MODELROUTE_KEY_AZURE_EAST_PROD"


# ---- routes: partial backends, conflicts --------------------------------------------------

def test_unknown_and_unready_provider_keys_leave_the_usable_backends() -> None:
    result = compile_resources([
        pk("good", secret="s"), secret("s", {"apiKey": KEY}), pk("nokey", secret="missing"),
        route("chat", "chat", "good", "ghost", {"providerKey": "nokey", "model": "gpt-4o"}),
        route("lonely", "lonely", "ghost"),
        route("fine", "fine", {"providerKey": "good", "model": "gpt-4o-mini", "weight": 3}),
    ])
    chat = result.statuses[("ModelRoute", "chat")]
    assert (chat.ready, chat.reason) == (False, "ProviderKeyNotFound")
    assert chat.message == ("1/3 backends usable; unavailable: ghost (not found), "
                            "nokey (not ready: SecretNotFound)")
    assert chat.summary == {"model": "chat", "backends": "1/3", "strategy": "failover"}
    assert chat.generation == 3
    assert [(b.provider_key, b.model) for b in result.config.routes["chat"].backends] == [("good", "chat")]
    lonely = result.statuses[("ModelRoute", "lonely")]
    assert (lonely.ready, lonely.reason) == (False, "ProviderKeyNotFound")
    assert result.config.routes["lonely"].backends == ()  # still routable: requests get a clear 503
    fine = result.statuses[("ModelRoute", "fine")]
    assert (fine.ready, fine.reason, fine.message) == (True, "Compiled", "1/1 backends usable")
    assert result.config.routes["fine"].backends[0].weight == 3
    assert result.config.routes["fine"].source == "ModelRoute/fine"
    not_ready_only = compile_resources([pk("nokey", secret="missing"), route("r", "r", "nokey")])
    assert not_ready_only.statuses[("ModelRoute", "r")].reason == "ProviderKeyNotReady"
    assert not result.ok


ROUTES = [route("b-route", "shared", {"providerKey": "p", "model": "gpt-4o"}),
          route("a-route", "shared", {"providerKey": "p", "model": "gpt-4o-mini"}),
          route("c-route", "shared", {"providerKey": "p", "model": "o3"})]


@pytest.mark.parametrize("order", list(itertools.permutations(range(len(ROUTES)))))
def test_duplicate_model_is_a_conflict_resolved_the_same_way_every_time(order: tuple[int, ...]) -> None:
    result = compile_resources([*(ROUTES[i] for i in order), pk("p", secret="s"), secret("s", {"apiKey": KEY})])
    assert result.config.routes["shared"].backends[0].model == "gpt-4o-mini"  # a-route, by name
    assert result.statuses[("ModelRoute", "a-route")].ready
    for loser in ("b-route", "c-route"):
        status = result.statuses[("ModelRoute", loser)]
        assert (status.ready, status.reason) == (False, "Conflict")
        assert status.message == "model 'shared' is already routed by ModelRoute a-route"


def test_the_same_object_defined_twice_is_its_last_definition() -> None:
    """`serve -f dir/` with two files defining one object: the later wins, as with kubectl apply."""
    docs = [pk("p", secret="s", baseURL="https://first.example/v1"), secret("s", {"apiKey": KEY}),
            route("chat", "chat", {"providerKey": "p", "model": "first"}),
            pk("p", secret="s", baseURL="https://second.example/v1"), secret("s", {"apiKey": KEY2}),
            route("chat", "chat", {"providerKey": "p", "model": "second"})]
    result = compile_resources(docs)
    assert result.errors == [] and result.ok, result.statuses
    assert result.config.provider_keys["p"].base_url == "https://second.example/v1"
    assert result.keys["p"] == [KEY2]
    assert [b.model for b in result.config.routes["chat"].backends] == ["second"]
    assert result.statuses[("ModelRoute", "chat")].reason == "Compiled"


# ---- invalid documents ------------------------------------------------------------------

def mr_spec(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "ModelRoute", "metadata": meta("x"), "spec": spec}


GOOD_BACKENDS = [{"providerKey": "p"}]
INVALID = {
    "backend-without-providerKey": (mr_spec(model="m", backends=[{"model": "gpt-4o"}]),
                                    "ModelRoute default/x: spec.backends[0].providerKey: Field required"),
    "route-without-model": (mr_spec(backends=GOOD_BACKENDS), "ModelRoute default/x: spec.model: Field required"),
    "route-with-empty-model": (mr_spec(model="", backends=GOOD_BACKENDS),
                               "ModelRoute default/x: spec.model: String should have at least 1 character"),
    "route-without-backends": (mr_spec(model="m", backends=[]), "ModelRoute default/x: spec.backends: List should "
                               "have at least 1 item"),
    "route-with-a-typo": (mr_spec(model="m", backend=GOOD_BACKENDS),
                          "ModelRoute default/x: spec.backends: Field required; spec.backend: Extra inputs are not "
                          "permitted"),
    "route-unknown-strategy": (mr_spec(model="m", backends=GOOD_BACKENDS, strategy="random"),
                               "ModelRoute default/x: spec.strategy: Input should be 'failover', 'weighted' or "
                               "'latency'"),
    "weighted-all-zero": (mr_spec(model="m", backends=[{"providerKey": "p", "weight": 0}], strategy="weighted"),
                          "ModelRoute default/x: spec: Value error, a weighted route needs at least one backend "
                          "with weight > 0"),
    "weight-not-a-number": (mr_spec(model="m", backends=[{"providerKey": "p", "weight": "heavy"}]),
                            "ModelRoute default/x: spec.backends[0].weight: Input should be a valid integer"),
    "retries-zero-attempts": (mr_spec(model="m", backends=GOOD_BACKENDS, retries={"maxAttempts": 0}),
                              "ModelRoute default/x: spec.retries.maxAttempts: Input should be greater than or "
                              "equal to 1"),
    "timeouts-negative": (mr_spec(model="m", backends=GOOD_BACKENDS, timeouts={"totalSeconds": -1}),
                          "ModelRoute default/x: spec.timeouts.totalSeconds: Input should be greater than 0"),
    "route-wrong-api-version": ({**mr_spec(model="m", backends=GOOD_BACKENDS), "apiVersion": "modelroute.dev/v1"},
                                "ModelRoute default/x: apiVersion: Input should be 'modelroute.dev/v1alpha1'"),
    "route-without-name": ({**mr_spec(model="m", backends=GOOD_BACKENDS), "metadata": {"namespace": NS}},
                           "ModelRoute default/<unnamed>: metadata.name: Field required"),
    "route-spec-a-list": ({**mr_spec(), "spec": []}, "ModelRoute default/x: spec: Input should be a valid "
                          "dictionary"),
    "unknown-provider": (pk("p", "cohere"), "ProviderKey default/p: spec.provider: Input should be 'openai', "
                         "'anthropic', 'gemini', 'azure-openai', 'openai-compatible', 'mock', 'bedrock' or 'vertex'"),
    "bedrock-without-region": (pk("p", "bedrock"), "ProviderKey default/p: spec: Value error, region is required "
                               "for provider bedrock, and only for it"),
    "openai-compatible-without-baseURL": (pk("p", "openai-compatible"), "ProviderKey default/p: spec: Value error, "
                                          "baseURL is required for provider 'openai-compatible'"),
    "azure-without-baseURL": (pk("p", "azure-openai"), "ProviderKey default/p: spec: Value error, baseURL is "
                              "required for provider 'azure-openai'"),
    "baseURL-without-scheme": (pk("p", baseURL="api.openai.com/v1"), "ProviderKey default/p: spec: Value error, "
                               "baseURL must start with http:// or https://"),
    "secretRef-without-name": (pk("p", secretRef={"key": "apiKey"}),
                               "ProviderKey default/p: spec.secretRef.name: Field required"),
    "models-not-a-list": (pk("p", models="gpt-*"), "ProviderKey default/p: spec.models: Input should be a valid "
                          "list"),
    "secret-stringData-a-key": (secret("s", string_data=KEY),  # type: ignore[arg-type]
                                "Secret default/s: stringData: Input should be a valid dictionary"),
    "secret-value-a-list": (secret("s", data={"apiKey": [KEY]}),  # type: ignore[dict-item]
                            "Secret default/s: data.apiKey: Input should be a valid string"),
    "unknown-kind-of-ours": ({"apiVersion": API, "kind": "Modelroute", "metadata": meta("x"), "spec": {}},
                             "Modelroute default/x: kind: unknown kind 'Modelroute'"),
    "not-a-mapping": (["ModelRoute"], "document of type list: not a mapping"),
}


@pytest.mark.parametrize(("bad", "error"), list(INVALID.values()), ids=list(INVALID))
def test_an_invalid_document_is_named_with_its_field_and_takes_out_only_itself(bad: Any, error: str) -> None:
    good = [pk("good", secret="gs"), secret("gs", {"apiKey": KEY2}), route("chat", "chat", "good")]
    for docs in ([bad, *good], [*good, bad]):
        result = compile_resources(docs)
        assert len(result.errors) == 1, result.errors
        assert result.errors[0].startswith(error), result.errors[0]
        # Its neighbours compile as if it were not there.
        assert result.statuses[("ProviderKey", "good")].ready and result.statuses[("ModelRoute", "chat")].ready
        assert result.keys["good"] == [KEY2] and result.config.routes["chat"].backends[0].provider_key == "good"
        no_key_text(result)


def test_an_invalid_document_is_named_by_its_origin() -> None:
    doc = SourceDoc("routes.yaml: document 3 (ModelRoute x)", mr_spec(model="m", backends=[{}]))
    result = compile_resources([doc])
    assert result.errors == ["routes.yaml: document 3 (ModelRoute x): spec.backends[0].providerKey: Field required"]


def test_documents_not_ours_are_ignored() -> None:
    result = compile_resources([{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta("web")},
                                {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta("cm")}])
    assert result.errors == [] and result.statuses == {} and result.config.routes == {}


def test_compiled_config_round_trips_and_keeps_base_settings() -> None:
    base = from_data({"maxBodyBytes": 4096, "circuitBreaker": {"failureThreshold": 2}}, GatewayConfig)
    result = compile_resources([pk("p", secret="s"), secret("s", {"apiKey": KEY}), route("chat", "chat", "p")],
                               base=base)
    assert result.config.max_body_bytes == 4096 and result.config.circuit_breaker.failure_threshold == 2
    assert from_json(result.config.dump_json(), GatewayConfig) == result.config
    assert result.referenced_secrets == {"s"}
    no_key_text(result)


# ---- routing resolution ----------------------------------------------------------------------

def runtime(docs: list[dict]) -> Runtime:
    result = compile_resources(docs, env={})
    assert result.errors == []
    return Runtime(result.config, result.keys, State(), Metrics())


def keyed(name: str, provider: str = "openai", **spec: Any) -> list[dict]:
    return [pk(name, provider, f"{name}-s", **spec), secret(f"{name}-s", {"apiKey": KEY})]


RESOLVE_DOCS = [
    *keyed("zeta", models=["gpt-*", "shared-*"]),
    *keyed("alpha", models=["gpt-4*", "shared-*"]),
    *keyed("mid", models=["gpt-*", "local-llama"]),
    *keyed("claude", "anthropic"),
    *keyed("vertex", "gemini", models=["gemini-2.5-pro", "gemini-*"]),
    pk("broken", secret="absent", models=["broken-*"]),  # not ready: routes nothing
    route("gpt-4o", "gpt-4o", {"providerKey": "claude", "model": "claude-sonnet-4"}),
    route("chat-default", "chat-default", {"providerKey": "mid", "model": "gpt-4o-mini"}, "claude"),
]

RESOLVE = {
    # model: (source, [(providerKey, upstream model)]) or None for 404
    "modelroute-beats-pattern": ("gpt-4o", "ModelRoute/gpt-4o", [("claude", "claude-sonnet-4")]),
    "route-name-not-a-pattern": ("chat-default", "ModelRoute/chat-default",
                                 [("mid", "gpt-4o-mini"), ("claude", "chat-default")]),
    "patterns-chain-in-name-order": ("gpt-4.1", "ProviderKey pattern",
                                     [("alpha", "gpt-4.1"), ("mid", "gpt-4.1"), ("zeta", "gpt-4.1")]),
    "only-the-keys-that-match": ("gpt-3.5-turbo", "ProviderKey pattern",
                                 [("mid", "gpt-3.5-turbo"), ("zeta", "gpt-3.5-turbo")]),
    "second-pattern-of-a-key": ("shared-x", "ProviderKey pattern", [("alpha", "shared-x"), ("zeta", "shared-x")]),
    "provider-default-pattern": ("claude-opus-4", "ProviderKey pattern", [("claude", "claude-opus-4")]),
    "literal-pattern": ("local-llama", "ProviderKey pattern", [("mid", "local-llama")]),
    "literal-and-glob-of-one-key": ("gemini-2.5-pro", "ProviderKey pattern", [("vertex", "gemini-2.5-pro")]),
    "unknown-model": ("mistral-large", None, None),
    "patterns-are-anchored": ("my-gpt-4o", None, None),
    "patterns-are-case-sensitive": ("GPT-4o", None, None),
    "literal-is-exact": ("local-llama-2", None, None),
    "not-ready-key-routes-nothing": ("broken-model", None, None),
    "empty-name": ("", None, None),
}


@pytest.mark.parametrize(("model", "source", "backends"), list(RESOLVE.values()), ids=list(RESOLVE))
def test_resolve(model: str, source: str | None, backends: list[tuple[str, str]] | None) -> None:
    rt = runtime(RESOLVE_DOCS)
    found = rt.resolve(model)
    if source is None:
        assert found is None
        return
    assert found is not None and found.source == source
    assert [(b.provider_key, b.model) for b in found.backends] == backends
    assert [b.provider_key for b in found.plan()] == [pk for pk, _ in backends]  # failover: list order
    assert rt.resolve(model) is found  # resolved once, then reused


def test_resolution_does_not_depend_on_document_order() -> None:
    forward, backward = runtime(RESOLVE_DOCS), runtime(list(reversed(RESOLVE_DOCS)))
    for model, _, _ in RESOLVE.values():
        a, b = forward.resolve(model), backward.resolve(model)
        assert (a is None) == (b is None)
        if a is not None and b is not None:
            assert [x.id for x in a.backends] == [x.id for x in b.backends]


def test_models_lists_route_names_and_literal_patterns() -> None:
    rt = runtime(RESOLVE_DOCS)
    assert rt.model_names == ["chat-default", "gemini-2.5-pro", "gpt-4o", "local-llama"]
    gw = Gateway(Metrics())
    result = compile_resources(RESOLVE_DOCS, env={})
    gw.apply(result.config, result.keys)
    listed = orjson.loads(gw.models_body)
    assert listed["object"] == "list"
    assert [m["id"] for m in listed["data"]] == rt.model_names
    assert all(m["object"] == "model" for m in listed["data"])
    # Every listed name resolves.
    assert all(rt.resolve(name) is not None for name in rt.model_names)


# ---- access: allowedServiceAccounts -------------------------------------------------------------

def test_allowed_service_accounts_compile_into_the_config_sorted_and_once() -> None:
    docs = [*keyed("a", models=["gpt-*"], allowedServiceAccounts=["web", "batch"]), *keyed("b", models=["gpt-4*"]),
            route("open", "open", "a"), route("closed", "closed", "a", allowedServiceAccounts=["web", "api", "web"])]
    result = compile_resources(docs, env={})
    assert result.errors == [] and result.statuses[("ModelRoute", "closed")].ready
    cfg = result.config
    assert cfg.routes["closed"].allowed_service_accounts == ("api", "web")
    assert cfg.routes["open"].allowed_service_accounts == ()
    assert cfg.provider_keys["a"].allowed_service_accounts == ("batch", "web")
    assert cfg.provider_keys["b"].allowed_service_accounts == ()
    assert '"allowedServiceAccounts"' in cfg.dump_json()
    assert from_json(cfg.dump_json(), GatewayConfig) == cfg  # the ConfigMap round-trips
    rt = Runtime(cfg, result.keys, State(), Metrics())
    assert rt.resolve("open").allowed is None  # type: ignore[union-attr]
    assert rt.resolve("closed").allowed == frozenset({"api", "web"})  # type: ignore[union-attr]
    # A glob name: every ProviderKey of its chain must allow the caller (b allows all).
    assert rt.resolve("gpt-4o").allowed == frozenset({"batch", "web"})  # type: ignore[union-attr]
    assert rt.resolve("gpt-3").permits("web") and not rt.resolve("gpt-3").permits(None)  # type: ignore[union-attr]
    assert orjson.loads(rt.models_body("api"))["data"][0]["id"] == "closed"
    assert [m["id"] for m in orjson.loads(rt.models_body(None))["data"]] == ["open"]


@pytest.mark.parametrize("names", [["bad name"], [""], ["x" * 254], ["web/admin"], "web"])
def test_bad_allowed_service_accounts_are_refused_naming_the_field(names: Any) -> None:
    for doc in (route("r", "m", "a", allowedServiceAccounts=names),
                pk("a", "openai", "s", allowedServiceAccounts=names)):
        result = compile_resources([doc], env={})
        assert len(result.errors) == 1 and "allowedServiceAccounts" in result.errors[0], result.errors


def test_the_crds_state_the_very_caller_name_pattern() -> None:
    from pathlib import Path

    import yaml

    from modelroute_sidecar.syntax import CALLER_NAME_MAX, CALLER_NAME_PATTERN

    root = Path(__file__).resolve().parents[2] / "crds"
    for crd in ("modelroutes.yaml", "providerkeys.yaml"):
        doc = yaml.safe_load((root / crd).read_text())
        items = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
            "allowedServiceAccounts"]["items"]
        assert items["pattern"] == CALLER_NAME_PATTERN and items["maxLength"] == CALLER_NAME_MAX, crd
