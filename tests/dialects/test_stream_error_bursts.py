"""An upstream's in-stream error that arrives in the same read as good events, through a real `modelroute serve`.

An upstream may send content events and then its error event (OpenAI's ``data: {"error": ...}``,
Anthropic's ``event: error``, Gemini's error chunk, a Bedrock event-stream exception) in one
TCP segment. The caller must get every good event, then the error in its own dialect, then the
end of its stream: the same as when the events come one per read, however the bytes are cut.
Every caller dialect (raw HTTP for the exact bytes, and the official SDKs) against every
upstream kind that streams, pass-through and translated alike.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import openai
import orjson
import pytest
import yaml
from google import genai
from google.genai import errors, types

from modelroute_sidecar.sse import SSEParser
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.aws_wire import AwsCredential
from tests.fakes.base import FakeUpstream, wait_until_sync
from tests.fakes.bedrock import FakeBedrock
from tests.fakes.gemini import FakeGemini
from tests.fakes.openai import FakeOpenAI
from tests.fakes.vertex import FakeVertex
from tests.gateway.harness import FAST, model_route, provider_key
from tests.gateway.procs import GatewayProcess, modelroute, scrape

AKID, SECRET = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
VERTEX_TOKEN = "ya29.a0AfB_vertex-test-token"
BACKENDS = {"openai": ("openai", "gpt-4o"), "anthropic": ("anthropic", "claude-sonnet-4-6"),
            "gemini": ("gemini", "gemini-2.5-flash"), "bedrock": ("bedrock", "amazon.nova-pro-v1:0"),
            "bedrock-claude": ("bedrock", "us.anthropic.claude-sonnet-4-5-20250929-v1:0"),
            "vertex": ("vertex", "gemini-2.5-flash"), "vertex-claude": ("vertex", "claude-sonnet-4-5@20250929")}
KINDS = list(BACKENDS)
DIALECTS = ["chat", "messages", "responses", "gemini"]
PROMPT = "one two three four five six seven eight"
ERROR_AFTER = 5  # upstream events before the error: some text in every wire format
MESSAGE = "upstream broke mid-answer"


@dataclass
class World:
    gp: GatewayProcess
    ups: dict[str, FakeUpstream]

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.gp.port}"

    def upstream(self, kind: str) -> FakeUpstream:
        return self.ups[BACKENDS[kind][0]]

    def metric(self, name: str, **labels: str) -> float:
        total = 0.0
        for line in scrape(self.gp).splitlines():
            if line.startswith(name + "{"):
                got = dict(p.split("=", 1) for p in line[len(name) + 1:line.index("}")].split(","))
                if all(got.get(k) == f'"{v}"' for k, v in labels.items()):
                    total += float(line.rsplit(" ", 1)[1])
        return total


@pytest.fixture(scope="module")
def w(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with ExitStack() as stack:
        ups: dict[str, Any] = {
            "openai": stack.enter_context(FakeOpenAI(keys=["sk-o"])),
            "anthropic": stack.enter_context(FakeAnthropic(keys=["sk-a"])),
            "gemini": stack.enter_context(FakeGemini(keys=["g-key"])),
            "bedrock": stack.enter_context(FakeBedrock({AKID: AwsCredential(SECRET)}, region="us-west-2")),
            "vertex": stack.enter_context(FakeVertex([VERTEX_TOKEN], project="my-project", location="us-east5")),
        }
        docs = [
            *provider_key("openai", "openai", ups["openai"].base_url, ["sk-o"]),
            *provider_key("anthropic", "anthropic", ups["anthropic"].base_url, ["sk-a"]),
            *provider_key("gemini", "gemini", ups["gemini"].base_url, ["g-key"]),
            *provider_key("bedrock", "bedrock", ups["bedrock"].url, [f"{AKID}:{SECRET}"], region="us-west-2"),
            *provider_key("vertex", "vertex", ups["vertex"].url, [VERTEX_TOKEN], project="my-project",
                          location="us-east5"),
            *[model_route(f"via-{k}", BACKENDS[k], **FAST) for k in KINDS],
        ]
        tmp: Path = tmp_path_factory.mktemp("gw-bursts")
        (tmp / "routes.yaml").write_text(yaml.safe_dump_all(docs))
        gp = stack.enter_context(modelroute(tmp, "serve", "-f", str(tmp / "routes.yaml")))
        yield World(gp, ups)


@pytest.fixture(autouse=True)
def _clean(w: World) -> Iterator[None]:
    yield
    for up in w.ups.values():
        up.faults.clear()


def request(root: str, dialect: str, kind: str) -> urllib.request.Request:
    route = f"via-{kind}"
    paths: dict[str, tuple[str, dict[str, Any]]] = {
        "chat": ("/v1/chat/completions", {"model": route, "stream": True,
                                          "messages": [{"role": "user", "content": PROMPT}]}),
        "messages": ("/v1/messages", {"model": route, "stream": True, "max_tokens": 100,
                                      "messages": [{"role": "user", "content": PROMPT}]}),
        "responses": ("/v1/responses", {"model": route, "stream": True, "input": PROMPT}),
        "gemini": (f"/v1beta/models/{route}:streamGenerateContent?alt=sse",
                   {"contents": [{"role": "user", "parts": [{"text": PROMPT}]}]}),
    }
    path, body = paths[dialect]
    return urllib.request.Request(root + path, orjson.dumps(body), {
        "content-type": "application/json", "anthropic-version": "2023-06-01"})


@dataclass
class Seen:
    text: str  # the text the good events carried, in order
    error: dict[str, Any]  # the error event's payload
    trailer: list[str | None]  # event names after the error (Responses: response.failed)


def read_stream(w: World, dialect: str, kind: str) -> Seen:
    """The caller's stream as raw bytes: valid SSE of JSON objects, text then one error, then its end."""
    with urllib.request.urlopen(request(w.root, dialect, kind), timeout=30) as r:
        assert r.status == 200
        body = r.read()
    events = SSEParser().feed(body)  # the whole body is valid SSE: nothing left over
    assert events and b"[DONE]" not in body  # an error ends a Chat stream without [DONE]
    payloads = [orjson.loads(e.data) for e in events]
    text, error_at = "", None
    for i, (ev, p) in enumerate(zip(events, payloads, strict=True)):
        if ev.event == "error" or "error" in p:
            error_at = i
            break
        if dialect == "chat":
            text += "".join(c["delta"].get("content") or "" for c in p["choices"])
        elif dialect == "messages" and p["type"] == "content_block_delta":
            text += p["delta"].get("text") or ""
        elif dialect == "responses" and p["type"] == "response.output_text.delta":
            text += p["delta"]
        elif dialect == "gemini":
            text += "".join(part.get("text") or "" for c in p.get("candidates") or ()
                            for part in c["content"].get("parts") or ())
    assert error_at is not None, body
    return Seen(text, payloads[error_at], [e.event for e in events[error_at + 1:]])


