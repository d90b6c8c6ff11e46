"""The chart as users install it: the operator runs in the cluster as the chart's Deployment,
from the built image (already on the node: `image.pullPolicy: Never`), reaches the API server
through the `kubernetes` Service, is called by the API server through the chart's webhook
Service, reconciles a namespace and injects a real pod, whose app then gets answers. `helm
upgrade` rolls it and it still injects; `helm uninstall` leaves nothing of the release behind,
while the users' ModelRoutes and ProviderKeys (and the CRDs) stay, and running apps keep working.

The session's operator process (tests/node/conftest.py) registers the same webhook
configuration name, so it is stopped for this test and started again after it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelroute_operator import names
from tests.chart.chart import CHART
from tests.controlplane.cluster import wait_for
from tests.fakes.openai import FakeOpenAI
from tests.node.conftest import APP, app_pod, exec_python, start_operator, wait_pod_ready
from tests.node.node import Node, NodeAssets
from tests.node.test_pods import CLIENT, configure
from tests.operator.conftest import Cluster, OperatorProcess, new_key

pytestmark = pytest.mark.node

CHAT = CLIENT + r"""
print(json.dumps(chat("chat", "hello from a pod the chart's operator injected")))
"""
IDLE = "import signal; signal.pause()"
# Kinds whose objects are records about others, not objects of the release (Events expire).
RECORDS = {"events", "events.events.k8s.io"}


@pytest.fixture
def no_session_operator(node: Node, node_operator: OperatorProcess) -> Iterator[None]:
    node_operator.stop()
    yield
    start_operator(node, node_operator)


def split_image(ref: str) -> tuple[str, str]:
    repository, _, tag = ref.rpartition(":")
    return repository, tag


def listable_kinds(cluster: Cluster) -> list[str]:
    out = cluster.kubectl("api-resources", "--verbs=list", "-o", "name").stdout.split()
    return sorted(set(out) - RECORDS)


def everything(cluster: Cluster, *selector: str) -> list[dict[str, Any]]:
    """Every object of every listable kind in the cluster (all namespaces), optionally selected."""
    result = cluster.kubectl("get", ",".join(listable_kinds(cluster)), "--all-namespaces", *selector, "-o", "json")
    items: list[dict[str, Any]] = json.loads(result.stdout)["items"]
    return items


def describe(objs: list[dict[str, Any]]) -> list[str]:
    return sorted(f"{o['kind']} {o['metadata'].get('namespace', '')}/{o['metadata']['name']}" for o in objs)


def operator_diagnostics(cluster: Cluster, namespace: str) -> str:
    """The operator pods' state and logs (this run's and the previous container's)."""
    parts = [cluster.kubectl("describe", "pods", "-n", namespace, check=False).stdout[-4000:]]
    for p in cluster.items("pods", namespace):
        for previous in ("--previous=false", "--previous=true"):
            out = cluster.kubectl("logs", p["metadata"]["name"], "-n", namespace, "--all-containers", previous,
                                  "--tail=60", check=False)
            parts.append(f"--- logs {p['metadata']['name']} {previous} ---\n{out.stdout}{out.stderr}")
    return "\n".join(parts)


def helm_wait(cluster: Cluster, ns: str, *args: str) -> None:
    """`helm <args> --wait`; on failure, what the operator's pods say."""
    result = cluster.cp.helm(*args, "-n", ns, "--wait", "--timeout", "180s", check=False)
    assert result.returncode == 0, f"{result.stderr}\n{operator_diagnostics(cluster, ns)}"


def injected_pod_answers(cluster: Cluster, image: str, name: str, namespace: str) -> dict[str, Any]:
    cluster.apply(app_pod(name, image, IDLE), namespace)
    ready = wait_pod_ready(cluster, name, namespace, timeout=180)
    sidecars = [c for c in ready["spec"].get("initContainers", []) if c["name"] == names.SIDECAR_CONTAINER]
    assert [c["image"] for c in sidecars] == [image], ready["spec"]
    answer = exec_python(cluster, name, namespace, CHAT)
    assert answer["status"] == 200, answer
    return ready


