"""An upper bound on a request's input tokens, from its raw JSON body, cheap enough per request.

Text: every tokenizer the gateway's upstreams use (OpenAI's byte-level BPE cl100k/o200k,
Anthropic's BPE, Gemini's SentencePiece with byte fallback) spends at most one token per
UTF-8 byte, so a non-ASCII byte counts as a whole token: a CJK character (3 bytes, 1 to 3
tokens) reserves 3. ASCII counts a token per 2 bytes: English prose runs 4 to 4.5 bytes a
token, code and JSON about 3, and the body's own JSON syntax (keys, quotes, braces) is
counted too though it is never tokenized; only runs of single digits and punctuation
("1,2,3,...") come denser than 2 bytes a token. (A \\uXXXX escape is 6 ASCII bytes: 3 tokens,
as the character's 3 UTF-8 bytes would be.)

Images: their base64 data would count hundreds of thousands of tokens, so each image counts
the most any of the providers' documented rules gives for its pixel size (read from the image
header, tokens.py) instead: Anthropic's width x height / 750 after scaling to 1568 px (at
most 1,600), OpenAI's 85 + 170 per 512 px tile after scaling to 2048 and then 768 px (at most
1,445), Gemini's 258 per 768 px tile. An image whose size is not in the body (a URL, a file
reference) counts the most those rules give for a 4096 x 4096 image. Models that bill images
with a multiplier (gpt-4o-mini's image tokens are about 33 times gpt-4o's, at a matching lower
price) are under-reserved in tokens, not in USD.

The body is walked only when it holds the bytes ``"image`` (a key or MIME type of every
dialect's image parts); otherwise the bound is two ``bytes`` methods, run in C.
"""

from __future__ import annotations

import math
from typing import Any

from ..tokens import _HEADER_BYTES, _b64_prefix, image_size, image_tokens

ASCII_BYTES_PER_TOKEN = 2
_ASCII = bytes(range(128))
_MARKER = b'"image'
_UNKNOWN_SIZE = (4096, 4096)


def openai_image_tokens(width: int, height: int) -> int:
    """gpt-4o's rule at high detail: fit 2048 x 2048, shortest side to 768, 170 per 512 px tile + 85."""
    scale = min(1.0, 2048 / max(width, height))
    w, h = width * scale, height * scale
    scale = min(1.0, 768 / max(1.0, min(w, h)))
    w, h = w * scale, h * scale
    return 85 + 170 * math.ceil(w / 512) * math.ceil(h / 512)


def gemini_image_tokens(width: int, height: int) -> int:
    if width <= 384 and height <= 384:
        return 258
    return 258 * math.ceil(width / 768) * math.ceil(height / 768)


def image_bound(width: int, height: int) -> int:
    width, height = max(1, width), max(1, height)
    return max(image_tokens(width, height), openai_image_tokens(width, height), gemini_image_tokens(width, height))


UNKNOWN_IMAGE_TOKENS = image_bound(*_UNKNOWN_SIZE)


def _base64_image(data: str) -> int:
    size = image_size(_b64_prefix(data, _HEADER_BYTES))
    return image_bound(*size) if size else UNKNOWN_IMAGE_TOKENS


def _images(node: Any, found: list[int]) -> int:
    """Tokens of the images under ``node``; ``found[0]`` gains the characters of their base64 data."""
    total = 0
    if isinstance(node, dict):
        mime = node.get("media_type") or node.get("mimeType") or node.get("mime_type")
        data = node.get("data")
        if isinstance(mime, str) and mime.startswith("image/"):
            if isinstance(data, str):  # Anthropic's base64 source, Gemini's inlineData
                found[0] += len(data)
                return _base64_image(data)
            if node.get("fileUri") is not None or node.get("file_uri") is not None or node.get("url") is not None:
                return UNKNOWN_IMAGE_TOKENS  # Gemini's fileData, Anthropic's url source
        kind = node.get("type")
        if kind in ("image_url", "input_image", "image"):
            url = node.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if isinstance(url, str):  # OpenAI's parts: a data URL or a link
                if url.startswith("data:image/") and ";base64," in url[:64]:
                    found[0] += len(url)
                    return _base64_image(url[url.index(",") + 1:])
                return UNKNOWN_IMAGE_TOKENS
            if kind == "input_image" and node.get("file_id") is not None:
                return UNKNOWN_IMAGE_TOKENS
        for v in node.values():
            if isinstance(v, (dict, list)):
                total += _images(v, found)
    elif isinstance(node, list):
        for v in node:
            if isinstance(v, (dict, list)):
                total += _images(v, found)
    return total


def input_tokens_bound(body: dict[str, Any], raw: bytes) -> int:
    """At least the input tokens any upstream bills for the request ``raw`` (parsed: ``body``)."""
    media, b64 = 0, 0
    if _MARKER in raw:
        found = [0]
        media = _images(body, found)
        b64 = found[0]
    non_ascii = 0 if raw.isascii() else len(raw.translate(None, _ASCII))
    ascii_bytes = max(0, len(raw) - non_ascii - b64)
    return ascii_bytes // ASCII_BYTES_PER_TOKEN + non_ascii + media + 1
