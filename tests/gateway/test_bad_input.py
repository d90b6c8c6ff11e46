"""Bad input on /v1/chat/completions and /v1/embeddings, sent the way a careless client sends it.

Every row is one mistake. The gateway must answer it itself (never forwarding it upstream)
with a 4xx in OpenAI's error shape and a message that tells the developer what to fix;
and the gateway must go on serving good requests, on the same route and on others.
The official openai SDK sends everything, raw bytes included (``content=``); only the
chunked-upload check uses aiohttp, to see how much of the body the gateway reads.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import openai
import pytest

from modelroute_sidecar.config import GatewayConfig, from_data
from tests.fakes.openai import FakeOpenAI
from tests.gateway.harness import FAST, RunningGateway, model_route, provider_key, running_gateway

CHAT = "/chat/completions"
EMBED = "/embeddings"
USER = [{"role": "user", "content": "hi"}]
SPEC: dict[str, Any] = FAST
ANY = object()  # "do not check" for an expected param or code
ERROR_TYPES = {"invalid_request_error", "not_found_error"}
LIMIT = 2048


@dataclass(frozen=True)
class Case:
    """One bad request: the body (a dict is sent as JSON, bytes as they are) and what must come back."""

    path: str
    body: Any
    param: Any = None
    says: tuple[str, ...] = ()  # substrings of the message, case-insensitive
    status: int = 400
    code: Any = ANY


def chat(**fields: Any) -> dict[str, Any]:
    """A good chat body with ``fields`` replacing some of it (``DROP`` removes one)."""
    body: dict[str, Any] = {"model": "chat", "messages": USER, **fields}
    return {k: v for k, v in body.items() if v is not DROP}


def embed(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "embed", "input": "hello", **fields}
    return {k: v for k, v in body.items() if v is not DROP}


DROP = object()
PREFIX = b'{"model":"chat","messages":[{"role":"user","content":"hi"}]'
EPREFIX = b'{"model":"embed","input":"hello"'
BIG = 10**30  # valid JSON, beyond any 64-bit integer an upstream takes

CASES: dict[str, Case] = {
    # ---- not JSON, or not a JSON object ----
    "chat-malformed-json": Case(CHAT, b'{"model": "chat", "messages": [', says=("could not parse the json", "eof")),
    "chat-empty-body": Case(CHAT, b"", says=("could not parse the json",)),
    "chat-trailing-garbage": Case(CHAT, PREFIX + b"}}", says=("could not parse the json", "trailing")),
    "chat-json-array": Case(CHAT, b'[{"model": "chat"}]', says=("json object",)),
    "chat-json-string": Case(CHAT, b'"hello"', says=("json object",)),
    "chat-json-number": Case(CHAT, b"42", says=("json object",)),
    "chat-json-null": Case(CHAT, b"null", says=("json object",)),
    "chat-non-utf8": Case(CHAT, b'{"model":"chat","messages":[{"role":"user","content":"caf\xe9 \xff"}]}',
                          says=("could not parse the json", "unicode")),
    "chat-lone-surrogate": Case(CHAT, b'{"model":"chat","messages":[{"role":"user","content":"\\ud800"}]}',
                                says=("could not parse the json",)),
    "chat-deeply-nested": Case(CHAT, PREFIX + b',"metadata":' + b"[" * 5000 + b"]" * 5000 + b"}",
                               says=("could not parse the json", "recursion limit")),
    "chat-deeply-nested-objects": Case(CHAT, PREFIX + b',"x":' + b'{"a":' * 3000 + b"1" + b"}" * 3000 + b"}",
                                       says=("recursion limit",)),
    # ---- wrong types ----
    "chat-model-not-a-string": Case(CHAT, chat(model=5), "model", ("'model'", "string")),
    "chat-model-null": Case(CHAT, chat(model=None), "model", ("'model'", "string")),
    "chat-model-a-list": Case(CHAT, chat(model=["chat"]), "model", ("'model'", "string")),
    "chat-model-empty": Case(CHAT, chat(model=""), "model", ("'model'", "empty")),
    "chat-messages-a-string": Case(CHAT, chat(messages="hi"), "messages", ("'messages'", "array")),
    "chat-messages-an-object": Case(CHAT, chat(messages=USER[0]), "messages", ("'messages'", "array")),
    "chat-message-not-an-object": Case(CHAT, chat(messages=["hi"]), "messages[0]", ("'messages[0]'", "object")),
    "chat-content-a-number": Case(CHAT, chat(messages=[{"role": "user", "content": 5}]), "messages[0].content",
                                  ("'messages[0].content'", "string", "array")),
    "chat-content-part-unknown-type": Case(CHAT, chat(messages=[{"role": "user", "content": [{"type": "video"}]}]),
                                           "messages[0].content[0].type", ('"video"', "'text'", "'image_url'")),
    "chat-content-part-without-text": Case(CHAT, chat(messages=[{"role": "user", "content": [{"type": "text"}]}]),
                                           "messages[0].content[0].text", ("missing", "'messages[0].content[0].text'")),
    "chat-image-url-a-string": Case(CHAT, chat(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": "https://example.com/cat.png"}]}]),
        "messages[0].content[0].image_url", ("'messages[0].content[0].image_url'", "object")),
    "chat-role-unknown": Case(CHAT, chat(messages=[{"role": "wizard", "content": "hi"}]), "messages[0].role",
                              ('"wizard"', "'user'", "'assistant'")),
    "chat-role-missing": Case(CHAT, chat(messages=[{"content": "hi"}]), "messages[0].role",
                              ("missing", "'messages[0].role'")),
    "chat-tools-not-a-list": Case(CHAT, chat(tools={"type": "function", "function": {"name": "f"}}), "tools",
                                  ("'tools'", "array")),
    "chat-tool-not-an-object": Case(CHAT, chat(tools=["lookup"]), "tools[0]", ("'tools[0]'", "object")),
    "chat-tool-without-function": Case(CHAT, chat(tools=[{"type": "function"}]), "tools[0].function",
                                       ("missing", "'tools[0].function'")),
    "chat-tool-function-without-name": Case(CHAT, chat(tools=[{"type": "function", "function": {}}]),
                                            "tools[0].function.name", ("missing",)),
    "chat-tool-wrong-type": Case(CHAT, chat(tools=[{"type": "retrieval", "function": {"name": "f"}}]), "tools[0].type",
                                 ('"retrieval"', "'function'")),
    "chat-tool-call-without-arguments": Case(CHAT, chat(messages=[
        *USER, {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f"}}]}]),
        "messages[1].tool_calls[0].function.arguments", ("missing",)),
    "chat-max-tokens-a-string": Case(CHAT, chat(max_tokens="10"), "max_tokens", ("'max_tokens'", "integer")),
    "chat-max-tokens-a-decimal": Case(CHAT, chat(max_tokens=10.5), "max_tokens", ("integer",)),
    "chat-max-tokens-a-boolean": Case(CHAT, chat(max_tokens=True), "max_tokens", ("integer",)),
    "chat-stream-a-string": Case(CHAT, chat(stream="yes"), "stream", ("'stream'", "boolean")),
    "chat-stream-a-number": Case(CHAT, chat(stream=1), "stream", ("boolean",)),
    "chat-stream-options-a-string": Case(CHAT, chat(stream=True, stream_options="usage"), "stream_options",
                                         ("object",)),
    "chat-temperature-a-string": Case(CHAT, chat(temperature="0.5"), "temperature", ("'temperature'", "number")),
    "chat-n-a-string": Case(CHAT, chat(n="2"), "n", ("integer",)),
    "chat-stop-a-number": Case(CHAT, chat(stop=5), "stop", ("'stop'", "string")),
    # ---- missing or empty ----
    "chat-model-missing": Case(CHAT, chat(model=DROP), "model", ("missing required parameter: 'model'",)),
    "chat-messages-missing": Case(CHAT, chat(messages=DROP), "messages", ("missing required parameter: 'messages'",)),
    "chat-messages-empty": Case(CHAT, chat(messages=[]), "messages", ("'messages'", "empty"), code="empty_array"),
    "chat-empty-object": Case(CHAT, {}, ANY, ("missing required parameter",)),
    # ---- numbers ----
    "chat-huge-max-tokens": Case(CHAT, chat(max_tokens=BIG), ANY, ("64-bit",)),
    "chat-huge-unknown-field": Case(CHAT, chat(seed=-BIG), ANY, ("64-bit",)),
    "chat-1000-digit-number": Case(CHAT, PREFIX + b',"seed":' + b"9" * 1000 + b"}", "seed", ("64-bit",)),
    "chat-number-out-of-range": Case(CHAT, PREFIX + b',"seed":' + b"9" * 5000 + b"}",
                                     says=("could not parse the json", "number out of range")),
    "chat-infinite-temperature": Case(CHAT, PREFIX + b',"temperature":1e999}', "temperature", ("finite",)),
    "chat-nan-temperature": Case(CHAT, PREFIX + b',"temperature":NaN}', "temperature", ("finite",)),
    "chat-nan-unknown-field": Case(CHAT, PREFIX + b',"presence_penalty":NaN}', "presence_penalty", ("finite",)),
    "chat-infinite-in-metadata": Case(CHAT, PREFIX + b',"metadata":{"a":[1,-1e999]}}', "metadata.a[1]", ("finite",)),
    # ---- routing ----
    "chat-unknown-model": Case(CHAT, chat(model="mistral-nope"), "model", ("'mistral-nope'",), 404, "model_not_found"),
    "chat-unknown-model-streamed": Case(CHAT, chat(model="claude-nope", stream=True), "model", ("'claude-nope'",),
                                        404, "model_not_found"),
    # ---- embeddings ----
    "embed-malformed-json": Case(EMBED, b'{"model": "embed", "input": ', says=("could not parse the json",)),
    "embed-json-array": Case(EMBED, b'["hello"]', says=("json object",)),
    "embed-non-utf8": Case(EMBED, b'{"model":"embed","input":"\xc3\x28"}', says=("could not parse the json",)),
    "embed-deeply-nested": Case(EMBED, EPREFIX + b',"user":' + b"[" * 5000 + b"]" * 5000 + b"}",
                                says=("recursion limit",)),
    "embed-model-missing": Case(EMBED, embed(model=DROP), "model", ("missing required parameter: 'model'",)),
    "embed-model-not-a-string": Case(EMBED, embed(model=3), "model", ("'model'", "string")),
    "embed-input-missing": Case(EMBED, embed(input=DROP), "input", ("missing required parameter: 'input'",)),
    "embed-input-a-number": Case(EMBED, embed(input=5), "input", ("'input'", "string", "array")),
    "embed-input-an-object": Case(EMBED, embed(input={"text": "hello"}), "input", ("'input'",)),
    "embed-input-mixed-list": Case(EMBED, embed(input=[1, "a"]), ANY, ("'input",)),
    "embed-input-empty-list": Case(EMBED, embed(input=[]), "input", ("input",)),
    "embed-input-empty-string": Case(EMBED, embed(input=""), "input", ("input",)),
    "embed-encoding-format-unknown": Case(EMBED, embed(encoding_format="int8"), "encoding_format",
                                          ('"int8"', "'float'", "'base64'")),
    "embed-dimensions-a-string": Case(EMBED, embed(dimensions="8"), "dimensions", ("integer",)),
    "embed-huge-token": Case(EMBED, embed(input=[1, BIG]), ANY, ("64-bit",)),
    "embed-unknown-model": Case(EMBED, embed(model="embed-nope"), "model", ("'embed-nope'",), 404, "model_not_found"),
}


def docs(a: FakeOpenAI, b: FakeOpenAI) -> list[dict[str, Any]]:
    return [*provider_key("a", "openai", a.base_url), *provider_key("b", "openai", b.base_url),
            model_route("chat", ("a", "gpt-4o"), **SPEC),
            model_route("embed", ("a", "text-embedding-3-small"), **SPEC),
            model_route("other", ("b", "gpt-4o-mini"), **SPEC)]


@asynccontextmanager
async def gateway(base: GatewayConfig | None = None) -> AsyncIterator[tuple[RunningGateway, FakeOpenAI, FakeOpenAI]]:
    async with FakeOpenAI() as a, FakeOpenAI() as b, running_gateway(docs(a, b), base=base) as gw:
        yield gw, a, b


async def post_raw(client: openai.AsyncOpenAI, path: str, content: bytes) -> object:
    """Bytes as they are, with the SDK's own transport and headers (it cannot mangle them)."""
    return await client.post(path, cast_to=object, content=content,
                             options={"headers": {"content-type": "application/json"}})


