"""The chart as helm renders it: lint, one source for CRDs and RBAC, the operator's command line
(parsed by the operator's own parser), security settings, values and their schema."""

from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelroute_operator import names
from modelroute_operator.certs import service_hosts
from modelroute_operator.cli import parser, settings_from_args
from modelroute_operator.settings import InjectionSettings, OperatorSettings
from modelroute_sidecar.config import DEFAULT_METRICS_PORT, DEFAULT_PORT
from tests.chart.chart import (
    ADMISSION_POLICY,
    CHART,
    CLUSTERROLE,
    CRDS,
    DASHBOARD,
    EVERYTHING,
    NAMESPACE_CLUSTERROLE,
    ROOT,
    clusterrole_rules,
    docs_of,
    find,
    kinds,
    operator_container,
    render,
    values_args,
)
from tests.controlplane.cluster import CommandError, ControlPlane, Helm

NS = "modelroute-system"


def operator_settings(deployment: dict[str, Any]) -> OperatorSettings:
    """The settings the operator would run with, from the Deployment's arguments, by its own CLI parser."""
    args = operator_container(deployment)["args"]
    assert args[0] == "operator", args
    return settings_from_args(parser().parse_args(args[1:]))


# --- lint ---------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [None, EVERYTHING], ids=["default", "everything"])
def test_helm_lint_strict(helm: Helm, tmp_path: Path, values: dict[str, Any] | None) -> None:
    out = helm("lint", "--strict", str(CHART), *values_args(tmp_path, values)).stdout
    assert "1 chart(s) linted, 0 chart(s) failed" in out, out


# --- one source of truth ----------------------------------------------------------------------


def test_crds_are_the_repository_crds(helm: Helm, tmp_path: Path) -> None:
    link = CHART / "crds"
    assert link.is_symlink() and link.resolve() == CRDS.resolve(), "charts/modelroute/crds must link to crds/"
    # `helm show crds` joins the files as they are: each starts with `---`, so each is its own document.
    shown = docs_of(helm("show", "crds", str(CHART)).stdout)
    assert [d["kind"] for d in shown] == ["CustomResourceDefinition"] * len(shown)
    sources = [doc for f in sorted(CRDS.glob("*.yaml")) for doc in docs_of(f.read_text())]
    for f in CRDS.glob("*.yaml"):
        assert f.read_text().startswith("---\n"), f"{f.name} must start with ---"
    assert sorted(d["metadata"]["name"] for d in shown) == sorted(d["metadata"]["name"] for d in sources)
    assert sorted(shown, key=lambda d: d["metadata"]["name"]) == sorted(sources, key=lambda d: d["metadata"]["name"])
    # The packaged chart (what users install from a repository) holds the same bytes.
    packaged = packaged_files(helm, tmp_path)
    in_package = {p.removeprefix("modelroute/crds/"): data for p, data in packaged.items()
                  if p.startswith("modelroute/crds/")}
    assert in_package == {f.name: f.read_bytes() for f in CRDS.iterdir() if f.is_file()}


def test_helm_show_crds_applies(control_plane: ControlPlane) -> None:
    """What the docs tell users to do with a packaged chart: the CRDs, and nothing else."""
    shown = control_plane.helm("show", "crds", str(CHART)).stdout
    out = control_plane.kubectl("apply", "--dry-run=server", "-o", "name", "-f", "-", input=shown).stdout
    assert sorted(out.split()) == ["customresourcedefinition.apiextensions.k8s.io/modelbudgets.modelroute.dev",
                                   "customresourcedefinition.apiextensions.k8s.io/modelroutes.modelroute.dev",
                                   "customresourcedefinition.apiextensions.k8s.io/providerkeys.modelroute.dev"], out


def test_clusterrole_is_deploy_clusterrole(helm: Helm, tmp_path: Path) -> None:
    link = CHART / "files" / "clusterrole.yaml"
    assert link.is_symlink() and link.resolve() == CLUSTERROLE.resolve()
    docs = render(helm, tmp_path)
    role = find(docs, "ClusterRole", "mr-modelroute-operator")
    # The rules as written, but the one about the ClusterRole itself names the release's.
    assert role["rules"] == clusterrole_rules("mr-modelroute-operator") != clusterrole_rules()
    assert {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"],
            "resourceNames": ["mr-modelroute-operator"], "verbs": ["get"]} in role["rules"]
    binding = find(docs, "ClusterRoleBinding")
    sa = find(docs, "ServiceAccount")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NS}]
    assert packaged_files(helm, tmp_path)["modelroute/files/clusterrole.yaml"] == CLUSTERROLE.read_bytes()


