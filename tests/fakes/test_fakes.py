"""The fakes are faithful: the official SDKs, used as clients, accept what they send.

Raw aiohttp is used where the SDK would hide the wire detail under test (framing,
terminators, error bodies for requests the SDK refuses to build).
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any, cast

import aiohttp
import anthropic
import openai
import orjson
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.azure import FakeAzureOpenAI
from tests.fakes.base import FakeUpstream, closed_port, wait_until, wait_until_sync
from tests.fakes.gemini import FakeGemini
from tests.fakes.openai import FakeOpenAI

ANTHROPIC_HEADERS = {"x-api-key": "sk-ant", "anthropic-version": "2023-06-01"}
USER_HELLO: Any = [{"role": "user", "content": "hello there world"}]


class Raw:
    """One raw HTTP exchange: status, headers, body bytes (and JSON when it parses)."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)


async def post(url: str, body: Any, headers: dict[str, str] | None = None, raw: bytes | None = None) -> Raw:
    async with aiohttp.ClientSession() as s:
        data = raw if raw is not None else orjson.dumps(body)
        hdrs = {"content-type": "application/json", **(headers or {})}
        async with s.post(url, data=data, headers=hdrs) as r:
            return Raw(r.status, {k.lower(): v for k, v in r.headers.items()}, await r.read())


def sse_data(body: bytes, sep: bytes = b"\n\n") -> list[Any]:
    """Parse `data:` payloads of an SSE body split on `sep`."""
    out: list[Any] = []
    for frame in body.split(sep):
        for line in frame.splitlines():
            if line.startswith(b"data: "):
                payload = line[6:]
                out.append(payload.decode() if payload == b"[DONE]" else orjson.loads(payload))
    return out


def sse_events(body: bytes) -> list[tuple[str, Any]]:
    out = []
    for frame in body.split(b"\n\n"):
        lines = frame.splitlines()
        if lines:
            event = lines[0].removeprefix(b"event: ").decode()
            out.append((event, orjson.loads(lines[1].removeprefix(b"data: "))))
    return out


@pytest.fixture
async def oai() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(keys=["sk-a"]) as up:
        yield up


@pytest.fixture
async def ant() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic(keys=["sk-ant"]) as up:
        yield up


@pytest.fixture
async def gem() -> AsyncIterator[FakeGemini]:
    async with FakeGemini(keys=["g-key"]) as up:
        yield up


def oai_client(up: FakeOpenAI, key: str = "sk-a") -> Any:
    # Any: the SDKs' response unions and TypedDict params are not what these tests check.
    return openai.AsyncOpenAI(api_key=key, base_url=up.base_url, max_retries=0)


def ant_client(up: FakeAnthropic, key: str = "sk-ant") -> Any:
    return anthropic.AsyncAnthropic(api_key=key, base_url=up.base_url, max_retries=0)


TOOLS: Any = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    },
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}},
]


# ---------------------------------------------------------------- OpenAI chat completions


async def test_openai_chat_completion_shape(oai: FakeOpenAI) -> None:
    c = oai_client(oai)
    r = await c.chat.completions.create(
        model="gpt-4o", messages=[{"role": "system", "content": "be brief"}, *USER_HELLO]
    )
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion" and r.model == "gpt-4o"
    assert r.system_fingerprint and r.system_fingerprint.startswith("fp_")
    choice = r.choices[0]
    assert choice.message.content == "echo: hello there world"
    assert choice.message.refusal is None and choice.finish_reason == "stop" and choice.logprobs is None
    assert r.usage is not None
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (5, 4, 9)
    assert r.usage.prompt_tokens_details and r.usage.prompt_tokens_details.cached_tokens == 0
    assert r.usage.completion_tokens_details and r.usage.completion_tokens_details.reasoning_tokens == 0
    assert oai.last_request.headers["authorization"] == "Bearer sk-a"
    assert oai.last_request.body["messages"][1]["content"] == "hello there world"


async def test_openai_usage_details_switches(oai: FakeOpenAI) -> None:
    oai.cached_tokens, oai.reasoning_tokens = 4, 6
    r = await oai_client(oai).chat.completions.create(model="gpt-4o", messages=USER_HELLO)
    assert r.usage is not None and r.usage.prompt_tokens_details and r.usage.completion_tokens_details
    assert (r.usage.prompt_tokens, r.usage.prompt_tokens_details.cached_tokens) == (3 + 4, 4)
    assert (r.usage.completion_tokens, r.usage.completion_tokens_details.reasoning_tokens) == (4 + 6, 6)


async def test_openai_stream_with_usage(oai: FakeOpenAI) -> None:
    stream = await oai_client(oai).chat.completions.create(
        model="gpt-4o", messages=USER_HELLO, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: hello there world"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage and chunks[-1].usage.completion_tokens == 4
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1


async def test_openai_stream_framing_on_the_wire(oai: FakeOpenAI) -> None:
    r = await post(
        oai.base_url + "/chat/completions",
        {"model": "gpt-4o", "messages": USER_HELLO, "stream": True},
        {"authorization": "Bearer sk-a"},
    )
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.body.endswith(b"data: [DONE]\n\n")
    chunks = sse_data(r.body)
    assert chunks[-1] == "[DONE]"
    # Without include_usage there is no usage key at all.
    assert all("usage" not in c for c in chunks[:-1])
    assert [len(c["choices"]) for c in chunks[:-1]] == [1] * (len(chunks) - 1)


def test_openai_sync_client_tools_roundtrip() -> None:
    with FakeOpenAI(keys=["sk-a"]) as up:
        c: Any = openai.OpenAI(api_key="sk-a", base_url=up.base_url, max_retries=0)
        msgs: list[Any] = [{"role": "user", "content": "weather in Paris"}]
        r = c.chat.completions.create(model="gpt-4o", messages=msgs, tools=TOOLS)
        call = r.choices[0].message.tool_calls[0]
        assert r.choices[0].finish_reason == "tool_calls" and r.choices[0].message.content is None
        assert call.id.startswith("call_") and call.function.name == "get_weather"
        assert orjson.loads(call.function.arguments) == {"echo": "weather in Paris"}
        assert r.usage is not None and r.usage.completion_tokens == 5
        msgs += [
            r.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"},
        ]
        r2 = c.chat.completions.create(model="gpt-4o", messages=msgs, tools=TOOLS)
        assert r2.choices[0].message.content == "tool said: sunny, 21C"
        forced = c.chat.completions.create(
            model="gpt-4o",
            messages=msgs[:1],
            tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "get_time"}},
        )
        # The real API answers a forced function with finish_reason "stop".
        assert forced.choices[0].finish_reason == "stop"
        assert forced.choices[0].message.tool_calls[0].function.name == "get_time"
        none = c.chat.completions.create(model="gpt-4o", messages=msgs[:1], tools=TOOLS, tool_choice="none")
        assert none.choices[0].message.content == "echo: weather in Paris"


