"""The chart on a real API server: server-side dry run, install, upgrade with monitoring and
cert-manager, back to defaults, uninstall. No kubelet runs here: Deployments are stored,
their pods never start, so nothing waits for readiness."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.chart.chart import (
    CHART,
    CRDS,
    DASHBOARD,
    EVERYTHING,
    TEST_CRDS,
    apply_crds,
    clusterrole_rules,
    ensure_namespace,
    exists,
    get_json,
    operator_container,
    unique,
    values_args,
)
from tests.controlplane.cluster import ControlPlane, wait_for


@pytest.fixture(scope="module")
def crds(control_plane: ControlPlane) -> None:
    """modelroute's CRDs, minimal Prometheus Operator and cert-manager ones, and the namespaces
    EVERYTHING serves (the chart binds the operator's namespace role in each)."""
    apply_crds(control_plane, *sorted(CRDS.glob("*.yaml")), *sorted(TEST_CRDS.glob("*.yaml")))
    for ns in EVERYTHING["operator"]["watchNamespaces"]:
        ensure_namespace(control_plane, ns)


@pytest.mark.parametrize("values", [None, EVERYTHING], ids=["default", "everything"])
def test_rendered_chart_passes_server_side_dry_run(control_plane: ControlPlane, crds: None, tmp_path: Path,
                                                   values: dict[str, Any] | None) -> None:
    ns = unique("mr-dry")
    ensure_namespace(control_plane, ns)
    rendered = control_plane.helm("template", ns, str(CHART), "--namespace", ns, *values_args(tmp_path, values)).stdout
    # Every namespaced object names its namespace (the RoleBindings are in the served namespaces).
    out = control_plane.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", "-", input=rendered).stdout
    assert f"deployment.apps/{ns}-modelroute-operator created (server dry run)" in out, out
    if values:
        assert "podmonitor.monitoring.coreos.com" in out and "certificate.cert-manager.io" in out, out
    # A dry run stores nothing.
    assert not exists(control_plane, "deployment", "-n", ns, f"{ns}-modelroute-operator")


def test_install_upgrade_and_uninstall(control_plane: ControlPlane, crds: None, tmp_path: Path) -> None:
    cp = control_plane
    ns = unique("mr-install")
    # A release name with "modelroute" in it names objects <release>-operator, <release>-webhook...
    # (not "modelroute" itself: the operator's tests bind deploy/clusterrole.yaml under that name).
    release = unique("modelroute")
    name = f"{release}-operator"

    # -- install, default values
    out = cp.helm("install", release, str(CHART), "--namespace", ns, "--create-namespace").stdout
    assert "STATUS: deployed" in out
    assert "modelroute.dev/inject" in out and "kubectl label namespace" in out, "NOTES tell the next step"
    assert (f"kubectl -n demo create rolebinding {name} --clusterrole={name}-namespace "
            f"--serviceaccount={ns}:{name}") in out, "NOTES tell how to enable a namespace"
    assert "garbage collector then deletes the configuration" in out, "NOTES tell what uninstall does"
    deployment = get_json(cp, "deployment", "-n", ns, name)
    c = operator_container(deployment)
    assert c["image"] == "ghcr.io/modelroute/modelroute:0.1.0"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == name
    assert get_json(cp, "serviceaccount", "-n", ns, name)["metadata"]["labels"]["app.kubernetes.io/instance"] == release
    role = get_json(cp, "clusterrole", name)
    assert role["rules"] == clusterrole_rules(name)
    binding = get_json(cp, "clusterrolebinding", name)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": ns}]
    assert exists(cp, "clusterrole", f"{name}-namespace") and exists(cp, "validatingadmissionpolicy", name)
    service = get_json(cp, "service", "-n", ns, f"{release}-webhook")
    assert service["spec"]["ports"][0]["port"] == 443 and service["spec"]["ports"][0]["targetPort"] == "webhook"
    for crd in ("modelroutes.modelroute.dev", "providerkeys.modelroute.dev", "modelbudgets.modelroute.dev"):
        assert exists(cp, "crd", crd)
    assert get_json(cp, "podmonitors", "-n", ns)["items"] == []
    # helm can tell the user how it went.
    status = json.loads(cp.helm("status", release, "--namespace", ns, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed" and status["version"] == 1

    # -- upgrade: monitoring, dashboard, cert-manager, two replicas, another image
    out = cp.helm("upgrade", release, str(CHART), "--namespace", ns, *values_args(tmp_path, EVERYTHING)).stdout
    assert f"ServiceMonitor {ns}/{name} scrapes the operator" in out
    deployment = get_json(cp, "deployment", "-n", ns, name)
    assert deployment["spec"]["replicas"] == 2
    args = operator_container(deployment)["args"]
    assert "--sidecar-image=registry.example.com/modelroute-sidecar:9.9.9" in args
    assert "--namespace=team-a" in args and "--failure-policy=Ignore" in args
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["webhook-certs"]["secret"]["secretName"] == f"{release}-webhook-tls"
    pm = get_json(cp, "podmonitor", "-n", ns, f"{release}-sidecars")
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "mr-metrics"
    assert pm["spec"]["podMetricsEndpoints"][0]["interval"] == "15s"
    assert pm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    sm = get_json(cp, "servicemonitor", "-n", ns, name)
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    cm = get_json(cp, "configmap", "-n", ns, f"{release}-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["modelroute.json"]) == json.loads(DASHBOARD.read_text())
    cert = get_json(cp, "certificate", "-n", ns, f"{release}-webhook")
    assert cert["spec"]["secretName"] == f"{release}-webhook-tls"
    assert f"{release}-webhook.{ns}.svc" in cert["spec"]["dnsNames"]
    assert exists(cp, "issuer", "-n", ns, f"{release}-webhook-ca")
    for served in EVERYTHING["operator"]["watchNamespaces"]:
        assert get_json(cp, "rolebinding", "-n", served, name)["roleRef"]["name"] == f"{name}-namespace"

    # -- upgrade back to the defaults: the optional objects go away
    cp.helm("upgrade", release, str(CHART), "--namespace", ns, "--reset-values")
    assert get_json(cp, "deployment", "-n", ns, name)["spec"]["replicas"] == 1
    for kind, obj in (("podmonitor", f"{release}-sidecars"), ("servicemonitor", name),
                      ("configmap", f"{release}-dashboard"), ("certificate", f"{release}-webhook"),
                      ("service", f"{name}-metrics")):
        assert not exists(cp, kind, "-n", ns, obj), f"{kind}/{obj} outlived the upgrade"
    assert not exists(cp, "rolebinding", "-n", "team-a", name)
    status = json.loads(cp.helm("status", release, "--namespace", ns, "-o", "json").stdout)
    assert status["version"] == 3

    # -- uninstall: the release's objects go, the CRDs (and users' resources) stay
    cp.helm("uninstall", release, "--namespace", ns, "--wait", "--timeout", "60s")
    owned = [("deployment", "-n", ns, name), ("clusterrole", name), ("clusterrolebinding", name),
             ("service", "-n", ns, f"{release}-webhook"), ("clusterrole", f"{name}-namespace"),
             ("validatingadmissionpolicy", name), ("validatingadmissionpolicybinding", name)]

    def all_gone() -> bool:
        return not any(exists(cp, *a) for a in owned)

    wait_for(all_gone, timeout=30, what="the release's objects to be deleted")
    assert exists(cp, "crd", "modelroutes.modelroute.dev")

