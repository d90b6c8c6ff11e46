"""The pure builders of what the operator writes."""

from __future__ import annotations

import base64
import json
from typing import Any

from modelroute_operator import objects
from modelroute_sidecar.compile import ObjectStatus, compile_resources

NS = "team-a"
KEY = "sk-test-VALUE-never-shown"


def pk(name: str, secret: str | None = "openai", uid: str = "u-pk", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "modelroute.dev/v1alpha1", "kind": "ProviderKey",
        "metadata": {"name": name, "namespace": NS, "uid": f"{uid}-{name}", "generation": 1},
        "spec": {"provider": "openai", **spec},
    }
    if secret:
        body["spec"]["secretRef"] = {"name": secret}
    return body


def mr(name: str, model: str, *keys: str) -> dict[str, Any]:
    return {
        "apiVersion": "modelroute.dev/v1alpha1", "kind": "ModelRoute",
        "metadata": {"name": name, "namespace": NS, "uid": f"u-mr-{name}", "generation": 3},
        "spec": {"model": model, "backends": [{"providerKey": k} for k in keys]},
    }


def secret(name: str, value: str) -> dict[str, Any]:
    # As the API server returns it: data only, base64.
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS},
            "data": {"apiKey": base64.b64encode(value.encode()).decode()}}


def compile_ns(sources: list[dict[str, Any]], secrets: list[dict[str, Any]]):
    return compile_resources(objects.source_docs(sources, secrets))


def test_configmap_and_secret_from_a_compile() -> None:
    sources = [pk("openai"), mr("chat", "chat-default", "openai")]
    result = compile_ns(sources, [secret("openai", f"{KEY}\n{KEY}-2\n")])
    owners = objects.owner_references(sources)
    cm = objects.desired_configmap(NS, result, owners)
    assert cm["metadata"]["name"] == "modelroute-config"
    assert cm["metadata"]["namespace"] == NS
    assert json.loads(cm["data"]["config.json"])["routes"]["chat-default"]["backends"][0]["providerKey"] == "openai"
    assert KEY not in json.dumps(cm)
    sec = objects.desired_keys_secret(NS, result, owners)
    assert sec["metadata"]["name"] == "modelroute-keys"
    assert sec["type"] == "Opaque"
    assert base64.b64decode(sec["data"]["openai"]).decode() == f"{KEY}\n{KEY}-2"
    assert [o["name"] for o in cm["metadata"]["ownerReferences"]] == ["chat", "openai"]
    assert cm["metadata"]["ownerReferences"][0] == {
        "apiVersion": "modelroute.dev/v1alpha1", "kind": "ModelRoute", "name": "chat", "uid": "u-mr-chat"}
    assert not any(o.get("controller") for o in cm["metadata"]["ownerReferences"])


def test_a_provider_key_without_secret_gets_an_empty_entry() -> None:
    result = compile_ns([pk("vllm", secret=None, provider="openai-compatible", baseURL="http://vllm:8000/v1")], [])
    assert objects.keys_data(result) == {"vllm": ""}


def test_merged_for_update_keeps_foreign_metadata_and_detects_no_change() -> None:
    sources = [pk("openai")]
    result = compile_ns(sources, [secret("openai", KEY)])
    desired = objects.desired_configmap(NS, result, objects.owner_references(sources))
    existing = {**desired, "metadata": {**desired["metadata"], "resourceVersion": "7",
                                        "labels": {**desired["metadata"]["labels"], "team": "a"},
                                        "annotations": {"note": "x"}}}
    assert objects.merged_for_update(existing, desired) is None
    changed = {**existing, "data": {"config.json": "{}"}}
    update = objects.merged_for_update(changed, desired)
    assert update is not None
    assert update["data"] == desired["data"]
    assert update["metadata"]["resourceVersion"] == "7"
    assert update["metadata"]["labels"]["team"] == "a"
    assert update["metadata"]["annotations"] == {"note": "x"}
    fewer_owners = {**existing, "metadata": {**existing["metadata"], "ownerReferences": []}}
    assert objects.merged_for_update(fewer_owners, desired) is not None


