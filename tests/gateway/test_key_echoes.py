"""No key leaves the process, in any form (issue 9, class 2).

Upstreams of every kind (OpenAI, Azure OpenAI, Anthropic, Gemini) quote the key they were
sent: whole, its first or last 16 characters, a middle piece, masked as OpenAI does,
JSON-escaped (``\\u0073k-...``, also nested in a JSON string) and URL-encoded; in error
bodies (JSON and plain text) that fail over or pass straight to the caller, in SSE error
events before the first byte (the attempt fails over; the caller's 502 quotes the last
message) and after it (the caller's stream ends with an error event), and in response
headers (a garbage ``Retry-After`` included). The real `modelroute serve` runs at debug
level; every byte callers got, the whole log and /metrics are then searched for any piece
of any key, and the text around an echo must arrive unmangled.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anthropic
import openai
import orjson
import pytest
import yaml

from modelroute_sidecar.redact import MIN_FRAGMENT
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.azure import FakeAzureOpenAI
from tests.fakes.base import FakeUpstream
from tests.fakes.gemini import FakeGemini
from tests.fakes.openai import FakeOpenAI
from tests.fakes.openai_wire import mask_key
from tests.gateway.harness import FAST, model_route, provider_key
from tests.gateway.procs import GatewayProcess, modelroute, scrape

KINDS = ("openai", "azure", "anthropic", "gemini")
MESSAGE = "Incorrect API key provided: {}. You can find your API key at https://example.com/keys."


def new_key() -> str:
    """Random, with characters JSON and URLs escape, and a unique four-character tail."""
    tail = "".join(secrets.choice(string.ascii_uppercase) for _ in range(2))
    return f"sk-{secrets.token_hex(10)}+/{secrets.token_hex(10)}=~{tail}~"


def json_escaped(s: str) -> str:
    return "".join(f"\\u{ord(c):04x}" for c in s)


def echoes(key: str) -> dict[str, str]:
    """How upstreams quote a key, as raw text (what goes on the wire inside a message)."""
    return {"whole": key, "first16": key[:16], "last16": key[-16:], "middle": key[10:22],
            "masked": mask_key(key), "url": quote(key, safe=""), "url-twice": quote(quote(key, safe=""), safe="")}


def windows(s: str) -> set[str]:
    return {s[i:i + MIN_FRAGMENT] for i in range(len(s) - MIN_FRAGMENT + 1)}


def leaks(text: str, keys: dict[str, str]) -> list[str]:
    """Any piece of a key of MIN_FRAGMENT characters or more, raw or escaped, and its tail."""
    found = []
    for kind, key in keys.items():
        pieces = windows(key) | {json_escaped(w) for w in windows(key)} | {quote(w, safe="") for w in windows(key)}
        pieces.add(key[-4:])
        found += [f"{kind}: {p!r}" for p in pieces if p in text]
    return found


class Upstreams:
    def __init__(self) -> None:
        self.keys = {kind: new_key() for kind in KINDS}
        self.fakes: dict[str, FakeUpstream] = {
            "openai": FakeOpenAI(keys=[self.keys["openai"]]),
            "azure": FakeAzureOpenAI(keys=[self.keys["azure"]]),
            "anthropic": FakeAnthropic(keys=[self.keys["anthropic"]]),
            "gemini": FakeGemini(keys=[self.keys["gemini"]]),
        }

    def documents(self) -> list[dict[str, Any]]:
        f, k = self.fakes, self.keys
        return [
            *provider_key("openai", "openai", f["openai"].url + "/v1", [k["openai"]], models=[]),
            *provider_key("azure", "azure-openai", f["azure"].url, [k["azure"]], models=[]),
            *provider_key("anthropic", "anthropic", f["anthropic"].url, [k["anthropic"]], models=[]),
            *provider_key("gemini", "gemini", f["gemini"].url, [k["gemini"]], models=[]),
            model_route("via-openai", ("openai", "gpt-4o"), **FAST),
            model_route("via-azure", ("azure", "gpt-4o"), **FAST),
            model_route("via-anthropic", ("anthropic", "claude-haiku-4-5"), **FAST),
            model_route("via-gemini", ("gemini", "gemini-2.5-flash"), **FAST),
        ]


class Seen:
    """Every status, header and body byte the callers got."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def add(self, status: int, headers: Any, body: str) -> None:
        self.parts.append(f"HTTP {status}\n" + "".join(f"{k}: {v}\n" for k, v in headers.items()) + body)

    @property
    def text(self) -> str:
        return "\n".join(self.parts)


