"""The real Claude Code, Codex and gemini-cli through the gateway, to every upstream kind.

Every cell is (CLI, upstream kind, case): a plain prompt, a streamed answer, and a full
agent turn in which the fake model asks for a tool (Claude Code's ``Read``, Codex's
``exec`` running ``cat``, gemini-cli's ``read_file``), the CLI runs it, and the model answers from the tool's output,
which holds a token only the file knows. One gateway (`modelroute serve`, a subprocess)
per upstream kind serves both CLIs, and the selected cells run concurrently (the CLIs
start slowly); each test then checks its own cell.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from tests.clis.agents import CLIS, Run, claude_env, codex_env, gemini_env, install, run
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.aws_wire import AwsCredential
from tests.fakes.base import FakeUpstream
from tests.fakes.bedrock import FakeBedrock
from tests.fakes.gemini import FakeGemini
from tests.fakes.openai import FakeOpenAI
from tests.fakes.vertex import FakeVertex
from tests.gateway.harness import provider_key
from tests.gateway.procs import modelroute

KINDS = ("openai", "anthropic", "gemini", "openai-compatible", "bedrock", "vertex")
AKID, SECRET = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
# What each kind's ProviderKey needs beyond the fake's URL: its key lines and settings.
SETTINGS: dict[str, tuple[list[str], dict[str, str]]] = {
    "bedrock": ([f"{AKID}:{SECRET}"], {"region": "us-east-1"}),
    "vertex": (["ya29.sk-up"], {"project": "my-project", "location": "us-east5"}),
}
CASES = ("plain", "stream", "tool")
PARALLEL = 4


def _fake(kind: str) -> FakeUpstream:
    if kind == "anthropic":
        return FakeAnthropic(keys=["sk-up"])
    if kind == "gemini":
        return FakeGemini(keys=["sk-up"])
    if kind == "bedrock":  # every request's SigV4 signature verified; Claude Code's models via Converse
        return FakeBedrock({AKID: AwsCredential(SECRET)}, region="us-east-1")
    if kind == "vertex":  # claude-* to Anthropic's publisher (Claude Code passes through), the rest to Google's
        return FakeVertex(["ya29.sk-up"], project="my-project", location="us-east5")
    # openai-compatible: a Chat Completions server without the Responses API (DeepSeek,
    # vLLM, ...): Codex reaches it through the gateway's bridge.
    return FakeOpenAI(keys=["sk-up"], responses_api=kind == "openai")


@dataclass
class Upstream:
    fake: FakeUpstream
    root: str  # the gateway: http://127.0.0.1:PORT
    url: str  # ... and its /v1


@dataclass(frozen=True)
class Cell:
    cli: str
    kind: str
    case: str


@dataclass
class Outcome:
    run: Run
    prompt: str
    token: str  # what only the file the tool reads holds


@pytest.fixture(scope="module")
def upstreams(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Upstream]]:
    """One fake upstream and one gateway per upstream kind. Both CLIs' default model names
    route by the ProviderKey's globs: no ModelRoute, no special names."""
    with ExitStack() as stack:
        out: dict[str, Upstream] = {}
        for kind in KINDS:
            fake = stack.enter_context(_fake(kind))
            fake.agent = True
            base = fake.base_url  # type: ignore[attr-defined]
            keys, settings = SETTINGS.get(kind, (["sk-up"], {}))
            docs = provider_key("upstream", kind, base, keys, models=["claude-*", "gpt-*", "gemini-*"], **settings)
            path = tmp_path_factory.mktemp(f"gw-{kind}") / "routes.yaml"
            path.write_text(yaml.safe_dump_all(docs))
            gp = stack.enter_context(modelroute(path.parent, "serve", "-f", str(path)))
            out[kind] = Upstream(fake, f"http://127.0.0.1:{gp.port}", gp.url)
        yield out


def _selected(request: pytest.FixtureRequest) -> list[Cell]:
    cells = []
    for item in request.session.items:
        params = getattr(item, "callspec", None)
        if getattr(item, "module", None) is request.module and params is not None:
            cells.append(Cell(params.params["cli"], params.params["kind"], params.params["case"]))
    return cells