def check(seen: Seen, reference: Seen, dialect: str) -> None:
    assert seen.text == reference.text
    assert seen.trailer == reference.trailer == (["response.failed"] if dialect == "responses" else [])
    assert seen.error == reference.error or dialect == "responses"  # Responses errors carry a sequence number


def finished(w: World, kind: str, run: Callable[[], Seen]) -> Seen:
    """``run``'s stream, once the gateway has also counted it as a stream error (the metrics are
    written after the caller's last byte)."""
    count = lambda: w.metric("modelroute_requests_total", route=f"via-{kind}", status="stream_error")  # noqa: E731
    n = count()
    seen = run()
    wait_until_sync(lambda: count() == n + 1)
    return seen


def paced(w: World, dialect: str, kind: str) -> Seen:
    """The reference: the same stream with one event per read (what the caller always got)."""
    up = w.upstream(kind)
    up.faults.clear()
    up.faults.error_mid_stream(ERROR_AFTER, MESSAGE)
    up.faults.slow_stream(0.01)
    seen = finished(w, kind, lambda: read_stream(w, dialect, kind))
    assert seen.text and "echo: one two three".startswith(seen.text[:19])  # some, not all, of the answer
    assert not seen.text.endswith("eight")
    return seen


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_good_events_in_the_errors_read_reach_the_caller_first(w: World, dialect: str, kind: str) -> None:
    reference = paced(w, dialect, kind)
    up = w.upstream(kind)
    up.faults.clear()
    up.faults.error_mid_stream(ERROR_AFTER, MESSAGE)
    up.faults.one_write()
    before = w.metric("modelroute_tokens_total", route=f"via-{kind}", type="input")
    check(finished(w, kind, lambda: read_stream(w, dialect, kind)), reference, dialect)
    if kind in ("gemini", "vertex") or (dialect == "messages" and kind.endswith(("anthropic", "claude"))):
        # Usage the upstream reported before its error (Gemini's usageMetadata on every chunk,
        # a passed-through message_start) is counted: those tokens were delivered.
        assert w.metric("modelroute_tokens_total", route=f"via-{kind}", type="input") > before


