"""The Responses API (Codex) on upstreams without ``/v1/responses``: the Chat Completions bridge.

Many OpenAI-compatible servers (DeepSeek, Mistral, vLLM and Ollama builds) serve only Chat
Completions. A ProviderKey's ``responsesAPI`` says what to do: ``native`` passes Responses
through, ``bridge`` translates them, ``auto`` (the default) passes through until the upstream
answers 404/405 there, then bridges at once, in the same request, and from then on.
"""

from __future__ import annotations

import asyncio

import openai
import pytest

from tests.fakes.openai import FakeOpenAI
from tests.gateway.harness import FAST, model_route, provider_key, running_gateway


async def test_auto_bridges_on_404_within_the_request_and_remembers() -> None:
    async with FakeOpenAI(keys=["k"], responses_api=False) as up, running_gateway([
        *provider_key("vllm", "openai-compatible", up.base_url, ["k"]),
        model_route("local", ("vllm", "qwen3"), **FAST),
    ]) as gw:
        client = gw.client()
        raw = await client.responses.with_raw_response.create(model="local", input="hello there")
        resp = raw.parse()
        assert resp.output_text == "echo: hello there"
        assert raw.headers["x-modelroute-attempts"] == "2"
        assert [r.path for r in up.requests] == ["/v1/responses", "/v1/chat/completions"]
        # Remembered: the next request, streamed, goes straight to Chat Completions.
        async with client.responses.stream(model="local", input="one two") as s:
            deltas = [e.delta async for e in s if e.type == "response.output_text.delta"]
            final = await s.get_final_response()
        assert "".join(deltas) == final.output_text == "echo: one two"
        assert final.usage is not None and (final.usage.input_tokens, final.usage.output_tokens) == (2, 3)
        assert [r.path for r in up.requests][2:] == ["/v1/chat/completions"]
        assert await gw.metric("modelroute_failovers_total", reason="no_responses_api") == 1
        assert await gw.metric("modelroute_backend_up", route="local") == 1  # not the backend's fault


async def test_requests_in_flight_when_the_bridge_starts_are_bridged_too() -> None:
    """Codex sends requests side by side: every one that left as a pass-through before the first
    404 came back meets its own 404, and each is retried through the bridge, not refused."""
    async with FakeOpenAI(keys=["k"], responses_api=False) as up, running_gateway([
        *provider_key("vllm", "openai-compatible", up.base_url, ["k"]),
        model_route("local", ("vllm", "qwen3"), **FAST),
    ]) as gw:
        client = gw.client()
        answers = await asyncio.gather(*[client.responses.create(model="local", input=f"hello {i}")
                                         for i in range(8)])
        assert [a.output_text for a in answers] == [f"echo: hello {i}" for i in range(8)]
        assert sum(r.path == "/v1/responses" for r in up.requests) > 1  # several were in flight


async def test_auto_bridge_is_remembered_across_reloads() -> None:
    async with FakeOpenAI(keys=["k"], responses_api=False) as up:
        docs = [*provider_key("vllm", "openai-compatible", up.base_url, ["k"]),
                model_route("local", ("vllm", "qwen3"), **FAST)]
        async with running_gateway(docs) as gw:
            await gw.client().responses.create(model="local", input="hi")
            gw.apply([*docs, model_route("other", ("vllm", "qwen3"), **FAST)])
            await gw.client().responses.create(model="other", input="hi")
        assert [r.path for r in up.requests] == ["/v1/responses", "/v1/chat/completions", "/v1/chat/completions"]


@pytest.mark.parametrize(("setting", "paths"), [
    ("bridge", ["/v1/chat/completions"]),
    ("native", ["/v1/responses"]),
])
async def test_responses_api_setting(setting: str, paths: list[str]) -> None:
    async with FakeOpenAI(keys=["k"], responses_api=False) as up, running_gateway([
        *provider_key("vllm", "openai-compatible", up.base_url, ["k"], responsesAPI=setting),
        model_route("local", ("vllm", "qwen3"), **FAST),
    ]) as gw:
        if setting == "native":
            # Told the upstream has the Responses API: its 404 is the caller's answer.
            with pytest.raises(openai.NotFoundError):
                await gw.client().responses.create(model="local", input="hi")
        else:
            resp = await gw.client().responses.create(model="local", input="hi")
            assert resp.output_text == "echo: hi"
        assert [r.path for r in up.requests] == paths


async def test_openai_with_responses_is_never_bridged() -> None:
    async with FakeOpenAI(keys=["k"]) as up, running_gateway([
        *provider_key("openai", "openai", up.base_url, ["k"]),
        model_route("gpt", ("openai", "gpt-4o"), **FAST),
    ]) as gw:
        for _ in range(2):
            resp = await gw.client().responses.create(model="gpt", input="hi", store=False)
            assert resp.output_text == "echo: hi"
        assert [r.path for r in up.requests] == ["/v1/responses", "/v1/responses"]


async def test_a_model_404_is_not_taken_for_a_missing_responses_api() -> None:
    async with FakeOpenAI(keys=["k"], models=["qwen3"]) as up, running_gateway([
        *provider_key("vllm", "openai-compatible", up.base_url, ["k"]),
        model_route("wrong", ("vllm", "no-such-model"), **FAST),
        model_route("local", ("vllm", "qwen3"), **FAST),
    ]) as gw:
        with pytest.raises(openai.NotFoundError):
            await gw.client().responses.create(model="wrong", input="hi")
        resp = await gw.client().responses.create(model="local", input="hi")
        assert resp.output_text == "echo: hi"
        assert [r.path for r in up.requests] == ["/v1/responses", "/v1/responses"]  # never bridged
