"""The operator's identity cannot be turned into cluster-admin (issue 9, class 5).

The attack that worked against the old ClusterRole (read every Secret, create Secrets anywhere):
create a Secret of type ``kubernetes.io/service-account-token`` for
``kube-system/clusterrole-aggregation-controller``, let the token controller fill it, read the
token, and patch the operator's own ClusterRole to ``*/*/*``. Here every step, and the other
roads to the same place (TokenRequest, RBAC writes, impersonation, pods/exec, webhook and CRD
edits), is tried as the operator's ServiceAccount under exactly deploy/clusterrole.yaml, one
enabled namespace (deploy/namespace-clusterrole.yaml) and deploy/admission-policy.yaml, on a
control plane whose token controller runs; each must be refused with 403. Then the positive
path: the operator still compiles in an enabled namespace, says NamespaceNotEnabled elsewhere,
and picks the namespace up once an administrator enables it.
"""

from __future__ import annotations

import base64
import copy
import functools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from modelroute_operator import names
from modelroute_sidecar.config import KEYS_SECRET_NAME
from tests.controlplane.cluster import ControlPlane, wait_for
from tests.operator.conftest import (
    CLUSTERROLE,
    OPERATOR_NS,
    OPERATOR_SA,
    WEBHOOK_CONFIG,
    Cluster,
    OperatorProcess,
    enable_namespace,
    new_key,
    new_namespace,
    provider_key,
    secret,
)

pytestmark = pytest.mark.controlplane

PRIVILEGED_SA = ("kube-system", "clusterrole-aggregation-controller")
SA_TOKEN = "kubernetes.io/service-account-token"
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NS}:{OPERATOR_SA}"
ROLE = yaml.safe_load(CLUSTERROLE.read_text())["metadata"]["name"]


def token_secret(name: str, namespace: str, sa: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "type": SA_TOKEN,
            "metadata": {"name": name, "namespace": namespace,
                         "annotations": {"kubernetes.io/service-account.name": sa}}}


def minted_token(cluster: Cluster, name: str, namespace: str) -> str | None:
    obj = cluster.get("secret", name, namespace)
    return ((obj or {}).get("data") or {}).get("token")


@pytest.fixture
def as_operator(control_plane: ControlPlane, operator_kubeconfig: Path) -> Iterator[client.ApiClient]:
    """The kubernetes client authenticated as the operator's ServiceAccount."""
    with control_plane.api_client(operator_kubeconfig) as api:
        yield api


