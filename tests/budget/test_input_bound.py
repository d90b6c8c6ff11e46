"""The reservation's input bound (budget/input_bound.py) over each dialect's image parts and scripts."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import orjson
import pytest
from PIL import Image

from modelroute_sidecar.budget.input_bound import UNKNOWN_IMAGE_TOKENS, image_bound, input_tokens_bound


def png(width: int, height: int) -> str:
    buf = io.BytesIO()
    Image.effect_noise((width, height), 90).convert("RGB").save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


DATA = png(1200, 900)
BOUND = image_bound(1200, 900)


@pytest.mark.parametrize("body", [
    {"messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": DATA}}]}]},
    {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{DATA}"}}]}]},
    {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": f"data:image/png;base64,{DATA}"}]}]},
    {"contents": [{"role": "user", "parts": [{"inlineData": {"mimeType": "image/png", "data": DATA}}]}]},
])
def test_an_image_counts_its_pixels_in_every_dialect(body: dict[str, Any]) -> None:
    raw = orjson.dumps(body)
    bound = input_tokens_bound(body, raw)
    assert BOUND <= bound <= BOUND + (len(raw) - len(DATA)) // 2 + 1
    assert bound < len(DATA) // 100  # by its bytes, a hundred times as much


@pytest.mark.parametrize("body", [
    {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}]}]},
    {"messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png", "media_type": "image/png"}}]}]},
    {"contents": [{"role": "user", "parts": [{"fileData": {"mimeType": "image/png", "fileUri": "gs://b/a.png"}}]}]},
])
def test_an_image_by_reference_counts_the_most_an_image_can(body: dict[str, Any]) -> None:
    assert input_tokens_bound(body, orjson.dumps(body)) >= UNKNOWN_IMAGE_TOKENS >= 1600


def test_image_bound_is_the_largest_providers_rule() -> None:
    assert image_bound(1568, 1568) >= 1600  # Anthropic's cap
    assert image_bound(2048, 768) >= 85 + 170 * 2 * 4  # gpt-4o: 2 x 4 tiles after scaling
    assert image_bound(200, 200) >= 258  # Gemini's smallest


@pytest.mark.parametrize("text", ["日本語のテキストを要約してください。" * 30, "Привет, как дела? " * 40, "🙂" * 200])
def test_text_beyond_ascii_counts_a_token_a_utf8_byte(text: str) -> None:
    body = {"messages": [{"role": "user", "content": text}]}
    for raw in (orjson.dumps(body), json.dumps(body).encode()):  # UTF-8 and \uXXXX escapes
        beyond = sum(len(c.encode()) for c in text if ord(c) >= 128)
        assert input_tokens_bound(body, raw) >= beyond + (len(text) - sum(ord(c) >= 128 for c in text)) // 2


def test_ascii_counts_a_token_per_two_bytes() -> None:
    body = {"messages": [{"role": "user", "content": "hello world " * 100}]}
    raw = orjson.dumps(body)
    assert input_tokens_bound(body, raw) == len(raw) // 2 + 1