async def test_openai_stream_tool_call_deltas(oai: FakeOpenAI) -> None:
    stream = await oai_client(oai).chat.completions.create(
        model="gpt-4o", messages=USER_HELLO, tools=TOOLS, stream=True
    )
    deltas = [c.choices[0].delta for c in [c async for c in stream] if c.choices]
    first = deltas[0].tool_calls[0]
    assert first.index == 0 and first.id and first.type == "function"
    assert first.function and first.function.name == "get_weather" and first.function.arguments == ""
    rest = [d.tool_calls[0] for d in deltas[1:] if d.tool_calls]
    assert all(t.id is None and t.function and t.function.name is None for t in rest) and len(rest) > 1
    args = "".join(t.function.arguments or "" for t in rest if t.function)
    assert orjson.loads(args) == {"echo": "hello there world"}


async def test_openai_limits_images_and_stop(oai: FakeOpenAI) -> None:
    c = oai_client(oai)
    r = await c.chat.completions.create(model="gpt-4o", messages=USER_HELLO, max_tokens=2)
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == ("echo: hello", "length")
    assert r.usage and r.usage.completion_tokens == 2
    r = await c.chat.completions.create(model="gpt-4o", messages=USER_HELLO, stop=[" there"])
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == ("echo: hello", "stop")
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    r = await c.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": [{"type": "text", "text": "what is"}, image]}],
    )
    assert r.choices[0].message.content == "echo: what is [image]"
    assert r.usage and r.usage.prompt_tokens == 3


CHAT_REJECTIONS: list[tuple[dict[str, Any], int, str | None, str | None, str]] = [
    ({"model": "gpt-4o"}, 400, "messages", "missing_required_parameter", "Missing required parameter"),
    ({"messages": USER_HELLO}, 400, None, None, "you must provide a model parameter"),
    ({"model": "gpt-4o", "messages": "hi"}, 400, "messages", "invalid_type", "Invalid type for 'messages'"),
    ({"model": "gpt-4o", "messages": []}, 400, "messages", "empty_array", "empty array"),
    (
        {"model": "gpt-4o", "messages": [{"role": "bot", "content": "x"}]},
        400,
        "messages[0].role",
        "invalid_value",
        "Invalid value: 'bot'",
    ),
    (
        {"model": "gpt-4o", "messages": USER_HELLO, "foo": 1},
        400,
        None,
        None,
        "Unrecognized request argument supplied: foo",
    ),
    (
        {"model": "gpt-4o", "messages": USER_HELLO, "stream_options": {"include_usage": True}},
        400,
        "stream_options",
        None,
        "only allowed when 'stream' is enabled",
    ),
    (
        {"model": "gpt-4o", "messages": USER_HELLO, "tool_choice": "auto"},
        400,
        "tool_choice",
        None,
        "only allowed when 'tools' are specified",
    ),
    (
        {"model": "o3-mini", "messages": USER_HELLO, "max_tokens": 5},
        400,
        "max_tokens",
        "unsupported_parameter",
        "Use 'max_completion_tokens' instead",
    ),
    (
        {"model": "o3-mini", "messages": USER_HELLO, "temperature": 0.2},
        400,
        "temperature",
        "unsupported_value",
        "does not support 0.2",
    ),
    (
        {"model": "gpt-4o", "messages": USER_HELLO, "temperature": 3},
        400,
        "temperature",
        "decimal_above_max_value",
        "Expected a value <= 2",
    ),
    (
        {"model": "gpt-4o", "messages": [*USER_HELLO, {"role": "tool", "tool_call_id": "call_1", "content": "x"}]},
        400,
        "messages.[1].role",
        None,
        "must be a response to a preceeding message with 'tool_calls'",
    ),
    (
        {
            "model": "gpt-4o",
            "messages": [
                *USER_HELLO,
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
                },
                *USER_HELLO,
            ],
        },
        400,
        "messages.[2].role",
        None,
        "did not have response messages: call_1",
    ),
]