async def send(client: openai.AsyncOpenAI, path: str, body: Any, method: str = "post") -> openai.APIStatusError:
    """Send with the SDK and return the error it raised; an accepted request fails the test."""
    try:
        if method != "post":
            await getattr(client, method)(path, cast_to=object)
        elif isinstance(body, bytes):
            await post_raw(client, path, body)
        else:
            await client.post(path, cast_to=object, body=body)
    except openai.APIStatusError as e:
        return e
    raise AssertionError(f"{method.upper()} {path} was accepted")


def check_error(e: openai.APIStatusError, status: int, param: Any = ANY, says: tuple[str, ...] = (),
                code: Any = ANY) -> dict[str, Any]:
    """OpenAI's error shape, the status, and a message that says what to fix."""
    assert e.status_code == status, (e.status_code, e.response.text)
    assert e.response.headers["content-type"].startswith("application/json")
    body = json.loads(e.response.text)
    assert list(body) == ["error"], body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    message = err["message"]
    assert isinstance(message, str) and 10 < len(message) < 600, message
    for internal in ("Traceback", "pydantic", "errors.pydantic.dev", "TypedDict", "_Part", "<class", "Internal"):
        assert internal not in message, message
    assert err["type"] in ERROR_TYPES, err
    if param is not ANY:
        assert err["param"] == param, err
    if code is not ANY:
        assert err["code"] == code, err
    for s in says:
        assert s.lower() in message.lower(), (s, message)
    return err


