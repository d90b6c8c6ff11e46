"""Compressed request bodies: ``maxBodyBytes`` holds for the decoded body, decoding never
stalls other requests, and a body that cannot be decoded is a 4xx, not a 500.

Sent over raw sockets to a real ``modelroute serve`` (no client library compresses a
request body on its own), with a fake OpenAI and a fake Anthropic upstream that record
everything they are sent: a refused body must never reach them.
"""

from __future__ import annotations

import asyncio
import functools
import struct
import time
import zlib
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
import yaml

from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.openai import FakeOpenAI
from tests.gateway.harness import FAST, model_route, provider_key
from tests.gateway.procs import GatewayProcess, modelroute
from tests.gateway.rawhttp import (
    LAST_CHUNK,
    RawResponse,
    chunk,
    closed_by_peer,
    exchange,
    head,
    memory,
    read_response,
)

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
LIMIT = 32 * 1024 * 1024  # maxBodyBytes of `serve` (the default)
MIB = 1024 * 1024
PREFIX = {CHAT: b'{"model":"chat","messages":[{"role":"user","content":"hi"}]',
          MESSAGES: b'{"model":"claude","max_tokens":5,"messages":[{"role":"user","content":"hi"}]'}
Fakes = tuple[FakeOpenAI, FakeAnthropic]
BODY_TIMEOUT = 2.0  # --body-timeout for these processes, so the stalled-body case is quick


# ---- compressed bodies ---------------------------------------------------------------------

@functools.cache
def _segment(data: bytes, final: bool) -> bytes:
    """Raw deflate blocks for ``data`` ending on a byte boundary, so segments concatenate."""
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    return co.compress(data) + co.flush(zlib.Z_FINISH if final else zlib.Z_FULL_FLUSH)


def padded_json(path: str, mib: int) -> Iterator[bytes]:
    """A valid request body of ``mib`` MiB and a bit: the prefix, whitespace, ``}``."""
    yield PREFIX[path]
    for _ in range(mib):
        yield b" " * MIB
    yield b"}"


def deflate_raw(parts: list[bytes]) -> bytes:
    """Raw deflate of the concatenated ``parts``; a repeated part compresses once (a bomb in ms)."""
    return b"".join(_segment(p, i == len(parts) - 1) for i, p in enumerate(parts))


def compressed(coding: str, path: str, mib: int) -> bytes:
    parts = list(padded_json(path, mib))
    raw = deflate_raw(parts)
    if coding == "deflate-raw":
        return raw
    crc, adler, size = 0, 1, 0
    for p in parts:
        crc, adler, size = zlib.crc32(p, crc), zlib.adler32(p, adler), size + len(p)
    if coding == "gzip":
        return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + raw + struct.pack("<II", crc, size & 0xFFFFFFFF)
    assert coding == "deflate"
    return b"\x78\xda" + raw + struct.pack(">I", adler)


def encoding_header(coding: str) -> str:
    return "deflate" if coding == "deflate-raw" else coding


def post(path: str, body: bytes, encoding: str | None, **head_kw: object) -> bytes:
    headers = {"Content-Encoding": encoding} if encoding else {}
    if head_kw.get("chunked"):
        return head("POST", path, headers, chunked=True) + chunk(body) + LAST_CHUNK
    return head("POST", path, headers, length=len(body)) + body


# ---- the gateway under test ----------------------------------------------------------------

@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[FakeOpenAI, FakeAnthropic]]:
    with FakeOpenAI() as oa, FakeAnthropic() as an:
        yield oa, an


def serve(tmp: Path, oa: FakeOpenAI, an: FakeAnthropic, *args: str) -> AbstractContextManager[GatewayProcess]:
    cfg = tmp / "routes.yaml"
    cfg.write_text(yaml.safe_dump_all([
        *provider_key("openai", "openai", oa.base_url), *provider_key("anthropic", "anthropic", an.base_url,
                                                                      keys=["sk-ant-test"]),
        model_route("chat", ("openai", "gpt-4o"), **FAST), model_route("claude", ("anthropic", "claude-x"), **FAST)]))
    return modelroute(tmp, "serve", "-f", str(cfg), *args)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory,
            upstreams: tuple[FakeOpenAI, FakeAnthropic]) -> Iterator[GatewayProcess]:
    with serve(tmp_path_factory.mktemp("encoding"), *upstreams, "--body-timeout", str(BODY_TIMEOUT)) as gp:
        yield gp
    assert gateway_tracebacks(gp) == []


@pytest.fixture
def fakes(upstreams: Fakes) -> Iterator[Fakes]:
    for up in upstreams:
        up.reset()
    yield upstreams
    for up in upstreams:
        up.reset()


def gateway_tracebacks(gp: GatewayProcess) -> list[str]:
    """The gateway's own tracebacks (aiohttp's report of a request that is not HTTP at all is not one)."""
    return [line for line in gp.logs().splitlines() if "Traceback" in line and '"logger":"aiohttp.server"' not in line]