@pytest.mark.parametrize(("body", "status", "param", "code", "text"), CHAT_REJECTIONS)
async def test_openai_chat_rejects_like_the_api(
    oai: FakeOpenAI, body: dict[str, Any], status: int, param: str | None, code: str | None, text: str
) -> None:
    r = await post(oai.base_url + "/chat/completions", body, {"authorization": "Bearer sk-a"})
    assert r.status == status
    err = r.json["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert (err["type"], err["param"], err["code"]) == ("invalid_request_error", param, code)
    assert text in err["message"]


async def test_openai_auth_model_and_url_errors() -> None:
    async with FakeOpenAI(keys=["sk-a"], models=["gpt-4o"]) as up:
        url = up.base_url + "/chat/completions"
        body = {"model": "gpt-4o", "messages": USER_HELLO}
        r = await post(url, body, {"authorization": "Bearer sk-wrong-key-123456"})
        assert r.status == 401 and r.json["error"]["code"] == "invalid_api_key"
        assert "sk-wrong-key-123456" not in r.json["error"]["message"]  # the real API masks it
        r = await post(url, body)
        assert r.status == 401 and "You didn't provide an API key" in r.json["error"]["message"]
        r = await post(url, {**body, "model": "gpt-9"}, {"authorization": "Bearer sk-a"})
        assert r.status == 404 and r.json["error"]["code"] == "model_not_found"
        r = await post(url, None, {"authorization": "Bearer sk-a"}, raw=b"{not json")
        assert r.status == 400 and "could not parse the JSON body" in r.json["error"]["message"]
        r = await post(up.base_url + "/nope", body, {"authorization": "Bearer sk-a"})
        assert r.status == 404 and r.json["error"]["message"] == "Invalid URL (POST /v1/nope)"
        up.keys.add("sk-new")
        up.keys.discard("sk-a")
        assert (await post(url, body, {"authorization": "Bearer sk-new"})).status == 200
        assert (await post(url, body, {"authorization": "Bearer sk-a"})).status == 401


# ---------------------------------------------------------------- OpenAI embeddings / models


async def test_openai_embeddings_float_and_base64(oai: FakeOpenAI) -> None:
    c = oai_client(oai)
    # The SDK asks for base64 by default and decodes it: it must equal the float encoding.
    b64 = await c.embeddings.create(model="text-embedding-3-small", input=["a b c", "d"])
    flt = await c.embeddings.create(model="text-embedding-3-small", input=["a b c", "d"], encoding_format="float")
    assert oai.requests[-2].body["encoding_format"] == "base64"
    assert [d.embedding for d in b64.data] == [d.embedding for d in flt.data]
    assert len(flt.data[0].embedding) == 8 and flt.data[0].embedding != flt.data[1].embedding
    assert [d.index for d in flt.data] == [0, 1] and flt.usage.prompt_tokens == 4
    one = await c.embeddings.create(model="text-embedding-3-small", input="a b c", dimensions=3)
    assert one.data[0].embedding == pytest.approx(
        (await c.embeddings.create(model="text-embedding-3-small", input="a b c", dimensions=3)).data[0].embedding
    )
    assert len(one.data[0].embedding) == 3 and one.model == "text-embedding-3-small"
    with pytest.raises(openai.BadRequestError, match="does not support specifying dimensions"):
        await c.embeddings.create(model="text-embedding-ada-002", input="x", dimensions=3)
    with pytest.raises(openai.BadRequestError, match=r"\$\.input"):
        await c.embeddings.create(model="text-embedding-3-small", input="")


async def test_openai_models(oai: FakeOpenAI) -> None:
    page = await oai_client(oai).models.list()
    assert "gpt-4o" in [m.id for m in page.data] and page.data[0].object == "model"
    with pytest.raises(openai.NotFoundError):
        await oai_client(oai).models.retrieve("nope")


# ---------------------------------------------------------------- OpenAI Responses API

RESPONSE_TOOLS: Any = [{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}]


async def test_responses_text(oai: FakeOpenAI) -> None:
    r = await oai_client(oai).responses.create(model="gpt-4o", input="hello there", instructions="be nice")
    assert r.id.startswith("resp_") and r.object == "response" and r.status == "completed"
    assert r.output_text == "echo: hello there" and r.output[0].type == "message"
    assert r.usage and (r.usage.input_tokens, r.usage.output_tokens, r.usage.total_tokens) == (4, 3, 7)


async def test_responses_function_call_roundtrip(oai: FakeOpenAI) -> None:
    c = oai_client(oai)
    r = await c.responses.create(model="gpt-4o", input=[{"role": "user", "content": "weather?"}], tools=RESPONSE_TOOLS)
    call = r.output[0]
    assert call.type == "function_call" and call.call_id.startswith("call_") and call.id.startswith("fc_")
    assert orjson.loads(call.arguments) == {"echo": "weather?"}
    r2 = await c.responses.create(
        model="gpt-4o",
        tools=RESPONSE_TOOLS,
        input=[
            {"role": "user", "content": "weather?"},
            {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id, "output": "rain"},
        ],
    )
    assert r2.output_text == "tool said: rain"


async def test_responses_stream_events(oai: FakeOpenAI) -> None:
    stream = await oai_client(oai).responses.create(model="gpt-4o", input="hello there", stream=True)
    events = [e async for e in stream]
    types = [e.type for e in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == "echo: hello there"
    raw = await post(
        oai.base_url + "/responses",
        {"model": "gpt-4o", "input": "hi", "stream": True, "tools": RESPONSE_TOOLS},
        {"authorization": "Bearer sk-a"},
    )
    wire = sse_events(raw.body)
    assert b"[DONE]" not in raw.body and all(name == data["type"] for name, data in wire)
    names = [n for n, _ in wire]
    assert "response.function_call_arguments.delta" in names and "response.function_call_arguments.done" in names


async def test_responses_rejections_and_incomplete(oai: FakeOpenAI) -> None:
    c = oai_client(oai)
    with pytest.raises(openai.BadRequestError, match="Expected a value >= 16"):
        await c.responses.create(model="gpt-4o", input="x", max_output_tokens=5)
    chat_style = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    with pytest.raises(openai.BadRequestError, match=r"tools\[0\]\.name"):
        await c.responses.create(model="gpt-4o", input="x", tools=chat_style)
    with pytest.raises(openai.BadRequestError, match="No tool call found"):
        await c.responses.create(
            model="gpt-4o", input=[{"type": "function_call_output", "call_id": "call_x", "output": "1"}]
        )
    long = " ".join(["word"] * 20)
    r = await c.responses.create(model="gpt-4o", input=long, max_output_tokens=16)
    assert r.status == "incomplete" and r.incomplete_details and r.incomplete_details.reason == "max_output_tokens"


# ---------------------------------------------------------------- Azure OpenAI


def test_azure_with_official_client() -> None:
    deployments = {"chat": "gpt-4o-2024-08-06", "emb": "text-embedding-3-small"}
    with FakeAzureOpenAI(keys=["az-key"], deployments=deployments) as up:
        c: Any = openai.AzureOpenAI(
            api_key="az-key", azure_endpoint=up.base_url, api_version="2024-10-21", max_retries=0
        )
        r = c.chat.completions.create(model="chat", messages=USER_HELLO)
        assert r.model == "gpt-4o-2024-08-06" and r.choices[0].message.content == "echo: hello there world"
        req = up.last_request
        assert req.path == "/openai/deployments/chat/chat/completions"
        assert req.query["api-version"] == "2024-10-21" and req.headers["api-key"] == "az-key"
        chunks = list(c.chat.completions.create(model="chat", messages=USER_HELLO, stream=True))
        # Azure's first chunk only carries the prompt filter verdict.
        assert chunks[0].choices == [] and chunks[0].id == ""
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == "echo: hello there world"
        e = c.embeddings.create(model="emb", input="a b", dimensions=4)
        assert len(e.data[0].embedding) == 4 and e.model == "text-embedding-3-small"
        with pytest.raises(openai.NotFoundError) as nf:
            c.chat.completions.create(model="missing", messages=USER_HELLO)
        assert cast(Any, nf.value.body)["code"] == "DeploymentNotFound"
        bad: Any = openai.AzureOpenAI(
            api_key="nope", azure_endpoint=up.base_url, api_version="2024-10-21", max_retries=0
        )
        with pytest.raises(openai.AuthenticationError) as auth:
            bad.chat.completions.create(model="chat", messages=USER_HELLO)
        assert cast(Any, auth.value.body)["code"] == "401"


async def test_azure_wire_rules() -> None:
    async with FakeAzureOpenAI(keys=["az-key"], deployments={"chat": "gpt-4o"}) as up:
        url = up.url + "/openai/deployments/chat/chat/completions"
        body = {"messages": USER_HELLO}
        r = await post(url, body, {"api-key": "az-key"})
        assert (r.status, r.json) == (404, {"error": {"code": "404", "message": "Resource not found"}})
        r = await post(url + "?api-version=2024-10-21", body, {"authorization": "Bearer az-key"})
        assert r.status == 200 and r.json["model"] == "gpt-4o" and "prompt_filter_results" in r.json
        r = await post(url + "?api-version=2024-10-21", body)
        assert r.status == 401 and "missing subscription key" in r.json["error"]["message"]
        r = await post(url + "?api-version=2024-10-21", {**body, "bogus": 1}, {"api-key": "az-key"})
        assert r.status == 400 and r.json["error"]["type"] == "invalid_request_error"
        r = await post(up.url + "/openai/v1/chat/completions", {"model": "chat", **body}, {"api-key": "az-key"})
        assert r.status == 200 and r.json["model"] == "gpt-4o"
        up.faults.fail_next(1, 429, retry_after=3)
        r = await post(url + "?api-version=2024-10-21", body, {"api-key": "az-key"})
        assert r.status == 429 and r.headers["retry-after"] == "3" and r.json["error"]["code"] == "429"


# ---------------------------------------------------------------- Anthropic

ANT_TOOLS: Any = [{"name": "get_weather", "description": "w", "input_schema": {"type": "object", "properties": {}}}]


async def test_anthropic_message_shape_and_cache_usage(ant: FakeAnthropic) -> None:
    ant.cache_read_tokens, ant.cache_creation_tokens = 7, 2
    m = await ant_client(ant).messages.create(
        model="claude-sonnet-4-6", max_tokens=100, system="be brief", messages=USER_HELLO
    )
    assert m.id.startswith("msg_") and m.type == "message" and m.role == "assistant"
    assert m.model == "claude-sonnet-4-6" and m.stop_reason == "end_turn" and m.stop_sequence is None
    assert m.content[0].type == "text" and m.content[0].text == "echo: hello there world"
    # input_tokens excludes the cache tokens, reported beside it.
    assert (m.usage.input_tokens, m.usage.cache_read_input_tokens, m.usage.cache_creation_input_tokens) == (5, 7, 2)
    assert m.usage.output_tokens == 4
    headers = ant.last_request.headers
    assert headers["authorization"] == "Bearer sk-ant" and "anthropic-version" in headers
    r = await post(ant.url + "/v1/messages", {"model": "m", "max_tokens": 9, "messages": USER_HELLO}, ANTHROPIC_HEADERS)
    assert r.status == 200 and r.headers["request-id"].startswith("req_")


async def test_anthropic_stream_event_sequence(ant: FakeAnthropic) -> None:
    ant.cache_read_tokens = 3
    r = await post(
        ant.url + "/v1/messages",
        {"model": "claude-sonnet-4-6", "max_tokens": 50, "stream": True, "messages": USER_HELLO},
        ANTHROPIC_HEADERS,
    )
    events = sse_events(r.body)
    names = [n for n, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["usage"]["input_tokens"] == 3
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert text == "echo: hello there world"
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == 4 and delta["usage"]["cache_read_input_tokens"] == 3

    async with ant_client(ant).messages.stream(model="claude-sonnet-4-6", max_tokens=50, messages=USER_HELLO) as s:
        final = await s.get_final_message()
    assert final.content[0].text == "echo: hello there world" and final.usage.output_tokens == 4


async def test_anthropic_tools_roundtrip_and_stream(ant: FakeAnthropic) -> None:
    c = ant_client(ant)
    m = await c.messages.create(model="claude-sonnet-4-6", max_tokens=100, messages=USER_HELLO, tools=ANT_TOOLS)
    block = m.content[0]
    assert m.stop_reason == "tool_use" and block.type == "tool_use" and block.id.startswith("toolu_")
    assert block.input == {"echo": "hello there world"} and m.usage.output_tokens == 5
    follow = [
        *USER_HELLO,
        {"role": "assistant", "content": [block.model_dump()]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": block.id, "content": "sunny"}]},
    ]
    m2 = await c.messages.create(model="claude-sonnet-4-6", max_tokens=100, messages=follow, tools=ANT_TOOLS)
    assert m2.content[0].text == "tool said: sunny"
    r = await post(
        ant.url + "/v1/messages",
        {
            "model": "c",
            "max_tokens": 50,
            "stream": True,
            "messages": USER_HELLO,
            "tools": ANT_TOOLS,
            "tool_choice": {"type": "tool", "name": "get_weather"},
        },
        ANTHROPIC_HEADERS,
    )
    events = sse_events(r.body)
    start = next(d for n, d in events if n == "content_block_start")["content_block"]
    assert start["type"] == "tool_use" and start["input"] == {}
    partial = "".join(d["delta"]["partial_json"] for n, d in events if n == "content_block_delta")
    assert orjson.loads(partial) == {"echo": "hello there world"}
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


async def test_anthropic_limits_stop_and_thinking(ant: FakeAnthropic) -> None:
    c = ant_client(ant)
    m = await c.messages.create(model="c", max_tokens=2, messages=USER_HELLO)
    assert (m.content[0].text, m.stop_reason) == ("echo: hello", "max_tokens")
    m = await c.messages.create(model="c", max_tokens=50, messages=USER_HELLO, stop_sequences=["world"])
    assert (m.stop_reason, m.stop_sequence) == ("stop_sequence", "world")
    m = await c.messages.create(
        model="c",
        max_tokens=2048,
        messages=USER_HELLO,
        thinking={"type": "enabled", "budget_tokens": 1024},
    )
    assert [b.type for b in m.content] == ["thinking", "text"] and m.content[0].signature
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
    m = await c.messages.create(
        model="c",
        max_tokens=50,
        messages=[{"role": "user", "content": [{"type": "text", "text": "see"}, image]}],
    )
    assert m.content[0].text == "echo: see [image]"


ANT_REJECTIONS: list[tuple[dict[str, Any], dict[str, str], int, str, str]] = [
    (
        {"model": "c", "messages": USER_HELLO},
        ANTHROPIC_HEADERS,
        400,
        "invalid_request_error",
        "max_tokens: Field required",
    ),
    (
        {"model": "c", "max_tokens": 5, "messages": USER_HELLO},
        {"x-api-key": "sk-ant"},
        400,
        "invalid_request_error",
        "anthropic-version: header is required",
    ),
    (
        {"model": "c", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}, *USER_HELLO]},
        ANTHROPIC_HEADERS,
        400,
        "invalid_request_error",
        'Unexpected role "system"',
    ),
    (
        {"model": "c", "max_tokens": 5, "messages": USER_HELLO},
        {**ANTHROPIC_HEADERS, "x-api-key": "bad"},
        401,
        "authentication_error",
        "invalid x-api-key",
    ),
    (
        {"model": "c", "max_tokens": 5, "messages": USER_HELLO},
        {"anthropic-version": "2023-06-01"},
        401,
        "authentication_error",
        "x-api-key header is required",
    ),
    (
        {"model": "c", "max_tokens": 5, "messages": USER_HELLO, "temperature": 1.5},
        ANTHROPIC_HEADERS,
        400,
        "invalid_request_error",
        "temperature: Input should be less than or equal to 1",
    ),
    (
        {"model": "c", "max_tokens": 5, "messages": USER_HELLO, "n": 2},
        ANTHROPIC_HEADERS,
        400,
        "invalid_request_error",
        "n: Extra inputs are not permitted",
    ),
    (
        {"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": ""}]},
        ANTHROPIC_HEADERS,
        400,
        "invalid_request_error",
        "all messages must have non-empty content",
    ),
    (
        {
            "model": "c",
            "max_tokens": 5,
            "messages": [
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_x", "content": "1"}]}
            ],
        },
        ANTHROPIC_HEADERS,
        400,
        "invalid_request_error",
        "unexpected `tool_use_id`",
    ),
    (
        {
            "model": "c",
            "max_tokens": 5,
            "messages": [
                *USER_HELLO,
                {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}]},
                *USER_HELLO,
            ],
        },
        ANTHROPIC_HEADERS,
        400,
        "invalid_request_error",
        "without `tool_result` blocks",
    ),
    (
        {
            "model": "c",
            "max_tokens": 500,
            "messages": USER_HELLO,
            "thinking": {"type": "enabled", "budget_tokens": 1024},
        },
        ANTHROPIC_HEADERS,
        400,
        "invalid_request_error",
        "must be greater than `thinking.budget_tokens`",
    ),
]


