"""Slow and stalled callers cannot pin the gateway's connections.

Raw sockets against a real ``modelroute serve`` started with short ``--header-timeout`` and
``--body-timeout``: heads that never finish, bodies that stall or trickle, idle keep-alive
connections. The gateway's own sockets are counted in /proc to show they are released.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import orjson
import pytest
import yaml

from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.base import wait_until
from tests.fakes.openai import FakeOpenAI
from tests.gateway.harness import FAST, model_route, provider_key
from tests.gateway.procs import GatewayProcess, modelroute
from tests.gateway.rawhttp import LAST_CHUNK, chunk, closed_by_peer, exchange, head, open_sockets, read_response

HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.5
CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
BODIES = {CHAT: b'{"model":"chat","messages":[{"role":"user","content":"hi"}]}',
          MESSAGES: b'{"model":"claude","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}'}
Fakes = tuple[FakeOpenAI, FakeAnthropic]


@pytest.fixture(scope="module")
def upstreams() -> Iterator[Fakes]:
    with FakeOpenAI() as oa, FakeAnthropic() as an:
        yield oa, an


def serve(tmp: Path, oa: FakeOpenAI, an: FakeAnthropic, *args: str) -> AbstractContextManager[GatewayProcess]:
    cfg = tmp / "routes.yaml"
    cfg.write_text(yaml.safe_dump_all([
        *provider_key("openai", "openai", oa.base_url),
        *provider_key("anthropic", "anthropic", an.base_url, keys=["sk-ant-test"]),
        model_route("chat", ("openai", "gpt-4o"), **FAST), model_route("claude", ("anthropic", "claude-x"), **FAST)]))
    return modelroute(tmp, "serve", "-f", str(cfg), *args)


@pytest.fixture
def fakes(upstreams: Fakes) -> Iterator[Fakes]:
    for up in upstreams:
        up.reset()
    yield upstreams
    for up in upstreams:
        up.reset()


@pytest.fixture
def gateway(tmp_path: Path, fakes: Fakes) -> Iterator[GatewayProcess]:
    with serve(tmp_path, *fakes, "--header-timeout", str(HEADER_TIMEOUT), "--body-timeout", str(BODY_TIMEOUT)) as gp:
        yield gp
    assert "Traceback" not in gp.logs(), gp.logs()


async def served(gp: GatewayProcess, path: str = CHAT) -> float:
    started = time.monotonic()
    resp = await exchange(gp.port, head("POST", path, length=len(BODIES[path])) + BODIES[path])
    assert resp.status == 200, resp
    return time.monotonic() - started


async def baseline(gp: GatewayProcess) -> int:
    """The gateway's socket count at rest: listeners plus its pooled upstream connections."""
    await served(gp)
    await served(gp, MESSAGES)
    return open_sockets(gp.proc.pid)


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def connect(gp: GatewayProcess, send: bytes = b"") -> Conn:
    reader, writer = await asyncio.open_connection("127.0.0.1", gp.port)
    if send:
        writer.write(send)
        await writer.drain()
    return reader, writer


async def closed_within(conn: Conn, seconds: float) -> float:
    """Seconds until the gateway closed ``conn`` (the test fails past ``seconds``)."""
    started = time.monotonic()
    async with asyncio.timeout(seconds):
        await closed_by_peer(conn[0])
    conn[1].close()
    return time.monotonic() - started


# ---- heads that never finish ---------------------------------------------------------------

async def test_a_thousand_half_open_requests_are_closed_after_the_header_timeout(
        tmp_path: Path, fakes: Fakes) -> None:
    header_timeout = 4.0  # long enough that a loaded machine serves the good request meanwhile
    with serve(tmp_path, *fakes, "--header-timeout", str(header_timeout)) as gp:
        rest = await baseline(gp)
        partial = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        conns = []
        for i in range(0, 1000, 100):
            # half of them say nothing at all, half send most of a head
            conns += await asyncio.gather(*(connect(gp, partial if j % 2 else b"") for j in range(i, i + 100)))
        pid = gp.proc.pid
        await wait_until(lambda: open_sockets(pid) >= rest + 900, within=10)
        # While they are held, a good request is served.
        await served(gp)
        assert open_sockets(pid) >= rest + 900, "the half-open connections were gone before the good request"
        # All closed by the gateway: the client side sees EOF, the gateway holds its sockets no more.
        closes = await asyncio.gather(*(closed_within(c, header_timeout + 15) for c in conns))
        assert max(closes) < header_timeout + 15
        await wait_until(lambda: open_sockets(pid) <= rest, within=10)
    oa, _ = fakes
    assert len(oa.requests) == 2  # the two good ones
    assert "Traceback" not in gp.logs()