def test_the_charts_operator_runs_in_the_cluster_injects_upgrades_and_uninstalls_clean(
        node: Node, node_cluster: Cluster, node_assets: NodeAssets, upstream: FakeOpenAI,
        no_session_operator: None, tmp_path: Path) -> None:
    cluster, cp = node_cluster, node.control_plane
    release, ns = f"mr-{uuid.uuid4().hex[:5]}", f"modelroute-{uuid.uuid4().hex[:5]}"
    repository, tag = split_image(node_assets.image)
    operator = f"{release}-modelroute-operator"
    app_ns = f"chart-app-{uuid.uuid4().hex[:5]}"
    # The app's namespace is enabled by the chart (rbac.namespaces), so it exists first.
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": app_ns}})
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
                                      "sidecar": {"image": {"pullPolicy": "Never"}},
                                      "rbac": {"namespaces": [app_ns]}}))

    # -- install: the operator's pod runs, registers the webhook behind the chart's Service
    helm_wait(cluster, ns, "install", release, str(CHART), "--create-namespace", "-f", str(values))
    deployment = cluster.get("deployment", operator, ns)
    assert deployment is not None and deployment["status"].get("availableReplicas") == 1, deployment
    webhook = wait_for(lambda: cluster.get("mutatingwebhookconfiguration", names.WEBHOOK_CONFIGURATION),
                       timeout=60, what="the operator to register its webhook")
    assert webhook is not None
    service = webhook["webhooks"][0]["clientConfig"]["service"]
    assert (service["namespace"], service["name"]) == (ns, f"{release}-modelroute-webhook"), webhook

    # -- it reconciles a namespace and injects a real pod, whose app gets answers
    wait_for(lambda: cluster.get("serviceaccount", "default", app_ns), timeout=30, what="default SA")
    configure(cluster, app_ns, upstream, new_key("chart-"))
    first = injected_pod_answers(cluster, node_assets.image, "before-upgrade", app_ns)

    # -- upgrade: a new ReplicaSet, a new operator pod, and injection still works
    old_pods = {p["metadata"]["name"] for p in cluster.items("pods", ns)}
    helm_wait(cluster, ns, "upgrade", release, str(CHART), "--reuse-values", "--set", "operator.logLevel=debug")
    running = [p for p in cluster.items("pods", ns)
               if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")]
    assert running and not {p["metadata"]["name"] for p in running} & old_pods, "the upgrade rolled the pod"
    assert "--verbose" in running[0]["spec"]["containers"][0]["args"]
    injected_pod_answers(cluster, node_assets.image, "after-upgrade", app_ns)

    # -- uninstall: nothing of the release is left anywhere
    cp.helm("uninstall", release, "-n", ns, "--wait", "--timeout", "120s")

    def leftovers() -> list[str]:
        labelled = everything(cluster, "-l", f"app.kubernetes.io/instance={release}")
        # What the cluster made for the release (ReplicaSets, pods, EndpointSlices, the
        # webhook configuration the operator registered) carries its name, not its labels.
        named = [o for o in everything(cluster) if release in o["metadata"]["name"]
                 or (o["metadata"]["name"] == names.WEBHOOK_CONFIGURATION
                 and o["kind"] == "MutatingWebhookConfiguration")]
        return describe(labelled + named)

    wait_for(lambda: not leftovers(), timeout=90, interval=1, what=f"everything of release {release} to go",
             on_timeout=lambda: f": left {leftovers()}")
    # The CRDs and the users' resources stay (helm never deletes CRDs; they are the users' data).
    assert cluster.get("crd", "modelroutes.modelroute.dev") and cluster.get("crd", "providerkeys.modelroute.dev")
    assert [r["metadata"]["name"] for r in cluster.items("modelroutes", app_ns)] == ["chat"]
    assert [k["metadata"]["name"] for k in cluster.items("providerkeys", app_ns)] == ["openai"]
    # A running app keeps its sidecar and its answers; a new annotated pod is admitted, uninjected.
    assert exec_python(cluster, first["metadata"]["name"], app_ns, CHAT)["status"] == 200
    cluster.apply(app_pod("after-uninstall", node_assets.image, IDLE), app_ns)
    plain = wait_pod_ready(cluster, "after-uninstall", app_ns)
    assert [c["name"] for c in plain["spec"]["containers"]] == [APP] and not plain["spec"].get("initContainers")
    cluster.kubectl("delete", "namespace", app_ns, ns, "--wait=false")
