"""The ModelBudget CRD on the real API server: what compile refuses, the API server refuses too,
with the same words (the CRD's CEL rules and schema), and `kubectl get mb` has the columns."""

from typing import Any

import pytest
import yaml

from tests.chart.chart import CRDS, apply_crds, ensure_namespace, unique
from tests.controlplane.cluster import CommandError, ControlPlane

pytestmark = pytest.mark.controlplane


def mb(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "modelroute.dev/v1alpha1", "kind": "ModelBudget", "metadata": {"name": "b"},
            "spec": {"limits": [{"window": "1h", "requests": 10}], **spec}}


@pytest.fixture(scope="module")
def ns(control_plane: ControlPlane) -> str:
    apply_crds(control_plane, CRDS / "modelbudgets.yaml")
    name = unique("mr-budget-crd")
    ensure_namespace(control_plane, name)
    return name


@pytest.mark.parametrize(("spec", "words"), [
    ({"onExceeded": "Downgrade"}, "Downgrade needs downgradeTo"),
    ({"downgradeTo": "cheap"}, "downgradeTo is only for onExceeded: Downgrade"),
    ({"limits": [{"window": "1h"}]}, "at least one of usd, tokens, requests"),
    ({"limits": [{"window": "1w", "requests": 1}]}, "should match"),
    ({"limits": [{"window": "1h", "usd": -1}]}, "should be greater than or equal to 0"),
    ({"limits": [{"window": "1h", "requests": 1}, {"window": "1h", "tokens": 5}]}, "Duplicate value"),
    ({"selector": {"serviceAccounts": ["a b"]}}, "should match"),
    ({"onExceeded": "Throttle"}, "Unsupported value"),
])
def test_the_api_server_refuses_what_compile_refuses(control_plane: ControlPlane, ns: str, spec: dict[str, Any],
                                                     words: str) -> None:
    with pytest.raises(CommandError, match=words):
        control_plane.kubectl("apply", "--dry-run=server", "-n", ns, "-f", "-", input=yaml.safe_dump(mb(**spec)))


def test_a_budget_is_listed_with_its_columns(control_plane: ControlPlane, ns: str) -> None:
    good = mb(selector={"routes": ["gpt-4o*"], "serviceAccounts": ["web"]}, onExceeded="Downgrade",
              downgradeTo="cheap", failurePolicy="Open", limits=[{"window": "month", "usd": 25.5}])
    control_plane.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(good))
    header = control_plane.kubectl("get", "mb", "-n", ns).stdout.splitlines()[0].split()
    assert header[:4] == ["NAME", "WINDOW", "SPENT", "EXCEEDED"] and header[-1] == "AGE"
    assert "modelbudget.modelroute.dev/b" in control_plane.kubectl("get", "llm", "-n", ns, "-o", "name").stdout
    got = yaml.safe_load(control_plane.kubectl("get", "mb", "b", "-n", ns, "-o", "yaml").stdout)
    assert got["spec"]["limits"] == [{"window": "month", "usd": 25.5}]