@pytest.fixture
def scratch(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[Callable[[bool], str]]:
    made: list[str] = []

    def make(enabled: bool) -> str:
        made.append(new_namespace(cluster, request, enabled=enabled))
        return made[-1]

    yield make
    for ns in made:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found")


def refused(what: str, call: Callable[[], object]) -> ApiException:
    """``call`` must be refused with 403 Forbidden; the exception, for its message."""
    try:
        call()
    except ApiException as e:
        assert e.status == 403, f"{what}: expected 403, got {e.status}: {e.body}"
        return e
    raise AssertionError(f"{what}: the operator's ServiceAccount was allowed to do it")


def raw(api: client.ApiClient, method: str, path: str, body: Any = None,
        headers: dict[str, str] | None = None, content_type: str = "application/json") -> int:
    """A request as the given client, the body as JSON: its status, or ApiException on a non-2xx."""
    params = api.param_serialize(method=method, resource_path=path, body=body, auth_settings=["BearerToken"],
                                 header_params={"Content-Type": content_type, "Accept": "application/json",
                                                **(headers or {})})
    response = api.call_api(*params)
    data = response.read()
    if not 200 <= response.status < 300:
        raise ApiException(status=response.status, reason=response.reason, body=data.decode(errors="replace"))
    return int(response.status)


def test_the_token_controller_would_mint_the_attackers_token(cluster: Cluster, scratch: Callable[[bool], str]) -> None:
    """The precondition of the attack holds here: a service-account-token Secret, created by
    someone allowed to, is filled with a token. (So the refusals below are what stops it.)"""
    ns = scratch(False)
    cluster.apply(token_secret("probe-token", ns, "default"))
    wait_for(lambda: minted_token(cluster, "probe-token", ns), timeout=60,
             what="the token controller to fill a service-account-token Secret")


def test_the_escalation_fails_at_every_step(cluster: Cluster, as_operator: client.ApiClient,
                                            scratch: Callable[[bool], str]) -> None:
    api = as_operator

    def get(path: str) -> Callable[[], int]:
        return lambda: raw(api, "GET", path)

    def post(path: str, body: dict[str, Any]) -> Callable[[], int]:
        return lambda: raw(api, "POST", path, body=body)

    def patch(path: str, body: dict[str, Any]) -> Callable[[], int]:
        return lambda: raw(api, "PATCH", path, body=body, content_type="application/merge-patch+json")

    enabled, other = scratch(True), scratch(False)
    # A privileged ServiceAccount in the very namespace the operator serves: the best target it has.
    cluster.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "deployer"}}, enabled)
    cluster.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                   "metadata": {"name": f"deployer-{enabled}"},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
                   "subjects": [{"kind": "ServiceAccount", "name": "deployer", "namespace": enabled}]})
    cluster.apply(secret("foreign", new_key("foreign")), other)
    rbac = "/apis/rbac.authorization.k8s.io/v1"
    try:
        # 1. Reading Secrets: nowhere but the enabled namespace.
        refused("list Secrets cluster-wide", get("/api/v1/secrets"))
        refused("list Secrets in kube-system", get("/api/v1/namespaces/kube-system/secrets"))
        refused("watch Secrets in kube-system", get("/api/v1/namespaces/kube-system/secrets?watch=1&timeoutSeconds=1"))
        refused("get a Secret in a namespace not enabled", get(f"/api/v1/namespaces/{other}/secrets/foreign"))
        refused("list Secrets in a namespace not enabled", get(f"/api/v1/namespaces/{other}/secrets"))

        # 2. Minting a token through the token controller: no service-account-token Secret anywhere.
        for ns, sa in (PRIVILEGED_SA, (enabled, "deployer")):
            for name in ("minted", KEYS_SECRET_NAME):
                e = refused(f"create a {SA_TOKEN} Secret {name} for {ns}/{sa}",
                            post(f"/api/v1/namespaces/{ns}/secrets", token_secret(name, ns, sa)))
                if ns == enabled:  # RBAC allows create here; the admission policy is what refuses
                    assert "ValidatingAdmissionPolicy" in str(e.body), e.body
        refused("create an Opaque Secret of another name in the enabled namespace",
                post(f"/api/v1/namespaces/{enabled}/secrets", {**secret("stash", "x"), "type": "Opaque"}))
        refused("create a Secret in kube-system",
                post("/api/v1/namespaces/kube-system/secrets", secret(KEYS_SECRET_NAME, "x")))
        configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "modelroute-config"}}
        refused("create a ConfigMap in kube-system", post("/api/v1/namespaces/kube-system/configmaps", configmap))
        refused("create another ConfigMap in the enabled namespace", post(
            f"/api/v1/namespaces/{enabled}/configmaps", {**configmap, "metadata": {"name": "coredns"}}))

        # Events only about its own kinds, and never in kube-system (no forged history there).
        event: dict[str, Any] = {"apiVersion": "v1", "kind": "Event", "metadata": {"generateName": "mr-forged."},
                                 "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": "x"},
                                 "reason": "Forged", "message": "forged", "type": "Normal"}
        for ns in ("kube-system", enabled):
            e = refused(f"post an Event about a Pod in {ns}", post(f"/api/v1/namespaces/{ns}/events", {
                **event, "involvedObject": {**event["involvedObject"], "namespace": ns}}))
            assert "ValidatingAdmissionPolicy" in str(e.body), e.body

        # 3. Tokens straight from the TokenRequest API.
        request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"audiences": []}}
        for ns, sa in (PRIVILEGED_SA, (enabled, "deployer")):
            refused(f"TokenRequest for {ns}/{sa}", post(f"/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token", request))

        # 4. RBAC: its own ClusterRole and binding, new bindings (bind), new roles (escalate).
        everything = [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]
        refused("patch its own ClusterRole to */*/*", patch(f"{rbac}/clusterroles/{ROLE}", {"rules": everything}))
        refused("patch its own ClusterRoleBinding to system:masters", patch(
            f"{rbac}/clusterrolebindings/{ROLE}",
            {"subjects": [{"kind": "ServiceAccount", "name": OPERATOR_SA, "namespace": OPERATOR_NS},
                          {"kind": "Group", "name": "system:masters", "apiGroup": "rbac.authorization.k8s.io"}]}))
        refused("create a ClusterRole */*/* (escalate)", post(f"{rbac}/clusterroles", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "mr-escalated"}, "rules": everything}))
        binding = {"roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
                   "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_SA, "namespace": OPERATOR_NS}]}
        refused("bind cluster-admin cluster-wide", post(f"{rbac}/clusterrolebindings", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "mr-escalated"}, **binding}))
        refused("bind cluster-admin in the enabled namespace", post(f"{rbac}/namespaces/{enabled}/rolebindings", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "mr-escalated"}, **binding}))

        # 5. Impersonation: as a cluster admin, or as the privileged ServiceAccount.
        privileged_user = "system:serviceaccount:{}:{}".format(*PRIVILEGED_SA)
        for extra in ({"Impersonate-User": "system:admin"},
                      {"Impersonate-User": "x", "Impersonate-Group": "system:masters"},
                      {"Impersonate-User": privileged_user}):
            refused(f"impersonate with {extra}", functools.partial(
                raw, api, "GET", "/api/v1/namespaces/kube-system/secrets", headers=extra))

        # 6. Workloads: a pod running as the privileged account, or exec into one.
        refused("create a pod as the privileged ServiceAccount", post(f"/api/v1/namespaces/{enabled}/pods", {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "mr-escalated"},
            "spec": {"serviceAccountName": "deployer", "containers": [{"name": "c", "image": "busybox"}]}}))
        refused("pods/exec", post(f"/api/v1/namespaces/{enabled}/pods/anything/exec?command=sh&stdout=true", {}))

        # 7. CRDs and webhook configurations other than its own.
        crds = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
        refused("patch a CRD", patch(f"{crds}/modelroutes.modelroute.dev", {"metadata": {"labels": {"x": "y"}}}))
        admission = "/apis/admissionregistration.k8s.io/v1"
        refused("create a ValidatingWebhookConfiguration", post(
            f"{admission}/validatingwebhookconfigurations", {"metadata": {"name": "mr-escalated"}, "webhooks": []}))
        e = refused("create a MutatingWebhookConfiguration of another name", post(
            f"{admission}/mutatingwebhookconfigurations", {"metadata": {"name": "mr-escalated"}, "webhooks": []}))
        assert "ValidatingAdmissionPolicy" in str(e.body), e.body  # RBAC cannot limit create by name
        refused("change its admission policy", patch(
            f"{admission}/validatingadmissionpolicies/modelroute-operator", {"spec": {"validations": []}}))
    finally:
        cluster.kubectl("delete", "clusterrolebinding", f"deployer-{enabled}", "--ignore-not-found")

    # Nothing was minted or made, and the operator's RBAC is what was installed.
    for ns, name in ((PRIVILEGED_SA[0], "minted"), (PRIVILEGED_SA[0], KEYS_SECRET_NAME), (enabled, "minted"),
                     (enabled, KEYS_SECRET_NAME), (enabled, "stash")):
        assert cluster.get("secret", name, ns) is None, (ns, name)
    role = cluster.get("clusterrole", ROLE)
    assert role is not None and role["rules"] == yaml.safe_load(CLUSTERROLE.read_text())["rules"]
    bound = [b["metadata"]["name"] for b in cluster.items("clusterrolebindings")
             if any(s.get("name") == OPERATOR_SA and s.get("namespace") == OPERATOR_NS
                    for s in b.get("subjects") or [])]
    assert bound == [ROLE]


