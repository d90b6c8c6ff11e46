"""Token estimates for ``count_tokens`` where no upstream can count, and for stream usage.

Text counts about four characters a token (the usual rule of thumb). Images count by
their pixel size, as Anthropic documents it: an image whose long edge is over 1568 px is
first scaled down to fit, and then costs about ``width * height / 750`` tokens (at most
about 1,600). The size is read from the image's own header (PNG, JPEG, GIF, WebP) in the
base64 data; an image given by URL counts as the largest. PDF documents count about 1,500
tokens a page. Counting the base64 text instead would make one screenshot cost hundreds
of thousands of tokens, and a client that sizes its context by the count compacts far
too early.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from typing import Any

import orjson

CHARS_PER_TOKEN = 4
MAX_LONG_EDGE = 1568
PIXELS_PER_TOKEN = 750
MAX_IMAGE_TOKENS = 1600
PDF_PAGE_TOKENS = 1500
_HEADER_BYTES = 256 * 1024  # JPEG's size marker may follow large EXIF blocks
_PDF_PAGE = re.compile(rb"/Type\s*/Page(?![a-zA-Z])")


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG, JPEG, GIF or WebP header, or None."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        w, h = struct.unpack(">II", data[16:24])
        return int(w), int(h)
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        w, h = struct.unpack("<HH", data[6:10])
        return int(w), int(h)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
        kind = data[12:16]
        if kind == b"VP8 ":
            w, h = struct.unpack("<HH", data[26:30])
            return int(w) & 0x3FFF, int(h) & 0x3FFF
        if kind == b"VP8L" and len(data) >= 25:
            b = data[21:25]
            return 1 + (((b[1] & 0x3F) << 8) | b[0]), 1 + (((b[3] & 0xF) << 10) | (b[2] << 2) | ((b[1] & 0xC0) >> 6))
        if kind == b"VP8X":
            return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
        return None
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                return None
            marker = data[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            length = int.from_bytes(data[i + 2:i + 4], "big")
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start of frame
                h, w = struct.unpack(">HH", data[i + 5:i + 9])
                return int(w), int(h)
            i += 2 + length
    return None


def image_tokens(width: int, height: int) -> int:
    long_edge = max(width, height)
    if long_edge > MAX_LONG_EDGE:
        scale = MAX_LONG_EDGE / long_edge
        width, height = int(width * scale), int(height * scale)
    return max(1, min(MAX_IMAGE_TOKENS, round(width * height / PIXELS_PER_TOKEN)))


def _b64_prefix(data: str, limit: int) -> bytes:
    head = data[: limit * 4 // 3 // 4 * 4]
    try:
        return base64.b64decode(head)
    except (binascii.Error, ValueError):
        return b""


def base64_image_tokens(data: str) -> int:
    size = image_size(_b64_prefix(data, _HEADER_BYTES))
    return image_tokens(*size) if size else MAX_IMAGE_TOKENS


def pdf_tokens(data: str) -> int:
    try:
        pdf = base64.b64decode(data)
    except (binascii.Error, ValueError):
        return PDF_PAGE_TOKENS
    return PDF_PAGE_TOKENS * max(1, len(_PDF_PAGE.findall(pdf)))


def _block_tokens(block: Any) -> tuple[int, list[Any]]:
    """(tokens of a block's media, what of it is text to count by characters)."""
    if not isinstance(block, dict):
        return 0, [block]
    kind = block.get("type")
    src = block.get("source")
    if kind == "image" and isinstance(src, dict):
        data = src.get("data")
        return (base64_image_tokens(data) if src.get("type") == "base64" and isinstance(data, str)
                else MAX_IMAGE_TOKENS), []
    if kind == "document" and isinstance(src, dict) and src.get("type") == "base64" and isinstance(
            src.get("data"), str):
        return pdf_tokens(src["data"]), [block.get("title"), block.get("context")]
    if kind == "tool_result" and isinstance(block.get("content"), list):
        media, texts = 0, []
        for inner in block["content"]:
            m, t = _block_tokens(inner)
            media += m
            texts.extend(t)
        return media, [{k: v for k, v in block.items() if k != "content"}, *texts]
    return 0, [block]


def estimate_messages_tokens(req: dict[str, Any]) -> int:
    """An estimate of the input tokens of an Anthropic Messages (or count_tokens) request."""
    media = 0
    texts: list[Any] = [req.get("system"), req.get("tools")]
    for m in req.get("messages") or ():
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list):
            for block in content:
                tokens, rest = _block_tokens(block)
                media += tokens
                texts.extend(rest)
        else:
            texts.append(content)
    return max(1, media + len(orjson.dumps(texts)) // CHARS_PER_TOKEN)
