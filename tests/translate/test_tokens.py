"""Token estimates: images by their pixel size, read from real encoded files."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from modelroute_sidecar.tokens import MAX_IMAGE_TOKENS, estimate_messages_tokens, image_size, image_tokens


def _encoded(fmt: str, size: tuple[int, int], **save: object) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 90)).save(buf, fmt, **save)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP"])
@pytest.mark.parametrize("size", [(1, 1), (640, 480), (1920, 1080), (300, 4000)])
def test_image_size_from_the_header(fmt: str, size: tuple[int, int]) -> None:
    assert image_size(_encoded(fmt, size)) == size


def test_jpeg_with_exif_and_progressive_and_lossless_webp() -> None:
    exif = Image.Exif()
    exif[0x010E] = "x" * 20000  # a large APP1 block before the frame header
    buf = io.BytesIO()
    Image.new("RGB", (123, 45)).save(buf, "JPEG", exif=exif, progressive=True)
    assert image_size(buf.getvalue()) == (123, 45)
    assert image_size(_encoded("WEBP", (77, 33), lossless=True)) == (77, 33)
    assert image_size(b"not an image") is None


@pytest.mark.parametrize(("w", "h", "tokens"), [
    (200, 100, 27),  # w*h/750
    (1000, 1000, 1333),
    (1568, 1568, MAX_IMAGE_TOKENS),  # capped
    (3136, 100, 105),  # scaled to a 1568 px long edge first: 1568*50/750
])
def test_image_tokens(w: int, h: int, tokens: int) -> None:
    assert image_tokens(w, h) == tokens


def test_a_screenshot_counts_by_pixels_not_bytes() -> None:
    png = _encoded("PNG", (1920, 1080))
    png += bytes(1024 * 1024 - len(png))  # padded to 1 MiB like a real screenshot
    data = base64.b64encode(png).decode()
    req = {"messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}},
        {"type": "tool_result", "tool_use_id": "t", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}}]}]}]}
    assert 2 * MAX_IMAGE_TOKENS <= estimate_messages_tokens(req) < 2 * MAX_IMAGE_TOKENS + 100
    url = {"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "x"}}]}]}
    assert estimate_messages_tokens(url) >= MAX_IMAGE_TOKENS