def test_its_webhook_configuration_cannot_be_widened(cluster: Cluster, operator: OperatorProcess,
                                                     as_operator: client.ApiClient) -> None:
    """It may keep its own webhook configuration current (the running operator registered it),
    but not make it see pods that did not opt in, or other resources (Secrets in admission
    reviews), wherever its endpoint points."""
    current = cluster.get(*WEBHOOK_CONFIG)
    assert current is not None, operator.logs()[-2000:]
    path = f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{names.WEBHOOK_CONFIGURATION}"

    def widened(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        body = copy.deepcopy(current)
        for hook in body["webhooks"]:
            change(hook)
        return body

    def every_pod(hook: dict[str, Any]) -> None:
        hook.pop("matchConditions", None)
        hook["namespaceSelector"] = {}

    def secrets_too(hook: dict[str, Any]) -> None:
        hook["rules"][0]["resources"] = ["pods", "secrets"]
        hook["rules"][0]["operations"] = ["CREATE", "UPDATE"]

    for what, change in (("every pod", every_pod), ("Secrets", secrets_too)):
        e = refused(f"widen the webhook configuration to {what}",
                    functools.partial(raw, as_operator, "PUT", path, body=widened(change)))
        assert "ValidatingAdmissionPolicy" in str(e.body), e.body
    # Unchanged, and its own update of it is allowed (the same object, written back).
    assert (cluster.get(*WEBHOOK_CONFIG) or {}).get("webhooks") == current["webhooks"]
    assert raw(as_operator, "PUT", path, body=current) == 200


def test_it_compiles_where_enabled_and_says_so_where_not(cluster: Cluster, operator: OperatorProcess,
                                                        scratch: Callable[[bool], str]) -> None:
    enabled, later = scratch(True), scratch(False)
    for ns in (enabled, later):
        cluster.apply([secret("k", new_key("pos")), provider_key("openai", "k")], ns)
    cluster.wait_ready("providerkey", "openai", enabled)
    assert cluster.get("secret", KEYS_SECRET_NAME, enabled) is not None

    cond = cluster.wait_ready("providerkey", "openai", later, status="False", reason="NamespaceNotEnabled")
    message = next(str(c["message"]) for c in cond["status"]["conditions"] if c["type"] == "Ready")
    assert later in message and "RoleBinding" in message
    assert cluster.get("configmap", "modelroute-config", later) is None
    wait_for(lambda: [e for e in cluster.events(later) if e.get("reason") == "NamespaceNotEnabled"
                      and e["involvedObject"]["name"] == "openai"], timeout=30, what="a NamespaceNotEnabled Event")

    enable_namespace(cluster, later)  # the administrator's one step
    cluster.wait_ready("providerkey", "openai", later, timeout=90)
    keys = cluster.get("secret", KEYS_SECRET_NAME, later)
    assert keys is not None and set(keys["data"]) == {"openai"}
    # And key rotation is followed there from now on (the Secret watch starts once it may read).
    before = keys["data"]["openai"]
    cluster.apply(secret("k", new_key("rotated")), later)
    wait_for(lambda: (cluster.get("secret", KEYS_SECRET_NAME, later) or {}).get("data", {}).get("openai") != before,
             timeout=30, what="the rotated key in modelroute-keys")
    assert json.dumps(cluster.events(later)).count("NamespaceNotEnabled") >= 1


def test_removing_the_rolebinding_disables_the_namespace(cluster: Cluster, operator: OperatorProcess,
                                                         scratch: Callable[[bool], str]) -> None:
    """Revoking is the administrator's one step too: from the next reconcile on, the operator can
    neither read the namespace's Secrets nor write there, and its objects say so."""
    ns = scratch(True)
    cluster.apply([secret("k", new_key("revoked")), provider_key("openai", "k")], ns)
    cluster.wait_ready("providerkey", "openai", ns)
    cluster.kubectl("delete", "rolebinding", OPERATOR_SA, "-n", ns)
    # A rotation and an edit (which triggers a reconcile for certain).
    cluster.apply([secret("k", new_key("after-revoke")), provider_key("openai", "k", models=["gpt-x-*"])], ns)
    cluster.wait_ready("providerkey", "openai", ns, status="False", reason="NamespaceNotEnabled")
    keys = cluster.get("secret", KEYS_SECRET_NAME, ns)
    assert keys is not None
    assert "after-revoke" not in base64.b64decode(keys["data"]["openai"]).decode(), "nothing written after revoking"
