"""Chat, streaming, tools, embeddings and models through the gateway, with the openai SDK."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.fakes.azure import FakeAzureOpenAI
from tests.fakes.openai import FakeOpenAI
from tests.gateway.harness import FAST, model_route, provider_key, running_gateway, user

TOOLS: Any = [{"type": "function", "function": {
    "name": "lookup", "description": "Look up a word",
    "parameters": {"type": "object", "properties": {"echo": {"type": "string"}}}}}]


async def test_plain_chat_reaches_backend_model_by_route_name() -> None:
    async with FakeOpenAI(keys=["sk-a"]) as up, running_gateway([
        *provider_key("openai", "openai", up.base_url, ["sk-a"]),
        model_route("chat-default", ("openai", "gpt-4o-mini"), **FAST),
    ]) as gw:
        raw = await gw.client().chat.completions.with_raw_response.create(
            model="chat-default", messages=user("hello there"))
        resp = raw.parse()
        assert resp.choices[0].message.content == "echo: hello there"
        assert resp.choices[0].finish_reason == "stop"
        assert resp.usage is not None and resp.usage.prompt_tokens == 2 and resp.usage.completion_tokens == 3
        assert raw.headers["x-modelroute-backend"] == "openai/gpt-4o-mini"
        assert raw.headers["x-modelroute-attempts"] == "1"
        sent = up.last_request
        assert sent.body["model"] == "gpt-4o-mini"
        assert sent.headers["authorization"] == "Bearer sk-a"
        assert await gw.metric("modelroute_tokens_total", route="chat-default", type="input") == 2
        assert await gw.metric("modelroute_tokens_total", route="chat-default", type="output") == 3
        assert await gw.metric("modelroute_requests_total", route="chat-default", status="200") == 1
        # gpt-4o-mini: $0.15 in / $0.60 out per million tokens
        cost = await gw.metric("modelroute_cost_usd_total", route="chat-default")
        assert cost == pytest.approx((2 * 0.15 + 3 * 0.60) / 1e6)


async def test_pattern_routing_by_provider_key_models() -> None:
    async with FakeOpenAI() as up, running_gateway(provider_key("openai", "openai", up.base_url)) as gw:
        resp = await gw.client().chat.completions.create(model="gpt-4.1", messages=user("x"))
        assert resp.choices[0].message.content == "echo: x"
        assert up.last_request.body["model"] == "gpt-4.1"
        with pytest.raises(openai.NotFoundError) as e:
            await gw.client().chat.completions.create(model="llama-9", messages=user("x"))
        assert e.value.code == "model_not_found"
        assert e.value.body["param"] == "model"  # type: ignore[index]


@pytest.mark.parametrize("include_usage", [False, True])
async def test_streaming_text(include_usage: bool) -> None:
    async with FakeOpenAI() as up, running_gateway([
        *provider_key("openai", "openai", up.base_url), model_route("chat", ("openai", "gpt-4o"), **FAST)
    ]) as gw:
        kwargs: Any = {"stream_options": {"include_usage": True}} if include_usage else {}
        stream = await gw.client().chat.completions.create(
            model="chat", messages=user("one two three"), stream=True, **kwargs)
        chunks = [c async for c in stream]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "echo: one two three"
        usage_chunks = [c for c in chunks if not c.choices]
        assert len(usage_chunks) == (1 if include_usage else 0)
        if include_usage:
            assert usage_chunks[0].usage is not None and usage_chunks[0].usage.completion_tokens == 4
        # The gateway always asks for usage upstream, so it can meter the stream.
        assert up.last_request.body["stream_options"] == {"include_usage": True}
        assert await gw.metric("modelroute_tokens_total", route="chat", type="output") == 4
        assert await gw.metric("modelroute_time_to_first_token_seconds_count", route="chat") == 1


async def test_tools_non_streaming_and_streaming() -> None:
    async with FakeOpenAI() as up, running_gateway([
        *provider_key("openai", "openai", up.base_url), model_route("chat", ("openai", "gpt-4o"), **FAST)
    ]) as gw:
        client = gw.client()
        msgs: Any = user("define gateway")
        resp = await client.chat.completions.create(model="chat", messages=msgs, tools=TOOLS)
        call: Any = resp.choices[0].message.tool_calls[0]  # type: ignore[index]
        assert resp.choices[0].finish_reason == "tool_calls"
        assert call.function.name == "lookup" and call.function.arguments == '{"echo":"define gateway"}'
        stream = await client.chat.completions.create(model="chat", messages=msgs, tools=TOOLS, stream=True)
        args, names, ids = "", [], []
        async for c in stream:
            for tc in (c.choices[0].delta.tool_calls or []) if c.choices else []:
                args += tc.function.arguments or "" if tc.function else ""
                if tc.function and tc.function.name:
                    names.append(tc.function.name)
                if tc.id:
                    ids.append(tc.id)
        assert args == '{"echo":"define gateway"}' and names == ["lookup"] and len(ids) == 1
        follow_msgs: Any = [
            *msgs, {"role": "assistant", "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "a proxy"}]
        follow = await client.chat.completions.create(model="chat", messages=follow_msgs, tools=TOOLS)
        assert follow.choices[0].message.content == "tool said: a proxy"


async def test_image_parts_pass_through() -> None:
    async with FakeOpenAI() as up, running_gateway([
        *provider_key("openai", "openai", up.base_url), model_route("vision", ("openai", "gpt-4o"), **FAST)
    ]) as gw:
        content = [{"type": "text", "text": "what is"},
                   {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}}]
        resp = await gw.client().chat.completions.create(model="vision", messages=user(content))
        assert resp.choices[0].message.content == "echo: what is [image]"
        assert up.last_request.body["messages"][0]["content"] == content


async def test_embeddings_and_models() -> None:
    async with FakeOpenAI() as up, running_gateway([
        *provider_key("openai", "openai", up.base_url),
        model_route("embed", ("openai", "text-embedding-3-small"), **FAST),
        model_route("chat", ("openai", "gpt-4o"), **FAST),
    ]) as gw:
        client = gw.client()
        emb = await client.embeddings.create(model="embed", input=["a b", "c"])
        assert len(emb.data) == 2 and len(emb.data[0].embedding) == 8
        assert up.last_request.body["model"] == "text-embedding-3-small"
        assert await gw.metric("modelroute_tokens_total", route="embed", type="input") == 3
        single = await client.embeddings.create(model="text-embedding-3-large", input="hello")
        assert len(single.data) == 1
        ids = [m.id async for m in client.models.list()]
        assert ids == ["chat", "embed"]


async def test_azure_openai_deployment_urls_and_api_key_header() -> None:
    async with FakeAzureOpenAI(keys=["az-1"], deployments={"prod-4o": "gpt-4o"}) as up, running_gateway([
        *provider_key("azure", "azure-openai", up.url, ["az-1"], apiVersion="2024-10-21"),
        model_route("chat", ("azure", "prod-4o"), **FAST),
    ]) as gw:
        resp = await gw.client().chat.completions.create(model="chat", messages=user("hi"))
        assert resp.choices[0].message.content == "echo: hi"
        req = up.last_request
        assert req.path == "/openai/deployments/prod-4o/chat/completions"
        assert req.query["api-version"] == "2024-10-21"
        assert req.headers["api-key"] == "az-1" and "authorization" not in req.headers
        stream = await gw.client().chat.completions.create(
            model="chat", messages=user("a b"), stream=True)
        assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == "echo: a b"


async def test_openai_compatible_without_key() -> None:
    """A self-hosted backend (vLLM, Ollama) with no secretRef gets no Authorization header."""
    async with FakeOpenAI(keys=[]) as up, running_gateway([
        *provider_key("vllm", "openai-compatible", up.base_url, keys=None, models=["llama-*"]),
    ]) as gw:
        up.require_auth = False
        resp = await gw.client().chat.completions.create(model="llama-3.1-8b", messages=user("q"))
        assert resp.choices[0].message.content == "echo: q"
        assert "authorization" not in up.last_request.headers
