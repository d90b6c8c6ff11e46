"""The Anthropic Messages dialect: ``POST /v1/messages``, what Claude Code speaks.

Validation is deliberately narrow: only what Anthropic itself requires (``model``,
``messages``, ``max_tokens``) can fail. Everything else Claude Code sends (cache_control,
thinking, context_management, server tools, future fields) is kept for a pass-through
to Anthropic and dropped, silently, when the request is translated for another
provider that cannot honour it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from ...canonical import (
    ChatChunk,
    ChatRequest,
    ChatResponse,
    CompletionUsage,
    Message,
    ToolCall,
    Usage,
    usage_from_openai,
)
from ...errors import ErrorType, GatewayError
from ...sse import SSEEvent, frame
from ...tokens import estimate_messages_tokens
from ..base import Dialect, Ingress, NativeTap, StreamEncoder
from ..parts import content_text, dump_arguments, new_id, parse_arguments
from .upstream import info_from_error, usage_from_anthropic
from .validation import COUNT_TOKENS_REQUEST, MESSAGES_REQUEST, invalid, validate

# A cap every current OpenAI and Gemini chat model accepts. Claude Code asks for 32k-64k
# as "as much as it takes"; passing that on makes e.g. gpt-4o answer 400, so larger caps
# are left to the backend's own maximum.
MAX_TRANSLATED_MAX_TOKENS = 16384
MAX_OPENAI_STOP = 4  # OpenAI rejects more stop sequences


def parse_count_tokens(body: bytes) -> dict[str, Any]:
    req = validate(body, COUNT_TOKENS_REQUEST)
    if not req["messages"]:
        raise invalid("messages: at least one message is required")
    if not req["model"]:
        raise invalid("model: String should have at least 1 character")
    _check_system_placement(req["messages"])
    return req


# Anthropic's own words for a system message where none may be: clients (Claude Code)
# recognise them and fall back to sending the instructions another way.
UNEXPECTED_SYSTEM = ('messages: Unexpected role "system". The Messages API accepts a top-level `system` '
                     'parameter, not "system" as an input message role.')


def _check_system_placement(messages: list[dict[str, Any]]) -> None:
    """A ``system`` message must follow a user turn (or another system message that does)."""
    last = ""
    for m in messages:
        role = m["role"]
        if role == "system":
            if last != "user":
                raise invalid(UNEXPECTED_SYSTEM)
        else:
            last = role


def parse_request(body: bytes) -> dict[str, Any]:
    req = validate(body, MESSAGES_REQUEST)
    if req["max_tokens"] < 1:
        raise invalid("max_tokens: Input should be greater than or equal to 1")
    if req["max_tokens"] >= 2**63:
        raise invalid("max_tokens: Input should be a 64-bit integer")
    if not req["messages"]:
        raise invalid("messages: at least one message is required")
    if not req["model"]:
        raise invalid("model: String should have at least 1 character")
    _check_system_placement(req["messages"])
    return req


# --------------------------------------------------------------- request -> canonical


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "\n\n".join(b["text"] for b in content or () if isinstance(b, dict) and isinstance(b.get("text"), str))


def _image_part(block: dict[str, Any]) -> dict[str, Any] | None:
    src = block.get("source") or {}
    if src.get("type") == "base64" and src.get("data"):
        return {"type": "image_url", "image_url": {"url": f"data:{src.get('media_type') or 'image/png'};base64,"
                                                          f"{src['data']}"}}
    if src.get("type") == "url" and src.get("url"):
        return {"type": "image_url", "image_url": {"url": src["url"]}}
    return None  # Files API references mean nothing to other providers


def _document_part(block: dict[str, Any]) -> dict[str, Any] | None:
    src = block.get("source") or {}
    if src.get("type") == "base64" and src.get("data"):
        mime = src.get("media_type") or "application/pdf"
        return {"type": "file", "file": {"filename": block.get("title") or "document.pdf",
                                         "file_data": f"data:{mime};base64,{src['data']}"}}
    if src.get("type") == "text" and src.get("data"):
        return {"type": "text", "text": src["data"]}
    if src.get("type") == "content":  # a document made of text (and image) blocks
        text = _text_of(src.get("content"))
        return {"type": "text", "text": text} if text else None
    if src.get("type") == "url" and src.get("url"):
        return {"type": "text", "text": f"[document: {src['url']}]"}  # no canonical file-by-URL part
    return None


def _user_parts(blocks: list[dict[str, Any]], out: list[Message]) -> None:
    """Append canonical messages for one user turn: tool results first (as ``tool``
    messages, in order), then the rest of the turn as one user message."""
    parts: list[dict[str, Any]] = []
    for b in blocks:
        btype = b.get("type")
        if btype == "text":
            if b.get("text"):
                parts.append({"type": "text", "text": b["text"]})
        elif btype == "image":
            img = _image_part(b)
            if img:
                parts.append(img)
        elif btype == "document":
            doc = _document_part(b)
            if doc:
                parts.append(doc)
        elif btype == "search_result":
            text = _text_of(b.get("content"))
            if text:
                parts.append({"type": "text", "text": text})
        elif btype == "tool_result":
            content = b.get("content")
            texts: list[str] = []
            if isinstance(content, str):
                texts.append(content)
            else:
                for c in content or ():
                    if c.get("type") == "image":
                        img = _image_part(c)
                        if img:  # OpenAI tool messages are text only: the image follows as user content
                            parts.append(img)
                    elif isinstance(c.get("text"), str):
                        texts.append(c["text"])
                    elif c.get("type") == "document":
                        doc = _document_part(c)
                        if doc and doc["type"] == "text":
                            texts.append(doc["text"])
                        elif doc:
                            parts.append(doc)
                    elif c.get("type") == "search_result":
                        texts.append(_text_of(c.get("content")))
                    # tool_reference (tool search): the tools it names are offered anyway
            out.append({"role": "tool", "tool_call_id": b.get("tool_use_id") or "", "content": "\n".join(texts)})
        # thinking, server tool results, container uploads: nothing another provider can use
    if parts:
        if all(p["type"] == "text" for p in parts):
            out.append({"role": "user", "content": "".join(p["text"] for p in parts) if len(parts) == 1
                        else parts})
        else:
            out.append({"role": "user", "content": parts})


def _assistant(blocks: list[dict[str, Any]]) -> Message | None:
    texts: list[str] = []
    calls: list[ToolCall] = []
    for b in blocks:
        btype = b.get("type")
        if btype == "text":
            texts.append(b.get("text") or "")
        elif btype == "tool_use":
            calls.append({"id": b.get("id") or new_id("toolu_"), "type": "function",
                          "function": {"name": b.get("name") or "", "arguments": dump_arguments(b.get("input"))}})
    text = "".join(texts)
    if not text and not calls:
        return None
    msg: Message = {"role": "assistant", "content": text or None}
    if calls:
        msg["tool_calls"] = calls
    return msg


def _tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for t in tools:
        # Client tools have no type (or "custom"); server and Anthropic-schema tools
        # (web_search_*, bash_*, text_editor_*, ...) only exist on Anthropic.
        if t.get("type") not in (None, "custom") or not t.get("name"):
            continue
        fn: dict[str, Any] = {"name": t["name"],
                              "parameters": t.get("input_schema") or {"type": "object", "properties": {}}}
        if t.get("description"):
            fn["description"] = t["description"]
        if t.get("strict") is True:
            fn["strict"] = True
        out.append({"type": "function", "function": fn})
    return out


_TOOL_CHOICE: dict[str, str] = {"auto": "auto", "any": "required", "none": "none"}


def to_canonical(req: dict[str, Any]) -> ChatRequest:
    messages: list[Message] = []
    system = _text_of(req.get("system"))
    if system:
        messages.append({"role": "system", "content": system})
    for m in req["messages"]:
        content = m.get("content")
        if m["role"] == "system":
            text = _text_of(content)
            if text:  # where it was sent: every canonical upstream takes system messages anywhere
                messages.append({"role": "system", "content": text})
        elif m["role"] == "user":
            if isinstance(content, str):
                messages.append({"role": "user", "content": content})
            else:
                _user_parts(content, messages)
        elif isinstance(content, str):
            if content:
                messages.append({"role": "assistant", "content": content})
        else:
            msg = _assistant(content)
            if msg:
                messages.append(msg)

    out: ChatRequest = {"model": req["model"], "messages": messages}
    if req["max_tokens"] <= MAX_TRANSLATED_MAX_TOKENS:
        out["max_completion_tokens"] = req["max_tokens"]
    stops = req.get("stop_sequences")
    if stops:
        out["stop"] = stops[:MAX_OPENAI_STOP]
    if isinstance(req.get("temperature"), int | float):
        out["temperature"] = req["temperature"]
    if isinstance(req.get("top_p"), int | float):
        out["top_p"] = req["top_p"]
    tools = _tools(req.get("tools") or [])
    if tools:
        out["tools"] = tools
        tc = req.get("tool_choice")
        if isinstance(tc, dict):
            ttype = tc.get("type")
            if ttype == "tool" and tc.get("name"):
                out["tool_choice"] = {"type": "function", "function": {"name": tc["name"]}}
            elif ttype in _TOOL_CHOICE:
                out["tool_choice"] = _TOOL_CHOICE[ttype]
            if tc.get("disable_parallel_tool_use") is True and ttype != "none":
                out["parallel_tool_calls"] = False
    fmt = (req.get("output_config") or {}).get("format") or req.get("output_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema" and isinstance(fmt.get("schema"), dict):
        out["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt["schema"]}}
    if req.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    effort = reasoning_effort(req)
    if effort is not None:
        out["reasoning_effort"] = effort  # sent where the backend's model reasons (see the adapters)
    # top_k, metadata, service_tier, cache_control, context_management, container,
    # mcp_servers, ...: no canonical counterpart, dropped.
    return out


_EFFORTS = {"low": "low", "medium": "medium", "high": "high", "max": "high", "xhigh": "high"}


def reasoning_effort(req: dict[str, Any]) -> str | None:
    """Anthropic's thinking request as an OpenAI reasoning effort: the ``output_config``
    effort when given, else by the thinking budget; None when thinking is off."""
    thinking = req.get("thinking")
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if kind not in ("enabled", "adaptive"):
        return None
    effort = (req.get("output_config") or {}).get("effort") if isinstance(req.get("output_config"), dict) else None
    if isinstance(effort, str) and effort in _EFFORTS:
        return _EFFORTS[effort]
    assert isinstance(thinking, dict)
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int):
        return "medium"
    return "low" if budget <= 4096 else "medium" if budget <= 16384 else "high"


# -------------------------------------------------------------- canonical -> response

STOP_REASONS: dict[str, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def message_id(canonical_id: Any) -> str:
    s = str(canonical_id or "")
    if s.startswith("msg_"):
        return s
    return "msg_" + (s.removeprefix("chatcmpl-") or new_id(""))


def anthropic_usage(u: CompletionUsage | None) -> dict[str, int]:
    """Canonical usage -> Anthropic's, whose ``input_tokens`` excludes cache reads and writes."""
    usage = usage_from_openai(u) or Usage()
    if u and not usage.cache_write_tokens:
        usage.cache_write_tokens = int((u.get("prompt_tokens_details") or {}).get("cache_write_tokens") or 0)
    return {
        "input_tokens": max(0, usage.input_tokens - usage.cache_read_tokens - usage.cache_write_tokens),
        "output_tokens": usage.output_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cache_read_tokens,
    }