def test_status_patch_and_events_on_transitions() -> None:
    missing = ObjectStatus("ProviderKey", "openai", False, "SecretNotFound", "Secret openai not found", 1,
                           {"keys": 0})
    patch = objects.status_patch(missing, None, "2026-01-01T00:00:00Z")
    assert patch is not None
    st = patch["status"]
    assert st["observedGeneration"] == 1 and st["keys"] == 0
    assert st["conditions"] == [{"type": "Ready", "status": "False", "reason": "SecretNotFound",
                                 "message": "Secret openai not found", "lastTransitionTime": "2026-01-01T00:00:00Z",
                                 "observedGeneration": 1}]
    ev = objects.event_for(missing, None)
    assert ev is not None and ev.type == "Warning" and ev.reason == "SecretNotFound"

    # Same state again: nothing to write, no event (a restart repeats nothing).
    assert objects.status_patch(missing, st, "2026-01-02T00:00:00Z") is None
    assert objects.event_for(missing, st) is None

    fixed = ObjectStatus("ProviderKey", "openai", True, "KeysLoaded", "1 key(s) from Secret openai", 1, {"keys": 1})
    patch2 = objects.status_patch(fixed, st, "2026-01-03T00:00:00Z")
    assert patch2 is not None
    assert patch2["status"]["conditions"][0]["lastTransitionTime"] == "2026-01-03T00:00:00Z"
    ev2 = objects.event_for(fixed, st)
    assert ev2 is not None and ev2.type == "Normal"
    # Ready from the start: no event.
    assert objects.event_for(fixed, None) is None


def test_last_transition_time_moves_only_on_a_transition() -> None:
    a = ObjectStatus("ModelRoute", "chat", False, "ProviderKeyNotFound", "0/1 backends usable; x", 2,
                     {"backends": "0/1"})
    first = objects.status_body(a, None, "T1")
    b = ObjectStatus("ModelRoute", "chat", False, "ProviderKeyNotReady", "0/1 backends usable; y", 2,
                     {"backends": "0/1"})
    second = objects.status_body(b, first, "T2")
    assert second["conditions"][0]["lastTransitionTime"] == "T1"
    assert second["backends"] == "0/1" and second["usableBackends"] == 0 and second["totalBackends"] == 1


def test_route_summary_fields_are_removed_when_they_no_longer_apply() -> None:
    old = {"backends": "1/1", "usableBackends": 1, "totalBackends": 1, "observedGeneration": 1,
           "conditions": [{"type": "Ready", "status": "True", "reason": "Compiled", "message": "1/1"}]}
    conflict = ObjectStatus("ModelRoute", "b", False, "Conflict", "model 'm' is already routed by ModelRoute a", 2)
    patch = objects.status_patch(conflict, old, "T")
    assert patch is not None
    assert patch["status"]["backends"] is None and patch["status"]["usableBackends"] is None


def test_every_source_gets_a_status_even_when_the_compiler_cannot_read_it() -> None:
    bad = mr("broken", "m", "openai")
    bad["spec"]["backends"] = []  # the CRD refuses this; the compiler must cope anyway
    sources = [pk("openai"), bad]
    result = compile_ns(sources, [secret("openai", KEY)])
    statuses = objects.all_statuses(result, sources)
    st = statuses[("ModelRoute", "broken")]
    assert not st.ready and st.reason == "Invalid"
    assert "spec.backends" in st.message
    assert statuses[("ProviderKey", "openai")].ready


def test_referenced_secret_names_is_lenient() -> None:
    docs = [pk("a", "s1"), pk("b", None), {"kind": "ProviderKey", "spec": {"secretRef": "nonsense"}},
            {"kind": "ProviderKey"}, pk("c", "s1"), pk("d", "s2")]
    assert objects.referenced_secret_names(docs) == {"s1", "s2"}


def test_event_body_names_the_object_and_never_the_key() -> None:
    body = pk("openai")
    spec = objects.EventSpec("Warning", "KeyEmpty", "Secret openai key 'apiKey' holds no API key")
    ev = objects.event_body(body, spec, "T", instance="host-1")
    assert ev["involvedObject"] == {"apiVersion": "modelroute.dev/v1alpha1", "kind": "ProviderKey",
                                    "name": "openai", "namespace": NS, "uid": "u-pk-openai", "resourceVersion": None}
    assert ev["type"] == "Warning" and ev["reason"] == "KeyEmpty"
    assert ev["metadata"] == {"generateName": "openai.", "namespace": NS}


def test_a_write_failure_makes_every_object_not_ready_and_keeps_its_summary() -> None:
    result = compile_ns([pk("openai"), mr("chat", "chat", "openai")], [secret("openai", KEY)])
    statuses = objects.failed_statuses(objects.all_statuses(result, []), "ConfigWriteFailed", "cannot write")
    assert {(s.ready, s.reason, s.message) for s in statuses.values()} == {(False, "ConfigWriteFailed", "cannot write")}
    assert statuses[("ProviderKey", "openai")].summary == result.statuses[("ProviderKey", "openai")].summary


def test_redact_removes_keys_raw_and_as_stored_and_bounds_the_length() -> None:
    keys = {"openai": [KEY, "sk-second"], "empty": []}
    stored = objects.keys_data_values(keys)
    text = f"denied: {KEY} and data[openai]={stored[1]} and sk-second; empty entry ''"
    out = objects.redact(text, keys)
    assert KEY not in out and "sk-second" not in out and stored[1] not in out
    assert out.startswith("denied: [redacted]") and out.endswith("empty entry ''")
    assert len(objects.redact("x" * 5000, keys)) == 512