async def test_a_head_trickled_byte_by_byte_is_closed_at_the_header_timeout(gateway: GatewayProcess) -> None:
    """Slowloris: every byte resets no timer."""
    rest = await baseline(gateway)
    reader, writer = await connect(gateway)
    started = time.monotonic()
    head_bytes = head("POST", CHAT, length=len(BODIES[CHAT]))
    closed = False
    for b in head_bytes[:-2]:
        try:
            writer.write(bytes([b]))
            await writer.drain()
        except ConnectionError:
            closed = True
            break
        try:
            async with asyncio.timeout(0.05):
                if not await reader.read(1):
                    closed = True
                    break
        except TimeoutError:
            pass
    took = time.monotonic() - started
    writer.close()
    assert closed, "the head was trickled to its end without the gateway closing the connection"
    assert HEADER_TIMEOUT - 0.2 <= took < HEADER_TIMEOUT + 5, took
    await wait_until(lambda: open_sockets(gateway.proc.pid) <= rest, within=10)


async def test_an_idle_keep_alive_connection_is_closed_after_the_header_timeout(gateway: GatewayProcess) -> None:
    rest = await baseline(gateway)
    conn = await connect(gateway, head("POST", CHAT, length=len(BODIES[CHAT])) + BODIES[CHAT])
    resp = await read_response(conn[0])
    assert resp.status == 200 and resp.headers.get("connection", "").lower() != "close"
    took = await closed_within(conn, HEADER_TIMEOUT + 10)
    assert took >= HEADER_TIMEOUT - 0.2
    await wait_until(lambda: open_sockets(gateway.proc.pid) <= rest, within=10)


# ---- bodies that stall or trickle ----------------------------------------------------------

@pytest.mark.parametrize("path", [CHAT, MESSAGES])
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_stalled_body_is_408_and_the_connection_closed(
        gateway: GatewayProcess, fakes: Fakes, path: str, framing: str) -> None:
    rest = await baseline(gateway)
    body = BODIES[path]
    if framing == "chunked":
        sent = head("POST", path, chunked=True) + chunk(body[:10])  # and no more chunks
    else:
        sent = head("POST", path, length=len(body)) + body[:10]
    conn = await connect(gateway, sent)
    started = time.monotonic()
    async with asyncio.timeout(BODY_TIMEOUT + 10):
        resp = await read_response(conn[0])
    took = time.monotonic() - started
    assert resp.status == 408, resp
    err = resp.json()
    assert isinstance(err, dict)
    if path == MESSAGES:
        assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error", err
    else:
        assert err["error"]["code"] == "request_timeout", err
    assert BODY_TIMEOUT - 0.2 <= took < BODY_TIMEOUT + 5
    assert await closed_within(conn, 5) < 5
    await wait_until(lambda: open_sockets(gateway.proc.pid) <= rest, within=10)
    oa, an = fakes
    assert len(oa.requests) + len(an.requests) == 2  # baseline's two good requests only


async def test_a_trickled_body_is_408_at_the_body_deadline(gateway: GatewayProcess, fakes: Fakes) -> None:
    """A byte every 100 ms never stalls for long; the deadline is for the whole body."""
    body = BODIES[CHAT] + b" " * 1000
    reader, writer = await connect(gateway, head("POST", CHAT, length=len(body)))
    started = time.monotonic()
    response = asyncio.create_task(read_response(reader))
    for b in body:
        if response.done():
            break
        try:
            writer.write(bytes([b]))
            await writer.drain()
        except ConnectionError:
            break
        await asyncio.wait({response}, timeout=0.1)
    async with asyncio.timeout(5):
        resp = await response
    writer.close()
    assert resp.status == 408, resp
    assert BODY_TIMEOUT - 0.2 <= time.monotonic() - started < BODY_TIMEOUT + 5
    oa, _ = fakes
    assert oa.requests == []


async def test_a_body_in_pieces_within_the_deadline_is_served(gateway: GatewayProcess, fakes: Fakes) -> None:
    body = BODIES[CHAT]
    reader, writer = await connect(gateway, head("POST", CHAT, chunked=True))
    response = asyncio.create_task(read_response(reader))
    for i in range(0, len(body), 20):
        writer.write(chunk(body[i:i + 20]))
        await writer.drain()
        await asyncio.wait({response}, timeout=0.05)  # paces the upload; an early answer ends it
        assert not response.done(), response.result()
    writer.write(LAST_CHUNK)
    resp = await response
    writer.close()
    assert resp.status == 200, resp


# ---- long requests are not cut -------------------------------------------------------------

async def test_a_response_longer_than_both_timeouts_is_not_cut(gateway: GatewayProcess, fakes: Fakes) -> None:
    oa, _ = fakes
    oa.faults.slow_stream(0.1)
    words = " ".join(f"w{i}" for i in range(30))  # ~3 s of stream: longer than either timeout
    body = orjson.dumps({"model": "chat", "messages": [{"role": "user", "content": words}], "stream": True})
    started = time.monotonic()
    resp = await exchange(gateway.port, head("POST", CHAT, length=len(body)) + body, within=30)
    assert time.monotonic() - started > HEADER_TIMEOUT + BODY_TIMEOUT
    assert resp.status == 200 and resp.body.rstrip().endswith(b"data: [DONE]"), resp.body[-200:]
