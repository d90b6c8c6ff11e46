"""The lean upstream client (modelroute_sidecar.upstream) on its own.

Against the fake providers for JSON and SSE, and against a scripted raw HTTP server for
the wire cases (keep-alive, Connection: close, HTTP/1.0, chunked, cut bodies). The
gateway suites run with it too: ``MODELROUTE_UPSTREAM_CLIENT=lean python -m pytest tests/gateway``.
"""

from __future__ import annotations

import asyncio
import gzip
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web

from bench.tls_footprint import certificate as self_signed
from bench.tls_footprint import subject_hash
from modelroute_sidecar.upstream import LeanClient, UpstreamConnectionError, UpstreamPayloadError
from tests.fakes.base import closed_port, wait_until
from tests.fakes.openai import FakeOpenAI

AUTH = {"authorization": "Bearer sk-test", "content-type": "application/json"}


def chat(stream: bool = False, text: str = "hello") -> bytes:
    body: dict[str, object] = {"model": "gpt-4o", "messages": [{"role": "user", "content": text}]}
    if stream:
        body["stream"] = True
    return orjson.dumps(body)


@pytest.fixture
async def client() -> AsyncIterator[LeanClient]:
    c = LeanClient()
    yield c
    await c.close()


@pytest.fixture
async def openai_up() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as up:
        yield up


# ---- against the fake providers ------------------------------------------------------------


async def test_json_completion(client: LeanClient, openai_up: FakeOpenAI) -> None:
    resp = await client.post(openai_up.base_url + "/chat/completions", chat(), AUTH, 2)
    try:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("application/json")
        assert resp.headers["content-type"] == resp.headers["CONTENT-TYPE"]
        body = orjson.loads(await resp.read())
    finally:
        resp.close()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"]
    rec = openai_up.last_request
    assert rec.body["model"] == "gpt-4o"
    assert rec.headers["authorization"] == "Bearer sk-test"
    assert rec.headers["accept-encoding"] == "identity"
    assert rec.headers["host"] == f"127.0.0.1:{openai_up.port}"


async def test_error_status_and_body(client: LeanClient, openai_up: FakeOpenAI) -> None:
    openai_up.faults.fail_next(1, 429, retry_after=2)
    resp = await client.post(openai_up.base_url + "/chat/completions", chat(), AUTH)
    assert resp.status == 429
    assert resp.headers["retry-after"] == "2"
    assert orjson.loads(await resp.read())["error"]
    resp.close()
    resp = await client.post(openai_up.base_url + "/chat/completions", chat(), {"content-type": "application/json"})
    assert resp.status == 401
    await resp.read()
    assert client.connections_made == 1  # error answers keep the connection too


async def test_sse_stream(client: LeanClient, openai_up: FakeOpenAI) -> None:
    resp = await client.post(openai_up.base_url + "/chat/completions", chat(stream=True), AUTH)
    assert resp.status == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    data = b""
    while chunk := await resp.content.readany():
        data += chunk
    assert await resp.content.readany() == b""  # and stays at the end
    resp.close()
    assert data.rstrip().endswith(b"data: [DONE]")
    assert data.count(b"data: ") > 2
    assert openai_up.streams_completed == 1
    # The stream was read to its end: the connection is reused.
    resp = await client.post(openai_up.base_url + "/chat/completions", chat(), AUTH)
    await resp.read()
    assert client.connections_made == 1


async def test_keep_alive_reuses_one_connection(client: LeanClient, openai_up: FakeOpenAI) -> None:
    for i in range(5):
        resp = await client.post(openai_up.base_url + "/chat/completions", chat(text=f"n{i}"), AUTH)
        assert resp.status == 200
        await resp.read()
        resp.close()
    assert client.connections_made == 1
    assert client.idle_connections == 1
    assert len(openai_up.requests) == 5


