"""Every caller dialect against every upstream kind, end to end through a real gateway.

Callers use the official SDKs: ``anthropic`` on ``/v1/messages`` (Claude Code's API),
``openai`` on ``/v1/chat/completions`` and ``/v1/responses`` (Codex's). Upstreams are the
faithful fakes in ``tests/fakes``, whose deterministic model answers ``echo: <last user
text>``, calls the first offered tool with ``{"echo": <text>}``, answers tool results
with ``tool said: <result>``, and counts tokens as words (5 output tokens for a call).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import anthropic
import openai
import orjson
import pytest

from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.azure import FakeAzureOpenAI
from tests.fakes.base import FakeUpstream
from tests.fakes.gemini import FakeGemini
from tests.fakes.openai import FakeOpenAI
from tests.gateway.harness import FAST, RunningGateway, model_route, provider_key, running_gateway

KINDS = ["openai", "azure", "anthropic", "gemini"]
BACKEND = {"openai": "openai/gpt-4o", "azure": "azure/prod-4o", "anthropic": "anthropic/claude-sonnet-4-6",
           "gemini": "gemini/gemini-2.5-flash"}
CHAT_TOOL = {"type": "function", "function": {"name": "lookup", "description": "Look up a word", "parameters": {
    "type": "object", "properties": {"echo": {"type": "string"}}, "required": ["echo"],
    "additionalProperties": False, "$schema": "http://json-schema.org/draft-07/schema#"}}}
MESSAGES_TOOL = {"name": "lookup", "description": "Look up a word",
                 "input_schema": CHAT_TOOL["function"]["parameters"]}  # type: ignore[index]
RESPONSES_TOOL = {"type": "function", "name": "lookup", "description": "Look up a word",
                  "parameters": CHAT_TOOL["function"]["parameters"], "strict": False}  # type: ignore[index]


@dataclass
class World:
    gw: RunningGateway
    up: dict[str, FakeUpstream]

    def anthropic(self) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(base_url=self.gw.root, api_key="modelroute-placeholder", max_retries=0)

    def openai(self) -> openai.AsyncOpenAI:
        return self.gw.client()


def _docs(up: dict[str, Any], extra: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    return [
        *provider_key("openai", "openai", up["openai"].base_url, ["sk-o"]),
        *provider_key("azure", "azure-openai", up["azure"].url, ["az-1"], apiVersion="2024-10-21"),
        *provider_key("anthropic", "anthropic", up["anthropic"].base_url, ["sk-ant"]),
        *provider_key("gemini", "gemini", up["gemini"].base_url, ["g-key"]),
        *[model_route(f"via-{k}", tuple(BACKEND[k].split("/")), **FAST) for k in KINDS],  # type: ignore[arg-type]
        *(extra or []),
    ]


@asynccontextmanager
async def world(extra: list[dict[str, Any]] | None = None) -> AsyncIterator[World]:
    async with AsyncExitStack() as stack:
        up: dict[str, Any] = {
            "openai": await stack.enter_async_context(FakeOpenAI(keys=["sk-o"])),
            "azure": await stack.enter_async_context(FakeAzureOpenAI(keys=["az-1"], deployments={"prod-4o": "gpt-4o"})),
            "anthropic": await stack.enter_async_context(FakeAnthropic(keys=["sk-ant"])),
            "gemini": await stack.enter_async_context(FakeGemini(keys=["g-key"])),
        }
        gw = await stack.enter_async_context(running_gateway(_docs(up, extra)))
        yield World(gw, up)


@pytest.fixture
async def w() -> AsyncIterator[World]:
    async with world() as x:
        yield x


# ------------------------------------------------------------- Anthropic Messages callers


@pytest.mark.parametrize("kind", KINDS)
async def test_messages_text(w: World, kind: str) -> None:
    raw = await w.anthropic().messages.with_raw_response.create(
        model=f"via-{kind}", max_tokens=100, system="be brief",
        messages=[{"role": "user", "content": "hello there"}])
    msg = await raw.parse()
    assert raw.headers["x-modelroute-backend"] == BACKEND[kind]
    assert [b.type for b in msg.content] == ["text"]
    assert msg.content[0].text == "echo: hello there"  # type: ignore[union-attr]
    assert msg.stop_reason == "end_turn" and msg.id.startswith("msg_")
    # Translated answers name the model the caller asked for; a pass-through keeps Anthropic's.
    assert msg.model == ("claude-sonnet-4-6" if kind == "anthropic" else f"via-{kind}")
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (4, 3)
    assert await w.gw.metric("modelroute_tokens_total", route=f"via-{kind}", type="input") == 4
    assert await w.gw.metric("modelroute_tokens_total", route=f"via-{kind}", type="output") == 3


@pytest.mark.parametrize("kind", KINDS)
async def test_messages_stream(w: World, kind: str) -> None:
    async with w.anthropic().messages.stream(model=f"via-{kind}", max_tokens=100,
                                             messages=[{"role": "user", "content": "one two three"}]) as s:
        text = "".join([t async for t in s.text_stream])
        final = await s.get_final_message()
    assert text == "echo: one two three"
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (3, 4)
    assert await w.gw.metric("modelroute_tokens_total", route=f"via-{kind}", type="output") == 4
    assert await w.gw.metric("modelroute_time_to_first_token_seconds_count", route=f"via-{kind}") == 1


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("kind", KINDS)
async def test_messages_tools_round_trip(w: World, kind: str, stream: bool) -> None:
    client: Any = w.anthropic()
    msgs: list[dict[str, Any]] = [{"role": "user", "content": "define gateway"}]
    kwargs: dict[str, Any] = {"model": f"via-{kind}", "max_tokens": 200, "tools": [MESSAGES_TOOL],
                              "tool_choice": {"type": "auto"}}
    if stream:
        async with client.messages.stream(messages=msgs, **kwargs) as s:
            first: Any = await s.get_final_message()
    else:
        first = await client.messages.create(messages=msgs, **kwargs)
    assert first.stop_reason == "tool_use"
    [call] = [b for b in first.content if b.type == "tool_use"]
    assert (call.name, call.input) == ("lookup", {"echo": "define gateway"})
    assert first.usage.output_tokens == 5
    msgs += [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
             {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "a router"}]}]
    second = await client.messages.create(messages=msgs, **kwargs)
    assert second.content[0].text == "tool said: a router"
    assert second.stop_reason == "end_turn"


async def test_messages_pass_through_to_anthropic_keeps_everything(w: World) -> None:
    """Claude Code to an Anthropic backend: the body and its beta/version headers go as sent."""
    client = anthropic.AsyncAnthropic(base_url=w.gw.root, api_key="placeholder", max_retries=0,
                                      default_headers={"anthropic-beta": "context-management-2025-06-27"})
    await client.messages.create(
        model="via-anthropic", max_tokens=2000, thinking={"type": "enabled", "budget_tokens": 1024},
        system=[{"type": "text", "text": "sys", "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "hi",
                                                "cache_control": {"type": "ephemeral"}}]}],
        metadata={"user_id": "u1"})
    sent = w.up["anthropic"].last_request
    assert sent.body["model"] == "claude-sonnet-4-6"
    assert sent.body["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert sent.body["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert sent.body["metadata"] == {"user_id": "u1"}
    assert sent.headers["anthropic-beta"] == "context-management-2025-06-27"
    assert sent.headers["anthropic-version"] == anthropic._constants.ANTHROPIC_API_VERSION
    assert sent.headers["x-api-key"] == "sk-ant"


@pytest.mark.parametrize("kind", ["openai", "gemini"])
async def test_claude_code_request_to_other_providers(w: World, kind: str) -> None:
    """Everything Claude Code sends is accepted, and dropped where the backend has no use for it."""
    body = {
        "model": f"via-{kind}", "max_tokens": 32000, "service_tier": "auto",
        "system": [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
        "thinking": {"type": "enabled", "budget_tokens": 4000}, "metadata": {"user_id": "user_x"},
        "tools": [MESSAGES_TOOL, {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {
            "type": "ephemeral"}}]}],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
        # Fields the 2.x SDK no longer types (older Claude Code versions still send them):
        "extra_body": {"temperature": 1, "top_k": 3, "context_management": {"edits": []}, "new_field_2027": True},
    }
    client = w.anthropic()
    async with client.messages.stream(**body) as s:  # type: ignore[arg-type]
        final = await s.get_final_message()
    assert final.stop_reason == "tool_use"
    sent = w.up[kind].last_request.body
    text = orjson.dumps(sent).decode()
    for gone in ("context_management", "top_k", "new_field_2027", "web_search", "cache_control"):
        assert gone not in text
    # Thinking reaches a model that thinks (Gemini 2.5: a budget for 4,000 tokens is "low"),
    # and never one that does not (gpt-4o refuses reasoning_effort).
    if kind == "gemini":
        assert sent["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 1024, "includeThoughts": True}
    else:
        assert "reasoning_effort" not in sent


@pytest.mark.parametrize("kind", KINDS)
async def test_messages_errors_in_anthropic_shape(w: World, kind: str) -> None:
    with pytest.raises(anthropic.BadRequestError) as e:
        await w.anthropic().messages.create(model=f"via-{kind}", max_tokens=0,
                                            messages=[{"role": "user", "content": "x"}])
    assert e.value.body == {"type": "error", "error": {"type": "invalid_request_error",
                                                       "message": "max_tokens: Input should be greater than or "
                                                                  "equal to 1"}}
    with pytest.raises(anthropic.NotFoundError) as nf:
        await w.anthropic().messages.create(model="nope", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert nf.value.body["type"] == "error"  # type: ignore[index]
    assert nf.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


# What the OpenAI dialects refuse, the Anthropic one refuses too: no coercion, no NaN. Raw
# bytes, as a careless client sends them (the SDK itself will not encode a NaN).
STRICT_MESSAGES: dict[str, tuple[bytes, str]] = {
    "max_tokens-string": (b'"max_tokens":"5"', "max_tokens: Input should be a valid integer"),
    "stream-yes": (b'"max_tokens":5,"stream":"yes"', "stream: Input should be a valid boolean"),
    "temperature-nan": (b'"max_tokens":5,"temperature":NaN', "temperature: Input should be a finite number"),
    "temperature-1e999": (b'"max_tokens":5,"temperature":1e999', "temperature: Input should be a finite number"),
    "temperature-string": (b'"max_tokens":5,"temperature":"0.5"', "temperature: Input should be a valid number"),
    "unknown-field-inf": (b'"max_tokens":5,"new_field_2027":{"x":[-Infinity]}',
                          "new_field_2027.x.0: Input should be a finite number"),
    "top_k-float": (b'"max_tokens":5,"top_k":2.5', "top_k: Input should be a valid integer"),
}


@pytest.mark.parametrize("case", sorted(STRICT_MESSAGES))
async def test_messages_refuse_what_openai_dialects_refuse(case: str) -> None:
    fields, message = STRICT_MESSAGES[case]
    async with world() as x, aiohttp.ClientSession() as http:
        for kind in KINDS:
            body = b'{"model":"via-' + kind.encode() + b'","messages":[{"role":"user","content":"x"}],' + fields + b"}"
            async with http.post(x.gw.root + "/v1/messages", data=body, headers={
                    "content-type": "application/json", "anthropic-version": "2023-06-01"}) as r:
                assert r.status == 400
                assert await r.json() == {"type": "error", "error": {"type": "invalid_request_error",
                                                                     "message": message}}
        assert all(up.requests == [] for up in x.up.values())


# ---------------------------------------------------------------- OpenAI Chat callers


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("kind", ["anthropic", "gemini"])
async def test_chat_with_tools_on_other_providers(w: World, kind: str, stream: bool) -> None:
    client: Any = w.openai()  # dynamic kwargs: the SDK's overloads cannot be picked statically
    msgs: list[dict[str, Any]] = [{"role": "system", "content": "be kind"}, {"role": "user", "content": "define gw"}]
    kw: dict[str, Any] = {"model": f"via-{kind}", "tools": [CHAT_TOOL]}
    if stream:
        chunks = [c async for c in await client.chat.completions.create(
            messages=msgs, stream=True, stream_options={"include_usage": True}, **kw)]
        calls: dict[int, dict[str, str]] = {}
        for c in chunks:
            for ch in c.choices:
                for tc in ch.delta.tool_calls or ():
                    slot = calls.setdefault(tc.index, {"id": "", "name": "", "args": ""})
                    slot["id"] = tc.id or slot["id"]
                    slot["name"] = (tc.function and tc.function.name) or slot["name"]
                    slot["args"] += (tc.function and tc.function.arguments) or ""
        finish = [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason]
        assert finish == ["tool_calls"]
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
        [call] = calls.values()
        call_id, name, args = call["id"], call["name"], call["args"]
    else:
        resp = await client.chat.completions.create(messages=msgs, **kw)
        assert resp.choices[0].finish_reason == "tool_calls"
        tc = resp.choices[0].message.tool_calls[0]
        call_id, name, args = tc.id, tc.function.name, tc.function.arguments
        assert resp.usage is not None and (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (4, 5)
    assert (name, orjson.loads(args)) == ("lookup", {"echo": "define gw"})
    msgs += [{"role": "assistant", "content": None, "tool_calls": [
                 {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}]},
             {"role": "tool", "tool_call_id": call_id, "content": "a router"}]
    again = await client.chat.completions.create(messages=msgs, **kw)
    assert again.choices[0].message.content == "tool said: a router"


@pytest.mark.parametrize("kind", ["anthropic", "gemini"])
async def test_chat_images_reach_other_providers(w: World, kind: str) -> None:
    resp = await w.openai().chat.completions.create(model=f"via-{kind}", messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}])
    assert resp.choices[0].message.content == "echo: what is [image]"


async def test_embeddings_on_gemini() -> None:
    extra = [model_route("embed", ("gemini", "gemini-embedding-001"), **FAST)]
    async with world(extra) as x:
        one = await x.openai().embeddings.create(model="embed", input="hello")
        many = await x.openai().embeddings.create(model="embed", input=["a", "b", "c"])
    assert len(one.data) == 1 and len(one.data[0].embedding) == 8
    assert [d.index for d in many.data] == [0, 1, 2]
    assert len(x.up["gemini"].requests_to(":embedContent")) == 1
    assert len(x.up["gemini"].requests_to(":batchEmbedContents")) == 1


# ------------------------------------------------------------- OpenAI Responses callers


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("kind", KINDS)
async def test_responses_text(w: World, kind: str, stream: bool) -> None:
    client = w.openai()
    if stream:
        async with client.responses.stream(model=f"via-{kind}", instructions="be brief",
                                           input="hello there") as s:
            deltas = [e.delta async for e in s if e.type == "response.output_text.delta"]
            resp: Any = await s.get_final_response()
        assert "".join(deltas) == "echo: hello there"
    else:
        resp = await client.responses.create(model=f"via-{kind}", instructions="be brief", input="hello there")
    assert resp.output_text == "echo: hello there"
    assert resp.status == "completed"
    assert resp.usage is not None and (resp.usage.input_tokens, resp.usage.output_tokens) == (4, 3)
    assert await w.gw.metric("modelroute_tokens_total", route=f"via-{kind}", type="output") == 3
    if kind == "openai":  # passed through: the upstream saw the Responses API itself
        assert w.up["openai"].last_request.path.endswith("/responses")


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("kind", KINDS)
async def test_responses_tools_round_trip(w: World, kind: str, stream: bool) -> None:
    client: Any = w.openai()
    items: list[dict[str, Any]] = [{"role": "user", "content": [{"type": "input_text", "text": "define gw"}]}]
    kw: dict[str, Any] = {"model": f"via-{kind}", "tools": [RESPONSES_TOOL], "store": False}
    if stream:
        async with client.responses.stream(input=items, **kw) as s:
            first: Any = await s.get_final_response()
    else:
        first = await client.responses.create(input=items, **kw)
    [call] = [o for o in first.output if o.type == "function_call"]
    assert (call.name, orjson.loads(call.arguments)) == ("lookup", {"echo": "define gw"})
    items += [{"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
              {"type": "function_call_output", "call_id": call.call_id, "output": "a router"}]
    second = await client.responses.create(input=items, **kw)
    assert second.output_text == "tool said: a router"


async def test_responses_previous_response_id_needs_openai(w: World) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        await w.openai().responses.create(model="via-gemini", input="more", previous_response_id="resp_123")
    assert e.value.param == "previous_response_id"


# -------------------------------------------------------------- failover across dialects


FAILOVER_ORDER = {"anthropic": ["anthropic", "gemini", "openai"], "gemini": ["gemini", "anthropic", "openai"],
                  "openai": ["openai", "anthropic", "gemini"]}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("caller", ["messages", "chat", "responses"])
@pytest.mark.parametrize("first", ["anthropic", "gemini", "openai"])
async def test_failover_across_providers(caller: str, first: str, stream: bool) -> None:
    order = FAILOVER_ORDER[first]
    route = model_route("mixed", *[tuple(BACKEND[k].split("/")) for k in order], **FAST)  # type: ignore[arg-type]
    async with world([route]) as x:
        x.up[order[0]].faults.fail_next(status=503)
        x.up[order[1]].faults.fail_next(status=429)
        if caller == "messages":
            kw: dict[str, Any] = {"model": "mixed", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
            if stream:
                async with x.anthropic().messages.stream(**kw) as s:
                    text = (await s.get_final_message()).content[0].text  # type: ignore[union-attr]
            else:
                text = (await x.anthropic().messages.create(**kw)).content[0].text
        elif caller == "chat":
            if stream:
                it = await x.openai().chat.completions.create(model="mixed", stream=True,
                                                              messages=[{"role": "user", "content": "hi"}])
                text = "".join([c.choices[0].delta.content or "" async for c in it if c.choices])
            else:
                text = (await x.openai().chat.completions.create(
                    model="mixed", messages=[{"role": "user", "content": "hi"}])).choices[0].message.content or ""
        elif stream:
            async with x.openai().responses.stream(model="mixed", input="hi") as rs:
                text = (await rs.get_final_response()).output_text
        else:
            text = (await x.openai().responses.create(model="mixed", input="hi")).output_text
        assert text == "echo: hi"
        assert await x.gw.metric("modelroute_failovers_total", route="mixed") == 2
        assert await x.gw.metric("modelroute_requests_total", route="mixed", status="200") == 1
        assert await x.gw.metric("modelroute_tokens_total", route="mixed", type="input") == 1
        assert await x.gw.metric("modelroute_tokens_total", route="mixed", type="output") == 2
        assert [len(x.up[k].requests) for k in order] == [1, 1, 1]


# ------------------------------------------------------------------- cost, any direction


@pytest.mark.parametrize("caller", ["messages", "chat", "responses"])
@pytest.mark.parametrize("kind", ["anthropic", "gemini", "openai"])
async def test_tokens_and_cost_whatever_the_dialects(caller: str, kind: str) -> None:
    """Cache reads (and Anthropic's cache writes) are metered and priced apart, whichever
    dialect came in and whichever went out."""
    route = model_route("priced", tuple(BACKEND[kind].split("/")), **FAST)  # type: ignore[arg-type]
    async with world([route]) as x:
        up: Any = x.up[kind]
        if kind == "anthropic":
            up.cache_read_tokens, up.cache_creation_tokens = 100, 20
        else:
            up.cached_tokens = 100
        if caller == "messages":
            msg = await x.anthropic().messages.create(model="priced", max_tokens=50,
                                                      messages=[{"role": "user", "content": "a b c"}])
            # Anthropic's input_tokens leave cache reads and writes out, whoever the upstream was
            assert (msg.usage.input_tokens, msg.usage.cache_read_input_tokens) == (3, 100)
        elif caller == "chat":
            resp = await x.openai().chat.completions.create(model="priced",
                                                            messages=[{"role": "user", "content": "a b c"}])
            assert resp.usage is not None and resp.usage.prompt_tokens_details is not None
            assert resp.usage.prompt_tokens_details.cached_tokens == 100
        else:
            r = await x.openai().responses.create(model="priced", input="a b c")
            assert r.usage is not None and r.usage.input_tokens_details.cached_tokens == 100
        inp = await x.gw.metric("modelroute_tokens_total", route="priced", type="input")
        out = await x.gw.metric("modelroute_tokens_total", route="priced", type="output")
        cost = await x.gw.metric("modelroute_cost_usd_total", route="priced")
    written = 20 if kind == "anthropic" else 0
    assert (inp, out) == (3 + 100 + written, 4)  # "echo: a b c" is 4 words
    # USD per million: fresh input, cache reads, cache writes, output at the backend model's list prices
    expect = {"anthropic": 3 * 3.0 + 100 * 0.30 + 20 * 3.75 + 4 * 15.0,  # claude-sonnet-4-6 (claude-sonnet-4)
              "gemini": 3 * 0.30 + 100 * 0.075 + 4 * 2.50,  # gemini-2.5-flash
              "openai": 3 * 2.50 + 100 * 1.25 + 4 * 10.0}[kind]  # gpt-4o
    assert cost == pytest.approx(expect / 1e6)


# ----------------------------------------------------------- failures after the first byte

LONG = "one two three four five six seven eight"


@pytest.mark.parametrize("fault", ["error", "die"])
@pytest.mark.parametrize("kind", ["openai", "anthropic", "gemini"])
async def test_messages_stream_failing_midway_ends_with_an_error_event(w: World, kind: str, fault: str) -> None:
    up = w.up[kind]
    up.faults.slow_stream(0.02)  # events in separate reads: the first one reaches the caller
    (up.faults.error_mid_stream if fault == "error" else up.faults.die_mid_stream)(after_chunks=3)
    text = ""
    with pytest.raises(anthropic.APIStatusError):
        async with w.anthropic().messages.stream(model=f"via-{kind}", max_tokens=100,
                                                 messages=[{"role": "user", "content": LONG}]) as s:
            async for t in s.text_stream:
                text += t
    assert "echo: one two three four five six seven eight".startswith(text)
    assert await w.gw.metric("modelroute_requests_total", route=f"via-{kind}", status="stream_error") == 1


@pytest.mark.parametrize("fault", ["error", "die"])
@pytest.mark.parametrize("kind", ["openai", "anthropic", "gemini"])
async def test_responses_stream_failing_midway_ends_with_failed(w: World, kind: str, fault: str) -> None:
    up = w.up[kind]
    up.faults.slow_stream(0.02)  # events in separate reads: the first one reaches the caller
    (up.faults.error_mid_stream if fault == "error" else up.faults.die_mid_stream)(after_chunks=3)
    stream = await w.openai().responses.create(model=f"via-{kind}", input=LONG, stream=True)
    types = [e.type async for e in stream]
    assert types[0] == "response.created"
    assert types[-2:] == ["error", "response.failed"] or types[-1] == "error"
    assert "response.completed" not in types


async def test_count_tokens_for_claude_code_is_an_estimate_never_an_error() -> None:
    async with world([]) as x:
        client = x.anthropic()
        counted = await client.messages.count_tokens(
            model="claude-sonnet-4-6", messages=[{"role": "user", "content": "hello " * 40}])
        assert 40 <= counted.input_tokens <= 200


# The two 500s issue 9 found, now clear 400s in the caller's dialect, forwarding nothing.
@pytest.mark.parametrize("kind", KINDS)
async def test_responses_with_reasoning_of_the_wrong_type_is_a_400(kind: str) -> None:
    async with world() as x:
        with pytest.raises(openai.BadRequestError) as e:
            await x.openai().responses.create(model=f"via-{kind}", input="hi", reasoning="high")  # type: ignore[call-overload]
        assert e.value.body["param"] == "reasoning" and e.value.code is None  # type: ignore[index]
        assert all(up.requests == [] for up in x.up.values())


@pytest.mark.parametrize("kind", KINDS)
async def test_count_tokens_with_deep_nesting_is_an_anthropic_400(kind: str) -> None:
    deep = b"[" * 3000 + b"]" * 3000
    body = b'{"model":"via-' + kind.encode() + b'","messages":[{"role":"user","content":"hi"}],"x":' + deep + b"}"
    async with world() as x, aiohttp.ClientSession() as http, http.post(
            x.gw.root + "/v1/messages/count_tokens", data=body,
            headers={"content-type": "application/json", "anthropic-version": "2023-06-01"}) as r:
        assert r.status == 400
        err = await r.json()
        assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error", err
        assert all(up.requests == [] for up in x.up.values())
