"""Fixtures for the operator's tests on the real control plane (tests/controlplane).

The operator runs as users run it, ``python -m modelroute_operator`` in a subprocess,
authenticated as a ServiceAccount bound to exactly ``deploy/clusterrole.yaml`` (cluster-wide) and,
in each test namespace (the ``namespace`` fixture enables it), ``deploy/namespace-clusterrole.yaml``;
``deploy/admission-policy.yaml`` is in force.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from modelroute_operator import names
from tests.controlplane.cluster import ControlPlane, free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "crds"
CLUSTERROLE = ROOT / "deploy" / "clusterrole.yaml"
NAMESPACE_CLUSTERROLE = ROOT / "deploy" / "namespace-clusterrole.yaml"
ADMISSION_POLICY = ROOT / "deploy" / "admission-policy.yaml"
IMAGE = "registry.test/modelroute:test"
OPERATOR_NS = "modelroute-system"
OPERATOR_SA = "modelroute-operator"
# Every API key these tests put in a Secret starts with this: the leak test looks for it.
KEY_MARK = "sk-mrtest-"
API = "modelroute.dev/v1alpha1"


def new_key(tag: str = "") -> str:
    return f"{KEY_MARK}{tag}{uuid.uuid4().hex[:12]}"


class Cluster:
    """kubectl (the real one, as the admin) with JSON in and out."""

    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.cp.kubectl(*args, input=input, check=check)

    def apply(self, docs: Mapping[str, Any] | Iterable[Mapping[str, Any]], namespace: str | None = None,
              check: bool = True, dry_run: bool = False) -> subprocess.CompletedProcess[str]:
        items = [docs] if isinstance(docs, Mapping) else list(docs)
        ns = ["-n", namespace] if namespace else []
        extra = ["--dry-run=server"] if dry_run else []
        return self.kubectl("apply", *ns, *extra, "-f", "-", input=yaml.safe_dump_all(items), check=check)

    def get(self, resource: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        ns = ["-n", namespace] if namespace else []
        out = self.kubectl("get", resource, name, *ns, "-o", "json", "--ignore-not-found").stdout
        return json.loads(out) if out.strip() else None

    def items(self, resource: str, namespace: str | None = None, *selectors: str) -> list[dict[str, Any]]:
        ns = ["-n", namespace] if namespace else ["--all-namespaces"]
        out = self.kubectl("get", resource, *ns, *selectors, "-o", "json").stdout
        items: list[dict[str, Any]] = json.loads(out)["items"]
        return items

    def delete(self, resource: str, name: str, namespace: str | None = None) -> None:
        ns = ["-n", namespace] if namespace else []
        self.kubectl("delete", resource, name, *ns, "--ignore-not-found", "--wait=false")

    def ready(self, resource: str, name: str, namespace: str) -> dict[str, Any] | None:
        """The Ready condition of an object, or None."""
        obj = self.get(resource, name, namespace)
        for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
            if cond.get("type") == "Ready":
                return dict(cond)
        return None

    def wait_ready(self, resource: str, name: str, namespace: str, status: str = "True",
                   reason: str | None = None, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until Ready has ``status`` (and ``reason``) for the object's current generation."""
        def check() -> dict[str, Any] | None:
            obj = self.get(resource, name, namespace)
            if obj is None:
                return None
            for cond in (obj.get("status") or {}).get("conditions") or []:
                if cond.get("type") == "Ready" and cond.get("status") == status \
                        and (reason is None or cond.get("reason") == reason) \
                        and cond.get("observedGeneration") == obj["metadata"]["generation"]:
                    return obj
            return None

        found = wait_for(check, timeout=timeout, interval=0.1,
                        what=f"{resource}/{name} in {namespace} Ready={status} {reason or ''}",
                        on_timeout=lambda: "\n" + json.dumps((self.get(resource, name, namespace) or {})
                                                             .get("status"), indent=1))
        assert found is not None
        return found

    def events(self, namespace: str | None = None) -> list[dict[str, Any]]:
        return self.items("events", namespace)


class OperatorProcess:
    """``python -m modelroute_operator`` against the control plane, its output in a file."""

    def __init__(self, kubeconfig: Path, log_path: Path, cluster: Cluster, *args: str) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.cluster = cluster
        self.webhook_port = free_port()
        self.metrics_port = free_port()
        self.budget_port = free_port()
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> OperatorProcess:
        argv = [sys.executable, "-m", "modelroute_operator", "--verbose",
                "--webhook-address", f"127.0.0.1:{self.webhook_port}", "--sidecar-image", IMAGE,
                "--metrics-listen", f"127.0.0.1:{self.metrics_port}", "--budget-port", str(self.budget_port),
                # One certificate across restarts, as the chart's emptyDir keeps it across container
                # restarts: the lease server's CA in every ConfigMap stays the same (a later
                # --webhook-cert-dir in args wins).
                "--webhook-cert-dir", str(self.log_path.parent / f"certs-{self.webhook_port}"), *self.args]
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1"}
        mark = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            log.write(f"=== start {self.starts}: {' '.join(argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        self.starts += 1

        def listening() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"the operator exited with {self.proc.returncode}:\n{self.logs()[-4000:]}")
            return "webhook listening on" in self.logs()[mark:]

        wait_for(listening, timeout=60, interval=0.1, what="the operator's webhook",
                 on_timeout=lambda: "\n" + self.logs()[-4000:])
        return self

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """GET /metrics: {(sample name, sorted labels): value}."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
            text = r.read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 30.0) -> int:
        proc, self.proc = self.proc, None
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, as a crashed or evicted pod."""
        self.stop(signal.SIGKILL)