@pytest.mark.parametrize(("body", "headers", "status", "kind", "text"), ANT_REJECTIONS)
async def test_anthropic_rejects_like_the_api(
    ant: FakeAnthropic, body: dict[str, Any], headers: dict[str, str], status: int, kind: str, text: str
) -> None:
    r = await post(ant.url + "/v1/messages", body, headers)
    assert r.status == status
    assert r.json["type"] == "error" and r.json["error"]["type"] == kind and text in r.json["error"]["message"]
    assert r.json["request_id"].startswith("req_")


async def test_anthropic_count_tokens_and_models(ant: FakeAnthropic) -> None:
    c = ant_client(ant)
    counted = await c.messages.count_tokens(model="c", messages=USER_HELLO, system="a b")
    assert counted.input_tokens == 5
    models = await c.models.list()
    assert models.data and models.data[0].type == "model"


# ---------------------------------------------------------------- Gemini


def gemini_client(up: FakeGemini, key: str = "g-key") -> Any:
    return genai.Client(api_key=key, http_options=genai_types.HttpOptions(base_url=up.base_url))


async def test_gemini_generate_with_sdk(gem: FakeGemini) -> None:
    c = gemini_client(gem)
    cfg = genai_types.GenerateContentConfig(system_instruction="be brief", max_output_tokens=100)
    r = await c.aio.models.generate_content(model="gemini-2.5-flash", contents="hello there world", config=cfg)
    assert r.text == "echo: hello there world" and r.model_version == "gemini-2.5-flash" and r.response_id
    assert r.candidates[0].finish_reason == genai_types.FinishReason.STOP
    u = r.usage_metadata
    assert (u.prompt_token_count, u.candidates_token_count, u.total_token_count) == (5, 4, 9)
    assert gem.last_request.headers["x-goog-api-key"] == "g-key"
    assert gem.last_request.path.endswith("/models/gemini-2.5-flash:generateContent")
    r = await c.aio.models.generate_content(
        model="gemini-2.5-flash",
        contents="hello there world",
        config=genai_types.GenerateContentConfig(max_output_tokens=2),
    )
    assert r.text == "echo: hello" and r.candidates[0].finish_reason == genai_types.FinishReason.MAX_TOKENS


