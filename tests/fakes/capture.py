"""A TCP relay in front of a fake upstream that records every HTTP request line as sent.

The fakes see requests after aiohttp's server has parsed (and normalised) them; an
attack on the request target (``..`` segments, ``?`` and ``#``, percent-escapes) must be
judged on the bytes the gateway put on the wire. The relay forwards both directions
unchanged and parses the client side with httptools (llhttp, as in Node), so it sees
each request of a keep-alive connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Self

import httptools


class _Requests:
    """httptools callbacks: one request line per message."""

    def __init__(self, recorder: RequestLineRecorder) -> None:
        self.recorder = recorder
        self.url = b""
        self.parser: httptools.HttpRequestParser | None = None

    def on_message_begin(self) -> None:
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url  # may come in pieces

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        version = self.parser.get_http_version()
        self.recorder.lines.append(b"%s %s HTTP/%s" % (self.parser.get_method(), self.url, version.encode()))


class RequestLineRecorder:
    """``async with RequestLineRecorder(port) as rec``: point the gateway at ``rec.port``."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.lines: list[bytes] = []  # b"POST /v1beta/models/x:generateContent HTTP/1.1", in arrival order
        self.unparsable: list[bytes] = []  # client bytes llhttp refused (a broken request line, say)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def targets(self) -> list[str]:
        """The request targets (path and query, as sent)."""
        return [line.split(b" ")[1].decode("latin-1") for line in self.lines]

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        proto = _Requests(self)
        parser = httptools.HttpRequestParser(proto)
        proto.parser = parser

        def watch(data: bytes) -> None:
            nonlocal parser
            try:
                parser.feed_data(data)
            except httptools.HttpParserError:
                self.unparsable.append(data)
                parser = httptools.HttpRequestParser(proto)  # judge the next bytes afresh
                proto.parser = parser

        try:
            await asyncio.gather(self._pump(reader, up_writer, watch), self._pump(up_reader, writer, None))
        finally:
            self._tasks.discard(task)
            for w in (writer, up_writer):
                w.close()

    @staticmethod
    async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                    watch: Callable[[bytes], None] | None) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await src.read(65536):
                if watch is not None:
                    watch(data)
                dst.write(data)
                await dst.drain()
        with contextlib.suppress(OSError):
            if dst.can_write_eof():
                dst.write_eof()