async def test_concurrent_requests_get_their_own_connections(client: LeanClient, openai_up: FakeOpenAI) -> None:
    async def one(i: int) -> str:
        resp = await client.post(openai_up.base_url + "/chat/completions", chat(text=f"q{i}"), AUTH)
        try:
            return str(orjson.loads(await resp.read())["choices"][0]["message"]["content"])
        finally:
            resp.close()

    answers = await asyncio.gather(*(one(i) for i in range(8)))
    assert len(answers) == 8
    assert 1 <= client.connections_made <= 8
    made = client.connections_made
    await asyncio.gather(*(one(i) for i in range(made)))
    assert client.connections_made == made  # all from the pool


async def test_cancellation_mid_stream_closes_the_connection(client: LeanClient, openai_up: FakeOpenAI) -> None:
    openai_up.faults.slow_stream(0.2)
    resp = await client.post(openai_up.base_url + "/chat/completions", chat(stream=True), AUTH)
    assert await resp.content.readany()
    task = asyncio.ensure_future(resp.content.readany())
    await asyncio.sleep(0)  # one loop pass: the read is now waiting on the slow stream
    task.cancel()
    resp.close()  # what the engine's `finally` does
    await wait_until(lambda: openai_up.cancelled == 1)
    assert openai_up.streams_completed == 0
    assert client.idle_connections == 0
    openai_up.faults.clear()
    resp = await client.post(openai_up.base_url + "/chat/completions", chat(), AUTH)
    await resp.read()
    assert client.connections_made == 2  # the closed one was not reused


async def test_timeout_waiting_for_headers_closes_the_connection(client: LeanClient,
                                                                  openai_up: FakeOpenAI) -> None:
    openai_up.faults.hang()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await client.post(openai_up.base_url + "/chat/completions", chat(), AUTH)
    await wait_until(lambda: openai_up.cancelled == 1)
    assert client.idle_connections == 0


async def test_stream_dying_mid_way_is_a_payload_error(client: LeanClient, openai_up: FakeOpenAI) -> None:
    openai_up.faults.die_mid_stream(after_chunks=2)
    resp = await client.post(openai_up.base_url + "/chat/completions", chat(stream=True), AUTH)
    with pytest.raises(aiohttp.ClientPayloadError):
        while await resp.content.readany():
            pass
    resp.close()


async def test_connection_refused(client: LeanClient) -> None:
    with pytest.raises(aiohttp.ClientConnectionError) as info:
        await client.post(f"http://127.0.0.1:{closed_port()}/v1/chat/completions", chat(), AUTH, 2)
    assert isinstance(info.value, UpstreamConnectionError)


async def test_dropped_request_is_a_connection_error(client: LeanClient, openai_up: FakeOpenAI) -> None:
    openai_up.faults.drop_next(1)
    with pytest.raises(aiohttp.ClientConnectionError):  # a fresh connection: no second try
        await client.post(openai_up.base_url + "/chat/completions", chat(), AUTH)
    resp = await client.post(openai_up.base_url + "/chat/completions", chat(), AUTH)
    await resp.read()
    assert client.connections_made == 2
    # Dropped on a reused connection with nothing answered: once more on a new one.
    openai_up.faults.drop_next(2)
    with pytest.raises(aiohttp.ClientConnectionError):
        await client.post(openai_up.base_url + "/chat/completions", chat(), AUTH)
    assert client.connections_made == 3
    assert len(openai_up.requests) == 4


async def test_header_injection_is_refused(client: LeanClient, openai_up: FakeOpenAI) -> None:
    with pytest.raises(ValueError):
        await client.post(openai_up.base_url + "/chat/completions", chat(), {**AUTH, "x-a": "b\r\nx-evil: 1"})


# ---- a scripted raw HTTP server for the wire cases --------------------------------------------------


