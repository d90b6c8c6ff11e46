"""mutate_pod and the webhook configuration, as pure functions (the real admission path
is in test_injection.py)."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelroute_operator import names
from modelroute_operator.settings import InjectionSettings, WebhookSettings
from modelroute_operator.webhook import (
    InjectionError,
    effective_settings,
    mutate_pod,
    pod_patch,
    should_inject,
    webhook_configuration,
)

S = InjectionSettings(image="registry.example/modelroute:1.2.3")
REGULAR = S.model_copy(update={"native_sidecar": False})


def pod(annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "app-", "annotations": annotations if annotations is not None else
                     {names.INJECT_ANNOTATION: "true"}},
        "spec": {"containers": [{"name": "app", "image": "app:1"}], **spec},
    }


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def sidecar_of(p: dict[str, Any]) -> dict[str, Any]:
    found = [c for c in p["spec"].get("initContainers", []) + p["spec"]["containers"]
             if c["name"] == names.SIDECAR_CONTAINER]
    assert len(found) == 1, found
    return found[0]


def test_native_sidecar_is_the_first_init_container_with_restart_policy_always() -> None:
    out = mutate_pod(pod(initContainers=[{"name": "migrate", "image": "m:1"}]), S)
    inits = out["spec"]["initContainers"]
    assert [c["name"] for c in inits] == [names.SIDECAR_CONTAINER, "migrate"]
    assert inits[0]["restartPolicy"] == "Always"
    assert [c["name"] for c in out["spec"]["containers"]] == ["app"]


def test_regular_container_when_native_sidecars_are_off() -> None:
    out = mutate_pod(pod(), REGULAR)
    assert "initContainers" not in out["spec"]
    assert [c["name"] for c in out["spec"]["containers"]] == ["app", names.SIDECAR_CONTAINER]
    assert "restartPolicy" not in out["spec"]["containers"][1]
    # kubectl logs/exec keep defaulting to the app.
    assert out["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"] == "app"


def test_sidecar_args_probes_security_and_mounts() -> None:
    side = sidecar_of(mutate_pod(pod(), S))
    assert side["image"] == "registry.example/modelroute:1.2.3"
    assert side["args"] == ["sidecar", "--config-dir", "/etc/modelroute", "--port", "8700", "--metrics-port", "8701"]
    # kubelet probes the pod IP: the metrics port, never the 127.0.0.1-only API port.
    assert side["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 8701, "scheme": "HTTP"}
    assert side["startupProbe"]["httpGet"]["port"] == 8701
    sc = side["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    mounts = {m["name"]: m for m in side["volumeMounts"]}
    assert mounts[names.CONFIG_VOLUME] == {"name": "modelroute-config", "mountPath": "/etc/modelroute/config",
                                           "readOnly": True}
    assert mounts[names.KEYS_VOLUME] == {"name": "modelroute-keys", "mountPath": "/etc/modelroute/keys",
                                         "readOnly": True}


def test_volumes_are_optional_and_mounted_into_the_sidecar_only() -> None:
    out = mutate_pod(pod(volumes=[{"name": "data", "emptyDir": {}}]), S)
    vols = {v["name"]: v for v in out["spec"]["volumes"]}
    assert vols["data"] == {"name": "data", "emptyDir": {}}
    assert vols["modelroute-config"]["configMap"] == {"name": "modelroute-config", "optional": True}
    assert vols["modelroute-keys"]["secret"] == {"secretName": "modelroute-keys", "optional": True}
    for c in out["spec"]["containers"]:
        assert not any(m["name"].startswith("modelroute-") for m in c.get("volumeMounts", []))


def test_app_containers_get_env_unless_already_set() -> None:
    p = pod()
    p["spec"]["containers"] = [
        {"name": "a", "image": "a", "env": [{"name": "OPENAI_API_KEY", "valueFrom": {"secretKeyRef": {
            "name": "own", "key": "k"}}}]},
        {"name": "b", "image": "b"},
    ]
    out = mutate_pod(p, S)
    a, b = out["spec"]["containers"]
    assert a["env"][0] == {"name": "OPENAI_API_KEY", "valueFrom": {"secretKeyRef": {"name": "own", "key": "k"}}}
    assert env_of(a)["OPENAI_BASE_URL"] == "http://127.0.0.1:8700/v1"
    assert [e["name"] for e in a["env"]].count("OPENAI_API_KEY") == 1
    assert env_of(b) == {
        "OPENAI_BASE_URL": "http://127.0.0.1:8700/v1",
        "OPENAI_API_KEY": "modelroute-placeholder",
        "ANTHROPIC_BASE_URL": "http://127.0.0.1:8700",
        "ANTHROPIC_API_KEY": "modelroute-placeholder",
    }
    # The sidecar gets none of that: only who its callers are.
    assert [e["name"] for e in sidecar_of(out)["env"]] == ["MODELROUTE_SERVICE_ACCOUNT", "MODELROUTE_NAMESPACE"]


@pytest.mark.parametrize(("spec", "expected"), [
    ({"serviceAccountName": "robot"}, "robot"),
    ({"serviceAccount": "legacy"}, "legacy"),  # the deprecated alias, should a pod only set that
    ({"serviceAccountName": "robot", "serviceAccount": "robot"}, "robot"),
    ({}, "default"),
])
def test_the_sidecar_knows_the_pods_service_account_and_namespace(spec: dict[str, Any], expected: str) -> None:
    out = mutate_pod(pod(**spec), S)
    env = {e["name"]: e for e in sidecar_of(out)["env"]}
    assert env["MODELROUTE_SERVICE_ACCOUNT"] == {"name": "MODELROUTE_SERVICE_ACCOUNT", "value": expected}
    assert env["MODELROUTE_NAMESPACE"]["valueFrom"] == {"fieldRef": {"apiVersion": "v1",
                                                                     "fieldPath": "metadata.namespace"}}
    # Nothing an app container sets reaches the sidecar, and a forged sidecar is rebuilt.
    forged = pod(**spec)
    forged["spec"]["containers"].append({"name": "modelroute-sidecar", "image": "evil", "env": [
        {"name": "MODELROUTE_SERVICE_ACCOUNT", "value": "admin"}]})
    assert sidecar_of(mutate_pod(forged, S))["env"] == sidecar_of(out)["env"]
    assert mutate_pod(out, S) == out


def test_scrape_annotations_unless_the_pod_has_its_own() -> None:
    out = mutate_pod(pod(), S)
    ann = out["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert ann["prometheus.io/port"] == "8701"
    assert ann["prometheus.io/path"] == "/metrics"
    assert ann[names.INJECTED_ANNOTATION] == "true"
    own = pod({names.INJECT_ANNOTATION: "true", "prometheus.io/port": "9090", "prometheus.io/scrape": "true"})
    assert mutate_pod(own, S)["metadata"]["annotations"]["prometheus.io/port"] == "9090"


def test_opted_out_pod_is_untouched() -> None:
    p = pod({names.INJECT_ANNOTATION: "false"})
    assert mutate_pod(p, S) == p
    assert pod_patch(p, S) == []


def test_the_argument_is_not_modified() -> None:
    p = pod()
    before = copy.deepcopy(p)
    mutate_pod(p, S)
    assert p == before


def test_overrides_by_annotation() -> None:
    p = pod({
        names.INJECT_ANNOTATION: "true",
        names.PORT_ANNOTATION: "9000",
        names.METRICS_PORT_ANNOTATION: "9001",
        names.IMAGE_ANNOTATION: "mirror.local/modelroute:canary",
        names.CPU_REQUEST_ANNOTATION: "100m",
        names.MEMORY_REQUEST_ANNOTATION: "128Mi",
        names.MEMORY_LIMIT_ANNOTATION: "1Gi",
        names.CPU_LIMIT_ANNOTATION: "2",
    })
    out = mutate_pod(p, S)
    side = sidecar_of(out)
    assert side["image"] == "mirror.local/modelroute:canary"
    assert side["args"][-4:] == ["--port", "9000", "--metrics-port", "9001"]
    assert side["readinessProbe"]["httpGet"]["port"] == 9001
    assert side["resources"] == {"requests": {"cpu": "100m", "memory": "128Mi"},
                                 "limits": {"cpu": "2", "memory": "1Gi"}}
    assert env_of(out["spec"]["containers"][0])["OPENAI_BASE_URL"] == "http://127.0.0.1:9000/v1"
    assert env_of(out["spec"]["containers"][0])["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:9000"
    assert out["metadata"]["annotations"]["prometheus.io/port"] == "9001"


def test_native_sidecar_override_per_pod() -> None:
    out = mutate_pod(pod({names.INJECT_ANNOTATION: "true", names.NATIVE_SIDECAR_ANNOTATION: "false"}), S)
    assert names.SIDECAR_CONTAINER in [c["name"] for c in out["spec"]["containers"]]


@pytest.mark.parametrize(
    ("annotation", "value", "words"),
    [
        (names.PORT_ANNOTATION, "http", "not a port number"),
        (names.PORT_ANNOTATION, "70000", "not a port number"),
        (names.METRICS_PORT_ANNOTATION, "8700", "must differ"),
        (names.MEMORY_LIMIT_ANNOTATION, "lots", "not a resource quantity"),
        (names.CPU_REQUEST_ANNOTATION, "1 core", "not a resource quantity"),
        (names.IMAGE_ANNOTATION, "has space", "not an image reference"),
        (names.NATIVE_SIDECAR_ANNOTATION, "yes", "not true or false"),
    ],
)
def test_bad_overrides_are_refused_naming_the_annotation(annotation: str, value: str, words: str) -> None:
    with pytest.raises(InjectionError) as e:
        mutate_pod(pod({names.INJECT_ANNOTATION: "true", annotation: value}), S)
    assert annotation in str(e.value) and words in str(e.value)


def test_effective_settings_without_overrides_is_the_same_object() -> None:
    assert effective_settings(pod(), S) is S


@pytest.mark.parametrize("s", [S, REGULAR], ids=["native", "regular"])
def test_mutating_twice_is_mutating_once(s: InjectionSettings) -> None:
    p = pod(initContainers=[{"name": "init", "image": "i"}], volumes=[{"name": "v", "emptyDir": {}}])
    once = mutate_pod(p, s)
    assert mutate_pod(once, s) == once
    assert pod_patch(once, s) == []


def test_patch_applies_to_the_injected_pod() -> None:
    p = pod()
    assert jsonpatch.apply_patch(p, pod_patch(p, S)) == mutate_pod(p, S)


# --- idempotency on arbitrary pods ---------------------------------------------------------

_names = st.sampled_from(["app", "web", "worker", names.SIDECAR_CONTAINER, "side"])
_env = st.lists(st.sampled_from(["OPENAI_BASE_URL", "OPENAI_API_KEY", "HOME", "ANTHROPIC_API_KEY"]),
                unique=True).map(lambda ns: [{"name": n, "value": "x"} for n in ns])
_container = st.builds(lambda n, e: {"name": n, "image": "i", **({"env": e} if e else {})}, _names, _env)
_volumes = st.lists(st.sampled_from(["data", names.CONFIG_VOLUME, names.KEYS_VOLUME, "cache"]), unique=True)
_annotations = st.dictionaries(
    st.sampled_from([names.INJECT_ANNOTATION, "prometheus.io/port", names.PORT_ANNOTATION,
                     "kubectl.kubernetes.io/default-container", "other"]),
    st.sampled_from(["true", "false", "9000", "app"]),
)


@settings(max_examples=300, deadline=None)
@given(
    containers=st.lists(_container, min_size=1, max_size=3, unique_by=lambda c: c["name"]),
    inits=st.lists(_container, max_size=2, unique_by=lambda c: c["name"]),
    volumes=_volumes,
    annotations=_annotations,
    native=st.booleans(),
)
def test_idempotent_on_any_pod(containers, inits, volumes, annotations, native) -> None:
    s = S.model_copy(update={"native_sidecar": native})
    p = {"metadata": {"annotations": annotations},
         "spec": {"containers": containers, "volumes": [{"name": v, "emptyDir": {}} for v in volumes],
                  **({"initContainers": inits} if inits else {})}}
    try:
        once = mutate_pod(p, s)
    except InjectionError:
        return  # e.g. modelroute.dev/port: "true", refused
    assert mutate_pod(once, s) == once
    if annotations.get(names.INJECT_ANNOTATION) != "false":
        assert sum(c["name"] == names.SIDECAR_CONTAINER
                   for c in once["spec"]["containers"] + once["spec"].get("initContainers", [])) == 1


# --- selection and configuration -----------------------------------------------------------


@pytest.mark.parametrize(
    ("annotation", "namespace_label", "expected"),
    [
        (None, None, False),
        ("true", None, True),
        ("false", None, False),
        ("yes", None, False),
        (None, "enabled", True),
        ("true", "enabled", True),
        ("false", "enabled", False),
        (None, "disabled", False),
    ],
)
def test_should_inject(annotation: str | None, namespace_label: str | None, expected: bool) -> None:
    p = pod({names.INJECT_ANNOTATION: annotation} if annotation else {})
    labels = {names.INJECTION_NAMESPACE_LABEL: namespace_label} if namespace_label else {}
    assert should_inject(p, labels) is expected


def test_webhook_configuration_selects_only_opted_in_pods() -> None:
    cfg = webhook_configuration({"url": "https://127.0.0.1:9443/inject", "caBundle": "Q0E="}, WebhookSettings())
    assert cfg["metadata"]["name"] == "modelroute.dev"
    pods, namespaced = cfg["webhooks"]
    for hook in (pods, namespaced):
        assert hook["failurePolicy"] == "Fail"
        assert hook["sideEffects"] == "None"
        assert hook["reinvocationPolicy"] == "IfNeeded"
        assert hook["rules"] == [{"apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"],
                                  "operations": ["CREATE"], "scope": "Namespaced"}]
        assert hook["clientConfig"] == {"url": "https://127.0.0.1:9443/inject", "caBundle": "Q0E="}
    assert pods["namespaceSelector"]["matchExpressions"] == [
        {"key": "modelroute.dev/injection", "operator": "NotIn", "values": ["enabled"]}]
    assert "== 'true'" in pods["matchConditions"][0]["expression"]
    assert namespaced["namespaceSelector"]["matchExpressions"] == [
        {"key": "modelroute.dev/injection", "operator": "In", "values": ["enabled"]}]
    assert "== 'false'" in namespaced["matchConditions"][0]["expression"]


def test_webhook_configuration_for_a_namespaced_operator() -> None:
    cfg = webhook_configuration({"url": "https://x/inject"}, WebhookSettings(failure_policy="Ignore"),
                                namespaces=["b", "a"])
    for hook in cfg["webhooks"]:
        assert hook["failurePolicy"] == "Ignore"
        assert {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["a", "b"]} in \
            hook["namespaceSelector"]["matchExpressions"]


def test_webhook_configuration_owner() -> None:
    owner = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "name": "mr-operator", "uid": "u-1"}
    cfg = webhook_configuration({"url": "https://x/inject"}, WebhookSettings(), owner=owner)
    assert cfg["metadata"]["ownerReferences"] == [owner]
    assert "ownerReferences" not in webhook_configuration({"url": "https://x/inject"}, WebhookSettings())["metadata"]


# --- the lease server's token, URL and CA (budgets) ---------------------------------------------

BUDGET = S.model_copy(update={"budget_url": "https://modelroute-operator.modelroute-system.svc:9444"})


@pytest.mark.parametrize("s", [BUDGET, BUDGET.model_copy(update={"native_sidecar": False})])
def test_with_a_lease_server_the_sidecar_gets_a_modelroute_token_its_url_and_ca(s: InjectionSettings) -> None:
    out = mutate_pod(pod(volumes=[{"name": "data", "emptyDir": {}}]), s)
    vols = {v["name"]: v for v in out["spec"]["volumes"]}
    assert vols[names.TOKEN_VOLUME] == {"name": "modelroute-token", "projected": {"sources": [{"serviceAccountToken": {
        "audience": "modelroute", "expirationSeconds": 3600, "path": "token"}}]}}
    side = sidecar_of(out)
    assert {"name": "modelroute-token", "mountPath": "/var/run/secrets/modelroute", "readOnly": True} \
        in side["volumeMounts"]
    env = env_of(side)
    assert env["MODELROUTE_BUDGET_URL"] == "https://modelroute-operator.modelroute-system.svc:9444"
    # A file of the modelroute-config ConfigMap, which the sidecar already mounts.
    assert env["MODELROUTE_BUDGET_CA"] == "/etc/modelroute/config/budget-ca.crt"
    pod_name = next(e for e in side["env"] if e["name"] == "MODELROUTE_POD_NAME")
    assert pod_name["valueFrom"] == {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}
    # The app containers get neither the token nor the lease server.
    for c in out["spec"]["containers"]:
        if c["name"] != names.SIDECAR_CONTAINER:
            assert not any(m["name"] == names.TOKEN_VOLUME for m in c.get("volumeMounts", []))
            assert "MODELROUTE_BUDGET_URL" not in env_of(c)
    assert mutate_pod(out, s) == out


def test_a_projected_token_names_the_service_account() -> None:
    assert mutate_pod(pod(), BUDGET)["spec"]["serviceAccountName"] == "default"
    assert mutate_pod(pod(serviceAccountName="web"), BUDGET)["spec"]["serviceAccountName"] == "web"
    assert mutate_pod(pod(), S)["spec"]["serviceAccountName"] == "default"


def test_without_a_lease_server_no_token_is_projected() -> None:
    out = mutate_pod(pod(), S)
    assert names.TOKEN_VOLUME not in {v["name"] for v in out["spec"]["volumes"]}
    side = sidecar_of(out)
    assert names.TOKEN_VOLUME not in {m["name"] for m in side["volumeMounts"]}
    assert not {"MODELROUTE_BUDGET_URL", "MODELROUTE_BUDGET_CA"} & set(env_of(side))


def test_the_budget_url_must_be_https() -> None:
    with pytest.raises(ValueError):
        InjectionSettings(budget_url="http://modelroute-operator:9444")
