"""The Converse format toward Bedrock: canonical request -> Converse request; Converse
responses, ConverseStream events and errors -> canonical.

Wire facts (Bedrock API reference, ``Converse``):

* Content is a list of one-key blocks: ``{"text"}``, ``{"image": {"format", "source":
  {"bytes"}}}``, ``{"document"}``, ``{"toolUse": {"toolUseId", "name", "input"}}``,
  ``{"toolResult": {"toolUseId", "content", "status"}}``, ``{"reasoningContent"}``,
  ``{"cachePoint": {"type": "default"}}``. Blob ``bytes`` are base64 in JSON.
* Roles alternate strictly (user, assistant); tool results are user content.
* Blocks that use tools need a ``toolConfig`` in the same request, even when no tool may be
  called any more.
* ``usage.inputTokens`` excludes ``cacheReadInputTokens``/``cacheWriteInputTokens``
  (as Anthropic's ``input_tokens`` does); canonical input counts all three.
* Images come as bytes or an S3 location: Converse fetches no HTTP URL.
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
from ...errors import ErrorType, bad_request
from ...sse import SSEEvent
from ..base import StreamDecoder, UpstreamErrorInfo
from ..parts import content_text, dump_arguments, new_id, parse_arguments, split_data_url, stop_list

STOP_REASONS: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "tool_calls",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}

_IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg", "image/gif": "gif",
                  "image/webp": "webp"}
_DOCUMENT_FORMATS = {"application/pdf": "pdf", "text/csv": "csv", "application/msword": "doc",
                     "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
                     "application/vnd.ms-excel": "xls",
                     "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "xlsx",
                     "text/html": "html", "text/plain": "txt", "text/markdown": "md"}
# toolUseId: [a-zA-Z0-9_-]+, at most 64 characters.
_TOOL_ID_BAD = re.compile(r"[^a-zA-Z0-9_-]")
_CACHE_POINT = {"cachePoint": {"type": "default"}}


def tool_use_id(value: Any) -> str:
    s = value if isinstance(value, str) and value else "tooluse_missing"
    return _TOOL_ID_BAD.sub("_", s)[:64]


# --------------------------------------------------------------------------- request


def _image(url: str) -> dict[str, Any]:
    if url.startswith("s3://"):
        return {"image": {"format": _IMAGE_FORMATS.get(_mime_of(url), "png"), "source": {"s3Location": {"uri": url}}}}
    data = split_data_url(url)
    if data is None:
        raise bad_request("Bedrock takes images as base64 data URLs or s3:// URIs, not as links it would fetch",
                          "messages", "unsupported_image_url")
    fmt = _IMAGE_FORMATS.get(data[0].lower())
    if fmt is None:
        raise bad_request(f"Bedrock takes png, jpeg, gif and webp images, not {data[0]}", "messages",
                          "unsupported_image_type")
    return {"image": {"format": fmt, "source": {"bytes": data[1]}}}


def _mime_of(url: str) -> str:
    ext = url.rsplit(".", 1)[-1].lower()
    return {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "gif": "image/gif",
            "webp": "image/webp"}.get(ext, "")


def _user_blocks(content: Any, documents: list[int]) -> list[dict[str, Any]]:
    if content is None:
        return []
    # Converse refuses blank text ("The text field in the ContentBlock ... is blank"): whitespace
    # alone is left out, as empty text is.
    if isinstance(content, str):
        return [{"text": content}] if content.strip() else []
    blocks: list[dict[str, Any]] = []
    for part in content:
        if isinstance(part, str):
            if part.strip():
                blocks.append({"text": part})
            continue
        ptype = part.get("type")
        if ptype == "text" or (ptype is None and "text" in part):
            text = part.get("text") or ""
            if isinstance(text, str) and text.strip():
                blocks.append({"text": text})
                if "cache_control" in part:  # an Anthropic cache breakpoint: Converse's cachePoint
                    blocks.append(_CACHE_POINT)
        elif ptype == "image_url":
            iu = part.get("image_url")
            url = iu.get("url") if isinstance(iu, dict) else iu
            if isinstance(url, str) and url:
                blocks.append(_image(url))
        elif ptype == "file":
            f = part.get("file") or {}
            data = split_data_url(f.get("file_data") or "")
            fmt = _DOCUMENT_FORMATS.get(data[0].lower()) if data is not None else None
            if data is not None and fmt is not None:
                # Names: letters, digits, spaces, hyphens, parentheses, brackets; unique per request.
                documents[0] += 1
                blocks.append({"document": {"format": fmt, "name": f"document-{documents[0]}",
                                            "source": {"bytes": data[1]}}})
        # input_audio and file ids have no Converse equivalent: dropped.
    return blocks


def _tool_result(msg: Message, documents: list[int]) -> dict[str, Any]:
    content = msg.get("content")
    if isinstance(content, str):
        inner: list[dict[str, Any]] = [{"text": content}] if content.strip() else []
    else:
        inner = [b for b in _user_blocks(content, documents) if "text" in b or "image" in b or "document" in b]
    # A tool that printed nothing: its result still needs a block, and blank text is refused.
    return {"toolResult": {"toolUseId": tool_use_id(msg.get("tool_call_id")),
                           "content": inner or [{"text": "(empty)"}]}}


def _assistant_blocks(msg: Message) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    text = content_text(msg.get("content"))
    if text.strip():
        blocks.append({"text": text})
    for tc in msg.get("tool_calls") or ():
        fn = tc.get("function") or {}
        blocks.append({"toolUse": {"toolUseId": tool_use_id(tc.get("id")), "name": fn.get("name") or "",
                                   "input": parse_arguments(fn.get("arguments"))}})
    return blocks


def _tool_specs(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for t in tools:
        if t.get("type", "function") != "function":
            continue  # OpenAI's built-in tools have no Converse counterpart
        fn = t.get("function") or {}
        schema = fn.get("parameters")
        if not isinstance(schema, dict) or schema.get("type") != "object":
            schema = {"type": "object", "properties": {}}
        spec: dict[str, Any] = {"name": fn.get("name") or "", "inputSchema": {"json": schema}}
        if fn.get("description"):
            spec["description"] = fn["description"]
        out.append({"toolSpec": spec})
    return out


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice == "required":
        return {"any": {}}
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") or choice.get("name")
        if name:
            return {"tool": {"name": name}}
    return None  # auto is Converse's default; "none" is handled by the caller


def build_request(req: ChatRequest, *, thinking: dict[str, Any] | None = None) -> dict[str, Any]:
    """Canonical request -> Converse body. ``thinking`` (Anthropic's extended-thinking object,
    for Claude models only) goes to ``additionalModelRequestFields``."""
    system: list[dict[str, Any]] = []
    messages: list[dict[str, Any]] = []
    documents = [0]
    used_tools: set[str] = set()

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return  # Converse rejects empty content
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": role, "content": blocks})

    for msg in req.get("messages") or ():
        role = msg.get("role")
        if role in ("system", "developer"):
            system.extend(b for b in _user_blocks(msg.get("content"), documents) if "text" in b or "cachePoint" in b)
        elif role == "user":
            add("user", _user_blocks(msg.get("content"), documents))
        elif role == "assistant":
            blocks = _assistant_blocks(msg)
            used_tools.update(b["toolUse"]["name"] for b in blocks if "toolUse" in b)
            add("assistant", blocks)
        elif role == "tool":
            add("user", [_tool_result(msg, documents)])
        elif role == "function":  # legacy function results carry no id to pair with
            add("user", [{"text": f"{msg.get('name') or 'function'} returned: {msg.get('content') or ''}"}])
    if messages and messages[0]["role"] == "assistant":
        messages.insert(0, {"role": "user", "content": [{"text": "."}]})  # Converse starts with a user turn

    body: dict[str, Any] = {"messages": messages}
    if system:
        body["system"] = system
    inference: dict[str, Any] = {}
    max_tokens = req.get("max_completion_tokens") or req.get("max_tokens")
    if max_tokens:
        inference["maxTokens"] = int(max_tokens)
    if thinking is None:
        if req.get("temperature") is not None:
            inference["temperature"] = req["temperature"]
        if req.get("top_p") is not None:
            inference["topP"] = req["top_p"]
    stops = stop_list(req.get("stop"))
    if stops:
        inference["stopSequences"] = stops
    choice = req.get("tool_choice")
    specs = _tool_specs(req.get("tools") or []) if choice != "none" else []
    if not specs and used_tools:
        # History with tool blocks needs a toolConfig naming those tools (Converse rejects it
        # otherwise); "none" or an absent tools list still has to carry them.
        kept = {s["toolSpec"]["name"]: s for s in _tool_specs(req.get("tools") or [])}
        specs = [kept.get(n) or {"toolSpec": {"name": n, "inputSchema": {"json": {"type": "object"}}}}
                 for n in sorted(used_tools)]
    if specs:
        config: dict[str, Any] = {"tools": specs}
        tc = _tool_choice(choice) if choice != "none" else None
        if tc is not None:
            config["toolChoice"] = tc
        body["toolConfig"] = config
    if thinking is not None:
        body["additionalModelRequestFields"] = {"thinking": thinking}
        inference["maxTokens"] = inference.get("maxTokens", 8192) + int(thinking.get("budget_tokens") or 0)
    if inference:
        body["inferenceConfig"] = inference
    return body


# -------------------------------------------------------------------------- response


def usage_from_converse(u: dict[str, Any] | None) -> Usage:
    if not u:
        return Usage()
    read = int(u.get("cacheReadInputTokens") or 0)
    write = int(u.get("cacheWriteInputTokens") or 0)
    return Usage(input_tokens=int(u.get("inputTokens") or 0) + read + write,
                 output_tokens=int(u.get("outputTokens") or 0), cache_read_tokens=read, cache_write_tokens=write)


def openai_usage(usage: Usage) -> CompletionUsage:
    u = usage.to_openai()
    if usage.cache_write_tokens:
        u["cache_creation_input_tokens"] = usage.cache_write_tokens
    return u


def finish_reason(stop: str | None, has_tools: bool) -> FinishReason:
    finish = STOP_REASONS.get(stop or "end_turn", "stop")
    return "tool_calls" if has_tools and finish == "stop" else finish


def parse_response(body: dict[str, Any], model: str) -> ChatResponse:
    texts: list[str] = []
    reasoning: list[str] = []
    tool_calls: list[ToolCall] = []
    message = (body.get("output") or {}).get("message") or {}
    for block in message.get("content") or ():
        if "text" in block:
            texts.append(block.get("text") or "")
        elif "toolUse" in block:
            tu = block["toolUse"] or {}
            tool_calls.append({"id": tu.get("toolUseId") or new_id("tooluse_"), "type": "function",
                               "function": {"name": tu.get("name") or "",
                                            "arguments": dump_arguments(tu.get("input"))}})
        elif "reasoningContent" in block:
            rt = (block["reasoningContent"] or {}).get("reasoningText") or {}
            if isinstance(rt.get("text"), str):
                reasoning.append(rt["text"])
    msg: Message = {"role": "assistant", "content": "".join(texts) if texts or not tool_calls else None}
    if tool_calls:
        msg["tool_calls"] = tool_calls
    if reasoning:
        msg["reasoning_content"] = "".join(reasoning)
    return {
        "id": new_id("chatcmpl-"),  # Converse answers carry no id
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": msg, "finish_reason": finish_reason(body.get("stopReason"),
                                                                                 bool(tool_calls)),
                     "logprobs": None}],
        "usage": openai_usage(usage_from_converse(body.get("usage"))),
    }


# ---------------------------------------------------------------------------- stream


class ConverseStreamDecoder(StreamDecoder):
    def __init__(self, model: str) -> None:
        self._model = model
        self._id = new_id("chatcmpl-")
        self._created = int(time.time())
        self._tools: dict[int, int] = {}  # contentBlockIndex -> tool-call index
        self._stopped = False
        self._role = False  # the role goes on the first delta, once it is known what comes first
        self.usage = None
        self.done = False

    def _chunk(self, delta: Delta, finish: FinishReason | None = None) -> ChatChunk:
        return {"id": self._id, "object": "chat.completion.chunk", "created": self._created, "model": self._model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    def feed(self, event: SSEEvent) -> list[ChatChunk]:
        out = self._feed(event)
        if out and not self._role:
            self._role = role_first(out)  # content null before a tool call, as OpenAI streams it
        return out

    def _feed(self, event: SSEEvent) -> list[ChatChunk]:
        name = event.event
        data = orjson.loads(event.data) if event.data else {}
        if not isinstance(data, dict):
            raise ValueError("a ConverseStream event that is not a JSON object")
        if name == "contentBlockDelta":
            delta = data.get("delta") or {}
            if "text" in delta:
                return [self._chunk({"content": delta.get("text") or ""})]
            if "toolUse" in delta:
                idx = self._tools.get(data.get("contentBlockIndex", -1))
                fragment = (delta.get("toolUse") or {}).get("input")
                if idx is None or not fragment:
                    return []
                return [self._chunk({"tool_calls": [{"index": idx, "function": {"arguments": fragment}}]})]
            if "reasoningContent" in delta:
                text = (delta.get("reasoningContent") or {}).get("text")
                return [self._chunk({"reasoning_content": text})] if isinstance(text, str) and text else []
            return []
        if name == "contentBlockStart":
            tu = (data.get("start") or {}).get("toolUse")
            if not isinstance(tu, dict):
                return []
            idx = len(self._tools)
            self._tools[data.get("contentBlockIndex", idx)] = idx
            return [self._chunk({"tool_calls": [{
                "index": idx, "id": tool_use_id(tu.get("toolUseId") or new_id("tooluse_")), "type": "function",
                "function": {"name": tu.get("name") or "", "arguments": ""}}]})]
        if name == "messageStart":
            return []
        if name == "messageStop":
            self._stopped = True
            return [self._chunk({}, finish_reason(data.get("stopReason"), bool(self._tools)))]
        if name == "metadata":
            self.usage = usage_from_converse(data.get("usage"))
            self.done = self._stopped
            return [{"id": self._id, "object": "chat.completion.chunk", "created": self._created,
                     "model": self._model, "choices": [], "usage": openai_usage(self.usage)}]
        return []  # contentBlockStop, and event types added later


# ---------------------------------------------------------------------------- errors

# Bedrock Runtime exception names (x-amzn-ErrorType, or :exception-type in a stream).
_EXCEPTIONS: dict[str, tuple[ErrorType, bool]] = {
    "ValidationException": ("invalid_request_error", False),
    "AccessDeniedException": ("permission_error", False),
    "UnrecognizedClientException": ("authentication_error", False),
    "InvalidSignatureException": ("authentication_error", False),
    "ExpiredTokenException": ("authentication_error", False),
    "ResourceNotFoundException": ("not_found_error", False),
    "ThrottlingException": ("rate_limit_error", True),
    "ServiceQuotaExceededException": ("rate_limit_error", True),
    "ModelNotReadyException": ("overloaded_error", True),
    "ModelTimeoutException": ("timeout_error", True),
    "ModelErrorException": ("api_error", True),
    "ModelStreamErrorException": ("api_error", True),
    "InternalServerException": ("api_error", True),
    "ServiceUnavailableException": ("overloaded_error", True),
}


def _type_for_status(status: int) -> ErrorType:
    return ("authentication_error" if status == 401 else "permission_error" if status == 403
            else "not_found_error" if status == 404 else "rate_limit_error" if status == 429
            else "timeout_error" if status in (408, 504) else "api_error" if status >= 500 or status == 424
            else "invalid_request_error")


def exception_info(name: str, message: str, status: int = 200) -> UpstreamErrorInfo:
    """An AWS exception (by its shape name) in gateway terms."""
    name = name.split(":", 1)[0]  # x-amzn-ErrorType may append ":<namespace URL>"
    name = name[:1].upper() + name[1:]  # streams name them in lowerCamelCase (throttlingException)
    etype, retryable = _EXCEPTIONS.get(name, (_type_for_status(status), False))
    retryable = retryable or status in (408, 424, 429) or status >= 500  # 424: ModelErrorException
    return UpstreamErrorInfo(message or name or f"HTTP {status}", etype, retryable)


def error_info(status: int, body: bytes) -> UpstreamErrorInfo:
    """Bedrock errors are ``{"message": ...}`` (``Message`` from some front ends) with the
    exception named in the ``x-amzn-ErrorType`` header, which the status mirrors."""
    try:
        data: Any = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError:
        data = {}
    if not isinstance(data, dict):
        data = {}
    message = data.get("message") or data.get("Message")
    if not isinstance(message, str):
        message = body[:300].decode("utf-8", "replace").strip() or f"Bedrock returned HTTP {status}"
    name = data.get("__type") if isinstance(data.get("__type"), str) else ""
    return exception_info(str(name).rsplit("#", 1)[-1], message, status)