Caller = Callable[[str, bool], Awaitable[tuple[int, str]]]


def callers(gp: GatewayProcess, seen: Seen) -> dict[str, Caller]:
    oai = openai.AsyncOpenAI(base_url=gp.url, api_key="placeholder", max_retries=0)
    ant = anthropic.AsyncAnthropic(base_url=f"http://127.0.0.1:{gp.port}", api_key="placeholder", max_retries=0)
    msgs: Any = [{"role": "user", "content": "one two three four five"}]

    async def chat(model: str, stream: bool) -> tuple[int, str]:
        try:
            if stream:
                async with oai.chat.completions.with_streaming_response.create(
                        model=model, messages=msgs, stream=True) as r:
                    text = "\n".join([line async for line in r.iter_lines()])
                    seen.add(r.status_code, r.headers, text)
                    return r.status_code, text
            raw = await oai.chat.completions.with_raw_response.create(model=model, messages=msgs)
            seen.add(raw.status_code, raw.headers, raw.http_response.text)
            return raw.status_code, raw.http_response.text
        except openai.APIStatusError as e:
            seen.add(e.status_code, e.response.headers, e.response.text)
            return e.status_code, e.response.text

    async def messages(model: str, stream: bool) -> tuple[int, str]:
        try:
            if stream:
                async with ant.messages.with_streaming_response.create(
                        model=model, max_tokens=64, messages=msgs, stream=True) as r:
                    text = "\n".join([line async for line in r.iter_lines()])
                    seen.add(r.status_code, r.headers, text)
                    return r.status_code, text
            raw = await ant.messages.with_raw_response.create(model=model, max_tokens=64, messages=msgs)
            seen.add(raw.status_code, raw.headers, raw.http_response.text)
            return raw.status_code, raw.http_response.text
        except anthropic.APIStatusError as e:
            seen.add(e.status_code, e.response.headers, e.response.text)
            return e.status_code, e.response.text

    return {"chat": chat, "messages": messages}


def error_body(kind: str, status: int, escaped_message: str) -> bytes:
    """The provider's error shape, written by hand so the message keeps its escapes on the wire."""
    msg = escaped_message.encode()
    if kind == "anthropic":
        kind_ = b"invalid_request_error" if status == 400 else b"api_error"
        return b'{"type":"error","error":{"type":"%s","message":"%s"}}' % (kind_, msg)
    if kind == "gemini":
        name = b"INVALID_ARGUMENT" if status == 400 else b"INTERNAL"
        return b'{"error":{"code":%d,"message":"%s","status":"%s"}}' % (status, msg, name)
    kind_ = b"invalid_request_error" if status == 400 else b"server_error"
    return b'{"error":{"message":"%s","type":"%s","param":null,"code":null}}' % (msg, kind_)


