"""The ModelBudget CRD on a real API server: schema, defaults, CEL rules, printer columns, names."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.operator.conftest import API, Cluster

pytestmark = [pytest.mark.controlplane, pytest.mark.usefixtures("crds")]


def budget(name: str = "team", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "ModelBudget", "metadata": {"name": name},
            "spec": {"limits": [{"window": "1h", "usd": 1.5}], **spec}}


INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("no-limits", budget(limits=[]), "should have at least 1 items"),
    ("limit-without-units", budget(limits=[{"window": "1h"}]), "a limit sets at least one of usd, tokens, requests"),
    ("bad-window", budget(limits=[{"window": "1w", "usd": 1}]), "spec.limits[0].window"),
    ("zero-window", budget(limits=[{"window": "0h", "usd": 1}]), "spec.limits[0].window"),
    ("negative", budget(limits=[{"window": "1h", "usd": -1}]), "should be greater than or equal to 0"),
    ("fractional-tokens", budget(limits=[{"window": "1h", "tokens": 1.5}]), "spec.limits[0].tokens"),
    ("same-window-twice", budget(limits=[{"window": "1h", "usd": 1}, {"window": "1h", "tokens": 5}]), "Duplicate"),
    ("downgrade-without-target", budget(onExceeded="Downgrade"), "onExceeded: Downgrade needs downgradeTo"),
    ("policy-enum", budget(failurePolicy="Maybe"), 'Unsupported value: "Maybe"'),
    ("service-account-name", budget(selector={"serviceAccounts": ["a b"]}), "spec.selector.serviceAccounts[0]"),
]


@pytest.mark.parametrize(("case", "doc", "words"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_budgets_are_refused_with_clear_messages(cluster: Cluster, namespace: str, case: str,
                                                         doc: dict[str, Any], words: str) -> None:
    result = cluster.apply(doc, namespace, check=False)
    assert result.returncode != 0, f"accepted: {doc}"
    assert words in result.stderr, result.stderr


def test_defaults_and_a_full_budget(cluster: Cluster, namespace: str) -> None:
    full = budget("full", selector={"routes": ["chat", "gpt-4o*"], "serviceAccounts": ["web"]},
                  limits=[{"window": "1m", "requests": 100}, {"window": "1d", "usd": 20, "tokens": 2_000_000},
                          {"window": "month", "usd": 300}],
                  onExceeded="Downgrade", downgradeTo="chat-cheap", failurePolicy="Open")
    cluster.apply([budget(), full], namespace)
    plain = cluster.get("modelbudget", "team", namespace)
    assert plain is not None
    assert plain["spec"]["onExceeded"] == "Reject" and plain["spec"]["failurePolicy"] == "Closed"
    stored = cluster.get("modelbudget", "full", namespace)
    assert stored is not None
    assert stored["spec"] == {**copy.deepcopy(full["spec"])}


def test_names_category_and_printer_columns(cluster: Cluster, namespace: str) -> None:
    cluster.apply(budget(), namespace)
    for kind in ("modelbudget", "modelbudgets", "mb"):
        assert cluster.get(kind, "team", namespace) is not None
    assert cluster.kubectl("get", "llm", "-n", namespace, "-o", "name").stdout.split() == \
        ["modelbudget.modelroute.dev/team"]
    header = cluster.kubectl("get", "mb", "-n", namespace).stdout.splitlines()[0].split()
    assert header == ["NAME", "WINDOW", "SPENT", "EXCEEDED", "AGE"]
    assert "READY" in cluster.kubectl("get", "mb", "-n", namespace, "-o", "wide").stdout.splitlines()[0]
