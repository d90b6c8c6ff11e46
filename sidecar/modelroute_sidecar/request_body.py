"""Reading a caller's request body: size limit, content coding, and a deadline.

aiohttp's own decompression is off for the API (see ``api_runner``): it inflated a
39 KiB gzip body to 40 MiB before ``maxBodyBytes`` could judge it. Here the limit holds
for the bytes on the wire and for the decoded bytes alike, and decoding runs in bounded
slices that yield to the event loop, so a compression bomb costs at most ``limit`` bytes
of memory and never stalls other requests. Only ``gzip`` and ``deflate`` are decoded
(stdlib zlib; no SDK the gateway serves compresses its requests otherwise); any other
coding, or a stack of them, is a 415 naming what is accepted.
"""

from __future__ import annotations

import asyncio
import zlib

from aiohttp import web

from .errors import GatewayError, payload_too_large

ACCEPTED_ENCODINGS = "gzip, deflate"
# Decoded bytes produced per step before the loop gets a turn: ~1 ms of zlib work.
_SLICE = 256 * 1024


def _codings(request: web.Request) -> list[str]:
    """The request's content codings, outermost last, without ``identity``."""
    out: list[str] = []
    for value in request.headers.getall("Content-Encoding", ()):
        out.extend(c.strip().lower() for c in value.split(",") if c.strip())
    return [c for c in out if c != "identity"]


def _unsupported(codings: list[str]) -> GatewayError:
    what = ", ".join(codings)
    return GatewayError(415, f"Unsupported Content-Encoding '{what}': the gateway accepts a body that is "
                             f"uncompressed or compressed once with {ACCEPTED_ENCODINGS}",
                        code="unsupported_content_encoding", headers={"Accept-Encoding": ACCEPTED_ENCODINGS})


def _not_decodable(coding: str, why: str) -> GatewayError:
    return GatewayError(400, f"The request body is not valid {coding} data: {why}", code="invalid_content_encoding")


class _Inflater:
    """Incremental gzip/deflate decoding with a cap on the decoded size."""

    def __init__(self, coding: str, limit: int) -> None:
        self.coding = coding
        self.limit = limit
        self.size = 0
        self.head = b""  # deflate: the first two bytes decide zlib-wrapped or raw
        self.d: zlib._Decompress | None = None
        if coding in ("gzip", "x-gzip"):
            self.d = zlib.decompressobj(16 + zlib.MAX_WBITS)

    def _start(self, data: bytes) -> bytes:
        """HTTP's ``deflate`` is zlib-wrapped (RFC 9110), but some clients send raw deflate."""
        self.head += data
        if len(self.head) < 2:
            return b""
        cmf, flg = self.head[0], self.head[1]
        wrapped = cmf & 0x0F == 8 and (cmf * 256 + flg) % 31 == 0
        self.d = zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
        data, self.head = self.head, b""
        return data

    async def feed(self, data: bytes, out: list[bytes]) -> None:
        if self.d is None:
            data = self._start(data)
            if self.d is None:
                return
        d = self.d
        if d.eof and data:
            raise _not_decodable(self.coding, "data after the end of the compressed stream")
        while True:
            try:
                piece = d.decompress(data, _SLICE)
            except zlib.error as e:
                raise _not_decodable(self.coding, str(e)) from None
            self.size += len(piece)
            if self.size > self.limit:
                raise payload_too_large(self.limit)
            out.append(piece)
            if d.unused_data:
                raise _not_decodable(self.coding, "data after the end of the compressed stream")
            data = d.unconsumed_tail
            # A full slice may leave output pending inside zlib even with no input left.
            if not data and (d.eof or len(piece) < _SLICE):
                return
            await asyncio.sleep(0)  # a bomb inflates in slices; other requests go on meanwhile

    def finish(self) -> None:
        if self.d is None or not self.d.eof:
            raise _not_decodable(self.coding, "the compressed stream is truncated")


async def read_body(request: web.Request, limit: int, seconds: float) -> bytes:
    """The decoded body, at most ``limit`` bytes (on the wire and decoded), within ``seconds``.

    Raises GatewayError: 413 over the limit, 415 for a coding not accepted, 400 for a
    body that does not decode, 408 when the body does not arrive in time.
    """
    codings = _codings(request)
    if len(codings) > 1 or (codings and codings[0] not in ("gzip", "x-gzip", "deflate")):
        raise _unsupported(codings)
    if request.content_length is not None and request.content_length > limit:
        raise payload_too_large(limit)
    try:
        async with asyncio.timeout(seconds):
            if not codings:
                if request.content_length is not None:
                    return await request.read()  # the common case: one read, no chunk list
                return await _read_plain(request, limit)
            inflater = _Inflater(codings[0], limit)
            chunks: list[bytes] = []
            size = 0
            async for chunk in request.content.iter_any():
                size += len(chunk)
                if size > limit:
                    raise payload_too_large(limit)
                await inflater.feed(chunk, chunks)
            inflater.finish()
            return b"".join(chunks)
    except TimeoutError:
        raise GatewayError(408, f"The request body did not arrive within {seconds:g} seconds",
                           code="request_timeout") from None


async def _read_plain(request: web.Request, limit: int) -> bytes:
    # Read in pieces and stop at the limit: a chunked body (no Content-Length) must not be
    # buffered whole before it is judged too large.
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise payload_too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)
