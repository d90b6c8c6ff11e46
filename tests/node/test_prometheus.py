"""A real Prometheus scrapes the injected sidecars of real pods.

Prometheus (built from Go modules, tests/prometheus) runs inside the node's network namespace,
where pod IPs route, with deploy/prometheus/scrape-config.yaml as users are told to use it:
Kubernetes service discovery (role pod) reading the API server as a ServiceAccount that may
only get/list/watch pods, and the relabelling on the annotations the webhook injected. It finds
the sidecars, scrapes each once, labels them as the dashboard expects, and after traffic from
inside a pod every query of the Grafana dashboard returns data.
"""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelroute_sidecar.config import DEFAULT_METRICS_PORT
from tests.controlplane.cluster import wait_for
from tests.fakes.openai import FakeOpenAI
from tests.gateway.harness import FAST
from tests.node.conftest import app_pod, exec_python, wait_pod_ready
from tests.node.node import Node, NodeAssets
from tests.node.test_pods import CLIENT
from tests.operator.conftest import (
    Cluster,
    OperatorProcess,
    enable_namespace,
    model_route,
    new_key,
    provider_key,
    secret,
)
from tests.prometheus.dashboard_data import (
    SCRAPE_INTERVAL,
    dashboard_problems,
    requests_in,
    traffic_prometheus_has_seen,
)
from tests.prometheus.server import Prometheus, annotated_pods_job

pytestmark = pytest.mark.node

MONITORING_NS, PROMETHEUS_SA = "monitoring", "prometheus"
APP_NAME = "demo"  # the pods' app.kubernetes.io/name: the series' `app` label
PRIMARY, FALLBACK = ("openai", "gpt-4o-mini"), ("openai-fallback", "gpt-4o")

# One round of traffic from inside the app container, in one `kubectl exec`: the primary
# fails once (the test arms the fake) so the first request fails over; a plain request; a
# stream read to its end; a model no route serves.
ROUND = CLIENT + r"""
def stream(model):
    base = os.environ["OPENAI_BASE_URL"]
    body = {"model": model, "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "stream it"}]}
    req = urllib.request.Request(base + "/chat/completions", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json",
                                          "Authorization": "Bearer " + os.environ["OPENAI_API_KEY"]})
    with urllib.request.urlopen(req, timeout=30) as r:
        return {"status": r.status, "events": r.read().decode().count("data: ")}
out = {"failover": chat("chat", "while the primary fails"), "ok": chat("chat"), "stream": stream("chat"),
       "missing": chat("no-such-model")}
print(json.dumps({k: {"status": v["status"], "backend": v.get("backend"), "events": v.get("events")}
                  for k, v in out.items()}))
"""


def prometheus_rbac() -> list[dict[str, Any]]:
    """What Prometheus needs for role-pod discovery, and nothing more."""
    name = "modelroute-test-prometheus"
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": MONITORING_NS}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": PROMETHEUS_SA, "namespace": MONITORING_NS}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": name},
         "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": PROMETHEUS_SA, "namespace": MONITORING_NS}]},
    ]