def error_of(resp: RawResponse, path: str) -> dict[str, object]:
    """The error object, checked to be in the caller's dialect."""
    body = resp.json()
    assert isinstance(body, dict), body
    if path == MESSAGES:
        assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
    else:
        assert set(body["error"]) == {"message", "type", "param", "code"}, body
    err = body["error"]
    assert isinstance(err, dict)
    return err


async def served(gp: GatewayProcess, path: str = CHAT) -> float:
    """A good request gets its 200; returns how long it took."""
    started = time.monotonic()
    resp = await exchange(gp.port, post(path, PREFIX[path] + b"}", None))
    assert resp.status == 200, resp
    return time.monotonic() - started


# ---- bombs ---------------------------------------------------------------------------------

@pytest.mark.parametrize("path", [CHAT, MESSAGES])
@pytest.mark.parametrize("coding", ["gzip", "deflate", "deflate-raw"])
@pytest.mark.parametrize("mib", [40, 300])
async def test_a_compression_bomb_is_413_and_never_forwarded(gateway: GatewayProcess, fakes: Fakes, coding: str,
                                                             path: str, mib: int) -> None:
    body = compressed(coding, path, mib)
    assert len(body) < LIMIT // 32  # small on the wire: only the decoded size is over the limit
    started = time.monotonic()
    resp = await exchange(gateway.port, post(path, body, encoding_header(coding)))
    took = time.monotonic() - started
    assert resp.status == 413, resp
    err = error_of(resp, path)
    assert err["type"] == "request_too_large" if path == MESSAGES else err["code"] == "request_too_large"
    assert str(LIMIT) in str(err["message"])
    # Decoding stopped at the limit: a 300 MiB bomb costs no more than a 40 MiB one.
    assert took < 5, f"{took:.1f}s to refuse a {mib} MiB bomb"
    oa, an = fakes
    assert oa.requests == [] and an.requests == []
    await served(gateway, path)


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
async def test_a_chunked_compression_bomb_is_413(gateway: GatewayProcess, fakes: Fakes, coding: str) -> None:
    body = compressed(coding, CHAT, 300)
    data = head("POST", CHAT, {"Content-Encoding": coding}, chunked=True)
    data += b"".join(chunk(body[i:i + 4096]) for i in range(0, len(body), 4096)) + LAST_CHUNK
    resp = await exchange(gateway.port, data)
    assert resp.status == 413 and error_of(resp, CHAT)["code"] == "request_too_large", resp
    oa, _ = fakes
    assert oa.requests == []


# ---- compressed bodies that are fine -------------------------------------------------------

@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("coding", ["gzip", "x-gzip", "deflate", "deflate-raw", "identity"])
async def test_a_compressed_body_under_the_limit_is_decoded_and_served(
        gateway: GatewayProcess, fakes: Fakes, coding: str, chunked: bool) -> None:
    plain = b"".join(padded_json(CHAT, 1))
    body = plain if coding == "identity" else compressed("gzip" if coding == "x-gzip" else coding, CHAT, 1)
    resp = await exchange(gateway.port, post(CHAT, body, encoding_header(coding), chunked=chunked))
    assert resp.status == 200, resp
    oa, _ = fakes
    assert len(oa.requests) == 1
    sent = oa.requests[0]
    assert sent.body["messages"] == [{"role": "user", "content": "hi"}]
    assert "content-encoding" not in sent.headers  # the upstream gets the decoded body, labelled as such


# ---- bodies that cannot be decoded ---------------------------------------------------------

