"""Every file in examples/ is accepted by the API server (with the CRDs applied) and served by
`modelroute serve`, which lists exactly the example's routes on /v1/models."""

from __future__ import annotations

import fnmatch
import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelroute_operator import names
from modelroute_sidecar.compile import compile_resources
from tests.chart.chart import CRDS, EXAMPLES, ROOT, apply_crds, ensure_namespace, unique
from tests.controlplane.cluster import CommandError, ControlPlane
from tests.gateway.procs import modelroute

FILES = sorted(EXAMPLES.glob("*.yaml"))
# Keys for the examples that take them from the environment (quickstart.yaml holds no Secret).
ENV_KEYS = {"OPENAI_API_KEY": "sk-test-openai", "ANTHROPIC_API_KEY": "sk-ant-test",
            "GEMINI_API_KEY": "test-gemini", "AZURE_OPENAI_API_KEY": "test-azure"}


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def of_kind(path: Path, kind: str) -> list[dict[str, Any]]:
    return [d for d in docs(path) if d["kind"] == kind]


def expected_models(path: Path) -> set[str]:
    """What /v1/models must list: every ModelRoute's model, and ProviderKeys' literal model names."""
    routes = {d["spec"]["model"] for d in of_kind(path, "ModelRoute")}
    literal = {m for d in of_kind(path, "ProviderKey") for m in d["spec"].get("models", [])
               if not any(c in m for c in "*?[")}
    return routes | literal


def test_the_examples_are_there() -> None:
    assert {f.name for f in FILES} >= {"quickstart.yaml", "openai-anthropic-failover.yaml", "deepseek-cheap-tier.yaml",
                                       "self-hosted-vllm.yaml", "weighted-ab.yaml", "app.yaml"}


@pytest.fixture(scope="module")
def crds(control_plane: ControlPlane) -> None:
    apply_crds(control_plane, *sorted(CRDS.glob("*.yaml")))


@pytest.mark.parametrize("path", FILES, ids=[f.name for f in FILES])
def test_api_server_accepts(control_plane: ControlPlane, crds: None, path: Path) -> None:
    ns = unique("mr-example")
    ensure_namespace(control_plane, ns)
    out = control_plane.kubectl("apply", "--dry-run=server", "--validate=strict", "-n", ns, "-f", str(path)).stdout
    for d in docs(path):
        assert d["metadata"].get("namespace") is None, "examples go into the namespace the user picks"
        assert re.search(rf"^\S+/{re.escape(d['metadata']['name'])} created \(server dry run\)$", out, re.M), \
            f"{d['kind']} {d['metadata']['name']} not accepted:\n{out}"


def test_api_server_refuses_a_broken_route(control_plane: ControlPlane, crds: None, tmp_path: Path) -> None:
    """The dry run above is a real check: a route no backend can take is refused."""
    ns = unique("mr-example")
    ensure_namespace(control_plane, ns)
    route = of_kind(EXAMPLES / "weighted-ab.yaml", "ModelRoute")[0]
    for b in route["spec"]["backends"]:
        b["weight"] = 0
    with pytest.raises(CommandError, match="weighted route needs at least one backend with weight > 0"):
        control_plane.kubectl("apply", "--dry-run=server", "-n", ns, "-f", "-", input=yaml.safe_dump(route))


@pytest.mark.parametrize("path", FILES, ids=[f.name for f in FILES])
def test_every_resource_compiles_ready(path: Path) -> None:
    # Keys come from the file's Secrets; only a file without any Secret (quickstart) takes them
    # from the environment, as its comment says.
    env = ENV_KEYS if not of_kind(path, "Secret") else {}
    as_shipped = compile_resources(docs(path), env=env)
    # The Secrets hold placeholders, which are no keys: reported, until the user fills them in.
    placeholders = {n for (k, n), s in as_shipped.statuses.items() if s.reason == "KeyPlaceholder"}
    assert placeholders == {pk["metadata"]["name"] for pk in of_kind(path, "ProviderKey")
                            if pk["spec"].get("secretRef") and of_kind(path, "Secret")}
    filled = [{**d, "stringData": {k: "sk-filled-in" for k in d["stringData"]}} if d["kind"] == "Secret" else d
              for d in docs(path)]
    result = compile_resources(filled, env=env)
    assert result.errors == []
    not_ready = {f"{k} {n}": (s.reason, s.message) for (k, n), s in result.statuses.items() if not s.ready}
    assert not_ready == {}
    for pk in of_kind(path, "ProviderKey"):
        for pattern in pk["spec"].get("models", []):
            assert fnmatch.translate(pattern)  # a valid glob


@pytest.mark.parametrize("path", FILES, ids=[f.name for f in FILES])
def test_modelroute_serve_lists_the_routes(tmp_path: Path, path: Path) -> None:
    with modelroute(tmp_path, "serve", "-f", str(path), env=ENV_KEYS) as gp, \
            urllib.request.urlopen(f"{gp.url}/models", timeout=5) as r:
        listed = {m["id"] for m in json.loads(r.read())["data"]}
    assert listed == expected_models(path)


@pytest.mark.parametrize("path", [f for f in FILES if of_kind(f, "Secret")], ids=lambda f: f.name)
def test_secrets_hold_obvious_placeholders(path: Path) -> None:
    for secret in of_kind(path, "Secret"):
        assert "data" not in secret, "stringData, so the placeholder is readable"
        for value in secret["stringData"].values():
            assert "REPLACE" in value, f"{secret['metadata']['name']}: {value!r} does not look like a placeholder"


def test_app_asks_for_the_sidecar_and_uses_the_openai_sdk() -> None:
    path = EXAMPLES / "app.yaml"
    (deployment,) = of_kind(path, "Deployment")
    template = deployment["spec"]["template"]
    assert template["metadata"]["annotations"][names.INJECT_ANNOTATION] == "true"
    for c in template["spec"]["containers"]:
        # The injection sets these; an app that set them itself would bypass the sidecar.
        assert not {e["name"] for e in c.get("env", [])} & {"OPENAI_BASE_URL", "OPENAI_API_KEY"}
    (cm,) = of_kind(path, "ConfigMap")
    script = cm["data"]["app.py"]
    compile(script, "app.py", "exec")
    assert "from openai import OpenAI" in script and "OpenAI()" in script
    model = next(e["value"] for e in template["spec"]["containers"][0]["env"] if e["name"] == "MODEL")
    assert model in expected_models(EXAMPLES / "openai-anthropic-failover.yaml")


def test_docs_name_only_examples_that_exist() -> None:
    texts = [ROOT / "docs" / "install.md", ROOT / "README.md", ROOT / "charts/modelroute/templates/NOTES.txt"]
    mentioned = {m for t in texts if t.exists() for m in re.findall(r"examples/[\w.-]+\.yaml", t.read_text())}
    assert mentioned, "the docs point at the examples"
    assert {m for m in mentioned if not (ROOT / m).is_file()} == set()
