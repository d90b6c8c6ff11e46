"""The operator's own metrics, scraped from the running operator (``--metrics-listen``):
reconciles, Ready/NotReady objects per namespace, webhook admissions, certificate expiry."""

from __future__ import annotations

import time

import pytest

from modelroute_operator import names
from tests.controlplane.cluster import wait_for
from tests.operator.conftest import Cluster, OperatorProcess, model_route, new_key, provider_key, secret

pytestmark = pytest.mark.controlplane

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def objects_of(samples: Samples, namespace: str) -> dict[tuple[str, str], float]:
    """modelroute_operator_objects of one namespace: {(kind, ready): count}."""
    found = {}
    for (name, labels), v in samples.items():
        lab = dict(labels)
        if name == "modelroute_operator_objects" and lab.get("namespace") == namespace:
            found[(lab["kind"], lab["ready"])] = v
    return found


def injected_pod(name: str, annotations: dict[str, str]) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "annotations": annotations},
            "spec": {"containers": [{"name": "app", "image": "app:1"}]}}


def test_reconciles_and_ready_objects_per_namespace(cluster: Cluster, operator: OperatorProcess,
                                                    namespace: str) -> None:
    before = operator.scrape()
    cluster.apply([secret("acct-key", new_key()), provider_key("acct", "acct-key"),
                   provider_key("nokey", "absent-secret"),
                   model_route("good", "chat-good", "acct"), model_route("bad", "chat-bad", "nobody")], namespace)
    cluster.wait_ready("modelroute", "good", namespace)
    cluster.wait_ready("modelroute", "bad", namespace, status="False")
    expected = {("ModelRoute", "true"): 1.0, ("ModelRoute", "false"): 1.0,
                ("ProviderKey", "true"): 1.0, ("ProviderKey", "false"): 1.0}
    wait_for(lambda: objects_of(operator.scrape(), namespace) == expected, timeout=30,
             what="Ready/NotReady gauges of the namespace",
             on_timeout=lambda: f" {objects_of(operator.scrape(), namespace)}")
    after = operator.scrape()
    assert value(after, "modelroute_operator_reconciles_total", result="changed") \
        > value(before, "modelroute_operator_reconciles_total", result="changed")
    assert value(after, "modelroute_operator_reconcile_duration_seconds_count", result="changed") \
        > value(before, "modelroute_operator_reconcile_duration_seconds_count", result="changed")
    assert value(after, "modelroute_operator_reconcile_duration_seconds_sum", result="changed") > 0
    for result in ("unchanged", "error", "terminating"):  # every result is a series from the start
        assert ("modelroute_operator_reconciles_total", (("result", result),)) in after

    # The Secret arrives: the ProviderKey becomes Ready, and the gauges follow.
    cluster.apply(secret("absent-secret", new_key()), namespace)
    wait_for(lambda: objects_of(operator.scrape(), namespace) == {**expected, ("ProviderKey", "true"): 2.0,
                                                                   ("ProviderKey", "false"): 0.0},
             timeout=30, what="the ProviderKey counted Ready")

    # No sources left: the namespace's series go away.
    cluster.kubectl("delete", "modelroutes,providerkeys", "--all", "-n", namespace)
    wait_for(lambda: objects_of(operator.scrape(), namespace) == {}, timeout=30,
             what="the namespace's series removed", on_timeout=lambda: f" {objects_of(operator.scrape(), namespace)}")


def test_webhook_admissions_and_certificate_expiry(cluster: Cluster, operator: OperatorProcess,
                                                   namespace: str) -> None:
    before = operator.scrape()
    cluster.apply(injected_pod("app", {names.INJECT_ANNOTATION: "true"}), namespace)
    refused = cluster.apply(injected_pod("bad", {names.INJECT_ANNOTATION: "true", names.PORT_ANNOTATION: "x"}),
                            namespace, check=False)
    assert refused.returncode != 0
    after = operator.scrape()
    for result in ("injected", "refused"):
        assert value(after, "modelroute_operator_admission_requests_total", result=result) \
            == value(before, "modelroute_operator_admission_requests_total", result=result) + 1, result
        assert value(after, "modelroute_operator_admission_duration_seconds_count", result=result) \
            == value(before, "modelroute_operator_admission_duration_seconds_count", result=result) + 1, result
    assert value(after, "modelroute_operator_admission_requests_total", result="error") \
        == value(before, "modelroute_operator_admission_requests_total", result="error")
    # A generated certificate: valid for about a year from now.
    expiry = value(after, "modelroute_operator_webhook_certificate_expiry_timestamp_seconds")
    assert time.time() + 300 * 86400 < expiry < time.time() + 366 * 86400
    assert value(after, "process_resident_memory_bytes") > 0