async def still_serves(gw: RunningGateway, a: FakeOpenAI, b: FakeOpenAI) -> None:
    """A good request on the same route, a stream on another upstream, and embeddings, all fine."""
    client = gw.client()
    resp = await client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "still ok"}])
    assert resp.choices[0].message.content == "echo: still ok"
    stream = await client.chat.completions.create(model="other", messages=[{"role": "user", "content": "a b"}],
                                                  stream=True)
    assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == "echo: a b"
    emb = await client.embeddings.create(model="embed", input=["x y"])
    assert len(emb.data) == 1
    # Exactly the good requests went upstream, each one valid.
    assert [r.path for r in a.requests] == ["/v1/chat/completions", "/v1/embeddings"]
    assert [r.path for r in b.requests] == ["/v1/chat/completions"]


async def no_server_errors(gw: RunningGateway) -> None:
    for (name, labels), value in (await gw.metrics()).items():
        if name == "modelroute_requests_total" and value:
            assert not dict(labels)["status"].startswith("5"), (labels, value)


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
async def test_bad_input_is_a_clear_4xx_and_harms_nothing(case: Case) -> None:
    async with gateway() as (gw, a, b):
        e = await send(gw.client(), case.path, case.body)
        check_error(e, case.status, case.param, case.says, case.code)
        assert a.requests == [] and b.requests == []  # answered by the gateway itself
        # Counted as unrouted bad input, with its status.
        assert await gw.metric("modelroute_requests_total", route="", status=str(case.status)) == 1
        await still_serves(gw, a, b)
        await no_server_errors(gw)


