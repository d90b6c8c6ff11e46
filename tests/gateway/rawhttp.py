"""HTTP/1.1 by hand over asyncio sockets, for attacks no well-behaved client library makes
(lying Content-Length, stalled bodies, half-sent heads), and what the kernel says about
the gateway process (its memory, its open sockets)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import orjson


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def json(self) -> object:
        return orjson.loads(self.body)


def head(method: str, path: str, headers: dict[str, str] | None = None, *, length: int | None = None,
         chunked: bool = False) -> bytes:
    """A request head. ``length`` sets Content-Length (it may lie); ``chunked`` sets chunked framing."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    hs = {"Content-Type": "application/json", **(headers or {})}
    if chunked:
        hs["Transfer-Encoding"] = "chunked"
    elif length is not None:
        hs["Content-Length"] = str(length)
    lines += [f"{k}: {v}" for k, v in hs.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


LAST_CHUNK = b"0\r\n\r\n"


async def read_response(reader: asyncio.StreamReader) -> RawResponse:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("the connection closed without a response")
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                await reader.readline()
                break
            parts.append(await reader.readexactly(size))
            await reader.readline()
        body = b"".join(parts)
    else:
        body = await reader.read()
    return RawResponse(status, headers, body)


async def exchange(port: int, data: bytes, within: float = 30.0) -> RawResponse:
    """Send ``data`` (a whole request, head and body) on a new connection; read one response."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(within):
            writer.write(data)
            with contextlib.suppress(ConnectionError):
                await writer.drain()  # the gateway may answer (and close) before it has read everything
            return await read_response(reader)
    finally:
        writer.close()


async def closed_by_peer(reader: asyncio.StreamReader) -> bool:
    """True once the other side closed (EOF or reset); reads whatever comes before."""
    try:
        while await reader.read(65536):
            pass
    except ConnectionError:
        pass
    return True


# ---- the gateway process as the kernel sees it ---------------------------------------------

def memory(pid: int) -> tuple[int, int]:
    """(current, peak) resident set size of ``pid``, in bytes (VmRSS, VmHWM)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) * 1024
    return fields["VmRSS"], fields["VmHWM"]


def open_sockets(pid: int) -> int:
    """How many sockets ``pid`` holds open (listeners and upstream connections included)."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                count += 1
        except FileNotFoundError:
            continue  # closed while we looked
    return count
