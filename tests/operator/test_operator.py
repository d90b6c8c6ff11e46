"""The operator against a real API server, under exactly deploy/clusterrole.yaml:
compile to the ConfigMap and Secret, status, Events, key rotation, clean-up, restarts."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.controlplane.cluster import wait_for
from tests.operator.conftest import (
    KEY_MARK,
    Cluster,
    OperatorProcess,
    model_route,
    new_key,
    provider_key,
    rbac_denials,
    secret,
)

pytestmark = pytest.mark.controlplane


def config_of(cluster: Cluster, namespace: str) -> dict[str, Any] | None:
    cm = cluster.get("configmap", "modelroute-config", namespace)
    return json.loads(cm["data"]["config.json"]) if cm else None


def keys_of(cluster: Cluster, namespace: str) -> dict[str, list[str]] | None:
    s = cluster.get("secret", "modelroute-keys", namespace)
    if s is None:
        return None
    return {k: base64.b64decode(v).decode().split("\n") if v else [] for k, v in (s.get("data") or {}).items()}


def versions(cluster: Cluster, namespace: str) -> dict[str, str]:
    """resourceVersion of everything the operator writes in the namespace."""
    out = {}
    for kind, name in (("configmap", "modelroute-config"), ("secret", "modelroute-keys")):
        obj = cluster.get(kind, name, namespace)
        out[f"{kind}/{name}"] = obj["metadata"]["resourceVersion"] if obj else ""
    for kind in ("modelroutes", "providerkeys"):
        for obj in cluster.items(kind, namespace):
            out[f"{kind}/{obj['metadata']['name']}"] = obj["metadata"]["resourceVersion"]
    return out


def reconciled_with_no_change(cluster: Cluster, operator: OperatorProcess, namespace: str,
                              action: Callable[[], object]) -> None:
    """Do ``action`` and wait for the operator to say it reconciled the namespace to no change."""
    line = f"namespace {namespace}: up to date"
    seen = operator.logs().count(line)
    action()
    wait_for(lambda: operator.logs().count(line) > seen, timeout=30, what=f"a no-change reconcile of {namespace}")


def warnings(cluster: Cluster, namespace: str, reason: str) -> list[dict[str, Any]]:
    return [e for e in cluster.events(namespace) if e.get("type") == "Warning" and e.get("reason") == reason]


def test_secret_providerkey_and_route_compile_to_configmap_and_secret(
        cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    k1, k2 = new_key(), new_key()
    cluster.apply([secret("openai-key", f"{k1}\n{k2}\n"), provider_key("openai", "openai-key"),
                   model_route("chat", "chat-default", ("openai", "gpt-4o"))], namespace)
    pk = cluster.wait_ready("providerkey", "openai", namespace, reason="KeysLoaded")
    mr = cluster.wait_ready("modelroute", "chat", namespace, reason="Compiled")
    assert pk["status"]["keys"] == 2
    assert mr["status"]["backends"] == "1/1"

    cfg = config_of(cluster, namespace)
    assert cfg is not None
    assert cfg["routes"]["chat-default"]["backends"] == [{"providerKey": "openai", "model": "gpt-4o", "weight": 1}]
    assert cfg["providerKeys"]["openai"]["baseURL"] == "https://api.openai.com/v1"
    assert keys_of(cluster, namespace) == {"openai": [k1, k2]}

    cm = cluster.get("configmap", "modelroute-config", namespace)
    assert cm is not None
    owners = {(o["kind"], o["name"]) for o in cm["metadata"]["ownerReferences"]}
    assert owners == {("ModelRoute", "chat"), ("ProviderKey", "openai")}
    assert cm["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "modelroute-operator"

    table = cluster.kubectl("get", "mr", "-n", namespace).stdout
    assert "chat-default" in table and "1/1" in table and "True" in table and "Compiled" in table

    # A reconcile that changes nothing writes nothing (touching the referenced Secret
    # makes the operator re-compile the namespace).
    before = versions(cluster, namespace)
    reconciled_with_no_change(cluster, operator, namespace,
                              lambda: cluster.kubectl("annotate", "secret", "openai-key", "-n", namespace, "t=1"))
    assert versions(cluster, namespace) == before


def test_a_placeholder_key_is_not_ready_and_a_mock_needs_none(
        cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    cluster.apply([secret("openai-key", "sk-REPLACE-ME"), provider_key("openai", "openai-key"),
                   provider_key("mock", provider="mock", mock={"failureRate": 0.5}),
                   model_route("chat", "chat-default", "openai", "mock")], namespace)
    pk = cluster.wait_ready("providerkey", "openai", namespace, status="False", reason="KeyPlaceholder")
    message = pk["status"]["conditions"][0]["message"]
    assert "placeholder" in message and "REPLACE" not in message
    mock = cluster.wait_ready("providerkey", "mock", namespace, status="True", reason="NoKeyRequired")
    assert mock["status"]["keys"] == 0
    mr = cluster.wait_ready("modelroute", "chat", namespace, status="False", reason="ProviderKeyNotReady")
    assert mr["status"]["backends"] == "1/2"
    cfg = config_of(cluster, namespace)
    assert cfg is not None and cfg["providerKeys"]["mock"]["mock"]["failureRate"] == 0.5
    assert "openai" not in cfg["providerKeys"] and "placeholder" in cfg["unreadyProviderKeys"]["openai"]["message"]


def test_missing_secret_is_reported_and_creating_it_recovers(
        cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    cluster.apply([provider_key("anthropic", "anthropic-key", provider="anthropic"),
                   model_route("claude", "claude-default", "anthropic")], namespace)
    pk = cluster.wait_ready("providerkey", "anthropic", namespace, status="False", reason="SecretNotFound")
    assert pk["status"]["conditions"][0]["message"] == ("Secret anthropic-key not found: kubectl create secret "
                                                        "generic anthropic-key --from-literal=apiKey=<API key>")
    mr = cluster.wait_ready("modelroute", "claude", namespace, status="False", reason="ProviderKeyNotReady")
    assert mr["status"]["backends"] == "0/1"
    wait_for(lambda: warnings(cluster, namespace, "SecretNotFound"), timeout=30, what="a SecretNotFound event")
    event = warnings(cluster, namespace, "SecretNotFound")[0]
    assert event["involvedObject"]["kind"] == "ProviderKey" and event["involvedObject"]["name"] == "anthropic"
    # The route exists in the config with no usable backend (a clear 503), the key does not.
    cfg = config_of(cluster, namespace)
    assert cfg is not None and cfg["routes"]["claude-default"]["backends"] == []

    key = new_key()
    cluster.apply(secret("anthropic-key", key), namespace)
    cluster.wait_ready("providerkey", "anthropic", namespace, reason="KeysLoaded")
    cluster.wait_ready("modelroute", "claude", namespace, reason="Compiled")
    assert keys_of(cluster, namespace) == {"anthropic": [key]}
    recovered = [e for e in cluster.events(namespace) if e.get("type") == "Normal" and e["reason"] == "KeysLoaded"]
    assert recovered, cluster.events(namespace)


def test_key_rotation_updates_the_keys_secret(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    old, new1, new2 = new_key("old"), new_key("new"), new_key("new")
    cluster.apply([secret("k", old), provider_key("openai", "k"), model_route("chat", "chat", "openai")], namespace)
    cluster.wait_ready("modelroute", "chat", namespace)
    wait_for(lambda: keys_of(cluster, namespace) == {"openai": [old]}, timeout=30, what="the first key")
    cluster.apply(secret("k", f"{new1}\n{new2}"), namespace)
    wait_for(lambda: keys_of(cluster, namespace) == {"openai": [new1, new2]}, timeout=30, what="the rotated keys",
             on_timeout=lambda: f" (have {keys_of(cluster, namespace)})")
    wait_for(lambda: (cluster.get("providerkey", "openai", namespace) or {}).get("status", {}).get("keys") == 2,
             timeout=30, what="the key count in status")

    # secretRef moves to another Secret; the old one stops mattering.
    other = new_key("other")
    cluster.apply([secret("k2", other, key="token"),
                   {**provider_key("openai", None), "spec": {"provider": "openai",
                                                             "secretRef": {"name": "k2", "key": "token"}}}],
                  namespace)
    wait_for(lambda: keys_of(cluster, namespace) == {"openai": [other]}, timeout=30, what="the key of k2")
    cluster.apply(secret("k", new_key("ignored")), namespace)
    cluster.apply(secret("k2", f"{other}\n{new1}", key="token"), namespace)
    wait_for(lambda: keys_of(cluster, namespace) == {"openai": [other, new1]}, timeout=30, what="k2 rotated")


def test_one_broken_object_never_stops_the_others(cluster: Cluster, operator: OperatorProcess,
                                                  namespace: str) -> None:
    good = new_key()
    cluster.apply([
        secret("good", good),
        secret("empty", "\n  \n"),
        secret("wrong-key", new_key(), key="token"),
        provider_key("good", "good"),
        provider_key("empty", "empty"),
        provider_key("wrongkey", "wrong-key"),
        provider_key("vllm", None, provider="openai-compatible", baseURL="http://vllm.llm.svc:8000/v1"),
        model_route("a", "model-a", "good"),
        model_route("b", "model-b", "nobody"),
        model_route("c", "model-a", "good"),  # same model as "a": a conflict
        model_route("d", "model-d", "good", "empty", "vllm"),
    ], namespace)
    cluster.wait_ready("providerkey", "good", namespace, reason="KeysLoaded")
    cluster.wait_ready("providerkey", "vllm", namespace, reason="NoKeyRequired")
    cluster.wait_ready("providerkey", "empty", namespace, status="False", reason="KeyEmpty")
    cluster.wait_ready("providerkey", "wrongkey", namespace, status="False", reason="SecretKeyNotFound")
    cluster.wait_ready("modelroute", "a", namespace, reason="Compiled")
    b = cluster.wait_ready("modelroute", "b", namespace, status="False", reason="ProviderKeyNotFound")
    assert "nobody (not found)" in b["status"]["conditions"][0]["message"]
    c = cluster.wait_ready("modelroute", "c", namespace, status="False", reason="Conflict")
    assert "already routed by ModelRoute a" in c["status"]["conditions"][0]["message"]
    d = cluster.wait_ready("modelroute", "d", namespace, status="False", reason="ProviderKeyNotReady")
    assert d["status"]["backends"] == "2/3"
    wait_for(lambda: {"KeyEmpty", "SecretKeyNotFound", "ProviderKeyNotFound", "Conflict"}
             <= {e["reason"] for e in cluster.events(namespace) if e.get("type") == "Warning"},
             timeout=30, what="a Warning event for each")

    cfg = config_of(cluster, namespace)
    assert cfg is not None
    assert sorted(cfg["routes"]) == ["model-a", "model-b", "model-d"]
    assert [b["providerKey"] for b in cfg["routes"]["model-d"]["backends"]] == ["good", "vllm"]
    assert keys_of(cluster, namespace) == {"good": [good], "vllm": []}


def test_deleting_the_sources_cleans_up(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    cluster.apply([secret("k", new_key()), provider_key("openai", "k"), model_route("chat", "chat", "openai")],
                  namespace)
    cluster.wait_ready("modelroute", "chat", namespace)
    cluster.delete("modelroute", "chat", namespace)
    wait_for(lambda: (config_of(cluster, namespace) or {"routes": {"x": 1}})["routes"] == {}, timeout=30,
             what="the route to leave the config")
    cm = cluster.get("configmap", "modelroute-config", namespace)
    assert cm is not None and [o["name"] for o in cm["metadata"]["ownerReferences"]] == ["openai"]
    cluster.delete("providerkey", "openai", namespace)
    wait_for(lambda: cluster.get("configmap", "modelroute-config", namespace) is None
             and cluster.get("secret", "modelroute-keys", namespace) is None,
             timeout=30, what="the ConfigMap and Secret to go")
    assert cluster.get("secret", "k", namespace) is not None  # the user's own Secret stays


def test_garbage_collection_cleans_up_while_the_operator_is_down(
        cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    cluster.apply([secret("k", new_key()), provider_key("openai", "k"), model_route("chat", "chat", "openai")],
                  namespace)
    cluster.wait_ready("modelroute", "chat", namespace)
    wait_for(lambda: cluster.get("secret", "modelroute-keys", namespace), timeout=30, what="modelroute-keys")
    operator.kill()
    try:
        cluster.kubectl("delete", "modelroute,providerkey", "--all", "-n", namespace, "--wait=false")
        wait_for(lambda: cluster.get("configmap", "modelroute-config", namespace) is None
                 and cluster.get("secret", "modelroute-keys", namespace) is None,
                 timeout=60, what="the garbage collector to delete what the sources owned")
    finally:
        operator.start()


def test_restarting_mid_way_converges(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    key = new_key()
    cluster.apply([secret("k", key), provider_key("openai", "k")], namespace)
    cluster.wait_ready("providerkey", "openai", namespace)
    # A burst, and the operator killed while it is working on it.
    cluster.apply([model_route(f"r{i}", f"model-{i}", "openai") for i in range(25)], namespace)
    operator.kill()
    rotated = new_key("rotated")
    cluster.apply([secret("k", rotated), model_route("late", "model-late", "openai")], namespace)
    cluster.delete("modelroute", "r0", namespace)
    operator.start()
    expected = sorted([f"model-{i}" for i in range(1, 25)] + ["model-late"])
    wait_for(lambda: sorted((config_of(cluster, namespace) or {}).get("routes", {})) == expected, timeout=60,
             what="the config to converge")
    wait_for(lambda: keys_of(cluster, namespace) == {"openai": [rotated]}, timeout=30, what="the rotated key")
    for name in ["late", *[f"r{i}" for i in range(1, 25)]]:
        cluster.wait_ready("modelroute", name, namespace)
    # Converged means quiet: another restart writes nothing and says nothing new.
    before, events = versions(cluster, namespace), len(cluster.events(namespace))

    def restart() -> None:
        operator.stop()
        operator.start()

    reconciled_with_no_change(cluster, operator, namespace, restart)
    assert versions(cluster, namespace) == before
    assert len(cluster.events(namespace)) == events


def test_no_secret_value_in_logs_events_or_status(cluster: Cluster, operator: OperatorProcess,
                                                  namespace: str) -> None:
    """Runs last in this module: by now every test above has put keys through the operator
    (all of them start with KEY_MARK). The operator logs at debug level here."""
    key = new_key("leak")
    cluster.apply([secret("k", f"{key}\nbroken line with {key}-2"), secret("e", " \n"),
                   provider_key("openai", "k"), provider_key("empty", "e"),
                   model_route("chat", "chat", "openai", "empty", "missing")], namespace)
    cluster.wait_ready("modelroute", "chat", namespace, status="False")
    cluster.apply(secret("k", new_key("leak-rotated")), namespace)
    wait_for(lambda: (keys_of(cluster, namespace) or {}).get("openai", [""])[0].startswith(f"{KEY_MARK}leak-rotated"),
             timeout=30, what="the rotation")

    encoded_mark = base64.b64encode(KEY_MARK.encode()).decode()[:8]
    places = {
        "operator log": operator.logs(),
        "events": json.dumps(cluster.events(None)),
        "ModelRoute status": json.dumps([o.get("status") for o in cluster.items("modelroutes", None)]),
        "ProviderKey status": json.dumps([o.get("status") for o in cluster.items("providerkeys", None)]),
        "ConfigMaps": json.dumps(cluster.items("configmaps", None, "-l", "app.kubernetes.io/managed-by")),
    }
    for where, text in places.items():
        assert KEY_MARK not in text, f"a key in the {where}"
        assert encoded_mark not in text, f"a base64 key in the {where}"
    # And the operator was allowed everything it tried (exactly deploy/clusterrole.yaml);
    # RBAC says `... is forbidden: User "system:serviceaccount:..." cannot ...`.
    denied = rbac_denials(operator.logs())
    assert denied == [], denied[:5]


def test_allowed_service_accounts_reach_the_sidecar_through_the_configmap(
        cluster: Cluster, operator: OperatorProcess, namespace: str, tmp_path: Any) -> None:
    """ModelRoute/ProviderKey -> the operator's ConfigMap -> a real sidecar running as a ServiceAccount."""
    import openai

    from tests.gateway.procs import modelroute

    cluster.apply([provider_key("mock", provider="mock", models=["team-*"], allowedServiceAccounts=["web"]),
                   model_route("open", "open", ("mock", "m")),
                   model_route("web-only", "web-only", ("mock", "m"), allowedServiceAccounts=["web"])], namespace)
    cluster.wait_ready("modelroute", "web-only", namespace, reason="Compiled")
    def compiled() -> dict[str, Any] | None:
        c = config_of(cluster, namespace)
        return c if c is not None and "web-only" in c["routes"] else None

    cfg = wait_for(compiled, timeout=30, what="the ConfigMap with both routes")
    assert cfg is not None
    assert cfg["routes"]["web-only"]["allowedServiceAccounts"] == ["web"]
    assert cfg["routes"]["open"]["allowedServiceAccounts"] == []
    assert cfg["providerKeys"]["mock"]["allowedServiceAccounts"] == ["web"]
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.json").write_text(json.dumps(cfg))
    for account, allowed in (("web", True), ("batch", False)):
        with modelroute(tmp_path, "sidecar", "--config-dir", str(tmp_path),
                        env={"MODELROUTE_SERVICE_ACCOUNT": account}) as side:
            client = openai.OpenAI(base_url=side.url, api_key="placeholder", max_retries=0)
            assert client.chat.completions.create(model="open", messages=[{"role": "user", "content": "hi"}])
            listed = sorted(m.id for m in client.models.list())
            assert listed == (["open", "web-only"] if allowed else ["open"])
            for model in ("web-only", "team-a"):
                if allowed:
                    assert client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
                else:
                    with pytest.raises(openai.PermissionDeniedError):
                        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
