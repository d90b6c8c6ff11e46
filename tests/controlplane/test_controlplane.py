"""The test control plane is a real one: schemas, RBAC, watches, server-side dry-run,
namespace deletion and garbage collection all behave as in a cluster.

Uses a throw-away CRD of its own (group test.modelroute.dev), not the project's.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from tests.controlplane.cluster import ControlPlane, wait_for

pytestmark = pytest.mark.controlplane

GROUP = "test.modelroute.dev"
VERSION = "v1"
PLURAL = "widgets"
CRD_NAME = f"{PLURAL}.{GROUP}"

WIDGET_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": CRD_NAME},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {"plural": PLURAL, "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
        "versions": [
            {
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["size"],
                                "properties": {
                                    "size": {"type": "integer", "minimum": 1},
                                    "color": {"type": "string", "enum": ["red", "blue"]},
                                },
                            },
                            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                        },
                    }
                },
            }
        ],
    },
}

# Generous: the first namespace deletion or GC pass waits for the controllers' caches.
DEADLINE = 60.0


def widget(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Widget",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def apply(cp: ControlPlane, *docs: dict[str, Any], flags: tuple[str, ...] = ()) -> str:
    return cp.kubectl("apply", *flags, "-f", "-", input=yaml.safe_dump_all(docs)).stdout


def is_gone(cp: ControlPlane, *resource: str) -> bool:
    result = cp.kubectl("get", *resource, "--ignore-not-found", "-o", "name")
    return not result.stdout.strip()


@pytest.fixture(scope="module")
def widget_crd(control_plane: ControlPlane) -> str:
    apply(control_plane, WIDGET_CRD)
    control_plane.kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=60s")
    return CRD_NAME


@pytest.fixture
def namespace(control_plane: ControlPlane) -> Iterator[str]:
    name = f"cp-test-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", name)
    yield name
    control_plane.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")


def test_versions_are_the_pinned_release(control_plane: ControlPlane) -> None:
    versions = json.loads(control_plane.kubectl("version", "-o", "json").stdout)
    client_version = versions["clientVersion"]["gitVersion"]
    assert client_version == versions["serverVersion"]["gitVersion"]
    assert client_version.startswith("v1.") and "master" not in client_version
    assert versions["serverVersion"]["minor"] == client_version.split(".")[1]
    helm_version = control_plane.helm("version", "--template", "{{.Version}}").stdout
    assert helm_version.startswith("v3.")


def test_env_points_subprocesses_at_this_cluster(control_plane: ControlPlane) -> None:
    env = control_plane.env
    assert shutil.which("kubectl", path=env["PATH"]) == str(control_plane.bin_dir / "kubectl")
    out = subprocess.run(
        ["kubectl", "get", "namespace", "default", "-o", "name"], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "namespace/default"
    assert control_plane.helm("list", "--all-namespaces", "-q").stdout == ""


def test_watch_sees_added_modified_deleted(control_plane: ControlPlane, widget_crd: str, namespace: str) -> None:
    with control_plane.api_client() as api:
        custom = client.CustomObjectsApi(api)
        listing: dict[str, Any] = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)  # type: ignore[assignment]
        # Watching from the list's resourceVersion (as informers do) sees every later change.
        since = listing["metadata"]["resourceVersion"]

        apply(control_plane, widget("w1", namespace, size=1, color="red"))
        apply(control_plane, widget("w1", namespace, size=2, color="blue"))
        control_plane.kubectl("delete", f"{PLURAL}.{GROUP}", "w1", "-n", namespace)

        events: list[tuple[str, int]] = []
        stream = watch.Watch()
        for event in stream.stream(
            custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            resource_version=since,
            timeout_seconds=int(DEADLINE),
        ):
            events.append((event["type"], event["object"]["spec"]["size"]))
            if event["type"] == "DELETED":
                stream.stop()

    assert events == [("ADDED", 1), ("MODIFIED", 2), ("DELETED", 2)]


def test_schema_violation_is_refused_with_the_servers_message(
    control_plane: ControlPlane, widget_crd: str, namespace: str
) -> None:
    doc = yaml.safe_dump(widget("bad", namespace, size=0, color="green"))
    result = control_plane.kubectl("apply", "-f", "-", input=doc, check=False)

    assert result.returncode != 0
    assert "is invalid" in result.stderr
    assert "spec.size" in result.stderr and "should be greater than or equal to 1" in result.stderr
    assert "spec.color" in result.stderr and 'supported values: "red", "blue"' in result.stderr
    assert is_gone(control_plane, f"{PLURAL}.{GROUP}/bad", "-n", namespace)

    with control_plane.api_client() as api, pytest.raises(ApiException) as refused:
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, widget("bad", namespace, color="red")
        )
    assert refused.value.status == 422
    assert "spec.size: Required value" in str(refused.value.body)


def _can_list_configmaps(kubeconfig: Path, namespace: str) -> bool:
    from kubernetes import config

    with config.new_client_from_config(config_file=str(kubeconfig)) as api:
        try:
            client.CoreV1Api(api).list_namespaced_config_map(namespace)
        except ApiException as e:
            if e.status == 403:
                return False
            raise
    return True


def test_rbac_refuses_a_service_account_until_a_role_binding_allows_it(
    control_plane: ControlPlane, namespace: str
) -> None:
    control_plane.kubectl("create", "serviceaccount", "reader", "-n", namespace)
    kubeconfig = control_plane.service_account_kubeconfig(namespace, "reader")

    assert not _can_list_configmaps(kubeconfig, namespace)
    denied = control_plane.kubectl("--kubeconfig", str(kubeconfig), "get", "configmaps", "-n", namespace, check=False)
    assert denied.returncode != 0
    assert f'"system:serviceaccount:{namespace}:reader" cannot list resource "configmaps"' in denied.stderr

    control_plane.kubectl("create", "role", "cm-reader", "--verb=get,list", "--resource=configmaps", "-n", namespace)
    control_plane.kubectl(
        "create",
        "rolebinding",
        "cm-reader",
        "--role=cm-reader",
        f"--serviceaccount={namespace}:reader",
        "-n",
        namespace,
    )
    # The RBAC authorizer reads bindings from an informer cache: allowed soon, not at once.
    wait_for(lambda: _can_list_configmaps(kubeconfig, namespace), timeout=DEADLINE, what="RBAC to allow")
    # ... and only what the Role grants.
    still_denied = control_plane.kubectl(
        "--kubeconfig", str(kubeconfig), "get", "secrets", "-n", namespace, check=False
    )
    assert "Forbidden" in still_denied.stderr


def test_server_side_dry_run_stores_nothing(control_plane: ControlPlane, namespace: str) -> None:
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "dry", "namespace": namespace}}
    out = apply(control_plane, cm, flags=("--dry-run=server",))
    assert "configmap/dry created (server dry run)" in out
    assert is_gone(control_plane, "configmap/dry", "-n", namespace)


def _tiny_chart(root: Path) -> Path:
    chart = root / "tiny"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: tiny\nversion: 0.1.0\n")
    (chart / "values.yaml").write_text("replicas: 2\ngreeting: hello\n")
    (chart / "templates" / "all.yaml").write_text(
        """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-config
