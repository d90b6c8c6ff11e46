"""Model names are data, never URL syntax (issue 9, class 1).

A caller picks the model name, and a glob ProviderKey (the defaults ``gemini-*`` and
``gpt-*`` included) routes whatever follows the prefix. The real `modelroute serve`
runs in front of a relay that records every request line byte for byte, with one glob
ProviderKey of each kind: Gemini and classic Azure put the name in the URL path; OpenAI,
Anthropic and Azure's v1 surface carry it only in the body. Hostile names get a 400 in
the caller's dialect and nothing at all is sent upstream; names that are valid but hold
``/ : @ + ~`` reach the upstream as exactly one path segment.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import aiohttp
import anthropic
import openai
import orjson
import pytest
import yaml

from modelroute_sidecar.config import GatewayConfig, from_data
from modelroute_sidecar.resources import ModelRoute
from modelroute_sidecar.syntax import MODEL_NAME_PATTERN, valid_model_name
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.azure import FakeAzureOpenAI
from tests.fakes.capture import RequestLineRecorder
from tests.fakes.gemini import FakeGemini
from tests.fakes.openai import FakeOpenAI
from tests.gateway.harness import model_route, provider_key
from tests.gateway.procs import GatewayProcess, modelroute

CRDS = Path(__file__).resolve().parents[2] / "crds"

# Every prefix is one glob ProviderKey's; what follows it is the attack.
PREFIXES = ("gemini-", "gpt-", "azure-", "azv1-", "claude-")

HOSTILE_TAILS = [
    # The issue's own examples.
    "x/../../../v1beta/tunedModels?",
    "x?key=EVIL#",
    "4o/../other-deployment/chat/completions?api-version=2024-10-21#",
    # Dot segments, plain and percent-encoded, and in every position.
    "x/..", "x/.", "x/./y", "x//y", "x/", "x/.hidden", "x/%2e%2e/y", "x%2e%2e%2fy", "x%2F..%2F..%2Fv1beta",
    "%2e%2e", "x%00y", "x%0d%0aHost:%20evil",
    # Unicode look-alikes of . and /, which a server might normalise.
    "x\u2024\u2024/y", "x\uff0e\uff0e\uff0fy", "x\u2215..\u2215y", "x\u00e9",
    # Controls and whitespace, which would break the request line or a header.
    "x\x00y", "x y", "x\ty", "x\r\nHost: evil", "x\nfoo", "x\r", "x\x7f",
    # Other URL syntax.
    "x#frag", "x;param", "x&key=1", "x\\..\\y", "x\"y", "x<y>", "x%y",
    # Very long.
    "x" * 300, "y" * 20_000,
]

# Valid names holding every non-alphanumeric character the rule admits.
ODD_BUT_VALID_TAILS = ["x/v1beta/tunedModels", "a:b@c+d~e", "4o/other-deployment/chat", "x/y.z/w_1"]


def documents(gemini: RequestLineRecorder, azure: RequestLineRecorder, oai: RequestLineRecorder,
              claude: RequestLineRecorder) -> list[dict[str, Any]]:
    return [
        *provider_key("gemini", "gemini", gemini.url, ["gemini-key"]),  # default models: gemini-*, ...
        *provider_key("openai", "openai", oai.url + "/v1", ["sk-test"]),  # default models: gpt-*, ...
        *provider_key("azure", "azure-openai", azure.url, ["azure-key"], models=["azure-*"]),
        *provider_key("azure-v1", "azure-openai", azure.url, ["azure-key"], models=["azv1-*"], apiVersion="v1"),
        *provider_key("claude", "anthropic", claude.url, ["sk-ant-test"]),  # default models: claude-*
        model_route("chat", ("openai", "gpt-4o")),
    ]


@contextlib.asynccontextmanager
async def gateway(tmp_path: Path) -> AsyncIterator[tuple[GatewayProcess, list[RequestLineRecorder]]]:
    async with (FakeGemini(keys=["gemini-key"]) as gemini, FakeAzureOpenAI(keys=["azure-key"]) as azure,
                FakeOpenAI(keys=["sk-test"]) as oai, FakeAnthropic(keys=["sk-ant-test"]) as claude,
                RequestLineRecorder(gemini.port) as rg, RequestLineRecorder(azure.port) as ra,
                RequestLineRecorder(oai.port) as ro, RequestLineRecorder(claude.port) as rc):
        cfg = tmp_path / "routes.yaml"
        cfg.write_text(yaml.safe_dump_all(documents(rg, ra, ro, rc)))
        with modelroute(tmp_path, "serve", "-f", str(cfg)) as gp:
            yield gp, [rg, ra, ro, rc]


Call = Callable[[str], Awaitable[tuple[int, Any]]]


def callers(gp: GatewayProcess) -> dict[str, Call]:
    """One request per caller dialect; each returns (status, parsed error body or None)."""
    oai = openai.AsyncOpenAI(base_url=gp.url, api_key="placeholder", max_retries=0)
    ant = anthropic.AsyncAnthropic(base_url=f"http://127.0.0.1:{gp.port}", api_key="placeholder", max_retries=0)

    async def run(make: Callable[[], Awaitable[Any]]) -> tuple[int, Any]:
        try:
            await make()
        except (openai.APIStatusError, anthropic.APIStatusError) as e:
            return e.status_code, e.response.json()
        return 200, None

    def chat(stream: bool) -> Call:
        async def call(model: str) -> tuple[int, Any]:
            async def make() -> Any:
                r = await oai.chat.completions.create(model=model, stream=stream,
                                                      messages=[{"role": "user", "content": "hi"}])
                if stream:
                    async for _ in r:  # type: ignore[union-attr]
                        pass
            return await run(make)
        return call

    async def messages(model: str) -> tuple[int, Any]:
        return await run(lambda: ant.messages.create(model=model, max_tokens=16,
                                                     messages=[{"role": "user", "content": "hi"}]))

    async def count_tokens(model: str) -> tuple[int, Any]:
        # Asked upstream where the first backend counts (Anthropic, Gemini): a URL built from the name.
        return await run(lambda: ant.messages.count_tokens(model=model, messages=[{"role": "user", "content": "hi"}]))

    async def responses(model: str) -> tuple[int, Any]:
        return await run(lambda: oai.responses.create(model=model, input="hi"))

    async def embeddings(model: str) -> tuple[int, Any]:
        return await run(lambda: oai.embeddings.create(model=model, input="hi"))

    def gemini(method: str) -> Call:
        # Gemini callers name the model in the URL path: one segment, every byte escaped.
        async def call(model: str) -> tuple[int, Any]:
            url = f"http://127.0.0.1:{gp.port}/v1beta/models/{quote(model, safe='')}:{method}"
            async with aiohttp.ClientSession() as http, http.post(
                    url, json={"contents": [{"parts": [{"text": "hi"}]}]}) as r:
                body = await r.read()
                if len(url) > MAX_REQUEST_LINE:  # refused by the HTTP parser, before any handler
                    return r.status, {"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "model name"}}
                return r.status, orjson.loads(body) if r.status >= 400 else None
        return call

    return {"chat": chat(False), "chat-stream": chat(True), "messages": messages, "count_tokens": count_tokens,
            "responses": responses, "embeddings": embeddings, "gemini": gemini("generateContent"),
            "gemini-stream": gemini("streamGenerateContent?alt=sse"), "gemini-count": gemini("countTokens")}


def as_sent(target: str) -> str:
    """A target with percent-escapes of characters a path segment may hold literally (':' '@' '+')
    spelled out, as aiohttp's URL handling does; '%2F' stays: it is what keeps a name one segment."""
    return "%2F".join(unquote(part) for part in target.split("%2F"))