@pytest.fixture(scope="session")
def cluster(control_plane: ControlPlane) -> Cluster:
    return Cluster(control_plane)


@pytest.fixture(scope="session")
def crds(cluster: Cluster) -> None:
    cluster.kubectl("apply", "-f", str(CRDS))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    "crd/modelroutes.modelroute.dev", "crd/providerkeys.modelroute.dev",
                    "crd/modelbudgets.modelroute.dev")


def bind_operator_account(cluster: Cluster) -> str:
    """The operator's ServiceAccount bound to exactly deploy/clusterrole.yaml, with
    deploy/namespace-clusterrole.yaml and deploy/admission-policy.yaml applied; returns the
    ClusterRole's name."""
    cluster.apply([
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NS}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": OPERATOR_SA, "namespace": OPERATOR_NS}},
    ])
    for path in (CLUSTERROLE, NAMESPACE_CLUSTERROLE, ADMISSION_POLICY):
        cluster.kubectl("apply", "-f", str(path))
    role: str = yaml.safe_load(CLUSTERROLE.read_text())["metadata"]["name"]
    cluster.apply({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": role},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_SA, "namespace": OPERATOR_NS}],
    })
    return role


@pytest.fixture(scope="session")
def operator_kubeconfig(cluster: Cluster, crds: None) -> Path:
    """A ServiceAccount bound to exactly deploy/clusterrole.yaml (and, per namespace, what
    ``enable_namespace`` binds), deploy/admission-policy.yaml in force, and a kubeconfig for it."""
    bind_operator_account(cluster)
    return cluster.cp.service_account_kubeconfig(OPERATOR_NS, OPERATOR_SA)


@pytest.fixture(scope="session")
def operator(cluster: Cluster, operator_kubeconfig: Path,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    op = OperatorProcess(operator_kubeconfig, tmp_path_factory.mktemp("operator") / "operator.log", cluster,
                         "--webhook-owner-clusterrole", yaml.safe_load(CLUSTERROLE.read_text())["metadata"]["name"])
    op.start()
    try:
        yield op
    finally:
        code = op.stop()
        # A graceful stop removes the webhook configuration (out-of-cluster default), so the
        # control plane's other users are not left with a webhook that does not answer.
        assert cluster.get("mutatingwebhookconfiguration", "modelroute.dev") is None, op.logs()[-3000:]
        assert code == 0, op.logs()[-3000:]


WEBHOOK_CONFIG = ("mutatingwebhookconfiguration", names.WEBHOOK_CONFIGURATION)


@pytest.fixture
def webhook_config_restored(control_plane: ControlPlane) -> Iterator[None]:
    """For a test that runs an operator of its own: the webhook configuration is one per cluster,
    so whatever another operator registered comes back afterwards (as the admin), and nothing
    of this test's is left behind."""
    cluster = Cluster(control_plane)
    prior = cluster.get(*WEBHOOK_CONFIG)
    yield
    cluster.kubectl("delete", *WEBHOOK_CONFIG, "--ignore-not-found")
    if prior is not None:
        meta = {k: v for k, v in prior["metadata"].items() if k in ("name", "labels", "annotations")}
        cluster.kubectl("create", "-f", "-", input=yaml.safe_dump({**prior, "metadata": meta}))


def enable_namespace(cluster: Cluster, namespace: str) -> None:
    """What an administrator does to let the operator serve a namespace: a RoleBinding of the
    operator's ServiceAccount to deploy/namespace-clusterrole.yaml there."""
    role = yaml.safe_load(NAMESPACE_CLUSTERROLE.read_text())["metadata"]["name"]
    cluster.apply({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": OPERATOR_SA, "namespace": namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_SA, "namespace": OPERATOR_NS}],
    })


def new_namespace(cluster: Cluster, request: pytest.FixtureRequest, enabled: bool = True) -> str:
    name = f"t-{request.node.name[:40].lower().replace('_', '-').strip('-')}-{uuid.uuid4().hex[:5]}"
    name = "".join(c for c in name if c.isalnum() or c == "-")
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    if enabled:
        enable_namespace(cluster, name)
    return name


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace the operator is enabled in."""
    name = new_namespace(cluster, request)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")


# --- documents -------------------------------------------------------------------------------


def secret(name: str, value: str, key: str = "apiKey") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": {key: value}}


def provider_key(name: str, secret_name: str | None = None, provider: str = "openai", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"provider": provider, **spec}
    if secret_name:
        body["secretRef"] = {"name": secret_name}
    return {"apiVersion": API, "kind": "ProviderKey", "metadata": {"name": name}, "spec": body}


def model_route(name: str, model: str, *backends: str | tuple[str, str], **spec: Any) -> dict[str, Any]:
    bs = [{"providerKey": b} if isinstance(b, str) else {"providerKey": b[0], "model": b[1]} for b in backends]
    return {"apiVersion": API, "kind": "ModelRoute", "metadata": {"name": name},
            "spec": {"model": model, "backends": bs, **spec}}


def rbac_denials(logs: str) -> list[str]:
    """Log lines where the API server refused the operator something.

    RBAC says ``... is forbidden: User "system:serviceaccount:..." cannot ...``; kopf and the
    client report ``403 Forbidden`` / ``APIForbiddenError``. (A bare "403" would also match a
    port or a timestamp's milliseconds.)
    """
    return [ln for ln in logs.splitlines()
            if "forbidden: User" in ln or "403 Forbidden" in ln or "APIForbiddenError" in ln]