METHOD_CASES = {
    "get-chat-completions": ("get", CHAT),
    "put-embeddings": ("put", EMBED),
    "patch-chat-completions": ("patch", CHAT),
    "delete-models": ("delete", "/models"),
    "post-models": ("post", "/models"),
    "get-unknown-path": ("get", "/no/such/thing"),
    "post-retired-edits": ("post", "/edits"),  # retired by OpenAI; /completions is served (surface/)
    "get-outside-v1": ("get", "/../admin"),
}


@pytest.mark.parametrize(("method", "path"), list(METHOD_CASES.values()), ids=list(METHOD_CASES))
async def test_wrong_method_or_unknown_path_is_a_json_404_or_405(method: str, path: str) -> None:
    async with gateway() as (gw, a, b):
        client = gw.client()
        if method == "patch":
            e = await send_patch(client, path)
        else:
            e = await send(client, path, {"model": "chat"}, method)
        assert e.status_code in (404, 405), (e.status_code, e.response.text)
        err = check_error(e, e.status_code)
        sent = e.response.request.url.path
        assert method.upper() in err["message"] and sent in err["message"], err
        assert a.requests == [] and b.requests == []
        await still_serves(gw, a, b)


async def send_patch(client: openai.AsyncOpenAI, path: str) -> openai.APIStatusError:
    try:
        await client.patch(path, cast_to=object, body={"model": "chat"})
    except openai.APIStatusError as e:
        return e
    raise AssertionError(f"PATCH {path} was accepted")


async def test_unknown_model_through_the_typed_sdk_calls() -> None:
    """What a user sees from `create(...)`: NotFoundError with code and param, for every call shape."""
    async with gateway() as (gw, a, b):
        client = gw.client()
        calls = [
            client.chat.completions.create(model="mistral-nope", messages=USER),  # type: ignore[arg-type]
            client.chat.completions.create(model="mistral-nope", messages=USER, stream=True),  # type: ignore[arg-type]
            client.embeddings.create(model="mistral-nope", input="x"),
            client.models.retrieve("mistral-nope"),
        ]
        for call in calls:
            with pytest.raises(openai.NotFoundError) as e:
                await call
            assert e.value.code == "model_not_found" and e.value.param == "model"
            assert "mistral-nope" in e.value.message
        assert a.requests == [] and b.requests == []
        await still_serves(gw, a, b)


