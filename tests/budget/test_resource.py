"""ModelBudget documents: what compile accepts, refuses and reports, and that the CRD says the same."""

from pathlib import Path
from typing import Any

import pytest
import yaml

from modelroute_sidecar.compile import compile_resources
from modelroute_sidecar.config import WINDOW_PATTERN, GatewayConfig, from_json
from modelroute_sidecar.syntax import CALLER_NAME_MAX, CALLER_NAME_PATTERN, MODEL_NAME_MAX

API = "modelroute.dev/v1alpha1"
CRD = Path(__file__).resolve().parents[2] / "crds" / "modelbudgets.yaml"
KEY = {"apiVersion": API, "kind": "ProviderKey", "metadata": {"name": "mock"},
       "spec": {"provider": "mock", "models": ["m-*"]}}
ROUTE = {"apiVersion": API, "kind": "ModelRoute", "metadata": {"name": "cheap-route"},
         "spec": {"model": "cheap", "backends": [{"providerKey": "mock", "model": "m-1"}]}}


def mb(name: str = "b", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "ModelBudget", "metadata": {"name": name, "generation": 3},
            "spec": {"limits": [{"window": "1h", "requests": 10}], **spec}}


def test_a_budget_compiles_into_the_config() -> None:
    doc = mb(selector={"routes": ["gpt-4o*", "cheap-route"], "serviceAccounts": ["web", "batch", "web"]},
             limits=[{"window": "month", "usd": 25.5}, {"window": "1m", "requests": 60, "tokens": 100000}],
             onExceeded="Downgrade", downgradeTo="cheap", failurePolicy="Open")
    result = compile_resources([KEY, ROUTE, doc], env={})
    assert result.ok, (result.errors, result.statuses)
    b = result.config.budgets["b"]
    assert b.selector.routes == ("gpt-4o*", "cheap-route") and b.selector.service_accounts == ("batch", "web")
    assert [(lim.window, lim.usd, lim.tokens, lim.requests) for lim in b.limits] == [
        ("month", 25.5, None, None), ("1m", None, 100000, 60)]
    assert (b.on_exceeded, b.downgrade_to, b.failure_policy) == ("Downgrade", "cheap", "Open")
    status = result.statuses[("ModelBudget", "b")]
    assert status.ready and status.generation == 3 and "$25.50 per month" in status.message
    # the config the operator writes round-trips through the sidecar's model
    assert from_json(result.config.dump_json(), GatewayConfig) == result.config


def test_defaults() -> None:
    b = compile_resources([mb()], env={}).config.budgets["b"]
    assert (b.on_exceeded, b.downgrade_to, b.failure_policy) == ("Reject", None, "Closed")
    assert b.selector.routes == () and b.selector.service_accounts == ()


def test_a_downgrade_to_no_route_is_enforced_but_not_ready() -> None:
    result = compile_resources([KEY, mb(onExceeded="Downgrade", downgradeTo="nowhere")], env={})
    assert "b" in result.config.budgets
    status = result.statuses[("ModelBudget", "b")]
    assert not status.ready and status.reason == "DowngradeTargetNotFound" and "'nowhere'" in status.message
    # a name a ProviderKey's glob serves is routed too
    assert compile_resources([KEY, mb(onExceeded="Downgrade", downgradeTo="m-9")], env={}).ok


@pytest.mark.parametrize(("spec", "words"), [
    ({"onExceeded": "Downgrade"}, "Downgrade needs downgradeTo"),
    ({"downgradeTo": "cheap"}, "downgradeTo is only for onExceeded: Downgrade"),
    ({"limits": [{"window": "1h"}]}, "at least one of usd, tokens, requests"),
    ({"limits": []}, "limits"),
    ({"limits": [{"window": "1h", "requests": 1}, {"window": "1h", "tokens": 5}]}, "each window at most once"),
    ({"limits": [{"window": "1w", "requests": 1}]}, "windows are Nm, Nh or Nd"),
    ({"limits": [{"window": "0m", "requests": 1}]}, "windows are Nm, Nh or Nd"),
    ({"limits": [{"window": "1h", "usd": -1}]}, "usd"),
    ({"limits": [{"window": "1h", "tokens": 1.5}]}, "tokens"),
    ({"onExceeded": "Throttle"}, "onExceeded"),
    ({"failurePolicy": "Maybe"}, "failurePolicy"),
    ({"selector": {"serviceAccounts": ["a b"]}}, "serviceAccounts"),
    ({"selector": {"routes": [""]}}, "routes"),
    ({"selector": {"models": ["x"]}}, "models"),
])
def test_bad_budgets_are_refused_naming_the_field(spec: dict[str, Any], words: str) -> None:
    result = compile_resources([KEY, ROUTE, mb(**spec)], env={})
    assert len(result.errors) == 1 and words in result.errors[0], result.errors
    assert "ModelBudget b" in result.errors[0] and not result.config.budgets


def test_the_crd_states_the_same_rules() -> None:
    doc = yaml.safe_load(CRD.read_text())
    version = doc["spec"]["versions"][0]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["properties"]["limits"]["items"]["properties"]["window"]["pattern"] == WINDOW_PATTERN
    sa = spec["properties"]["selector"]["properties"]["serviceAccounts"]["items"]
    assert sa["pattern"] == CALLER_NAME_PATTERN and sa["maxLength"] == CALLER_NAME_MAX
    assert spec["properties"]["downgradeTo"]["maxLength"] == MODEL_NAME_MAX
    rules = " ".join(r["rule"] for r in spec["x-kubernetes-validations"])
    assert "has(self.downgradeTo)" in rules and "self.onExceeded == 'Downgrade'" in rules
    assert "has(self.usd) || has(self.tokens) || has(self.requests)" in \
        spec["properties"]["limits"]["items"]["x-kubernetes-validations"][0]["rule"]
    assert doc["spec"]["names"]["shortNames"] == ["mb"] and doc["spec"]["names"]["categories"] == ["llm"]
    assert version["subresources"] == {"status": {}}
    assert {c["name"] for c in version["additionalPrinterColumns"]} >= {"Window", "Spent", "Exceeded", "Age"}