async def test_gemini_stream_with_sdk_and_wire(gem: FakeGemini) -> None:
    c = gemini_client(gem)
    chunks = [ch async for ch in await c.aio.models.generate_content_stream(model="m", contents="hello there world")]
    assert "".join(ch.text for ch in chunks) == "echo: hello there world"
    assert chunks[-1].usage_metadata.candidates_token_count == 4
    assert all(ch.usage_metadata.candidates_token_count is None for ch in chunks[:-1])
    r = await post(
        gem.url + "/v1beta/models/m:streamGenerateContent?alt=sse",
        {"contents": [{"role": "user", "parts": [{"text": "hello there world"}]}]},
        {"x-goog-api-key": "g-key"},
    )
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.body.endswith(b"}\r\n\r\n") and r.body.count(b"\r\n\r\n") == 4
    frames = sse_data(r.body, b"\r\n\r\n")
    assert "finishReason" not in frames[0]["candidates"][0]
    assert frames[0]["usageMetadata"]["promptTokenCount"] == 3
    assert frames[-1]["candidates"][0]["finishReason"] == "STOP"


async def test_gemini_function_calling_with_sdk(gem: FakeGemini) -> None:
    c = gemini_client(gem)
    decl = genai_types.FunctionDeclaration(name="get_weather", parameters={"type": "object", "properties": {}})
    cfg = genai_types.GenerateContentConfig(tools=[genai_types.Tool(function_declarations=[decl])])
    r = await c.aio.models.generate_content(model="m", contents="weather?", config=cfg)
    call = r.function_calls[0]
    assert call.name == "get_weather" and call.args == {"echo": "weather?"} and call.id is None
    assert r.candidates[0].finish_reason == genai_types.FinishReason.STOP
    history = [
        genai_types.Content(role="user", parts=[genai_types.Part(text="weather?")]),
        r.candidates[0].content,
        genai_types.Content(
            role="user",
            parts=[genai_types.Part.from_function_response(name="get_weather", response={"result": "hail"})],
        ),
    ]
    r2 = await c.aio.models.generate_content(model="m", contents=history, config=cfg)
    assert r2.text == "tool said: hail"