MAX_REQUEST_LINE = 8190  # aiohttp's limit: a longer URL is a plain 400 from its parser


def is_model_name_error(dialect: str, body: Any) -> bool:
    if dialect.startswith("gemini"):  # Gemini's shape
        err = body["error"]
        return err["code"] == 400 and err["status"] == "INVALID_ARGUMENT" and "model name" in err["message"]
    if dialect in ("messages", "count_tokens"):  # Anthropic's shape
        return body["type"] == "error" and body["error"]["type"] == "invalid_request_error" \
            and "model name" in body["error"]["message"]
    err = body["error"]
    return err["type"] == "invalid_request_error" and err["code"] == "invalid_model_name" and err["param"] == "model"


async def test_hostile_model_names_are_refused_before_anything_is_sent(tmp_path: Path) -> None:
    async with gateway(tmp_path) as (gp, recorders):
        calls = callers(gp)
        # The relays work: a good name goes through each kind (and is recorded).
        for prefix in PREFIXES:
            status, body = await calls["messages" if prefix == "claude-" else "chat"](prefix + "ok")
            assert status == 200, (prefix, body)
        assert all(r.lines for r in recorders)
        before = [len(r.lines) for r in recorders]

        refused = 0
        for prefix in PREFIXES:
            for tail in HOSTILE_TAILS:
                name = prefix + tail
                assert not valid_model_name(name), name
                for dialect, call in calls.items():
                    status, body = await call(name)
                    assert status == 400 and is_model_name_error(dialect, body), (dialect, name, status, body)
                    refused += 1
        assert refused == len(PREFIXES) * len(HOSTILE_TAILS) * len(calls)
        sent = [r.lines[b:] for r, b in zip(recorders, before, strict=True)]
        assert sent == [[], [], [], []], sent
        assert not any(r.unparsable for r in recorders)
        # Nothing broke: the gateway still serves, and never answered a 500.
        assert (await calls["chat"]("chat"))[0] == 200
        assert "internal error" not in gp.logs()


