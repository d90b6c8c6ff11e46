"""The operator as the chart runs it: the chart's arguments, authenticated as the ServiceAccount
the chart created, bound by the chart's ClusterRole. It registers the webhook for the chart's
Service, answers on the liveness path the probes ask, compiles a namespace, and injects the
sidecar the chart configured into the example app's pod.

No kubelet and no Service routing here, so two adjustments, each stated where it is made:
the webhook listens on loopback (and, for the injection, is registered by URL), and the
certificate directory and liveness port are a temporary directory and a free port."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelroute_operator import names
from tests.chart.chart import CHART, EXAMPLES, get_json, operator_container, unique, values_args
from tests.controlplane.cluster import ControlPlane, free_port, wait_for
from tests.operator.conftest import WEBHOOK_CONFIG, Cluster, OperatorProcess, enable_namespace, rbac_denials
from tests.operator.conftest import webhook_config_restored as webhook_config_restored  # a fixture

SIDECAR_IMAGE = "registry.example.com/chart-sidecar:rbac-test"
SIDECAR_PORT, SIDECAR_METRICS_PORT = 9700, 9711  # not the defaults (8700, 8701)
VALUES = {"sidecar": {"image": {"repository": "registry.example.com/chart-sidecar", "tag": "rbac-test"},
                      "resources": {"requests": {"cpu": "25m", "memory": "48Mi"}, "limits": {"memory": "200Mi"}},
                      "port": SIDECAR_PORT, "metricsPort": SIDECAR_METRICS_PORT}}
# Arguments that only make sense inside the pod (a Service, its port, a mounted directory).
IN_POD_ONLY = ("--webhook-service=", "--webhook-listen=", "--webhook-service-port=", "--webhook-cert-dir=",
               "--liveness=", "--metrics-listen=")


@pytest.fixture
def release(control_plane: ControlPlane, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """The chart installed (non-default sidecar values); (namespace, release)."""
    ns, rel = unique("mr-op"), unique("modelroute")
    control_plane.helm("install", rel, str(CHART), "--namespace", ns, "--create-namespace",
                       *values_args(tmp_path, VALUES))
    try:
        yield ns, rel
    finally:
        control_plane.helm("uninstall", rel, "--namespace", ns, check=False)
        control_plane.kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found")


def deployed_args(cp: ControlPlane, ns: str, rel: str) -> list[str]:
    deployment = get_json(cp, "deployment", "-n", ns, f"{rel}-operator")
    args: list[str] = operator_container(deployment)["args"]
    assert args[0] == "operator"
    return args[1:]


def webhooks_of(config: dict[str, Any] | None) -> list[dict[str, Any]]:
    return list((config or {}).get("webhooks") or [])


def test_chart_args_register_the_webhook_for_the_charts_service_and_uninstall_removes_it(
        control_plane: ControlPlane, release: tuple[str, str], webhook_config_restored: None,
        tmp_path: Path) -> None:
    cp, (ns, rel) = control_plane, release
    cluster = Cluster(cp)
    args = deployed_args(cp, ns, rel)
    service = get_json(cp, "service", "-n", ns, f"{rel}-webhook")
    assert f"--webhook-service={rel}-webhook.{ns}" in args
    # Adjustments for a process outside the pod: loopback listener, temp cert dir, free health and
    # metrics ports.
    health, webhook_port, metrics_port = free_port(), free_port(), free_port()
    cert_dir = tmp_path / "webhook-certs"
    argv = [a for a in args if not a.startswith(("--webhook-listen=", "--webhook-cert-dir=", "--liveness=",
                                                 "--metrics-listen="))]
    argv += [f"--webhook-listen=127.0.0.1:{webhook_port}", f"--webhook-cert-dir={cert_dir}",
             f"--liveness=http://127.0.0.1:{health}/healthz", f"--metrics-listen=127.0.0.1:{metrics_port}"]
    kubeconfig = cp.service_account_kubeconfig(ns, f"{rel}-operator")
    log_path = tmp_path / "operator.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "modelroute_sidecar", "operator", *argv], stdout=log,
                                stderr=subprocess.STDOUT, env={**os.environ, "KUBECONFIG": str(kubeconfig)})
    try:
        def registered() -> dict[str, Any] | None:
            if proc.poll() is not None:
                raise AssertionError(f"operator exited {proc.returncode}:\n{log_path.read_text()}")
            config = cluster.get(*WEBHOOK_CONFIG)
            if config and all(w["clientConfig"].get("service", {}).get("namespace") == ns for w in webhooks_of(config)):
                return config
            return None

        config = wait_for(registered, timeout=60, what="the webhook registered for the chart's Service",
                          on_timeout=lambda: "\n" + log_path.read_text()[-4000:])
        ca = base64.b64encode((cert_dir / "ca.crt").read_bytes()).decode()
        for hook in webhooks_of(config):
            assert hook["clientConfig"] == {"service": {
                "name": service["metadata"]["name"], "namespace": ns, "port": service["spec"]["ports"][0]["port"],
                "path": f"/{names.WEBHOOK_HANDLER_ID}"}, "caBundle": ca}
            assert hook["failurePolicy"] == "Fail"
        # Owned by the release's ClusterRole, which the chart lets the operator read.
        role = get_json(cp, "clusterrole", f"{rel}-operator")
        assert config is not None and config["metadata"]["ownerReferences"] == [{
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "name": f"{rel}-operator",
            "uid": role["metadata"]["uid"]}]
        # The path the chart's liveness and startup probes ask answers, and the metrics the ServiceMonitor scrapes.
        wait_for(lambda: ok(f"http://127.0.0.1:{health}/healthz"), timeout=30, what="the liveness endpoint")
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
            assert b"modelroute_operator_reconciles_total" in r.read()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    logs = log_path.read_text()
    assert code == 0, logs[-3000:]
    assert not rbac_denials(logs), rbac_denials(logs)
    # In cluster, a stopping operator keeps the configuration: a rolling update injects throughout.
    assert cluster.get(*WEBHOOK_CONFIG) is not None

    # helm uninstall deletes the ClusterRole; the garbage collector then the webhook configuration,
    # so opted-in pods are not refused (failurePolicy Fail) by a webhook nobody serves.
    cp.helm("uninstall", rel, "--namespace", ns)
    wait_for(lambda: cluster.get(*WEBHOOK_CONFIG) is None, timeout=60,
             what="the garbage collector to delete the webhook configuration after helm uninstall")


def test_operator_under_the_charts_rbac_compiles_and_injects_the_example_app(
        control_plane: ControlPlane, release: tuple[str, str], webhook_config_restored: None,
        tmp_path: Path) -> None:
    cp, (ns, rel) = control_plane, release
    cluster = Cluster(cp)
    # The chart's arguments, but the webhook registered by URL on loopback (the tests' API
    # server cannot reach a Service); the ServiceAccount and its RBAC are the chart's.
    args = [a for a in deployed_args(cp, ns, rel) if not a.startswith(IN_POD_ONLY)]
    assert f"--sidecar-image={SIDECAR_IMAGE}" in args
    op = OperatorProcess(cp.service_account_kubeconfig(ns, f"{rel}-operator"), tmp_path / "operator.log",
                         cluster, *args)
    app_ns = unique("mr-app")
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": app_ns}})
    # The administrator enables the namespace as the chart's NOTES say.
    cp.kubectl("-n", app_ns, "create", "rolebinding", f"{rel}-operator", f"--clusterrole={rel}-operator-namespace",
               f"--serviceaccount={ns}:{rel}-operator")
    # The operator tests' own (cluster-wide) operator may be running in this session too: one
    # cluster has one operator in real life; enabled here as well, the two write the same status.
    enable_namespace(cluster, app_ns)
    op.start()
    try:
        # The example as a user applies it: its placeholder keys replaced (a placeholder is not Ready).
        example = (EXAMPLES / "openai-anthropic-failover.yaml").read_text()
        assert "REPLACE-WITH-YOUR" in example
        cp.kubectl("apply", "-n", app_ns, "-f", "-", input=example.replace("REPLACE-WITH-YOUR", "chart-test"))
        for kind, name in (("providerkey", "openai"), ("providerkey", "anthropic"), ("modelroute", "chat-default"),
                           ("modelroute", "chat-smart")):
            cluster.wait_ready(kind, name, app_ns, timeout=60)
        wait_for(lambda: f"namespace {app_ns}:" in op.logs(), timeout=30, what="this operator's reconcile")
        keys = cluster.get("secret", "modelroute-keys", app_ns)
        assert keys is not None and set(keys["data"]) == {"openai", "anthropic"}
        assert cluster.get("configmap", "modelroute-config", app_ns) is not None

        # The example app's pod, as its Deployment would create it.
        (deployment,) = [d for d in yaml.safe_load_all((EXAMPLES / "app.yaml").read_text())
                         if d and d["kind"] == "Deployment"]
        template = deployment["spec"]["template"]
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "hello-llm-0", **template["metadata"]},
               "spec": template["spec"]}
        cluster.apply(pod, app_ns)
        stored = cluster.get("pod", "hello-llm-0", app_ns)
        assert stored is not None
        sidecar = stored["spec"]["initContainers"][0]
        assert sidecar["name"] == names.SIDECAR_CONTAINER and sidecar["restartPolicy"] == "Always"
        assert sidecar["image"] == SIDECAR_IMAGE
        assert sidecar["resources"] == VALUES["sidecar"]["resources"]
        # The chart's sidecar ports: the sidecar's arguments, its probes, the app's env, the scrape annotation.
        assert sidecar["ports"] == [{"name": names.METRICS_PORT_NAME, "containerPort": SIDECAR_METRICS_PORT,
                                     "protocol": "TCP"}]
        assert sidecar["args"][sidecar["args"].index("--port") + 1] == str(SIDECAR_PORT)
        assert sidecar["args"][sidecar["args"].index("--metrics-port") + 1] == str(SIDECAR_METRICS_PORT)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert sidecar[probe]["httpGet"]["port"] == SIDECAR_METRICS_PORT, probe
        (app,) = stored["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in app["env"]}
        assert env["OPENAI_BASE_URL"] == f"http://127.0.0.1:{SIDECAR_PORT}/v1" and env["MODEL"] == "chat-default"
        assert env["ANTHROPIC_BASE_URL"] == f"http://127.0.0.1:{SIDECAR_PORT}"
        annotations = stored["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(SIDECAR_METRICS_PORT)
        assert annotations["prometheus.io/scrape"] == "true"
    finally:
        code = op.stop()
        cluster.kubectl("delete", "namespace", app_ns, "--wait=false", "--ignore-not-found")
    assert code == 0, op.logs()[-3000:]
    assert not rbac_denials(op.logs()), rbac_denials(op.logs())
    # Out of cluster it removes its webhook configuration on exit: allowed by the chart's RBAC too.
    assert cluster.get(*WEBHOOK_CONFIG) is None, op.logs()[-3000:]


def ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False
