"""The CRDs on a real API server: schema, defaults, CEL rules, printer columns, names.

Every invalid case is also fed to the pydantic models in resources.py, so the CRD and
`modelroute serve` refuse the same documents, and the cross-field rules say the same words.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import ValidationError

from modelroute_sidecar.resources import ModelRoute, ProviderKey
from tests.operator.conftest import Cluster, model_route, provider_key

pytestmark = [pytest.mark.controlplane, pytest.mark.usefixtures("crds")]


def with_spec(doc: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    for path, value in changes.items():
        node = out["spec"]
        *parents, leaf = path.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        if value is ...:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return out


PK = provider_key("acct", "acct-key")
REGION_RULE = "region is required for provider bedrock, and only for it"
PROJECT_RULE = "project is required for provider vertex, and only for it"
MR = model_route("chat", "chat-default", "acct")

# (id, document, words the server says)
INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("provider-enum", with_spec(PK, provider="bogus"), 'Unsupported value: "bogus"'),
    ("provider-required", with_spec(PK, provider=...), "spec.provider: Required value"),
    ("compatible-needs-baseURL", with_spec(PK, provider="openai-compatible"),
     "baseURL is required for provider openai-compatible and azure-openai"),
    ("azure-needs-baseURL", with_spec(PK, provider="azure-openai"),
     "baseURL is required for provider openai-compatible and azure-openai"),
    ("baseURL-scheme", with_spec(PK, baseURL="ftp://example.com"), "baseURL must start with http:// or https://"),
    ("secretRef-name", with_spec(PK, secretRef={"key": "k"}), "spec.secretRef.name: Required value"),
    ("credential-header", with_spec(PK, headers={"Authorization": "Bearer x"}),
     "headers must not carry credentials"),
    ("mock-settings-elsewhere", with_spec(PK, mock={"failureRate": 0.5}), "spec.mock is only for provider mock"),
    ("responsesAPI-enum", with_spec(PK, responsesAPI="sometimes"), 'Unsupported value: "sometimes"'),
    ("bedrock-needs-region", with_spec(PK, provider="bedrock"), REGION_RULE),
    ("region-elsewhere", with_spec(PK, region="us-east-1"), REGION_RULE),
    ("region-pattern", with_spec(PK, provider="bedrock", region="us-east-1.evil.com"),
     "spec.region in body should match"),
    ("vertex-needs-project", with_spec(PK, provider="vertex"), PROJECT_RULE),
    ("location-elsewhere", with_spec(PK, location="us-east5"), "location is only for provider vertex"),
    ("project-pattern", with_spec(PK, provider="vertex", project="p/../x"), "spec.project in body should match"),
    ("mock-failure-rate", with_spec(PK, provider="mock", mock={"failureRate": 2}), "less than or equal to 1"),
    ("model-required", with_spec(MR, model=...), "spec.model: Required value"),
    ("model-empty", with_spec(MR, model=""), "spec.model: Invalid value"),
    ("backends-required", with_spec(MR, backends=...), "spec.backends: Required value"),
    ("backends-empty", with_spec(MR, backends=[]), "spec.backends: Invalid value"),
    ("strategy-enum", with_spec(MR, strategy="random"), 'Unsupported value: "random"'),
    ("weighted-needs-weight", with_spec(MR, strategy="weighted", backends=[{"providerKey": "a", "weight": 0}]),
     "a weighted route needs at least one backend with weight > 0"),
    ("weight-negative", with_spec(MR, backends=[{"providerKey": "a", "weight": -1}]),
     "should be greater than or equal to 0"),
    ("maxAttempts-low", with_spec(MR, retries={"maxAttempts": 0}), "should be greater than or equal to 1"),
    ("maxAttempts-high", with_spec(MR, retries={"maxAttempts": 21}), "should be less than or equal to 20"),
    ("backoff-order", with_spec(MR, retries={"backoffBaseSeconds": 5, "backoffMaxSeconds": 1}),
     "backoffBaseSeconds must not exceed backoffMaxSeconds"),
    ("connect-zero", with_spec(MR, timeouts={"connectSeconds": 0}), "should be greater than 0"),
    ("total-high", with_spec(MR, timeouts={"totalSeconds": 86401}), "should be less than or equal to 86400"),
    ("first-byte-after-total", with_spec(MR, timeouts={"firstByteSeconds": 100, "totalSeconds": 50}),
     "firstByteSeconds must not exceed totalSeconds"),
    ("unknown-field", with_spec(MR, retry={"maxAttempts": 2}), 'unknown field "spec.retry"'),
    # Model names are data, never URL syntax (syntax.MODEL_NAME_PATTERN).
    ("model-dot-segment", with_spec(MR, model="gpt-4o/../other"), "spec.model in body should match"),
    ("model-query", with_spec(MR, model="gemini-x?key=EVIL#"), "spec.model in body should match"),
    ("model-newline", with_spec(MR, model="gpt-x\nfoo"), "spec.model in body should match"),
    ("backend-model-slash-dot", with_spec(MR, backends=[{"providerKey": "a", "model": "x/./y"}]),
     "spec.backends[0].model in body should match"),
    ("backend-model-unicode", with_spec(MR, backends=[{"providerKey": "a", "model": "gpt\u2024\u2024"}]),
     "spec.backends[0].model in body should match"),
    # Headers are validated where they enter: no CR/LF or other controls, names are tokens.
    ("header-crlf", with_spec(PK, headers={"X-Team": "a\r\nX-Injected: 1"}), "should match"),
    ("header-lf", with_spec(PK, headers={"X-Team": "a\nb"}), "should match"),
    ("header-nul", with_spec(PK, headers={"X-Team": "a\x00b"}), "should match"),
    ("header-non-ascii", with_spec(PK, headers={"X-Team": "caf\u00e9"}), "should match"),
    ("header-name", with_spec(PK, headers={"X Team:": "a"}), "header names must be HTTP tokens"),
    # Who may use a route: names in the alphabet of ServiceAccounts and caller-key names.
    ("allowed-name", with_spec(MR, allowedServiceAccounts=["web", "bad name"]),
     "spec.allowedServiceAccounts[1] in body should match"),
    ("allowed-slash", with_spec(PK, allowedServiceAccounts=["ns/web"]),
     "spec.allowedServiceAccounts[0] in body should match"),
    ("allowed-empty-name", with_spec(MR, allowedServiceAccounts=[""]),
     "spec.allowedServiceAccounts[0] in body should be at least 1 chars long"),
    ("allowed-too-long", with_spec(PK, allowedServiceAccounts=["x" * 254]),
     "spec.allowedServiceAccounts[0]: Too long"),
]


# Rules the CRD states with x-kubernetes-validations, and resources.py in the same words.
SAME_WORDS = {"baseURL-scheme", "credential-header", "mock-settings-elsewhere", "mock-failure-rate",
              "weighted-needs-weight", "backoff-order", "first-byte-after-total", "header-name",
              "bedrock-needs-region", "region-elsewhere", "vertex-needs-project", "location-elsewhere"}


@pytest.mark.parametrize(("case", "doc", "words"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_objects_are_refused_with_clear_messages(cluster: Cluster, namespace: str, case: str,
                                                         doc: dict[str, Any], words: str) -> None:
    result = cluster.apply(doc, namespace, check=False)
    assert result.returncode != 0, f"accepted: {doc}"
    assert words in result.stderr, result.stderr
    model = ProviderKey if doc["kind"] == "ProviderKey" else ModelRoute
    with pytest.raises(ValidationError) as e:
        model.model_validate(doc)
    if case in SAME_WORDS:
        assert words in str(e.value)


@pytest.mark.parametrize("doc", [
    with_spec(PK, headers={"X-Api-Key-Hint": "not a key", "OpenAI-Project": "p"}),
    with_spec(PK, provider="mock", secretRef=..., mock={"firstByteMs": 10, "chunkIntervalMs": 5, "failureRate": 0.25,
                                                         "failStatus": 429, "failAfterChunks": 0, "reply": "ok"}),
    with_spec(PK, headers={"X-Odd_Name.v2": "spaces and\ttabs, symbols !#$%&*+^|~ are fine"}),
    with_spec(MR, model="Qwen/Qwen2.5-7B-Instruct", backends=[{"providerKey": "a", "model": "qwen2.5:7b"}]),
    # The order rules hold only between fields both written: an unset one is not compared.
    with_spec(MR, retries={"backoffBaseSeconds": 5}),
    with_spec(MR, timeouts={"firstByteSeconds": 900}),
    with_spec(MR, retries={"backoffBaseSeconds": 2, "backoffMaxSeconds": 2},
              timeouts={"firstByteSeconds": 30, "totalSeconds": 30}),
    with_spec(MR, allowedServiceAccounts=["web", "batch-job.v2", "Caller_1", "x" * 253]),
    with_spec(PK, allowedServiceAccounts=[]),
    with_spec(PK, provider="bedrock", region="us-gov-west-1"),
    with_spec(PK, provider="vertex", project="my-project-123", location="global"),
    with_spec(MR, backends=[{"providerKey": "a", "model": "us.anthropic.claude-sonnet-4-5-20250929-v1:0"},
                            {"providerKey": "b", "model": "claude-sonnet-4-5@20250929"}]),
], ids=["near-credential-names", "mock-settings", "header-value-edges", "model-with-slash-and-colon", "base-only",
        "first-byte-only", "equal-bounds", "allowed-service-accounts", "allowed-nobody-listed", "bedrock",
        "vertex", "cloud-model-ids"])
def test_edge_cases_of_the_cross_field_rules_are_accepted_by_both(cluster: Cluster, namespace: str,
                                                                  doc: dict[str, Any]) -> None:
    cluster.apply(doc, namespace)
    model = ProviderKey if doc["kind"] == "ProviderKey" else ModelRoute
    model.model_validate(doc)


def test_server_applies_the_defaults(cluster: Cluster, namespace: str) -> None:
    cluster.apply([PK, with_spec(MR, backends=[{"providerKey": "acct"}])], namespace)
    pk = cluster.get("providerkey", "acct", namespace)
    mr = cluster.get("modelroute", "chat", namespace)
    assert pk is not None and mr is not None
    assert pk["spec"]["secretRef"] == {"name": "acct-key", "key": "apiKey"}
    assert mr["spec"]["strategy"] == "failover"
    assert mr["spec"]["backends"] == [{"providerKey": "acct", "weight": 1}]
    # What the server stores, the compiler reads.
    ProviderKey.model_validate(pk)
    ModelRoute.model_validate(mr)


def test_a_full_valid_object_is_accepted_by_both(cluster: Cluster, namespace: str) -> None:
    pk = with_spec(PK, provider="azure-openai", baseURL="https://r.openai.azure.com", apiVersion="2024-10-21",
                   models=["gpt-4o*"], headers={"OpenAI-Organization": "org-1"}, secretRef={"name": "s", "key": "k"},
                   responsesAPI="bridge")
    mr = with_spec(MR, strategy="weighted",
                   backends=[{"providerKey": "acct", "model": "gpt-4o", "weight": 3},
                             {"providerKey": "b", "weight": 0}],
                   retries={"maxAttempts": 5, "backoffBaseSeconds": 0.2, "backoffMaxSeconds": 4,
                            "maxRetryAfterSeconds": 30},
                   timeouts={"connectSeconds": 2.5, "firstByteSeconds": 30, "betweenChunksSeconds": 20,
                             "totalSeconds": 300})
    cluster.apply([pk, mr], namespace)
    ProviderKey.model_validate(cluster.get("providerkey", "acct", namespace))
    ModelRoute.model_validate(cluster.get("modelroute", "chat", namespace))


def test_names_categories_and_printer_columns(cluster: Cluster, namespace: str) -> None:
    cluster.apply([PK, MR], namespace)
    by_short = cluster.kubectl("get", "mr,pk", "-n", namespace).stdout
    assert "modelroute.modelroute.dev/chat" in by_short and "providerkey.modelroute.dev/acct" in by_short
    # Category `llm`: both kinds at once. (Not `modelroute`: kubectl would expand that
    # category in `kubectl get modelroute NAME`, ModelRoute's own singular name.)
    by_category = cluster.kubectl("get", "llm", "-n", namespace, "-o", "name").stdout.split()
    assert sorted(by_category) == ["modelroute.modelroute.dev/chat", "providerkey.modelroute.dev/acct"]
    for kind in ("modelroute", "modelroutes", "mr"):
        assert cluster.get(kind, "chat", namespace) is not None
    for kind in ("providerkey", "providerkeys", "pk"):
        assert cluster.get(kind, "acct", namespace) is not None
    mr_header = cluster.kubectl("get", "modelroutes", "-n", namespace).stdout.splitlines()[0].split()
    assert mr_header == ["NAME", "MODEL", "STRATEGY", "BACKENDS", "READY", "REASON", "AGE"]
    pk_header = cluster.kubectl("get", "providerkeys", "-n", namespace).stdout.splitlines()[0].split()
    assert pk_header == ["NAME", "PROVIDER", "KEYS", "READY", "REASON", "AGE"]
    wide = cluster.kubectl("get", "providerkeys", "-n", namespace, "-o", "wide").stdout.splitlines()[0]
    assert "BASE URL" in wide and "MESSAGE" in wide


def test_status_is_a_subresource(cluster: Cluster, namespace: str) -> None:
    cluster.apply(MR, namespace)
    # A user's write of .status through the main resource is dropped by the server.
    cluster.kubectl("patch", "modelroute", "chat", "-n", namespace, "--type=merge",
                    "-p", '{"status": {"backends": "9/9"}}')
    assert (cluster.get("modelroute", "chat", namespace) or {}).get("status", {}).get("backends") != "9/9"


def test_kubectl_explain_is_useful(cluster: Cluster) -> None:
    mr = cluster.kubectl("explain", "modelroute.spec").stdout
    assert "strategy" in mr and "failover (backends in list order" in mr
    pk = cluster.kubectl("explain", "providerkey.spec.secretRef").stdout
    assert "one per line" in pk
    timeouts = cluster.kubectl("explain", "mr.spec.timeouts.firstByteSeconds").stdout
    assert "default 60" in timeouts