def test_namespace_role_and_admission_policy_are_deploys(control_plane: ControlPlane, tmp_path: Path) -> None:
    """deploy/namespace-clusterrole.yaml and deploy/admission-policy.yaml as written, with the release's
    names and ServiceAccount; a RoleBinding in each namespace of rbac.namespaces and watchNamespaces."""
    for name, source in (("namespace-clusterrole.yaml", NAMESPACE_CLUSTERROLE), ("admission-policy.yaml",
                                                                                  ADMISSION_POLICY)):
        link = CHART / "files" / name
        assert link.is_symlink() and link.resolve() == source.resolve()
        assert packaged_files(control_plane, tmp_path)[f"modelroute/files/{name}"] == source.read_bytes()
    docs = render(control_plane, tmp_path, {"rbac": {"namespaces": ["team-a", "team-c"]},
                                            "operator": {"watchNamespaces": ["team-a", "team-b"]}})
    sa = find(docs, "ServiceAccount")["metadata"]["name"]
    role = find(docs, "ClusterRole", "mr-modelroute-operator-namespace")
    assert role["rules"] == yaml.safe_load(NAMESPACE_CLUSTERROLE.read_text())["rules"]
    bindings = [d for d in docs if d["kind"] == "RoleBinding"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b", "team-c"]
    for b in bindings:
        assert b["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                "name": role["metadata"]["name"]}
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NS}]

    policy_file, binding_file = (d for d in yaml.safe_load_all(ADMISSION_POLICY.read_text()) if d)
    policy = find(docs, "ValidatingAdmissionPolicy")
    assert policy["metadata"]["name"] == "mr-modelroute-operator"
    assert policy["spec"]["validations"] == policy_file["spec"]["validations"]
    assert policy["spec"]["matchConstraints"] == policy_file["spec"]["matchConstraints"]
    assert policy["spec"]["matchConditions"] == [{
        "name": "the-operator", "expression": f"request.userInfo.username == 'system:serviceaccount:{NS}:{sa}'"}]
    assert find(docs, "ValidatingAdmissionPolicyBinding")["spec"] == {
        **binding_file["spec"], "policyName": policy["metadata"]["name"]}
    # And what the API server makes of them.
    rendered = control_plane.helm("template", "mr", str(CHART), "--namespace", NS).stdout
    out = control_plane.kubectl("apply", "--dry-run=server", "-o", "name", "-f", "-",
                                input=yaml.safe_dump_all([d for d in docs_of(rendered) if d["kind"].startswith(
                                    "ValidatingAdmissionPolicy")])).stdout
    assert sorted(out.split()) == [
        "validatingadmissionpolicy.admissionregistration.k8s.io/mr-modelroute-operator",
        "validatingadmissionpolicybinding.admissionregistration.k8s.io/mr-modelroute-operator"], out
    assert "ValidatingAdmissionPolicy" not in kinds(render(control_plane, tmp_path, {"rbac": {
        "admissionPolicy": False}}))


