"""A lean HTTP/1.1 client for the gateway's one kind of upstream call.

The engine only ever POSTs a JSON body and reads the status, the headers, and then the
whole body or the body as it comes (SSE). aiohttp's ClientSession does far more (request
and response objects rich enough for any use, payload writers, auto headers, cookie and
redirect handling, connector bookkeeping), and on a fast upstream that generality is more
than half of a pass-through proxy's CPU. This client does the one thing on
``asyncio.Protocol`` with ``httptools`` (llhttp, the parser uvicorn uses) and gives the
engine a response with the same small surface it uses of ``aiohttp.ClientResponse``:
``status``, ``headers``, ``await read()``, ``await content.readany()`` (``b""`` at the
end) and ``close()``.

- Keep-alive pool per (scheme, host, port); a connection goes back to the pool only
  once its response was read to the end and the server did not ask to close it.
  Idle connections are closed after ``keepalive_timeout``.
- ``close()`` before the end closes the connection (cancellation, timeout, caller gone).
- TLS with ``ssl.create_default_context()`` (or a given context) and SNI.
- Content-Length, chunked and read-until-close bodies; ``Connection: close`` and
  HTTP/1.0 answers; 1xx informational answers are skipped.
- ``Accept-Encoding: identity``; a gzip/deflate answer sent anyway is decoded.
- Errors are aiohttp's, so the engine maps them as before: connect, reset and protocol
  errors are :class:`UpstreamConnectionError` (an ``aiohttp.ClientConnectionError``), a
  body cut short is :class:`UpstreamPayloadError` (an ``aiohttp.ClientPayloadError``),
  a connect timeout is ``aiohttp.ConnectionTimeoutError`` (also a ``TimeoutError``).
- No proxies: the engine uses the aiohttp session for a ProviderKey with a proxy.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import ssl
import sys
import zlib
from collections import deque
from collections.abc import Mapping
from functools import lru_cache
from urllib.parse import quote, urlsplit

import aiohappyeyeballs
import httptools
from aiohttp.client_exceptions import ClientConnectionError, ClientError, ClientPayloadError, ConnectionTimeoutError
from multidict import CIMultiDict

__all__ = ["LeanClient", "LeanResponse", "UpstreamConnectionError", "UpstreamPayloadError"]

_KEEP_IDLE_PER_HOST = 1024
_HIGH_WATER = 256 * 1024  # buffered body bytes before reading from the socket is paused
_DNS_TTL = 300.0  # seconds a host's addresses are kept, as the aiohttp connector did (ttl_dns_cache)
_IDLE_RACE_SECONDS = 0.5  # a keep-alive race shows at once; later failures are not resent
_HAPPY_EYEBALLS_DELAY = 0.25  # RFC 8305, aiohttp's default


class UpstreamConnectionError(ClientConnectionError):
    """Could not connect, or the connection broke or spoke bad HTTP before the body."""


class UpstreamPayloadError(ClientPayloadError):
    """The response body was cut short (or could not be parsed or decoded)."""


_Key = tuple[str, str, int]
_AddrInfo = tuple[int, int, int, str, tuple]
_PATH_SAFE = "/:@!$&'()*+,;=-._~%"
_QUERY_SAFE = _PATH_SAFE + "?"


@lru_cache(maxsize=1024)
def _target(url: str) -> tuple[_Key, bytes]:
    """(pool key, the request line and Host header) of ``url``; URLs are few, so cached."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise UpstreamConnectionError(f"unsupported upstream URL: {url!r}")
    host = parts.hostname
    if not host.isascii():
        host = host.encode("idna").decode("ascii")
    default = 443 if scheme == "https" else 80
    port = parts.port or default
    path = quote(parts.path or "/", safe=_PATH_SAFE)
    if parts.query:
        path += "?" + quote(parts.query, safe=_QUERY_SAFE)
    host_header = f"[{host}]" if ":" in host else host
    if port != default:
        host_header += f":{port}"
    return (scheme, host, port), f"POST {path} HTTP/1.1\r\nHost: {host_header}\r\n".encode("latin-1")


_HEAD_TAIL = b"Accept-Encoding: identity\r\n\r\n"


def encode_head(url: str, headers: Mapping[str, str], content_length: int) -> tuple[_Key, bytes]:
    """The request head for a POST of ``content_length`` bytes to ``url`` with ``headers``."""
    key, start = _target(url)
    lines = [f"{k}: {v}\r\n" for k, v in headers.items()]
    text = "".join(lines)
    if text.count("\n") != len(lines) or text.count("\r") != len(lines):
        raise ValueError("line break in an HTTP request header")  # no header injection
    lower = {k.lower() for k in headers}
    if "content-length" not in lower:
        text += f"Content-Length: {content_length}\r\n"
    tail = b"\r\n" if "accept-encoding" in lower else _HEAD_TAIL
    return key, start + text.encode("utf-8") + tail


