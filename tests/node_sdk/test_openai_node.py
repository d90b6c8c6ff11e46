"""The official OpenAI Node SDK (npm ``openai``, pinned in tests/clis/install.sh) as a client
of a real `modelroute serve`, to every upstream kind the fakes provide and the mock.

Every cell is (upstream kind, scenario): Chat Completions or Responses, streamed through
the SDK's stream helper or not, plain text or a tool call answered with its result.
``client.mjs`` runs one scenario and prints what the SDK parsed; one gateway serves every
kind and the selected cells run concurrently, then each test checks its own cell.
The fakes answer ``echo: <text>``, call the offered tool with ``{"echo": <text>}`` and
answer a result with ``tool said: <result>``, counting tokens as words (5 for a call);
the mock answers ``[mock <model>] You said: <text>`` and calls a tool the prompt names.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.clis.agents import install
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.aws_wire import AwsCredential
from tests.fakes.azure import FakeAzureOpenAI
from tests.fakes.bedrock import FakeBedrock
from tests.fakes.gemini import FakeGemini
from tests.fakes.openai import FakeOpenAI
from tests.fakes.vertex import FakeVertex
from tests.gateway.harness import FAST, model_route, provider_key
from tests.gateway.procs import GatewayProcess, modelroute

CLIENT = Path(__file__).with_name("client.mjs")
BACKEND = {"openai": ("openai", "gpt-4o"), "azure": ("azure", "prod-4o"),
           "anthropic": ("anthropic", "claude-sonnet-4-6"), "gemini": ("gemini", "gemini-2.5-flash"),
           "openai-compatible": ("compatible", "deepseek-chat"), "mock": ("mock", "mock-1"),
           "bedrock": ("bedrock", "us.anthropic.claude-sonnet-4-5-20250929-v1:0"),
           "vertex": ("vertex", "gemini-2.5-flash")}
AKID, SECRET = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
KINDS = tuple(BACKEND)
SCENARIOS = tuple(f"{api}{tool}{stream}" for api in ("chat", "responses") for tool in ("", "-tool")
                  for stream in ("", "-stream"))
PARALLEL = 6
RUN_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """One gateway, a route ``via-<kind>`` per upstream kind. openai-compatible is a Chat
    Completions server without ``/v1/responses`` (DeepSeek, vLLM): Responses are bridged."""
    with ExitStack() as stack:
        oai: Any = stack.enter_context(FakeOpenAI(keys=["sk-o"]))
        compatible: Any = stack.enter_context(FakeOpenAI(keys=["sk-c"], responses_api=False))
        azure: Any = stack.enter_context(FakeAzureOpenAI(keys=["az-1"], deployments={"prod-4o": "gpt-4o"}))
        claude: Any = stack.enter_context(FakeAnthropic(keys=["sk-ant"]))
        gemini: Any = stack.enter_context(FakeGemini(keys=["g-key"]))
        bedrock = stack.enter_context(FakeBedrock({AKID: AwsCredential(SECRET)}, region="us-east-1"))
        vertex = stack.enter_context(FakeVertex(["ya29.v"], project="my-project", location="us-east5"))
        docs = [
            *provider_key("openai", "openai", oai.base_url, ["sk-o"]),
            *provider_key("compatible", "openai-compatible", compatible.base_url, ["sk-c"]),
            *provider_key("azure", "azure-openai", azure.url, ["az-1"], apiVersion="2024-10-21"),
            *provider_key("anthropic", "anthropic", claude.base_url, ["sk-ant"]),
            *provider_key("gemini", "gemini", gemini.base_url, ["g-key"]),
            *provider_key("mock", "mock", None, None),
            *provider_key("bedrock", "bedrock", bedrock.base_url, [f"{AKID}:{SECRET}"], region="us-east-1"),
            *provider_key("vertex", "vertex", vertex.base_url, ["ya29.v"], project="my-project", location="us-east5"),
            *[model_route(f"via-{kind}", backend, **FAST) for kind, backend in BACKEND.items()],
        ]
        path = tmp_path_factory.mktemp("gw-node") / "routes.yaml"
        path.write_text(yaml.safe_dump_all(docs))
        yield stack.enter_context(modelroute(path.parent, "serve", "-f", str(path)))


def _selected(request: pytest.FixtureRequest) -> list[tuple[str, str]]:
    cells = []
    for item in request.session.items:
        params = getattr(item, "callspec", None)
        if getattr(item, "module", None) is request.module and params is not None:
            cells.append((params.params["kind"], params.params["scenario"]))
    return cells


@pytest.fixture(scope="module")
def outcomes(request: pytest.FixtureRequest, gateway: GatewayProcess) -> dict[tuple[str, str], dict[str, Any]]:
    """Every selected cell, run concurrently once: what the SDK parsed, or why it failed."""
    env = {**os.environ, "MODELROUTE_OPENAI_NODE": str(install("openai-node"))}

    def one(cell: tuple[str, str]) -> dict[str, Any]:
        kind, scenario = cell
        proc = subprocess.run(["node", str(CLIENT), gateway.url, f"via-{kind}", scenario], env=env,
                              capture_output=True, text=True, timeout=RUN_TIMEOUT, stdin=subprocess.DEVNULL)
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines:
            return {"ok": False, "error": f"node exited {proc.returncode}", "stderr": proc.stderr[-4000:]}
        out: dict[str, Any] = json.loads(lines[-1])
        return out

    cells = _selected(request)
    with ThreadPoolExecutor(PARALLEL) as pool:
        return dict(zip(cells, pool.map(one, cells), strict=True))


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("kind", KINDS)
def test_openai_node_sdk(outcomes: dict[tuple[str, str], dict[str, Any]], kind: str, scenario: str) -> None:
    o = outcomes[(kind, scenario)]
    assert o["ok"], o
    mock = kind == "mock"
    usage = o["usage"]
    assert usage is not None and usage["input"] > 0, o
    if "-tool" in scenario:
        [call] = o["calls"]
        args = json.loads(call["arguments"])
        assert call["name"] == "lookup", o
        # The mock fills the schema in; the fakes echo the prompt.
        assert isinstance(args["echo"], str) if mock else args == {"echo": "please call lookup for gw"}, o
        assert o["finish"] == ("tool_calls" if scenario.startswith("chat") else "completed"), o
        assert usage["output"] > 0 if mock else usage["output"] == 5, o
        expect_after = "[mock mock-1] The tool returned: a router" if mock else "tool said: a router"
        assert o["after_tool"] == expect_after, o
    else:
        text = o["text"]
        assert text == ("[mock mock-1] You said: hello there node" if mock else "echo: hello there node"), o
        assert o["finish"] == ("stop" if scenario.startswith("chat") else "completed"), o
        assert usage["output"] == len(text.split()), o
        if "-stream" in scenario:
            # Word by word as the upstream streamed it, adding up to the SDK's final answer.
            assert len(o["deltas"]) >= 3 and "".join(o["deltas"]) == text, o
