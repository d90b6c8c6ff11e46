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


def with_role(delta: dict[str, Any]) -> dict[str, Any]:
    """The first delta of a stream, carrying the role as OpenAI's streams do: ``content: ""``
    when text comes first, ``null`` when a tool call or reasoning does. A client that
    reassembles a streamed tool call then holds ``content: null``, as the unstreamed answer."""
    content = delta.get("content")
    if content is None and "tool_calls" not in delta and "reasoning_content" not in delta:
        content = ""
    return {"role": "assistant", **delta, "content": content}


def role_first(chunks: list[ChatChunk]) -> bool:
    """Puts the role on the first delta among ``chunks`` (see :func:`with_role`), for decoders
    that learn what comes first only when it comes; False when ``chunks`` hold no delta yet."""
    for c in chunks:
        if c.get("choices"):
            choice = c["choices"][0]
            choice["delta"] = with_role(choice.get("delta") or {})
            return True
    return False


def chunks_from_response(resp: ChatResponse) -> list[ChatChunk]:
    """A whole chat completion as the stream that would have carried it (for an upstream
    that answered a stream request with one JSON body)."""
    cid, created, model = resp.get("id") or "chatcmpl-json", resp.get("created") or 0, resp.get("model") or ""
    choice = (resp.get("choices") or [{}])[0]
    msg = choice.get("message") or {}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> ChatChunk:
        return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    deltas: list[dict[str, Any]] = []
    for key in ("reasoning_content", "content", "refusal"):
        if isinstance(msg.get(key), str) and msg[key]:
            deltas.append({key: msg[key]})
    for i, tc in enumerate(msg.get("tool_calls") or ()):
        deltas.append({"tool_calls": [{**tc, "index": i}]})
    out = [chunk(with_role(deltas[0] if deltas else {}))] + [chunk(d) for d in deltas[1:]]
    out.append(chunk({}, choice.get("finish_reason") or "stop"))
    if resp.get("usage"):
        out.append({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [], "usage": resp["usage"]})
    return out