def test_dashboard_configmap_holds_the_dashboard_file(helm: Helm, tmp_path: Path) -> None:
    docs = render(helm, tmp_path, {"monitoring": {"dashboard": {"enabled": True}}})
    cm = find(docs, "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["modelroute.json"]) == json.loads(DASHBOARD.read_text())


def packaged_files(cp: ControlPlane | Helm, tmp_path: Path) -> dict[str, bytes]:
    out = tmp_path / "package"
    cp.helm("package", str(CHART), "--destination", str(out))
    (tgz,) = out.glob("modelroute-*.tgz")
    with tarfile.open(tgz) as tar:
        files = {}
        for m in tar.getmembers():
            assert not m.issym() and not m.islnk(), f"{m.name} is a link in the package"
            if m.isfile():
                f = tar.extractfile(m)
                assert f is not None
                files[m.name] = f.read()
    return files


# --- the default install ------------------------------------------------------------------------


def test_default_render(helm: Helm, tmp_path: Path) -> None:
    docs = render(helm, tmp_path)
    assert kinds(docs) == ["ClusterRole", "ClusterRole", "ClusterRoleBinding", "Deployment", "Service",
                           "ServiceAccount", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]
    deployment = find(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 1
    assert pod["serviceAccountName"] == find(docs, "ServiceAccount")["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert deployment["spec"]["template"]["metadata"]["annotations"][names.INJECT_ANNOTATION] == "false"
    c = operator_container(deployment)
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["runAsNonRoot"] is True and isinstance(sc["runAsUser"], int) and sc["runAsUser"] > 0
    assert c["image"] == "ghcr.io/modelroute/modelroute:0.1.0"
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert probe in c, probe
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["readinessProbe"]["tcpSocket"] == {"port": "webhook"}
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert "/tmp" in mounts  # a writable /tmp under a read-only root

    settings = operator_settings(deployment)
    # The liveness endpoint the probes ask is the one the operator serves; so is the metrics port.
    assert settings.liveness_endpoint == f"http://0.0.0.0:{ports['health']}/healthz"
    assert settings.metrics_listen == ("0.0.0.0", ports["metrics"])
    # The webhook configuration belongs to the release's ClusterRole: uninstalling removes it.
    assert settings.webhook.owner_clusterrole == find(docs, "ClusterRole", "mr-modelroute-operator")["metadata"]["name"]
    assert settings.standalone and settings.namespaces == ()
    # The webhook: listens on the container port the Service targets; registers that Service.
    service = find(docs, "Service")
    assert settings.webhook.service == (service["metadata"]["name"], NS)
    assert settings.webhook.listen == ("0.0.0.0", ports["webhook"])
    sport, bport = service["spec"]["ports"]
    assert sport["targetPort"] == "webhook" and settings.webhook.service_port == sport["port"] == 443
    # The lease server: the same Service, its own port; the URL the sidecars get names both.
    assert bport["targetPort"] == "budget" and settings.budget.port == bport["port"] == ports["budget"] == 9444
    assert settings.budget_url == f"https://{service['metadata']['name']}.{NS}.svc:9444"
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert str(settings.webhook.cert_dir) in mounts
    assert settings.webhook.failure_policy == "Fail"
    # The certificate directory is a writable emptyDir: the operator makes the certificate.
    volumes = {v["name"]: v for v in pod["volumes"]}
    cert_mount = next(m for m in c["volumeMounts"] if m["mountPath"] == str(settings.webhook.cert_dir))
    assert "emptyDir" in volumes[cert_mount["name"]] and not cert_mount.get("readOnly")
    # The sidecar it injects: the same image, the chart's resources, native where supported.
    assert settings.injection.image == c["image"]
    assert (settings.injection.cpu_request, settings.injection.memory_request) == ("50m", "64Mi")
    assert (settings.injection.cpu_limit, settings.injection.memory_limit) == (None, "256Mi")
    assert settings.native_sidecars is None
    assert (settings.injection.port, settings.injection.metrics_port) == (DEFAULT_PORT, DEFAULT_METRICS_PORT)


def test_everything_render(helm: Helm, tmp_path: Path) -> None:
    docs = render(helm, tmp_path, EVERYTHING, namespace="llm")
    assert kinds(docs) == sorted(["Certificate", "Certificate", "ClusterRole", "ClusterRole", "ClusterRoleBinding",
                                  "ConfigMap", "Deployment", "Issuer", "Issuer", "PodMonitor", "RoleBinding",
                                  "RoleBinding", "Service", "Service", "ServiceAccount", "ServiceMonitor",
                                  "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"])
    deployment = find(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    c = operator_container(deployment)
    assert c["image"] == "registry.example.com/modelroute:1.2.3"
    assert c["resources"] == EVERYTHING["operator"]["resources"]
    s = operator_settings(deployment)
    assert s.namespaces == ("team-a", "team-b")
    assert s.webhook.failure_policy == "Ignore"
    assert s.native_sidecars is False
    assert s.injection.image == "registry.example.com/modelroute-sidecar:9.9.9"
    assert s.injection.image_pull_policy == "Always"
    assert (s.injection.cpu_request, s.injection.memory_request, s.injection.cpu_limit, s.injection.memory_limit) \
        == ("20m", "32Mi", "1", "128Mi")
    assert (s.injection.port, s.injection.metrics_port) == (9700, 9701)
    assert "--verbose" in c["args"]

    # cert-manager: the serving certificate names exactly what the operator checks it for, and
    # its Secret is mounted read-only where the operator looks.
    service = find(docs, "Service", "mr-modelroute-webhook")
    serving = find(docs, "Certificate", service["metadata"]["name"])
    assert serving["spec"]["dnsNames"] == service_hosts(service["metadata"]["name"], "llm")
    assert "server auth" in serving["spec"]["usages"]
    ca_issuer = find(docs, "Issuer", serving["spec"]["issuerRef"]["name"])
    ca = find(docs, "Certificate", "mr-modelroute-webhook-ca")
    assert ca["spec"]["isCA"] is True and ca_issuer["spec"]["ca"]["secretName"] == ca["spec"]["secretName"]
    assert find(docs, "Issuer", ca["spec"]["issuerRef"]["name"])["spec"] == {"selfSigned": {}}
    pod = deployment["spec"]["template"]["spec"]
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == str(s.webhook.cert_dir))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert mount["readOnly"] is True
    assert volume["secret"]["secretName"] == serving["spec"]["secretName"]
    assert {i["key"] for i in volume["secret"]["items"]} == {"tls.crt", "tls.key", "ca.crt"}

    pm = find(docs, "PodMonitor")
    assert pm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert pm["spec"]["namespaceSelector"] == {"any": True}
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == names.METRICS_PORT_NAME and endpoint["path"] == "/metrics"
    assert endpoint["interval"] == "15s"
    assert {"sourceLabels": ["__meta_kubernetes_namespace"], "targetLabel": "namespace", "action": "replace"} \
        in endpoint["relabelings"]
    sm = find(docs, "ServiceMonitor")
    metrics_svc = find(docs, "Service", "mr-modelroute-operator-metrics")
    assert sm["spec"]["selector"]["matchLabels"].items() <= metrics_svc["metadata"]["labels"].items()
    assert metrics_svc["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    # The ServiceMonitor's port is the Service's, which targets the port the operator serves /metrics on.
    (svc_port,) = metrics_svc["spec"]["ports"]
    assert sm["spec"]["endpoints"][0]["port"] == svc_port["name"] and sm["spec"]["endpoints"][0]["path"] == "/metrics"
    (container_port,) = [p for p in c["ports"] if p["name"] == svc_port["targetPort"]]
    assert s.metrics_listen == ("0.0.0.0", container_port["containerPort"])
    cm = find(docs, "ConfigMap")
    assert cm["metadata"]["annotations"] == {"grafana_folder": "LLM"}


def test_the_webhook_can_be_off_and_the_certificate_can_be_a_secret(helm: Helm,
                                                                    tmp_path: Path) -> None:
    docs = render(helm, tmp_path, {"webhook": {"enabled": False}})
    assert kinds(docs) == ["ClusterRole", "ClusterRole", "ClusterRoleBinding", "Deployment", "ServiceAccount",
                           "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]
    settings = operator_settings(find(docs, "Deployment"))
    assert not settings.webhook.enabled
    # Without the chart's ClusterRole, nothing to own the webhook configuration.
    docs = render(helm, tmp_path, {"rbac": {"create": False}})
    assert "ClusterRole" not in kinds(docs)
    assert operator_settings(find(docs, "Deployment")).webhook.owner_clusterrole is None
    docs = render(helm, tmp_path, {"operator": {"replicas": 3}, "webhook": {"certificate": {
        "source": "secret", "secretName": "my-webhook-tls"}}})
    assert "Certificate" not in kinds(docs)
    pod = find(docs, "Deployment")["spec"]["template"]["spec"]
    assert {"name": "webhook-certs", "secret": {"secretName": "my-webhook-tls", "defaultMode": 0o440, "items": [
        {"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"},
        {"key": "ca.crt", "path": "ca.crt"}]}} in pod["volumes"]


def test_no_monitoring_objects_unless_asked(helm: Helm, tmp_path: Path) -> None:
    kinds_ = kinds(render(helm, tmp_path, {"monitoring": {"podMonitor": {"enabled": True}}}))
    assert "PodMonitor" in kinds_ and "ServiceMonitor" not in kinds_ and "ConfigMap" not in kinds_


def test_the_lease_server_listens_behind_the_webhook_service(helm: Helm, tmp_path: Path) -> None:
    docs = render(helm, tmp_path)
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    [operator] = deployment["spec"]["template"]["spec"]["containers"]
    assert "--budget-port=9444" in operator["args"] and "--budget-lease-ttl=30" in operator["args"]
    assert {"name": "budget", "containerPort": 9444, "protocol": "TCP"} in operator["ports"]
    [service] = [d for d in docs if d["kind"] == "Service"]
    assert {"name": "budget", "port": 9444, "targetPort": "budget", "protocol": "TCP"} in service["spec"]["ports"]
    off = render(helm, tmp_path, {"budgets": {"enabled": False}})
    [operator] = next(d for d in off if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"]
    assert not any(a.startswith("--budget") for a in operator["args"])


# --- values that must be refused -------------------------------------------------------------


@pytest.mark.parametrize(("values", "message"), [
    ({"webhook": {"certificate": {"source": "vault"}}}, "/webhook/certificate/source"),
    ({"operator": {"replica": 2}}, "replica"),
    ({"sidecar": {"resources": {"requests": {"cpu": "lots"}}}}, "cpu"),
    ({"sidecar": {"nativeSidecars": True}}, "nativeSidecars"),
    ({"monitoring": {"podMonitor": {"enabled": True, "interval": "30 seconds"}}}, "interval"),
    ({"image": {"digest": "latest"}}, "digest"),
    ({"operator": {"replicas": 2}}, "needs a shared webhook certificate"),
    ({"webhook": {"certificate": {"source": "secret"}}}, "needs webhook.certificate.secretName"),
    ({"operator": {"healthPort": 9443}}, "must differ"),
    ({"operator": {"metricsPort": 8080}},
     "operator.healthPort, operator.metricsPort, webhook.port and budgets.port must differ"),
    ({"budgets": {"port": 9443}}, "budgets.port must differ"),
    ({"budgets": {"port": 443}}, "budgets.port and webhook.servicePort must differ"),
    ({"budgets": {"ttl": 5}}, "ttl"),
    ({"sidecar": {"port": 8701}}, "sidecar.port and sidecar.metricsPort must differ"),
    ({"sidecar": {"metricsPort": 70000}}, "metricsPort"),
    ({"rbac": {"namespaces": ["kube-system"]}}, "/rbac/namespaces/0"),
])
def test_bad_values_are_refused(helm: Helm, tmp_path: Path, values: dict[str, Any],
                                message: str) -> None:
    with pytest.raises(CommandError) as e:
        render(helm, tmp_path, values)
    assert message in str(e.value)


# --- the image --------------------------------------------------------------------------------


def test_dockerfile_is_slim_non_root_and_runs_both_commands(helm: Helm, tmp_path: Path) -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M | re.I)
    assert [name for _, name in stages] == ["python", "build", ""], stages
    final = text[text.rindex("\nFROM "):]
    assert "COPY --from=build /opt/modelroute /opt/modelroute" in final
    assert not re.search(r"^\s*RUN\b", final, re.M), "the final stage installs nothing"
    (user,) = re.findall(r"^USER\s+(\S+)", final, re.M)
    uid = int(user.split(":")[0])
    # The image's user is the one the chart and the injected sidecar run as.
    assert uid == InjectionSettings().run_as_user
    c = operator_container(find(render(helm, tmp_path), "Deployment"))
    assert c["securityContext"]["runAsUser"] == uid
    assert re.search(r'^ENTRYPOINT \["modelroute"\]$', final, re.M), "the chart and the webhook pass only args"
    injected = names.SIDECAR_CONTAINER  # the webhook's container runs `modelroute sidecar ...` via the entrypoint
    assert injected
    ignore = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    assert ignore[0] == "*" and {"!pyproject.toml", "!sidecar/", "!operator/"} <= set(ignore)


def test_kind_config() -> None:
    config = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    assert config["kind"] == "Cluster" and config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert config["nodes"][0]["role"] == "control-plane"
