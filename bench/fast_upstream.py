"""A minimal OpenAI chat-completions server that answers at once: the benchmark's upstream.

``POST /v1/chat/completions`` (also without ``/v1``):
- non-streaming: a small completion JSON with ``usage``;
- ``"stream": true``: ``--chunks`` content chunks back to back, then the usage chunk
  (``choices: []``) when ``stream_options.include_usage``, then ``data: [DONE]``.

``POST /slow/v1/chat/completions`` streams slowly instead: one chunk every
``--slow-interval`` seconds for at most ``--slow-seconds``, which holds streams open
for the memory measurement (and bounds them: a forgotten stream still ends).

Run: ``python -m bench.fast_upstream --port 9100``. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import orjson
from aiohttp import web

PROMPT_TOKENS = 9
_CONTENT = "Hello! How can I help you today?"


def completion_body(model: str) -> bytes:
    return orjson.dumps({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 1_700_000_000, "model": model,
        "system_fingerprint": "fp_bench",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": _CONTENT, "refusal": None},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": 9, "total_tokens": PROMPT_TOKENS + 9},
    })


def _chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
    return b"data: " + orjson.dumps({
        "id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model,
        "system_fingerprint": "fp_bench",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }) + b"\n\n"


def stream_frames(model: str, chunks: int, include_usage: bool) -> list[bytes]:
    """The SSE frames of one streamed answer (the first carries the role, the last the finish)."""
    frames = [_chunk(model, {"role": "assistant", "content": ""})]
    frames += [_chunk(model, {"content": f"tok{i} "}) for i in range(max(chunks - 2, 1))]
    frames.append(_chunk(model, {}, "stop"))
    if include_usage:
        frames.append(b"data: " + orjson.dumps({
            "id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model,
            "choices": [], "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": len(frames) - 1,
                                     "total_tokens": PROMPT_TOKENS + len(frames) - 1}}) + b"\n\n")
    frames.append(b"data: [DONE]\n\n")
    return frames


class Upstream:
    def __init__(self, chunks: int, slow_interval: float, slow_seconds: float) -> None:
        self.chunks = chunks
        self.slow_interval = slow_interval
        self.slow_seconds = slow_seconds
        # Answers depend only on (model, stream, usage): build each once.
        self._bodies: dict[str, bytes] = {}
        self._frames: dict[tuple[str, bool], list[bytes]] = {}

    async def chat(self, request: web.Request) -> web.StreamResponse:
        req = orjson.loads(await request.read())
        model = str(req.get("model", "bench"))
        if not req.get("stream"):
            body = self._bodies.get(model)
            if body is None:
                body = self._bodies[model] = completion_body(model)
            return web.Response(body=body, content_type="application/json")
        include_usage = bool((req.get("stream_options") or {}).get("include_usage"))
        resp = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache"})
        await resp.prepare(request)
        key = (model, include_usage)
        frames = self._frames.get(key)
        if frames is None:
            frames = self._frames[key] = stream_frames(model, self.chunks, include_usage)
        # No pause between frames, but one write each, as a token-by-token upstream sends them.
        for f in frames:
            await resp.write(f)
        await resp.write_eof()
        return resp

    async def slow_chat(self, request: web.Request) -> web.StreamResponse:
        req = orjson.loads(await request.read())
        model = str(req.get("model", "bench"))
        include_usage = bool((req.get("stream_options") or {}).get("include_usage"))
        resp = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache"})
        await resp.prepare(request)
        frames = stream_frames(model, 3, include_usage)
        await resp.write(frames[0] + frames[1])
        end = time.monotonic() + self.slow_seconds
        tick = _chunk(model, {"content": "."})
        try:
            while time.monotonic() < end:
                await asyncio.sleep(self.slow_interval)
                await resp.write(tick)
            await resp.write(b"".join(frames[2:]))
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            pass  # the caller (the proxy under test) let go
        return resp


def make_app(chunks: int = 20, slow_interval: float = 0.5, slow_seconds: float = 60.0) -> web.Application:
    up = Upstream(chunks, slow_interval, slow_seconds)
    app = web.Application()
    for prefix in ("/v1", ""):
        app.router.add_post(f"{prefix}/chat/completions", up.chat)
    app.router.add_post("/slow/v1/chat/completions", up.slow_chat)
    return app


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9100)
    p.add_argument("--chunks", type=int, default=20, help="content chunks per fast stream")
    p.add_argument("--slow-interval", type=float, default=0.5, help="seconds between chunks of a slow stream")
    p.add_argument("--slow-seconds", type=float, default=60.0, help="a slow stream ends after this long")
    args = p.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(make_app(args.chunks, args.slow_interval, args.slow_seconds), host=args.host, port=args.port,
                access_log=None, print=None, backlog=4096, handler_cancellation=True)


if __name__ == "__main__":
    main()
