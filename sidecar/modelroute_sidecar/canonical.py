"""The canonical form every translated request and response passes through.

Canonical is the OpenAI Chat Completions wire format as plain dicts: a request shaped like
``POST /v1/chat/completions``, a response shaped like ``ChatCompletion``, and a stream of
``ChatCompletionChunk`` dicts whose last chunk (``choices == []``) carries the usage. Caller
dialects translate into it (``wire/<format>/caller.py``), upstream formats out of it
(``wire/<format>/upstream.py``), so each is written once. The TypedDicts below say what it
holds, the fields beyond OpenAI's included; they are dicts at run time, which keeps the hot
path free of object construction (the caller dialects validate with pydantic first).

Beyond OpenAI's own fields, canonical carries:

* reasoning: ``reasoning_content`` on messages and deltas (DeepSeek's name for it), and
  ``reasoning_effort`` on requests, to and from Anthropic thinking and Gemini thoughts;
* thought signatures: ``tool_calls[].extra_content.google.thought_signature``, where Gemini's
  own OpenAI-compatible endpoint carries them, so a Gemini 3 tool loop survives a translation;
* cache writes: ``usage.prompt_tokens_details.cache_write_tokens`` beside OpenAI's
  ``cached_tokens`` (reads), so Anthropic's prompt-cache writes are metered and priced.
"""

# No `from __future__ import annotations` here: TypedDict turns every string annotation into a
# ForwardRef, compiling each one at import (for a request shape: ~1 ms and ~25 KiB in each pod).
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]


class GoogleExtra(TypedDict, total=False):
    thought_signature: str  # Gemini's, opaque; sent back on the call it came with


class ExtraContent(TypedDict, total=False):
    google: GoogleExtra


class FunctionCall(TypedDict, total=False):
    name: str
    arguments: str  # JSON text, as OpenAI sends it (streams: a fragment)


class ToolCall(TypedDict, total=False):
    id: str
    type: Literal["function"]
    function: FunctionCall
    extra_content: ExtraContent
    index: int  # in stream deltas only


class Message(TypedDict, total=False):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None  # text, or OpenAI content parts
    name: str
    tool_calls: list[ToolCall]
    tool_call_id: str
    refusal: str | None
    reasoning_content: str  # the model's reasoning (thinking, thought summaries)


class ChatRequest(TypedDict, total=False):
    model: str
    messages: list[Message]
    stream: bool
    stream_options: dict[str, Any]
    tools: list[dict[str, Any]]  # OpenAI function tools
    tool_choice: str | dict[str, Any]
    parallel_tool_calls: bool
    max_tokens: int
    max_completion_tokens: int
    n: int
    temperature: float
    top_p: float
    stop: str | list[str]
    response_format: dict[str, Any]
    reasoning_effort: str  # minimal | low | medium | high
    user: str
    safety_identifier: str
    prompt_cache_key: str
    seed: int
    presence_penalty: float
    frequency_penalty: float
    metadata: dict[str, Any]


class PromptTokensDetails(TypedDict, total=False):
    cached_tokens: int  # read from a prompt cache
    cache_write_tokens: int  # written to one (Anthropic's cache_creation_input_tokens)


class CompletionUsage(TypedDict, total=False):
    prompt_tokens: int  # every prompt token, cached ones included
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails
    completion_tokens_details: dict[str, int]  # reasoning_tokens
    cache_creation_input_tokens: int  # where some OpenAI-compatible servers put cache writes


class Choice(TypedDict, total=False):
    index: int
    message: Message
    finish_reason: FinishReason | None
    logprobs: Any


class ChatResponse(TypedDict, total=False):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[Choice]
    usage: CompletionUsage


class Delta(TypedDict, total=False):
    role: Literal["assistant"]
    content: str | None
    refusal: str | None
    reasoning_content: str
    tool_calls: list[ToolCall]


class ChunkChoice(TypedDict, total=False):
    index: int
    delta: Delta
    finish_reason: FinishReason | None


class ChatChunk(TypedDict, total=False):
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChunkChoice]  # empty in the last chunk, which carries the usage
    usage: CompletionUsage


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

    def to_openai(self) -> CompletionUsage:
        return {
            "prompt_tokens": self.input_tokens,
            "completion_tokens": self.output_tokens,
            "total_tokens": self.input_tokens + self.output_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cache_read_tokens,
                                      "cache_write_tokens": self.cache_write_tokens},
        }


def usage_from_openai(u: CompletionUsage | None) -> Usage | None:
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


def with_role(delta: Delta) -> Delta:
    """The first delta of a stream, carrying the role as OpenAI's streams do: ``content: ""``
    when text comes first, ``null`` when a tool call or reasoning does. A client that
    reassembles a streamed tool call then holds ``content: null``, as the unstreamed answer."""
    content = delta.get("content")
    if content is None and "tool_calls" not in delta and "reasoning_content" not in delta:
        content = ""
    out: Delta = {"role": "assistant", **delta}
    out["content"] = content
    return out


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
    choices = resp.get("choices")
    msg: Message = choices[0].get("message") or {} if choices else {}
    finish: FinishReason = (choices[0].get("finish_reason") if choices else None) or "stop"

    def chunk(delta: Delta, finish: FinishReason | None = None) -> ChatChunk:
        return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    deltas: list[Delta] = []
    if isinstance(msg.get("reasoning_content"), str) and msg["reasoning_content"]:
        deltas.append({"reasoning_content": msg["reasoning_content"]})
    text = msg.get("content")
    if isinstance(text, str) and text:
        deltas.append({"content": text})
    if isinstance(msg.get("refusal"), str) and msg["refusal"]:
        deltas.append({"refusal": msg["refusal"]})
    for i, tc in enumerate(msg.get("tool_calls") or ()):
        deltas.append({"tool_calls": [{**tc, "index": i}]})
    out = [chunk(with_role(deltas[0] if deltas else {}))] + [chunk(d) for d in deltas[1:]]
    out.append(chunk({}, finish))
    if resp.get("usage"):
        out.append({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [], "usage": resp["usage"]})
    return out
