"""Anthropic Messages API upstream: canonical (OpenAI Chat) <-> ``POST /v1/messages``.

The translators are pure functions (``build_request``, ``parse_response``,
``error_info``) plus :class:`AnthropicStreamDecoder`; the kinds that speak this format
(``providers/anthropic.py``) bind them to a ProviderKey's URL and auth.

API version: the adapter sends ``anthropic-version: 2026-10-21``, the current one. That
version rejects ``temperature``, ``top_p`` and ``top_k`` with a 400 even at their
defaults, so translated requests drop them; a ProviderKey with ``apiVersion: 2023-06-01``
keeps the old version and the sampling parameters. Pass-through requests (Claude Code to
an Anthropic backend) go out with the caller's own ``anthropic-version`` and
``anthropic-beta`` headers.
"""

from __future__ import annotations

import re
import time
from typing import Any

import orjson

from ...canonical import (
    ChatChunk,
    ChatRequest,
    ChatResponse,
    CompletionUsage,
    Delta,
    FinishReason,
    Message,
    ToolCall,
    Usage,
    role_first,
)
from ...errors import ErrorType
from ...sse import SSEEvent
from ..base import StreamDecoder, StreamError, UpstreamErrorInfo
from ..parts import dump_arguments, new_id, parse_arguments, split_data_url, stop_list

API_VERSION = "2026-10-21"
LEGACY_API_VERSION = "2023-06-01"

# Anthropic tool_use ids must match this; OpenAI-compatible upstreams sometimes produce
# ids like "functions.get_weather:0", which Anthropic would reject.
_TOOL_ID_OK = re.compile(r"^[a-zA-Z0-9_-]+$")
_TOOL_ID_BAD = re.compile(r"[^a-zA-Z0-9_-]")
_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})

STOP_REASONS: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def default_max_tokens(model: str) -> int:
    """``max_tokens`` is required by Anthropic; OpenAI callers often omit it.

    8192 is accepted by every model since Claude 3.5; the Claude 3.0 models stop at 4096.
    """
    if model.startswith("claude-3-") and not model.startswith(("claude-3-5", "claude-3-7")):
        return 4096
    return 8192


def tool_id(value: Any) -> str:
    s = value if isinstance(value, str) and value else "toolu_missing"
    return s if _TOOL_ID_OK.match(s) else _TOOL_ID_BAD.sub("_", s)


# --------------------------------------------------------------------------- request


def _image_block(url: str) -> dict[str, Any]:
    data = split_data_url(url)
    if data is not None:
        return {"type": "image", "source": {"type": "base64", "media_type": data[0], "data": data[1]}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _user_blocks(content: Any) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in content:
        if isinstance(part, str):
            if part:
                blocks.append({"type": "text", "text": part})
            continue
        ptype = part.get("type")
        if ptype == "text" or (ptype is None and "text" in part):
            text = part.get("text") or ""
            if text:
                block: dict[str, Any] = {"type": "text", "text": text}
                if "cache_control" in part:  # some OpenAI clients mark Anthropic cache breakpoints
                    block["cache_control"] = part["cache_control"]
                blocks.append(block)
        elif ptype == "image_url":
            iu = part.get("image_url")
            url = iu.get("url") if isinstance(iu, dict) else iu
            if isinstance(url, str) and url:
                blocks.append(_image_block(url))
        elif ptype == "file":
            f = part.get("file") or {}
            data = split_data_url(f.get("file_data") or "")
            if data is not None and data[0] == "application/pdf":
                blocks.append({"type": "document",
                               "source": {"type": "base64", "media_type": data[0], "data": data[1]}})
        # input_audio, file ids and unknown parts have no Anthropic equivalent: dropped.
    return blocks


def _tool_result(msg: Message) -> dict[str, Any]:
    content = msg.get("content")
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_id(msg.get("tool_call_id"))}
    if isinstance(content, str):
        block["content"] = content
    else:
        parts = _user_blocks(content)
        block["content"] = [p for p in parts if p["type"] in ("text", "image")]
    return block


def _assistant_blocks(msg: Message) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    content = msg.get("content")
    if isinstance(content, str):
        if content:
            blocks.append({"type": "text", "text": content})
    elif content:
        for part in content:
            text = part.get("text") if isinstance(part, dict) else part
            if not text and isinstance(part, dict):
                text = part.get("refusal")
            if isinstance(text, str) and text:
                blocks.append({"type": "text", "text": text})
    for tc in msg.get("tool_calls") or ():
        fn = tc.get("function") or {}
        blocks.append({
            "type": "tool_use",
            "id": tool_id(tc.get("id")),
            "name": fn.get("name") or "",
            "input": parse_arguments(fn.get("arguments")),
        })
    return blocks


