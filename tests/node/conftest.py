"""Fixtures for tests on real pods: the operator (a process inside the node's network
namespace, where the API server calls its webhook), a fake OpenAI upstream the pods reach
on the node's address, and pods built from the modelroute image.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.controlplane.cluster import wait_for
from tests.fakes.openai import FakeOpenAI
from tests.node.node import NODE_IP, Node, NodeAssets
from tests.operator.conftest import (
    CRDS,
    OPERATOR_NS,
    OPERATOR_SA,
    Cluster,
    OperatorProcess,
    bind_operator_account,
    enable_namespace,
)

APP = "app"


@pytest.fixture(scope="session")
def node_cluster(node: Node) -> Cluster:
    return Cluster(node.control_plane)


@pytest.fixture(scope="session")
def node_operator(
    node: Node, node_assets: NodeAssets, node_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """`python -m modelroute_operator` as a ServiceAccount bound to deploy/clusterrole.yaml
    (and, per namespace, deploy/namespace-clusterrole.yaml: `new_pod_namespace`), under
    deploy/admission-policy.yaml, injecting the built image; started inside the node's
    network namespace."""
    cluster = node_cluster
    cluster.kubectl("apply", "-f", str(CRDS))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    "crd/modelroutes.modelroute.dev", "crd/providerkeys.modelroute.dev",
                    "crd/modelbudgets.modelroute.dev")
    role = bind_operator_account(cluster)
    kubeconfig = node.control_plane.service_account_kubeconfig(OPERATOR_NS, OPERATOR_SA)
    op = OperatorProcess(kubeconfig, tmp_path_factory.mktemp("node-operator") / "operator.log", cluster,
                         "--webhook-owner-clusterrole", role,
                         "--sidecar-image", node_assets.image, "--sidecar-image-pull-policy", "Never")
    start_operator(node, op)
    try:
        yield op
    finally:
        op.stop()


def start_operator(node: Node, op: OperatorProcess) -> None:
    """(Re)start the operator inside the node's network namespace."""
    assert node.ns is not None
    node.ns.call(op.start)


@pytest.fixture(scope="session")
def upstream(node: Node) -> Iterator[FakeOpenAI]:
    """A fake OpenAI listening on the node's address: pods reach it over the bridge."""
    fake = FakeOpenAI(keys=[])
    fake.host = NODE_IP
    assert node.ns is not None
    node.ns.call(fake.start_in_thread)
    try:
        yield fake
    finally:
        fake.stop()


def new_pod_namespace(cluster: Cluster, name: str) -> str:
    """A namespace the operator is enabled in, whose `default` ServiceAccount exists (pods
    need it to be admitted)."""
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    enable_namespace(cluster, name)
    wait_for(lambda: cluster.get("serviceaccount", "default", name), timeout=30,
             what=f"ServiceAccount default in {name}")
    return name


@pytest.fixture
def pod_namespace(node_cluster: Cluster, node_operator: OperatorProcess,
                  request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"n-{request.node.name[:30].lower().replace('_', '-').strip('-')}-{uuid.uuid4().hex[:5]}"
    name = new_pod_namespace(node_cluster, "".join(c for c in name if c.isalnum() or c == "-"))
    yield name
    node_cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")


# --- pods ------------------------------------------------------------------------------------


def app_pod(name: str, image: str, script: str, *, inject: bool = True) -> dict[str, Any]:
    """A pod whose app container runs `python3 -c script` from the modelroute image, locked
    down as the sidecar is (non-root, read-only root file system)."""
    annotations = {"modelroute.dev/inject": "true"} if inject else {}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations},
        "spec": app_pod_spec(image, script),
    }


def app_pod_spec(image: str, script: str) -> dict[str, Any]:
    return {
        "terminationGracePeriodSeconds": 1,
        "containers": [{
            "name": APP,
            "image": image,
            "imagePullPolicy": "Never",
            "command": ["python3", "-c", script],
            "securityContext": {
                "runAsNonRoot": True,
                "readOnlyRootFilesystem": True,
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
            },
            "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
        }],
        "volumes": [{"name": "scratch", "emptyDir": {}}],
    }


def pod(cluster: Cluster, name: str, namespace: str) -> dict[str, Any]:
    found = cluster.get("pod", name, namespace)
    assert found is not None, f"pod {namespace}/{name} is gone"
    return found


def condition(obj: dict[str, Any], kind: str) -> str | None:
    for c in obj.get("status", {}).get("conditions") or []:
        if c.get("type") == kind:
            return str(c.get("status"))
    return None


def wait_pod_ready(cluster: Cluster, name: str, namespace: str, timeout: float = 120) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        p = pod(cluster, name, namespace)
        return p if condition(p, "Ready") == "True" else None

    found = wait_for(ready, timeout=timeout, interval=0.5, what=f"pod {namespace}/{name} Ready",
                     on_timeout=lambda: "\n" + cluster.kubectl("describe", "pod", name, "-n", namespace,
                                                               check=False).stdout[-3000:])
    assert found is not None
    return found


def exec_python(cluster: Cluster, name: str, namespace: str, script: str, container: str = APP,
                timeout: float = 120) -> Any:
    """Run `python3 -c script` in a container with `kubectl exec`; its stdout, parsed as JSON."""
    result = cluster.kubectl("exec", name, "-n", namespace, "-c", container, "--", "python3", "-c", script)
    return json.loads(result.stdout)


def exec_in_background(node: Node, name: str, namespace: str, script: str, log: Path) -> subprocess.Popen[str]:
    """`kubectl exec ... python3 -c script` left running; its stdout goes to `log`."""
    cp = node.control_plane
    argv = [str(cp.bin_dir / "kubectl"), "--kubeconfig", str(cp.kubeconfig), "exec", name, "-n", namespace,
            "-c", APP, "--", "python3", "-c", script]
    with log.open("w") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, text=True, env=cp.env)