data:
  greeting: {{ .Values.greeting | quote }}
  kubeVersion: {{ .Capabilities.KubeVersion.Version | quote }}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}
spec:
  replicas: {{ .Values.replicas }}
  selector:
    matchLabels: {app: {{ .Release.Name }}}
  template:
    metadata:
      labels: {app: {{ .Release.Name }}}
    spec:
      containers:
        - name: app
          image: registry.example/app:1.0
"""
    )
    return chart


def test_helm_template_applies_with_server_dry_run(control_plane: ControlPlane, namespace: str, tmp_path: Path) -> None:
    rendered = control_plane.helm("template", "demo", _tiny_chart(tmp_path), "--namespace", namespace).stdout
    assert "kind: Deployment" in rendered

    out = control_plane.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", input=rendered).stdout
    assert "configmap/demo-config created (server dry run)" in out
    assert "deployment.apps/demo created (server dry run)" in out
    assert is_gone(control_plane, "deployment/demo", "-n", namespace)


def test_deleting_a_namespace_removes_it_and_its_objects(control_plane: ControlPlane, widget_crd: str) -> None:
    name = f"cp-doomed-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", name)
    control_plane.kubectl("create", "configmap", "cm", "-n", name, "--from-literal=a=b")
    apply(control_plane, widget("w", name, size=1))

    control_plane.kubectl("delete", "namespace", name, "--wait=false")

    # The namespace controller empties it (custom resources included), then it goes.
    wait_for(lambda: is_gone(control_plane, "namespace", name), timeout=DEADLINE, what=f"namespace {name} to go")
    assert is_gone(control_plane, f"{PLURAL}.{GROUP}", "-A", "--field-selector", f"metadata.namespace={name}")


def test_owned_object_is_garbage_collected_with_its_owner(
    control_plane: ControlPlane, widget_crd: str, namespace: str
) -> None:
    apply(control_plane, widget("owner", namespace, size=1))
    owner_uid = control_plane.kubectl(
        "get", f"{PLURAL}.{GROUP}", "owner", "-n", namespace, "-o", "jsonpath={.metadata.uid}"
    ).stdout
    child = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "owned",
            "namespace": namespace,
            "ownerReferences": [
                {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Widget", "name": "owner", "uid": owner_uid}
            ],
        },
    }
    bystander = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "free", "namespace": namespace},
    }
    apply(control_plane, child, bystander)

    control_plane.kubectl("delete", f"{PLURAL}.{GROUP}", "owner", "-n", namespace)

    wait_for(
        lambda: is_gone(control_plane, "configmap/owned", "-n", namespace),
        timeout=DEADLINE,
        what="the garbage collector to delete the owned ConfigMap",
    )
    assert not is_gone(control_plane, "configmap/free", "-n", namespace)
