"""deploy/: the operator's RBAC and admission policy, read as an auditor would (no cluster).
The attack itself, on a real control plane, is tests/operator/test_rbac_escalation.py."""

from __future__ import annotations

from typing import Any

import yaml

from modelroute_operator import names
from modelroute_operator.settings import WebhookSettings
from modelroute_operator.webhook import webhook_configuration
from tests.operator.conftest import ADMISSION_POLICY, CLUSTERROLE, NAMESPACE_CLUSTERROLE

# Verbs and resources that lead to more privilege than one has.
ESCALATING_VERBS = {"*", "escalate", "bind", "impersonate"}
ESCALATING_RESOURCES = {"*", "serviceaccounts/token", "pods/exec", "pods/attach", "pods", "serviceaccounts",
                        "roles", "rolebindings", "clusterrolebindings", "nodes/proxy", "validatingadmissionpolicies",
                        "validatingadmissionpolicybindings", "validatingwebhookconfigurations"}
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection", "*"}


def rules(path: Any) -> list[dict[str, Any]]:
    doc = yaml.safe_load(path.read_text())
    assert doc["kind"] == "ClusterRole"
    return list(doc["rules"])


def test_nothing_in_either_role_escalates() -> None:
    for rule in rules(CLUSTERROLE) + rules(NAMESPACE_CLUSTERROLE):
        assert not ESCALATING_VERBS & set(rule["verbs"]), rule
        assert not ESCALATING_RESOURCES & set(rule["resources"]), rule
        assert "*" not in rule["apiGroups"], rule
        if "clusterroles" in rule["resources"]:  # only reading its own, for the webhook's owner
            assert rule["verbs"] == ["get"] and rule.get("resourceNames"), rule
        if "customresourcedefinitions" in rule["resources"]:
            assert not WRITE_VERBS & set(rule["verbs"]), rule


def test_the_cluster_wide_role_touches_no_secret_and_no_configmap() -> None:
    for rule in rules(CLUSTERROLE):
        assert not {"secrets", "configmaps"} & set(rule["resources"]), rule


def test_writes_by_name_wherever_rbac_can_say_it() -> None:
    for rule in rules(CLUSTERROLE) + rules(NAMESPACE_CLUSTERROLE):
        named = {"update", "patch", "delete"} & set(rule["verbs"])
        if named and rule["resources"] not in (["modelroutes/status", "providerkeys/status"],
                                               ["modelbudgets/status"]):
            assert rule.get("resourceNames"), rule


def _policy() -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(ADMISSION_POLICY.read_text()) if d]
    assert [d["kind"] for d in docs] == ["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]
    assert docs[1]["spec"] == {"policyName": docs[0]["metadata"]["name"], "validationActions": ["Deny"]}
    return dict(docs[0])


def test_the_admission_policy_names_the_operator_and_refuses_with_403() -> None:
    policy = _policy()
    (condition,) = policy["spec"]["matchConditions"]
    assert condition["expression"] == \
        "request.userInfo.username == 'system:serviceaccount:modelroute-system:modelroute-operator'"
    assert all(v["reason"] == "Forbidden" for v in policy["spec"]["validations"])
    assert policy["spec"]["failurePolicy"] == "Fail"


def test_the_admission_policy_pins_what_the_operator_registers() -> None:
    """The webhook pin is written in CEL against the configuration webhook_configuration builds:
    the opt-in matchCondition verbatim, and the namespace label."""
    (expression,) = [v["expression"] for v in _policy()["spec"]["validations"]
                     if "mutatingwebhookconfigurations" in v["expression"]]
    config = webhook_configuration({"url": "https://127.0.0.1:1/x", "caBundle": ""}, WebhookSettings(
        address=("127.0.0.1", 1)))
    assert config["metadata"]["name"] == names.WEBHOOK_CONFIGURATION
    assert f"object.metadata.name == '{names.WEBHOOK_CONFIGURATION}'" in expression
    hooks = {h["name"]: h for h in config["webhooks"]}
    (pod_condition,) = hooks[names.POD_WEBHOOK]["matchConditions"]
    assert f'"{pod_condition["expression"]}"' in expression
    labelled = hooks[names.NAMESPACE_WEBHOOK]["namespaceSelector"]["matchExpressions"][0]
    assert labelled == {"key": names.INJECTION_NAMESPACE_LABEL, "operator": "In",
                        "values": [names.INJECTION_NAMESPACE_VALUE]}
    assert (f"e.key == '{labelled['key']}'" in expression and "e.operator == 'In'" in expression
            and f"e.values == ['{names.INJECTION_NAMESPACE_VALUE}']" in expression)
    for hook in config["webhooks"]:
        assert [{k: r[k] for k in ("apiGroups", "resources", "operations")} for r in hook["rules"]] == \
            [{"apiGroups": [""], "resources": ["pods"], "operations": ["CREATE"]}]