async def drive(up: Upstreams, call: dict[str, Caller]) -> dict[str, int]:
    """Every echo through every kind; returns how many requests each outcome had."""
    outcomes: dict[str, int] = {}

    def saw(what: str, status: int, expected: set[int]) -> None:
        assert status in expected, (kind, what, status)
        outcomes[what] = outcomes.get(what, 0) + 1

    for kind in KINDS:
        fake, key, route = up.fakes[kind], up.keys[kind], f"via-{kind}"
        dialects = ("chat", "messages") if kind in ("anthropic", "gemini") else ("chat",)
        for name, echo in echoes(key).items():
            for dialect in dialects:
                # A 400 the upstream blames on the request: back to the caller (passed through when native).
                fake.faults.fail_next(1, 400, message=MESSAGE.format(echo), headers={"x-echo": echo})
                status, body = await call[dialect](route, False)
                saw("400 passed on", status, {400})
                if name == "whole":
                    assert "Incorrect API key provided: [redacted]. You can find your API key at " \
                           "https://example.com/keys." in orjson.loads(body).__repr__(), body
                # 500s until the route gives up: the caller's 502 quotes the last message.
                fake.faults.fail_next(5, 500, message=MESSAGE.format(echo), headers={"x-echo": echo})
                saw("5xx exhausted", (await call[dialect](route, False))[0], {502})
                fake.faults.clear()
                # 429 with the key in Retry-After and another header.
                fake.faults.fail_next(5, 429, message=MESSAGE.format(echo), headers={"retry-after": echo,
                                                                                     "x-echo": echo})
                saw("429 exhausted", (await call[dialect](route, False))[0], {429})
                fake.faults.clear()
                # The stream's first event is an error quoting the key: fails over, then 502.
                fake.faults.error_mid_stream(0, MESSAGE.format(echo))
                saw("stream error before first byte", (await call[dialect](route, True))[0], {502})
                # After the first byte: the stream ends with an error event. (Paced, so the
                # gateway reads the first events before the error; should they still arrive
                # in one read, nothing has reached the caller and the attempt fails over.)
                fake.faults.slow_stream(0.02)
                fake.faults.error_mid_stream(3, MESSAGE.format(echo))
                status, text = await call[dialect](route, True)
                saw("stream error after first byte" if status == 200 else "stream error, one read", status,
                    {200, 502})
                assert "error" in text
                fake.faults.clear()
        # JSON-escaped, and escaped twice (JSON text inside a JSON string), whole and in part.
        for escaped in (json_escaped(key), json_escaped(key[:16]), json_escaped(key).replace("\\", "\\\\")):
            for status in (400, 500):
                fake.faults.fail_next(5, status, body=error_body(kind, status, MESSAGE.format(escaped)))
                saw(f"escaped {status}", (await call["chat"](route, False))[0], {400} if status == 400 else {502})
                fake.faults.clear()
        # A plain-text error page quoting the key.
        fake.faults.fail_next(5, 500, body=f"<html>upstream broke; key={key}</html>")
        saw("plain text 5xx", (await call["chat"](route, False))[0], {502})
        fake.faults.clear()
        # Retry-After values that are numbers only in name (a hex key piece can read as 4e912...).
        for garbage in ("4e912345678901", "nan", "-inf", key):
            fake.faults.fail_next(5, 429, headers={"retry-after": garbage, "retry-after-ms": garbage})
            saw("garbage retry-after", (await call["chat"](route, False))[0], {429})
            fake.faults.clear()
        # And the key works: a normal answer.
        saw("200", (await call["chat"](route, False))[0], {200})
    return outcomes


@pytest.mark.parametrize("log_format", ["json", "text"])
async def test_no_piece_of_a_key_leaves_the_process(tmp_path: Path, log_format: str) -> None:
    up = Upstreams()
    for fake in up.fakes.values():
        await fake.start()
    try:
        cfg = tmp_path / "routes.yaml"
        cfg.write_text(yaml.safe_dump_all(up.documents()))
        seen = Seen()
        with modelroute(tmp_path, "serve", "-f", str(cfg), "--log-level", "debug", "--log-format", log_format) as gp:
            outcomes = await drive(up, callers(gp, seen))
            metrics = scrape(gp)
        log = gp.logs()
    finally:
        for fake in up.fakes.values():
            await fake.close()

    # The echoes did happen, and did reach the places searched (so the searches mean something).
    sent = [r for fake in up.fakes.values() for r in fake.requests]
    assert len(sent) > 400, len(sent)
    assert outcomes["stream error after first byte"] >= outcomes["stream error before first byte"] // 2, outcomes
    assert "attempt failed" in log and "Incorrect API key provided: " in log
    assert seen.text.count("Incorrect API key provided: ") > 200
    assert "modelroute_requests_total" in metrics

    assert leaks(seen.text, up.keys) == [], "a key reached a caller"
    assert leaks(log, up.keys) == [], "a key reached the log"
    assert leaks(metrics, up.keys) == [], "a key reached /metrics"
    assert "internal error" not in log, "an echo made the gateway fail"
