"""What the current Claude Code sends on ``/v1/messages``, through the gateway to every upstream.

Mid-conversation ``role: "system"`` messages (instructions added right after a user turn),
refusals in Anthropic's own words, usage on translated streams from the first event, and
``count_tokens`` answered by the upstream where it can count.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.dialects.test_every_dialect import BACKEND, KINDS, World, world

SYSTEM_TURN: list[dict[str, Any]] = [
    {"role": "user", "content": "hello there"},
    {"role": "system", "content": [{"type": "text", "text": "answer in French"}]},
]
HEADERS = {"anthropic-version": "2023-06-01", "x-api-key": "placeholder"}


@pytest.fixture
async def w() -> AsyncIterator[World]:
    async with world() as x:
        yield x


async def _post(w: World, path: str, body: dict[str, Any]) -> tuple[int, Any, str]:
    async with aiohttp.ClientSession() as s, s.post(w.gw.root + path, json=body, headers=HEADERS) as r:
        return r.status, await r.json(content_type=None), r.headers.get("x-modelroute-backend", "")


@pytest.mark.parametrize("kind", KINDS)
async def test_mid_conversation_system_message(w: World, kind: str) -> None:
    status, body, backend = await _post(w, "/v1/messages", {
        "model": f"via-{kind}", "max_tokens": 100, "messages": SYSTEM_TURN})
    assert status == 200, body
    assert backend == BACKEND[kind]
    assert body["content"][-1]["text"] == "echo: hello there"
    assert body["usage"]["input_tokens"] == 5  # the instruction reached the model: 2 + 3 words
    sent = w.up[kind].last_request.body
    if kind == "anthropic":
        assert sent["messages"] == SYSTEM_TURN  # passed through as sent
    elif kind == "gemini":
        assert "answer in French" in str(sent["systemInstruction"])
    elif kind == "openai":
        assert sent["messages"][-1] == {"role": "system", "content": "answer in French"}


@pytest.mark.parametrize("kind", KINDS)
async def test_misplaced_system_message_is_refused_in_anthropics_words(w: World, kind: str) -> None:
    """Claude Code falls back to another way of sending its instructions on exactly these words."""
    status, body, _ = await _post(w, "/v1/messages", {
        "model": f"via-{kind}", "max_tokens": 100, "messages": [SYSTEM_TURN[1], SYSTEM_TURN[0]]})
    assert status == 400
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"].startswith('messages: Unexpected role "system".')
    assert w.up[kind].requests == []


def _png(width: int, height: int, size: int) -> str:
    """A PNG's header with the given dimensions, padded to ``size`` bytes, as base64."""
    head = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + width.to_bytes(4, "big") + height.to_bytes(4, "big")
    return base64.b64encode(head + b"\x08\x06\x00\x00\x00" + bytes(size - len(head) - 5)).decode()


COUNT_BODY: dict[str, Any] = {"system": "be brief", "messages": [{"role": "user", "content": "one two three"}]}


@pytest.mark.parametrize(("kind", "counted_by"), [("anthropic", "anthropic/claude-sonnet-4-6"),
                                                  ("gemini", "gemini/gemini-2.5-flash"), ("openai", None)])
async def test_count_tokens_asks_the_upstream_that_can_count(w: World, kind: str, counted_by: str | None) -> None:
    async with aiohttp.ClientSession() as s, s.post(w.gw.root + "/v1/messages/count_tokens", headers=HEADERS,
                                                    json={"model": f"via-{kind}", **COUNT_BODY}) as r:
        assert r.status == 200
        body = await r.json()
        if counted_by is None:
            assert r.headers["x-modelroute-estimate"] == "true"
            assert body["input_tokens"] >= 1
        else:
            assert r.headers["x-modelroute-backend"] == counted_by and "x-modelroute-estimate" not in r.headers
            assert body == {"input_tokens": 5}  # the fake counts words: be brief one two three
            sent = w.up[kind].last_request
            assert sent.path.endswith("count_tokens") or sent.path.endswith(":countTokens")


