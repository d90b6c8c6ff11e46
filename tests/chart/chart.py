"""Helpers for the chart's tests: render, install and read back, with the real helm and kubectl."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.controlplane.cluster import ControlPlane, Helm, wait_for

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "modelroute"
CRDS = ROOT / "crds"
CLUSTERROLE = ROOT / "deploy" / "clusterrole.yaml"
NAMESPACE_CLUSTERROLE = ROOT / "deploy" / "namespace-clusterrole.yaml"
ADMISSION_POLICY = ROOT / "deploy" / "admission-policy.yaml"
DASHBOARD = CHART / "dashboards" / "modelroute.json"
EXAMPLES = ROOT / "examples"
TEST_CRDS = Path(__file__).resolve().parent / "crds"  # minimal Prometheus Operator and cert-manager CRDs

Doc = dict[str, Any]

# Non-default values touching every optional part of the chart.
EVERYTHING: Doc = {
    "operator": {"replicas": 2, "watchNamespaces": ["team-a", "team-b"], "logLevel": "debug",
                 "resources": {"requests": {"cpu": "100m", "memory": "200Mi"}, "limits": {"memory": "1Gi"}}},
    "image": {"repository": "registry.example.com/modelroute", "tag": "1.2.3"},
    "sidecar": {"image": {"repository": "registry.example.com/modelroute-sidecar", "tag": "9.9.9",
                          "pullPolicy": "Always"},
                "resources": {"requests": {"cpu": "20m", "memory": "32Mi"}, "limits": {"cpu": "1", "memory": "128Mi"}},
                "nativeSidecars": "false", "port": 9700, "metricsPort": 9701},
    "webhook": {"failurePolicy": "Ignore", "certificate": {"source": "certManager"}},
    "monitoring": {
        "podMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}, "interval": "15s"},
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "dashboard": {"enabled": True, "annotations": {"grafana_folder": "LLM"}},
    },
}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def values_file(tmp_path: Path, values: Mapping[str, Any]) -> Path:
    path = tmp_path / f"values-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(dict(values)))
    return path


def values_args(tmp_path: Path, values: Mapping[str, Any] | None) -> list[str]:
    return ["-f", str(values_file(tmp_path, values))] if values else []


def docs_of(text: str) -> list[Doc]:
    return [d for d in yaml.safe_load_all(text) if d]


def render(cp: ControlPlane | Helm, tmp_path: Path, values: Mapping[str, Any] | None = None, *, release: str = "mr",
           namespace: str = "modelroute-system", extra: Sequence[str] = ()) -> list[Doc]:
    """`helm template` as a list of documents (templates only, no CRDs)."""
    out = cp.helm("template", release, str(CHART), "--namespace", namespace,
                  *values_args(tmp_path, values), *extra).stdout
    return docs_of(out)


def find(docs: Iterable[Doc], kind: str, name: str | None = None) -> Doc:
    found = [d for d in docs if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def kinds(docs: Iterable[Doc]) -> list[str]:
    return sorted(d["kind"] for d in docs)


def get_json(cp: ControlPlane, *args: str) -> Doc:
    result: Doc = json.loads(cp.kubectl("get", *args, "-o", "json").stdout)
    return result


def exists(cp: ControlPlane, *args: str) -> bool:
    result = cp.kubectl("get", *args, "--ignore-not-found", "-o", "name", check=False)
    assert result.returncode == 0, result.stderr
    return bool(result.stdout.strip())


def apply_crds(cp: ControlPlane, *paths: Path) -> None:
    """Apply CRD files and wait until the API server serves them."""
    for path in paths:
        cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
        docs = docs_of(path.read_text())
        for name in [d["metadata"]["name"] for d in docs if d.get("kind") == "CustomResourceDefinition"]:
            cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{name}")


def ensure_namespace(cp: ControlPlane, name: str) -> None:
    cp.kubectl("create", "namespace", name, check=False)
    wait_for(lambda: exists(cp, "namespace", name), timeout=30, what=f"namespace {name}")


def operator_container(deployment: Mapping[str, Any]) -> Doc:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    found = [c for c in containers if c["name"] == "operator"]
    assert len(found) == 1, containers
    result: Doc = found[0]
    return result


def clusterrole_rules(name: str | None = None) -> list[Doc]:
    """deploy/clusterrole.yaml's rules; with ``name``, as the chart renders them for a ClusterRole of
    that name: the rule that reads the ClusterRole itself names it."""
    role = yaml.safe_load(CLUSTERROLE.read_text())
    rules: list[Doc] = role["rules"]
    own = role["metadata"]["name"]
    for rule in rules if name is not None else []:
        if "clusterroles" in rule.get("resources", []) and own in rule.get("resourceNames", []):
            rule["resourceNames"] = [name]
    return rules


def env_without_kubeconfig() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