async def test_odd_but_valid_names_reach_the_upstream_as_one_path_segment(tmp_path: Path) -> None:
    async with gateway(tmp_path) as (gp, recorders):
        rg, ra, ro, rc = recorders
        calls = callers(gp)
        for tail in ODD_BUT_VALID_TAILS:
            expected = {
                "gemini-": (rg, f"/v1beta/models/{quote('gemini-' + tail, safe='')}:generateContent"),
                "gpt-": (ro, "/v1/chat/completions"),
                "azure-": (ra, f"/openai/deployments/{quote('azure-' + tail, safe='')}/chat/completions"
                               "?api-version=2024-10-21"),
                "azv1-": (ra, "/openai/v1/chat/completions"),
                "claude-": (rc, "/v1/messages"),
            }
            for prefix, (rec, target) in expected.items():
                name = prefix + tail
                assert valid_model_name(name)
                seen = len(rec.lines)
                status, body = await calls["messages" if prefix == "claude-" else "chat"](name)
                assert status < 500, (name, status, body)
                assert [as_sent(t) for t in rec.targets[seen:]] == [as_sent(target)], (name, rec.lines[seen:])
                assert rec.lines[seen].endswith(b" HTTP/1.1")
        # A name in a URL has no '/' left, and no dot segment, whatever it was.
        for target in rg.targets + ra.targets:
            assert "/../" not in target and "/./" not in target
            assert "?" not in target or target.endswith("?api-version=2024-10-21") or target.endswith("?alt=sse")
        # Gemini streams too.
        seen = len(rg.lines)
        assert (await calls["chat-stream"]("gemini-a:b/c"))[0] < 500
        sent = [as_sent(t) for t in rg.targets[seen:]]
        assert sent == ["/v1beta/models/gemini-a:b%2Fc:streamGenerateContent?alt=sse"]
        # And count_tokens, which asks Gemini.
        seen = len(rg.lines)
        assert (await calls["count_tokens"]("gemini-a:b/c"))[0] < 500
        assert [as_sent(t) for t in rg.targets[seen:]] == ["/v1beta/models/gemini-a:b%2Fc:countTokens"]
        # Gemini callers, whose name comes from their own URL path, passed through to Gemini.
        for kind, method in (("gemini", "generateContent"), ("gemini-stream", "streamGenerateContent?alt=sse"),
                             ("gemini-count", "countTokens")):
            seen = len(rg.lines)
            assert (await calls[kind]("gemini-a:b/c"))[0] < 500
            assert [as_sent(t) for t in rg.targets[seen:]] == [f"/v1beta/models/gemini-a:b%2Fc:{method}"]


def test_the_rule_is_stated_once_and_the_crd_carries_it() -> None:
    """The CRD's OpenAPI pattern is the very text of syntax.MODEL_NAME_PATTERN."""
    crd = yaml.safe_load((CRDS / "modelroutes.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert spec["model"]["pattern"] == MODEL_NAME_PATTERN
    assert spec["backends"]["items"]["properties"]["model"]["pattern"] == MODEL_NAME_PATTERN
    for good in ("gpt-4.1", "Qwen/Qwen2.5-7B-Instruct", "qwen2.5:7b", "@cf/meta/llama-3-8b-instruct",
                 "anthropic.claude-3-5-sonnet-20241022-v2:0", "~anthropic/claude-sonnet-latest"):
        assert valid_model_name(good), good
        ModelRoute.model_validate(model_route(good, ("pk", good)))
    for tail in HOSTILE_TAILS:
        with pytest.raises(ValueError):
            ModelRoute.model_validate(model_route("chat", ("pk", "gpt-" + tail), name="chat"))
        # The sidecar's own config (config.json) holds to the rule too.
        with pytest.raises(ValueError):
            from_data({"routes": {"chat": {"model": "chat", "backends": [
                {"providerKey": "pk", "model": "gpt-" + tail}]}}}, GatewayConfig)
        with pytest.raises(ValueError):
            from_data({"routes": {"x": {"model": "gpt-" + tail}}}, GatewayConfig)
