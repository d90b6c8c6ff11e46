"""A namespace whose config cannot be written says so on its objects and in an Event (issue 9,
class 13): Ready=False, reason ConfigWriteFailed, the API server's reason in the message (never a
key), while other namespaces carry on; once the obstacle goes, the namespace recovers. The
obstacles: an object of that name the operator does not manage, an admission policy, a quota."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.controlplane.cluster import wait_for
from tests.operator.conftest import (
    KEY_MARK,
    Cluster,
    OperatorProcess,
    model_route,
    new_key,
    new_namespace,
    provider_key,
    secret,
)

pytestmark = pytest.mark.controlplane

REASON = "ConfigWriteFailed"


def sources(tag: str) -> list[dict[str, Any]]:
    return [secret("k", new_key(tag)), provider_key("openai", "k"), model_route("chat", "chat", "openai")]


def ready_message(cluster: Cluster, kind: str, name: str, namespace: str) -> str:
    return str((cluster.ready(kind, name, namespace) or {}).get("message"))


def failure_events(cluster: Cluster, namespace: str) -> dict[str, dict[str, Any]]:
    return {e["involvedObject"]["name"]: e for e in cluster.events(namespace)
            if e.get("reason") == REASON and e.get("type") == "Warning"}


def assert_reported(cluster: Cluster, namespace: str, says: str) -> None:
    """Both sources Ready=False ConfigWriteFailed saying ``says``, with one Warning Event each."""
    for kind, name in (("providerkey", "openai"), ("modelroute", "chat")):
        cluster.wait_ready(kind, name, namespace, status="False", reason=REASON)
        message = ready_message(cluster, kind, name, namespace)
        assert says in message and KEY_MARK not in message, message
    events = wait_for(lambda: (lambda found: found if set(found) == {"openai", "chat"} else None)(
        failure_events(cluster, namespace)), timeout=30, what="a ConfigWriteFailed Event on each object")
    assert events is not None
    assert all(says in e["message"] and KEY_MARK not in e["message"] for e in events.values())


@pytest.fixture
def healthy(cluster: Cluster, operator: OperatorProcess, namespace: str) -> Callable[[], None]:
    """Another namespace, compiled meanwhile: the failing one holds nothing up."""
    cluster.apply(sources("healthy"), namespace)

    def check() -> None:
        cluster.wait_ready("modelroute", "chat", namespace)
        assert cluster.get("secret", "modelroute-keys", namespace) is not None
    return check


@pytest.fixture
def failing(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    ns = new_namespace(cluster, request)
    yield ns
    cluster.kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found")


def test_a_conflicting_configmap_not_ours_is_reported_and_left_alone(
        cluster: Cluster, operator: OperatorProcess, failing: str, healthy: Callable[[], None]) -> None:
    foreign = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "modelroute-config"},
               "data": {"owner": "someone else"}}
    cluster.apply(foreign, failing)
    cluster.apply(sources("conflict"), failing)
    assert_reported(cluster, failing, "not manage")
    healthy()
    cm = cluster.get("configmap", "modelroute-config", failing)
    assert cm is not None and cm["data"] == {"owner": "someone else"}, "someone else's object is never taken over"

    cluster.delete("configmap", "modelroute-config", failing)
    cluster.wait_ready("modelroute", "chat", failing, timeout=90)
    cluster.wait_ready("providerkey", "openai", failing)
    cm = cluster.get("configmap", "modelroute-config", failing)
    assert cm is not None and "config.json" in cm["data"]


def test_an_admission_denial_is_reported(cluster: Cluster, operator: OperatorProcess, failing: str,
                                         healthy: Callable[[], None]) -> None:
    """A cluster policy (as a platform team would have) refuses the operator's ConfigMap there."""
    policy = f"no-configmaps-{failing}"
    cluster.apply([
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
         "metadata": {"name": policy},
         "spec": {"failurePolicy": "Fail",
                  "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                                                          "resources": ["configmaps"],
                                                          "operations": ["CREATE", "UPDATE"]}]},
                  "validations": [{"expression": "has(object.metadata.labels) && 'team' in object.metadata.labels",
                                   "message": "every ConfigMap here needs a team label"}]}},
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
         "metadata": {"name": policy},
         "spec": {"policyName": policy, "validationActions": ["Deny"],
                  "matchResources": {"namespaceSelector": {"matchLabels": {
                      "kubernetes.io/metadata.name": failing}}}}},
    ])
    try:
        # The policy is in force once it refuses the admin too.
        probe = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "probe"}}
        wait_for(lambda: cluster.apply(probe, failing, check=False, dry_run=True).returncode != 0, timeout=30,
                 what="the admission policy in force")
        cluster.apply(sources("denied"), failing)
        assert_reported(cluster, failing, "every ConfigMap here needs a team label")
        healthy()
        assert cluster.get("configmap", "modelroute-config", failing) is None
    finally:
        cluster.kubectl("delete", "validatingadmissionpolicybinding", policy, "--ignore-not-found")
        cluster.kubectl("delete", "validatingadmissionpolicy", policy, "--ignore-not-found")
    cluster.wait_ready("modelroute", "chat", failing, timeout=90)
    # Recovered: a Normal Event says so, and the failure was posted once, not on every retry.
    assert len([e for e in cluster.events(failing) if e.get("reason") == REASON
                and e["involvedObject"]["name"] == "chat"]) == 1
    text = json.dumps(cluster.events(failing)) + operator.logs()
    assert KEY_MARK + "denied" not in text


def test_a_quota_is_reported(cluster: Cluster, operator: OperatorProcess, failing: str,
                             healthy: Callable[[], None]) -> None:
    """No room for another ConfigMap (kube-root-ca.crt is the one there)."""
    cluster.apply({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "tight"},
                   "spec": {"hard": {"count/configmaps": "1"}}}, failing)
    wait_for(lambda: ((cluster.get("resourcequota", "tight", failing) or {}).get("status") or {})
             .get("used", {}).get("count/configmaps") == "1", timeout=60, what="the quota's usage counted")
    cluster.apply(sources("quota"), failing)
    assert_reported(cluster, failing, "exceeded quota: tight")
    healthy()
    assert cluster.get("configmap", "modelroute-config", failing) is None

    cluster.kubectl("patch", "resourcequota", "tight", "-n", failing, "--type=merge",
                    "-p", '{"spec": {"hard": {"count/configmaps": "2"}}}')
    cluster.wait_ready("modelroute", "chat", failing, timeout=90)
    assert cluster.get("configmap", "modelroute-config", failing) is not None