def truncated() -> bytes:
    whole = compressed("gzip", CHAT, 1)
    return whole[:len(whole) // 2]


BAD_BODIES: dict[str, tuple[str, bytes, int, str]] = {
    # name: (Content-Encoding, body, status, error code)
    "gzip-truncated": ("gzip", truncated(), 400, "invalid_content_encoding"),
    "gzip-no-trailer": ("gzip", compressed("gzip", CHAT, 0)[:-8], 400, "invalid_content_encoding"),
    "gzip-garbage": ("gzip", b"\x1f\x8b\x08\x00garbage that is not deflate at all", 400, "invalid_content_encoding"),
    "gzip-not-gzip": ("gzip", PREFIX[CHAT] + b"}", 400, "invalid_content_encoding"),
    "gzip-empty": ("gzip", b"", 400, "invalid_content_encoding"),
    "gzip-trailing-data": ("gzip", compressed("gzip", CHAT, 0) + b"more", 400, "invalid_content_encoding"),
    "deflate-garbage": ("deflate", b"\x78\x9c\xff\xff\xff\xff not deflate", 400, "invalid_content_encoding"),
    "deflate-truncated": ("deflate", compressed("deflate", CHAT, 1)[:100], 400, "invalid_content_encoding"),
    "br": ("br", b"\x1b\xff\xff\x7f" + b"\x00" * 64, 415, "unsupported_content_encoding"),
    "zstd": ("zstd", b"\x28\xb5\x2f\xfd" + b"\x00" * 64, 415, "unsupported_content_encoding"),
    "compress": ("compress", b"\x1f\x9d" + b"\x00" * 16, 415, "unsupported_content_encoding"),
    "unknown": ("x-rot13", b"{}", 415, "unsupported_content_encoding"),
    "gzip-twice": ("gzip, gzip", compressed("gzip", CHAT, 0), 415, "unsupported_content_encoding"),
    "gzip-deflate": ("deflate, gzip", compressed("gzip", CHAT, 0), 415, "unsupported_content_encoding"),
}


@pytest.mark.parametrize("path", [CHAT, MESSAGES])
@pytest.mark.parametrize("name", sorted(BAD_BODIES))
async def test_a_body_that_cannot_be_decoded_is_a_4xx_in_the_callers_dialect(
        gateway: GatewayProcess, fakes: Fakes, name: str, path: str) -> None:
    coding, body, status, code = BAD_BODIES[name]
    resp = await exchange(gateway.port, post(path, body, coding))
    assert resp.status == status, resp
    err = error_of(resp, path)
    if path == CHAT:
        assert err["code"] == code
    if status == 415:
        assert resp.headers["accept-encoding"] == "gzip, deflate"
    oa, an = fakes
    assert oa.requests == [] and an.requests == []
    await served(gateway, path)


async def test_content_length_shorter_than_the_compressed_body(gateway: GatewayProcess, fakes: Fakes) -> None:
    body = compressed("gzip", CHAT, 1)
    cut = len(body) // 2
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    try:
        async with asyncio.timeout(10):
            writer.write(head("POST", CHAT, {"Content-Encoding": "gzip"}, length=cut) + body[:cut])
            resp = await read_response(reader)
            assert resp.status == 400 and error_of(resp, CHAT)["code"] == "invalid_content_encoding", resp
            # The rest is no request at all: HTTP's own 400, and the connection is closed.
            writer.write(body[cut:])
            assert (await read_response(reader)).status == 400
            assert await closed_by_peer(reader)
    finally:
        writer.close()
    oa, _ = fakes
    assert oa.requests == []


async def test_content_length_longer_than_the_compressed_body_is_408_after_the_body_timeout(
        gateway: GatewayProcess, fakes: Fakes) -> None:
    body = compressed("gzip", CHAT, 1)
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    try:
        writer.write(head("POST", CHAT, {"Content-Encoding": "gzip"}, length=len(body) + 1000) + body)
        await writer.drain()
        started = time.monotonic()
        async with asyncio.timeout(BODY_TIMEOUT + 10):
            resp = await read_response(reader)
            assert await closed_by_peer(reader)
        assert resp.status == 408 and error_of(resp, CHAT)["code"] == "request_timeout", resp
        assert time.monotonic() - started >= BODY_TIMEOUT - 0.5
    finally:
        writer.close()
    oa, _ = fakes
    assert oa.requests == []


# ---- many at once: bounded memory, nobody stalled ------------------------------------------

async def test_parallel_bombs_keep_memory_bounded_and_do_not_stall_other_requests(
        tmp_path: Path, upstreams: tuple[FakeOpenAI, FakeAnthropic]) -> None:
    oa, an = upstreams
    oa.reset()
    bombs = {c: compressed(c, CHAT, 300) for c in ("gzip", "deflate", "deflate-raw")}
    with serve(tmp_path, oa, an) as gp:
        for _ in range(20):
            await served(gp)  # warm: imports, pools, the first allocations
        base_rss, _ = memory(gp.proc.pid)
        latencies: list[float] = []
        attacking = True

        async def normal_traffic() -> None:
            while attacking:
                latencies.append(await served(gp))

        async def bomb(i: int) -> int:
            coding = ("gzip", "deflate", "deflate-raw")[i % 3]
            return (await exchange(gp.port, post(CHAT, bombs[coding], encoding_header(coding)))).status

        traffic = asyncio.create_task(normal_traffic())
        for _ in range(3):  # three waves of eight: 7.2 GiB offered after decoding
            assert await asyncio.gather(*(bomb(i) for i in range(8))) == [413] * 8
        attacking = False
        await traffic
        _, peak = memory(gp.proc.pid)
        forwarded = len(oa.requests)
    assert gateway_tracebacks(gp) == []
    # Eight bodies decoded at once hold at most eight times the limit, and a little more.
    assert peak - base_rss < 8 * LIMIT + 96 * MIB, f"RSS grew by {(peak - base_rss) / MIB:.0f} MiB"
    assert latencies and max(latencies) < 2.0, f"a normal request waited {max(latencies):.2f}s during the attack"
    assert forwarded == 20 + len(latencies)  # the good requests only