async def test_count_tokens_sizes_images_by_their_pixels(w: World) -> None:
    """A 1 MiB 1920x1080 screenshot is ~1,600 tokens (Anthropic's rule), not 350,000 characters / 4."""
    image: dict[str, Any] = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                         "data": _png(1920, 1080, 1024 * 1024)}}
    body: dict[str, Any] = {"model": "via-openai",
                            "messages": [{"role": "user", "content": [image, {"type": "text", "text": "hi"}]}]}
    status, answer, _ = await _post(w, "/v1/messages/count_tokens", body)
    assert status == 200
    assert 1600 <= answer["input_tokens"] < 1700, answer
    small = {**image, "source": {**image["source"], "data": _png(200, 100, 2000)}}
    body["messages"][0]["content"][0] = small
    status, answer, _ = await _post(w, "/v1/messages/count_tokens", body)
    assert 27 <= answer["input_tokens"] < 60, answer  # 200*100/750 = 27, plus the text


@pytest.mark.parametrize("kind", ["openai", "gemini"])
async def test_translated_stream_starts_with_known_usage(w: World, kind: str) -> None:
    """message_start carries the input count when the upstream says it first (Gemini), else an
    estimate; never 0/0. The final message_delta carries the upstream's totals."""
    client = w.anthropic()
    async with client.messages.stream(model=f"via-{kind}", max_tokens=100,
                                      messages=[{"role": "user", "content": "one two three"}]) as s:
        events = [e async for e in s]
        final = await s.get_final_message()
    start = next(e for e in events if e.type == "message_start")
    if kind == "gemini":
        assert start.message.usage.input_tokens == 3
    else:
        assert start.message.usage.input_tokens > 0
    assert (final.usage.input_tokens, final.usage.output_tokens) == (3, 4)


async def test_a_stream_answered_with_plain_json_is_converted(w: World) -> None:
    """Some OpenAI-compatible servers ignore ``stream: true``: the JSON answer reaches the caller
    as its own stream, translated (Messages) or not (Chat Completions)."""
    up = w.up["openai"]
    up.ignores_stream = True  # type: ignore[attr-defined]
    async with w.anthropic().messages.stream(model="via-openai", max_tokens=100,
                                             messages=[{"role": "user", "content": "one two three"}]) as s:
        text = "".join([t async for t in s.text_stream])
        final = await s.get_final_message()
    assert text == "echo: one two three" and final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (3, 4)
    chunks = [c async for c in await w.openai().chat.completions.create(
        model="via-openai", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True})]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: hi"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 2
    assert up.requests[-1].body["stream"] is True