@pytest.fixture(scope="module")
def prometheus(node: Node, node_cluster: Cluster, prometheus_binary: Path,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """Prometheus in the node's network namespace (its API published on this side's loopback)."""
    node_cluster.apply(prometheus_rbac())
    kubeconfig = node.control_plane.service_account_kubeconfig(MONITORING_NS, PROMETHEUS_SA)
    config = {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": SCRAPE_INTERVAL},
        "scrape_configs": [annotated_pods_job(kubeconfig)],
    }
    assert node.ns is not None
    with Prometheus(prometheus_binary, tmp_path_factory.mktemp("prometheus"), config,
                    wrap=node.ns.argv, on_port=node.ns.publish) as prom:
        yield prom


class Monitored:
    """A namespace with a failover route to the fake, two injected app pods and a plain one."""

    def __init__(self, namespace: str, injected: list[dict[str, Any]], plain: dict[str, Any]) -> None:
        self.namespace, self.injected, self.plain = namespace, injected, plain


def labelled(p: dict[str, Any]) -> dict[str, Any]:
    p["metadata"]["labels"] = {"app.kubernetes.io/name": APP_NAME}
    return p


@pytest.fixture(scope="module")
def monitored(node_cluster: Cluster, node_operator: OperatorProcess, upstream: FakeOpenAI,
              node_assets: NodeAssets) -> Iterator[Monitored]:
    cluster, namespace, key = node_cluster, f"prom-{uuid.uuid4().hex[:6]}", new_key("prom-")
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    wait_for(lambda: cluster.get("serviceaccount", "default", namespace), timeout=30, what="default SA")
    enable_namespace(cluster, namespace)
    upstream.keys.add(key)
    cluster.apply([
        secret("openai-key", key),
        provider_key(PRIMARY[0], "openai-key", baseURL=upstream.base_url),
        provider_key(FALLBACK[0], "openai-key", baseURL=upstream.base_url),
        model_route("chat", "chat", PRIMARY, FALLBACK, **FAST),
    ], namespace)
    cluster.wait_ready("modelroute", "chat", namespace)
    idle = "import signal; signal.pause()"
    names = ["app-0", "app-1"]
    for name in names:
        cluster.apply(labelled(app_pod(name, node_assets.image, idle)), namespace)
    cluster.apply(labelled(app_pod("plain", node_assets.image, idle, inject=False)), namespace)
    injected = [wait_pod_ready(cluster, name, namespace) for name in names]
    plain = wait_pod_ready(cluster, "plain", namespace)
    yield Monitored(namespace, injected, plain)
    cluster.kubectl("delete", "namespace", namespace, "--wait=false")


def metrics_url(p: dict[str, Any]) -> str:
    return f"http://{p['status']['podIP']}:{DEFAULT_METRICS_PORT}/metrics"


def targets_of(prom: Prometheus, namespace: str) -> list[dict[str, Any]]:
    return [t for t in prom.active_targets() if t["labels"].get("namespace") == namespace]


def test_prometheus_finds_each_injected_sidecar_once_by_its_annotations(
        prometheus: Prometheus, monitored: Monitored) -> None:
    ns = monitored.namespace
    want = {p["metadata"]["name"]: metrics_url(p) for p in monitored.injected}

    def all_up() -> list[dict[str, Any]] | None:
        found = targets_of(prometheus, ns)
        up = {t["labels"]["pod"] for t in found if t["health"] == "up"}
        return found if up >= set(want) else None

    found = wait_for(all_up, timeout=60, interval=0.5, what=f"prometheus to scrape the sidecars in {ns}",
                     on_timeout=lambda: f"\n{json.dumps(targets_of(prometheus, ns), indent=1)}\n{prometheus.logs(30)}")
    assert found is not None
    # One target per injected pod (discovery yields one per container port; relabelled to
    # the annotated port they are one), on the annotated port and path; the plain pod is none.
    assert sorted(t["labels"]["pod"] for t in found) == sorted(want), found
    for t in found:
        assert t["scrapeUrl"] == want[t["labels"]["pod"]], t
        assert t["labels"]["app"] == APP_NAME and t["labels"]["job"] == "kubernetes-pods", t
        assert t["discoveredLabels"]["__meta_kubernetes_pod_annotation_prometheus_io_scrape"] == "true"
    # And what it scraped is the sidecar's own exposition, labelled for the dashboard.
    series = prometheus.query(f'modelroute_config_reloads_total{{namespace="{ns}"}}')
    assert {s["metric"]["pod"] for s in series} == set(want), series


async def test_every_dashboard_query_returns_data_from_real_pods(
        prometheus: Prometheus, monitored: Monitored, node: Node, node_cluster: Cluster,
        upstream: FakeOpenAI) -> None:
    ns = monitored.namespace
    app = monitored.injected[0]
    assert node.ns is not None
    ns_call = node.ns.call

    async def one_round() -> None:
        upstream.faults.fail_next(1, 503)
        out = exec_python(node_cluster, app["metadata"]["name"], ns, ROUND)
        assert out["failover"] == {"status": 200, "backend": "/".join(FALLBACK), "events": None}, out
        assert out["ok"]["status"] == 200 and out["ok"]["backend"] == "/".join(PRIMARY), out
        assert out["stream"]["status"] == 200 and out["stream"]["events"] > 2, out
        assert out["missing"]["status"] == 404, out

    async def sidecar_requests() -> float:
        def fetch() -> str:
            with urllib.request.urlopen(metrics_url(app), timeout=5) as r:
                return str(r.read().decode())
        return requests_in(ns_call(fetch))

    await traffic_prometheus_has_seen(prometheus, ns, rounds=2, send=one_round, sidecar_requests=sidecar_requests)
    problems = dashboard_problems(prometheus, ns, want={
        "namespace": {ns}, "route": {"chat"}, "provider": {"openai"}, "model": {PRIMARY[1], FALLBACK[1]}})
    assert not problems, "\n".join(problems)
