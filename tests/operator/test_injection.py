"""Sidecar injection through the real admission path: the API server calls the
operator's webhook (HTTPS, its own CA) and stores what it answers."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from modelroute_operator import names
from tests.controlplane.cluster import wait_for
from tests.operator.conftest import IMAGE, Cluster, OperatorProcess

pytestmark = pytest.mark.controlplane


def pod(name: str, annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, **({"annotations": annotations} if annotations else {})},
        "spec": {"containers": [{"name": "app", "image": "app:1"}], **spec},
    }


def create(cluster: Cluster, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    cluster.apply(body, namespace)
    stored = cluster.get("pod", body["metadata"]["name"], namespace)
    assert stored is not None
    return stored


def sidecars(p: dict[str, Any]) -> list[dict[str, Any]]:
    spec = p["spec"]
    return [c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == names.SIDECAR_CONTAINER]


def env_of(c: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in c.get("env", [])}


INJECT = {names.INJECT_ANNOTATION: "true"}


def test_an_annotated_pod_is_stored_with_the_sidecar_volumes_and_env(
        cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    stored = create(cluster, namespace, pod("app", INJECT))
    [side] = sidecars(stored)
    # The control plane is 1.37: a native sidecar, first of the init containers.
    assert stored["spec"]["initContainers"][0]["name"] == names.SIDECAR_CONTAINER
    assert side["restartPolicy"] == "Always"
    assert side["image"] == IMAGE
    assert side["args"] == ["sidecar", "--config-dir", "/etc/modelroute", "--port", "8700", "--metrics-port", "8701"]
    assert side["readinessProbe"]["httpGet"]["port"] == 8701
    assert side["securityContext"]["readOnlyRootFilesystem"] is True
    vols = {v["name"]: v for v in stored["spec"]["volumes"]}
    assert vols["modelroute-config"]["configMap"]["name"] == "modelroute-config"
    assert vols["modelroute-config"]["configMap"]["optional"] is True
    assert vols["modelroute-keys"]["secret"]["secretName"] == "modelroute-keys"
    assert vols["modelroute-keys"]["secret"]["optional"] is True
    # The lease server's URL, CA and the pod's token for it (audience modelroute), the sidecar's alone.
    assert vols["modelroute-token"]["projected"]["sources"] == [{"serviceAccountToken": {
        "audience": "modelroute", "expirationSeconds": 3600, "path": "token"}}]
    assert env_of(side)["MODELROUTE_BUDGET_URL"] == f"https://127.0.0.1:{operator.budget_port}"
    assert env_of(side)["MODELROUTE_BUDGET_CA"] == "/etc/modelroute/config/budget-ca.crt"
    [app] = stored["spec"]["containers"]
    assert env_of(app) == {
        "OPENAI_BASE_URL": "http://127.0.0.1:8700/v1", "OPENAI_API_KEY": "modelroute-placeholder",
        "ANTHROPIC_BASE_URL": "http://127.0.0.1:8700", "ANTHROPIC_API_KEY": "modelroute-placeholder",
    }
    assert "volumeMounts" not in app  # the keys are the sidecar's alone
    ann = stored["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/port"] == "8701"
    assert ann[names.INJECTED_ANNOTATION] == "true"


def test_the_sidecar_gets_the_pods_service_account(cluster: Cluster, operator: OperatorProcess,
                                                   namespace: str) -> None:
    cluster.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "robot"}}, namespace)
    robot = create(cluster, namespace, pod("robot", INJECT, serviceAccountName="robot"))
    plain = create(cluster, namespace, pod("plain", INJECT))
    for stored, account in ((robot, "robot"), (plain, "default")):
        [side] = sidecars(stored)
        assert env_of(side)["MODELROUTE_SERVICE_ACCOUNT"] == account
        [ns] = [e for e in side["env"] if e["name"] == "MODELROUTE_NAMESPACE"]
        assert ns["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
        [app] = stored["spec"]["containers"]
        assert "MODELROUTE_SERVICE_ACCOUNT" not in env_of(app)


def test_an_unannotated_pod_is_untouched(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    stored = create(cluster, namespace, pod("plain", {"unrelated": "x"}))
    assert sidecars(stored) == []
    assert "env" not in stored["spec"]["containers"][0]
    assert names.INJECTED_ANNOTATION not in stored["metadata"]["annotations"]
    # An annotation value other than "true" does not opt in either.
    assert sidecars(create(cluster, namespace, pod("yes", {names.INJECT_ANNOTATION: "yes"}))) == []


def test_a_labelled_namespace_injects_and_a_pod_can_opt_out(
        cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    cluster.kubectl("label", "namespace", namespace, f"{names.INJECTION_NAMESPACE_LABEL}=enabled")
    assert len(sidecars(create(cluster, namespace, pod("any")))) == 1
    assert len(sidecars(create(cluster, namespace, pod("explicit", INJECT)))) == 1
    opted_out = create(cluster, namespace, pod("out", {names.INJECT_ANNOTATION: "false"}))
    assert sidecars(opted_out) == []
    assert "env" not in opted_out["spec"]["containers"][0]


def test_mutating_twice_changes_nothing(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    """An injected pod, admitted again (its stored body under a new name), comes back the same."""
    first = create(cluster, namespace, pod("first", INJECT, initContainers=[{"name": "init", "image": "i"}]))
    again = copy.deepcopy(first)
    again["metadata"] = {"name": "second", "annotations": dict(first["metadata"]["annotations"])}
    again.pop("status", None)
    second = create(cluster, namespace, again)
    assert second["spec"] == first["spec"]
    applied = "kubectl.kubernetes.io/last-applied-configuration"  # kubectl's own, differs by name

    def ann(p: dict[str, Any]) -> dict[str, str]:
        return {k: v for k, v in p["metadata"]["annotations"].items() if k != applied}

    assert ann(second) == ann(first)
    assert len(sidecars(second)) == 1


def test_overrides_and_refusals_by_annotation(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    stored = create(cluster, namespace, pod("custom", {**INJECT, names.PORT_ANNOTATION: "9100",
                                                      names.METRICS_PORT_ANNOTATION: "9101",
                                                      names.MEMORY_LIMIT_ANNOTATION: "512Mi",
                                                      names.NATIVE_SIDECAR_ANNOTATION: "false"}))
    [side] = sidecars(stored)
    assert side in stored["spec"]["containers"]  # a regular container, on request
    assert side["args"][-4:] == ["--port", "9100", "--metrics-port", "9101"]
    assert side["resources"]["limits"]["memory"] == "512Mi"
    assert env_of(stored["spec"]["containers"][0])["OPENAI_BASE_URL"] == "http://127.0.0.1:9100/v1"

    refused = cluster.apply(pod("bad", {**INJECT, names.PORT_ANNOTATION: "eighty"}), namespace, check=False)
    assert refused.returncode != 0
    assert "modelroute.dev/port" in refused.stderr and "not a port number" in refused.stderr
    assert cluster.get("pod", "bad", namespace) is None


def test_dry_run_is_injected_too(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    out = cluster.kubectl("create", "-n", namespace, "--dry-run=server", "-o", "json", "-f", "-",
                          input=json.dumps(pod("dry", INJECT))).stdout
    assert names.SIDECAR_CONTAINER in out
    assert cluster.get("pod", "dry", namespace) is None


def test_unrelated_pods_never_wait_on_the_operator(cluster: Cluster, operator: OperatorProcess,
                                                   namespace: str) -> None:
    """With the operator gone (killed: its webhook configuration stays), pods that did not opt
    in are admitted as usual, while an opted-in pod is refused (failurePolicy Fail) rather
    than started without its gateway; its controller would retry until the operator is back."""
    hook = cluster.get("mutatingwebhookconfiguration", names.WEBHOOK_CONFIGURATION)
    assert hook is not None and {w["failurePolicy"] for w in hook["webhooks"]} == {"Fail"}
    operator.kill()
    try:
        stored = create(cluster, namespace, pod("unrelated"))
        assert sidecars(stored) == []
        refused = cluster.apply(pod("wants-it", INJECT), namespace, check=False)
        assert refused.returncode != 0 and "modelroute.dev" in refused.stderr, refused.stderr
    finally:
        operator.start()
    wait_for(lambda: cluster.apply(pod("wants-it", INJECT), namespace, check=False).returncode == 0,
             timeout=30, what="the pod to be admitted once the operator is back")
    assert len(sidecars(cluster.get("pod", "wants-it", namespace) or {"spec": {"containers": []}})) == 1