async def test_a_stream_answered_with_json_that_is_no_answer_is_named(w: World) -> None:
    w.up["openai"].faults.fail_next(3, status=200, body={"object": "list", "data": []})
    status, body, _ = await _post(w, "/v1/messages", {
        "model": "via-openai", "max_tokens": 100, "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    assert status == 502
    assert "answered a stream request with a plain JSON body" in body["error"]["message"]


@pytest.mark.parametrize("stream", [False, True])
async def test_thinking_round_trips_to_gemini(w: World, stream: bool) -> None:
    """Claude Code's thinking becomes Gemini's thinking budget; Gemini's thought summary comes
    back as a thinking block before the answer."""
    kwargs: dict[str, Any] = {"model": "via-gemini", "max_tokens": 2000, "thinking": {"type": "adaptive"},
                              "messages": [{"role": "user", "content": "one two"}],
                              "extra_body": {"output_config": {"effort": "high"}}}
    client = w.anthropic()
    if stream:
        async with client.messages.stream(**kwargs) as s:
            kinds = [e.delta.type async for e in s if e.type == "content_block_delta"]
            msg = await s.get_final_message()
        assert kinds[0] == "thinking_delta" and kinds[-1] == "text_delta"
    else:
        msg = await client.messages.create(**kwargs)
    assert [b.type for b in msg.content] == ["thinking", "text"]
    assert msg.content[0].thinking == "I will echo the user."  # type: ignore[union-attr]
    assert msg.content[1].text == "echo: one two"  # type: ignore[union-attr]
    config = w.up["gemini"].last_request.body["generationConfig"]
    assert config["thinkingConfig"] == {"thinkingBudget": 24576, "includeThoughts": True}


@pytest.mark.parametrize("stream", [False, True])
async def test_other_models_thinking_is_unsigned_and_never_sent_to_anthropic(w: World, stream: bool) -> None:
    """Gemini's thoughts reach Claude Code as thinking blocks with an empty signature: Anthropic
    signs only Claude's own thinking, and the gateway forges none. When the conversation moves to
    an Anthropic backend those blocks are left out, since Anthropic refuses them ("Invalid
    `signature` in `thinking` block", as the fake does); Claude's own signed thinking passes as sent."""
    client: Any = w.anthropic()  # dynamic kwargs: the SDK's overloads cannot be picked statically
    kwargs: dict[str, Any] = {"max_tokens": 2000, "thinking": {"type": "adaptive"}}
    msgs: list[dict[str, Any]] = [{"role": "user", "content": "one two"}]
    if stream:
        async with client.messages.stream(model="via-gemini", messages=msgs, **kwargs) as s:
            first = await s.get_final_message()
    else:
        first = await client.messages.create(model="via-gemini", messages=msgs, **kwargs)
    thought = first.content[0]
    assert thought.type == "thinking" and thought.thinking == "I will echo the user." and thought.signature == ""
    msgs += [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
             {"role": "user", "content": "three"}]
    second = await client.messages.create(model="via-anthropic", messages=msgs, **kwargs)
    assert [b.type for b in second.content] == ["thinking", "text"]
    assert second.content[1].text == "echo: three"
    sent = w.up["anthropic"].last_request.body["messages"]
    assert sent[1] == {"role": "assistant", "content": [{"type": "text", "text": "echo: one two"}]}
    msgs += [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in second.content]},
             {"role": "user", "content": "four"}]
    third = await client.messages.create(model="via-anthropic", messages=msgs, **kwargs)
    assert third.content[1].text == "echo: four"
    sent = w.up["anthropic"].last_request.body["messages"]
    assert sent[3]["content"][0] == second.content[0].model_dump(exclude_none=True)  # Claude's own, signed, untouched
    assert sent[1]["content"] == [{"type": "text", "text": "echo: one two"}]


async def test_reasoning_effort_becomes_anthropic_thinking(w: World) -> None:
    """An OpenAI caller's reasoning effort on a Claude route: extended thinking upstream (its
    budget on top of the caller's max), the thinking back as reasoning_content."""
    resp = await w.openai().chat.completions.create(
        model="via-anthropic", messages=[{"role": "user", "content": "one two"}], reasoning_effort="high",
        max_completion_tokens=500)
    sent = w.up["anthropic"].last_request.body
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 16384}
    assert sent["max_tokens"] == 500 + 16384
    assert resp.choices[0].message.content == "echo: one two"
    assert (resp.choices[0].message.model_extra or {})["reasoning_content"] == "I will echo the user."


async def test_codex_reasoning_reaches_gemini_and_comes_back_summarised(w: World) -> None:
    resp = await w.openai().responses.create(model="via-gemini", input="one two", reasoning={"effort": "medium"})
    assert w.up["gemini"].last_request.body["generationConfig"]["thinkingConfig"]["thinkingBudget"] == 8192
    assert [o.type for o in resp.output] == ["reasoning", "message"]
    assert resp.output[0].summary[0].text == "I will echo the user."  # type: ignore[union-attr]
    assert resp.output_text == "echo: one two"