def _tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for t in tools:
        if t.get("type", "function") != "function":
            continue  # custom/built-in OpenAI tools have no Anthropic counterpart
        fn = t.get("function") or {}
        schema = fn.get("parameters") or {"type": "object", "properties": {}}
        if schema.get("type") != "object":
            schema = {"type": "object", "properties": {}}
        tool: dict[str, Any] = {"name": fn.get("name") or "", "input_schema": schema}
        if fn.get("description"):
            tool["description"] = fn["description"]
        if fn.get("strict") is True:
            tool["strict"] = True
        out.append(tool)
    return out


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    tc: dict[str, Any] | None
    if choice is None or choice == "auto":
        tc = {"type": "auto"}
    elif choice == "required":
        tc = {"type": "any"}
    elif choice == "none":
        return {"type": "none"}
    elif isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") or choice.get("name")
        tc = {"type": "tool", "name": name} if name else {"type": "auto"}
    else:
        tc = {"type": "auto"}
    if parallel is False:
        tc["disable_parallel_tool_use"] = True
    elif choice is None:
        return None  # nothing to say: leave Anthropic's default
    return tc


def build_request(req: ChatRequest, model: str, stream: bool, *, sampling: bool = False) -> dict[str, Any]:
    """Canonical request -> Messages API body. ``sampling`` keeps temperature/top_p
    (only for the legacy API version, which still accepts them)."""
    system: list[dict[str, Any]] = []
    messages: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return  # Anthropic rejects empty messages and empty text blocks
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].extend(blocks)  # Anthropic wants strict alternation
        else:
            messages.append({"role": role, "content": blocks})

    for msg in req.get("messages") or ():
        role = msg.get("role")
        if role in ("system", "developer"):
            system.extend(b for b in _user_blocks(msg.get("content")) if b["type"] == "text")
        elif role == "user":
            add("user", _user_blocks(msg.get("content")))
        elif role == "assistant":
            add("assistant", _assistant_blocks(msg))
        elif role == "tool":
            add("user", [_tool_result(msg)])
        elif role == "function":  # legacy function results carry no id to pair with
            add("user", _user_blocks(f"{msg.get('name') or 'function'} returned: {msg.get('content') or ''}"))

    body: dict[str, Any] = {"model": model, "messages": messages}
    if system:
        body["system"] = system
    max_tokens = req.get("max_completion_tokens") or req.get("max_tokens")
    body["max_tokens"] = int(max_tokens) if max_tokens else default_max_tokens(model)
    stops = [s for s in stop_list(req.get("stop")) if s.strip()]  # whitespace-only is rejected
    if stops:
        body["stop_sequences"] = stops
    if sampling:
        for k in ("temperature", "top_p"):
            if req.get(k) is not None:
                body[k] = req[k]
    tools = _tools(req.get("tools") or [])
    if tools:
        body["tools"] = tools
        tc = _tool_choice(req.get("tool_choice"), req.get("parallel_tool_calls"))
        if tc is not None:
            body["tool_choice"] = tc
    user = req.get("user") or req.get("safety_identifier")
    if isinstance(user, str) and user:
        body["metadata"] = {"user_id": user}
    rf = req.get("response_format")
    if isinstance(rf, dict) and rf.get("type") == "json_schema":
        schema = (rf.get("json_schema") or {}).get("schema")
        if isinstance(schema, dict):
            body["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
    thinking = _thinking(req.get("reasoning_effort"), model, body.get("tool_choice"))
    if thinking is not None:
        # The budget comes out of max_tokens, so the answer keeps the room it asked for;
        # thinking takes only the default sampling.
        body["thinking"] = thinking
        body["max_tokens"] += thinking["budget_tokens"]
        body.pop("temperature", None)
        body.pop("top_p", None)
    if stream:
        body["stream"] = True
    return body


# Claude models that think (3.7 Sonnet and every model since), and a budget per effort.
THINKING_MODELS = re.compile(r"^claude-(3-7|(opus|sonnet|haiku)-[4-9]|[4-9])")
THINKING_BUDGETS = {"minimal": 1024, "low": 1024, "medium": 4096, "high": 16384}


def _thinking(effort: Any, model: str, tool_choice: Any) -> dict[str, Any] | None:
    """An OpenAI reasoning effort as Anthropic extended thinking, where the model thinks and the
    request lets it (a forced tool choice does not)."""
    if not isinstance(effort, str) or effort not in THINKING_BUDGETS or not THINKING_MODELS.match(model):
        return None
    if isinstance(tool_choice, dict) and tool_choice.get("type") in ("any", "tool"):
        return None
    return {"type": "enabled", "budget_tokens": THINKING_BUDGETS[effort]}


# ---------------------------------------------------------------------- pass-through


def _unsigned(block: Any) -> bool:
    return isinstance(block, dict) and block.get("type") == "thinking" and not block.get("signature")


def signed_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` without thinking blocks that carry no signature.

    Those are other models' reasoning, which the gateway gave a Messages caller as thinking
    blocks on a translated route; Anthropic signs only Claude's own thinking and refuses any
    other sent back ("Invalid `signature` in `thinking` block"), so a conversation that moves
    to an Anthropic backend leaves them out. The list is returned as is when it has none.
    """
    if not any(m.get("role") == "assistant" and isinstance(m.get("content"), list)
               and any(_unsigned(b) for b in m["content"]) for m in messages):
        return messages
    out = []
    for m in messages:
        content = m.get("content")
        if m.get("role") == "assistant" and isinstance(content, list):
            kept = [b for b in content if not _unsigned(b)]
            if not kept:
                continue  # nothing left of the turn: Anthropic merges the user turns around it
            if len(kept) != len(content):
                m = {**m, "content": kept}
        out.append(m)
    return out


def native_request(req: dict[str, Any], model: str, stream: bool) -> dict[str, Any]:
    """A Messages caller's request as Anthropic gets it: as sent, but for the model, the stream
    flag and unsigned thinking blocks (see :func:`signed_messages`)."""
    body = dict(req)  # shallow: only top-level keys change, the caller's blocks pass untouched
    body["model"] = model
    if stream:
        body["stream"] = True
    else:
        body.pop("stream", None)
    if isinstance(body.get("messages"), list):
        body["messages"] = signed_messages(body["messages"])
    return body


# -------------------------------------------------------------------------- response


def usage_from_anthropic(u: dict[str, Any] | None) -> Usage:
    """Anthropic's ``input_tokens`` excludes cache reads and writes; canonical counts all."""
    if not u:
        return Usage()
    read = int(u.get("cache_read_input_tokens") or 0)
    write = int(u.get("cache_creation_input_tokens") or 0)
    return Usage(
        input_tokens=int(u.get("input_tokens") or 0) + read + write,
        output_tokens=int(u.get("output_tokens") or 0),
        cache_read_tokens=read,
        cache_write_tokens=write,
    )


def openai_usage(usage: Usage) -> CompletionUsage:
    """Canonical usage dict; cache writes go where the OpenAI SDK and ``usage_from_openai`` look."""
    u = usage.to_openai()
    if usage.cache_write_tokens:
        u["prompt_tokens_details"]["cache_write_tokens"] = usage.cache_write_tokens
        u["cache_creation_input_tokens"] = usage.cache_write_tokens
    return u


def parse_response(body: dict[str, Any], model: str) -> ChatResponse:
    texts: list[str] = []
    thinking: list[str] = []
    tool_calls: list[ToolCall] = []
    for block in body.get("content") or ():
        btype = block.get("type")
        if btype == "text":
            texts.append(block.get("text") or "")
        elif btype == "tool_use":
            tool_calls.append({
                "id": block.get("id") or new_id("toolu_"),
                "type": "function",
                "function": {"name": block.get("name") or "", "arguments": dump_arguments(block.get("input"))},
            })
        elif btype == "thinking":
            thinking.append(block.get("thinking") or "")
        # server tool blocks, redacted thinking: nothing an OpenAI caller could use
    message: Message = {"role": "assistant", "content": "".join(texts) if texts or not tool_calls else None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    if thinking:
        message["reasoning_content"] = "".join(thinking)
    finish = STOP_REASONS.get(body.get("stop_reason") or "end_turn", "stop")
    if tool_calls and finish == "stop":
        finish = "tool_calls"
    return {
        "id": body.get("id") or new_id("msg_"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": openai_usage(usage_from_anthropic(body.get("usage"))),
    }


class AnthropicStreamDecoder(StreamDecoder):
    """Messages API SSE events -> canonical chunks.

    Each ``tool_use`` block becomes one OpenAI tool call (its own ``index``): id and name
    first, then argument fragments. ``message_delta`` usage is cumulative, so the last
    value wins; the usage chunk goes out on ``message_stop``.
    """

    def __init__(self, model: str) -> None:
        self._model = model
        self._id = ""
        self._created = int(time.time())
        self._tools: dict[int, int] = {}  # content block index -> tool-call index
        self._role = False  # the role goes on the first delta, once it is known what comes first
        self._u: dict[str, Any] = {}
        self.usage = None
        self.done = False

    def _chunk(self, delta: Delta, finish: FinishReason | None = None) -> ChatChunk:
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    def feed(self, event: SSEEvent) -> list[ChatChunk]:
        out = self._feed(event)
        if out and not self._role:
            self._role = role_first(out)
        return out

    def _feed(self, event: SSEEvent) -> list[ChatChunk]:
        if not event.data:
            return []
        data = orjson.loads(event.data)
        etype = data.get("type")
        if etype == "content_block_delta":
            delta = data.get("delta") or {}
            dtype = delta.get("type")
            if dtype == "text_delta":
                return [self._chunk({"content": delta.get("text") or ""})]
            if dtype == "input_json_delta":
                idx = self._tools.get(data.get("index", -1))
                if idx is None or not delta.get("partial_json"):
                    return []
                return [self._chunk({"tool_calls": [{"index": idx, "function": {"arguments": delta["partial_json"]}}]})]
            if dtype == "thinking_delta":
                return [self._chunk({"reasoning_content": delta.get("thinking") or ""})]
            return []
        if etype == "content_block_start":
            block = data.get("content_block") or {}
            btype = block.get("type")
            if btype == "tool_use":
                idx = len(self._tools)
                self._tools[data.get("index", idx)] = idx
                return [self._chunk({"tool_calls": [{
                    "index": idx, "id": block.get("id") or new_id("toolu_"), "type": "function",
                    "function": {"name": block.get("name") or "", "arguments": ""},
                }]})]
            if btype == "text" and (block.get("text") or not self._role):
                return [self._chunk({"content": block.get("text") or ""})]  # the first: the role, at once
            if btype == "thinking" and not self._role:
                return [self._chunk({"reasoning_content": ""})]
            return []
        if etype == "message_start":
            msg = data.get("message") or {}
            self._id = msg.get("id") or new_id("msg_")
            self._u = dict(msg.get("usage") or {})
            return []
        if etype == "message_delta":
            self._u.update({k: v for k, v in (data.get("usage") or {}).items() if v is not None})
            reason = (data.get("delta") or {}).get("stop_reason")
            if reason is None:
                return []
            finish = STOP_REASONS.get(reason, "stop")
            if self._tools and finish == "stop":
                finish = "tool_calls"
            return [self._chunk({}, finish)]
        if etype == "message_stop":
            self.done = True
            self.usage = usage_from_anthropic(self._u)
            return [{
                "id": self._id, "object": "chat.completion.chunk", "created": self._created,
                "model": self._model, "choices": [], "usage": openai_usage(self.usage),
            }]
        if etype == "error":
            raise StreamError(info_from_error(data.get("error") or {}, 200))
        return []  # ping, content_block_stop, and event types added later


# ---------------------------------------------------------------------------- errors

_ERROR_TYPES: dict[str, ErrorType] = {
    "invalid_request_error": "invalid_request_error",
    "request_too_large": "invalid_request_error",
    "authentication_error": "authentication_error",
    "permission_error": "permission_error",
    "billing_error": "permission_error",
    "not_found_error": "not_found_error",
    "rate_limit_error": "rate_limit_error",
    "api_error": "api_error",
    "overloaded_error": "overloaded_error",
    "timeout_error": "timeout_error",
}
_RETRYABLE_TYPES = frozenset({"rate_limit_error", "api_error", "overloaded_error", "timeout_error"})


def _type_for_status(status: int) -> ErrorType:
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 404:
        return "not_found_error"
    if status == 429:
        return "rate_limit_error"
    if status == 529:
        return "overloaded_error"
    if status in (408, 504):
        return "timeout_error"
    if status >= 500:
        return "api_error"
    return "invalid_request_error"


def info_from_error(err: dict[str, Any], status: int) -> UpstreamErrorInfo:
    raw_type = err.get("type") or ""
    etype = _ERROR_TYPES.get(raw_type) or _type_for_status(status)
    retryable = status in (408, 429) or status >= 500 or raw_type in _RETRYABLE_TYPES
    return UpstreamErrorInfo(str(err.get("message") or raw_type or f"HTTP {status}"), etype, retryable)


def error_info(status: int, body: bytes) -> UpstreamErrorInfo:
    try:
        data = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError:
        data = {}
    err = data.get("error") if isinstance(data, dict) else None
    if not isinstance(err, dict):
        text = body[:300].decode("utf-8", "replace").strip()
        err = {"message": text or f"Anthropic returned HTTP {status}"}
    return info_from_error(err, status)