def from_canonical(resp: ChatResponse, model: str) -> dict[str, Any]:
    choices = resp.get("choices") or [{}]
    choice = choices[0]
    msg = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    reasoning = msg.get("reasoning_content")
    if isinstance(reasoning, str) and reasoning:
        # The upstream's reasoning as a thinking block; it has no Anthropic signature, and a
        # translated turn sent back drops it again.
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = content_text(msg.get("content")) or msg.get("refusal") or ""
    if text:
        content.append({"type": "text", "text": text})
    for tc in msg.get("tool_calls") or ():
        fn = tc.get("function") or {}
        content.append({"type": "tool_use", "id": tc.get("id") or new_id("toolu_"), "name": fn.get("name") or "",
                        "input": parse_arguments(fn.get("arguments"))})
    reason = STOP_REASONS.get(choice.get("finish_reason") or "stop", "end_turn")
    return {
        "id": message_id(resp.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": None,
        "usage": anthropic_usage(resp.get("usage")),
    }


# -------------------------------------------------------------------------- streaming

_PING = frame(b'{"type":"ping"}', "ping")
_MESSAGE_STOP = frame(b'{"type":"message_stop"}', "message_stop")


def _event(name: str, payload: dict[str, Any]) -> bytes:
    return frame(orjson.dumps(payload), name)


class _MessagesEncoder(StreamEncoder):
    """Canonical chunks -> the Messages event sequence.

    Text and each tool call become content blocks, opened on their first delta and
    closed when another block starts or the stream ends. ``message_start`` carries the
    best usage known when it goes out: the upstream's, where its stream reports usage
    early (Gemini), else an estimate of the input; the final ``message_delta`` carries
    the upstream's cumulative totals.
    """

    def __init__(self, model: str, estimate: Callable[[], int] | None = None) -> None:
        self.model = model
        self.estimate = estimate
        self.known: Usage | None = None
        self.started = False
        self.block = -1  # index of the open content block, -1 when none
        self.block_kind = ""  # "thinking" | "text" | "tool"
        self.next_block = 0
        self.tools: dict[int, int] = {}  # canonical tool-call index -> block index
        self.finish: str | None = None
        self.usage: CompletionUsage | None = None

    def note_usage(self, usage: Usage) -> None:
        self.known = usage

    def _start(self, chunk_id: Any) -> bytes:
        self.started = True
        if self.known is not None:
            usage = anthropic_usage(self.known.to_openai())
        else:
            usage = {"input_tokens": self.estimate() if self.estimate else 0, "output_tokens": 0}
        return _event("message_start", {"type": "message_start", "message": {
            "id": message_id(chunk_id), "type": "message", "role": "assistant", "model": self.model,
            "content": [], "stop_reason": None, "stop_sequence": None, "usage": usage}}) + _PING

    def _close(self) -> bytes:
        if self.block < 0:
            return b""
        out = _event("content_block_stop", {"type": "content_block_stop", "index": self.block})
        self.block = -1
        return out

    def _open(self, kind: str, content_block: dict[str, Any]) -> bytes:
        out = self._close()
        self.block = self.next_block
        self.block_kind = kind
        self.next_block += 1
        return out + _event("content_block_start", {"type": "content_block_start", "index": self.block,
                                                    "content_block": content_block})

    def chunk(self, chunk: ChatChunk) -> bytes:
        out = b"" if self.started else self._start(chunk.get("id"))
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        choices = chunk.get("choices")
        if not choices:
            return out
        choice = choices[0]
        delta = choice.get("delta") or {}
        reasoning = delta.get("reasoning_content")
        if reasoning:
            if self.block < 0 or self.block_kind != "thinking":
                out += self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            out += _event("content_block_delta", {"type": "content_block_delta", "index": self.block,
                                                  "delta": {"type": "thinking_delta", "thinking": reasoning}})
        text = delta.get("content")
        if text:
            if self.block < 0 or self.block_kind != "text":
                out += self._open("text", {"type": "text", "text": ""})
            out += _event("content_block_delta", {"type": "content_block_delta", "index": self.block,
                                                  "delta": {"type": "text_delta", "text": text}})
        for tc in delta.get("tool_calls") or ():
            i = tc.get("index", 0)
            fn = tc.get("function") or {}
            block = self.tools.get(i)
            if block is None:
                out += self._open("tool", {"type": "tool_use", "id": tc.get("id") or new_id("toolu_"),
                                           "name": fn.get("name") or "", "input": {}})
                block = self.tools[i] = self.block
            args = fn.get("arguments")
            if args:
                out += _event("content_block_delta", {"type": "content_block_delta", "index": block,
                                                      "delta": {"type": "input_json_delta", "partial_json": args}})
        if choice.get("finish_reason"):
            self.finish = choice["finish_reason"]
        return out

    def end(self) -> bytes:
        out = b"" if self.started else self._start(None)
        out += self._close()
        reason = STOP_REASONS.get(self.finish or "stop", "end_turn")
        out += _event("message_delta", {"type": "message_delta",
                                        "delta": {"stop_reason": reason, "stop_sequence": None},
                                        "usage": anthropic_usage(self.usage)})
        return out + _MESSAGE_STOP

    def error(self, err: GatewayError) -> bytes:
        return _event("error", _error_body(err))


class _MessagesTap(NativeTap):
    """Pass-through of an Anthropic stream: usage from ``message_start`` and the
    cumulative ``message_delta``, the ``error`` event, and ``message_stop``."""

    def __init__(self) -> None:
        self.usage: Usage | None = None
        self.done = False
        self.error = None
        self._u: dict[str, Any] = {}

    def feed(self, event: SSEEvent) -> bool:
        name = event.event
        if name is None:  # tolerate upstreams that omit the event line
            data = event.data
            name = ("message_start" if b'"message_start"' in data else "message_delta" if b'"message_delta"'
                    in data else "message_stop" if b'"message_stop"' in data else "error"
                    if data.startswith(b'{"type":"error"') else "")
        if name == "message_delta" or name == "message_start":
            data = orjson.loads(event.data)
            u = (data.get("message") or {}).get("usage") if name == "message_start" else data.get("usage")
            self._u.update({k: v for k, v in (u or {}).items() if v is not None})
            self.usage = usage_from_anthropic(self._u)
        elif name == "message_stop":
            self.done = True
        elif name == "error":
            self.error = info_from_error(orjson.loads(event.data).get("error") or {}, 200)
        return True


# ---------------------------------------------------------------------------- errors

_ERROR_TYPES: dict[ErrorType, str] = {
    "invalid_request_error": "invalid_request_error",
    "authentication_error": "authentication_error",
    "permission_error": "permission_error",
    "not_found_error": "not_found_error",
    "rate_limit_error": "rate_limit_error",
    "api_error": "api_error",
    "overloaded_error": "overloaded_error",
    "timeout_error": "timeout_error",
}


def _error_body(err: GatewayError) -> dict[str, Any]:
    etype = "request_too_large" if err.status == 413 else _ERROR_TYPES.get(err.type, "api_error")
    return {"type": "error", "error": {"type": etype, "message": err.message}}


class AnthropicMessages(Dialect):
    name = "anthropic-messages"
    # Claude Code switches features on with anthropic-beta, and its SDK pins the API
    # version its requests are valid in: both must reach Anthropic with a pass-through.
    forward_headers = ("anthropic-version", "anthropic-beta")

    def parse(self, body: bytes) -> Ingress:
        req = parse_request(body)
        return Ingress(req, req["model"], bool(req.get("stream")), True)

    def to_canonical(self, ingress: Ingress) -> ChatRequest:
        return to_canonical(ingress.body)

    def from_canonical(self, resp: ChatResponse, model: str) -> dict[str, Any]:
        return from_canonical(resp, model)

    def stream_encoder(self, model: str, include_usage: bool) -> StreamEncoder:
        return _MessagesEncoder(model)

    def encoder_for(self, ingress: Ingress) -> StreamEncoder:
        return _MessagesEncoder(ingress.model, lambda: estimate_messages_tokens(ingress.body))

    def render_error(self, err: GatewayError) -> bytes:
        return orjson.dumps(_error_body(err))

    def native_usage(self, body: dict[str, Any]) -> Usage | None:
        return usage_from_anthropic(body.get("usage")) if body.get("usage") else None

    def native_tap(self, include_usage: bool) -> NativeTap:
        return _MessagesTap()


__all__ = ["AnthropicMessages", "from_canonical", "parse_count_tokens", "parse_request", "to_canonical"]