async def test_bad_streaming_request_gets_json_not_an_event_stream() -> None:
    async with gateway() as (gw, a, _):
        with pytest.raises(openai.BadRequestError) as e:
            await gw.client().chat.completions.create(model="chat", messages=[], stream=True)
        assert e.value.response.headers["content-type"].startswith("application/json")
        assert e.value.code == "empty_array" and e.value.param == "messages"
        assert a.requests == []


# ---- body size -------------------------------------------------------------------------

SMALL = from_data({"maxBodyBytes": LIMIT}, GatewayConfig)


def padded(path: str, size: int) -> bytes:
    """A valid request body of exactly ``size`` bytes (whitespace padding)."""
    head = PREFIX if path == CHAT else EPREFIX
    body = head + b"}"
    return head + b" " * (size - len(body)) + b"}"


@pytest.mark.parametrize("path", [CHAT, EMBED])
async def test_body_over_max_body_bytes_with_content_length_is_413(path: str) -> None:
    async with gateway(SMALL) as (gw, a, b):
        client = gw.client()
        e = await send(client, path, padded(path, LIMIT + 1))
        check_error(e, 413, None, (str(LIMIT), "exceeds"), "request_too_large")
        assert a.requests == []
        # At the limit it is fine: the limit is the configured one, not some other ceiling.
        ok = await post_raw(client, path, padded(path, LIMIT))
        assert isinstance(ok, dict) and ok["object"] in ("chat.completion", "list")
        a.requests.clear()
        await still_serves(gw, a, b)


@pytest.mark.parametrize("path", [CHAT, EMBED])
async def test_chunked_body_over_max_body_bytes_is_413_without_reading_it_all(path: str) -> None:
    offered = 256  # chunks of 256 KiB: 64 MiB a gateway that buffers first would swallow
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        yield PREFIX[:-1] + b',"padding":"'
        for _ in range(offered):
            sent += 1
            yield b"x" * (256 * 1024)
        yield b'"}'

    async with gateway(SMALL) as (gw, a, b):
        async with aiohttp.ClientSession() as s, s.post(gw.url + path, data=body(),
                                                        headers={"content-type": "application/json"}) as r:
            assert r.status == 413
            err = (await r.json())["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["code"] == "request_too_large"
        assert str(LIMIT) in err["message"]
        # The gateway stopped reading near the limit; socket buffers hold a few MiB at most.
        assert sent < offered // 4, f"the gateway read {sent * 256} KiB of a body over a {LIMIT}-byte limit"
        assert a.requests == []
        await still_serves(gw, a, b)


async def test_chunked_body_under_the_limit_is_served() -> None:
    async def body() -> AsyncIterator[bytes]:
        for part in (PREFIX[:20], PREFIX[20:], b"}"):
            yield part

    async with gateway(SMALL) as (gw, a, _), aiohttp.ClientSession() as s, s.post(
            gw.url + CHAT, data=body(), headers={"content-type": "application/json"}) as r:
        assert r.status == 200, await r.text()
        assert (await r.json())["choices"][0]["message"]["content"] == "echo: hi"
        assert len(a.requests) == 1


# ---- nothing else breaks ----------------------------------------------------------------

async def test_a_flood_of_bad_input_does_not_disturb_a_stream_in_flight() -> None:
    async with gateway() as (gw, a, b):
        b.faults.slow_stream(0.02)
        client = gw.client()
        words = " ".join(f"w{i}" for i in range(30))
        stream = await client.chat.completions.create(model="other", messages=[{"role": "user", "content": words}],
                                                      stream=True)
        first = await anext(aiter(stream))
        assert b.active_streams == 1

        async def bad(case: Case) -> None:
            check_error(await send(client, case.path, case.body), case.status, case.param, case.says, case.code)

        await asyncio.gather(*(bad(c) for c in CASES.values() for _ in range(3)))
        rest = [c async for c in stream]
        text = "".join(c.choices[0].delta.content or "" for c in [first, *rest] if c.choices)
        assert text == f"echo: {words}"
        assert a.requests == [] and len(b.requests) == 1
        b.faults.clear()
        b.requests.clear()
        await still_serves(gw, a, b)
        await no_server_errors(gw)