class Raw:
    """Answers each request with the next scripted reply (bytes, or a callable of the transport)."""

    def __init__(self, replies: list[bytes | Callable[[asyncio.Transport], None]]) -> None:
        self.replies = list(replies)
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> Raw:
        raw = self

        class Proto(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                raw.connections += 1
                self.t: asyncio.Transport = transport  # type: ignore[assignment]
                self.buf = b""

            def data_received(self, data: bytes) -> None:
                self.buf += data
                while b"\r\n\r\n" in self.buf:
                    head, _, rest = self.buf.partition(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n")[1:]:
                        name, _, value = line.partition(b":")
                        if name.strip().lower() == b"content-length":
                            length = int(value)
                    if len(rest) < length:
                        return
                    raw.requests.append(head + b"\r\n\r\n" + rest[:length])
                    self.buf = rest[length:]
                    reply = raw.replies.pop(0)
                    if callable(reply):
                        reply(self.t)
                    else:
                        self.t.write(reply)

        self.server = await asyncio.get_running_loop().create_server(Proto, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/x?a=b"


def ok(body: bytes, *extra: str) -> bytes:
    head = "".join(f"{h}\r\n" for h in extra)
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{head}\r\n".encode() + body


def chunked(*parts: bytes) -> bytes:
    out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n"
    for p in parts:
        out += f"{len(p):x}\r\n".encode() + p + b"\r\n"
    return out + b"0\r\n\r\n"


async def test_request_head_on_the_wire(client: LeanClient) -> None:
    async with Raw([ok(b"{}")]) as srv:
        resp = await client.post(srv.url, b'{"a":1}', {"Content-Type": "application/json", "X-Key": "k"})
        assert await resp.read() == b"{}"
    head, _, body = srv.requests[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/x?a=b HTTP/1.1"
    assert f"Host: 127.0.0.1:{srv.port}".encode() in lines
    assert b"Content-Length: 7" in lines
    assert b"Accept-Encoding: identity" in lines
    assert b"X-Key: k" in lines
    assert body == b'{"a":1}'


async def test_content_length_and_chunked_bodies_keep_alive(client: LeanClient) -> None:
    async with Raw([ok(b'{"n":1}'), chunked(b"data: 1\n\n", b"data: 2\n\n"), ok(b"")]) as srv:
        resp = await client.post(srv.url, b"{}", {})
        assert (resp.status, await resp.read()) == (200, b'{"n":1}')
        resp = await client.post(srv.url, b"{}", {})
        got = b""
        while chunk := await resp.content.readany():
            got += chunk
        assert got == b"data: 1\n\ndata: 2\n\n"
        resp = await client.post(srv.url, b"{}", {})
        assert await resp.read() == b""
    assert srv.connections == 1


async def test_connection_close_is_honoured(client: LeanClient) -> None:
    async with Raw([ok(b"a", "Connection: close"), ok(b"b")]) as srv:
        resp = await client.post(srv.url, b"{}", {})
        assert await resp.read() == b"a"
        assert client.idle_connections == 0
        resp = await client.post(srv.url, b"{}", {})
        assert await resp.read() == b"b"
    assert srv.connections == 2


async def test_http_1_0_and_body_until_close(client: LeanClient) -> None:
    def until_close(t: asyncio.Transport) -> None:
        t.write(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"eof\":")
        t.write(b"true}")
        t.close()

    async with Raw([ok(b"x").replace(b"HTTP/1.1", b"HTTP/1.0"), until_close]) as srv:
        resp = await client.post(srv.url, b"{}", {})
        assert await resp.read() == b"x"
        resp = await client.post(srv.url, b"{}", {})
        assert await resp.read() == b'{"eof":true}'
        assert client.idle_connections == 0
    assert srv.connections == 2


async def test_body_cut_short_is_a_payload_error(client: LeanClient) -> None:
    def cut(t: asyncio.Transport) -> None:
        t.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"partial\":")
        t.close()

    def cut_chunked(t: asyncio.Transport) -> None:
        t.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\ndata: 1\n\n\r\n")
        t.close()

    async with Raw([cut, cut_chunked]) as srv:
        resp = await client.post(srv.url, b"{}", {})
        with pytest.raises(aiohttp.ClientPayloadError) as info:
            await resp.read()
        assert isinstance(info.value, UpstreamPayloadError)
        resp.close()
        resp = await client.post(srv.url, b"{}", {})
        assert await resp.content.readany() == b"data: 1\n\n"
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.content.readany()


async def test_closed_before_the_headers_is_a_connection_error(client: LeanClient) -> None:
    async with Raw([lambda t: t.close(), lambda t: t.close()]) as srv:
        with pytest.raises(aiohttp.ClientConnectionError):
            await client.post(srv.url, b"{}", {})


async def test_garbage_is_a_connection_error(client: LeanClient) -> None:
    async with Raw([b"SMTP ready\r\n\r\n"]) as srv:
        with pytest.raises(aiohttp.ClientConnectionError):
            await client.post(srv.url, b"{}", {})


async def test_stale_keep_alive_connection_is_retried_once(client: LeanClient) -> None:
    # The server answers, keeps the connection, then closes it on the next request
    # without a word (a keep-alive timeout race): the request goes out again on a new one.
    async with Raw([ok(b"1"), lambda t: t.close(), ok(b"2")]) as srv:
        resp = await client.post(srv.url, b"{}", {})
        assert await resp.read() == b"1"
        resp = await client.post(srv.url, b"{}", {})
        assert await resp.read() == b"2"
    assert srv.connections == 2


async def test_informational_answers_are_skipped(client: LeanClient) -> None:
    reply = b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + ok(b"done", "X-Final: yes")
    async with Raw([reply]) as srv:
        resp = await client.post(srv.url, b"{}", {})
        assert resp.status == 200
        assert resp.headers["x-final"] == "yes"
        assert await resp.read() == b"done"


async def test_gzip_sent_anyway_is_decoded(client: LeanClient) -> None:
    async with Raw([ok(gzip.compress(b'{"z":1}'), "Content-Encoding: gzip")]) as srv:
        resp = await client.post(srv.url, b"{}", {})
        assert await resp.read() == b'{"z":1}'


async def test_large_streamed_body_with_back_pressure(client: LeanClient) -> None:
    parts = [bytes([65 + i % 26]) * 65536 for i in range(20)]
    async with Raw([chunked(*parts)]) as srv:
        resp = await client.post(srv.url, b"{}", {})
        got = []
        while chunk := await resp.content.readany():
            got.append(chunk)
            await asyncio.sleep(0)
        assert b"".join(got) == b"".join(parts)
    assert srv.connections == 1


async def test_undecodable_body_is_a_payload_error(client: LeanClient) -> None:
    async with Raw([ok(b"not gzip at all", "Content-Encoding: gzip")]) as srv:
        resp = await client.post(srv.url, b"{}", {})
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
        resp.close()
        assert client.idle_connections == 0


# ---- TLS ----------------------------------------------------------------------------------------


async def test_https(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    async def echo(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if request.query.get("stream"):
            resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
            await resp.prepare(request)
            for i in range(3):
                await resp.write(f"data: {i}\n\n".encode())
            await resp.write_eof()
            return resp
        return web.json_response({"got": body.decode(), "host": request.host})

    app = web.Application()
    app.router.add_post("/echo", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    port = runner.addresses[0][1]
    trusting = ssl.create_default_context(cafile=str(cert))
    client = LeanClient(ssl_context=trusting)
    untrusting = LeanClient()
    try:
        for host in ("127.0.0.1", "localhost"):
            resp = await client.post(f"https://{host}:{port}/echo", b"hi", {})
            assert resp.status == 200
            assert orjson.loads(await resp.read()) == {"got": "hi", "host": f"{host}:{port}"}
        resp = await client.post(f"https://127.0.0.1:{port}/echo?stream=1", b"", {})
        data = b""
        while chunk := await resp.content.readany():
            data += chunk
        assert data == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
        resp = await client.post(f"https://127.0.0.1:{port}/echo", b"again", {})
        await resp.read()
        assert client.connections_made == 2  # one per host name, then reused
        with pytest.raises(aiohttp.ClientConnectionError):  # not a trusted certificate
            await untrusting.post(f"https://127.0.0.1:{port}/echo", b"hi", {})
    finally:
        await client.close()
        await untrusting.close()
        await runner.cleanup()


# ---- in the gateway ------------------------------------------------------------------------------


async def test_gateway_with_the_lean_client_and_a_proxied_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """A ProviderKey behind a proxy goes through the aiohttp session; the others through the lean client."""
    from tests.gateway.harness import FAST, model_route, provider_key, running_gateway, user

    seen: list[str] = []

    async def proxy(request: web.Request) -> web.StreamResponse:
        seen.append(str(request.url))
        async with aiohttp.ClientSession() as s, s.post(str(request.url), data=await request.read(),
                                                        headers={"authorization": request.headers["authorization"],
                                                                 "content-type": "application/json"}) as r:
            return web.Response(body=await r.read(), status=r.status, content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    proxy_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with FakeOpenAI() as direct, FakeOpenAI() as behind:
            monkeypatch.setenv("HTTP_PROXY", proxy_url)
            monkeypatch.setenv("NO_PROXY", "127.0.0.1")
            behind_url = f"http://localhost:{behind.port}/v1"  # not 127.0.0.1: through the proxy
            docs = [*provider_key("direct", "openai-compatible", direct.base_url),
                    *provider_key("behind", "openai-compatible", behind_url),
                    model_route("a", "direct", **FAST), model_route("b", "behind", **FAST)]
            from modelroute_sidecar.app import Gateway

            monkeypatch.setattr("tests.gateway.harness.Gateway",
                                lambda *a, **kw: Gateway(*a, **{**kw, "upstream_client": "lean"}))
            async with running_gateway(docs) as gw:
                assert gw.gateway.lean is not None
                c = gw.client()
                for model in ("a", "b", "a"):
                    r = await c.chat.completions.create(model=model, messages=user("hi"))
                    assert r.choices[0].message.content
                assert gw.gateway.lean.connections_made == 1
                assert len(direct.requests) == 2 and len(behind.requests) == 1
                assert seen == [behind_url + "/chat/completions"]
    finally:
        await runner.cleanup()


def test_gateway_rejects_an_unknown_client() -> None:
    from modelroute_sidecar.app import Gateway

    with pytest.raises(ValueError):
        Gateway(upstream_client="curl")


def test_the_default_tls_context_is_aiohttps_verifying_one() -> None:
    # aiohttp loaded the system CA store for its own context at import; building another would
    # load it again (~0.8 MiB in every pod). The shared one must still verify.
    ctx = LeanClient().ssl_context
    assert ctx is aiohttp.connector._SSL_CONTEXT_VERIFIED
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.cert_store_stats()["x509_ca"] > 0


async def test_the_system_context_reads_cas_from_the_hashed_directory_as_needed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Where aiohttp's client is not imported (a pod), the lean client builds its own context: from
    # the CA directory, one root at a time, not the whole bundle parsed up front.
    from modelroute_sidecar.upstream import verified_context

    cert, key = self_signed(tmp_path)
    cas = tmp_path / "cas"
    cas.mkdir()
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.setenv("SSL_CERT_DIR", str(cas))
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/echo", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx).start()
    url = f"https://localhost:{runner.addresses[0][1]}/echo"
    try:
        untrusting = LeanClient(ssl_context=verified_context())  # the directory has no CA yet
        with pytest.raises(aiohttp.ClientConnectionError):
            await untrusting.post(url, b"", {})
        await untrusting.close()

        (cas / f"{subject_hash('localhost')}.0").write_bytes(cert.read_bytes())
        ctx = verified_context()
        assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
        assert ctx.cert_store_stats()["x509_ca"] == 0  # nothing read up front
        client = LeanClient(ssl_context=ctx)
        resp = await client.post(url, b"", {})
        assert resp.status == 200 and orjson.loads(await resp.read()) == {"ok": True}
        assert ctx.cert_store_stats()["x509_ca"] == 1  # the one root the chain needed
        await client.close()

        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # a bundle named explicitly is read whole
        assert verified_context().cert_store_stats()["x509_ca"] == 1
    finally:
        await runner.cleanup()
