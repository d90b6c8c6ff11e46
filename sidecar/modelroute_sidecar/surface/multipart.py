"""Multipart uploads (audio transcriptions and translations, file uploads).

A caller's ``multipart/form-data`` body is read part by part under the body limit and kept
in memory as the chunks it arrived in: the model field may come after the file, and a
failed attempt is repeated on the next backend, so the body must outlive one attempt. It
is not written to disk (an injected sidecar's /tmp is a small emptyDir). Each attempt
re-encodes it with the backend's model and streams the kept chunks upstream with an exact
Content-Length, without joining them into one copy.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from aiohttp.client_exceptions import ClientPayloadError
from aiohttp.multipart import BodyPartReader

from ..errors import GatewayError, bad_request, payload_too_large
from ..syntax import valid_header_value

MAX_PARTS = 64
MAX_FIELD_BYTES = 64 * 1024  # a text field (prompt, language...); files are bounded by the body limit
_CHUNK = 64 * 1024
_FORM = "multipart/form-data"


@dataclass(slots=True)
class Part:
    name: str
    filename: str | None  # None: a text field
    content_type: str
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0

    def text(self) -> str:
        try:
            return b"".join(self.chunks).decode()
        except UnicodeDecodeError:
            raise bad_request(f"Invalid '{self.name}': a text field must be UTF-8.", self.name) from None


@dataclass(slots=True)
class Form:
    parts: list[Part]

    def field(self, name: str) -> str | None:
        """A text field's value (the first of that name), or None."""
        for p in self.parts:
            if p.name == name and p.filename is None:
                return p.text()
        return None

    def file(self, name: str) -> Part | None:
        for p in self.parts:
            if p.name == name and p.filename is not None:
                return p
        return None

    def fields(self) -> dict[str, str]:
        """Text fields by name (the last of each name), for the mock."""
        return {p.name: p.text() for p in self.parts if p.filename is None}


def not_multipart(why: str) -> GatewayError:
    return bad_request(f"The request body is not valid {_FORM}: {why}.", None, "invalid_multipart")


async def read_form(request: web.Request, limit: int, seconds: float) -> Form:
    """The caller's form, at most ``limit`` bytes, within ``seconds``; 4xx for anything else."""
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith(_FORM):
        raise bad_request(f"This endpoint takes {_FORM} (a file upload), not '{ctype[:100] or 'no content type'}'.",
                          None, "invalid_content_type")
    if request.headers.get("content-encoding", "identity").lower() != "identity":
        raise GatewayError(415, "A multipart upload must not have a Content-Encoding",
                           code="unsupported_content_encoding")
    if request.content_length is not None and request.content_length > limit:
        raise payload_too_large(limit)
    try:
        async with asyncio.timeout(seconds):
            return await _read(request, limit)
    except TimeoutError:
        raise GatewayError(408, f"The request body did not arrive within {seconds:g} seconds",
                           code="request_timeout") from None
    except GatewayError:
        raise
    except (ValueError, AssertionError, LookupError, ClientPayloadError, aiohttp.http.HttpProcessingError) as e:
        # aiohttp's reader: a wrong or missing boundary, a part without headers, a body that
        # ends before its closing boundary.
        raise not_multipart(type(e).__name__ + (f": {e}" if str(e) else "")) from None


async def _read(request: web.Request, limit: int) -> Form:
    reader = await request.multipart()
    parts: list[Part] = []
    total = 0
    while True:
        part = await reader.next()
        if part is None:
            break
        if not isinstance(part, BodyPartReader):
            raise not_multipart("a nested multipart part")
        if len(parts) >= MAX_PARTS:
            raise not_multipart(f"more than {MAX_PARTS} parts")
        name = part.name
        if not name:
            raise not_multipart("a part without a form-data name")
        ctype = part.headers.get("content-type", "application/octet-stream")
        kept = Part(name, part.filename, ctype if valid_header_value(ctype) else "application/octet-stream")
        while chunk := await part.read_chunk(_CHUNK):
            kept.size += len(chunk)
            total += len(chunk)
            if total > limit:
                raise payload_too_large(limit)
            if kept.filename is None and kept.size > MAX_FIELD_BYTES:
                raise bad_request(f"The form field '{name[:64]}' is over {MAX_FIELD_BYTES} bytes.", name[:64])
            kept.chunks.append(chunk)
        parts.append(kept)
    if not reader.at_eof():
        raise not_multipart("the body ends before its closing boundary")
    return Form(parts)


def _quoted(value: str) -> str:
    """A form-data name or filename in quotes, escaped as browsers do (WHATWG)."""
    return value.replace("\r", "%0D").replace("\n", "%0A").replace('"', "%22")


@dataclass(frozen=True, slots=True)
class Encoded:
    content_type: str
    length: int
    pieces: list[bytes]

    async def stream(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            yield piece


def encode(form: Form, replace: Mapping[str, str]) -> Encoded:
    """The form for an upstream, with the text fields in ``replace`` given new values."""
    boundary = "modelroute-" + os.urandom(12).hex()
    sep = f"--{boundary}\r\n".encode()
    pieces: list[bytes] = []
    for p in form.parts:
        head = f'Content-Disposition: form-data; name="{_quoted(p.name)}"'
        if p.filename is not None:
            head += f'; filename="{_quoted(p.filename)}"\r\nContent-Type: {p.content_type}'
        pieces.append(sep + head.encode() + b"\r\n\r\n")
        if p.filename is None and p.name in replace:
            pieces.append(replace[p.name].encode())
        else:
            pieces.extend(p.chunks)
        pieces.append(b"\r\n")
    pieces.append(f"--{boundary}--\r\n".encode())
    return Encoded(f"{_FORM}; boundary={boundary}", sum(len(x) for x in pieces), pieces)
