"""The canonical form every request and response passes through.

Canonical is the OpenAI Chat Completions wire format as plain dicts: a request shaped
like ``POST /v1/chat/completions``, a response shaped like ``ChatCompletion``, and a
stream of ``ChatCompletionChunk`` dicts whose last chunk (``choices == []``) carries the
usage. Ingress dialects translate into it, provider adapters translate out of it, so
each dialect and each provider is written once. Dicts rather than models keep the hot
path free of object construction; the ingress dialects validate with pydantic first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ChatRequest = dict[str, Any]
ChatResponse = dict[str, Any]
ChatChunk = dict[str, Any]


@dataclass(slots=True)
class Usage:
    """Token counts normalised across providers.

    ``input_tokens`` counts every prompt token, cached ones included (OpenAI's
    ``prompt_tokens``); ``cache_read_tokens``/``cache_write_tokens`` say how many of them
    were read from or written to a prompt cache, so cost can price them apart.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    def to_openai(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.input_tokens,
            "completion_tokens": self.output_tokens,
            "total_tokens": self.input_tokens + self.output_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cache_read_tokens,
                                      "cache_write_tokens": self.cache_write_tokens},
        }


def usage_from_openai(u: dict[str, Any] | None) -> Usage | None:
    if not u:
        return None
    details = u.get("prompt_tokens_details") or {}
    return Usage(
        input_tokens=int(u.get("prompt_tokens") or 0),
        output_tokens=int(u.get("completion_tokens") or 0),
        cache_read_tokens=int(details.get("cached_tokens") or 0),
        cache_write_tokens=int(details.get("cache_write_tokens") or u.get("cache_creation_input_tokens") or 0),
    )


def usage_chunk(chunk_id: str, created: int, model: str, usage: Usage) -> ChatChunk:
    """The final ``choices: []`` chunk OpenAI sends with ``stream_options.include_usage``."""
    return {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage.to_openai(),
    }


def chunks_from_response(resp: ChatResponse) -> list[ChatChunk]:
    """A whole chat completion as the stream that would have carried it (for an upstream
    that answered a stream request with one JSON body)."""
    cid, created, model = resp.get("id") or "chatcmpl-json", resp.get("created") or 0, resp.get("model") or ""
    choice = (resp.get("choices") or [{}])[0]
    msg = choice.get("message") or {}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> ChatChunk:
        return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    out = [chunk({"role": "assistant", "content": ""})]
    for key in ("reasoning_content", "content", "refusal"):
        if isinstance(msg.get(key), str) and msg[key]:
            out.append(chunk({key: msg[key]}))
    for i, tc in enumerate(msg.get("tool_calls") or ()):
        out.append(chunk({"tool_calls": [{**tc, "index": i}]}))
    out.append(chunk({}, choice.get("finish_reason") or "stop"))
    if resp.get("usage"):
        out.append({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [], "usage": resp["usage"]})
    return out