class LeanResponse:
    """One upstream response: the surface of ``aiohttp.ClientResponse`` the engine uses."""

    __slots__ = ("_chunks", "_conn", "_decoder", "_done", "_error", "_pausable", "_size", "_until_eof", "_waiter",
                 "content", "headers", "status")

    def __init__(self) -> None:
        self.status = 0
        self.headers: CIMultiDict[str] = CIMultiDict()
        self.content = self  # resp.content.readany(), as with aiohttp
        self._chunks: list[bytes] = []
        self._size = 0
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._conn: _Connection | None = None
        self._until_eof = False
        self._pausable = True
        self._decoder: zlib._Decompress | None = None

    # -- fed by the connection --------------------------------------------------------
    def _feed(self, data: bytes) -> None:
        if self._decoder is not None:
            try:
                data = self._decoder.decompress(data)
            except zlib.error as e:
                self._fail(UpstreamPayloadError(f"could not decode the response body: {e}"))
                return
            if not data:
                return
        self._chunks.append(data)
        self._size += len(data)
        self._wake()
        if self._size > _HIGH_WATER and self._pausable and self._conn is not None:
            self._conn.pause()

    def _finish(self) -> None:
        if self._error is not None:
            return  # failed already (an undecodable body): the end of the bytes does not undo that
        if self._decoder is not None:
            tail = self._decoder.flush()
            if tail:
                self._chunks.append(tail)
        self._done = True
        self._conn = None
        self._wake()

    def _fail(self, error: BaseException) -> None:
        if self._done or self._error is not None:
            return
        self._error = error
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None:
            self._waiter = None
            if not w.done():
                w.set_result(None)

    async def _wait(self) -> None:
        w = self._waiter = asyncio.get_running_loop().create_future()
        conn = self._conn
        if conn is not None:
            conn.resume()
        await w

    # -- the engine's surface ---------------------------------------------------------
    async def read(self) -> bytes:
        """The whole (rest of the) body."""
        self._pausable = False
        while not self._done:
            if self._error is not None:
                raise self._error
            await self._wait()
        data = b"".join(self._chunks)
        self._chunks = []
        self._size = 0
        return data

    async def readany(self) -> bytes:
        """What has arrived (waiting for something), or ``b""`` at the end of the body."""
        while True:
            chunks = self._chunks
            if chunks:
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                self._chunks = []
                self._size = 0
                return data
            if self._done:
                return b""
            if self._error is not None:
                raise self._error
            await self._wait()

    def close(self) -> None:
        """Release the response; a connection whose response is unfinished is closed."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            if not self._done and self._error is None:
                self._error = UpstreamPayloadError("response closed")
        w, self._waiter = self._waiter, None
        if w is not None and not w.done():
            w.cancel()


class _Connection(asyncio.Protocol):
    """One keep-alive connection; the httptools parser calls back into it."""

    def __init__(self, pool: LeanClient, key: _Key) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.resp: LeanResponse | None = None
        self.headers_waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.paused = False
        self.keep_alive = False
        self.received = False  # any byte of the current response
        self.informational = False
        self.idle_since = 0.0
        self._raw_headers: list[tuple[str, str]] = []

    # -- asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.resp is None:
            self.close()  # bytes nobody asked for: the connection is not in a known state
            return
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._broken(UpstreamConnectionError("the upstream switched protocols"))
        except httptools.HttpParserError as e:
            self._broken(UpstreamConnectionError(f"bad HTTP response: {e}"))

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool._busy.discard(self)
        resp = self.resp
        self.resp = None
        if resp is None:
            return
        hw = self.headers_waiter
        if hw is not None and not hw.done():
            self.headers_waiter = None
            err = UpstreamConnectionError(f"the upstream closed the connection{_why(exc)}")
            err.__cause__ = exc
            hw.set_exception(err)
        elif resp._until_eof and exc is None:
            resp._finish()  # a body without length ends with the connection
        else:
            resp._fail(UpstreamPayloadError(f"the response body was cut short{_why(exc)}"))

    # -- httptools callbacks ------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._raw_headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw_headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            self.informational = True  # 100 Continue, 103 Early Hints: the answer follows
            return
        resp = self.resp
        assert resp is not None
        resp.status = status
        headers = resp.headers = CIMultiDict(self._raw_headers)
        self.keep_alive = self.parser.should_keep_alive()
        te = headers.get("transfer-encoding")
        resp._until_eof = (status not in (204, 304) and "content-length" not in headers
                           and not (te and "chunked" in te.lower()))
        ce = headers.get("content-encoding")
        if ce:
            ce = ce.strip().lower()
            if ce in ("gzip", "x-gzip", "deflate"):
                resp._decoder = zlib.decompressobj(47)  # zlib or gzip header, detected
        resp._conn = self
        hw = self.headers_waiter
        self.headers_waiter = None
        if hw is not None and not hw.done():
            hw.set_result(None)

    def on_body(self, body: bytes) -> None:
        resp = self.resp
        if resp is not None and not self.informational:
            resp._feed(body)

    def on_message_complete(self) -> None:
        if self.informational:
            self.informational = False
            return
        resp = self.resp
        self.resp = None
        if resp is not None:
            resp._finish()
        if self.keep_alive and not self.closed:
            self.resume()
            self.pool._release(self)
        else:
            self.close()

    # -- helpers -----------------------------------------------------------------------------
    def _broken(self, error: ClientError) -> None:
        resp = self.resp
        self.resp = None
        hw = self.headers_waiter
        self.headers_waiter = None
        self.close()
        if hw is not None and not hw.done():
            hw.set_exception(error)
        elif resp is not None:
            resp._fail(UpstreamPayloadError(str(error)))

    def pause(self) -> None:
        if not self.paused and self.transport is not None and not self.closed:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()


def _why(exc: BaseException | None) -> str:
    return f": {type(exc).__name__}: {exc}" if exc is not None else ""


def shared_verified_context() -> ssl.SSLContext:
    """aiohttp's verifying context when its client was imported (it builds one then, with the
    whole CA bundle read: a second would read it again), else :func:`verified_context`."""
    connector = sys.modules.get("aiohttp.connector")  # not imported for this: see aiohttp_client_deferred
    ctx = getattr(connector, "_SSL_CONTEXT_VERIFIED", None)  # private: checked, with a fallback
    if isinstance(ctx, ssl.SSLContext) and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname:
        return ctx
    return verified_context()


def verified_context() -> ssl.SSLContext:
    """A verifying TLS client context (hostname checked, ALPN http/1.1) on the system's CAs.

    From the hashed CA directory (``/etc/ssl/certs``, or SSL_CERT_DIR) when there is one: OpenSSL
    then reads a root as a chain needs it, where the bundle is parsed whole up front (1.3 MiB for
    Debian's 144 roots, in every pod). The bundle when SSL_CERT_FILE names one, or without a
    hashed directory.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname, the secure defaults
    paths = ssl.get_default_verify_paths()
    if paths.capath and not os.environ.get(paths.openssl_cafile_env) and _hashed_ca_dir(paths.capath):
        ctx.load_verify_locations(capath=paths.capath)
    else:
        ctx.load_default_certs()
    ctx.set_alpn_protocols(("http/1.1",))
    return ctx


def _hashed_ca_dir(path: str) -> bool:
    """Whether ``path`` holds certificates under OpenSSL's subject-hash names (``1a2b3c4d.0``)."""
    try:
        return any(_HASHED.match(name) for name in os.listdir(path))
    except OSError:
        return False


_HASHED = re.compile(r"[0-9a-f]{8}\.[0-9]+")


class LeanClient:
    """The connection pool and ``post``; one per gateway, like the aiohttp session."""

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None, keepalive_timeout: float = 60.0,
                 default_connect_timeout: float = 30.0) -> None:
        self._ssl = ssl_context
        self.keepalive_timeout = keepalive_timeout
        self.default_connect_timeout = default_connect_timeout
        self._idle: dict[_Key, deque[_Connection]] = {}
        self._busy: set[_Connection] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False
        self._dns: dict[tuple[str, int], tuple[float, list[_AddrInfo]]] = {}
        self.connections_made = 0  # for tests and curiosity

    @property
    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = shared_verified_context()
        return self._ssl

    async def post(self, url: str, body: bytes, headers: Mapping[str, str],
                   connect_timeout: float | None = None) -> LeanResponse:
        """POST ``body`` to ``url``; returns once the status line and headers are in."""
        if self._closed:
            raise UpstreamConnectionError("the upstream client is closed")
        key, head = encode_head(url, headers, len(body))
        conn = self._take(key)
        if conn is not None:
            loop = asyncio.get_running_loop()
            sent = loop.time()
            try:
                return await self._send(conn, head, body)
            except UpstreamConnectionError:
                if conn.received or loop.time() - sent > _IDLE_RACE_SECONDS:
                    raise
                # A reused connection the server closed while idle (a keep-alive race): it
                # failed at once and answered nothing, so try once more on a new one. A
                # failure later than that may follow real work upstream: the engine decides.
        conn = await self._connect(key, connect_timeout or self.default_connect_timeout)
        return await self._send(conn, head, body)

    async def _send(self, conn: _Connection, head: bytes, body: bytes) -> LeanResponse:
        resp = LeanResponse()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        conn.resp = resp
        conn.headers_waiter = waiter
        conn.received = False
        self._busy.add(conn)
        transport = conn.transport
        assert transport is not None
        try:
            if body and len(body) < 16384:
                transport.write(head + body)
            else:
                transport.write(head)
                if body:
                    transport.write(body)
            await waiter
        except BaseException:
            # Cancelled (timeout, caller gone) or failed before the headers: the connection
            # is in an unknown state.
            conn.resp = None
            conn.headers_waiter = None
            conn.close()
            self._busy.discard(conn)
            raise
        return resp

    def _take(self, key: _Key) -> _Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        now = asyncio.get_running_loop().time()
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to have timed out
            if conn.closed or conn.transport is None or conn.transport.is_closing():
                continue
            if now - conn.idle_since > self.keepalive_timeout:
                conn.close()
                continue
            return conn
        return None

    async def _connect(self, key: _Key, within: float) -> _Connection:
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        conn = _Connection(self, key)
        try:
            async with asyncio.timeout(within):
                # Resolved here (cached) and connected with Happy Eyeballs: uvloop's
                # create_connection would resolve every time and try addresses one by one.
                sock = await aiohappyeyeballs.start_connection(
                    await self._resolve(host, port), happy_eyeballs_delay=_HAPPY_EYEBALLS_DELAY, interleave=1)
                try:
                    if scheme == "https":
                        await loop.create_connection(lambda: conn, sock=sock, ssl=self.ssl_context,
                                                     server_hostname=host)
                    else:
                        await loop.create_connection(lambda: conn, sock=sock)
                except BaseException:
                    sock.close()
                    raise
        except TimeoutError:
            conn.close()
            raise ConnectionTimeoutError(f"connection to {host}:{port} timed out after {within:g}s") \
                from None
        except OSError as e:  # refused, unreachable, DNS (socket.gaierror), TLS (ssl.SSLError)
            conn.close()
            self._dns.pop((host, port), None)  # the host may have moved: ask again next time
            raise UpstreamConnectionError(f"cannot connect to {host}:{port}: {type(e).__name__}: {e}") from e
        self.connections_made += 1
        return conn

    async def _resolve(self, host: str, port: int) -> list[_AddrInfo]:
        loop = asyncio.get_running_loop()
        now = loop.time()
        hit = self._dns.get((host, port))
        if hit is not None and hit[0] > now:
            return hit[1]
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        if not infos:
            raise OSError(f"no address for {host}")
        addrs: list[_AddrInfo] = [(int(f), int(t), p, c, a) for f, t, p, c, a in infos]
        if len(self._dns) > 1024:
            self._dns.clear()
        self._dns[(host, port)] = (now + _DNS_TTL, addrs)
        return addrs

    def _release(self, conn: _Connection) -> None:
        self._busy.discard(conn)
        if self._closed:
            conn.close()
            return
        idle = self._idle.get(conn.key)
        if idle is None:
            idle = self._idle[conn.key] = deque()
        if len(idle) >= _KEEP_IDLE_PER_HOST:
            conn.close()
            return
        loop = asyncio.get_running_loop()
        conn.idle_since = loop.time()
        idle.append(conn)
        if self._sweeper is None:
            self._sweeper = loop.call_later(self.keepalive_timeout, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        now = asyncio.get_running_loop().time()
        left = False
        for key, idle in list(self._idle.items()):
            keep = deque(c for c in idle if not c.closed and now - c.idle_since <= self.keepalive_timeout)
            for c in idle:
                if c not in keep:
                    c.close()
            if keep:
                self._idle[key] = keep
                left = True
            else:
                del self._idle[key]
        if left:
            self._sweeper = asyncio.get_running_loop().call_later(self.keepalive_timeout / 2, self._sweep)

    @property
    def idle_connections(self) -> int:
        return sum(1 for idle in self._idle.values() for c in idle if not c.closed)

    async def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for idle in self._idle.values():
            for c in idle:
                c.close()
        self._idle.clear()
        for c in list(self._busy):
            c.close()
        self._busy.clear()
        await asyncio.sleep(0)  # let the transports' connection_lost run