@pytest.mark.parametrize("cuts", [(1,), (7, 40), (60, 61, 62, 200), tuple(range(3, 600, 37))],
                         ids=["1", "7-40", "60-62-200", "every-37"])
@pytest.mark.parametrize("kind", KINDS)
def test_the_same_whatever_the_byte_cuts(w: World, kind: str, cuts: tuple[int, ...]) -> None:
    dialect = {"openai": "chat", "anthropic": "messages", "gemini": "gemini", "bedrock": "responses",
               "bedrock-claude": "messages", "vertex": "gemini", "vertex-claude": "chat"}[kind]
    reference = paced(w, dialect, kind)
    up = w.upstream(kind)
    up.faults.clear()
    up.faults.error_mid_stream(ERROR_AFTER, MESSAGE)
    up.faults.one_write(cuts)
    check(read_stream(w, dialect, kind), reference, dialect)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_sdks_get_the_text_then_the_error(w: World, dialect: str, kind: str) -> None:
    reference = paced(w, dialect, kind)
    up = w.upstream(kind)
    up.faults.clear()
    up.faults.error_mid_stream(ERROR_AFTER, MESSAGE)
    up.faults.one_write()
    text = ""
    route = f"via-{kind}"
    if dialect == "messages":
        client = anthropic.Anthropic(base_url=w.root, api_key="x", max_retries=0)
        with pytest.raises(anthropic.APIStatusError), client.messages.stream(
                model=route, max_tokens=100, messages=[{"role": "user", "content": PROMPT}]) as s:
            for t in s.text_stream:
                text += t
    elif dialect == "gemini":
        g = genai.Client(api_key="x", http_options=types.HttpOptions(base_url=w.root))
        with pytest.raises(errors.APIError):
            for c in g.models.generate_content_stream(model=route, contents=PROMPT):
                text += c.text or ""
    else:
        oa = openai.OpenAI(base_url=w.root + "/v1", api_key="x", max_retries=0)
        if dialect == "responses":
            events = []
            for e in oa.responses.create(model=route, input=PROMPT, stream=True):
                events.append(e.type)
                if e.type == "response.output_text.delta":
                    text += e.delta
            assert events[-2:] == ["error", "response.failed"]
        else:
            with pytest.raises(openai.APIError):
                for chunk in oa.chat.completions.create(model=route, stream=True,
                                                    messages=[{"role": "user", "content": PROMPT}]):
                    text += "".join(ch.delta.content or "" for ch in chunk.choices)
    assert text == reference.text
