"""An upstream stream that is not valid SSE or JSON is an error, never content.

Before the first output reaches the caller the attempt fails over; after it the caller gets a
well-formed error event in its own dialect. Either way the backend is marked failed, so its
circuit opens. Every caller dialect against every upstream kind: pass-through (Chat and
Responses to OpenAI, Messages to Anthropic) and translated.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import anthropic
import orjson
import pytest

from modelroute_sidecar.config import GatewayConfig, from_data
from modelroute_sidecar.sse import SSEParser
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.base import FakeUpstream
from tests.fakes.gemini import FakeGemini
from tests.fakes.openai import FakeOpenAI
from tests.gateway.harness import FAST, RunningGateway, model_route, provider_key, running_gateway

PRIMARY = {"openai": ("gpt-4o", FakeOpenAI), "anthropic": ("claude-sonnet-4-6", FakeAnthropic),
           "gemini": ("gemini-2.5-flash", FakeGemini)}
DIALECTS = ["chat", "messages", "responses"]
GARBAGE = {
    "not JSON": b"data: {not json}\n\n",
    "JSON but no object": b"data: [1, 2]\n\n",
    "not SSE": b"<html><body>502 Bad Gateway</body></html>\n\n",
}
BREAKER = from_data({"circuitBreaker": {"failureThreshold": 2, "openSeconds": 600}}, GatewayConfig)


@dataclass
class Pair:
    gw: RunningGateway
    primary: FakeUpstream
    secondary: FakeOpenAI
    backend: str  # the primary's backend id


@asynccontextmanager
async def pair(kind: str) -> AsyncIterator[Pair]:
    model, fake = PRIMARY[kind]
    async with AsyncExitStack() as stack:
        primary: Any = await stack.enter_async_context(fake(keys=["k-p"]))
        secondary = await stack.enter_async_context(FakeOpenAI(keys=["k-s"]))
        base = primary.base_url if kind != "gemini" else primary.url
        gw = await stack.enter_async_context(running_gateway([
            *provider_key("p", kind, base, ["k-p"]), *provider_key("s", "openai", secondary.base_url, ["k-s"]),
            model_route("chat", ("p", model), ("s", "gpt-4o-mini"), **FAST)], BREAKER))
        yield Pair(gw, primary, secondary, f"p/{model}")


async def sdk_stream_text(gw: RunningGateway, dialect: str) -> str:
    """The caller's streamed text through its official SDK."""
    if dialect == "messages":
        client = anthropic.AsyncAnthropic(base_url=gw.root, api_key="x", max_retries=0)
        async with client.messages.stream(model="chat", max_tokens=100,
                                          messages=[{"role": "user", "content": "ping"}]) as s:
            return "".join([t async for t in s.text_stream])
    openai_client = gw.client()
    if dialect == "responses":
        events = await openai_client.responses.create(model="chat", input="ping", stream=True)
        return "".join([e.delta async for e in events if e.type == "response.output_text.delta"])
    chunks = await openai_client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "ping"}],
                                                         stream=True)
    return "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])


async def raw_stream(gw: RunningGateway, dialect: str) -> bytes:
    requests: dict[str, tuple[str, dict[str, Any]]] = {
        "chat": ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a b c d e f"}]}),
        "messages": ("/v1/messages", {"max_tokens": 100, "messages": [{"role": "user", "content": "a b c d e f"}]}),
        "responses": ("/v1/responses", {"input": "a b c d e f"}),
    }
    path, body = requests[dialect]
    async with aiohttp.ClientSession() as s, s.post(gw.root + path, json={"model": "chat", "stream": True, **body},
                                                     headers={"anthropic-version": "2023-06-01"}) as r:
        assert r.status == 200
        return await r.read()


def assert_ends_with_an_error_event(dialect: str, body: bytes) -> None:
    events = SSEParser().feed(body)  # the caller's stream itself is valid SSE
    payloads = [orjson.loads(e.data) for e in events if e.data != b"[DONE]"]  # and valid JSON
    assert all(isinstance(p, dict) for p in payloads)
    assert b"not json" not in body and b"<html>" not in body and b"[1, 2]" not in body
    if dialect == "chat":
        assert "error" in payloads[-1] and events[-1].data != b"[DONE]"
    elif dialect == "messages":
        assert events[-1].event == "error" and payloads[-1]["type"] == "error"
    else:
        assert [e.event for e in events[-2:]] == ["error", "response.failed"]
    assert "invalid stream" in body.decode()


@pytest.mark.parametrize("garbage", list(GARBAGE), ids=list(GARBAGE))
@pytest.mark.parametrize("kind", list(PRIMARY))
@pytest.mark.parametrize("dialect", DIALECTS)
async def test_invalid_stream_before_output_fails_over(dialect: str, kind: str, garbage: str) -> None:
    async with pair(kind) as p:
        p.primary.faults.garbage_mid_stream(0, GARBAGE[garbage])
        for _ in range(2):
            assert await sdk_stream_text(p.gw, dialect) == "echo: ping"
        assert len(p.secondary.requests) == 2
        assert await p.gw.metric("modelroute_failovers_total", from_backend=p.backend, reason="stream_error") == 2
        assert await p.gw.metric("modelroute_requests_total", route="chat", status="stream_error") == 2
        # Two failures: the circuit opens, and the next request goes straight to the secondary.
        assert await p.gw.metric("modelroute_backend_up", backend=p.backend) == 0
        n = len(p.primary.requests)
        assert await sdk_stream_text(p.gw, dialect) == "echo: ping"
        assert len(p.primary.requests) == n


@pytest.mark.parametrize("kind", list(PRIMARY))
@pytest.mark.parametrize("dialect", DIALECTS)
async def test_invalid_stream_after_output_ends_with_an_error_event(dialect: str, kind: str) -> None:
    async with pair(kind) as p:
        p.primary.faults.garbage_mid_stream(3)
        p.primary.faults.slow_stream(0.02)  # the first events reach the caller before the garbage arrives
        for _ in range(2):
            body = await raw_stream(p.gw, dialect)
            assert_ends_with_an_error_event(dialect, body)
        assert p.secondary.requests == []  # output had reached the caller: no failover
        assert await p.gw.metric("modelroute_requests_total", route="chat", status="stream_error") == 2
        assert await p.gw.metric("modelroute_backend_up", backend=p.backend) == 0
        p.primary.faults.clear()
        assert await sdk_stream_text(p.gw, dialect) == "echo: ping"
        assert len(p.secondary.requests) == 1  # the open circuit sent it to the healthy secondary
