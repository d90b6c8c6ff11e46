"""What the ``mock`` provider answers for the surface's operations: deterministic, derived
from the request alone, in OpenAI's (rerank: Jina/Cohere's) documented shapes, so the
embedded default config can demo every endpoint with no key and no network.
"""

from __future__ import annotations

import base64
import hashlib
import struct
import time
import zlib
from typing import Any

import orjson

from ..config import MockSettings
from ..providers.base import PreparedRequest
from ..providers.mock import MockResponse, count_tokens, snippet, split_tokens

MODERATION_CATEGORIES = ("harassment", "harassment/threatening", "hate", "hate/threatening", "illicit",
                         "illicit/violent", "self-harm", "self-harm/intent", "self-harm/instructions", "sexual",
                         "sexual/minors", "violence", "violence/graphic")
SPEECH_RATE = 24_000  # Hz, 16-bit mono: OpenAI's PCM output rate


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def png(seed: str, size: int = 8) -> bytes:
    """A small one-colour PNG whose colour is picked by ``seed``."""
    r, g, b = _digest(seed)[:3]
    row = b"\x00" + bytes((r, g, b)) * size
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(row * size)) + chunk(b"IEND", b"")


def wav_silence(seconds: float) -> bytes:
    frames = int(SPEECH_RATE * seconds)
    data = b"\x00\x00" * frames
    return (b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " +
            struct.pack("<IHHIIHH", 16, 1, 1, SPEECH_RATE, SPEECH_RATE * 2, 2, 16) + b"data" +
            struct.pack("<I", len(data)) + data)


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v if isinstance(v, str) else str(v.get("text", "")) if isinstance(v, dict) else str(v)
                for v in value]
    return [str(value)]


def images(req: dict[str, Any]) -> dict[str, Any]:
    prompt = str(req.get("prompt", ""))
    n = req.get("n") or 1  # 1 to 10: respond() refuses others
    picture = base64.b64encode(png(prompt)).decode()
    key = "url" if req.get("response_format") == "url" else "b64_json"
    value = f"data:image/png;base64,{picture}" if key == "url" else picture
    tokens = count_tokens(prompt)
    return {"created": int(time.time()), "data": [{key: value} for _ in range(int(n))],
            "usage": {"input_tokens": tokens, "input_tokens_details": {"text_tokens": tokens, "image_tokens": 0},
                      "output_tokens": 0, "total_tokens": tokens}}


def transcript(req: dict[str, Any], settings: MockSettings) -> tuple[str, dict[str, Any]]:
    f = req.get("file") or {}
    text = settings.reply or f"Mock transcript of {f.get('filename')} ({f.get('bytes', 0)} bytes)."
    audio = max(1, int(f.get("bytes") or 0) // 1000)
    out = count_tokens(text)
    return text, {"type": "tokens", "input_tokens": audio, "output_tokens": out, "total_tokens": audio + out,
                  "input_token_details": {"text_tokens": 0, "audio_tokens": audio}}


def moderations(req: dict[str, Any]) -> dict[str, Any]:
    texts = _texts(req.get("input"))
    result = {"flagged": False, "categories": dict.fromkeys(MODERATION_CATEGORIES, False),
              "category_scores": dict.fromkeys(MODERATION_CATEGORIES, 0.0),
              "category_applied_input_types": {c: ["text"] for c in MODERATION_CATEGORIES}}
    return {"id": "modr-" + _digest("\n".join(texts)).hex()[:24], "model": req["model"],
            "results": [result for _ in texts]}


def completion_text(req: dict[str, Any], settings: MockSettings) -> str:
    prompt = " ".join(_texts(req.get("prompt")))
    return settings.reply or f"This is a mock completion of: {snippet(prompt)}"


def completions(req: dict[str, Any], settings: MockSettings, interval: float) -> MockResponse:
    text = completion_text(req, settings)
    prompt_tokens = sum(count_tokens(t) for t in _texts(req.get("prompt")))
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": count_tokens(text),
             "total_tokens": prompt_tokens + count_tokens(text)}
    head = {"id": "cmpl-" + _digest(text).hex()[:24], "object": "text_completion", "created": int(time.time()),
            "model": req["model"]}
    if not req.get("stream"):
        choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": "stop"}
        return MockResponse(200, [orjson.dumps({**head, "choices": [choice], "usage": usage})])
    events = [b"data: " + orjson.dumps({**head, "choices": [{"text": piece, "index": 0, "logprobs": None,
                                                               "finish_reason": None}]}) + b"\n\n"
              for piece in split_tokens(text)]
    events.append(b"data: " + orjson.dumps({**head, "choices": [{"text": "", "index": 0, "logprobs": None,
                                                                  "finish_reason": "stop"}]}) + b"\n\n")
    if (req.get("stream_options") or {}).get("include_usage"):
        events.append(b"data: " + orjson.dumps({**head, "choices": [], "usage": usage}) + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    resp = MockResponse(200, events, interval)
    resp.headers["content-type"] = "text/event-stream"
    return resp


def rerank(req: dict[str, Any]) -> dict[str, Any]:
    """Scores by word overlap with the query (Jaccard), best first: deterministic and sensible."""
    query = set(str(req.get("query", "")).lower().split())
    docs = _texts(req.get("documents"))
    scored = []
    for i, doc in enumerate(docs):
        words = set(doc.lower().split())
        score = len(query & words) / len(query | words) if query | words else 0.0
        scored.append((score, i, doc))
    scored.sort(key=lambda s: (-s[0], s[1]))
    top = req.get("top_n") or len(scored)
    results = []
    for score, i, doc in scored[:top]:
        item: dict[str, Any] = {"index": i, "relevance_score": round(score, 6)}
        if req.get("return_documents"):
            item["document"] = {"text": doc}
        results.append(item)
    tokens = count_tokens(str(req.get("query", ""))) + sum(count_tokens(d) for d in docs)
    return {"id": "rerank-" + _digest(orjson.dumps(req).decode()).hex()[:24], "model": req["model"],
            "results": results, "usage": {"total_tokens": tokens}}


def _invalid(param: str, message: str) -> MockResponse:
    return MockResponse(400, [orjson.dumps({"error": {"message": message, "type": "invalid_request_error",
                                                      "param": param, "code": "invalid_value"}})])


def respond(prepared: PreparedRequest, settings: MockSettings, interval: float) -> MockResponse:
    """The answer to a surface request (``prepared.url`` is ``mock:surface/<path>``)."""
    req: dict[str, Any] = orjson.loads(prepared.body)
    path = prepared.url.split("/", 1)[1]
    if path == "completions":
        return completions(req, settings, interval)
    if path == "audio/speech":
        words = len(str(req.get("input", "")).split())
        resp = MockResponse(200, [wav_silence(min(0.2 + 0.05 * words, 30.0))])
        resp.headers["content-type"] = "audio/wav"
        return resp
    if path in ("audio/transcriptions", "audio/translations"):
        text, usage = transcript(req, settings)
        if req.get("response_format") in ("text", "srt", "vtt"):
            resp = MockResponse(200, [text.encode() + b"\n"])
            resp.headers["content-type"] = "text/plain; charset=utf-8"
            return resp
        return MockResponse(200, [orjson.dumps({"text": text, "usage": usage})])
    n = req.get("n")
    if path == "images/generations" and n is not None and not (isinstance(n, int) and 1 <= n <= 10):
        return _invalid("n", "Invalid 'n': expected an integer from 1 to 10.")  # as OpenAI bounds it
    answer = {"images/generations": images, "moderations": moderations, "rerank": rerank}[path](req)
    return MockResponse(200, [orjson.dumps(answer)])