@pytest.fixture(scope="module")
def matrix(request: pytest.FixtureRequest, upstreams: dict[str, Upstream],
           tmp_path_factory: pytest.TempPathFactory) -> dict[Cell, Outcome]:
    """Every selected cell, run concurrently once."""
    cells = _selected(request)
    exes = {cli: install(cli) for cli in CLIS if any(c.cli == cli for c in cells)}

    def one(cell: Cell) -> Outcome:
        home = tmp_path_factory.mktemp(f"{cell.cli}-{cell.kind}-{cell.case}")
        work = home / "work"
        work.mkdir()
        token = "tok-" + secrets.token_hex(6)
        (work / "token.txt").write_text(token + "\n")
        up = upstreams[cell.kind]
        prompt = f"repeat after me {secrets.token_hex(4)}"
        exe = str(exes[cell.cli])
        if cell.cli == "claude":
            env = claude_env(home, up.root)
            if cell.case == "tool":
                prompt = 'read the token\ntool-call: Read {"file_path": "token.txt"}'
            flags = (["--output-format", "stream-json", "--verbose", "--include-partial-messages"]
                     if cell.case == "stream" else [])
            args = [exe, "-p", *flags, prompt]
        elif cell.cli == "gemini":
            env = gemini_env(home, up.root)
            if cell.case == "tool":
                prompt = 'read the token\ntool-call: read_file {"file_path": "token.txt"}'
            args = [exe, "-p", prompt, *(["-o", "stream-json"] if cell.case == "stream" else [])]
        else:
            env = codex_env(home, up.url)
            if cell.case == "tool":
                script = 'const r = await tools.exec_command({cmd: "cat token.txt"}); text(r.output);'
                prompt = "read the token\ntool-call: exec " + json.dumps({"input": script})
            args = [exe, "exec", "--skip-git-repo-check", *(["--json"] if cell.case == "stream" else []), prompt]
        return Outcome(run(args, env, work), prompt, token)

    with ThreadPoolExecutor(PARALLEL) as pool:
        return dict(zip(cells, pool.map(one, cells), strict=True))


def _jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cli", CLIS)
def test_cli(matrix: dict[Cell, Outcome], cli: str, kind: str, case: str) -> None:
    o = matrix[Cell(cli, kind, case)]
    r = o.run
    assert r.returncode == 0, r.explain()
    if case == "tool":
        # The answer quotes the file, which only the CLI's tool could read.
        assert "tool said:" in r.stdout and o.token in r.stdout, r.explain()
    elif case == "plain":
        answer = r.stdout.strip()
        assert answer.startswith("echo: ") and answer.endswith(o.prompt), r.explain()
    elif cli == "claude":
        events = _jsonl(r.stdout)
        deltas = [e["event"]["delta"]["text"] for e in events if e.get("type") == "stream_event"
                  and e["event"].get("type") == "content_block_delta"
                  and e["event"]["delta"].get("type") == "text_delta"]
        result = next(e for e in events if e.get("type") == "result")
        assert result["subtype"] == "success" and not result["is_error"], r.explain()
        # Word by word as the upstream streamed it, adding up to the final answer.
        assert len(deltas) >= 4 and "".join(deltas) == result["result"], r.explain()
        assert result["result"].endswith(o.prompt), r.explain()
        assert result["usage"]["output_tokens"] > 0, r.explain()
    elif cli == "gemini":
        events = _jsonl(r.stdout)
        deltas = [e["content"] for e in events if e.get("type") == "message" and e.get("role") == "assistant"]
        result = next(e for e in events if e.get("type") == "result")
        assert result["status"] == "success", r.explain()
        # Word by word as the upstream streamed it, adding up to the answer.
        answer = "".join(deltas)
        assert len(deltas) >= 4 and answer.startswith("echo: ") and answer.endswith(o.prompt), r.explain()
        assert result["stats"]["output_tokens"] > 0, r.explain()
    else:
        events = _jsonl(r.stdout)
        messages = [e["item"]["text"] for e in events if e.get("type") == "item.completed"
                    and e["item"].get("type") == "agent_message"]
        assert messages and messages[-1].startswith("echo: ") and messages[-1].endswith(o.prompt), r.explain()
        usage = next(e["usage"] for e in events if e.get("type") == "turn.completed")
        # The (translated) stream carried the upstream's usage to the end.
        assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0, r.explain()