async def test_gemini_embeddings_match_openai(gem: FakeGemini, oai: FakeOpenAI) -> None:
    c = gemini_client(gem)
    cfg = genai_types.EmbedContentConfig(output_dimensionality=4)
    r = await c.aio.models.embed_content(model="gemini-embedding-001", contents=["a b", "c"], config=cfg)
    assert [len(e.values) for e in r.embeddings] == [4, 4]
    single = await post(
        gem.url + "/v1beta/models/gemini-embedding-001:embedContent?key=g-key",
        {"content": {"parts": [{"text": "a b"}]}, "output_dimensionality": 4},
    )
    assert single.json["embedding"]["values"] == r.embeddings[0].values
    o = await oai_client(oai).embeddings.create(model="text-embedding-3-small", input="a b", dimensions=4)
    assert o.data[0].embedding == pytest.approx(r.embeddings[0].values)


async def test_gemini_auth_errors_with_sdk(gem: FakeGemini) -> None:
    with pytest.raises(genai_errors.ClientError) as bad:
        await gemini_client(gem, "nope").aio.models.generate_content(model="m", contents="x")
    assert (bad.value.code, bad.value.status) == (400, "INVALID_ARGUMENT")
    assert "API key not valid" in str(bad.value.message)


GEMINI_REJECTIONS: list[tuple[dict[str, Any], str]] = [
    ({"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]}, "Please use a valid role: user, model."),
    ({"contents": [{"role": "system", "parts": [{"text": "x"}]}]}, "Please use a valid role: user, model."),
    ({"contents": []}, "contents is not specified"),
    ({"contents": [{"role": "user", "parts": []}]}, "contents.parts must not be empty"),
    ({"contents": [{"role": "user", "parts": [{"text": "x"}]}], "maxTokens": 3}, 'Unknown name "maxTokens"'),
    (
        {"contents": [{"role": "user", "parts": [{"text": "x"}]}], "generationConfig": {"max_tokens": 3}},
        "Unknown name \"max_tokens\" at 'generation_config'",
    ),
    (
        {"contents": [{"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {}}}]}]},
        "function response turn comes immediately after a function call turn",
    ),
]


@pytest.mark.parametrize(("body", "text"), GEMINI_REJECTIONS)
async def test_gemini_rejects_like_the_api(gem: FakeGemini, body: dict[str, Any], text: str) -> None:
    r = await post(gem.url + "/v1beta/models/gemini-2.5-flash:generateContent", body, {"x-goog-api-key": "g-key"})
    assert r.status == 400
    assert r.json["error"]["code"] == 400 and r.json["error"]["status"] == "INVALID_ARGUMENT"
    assert text in r.json["error"]["message"]


async def test_gemini_auth_variants_and_snake_case(gem: FakeGemini) -> None:
    url = gem.url + "/v1beta/models/gemini-2.5-flash:generateContent"
    body = {
        "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
        "generation_config": {"max_output_tokens": 10},
        "system_instruction": {"parts": [{"text": "sys"}]},
    }
    r = await post(url + "?key=g-key", body)
    assert r.status == 200 and r.json["usageMetadata"]["promptTokenCount"] == 2
    r = await post(url, body)
    assert (r.status, r.json["error"]["status"]) == (403, "PERMISSION_DENIED")
    r = await post(url, body, {"x-goog-api-key": "bad"})
    assert r.status == 400 and r.json["error"]["details"][0]["reason"] == "API_KEY_INVALID"
    gem.thoughts_tokens = 6
    r = await post(url, body, {"x-goog-api-key": "g-key"})
    usage = r.json["usageMetadata"]
    assert (usage["candidatesTokenCount"], usage["thoughtsTokenCount"], usage["totalTokenCount"]) == (2, 6, 10)


# ---------------------------------------------------------------- same model everywhere


async def test_same_conversation_same_answer_everywhere(oai: FakeOpenAI, ant: FakeAnthropic, gem: FakeGemini) -> None:
    o = (
        await post(
            oai.base_url + "/chat/completions",
            {"model": "m", "messages": [{"role": "system", "content": "sys prompt"}, *USER_HELLO]},
            {"authorization": "Bearer sk-a"},
        )
    ).json
    a = (
        await post(
            ant.url + "/v1/messages",
            {"model": "m", "max_tokens": 100, "system": "sys prompt", "messages": USER_HELLO},
            ANTHROPIC_HEADERS,
        )
    ).json
    g = (
        await post(
            gem.url + "/v1beta/models/m:generateContent",
            {
                "systemInstruction": {"parts": [{"text": "sys prompt"}]},
                "contents": [{"role": "user", "parts": [{"text": "hello there world"}]}],
            },
            {"x-goog-api-key": "g-key"},
        )
    ).json
    texts = {
        o["choices"][0]["message"]["content"],
        a["content"][0]["text"],
        g["candidates"][0]["content"]["parts"][0]["text"],
    }
    assert texts == {"echo: hello there world"}
    assert o["usage"]["prompt_tokens"] == a["usage"]["input_tokens"] == g["usageMetadata"]["promptTokenCount"] == 5
    assert o["usage"]["completion_tokens"] == a["usage"]["output_tokens"] == g["usageMetadata"]["candidatesTokenCount"]


# ---------------------------------------------------------------- fault switches

FAIL_CASES: list[tuple[type[FakeUpstream], int, str, Any]] = [
    (FakeOpenAI, 429, "/v1/chat/completions", lambda b: b["error"]["code"] == "rate_limit_exceeded"),
    (FakeOpenAI, 500, "/v1/chat/completions", lambda b: b["error"]["type"] == "server_error"),
    (FakeOpenAI, 502, "/v1/chat/completions", lambda b: b["error"]["code"] == 502),
    (FakeOpenAI, 503, "/v1/chat/completions", lambda b: b["error"]["type"] == "server_error"),
    (FakeAnthropic, 529, "/v1/messages", lambda b: b["error"]["type"] == "overloaded_error"),
    (FakeAnthropic, 429, "/v1/messages", lambda b: b["error"]["type"] == "rate_limit_error"),
    (FakeAnthropic, 500, "/v1/messages", lambda b: b["error"]["type"] == "api_error"),
    (FakeGemini, 429, "/v1beta/models/m:generateContent", lambda b: b["error"]["status"] == "RESOURCE_EXHAUSTED"),
    (FakeGemini, 503, "/v1beta/models/m:generateContent", lambda b: b["error"]["status"] == "UNAVAILABLE"),
    (FakeGemini, 500, "/v1beta/models/m:generateContent", lambda b: b["error"]["status"] == "INTERNAL"),
]
VALID: dict[type[FakeUpstream], tuple[dict[str, Any], dict[str, str]]] = {
    FakeOpenAI: ({"model": "m", "messages": USER_HELLO}, {"authorization": "Bearer k"}),
    FakeAnthropic: ({"model": "m", "max_tokens": 9, "messages": USER_HELLO}, {**ANTHROPIC_HEADERS, "x-api-key": "k"}),
    FakeGemini: ({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}, {"x-goog-api-key": "k"}),
}


@pytest.mark.parametrize(("cls", "status", "path", "check"), FAIL_CASES)
async def test_fail_next(cls: type[FakeUpstream], status: int, path: str, check: Any) -> None:
    body, headers = VALID[cls]
    async with cls(keys=["k"]) as up:
        up.faults.fail_next(2, status=status, retry_after=2 if status == 429 else None)
        for _ in range(2):
            r = await post(up.url + path, body, headers)
            assert r.status == status and check(r.json)
            assert r.headers.get("retry-after") == ("2" if status == 429 else None)
        assert up.faults.pending_failures == 0
        assert (await post(up.url + path, body, headers)).status == 200
        assert len(up.requests) == 3


async def test_gemini_429_carries_retry_info() -> None:
    body, headers = VALID[FakeGemini]
    async with FakeGemini(keys=["k"]) as up:
        up.faults.fail_next(1, 429, retry_after=7)
        r = await post(up.url + "/v1beta/models/m:generateContent", body, headers)
        assert r.json["error"]["details"][0]["retryDelay"] == "7s"


async def test_fail_next_is_seen_by_sdks(oai: FakeOpenAI, ant: FakeAnthropic) -> None:
    oai.faults.fail_next(1, 429, retry_after=1)
    with pytest.raises(openai.RateLimitError):
        await oai_client(oai).chat.completions.create(model="m", messages=USER_HELLO)
    ant.faults.fail_next(1, 529)
    with pytest.raises(anthropic.APIStatusError) as e:
        await ant_client(ant).messages.create(model="m", max_tokens=5, messages=USER_HELLO)
    assert e.value.status_code == 529


async def test_slow_first_byte(oai: FakeOpenAI) -> None:
    oai.faults.slow_first_byte(0.3)
    body, _ = VALID[FakeOpenAI]
    started = time.monotonic()
    r = await post(oai.base_url + "/chat/completions", body, {"authorization": "Bearer sk-a"})
    assert r.status == 200 and time.monotonic() - started >= 0.3
    with pytest.raises(openai.APITimeoutError):
        await oai_client(oai).with_options(timeout=0.1).chat.completions.create(model="m", messages=USER_HELLO)
    oai.faults.clear()
    await oai_client(oai).chat.completions.create(model="m", messages=USER_HELLO)


@pytest.mark.parametrize(
    ("cls", "path", "stream_body", "sep"),
    [
        (FakeOpenAI, "/v1/chat/completions", {"model": "m", "messages": USER_HELLO, "stream": True}, b"\n\n"),
        (
            FakeAnthropic,
            "/v1/messages",
            {"model": "m", "max_tokens": 9, "messages": USER_HELLO, "stream": True},
            b"\n\n",
        ),
        (
            FakeGemini,
            "/v1beta/models/m:streamGenerateContent?alt=sse",
            {"contents": [{"role": "user", "parts": [{"text": "a b c d"}]}]},
            b"\r\n\r\n",
        ),
    ],
)
async def test_die_mid_stream(cls: type[FakeUpstream], path: str, stream_body: dict[str, Any], sep: bytes) -> None:
    _, headers = VALID[cls]
    async with cls(keys=["k"]) as up:
        up.faults.die_mid_stream(after_chunks=2)
        received = b""
        async with aiohttp.ClientSession() as s, s.post(up.url + path, json=stream_body, headers=headers) as r:
            assert r.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                async for data in r.content.iter_any():
                    received += data
        assert received.count(sep) == 2 and b"[DONE]" not in received and b"message_stop" not in received
        assert up.streams_died == 1 and up.streams_completed == 0
        await wait_until(lambda: up.active_streams == 0)


async def test_die_mid_stream_seen_by_sdk(oai: FakeOpenAI) -> None:
    oai.faults.die_mid_stream(after_chunks=1)
    stream = await oai_client(oai).chat.completions.create(model="m", messages=USER_HELLO, stream=True)
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass


async def test_error_mid_stream(oai: FakeOpenAI, ant: FakeAnthropic) -> None:
    ant.faults.error_mid_stream(after_chunks=3)
    r = await post(ant.url + "/v1/messages", {**VALID[FakeAnthropic][0], "stream": True}, ANTHROPIC_HEADERS)
    events = sse_events(r.body)
    assert [n for n, _ in events][-1] == "error" and len(events) == 4
    assert events[-1][1] == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    with pytest.raises(anthropic.APIError):
        async with ant_client(ant).messages.stream(model="m", max_tokens=9, messages=USER_HELLO) as s:
            await s.get_final_message()
    oai.faults.error_mid_stream(after_chunks=1)
    stream = await oai_client(oai).chat.completions.create(model="m", messages=USER_HELLO, stream=True)
    with pytest.raises(openai.APIError, match="server had an error"):
        async for _ in stream:
            pass
    r = await post(
        oai.base_url + "/responses", {"model": "m", "input": "x", "stream": True}, {"authorization": "Bearer sk-a"}
    )
    assert sse_events(r.body)[-1][0] == "error"


async def test_hang_then_clear(ant: FakeAnthropic) -> None:
    ant.faults.hang()
    body, _ = VALID[FakeAnthropic]
    async with aiohttp.ClientSession() as s:
        with pytest.raises(TimeoutError):
            async with s.post(
                ant.url + "/v1/messages", json=body, headers=ANTHROPIC_HEADERS, timeout=aiohttp.ClientTimeout(total=0.2)
            ):
                pass
    # The hung handler notices its client left.
    await wait_until(lambda: ant.cancelled == 1)
    ant.faults.clear()
    assert (await post(ant.url + "/v1/messages", body, ANTHROPIC_HEADERS)).status == 200


def test_hang_does_not_block_stop() -> None:
    up = FakeOpenAI(keys=["k"]).start_in_thread()
    up.faults.hang()
    req = urllib.request.Request(up.base_url + "/models", headers={"authorization": "Bearer k"})
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        urllib.request.urlopen(req, timeout=0.2)
    started = time.monotonic()
    up.stop()
    assert time.monotonic() - started < 5


async def test_client_disconnect_is_counted(gem: FakeGemini) -> None:
    gem.faults.slow_stream(0.05)
    url = gem.url + "/v1beta/models/m:streamGenerateContent?alt=sse"
    body = {"contents": [{"role": "user", "parts": [{"text": " ".join(["w"] * 50)}]}]}
    async with aiohttp.ClientSession() as s:
        resp = await s.post(url, json=body, headers={"x-goog-api-key": "g-key"})
        await resp.content.readuntil(b"\r\n\r\n")
        await wait_until(lambda: gem.active_streams == 1)
        resp.close()  # the client walks away mid-stream
    await wait_until(lambda: gem.cancelled == 1)
    await wait_until(lambda: gem.active_streams == 0)
    assert gem.streams_completed == 0 and gem.streams_started == 1


async def test_drop_next_and_reset(oai: FakeOpenAI) -> None:
    body, _ = VALID[FakeOpenAI]
    oai.faults.drop_next(1)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await post(oai.base_url + "/chat/completions", body, {"authorization": "Bearer sk-a"})
    assert (await post(oai.base_url + "/chat/completions", body, {"authorization": "Bearer sk-a"})).status == 200
    assert len(oai.requests) == 2
    oai.faults.fail_next(3)
    oai.reset()
    assert oai.requests == [] and oai.faults.pending_failures == 0


async def test_closed_port_refuses() -> None:
    port = closed_port()
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.ClientConnectorError):
            await s.get(f"http://127.0.0.1:{port}/")


def test_thread_mode_serves_sync_clients() -> None:
    with FakeAnthropic(keys=["k"]) as up:
        c: Any = anthropic.Anthropic(api_key="k", base_url=up.base_url, max_retries=0)
        m = c.messages.create(model="m", max_tokens=9, messages=USER_HELLO)
        assert m.content[0].text == "echo: hello there world"
        up.faults.fail_next(1, 500)
        with pytest.raises(anthropic.InternalServerError):
            c.messages.create(model="m", max_tokens=9, messages=USER_HELLO)
        wait_until_sync(lambda: len(up.requests) == 2)
    assert up.port


async def test_faults_are_switchable_during_a_stream(oai: FakeOpenAI) -> None:
    """A test can flip a switch while a stream is running: the next event honours it."""
    oai.faults.slow_stream(0.02)
    long = [{"role": "user", "content": " ".join(["w"] * 40)}]
    stream = await oai_client(oai).chat.completions.create(model="m", messages=long, stream=True)
    seen = 0
    with pytest.raises(openai.APIError):
        async for _ in stream:
            seen += 1
            if seen == 3:
                oai.faults.die_mid_stream(after_chunks=0)
    assert 3 <= seen < 40
