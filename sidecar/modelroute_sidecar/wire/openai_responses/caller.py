"""The OpenAI Responses dialect: ``POST /v1/responses``, what Codex speaks.

Requests for an OpenAI (or OpenAI-compatible) backend pass through untouched, so
server-side state (``previous_response_id``, ``store``), reasoning items and built-in
tools keep working there. For every other backend the input items are translated to
the canonical chat form; the gateway keeps no state of its own, so a request that
leans on earlier responses gets a clear 400 instead of a silently shorter conversation.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, Literal, NamedTuple

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
from ...errors import GatewayError, bad_request
from ...sse import SSEEvent, frame
from ..base import Dialect, Ingress, NativeTap, StreamEncoder
from ..openai_chat.caller import render_openai_error
from ..openai_chat.upstream import openai_error_info
from ..openai_chat.validation import parse_json_object
from ..parts import content_text, dump_arguments, new_id, parse_arguments
from .validation import RESPONSES_REQUEST


def parse_request(body: bytes) -> dict[str, Any]:
    req = parse_json_object(body, RESPONSES_REQUEST)
    if not req["model"]:
        raise bad_request("Invalid 'model': empty string.", "model")
    return req


# --------------------------------------------------------------- request -> canonical


def _part(p: dict[str, Any]) -> dict[str, Any] | None:
    ptype = p.get("type")
    if ptype in ("input_text", "output_text", "text"):
        return {"type": "text", "text": p.get("text") or ""}
    if ptype == "refusal":
        return {"type": "text", "text": p.get("refusal") or ""}
    if ptype == "input_image":
        url = p.get("image_url")
        if isinstance(url, dict):
            url = url.get("url")
        if not url:
            return None  # file ids only mean something to OpenAI
        image: dict[str, Any] = {"url": url}
        if p.get("detail") in ("low", "high"):
            image["detail"] = p["detail"]
        return {"type": "image_url", "image_url": image}
    if ptype == "input_file" and isinstance(p.get("file_data"), str):
        data = p["file_data"]
        if not data.startswith("data:"):
            data = f"data:application/pdf;base64,{data}"
        return {"type": "file", "file": {"filename": p.get("filename") or "file.pdf", "file_data": data}}
    if ptype == "input_audio" and isinstance(p.get("input_audio"), dict):
        return {"type": "input_audio", "input_audio": p["input_audio"]}
    return None


def _user_content(content: Any) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    parts = [q for q in (_part(p) for p in content or () if isinstance(p, dict)) if q is not None]
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _output_text(output: Any) -> tuple[str, list[dict[str, Any]]]:
    """A function call's output: its text, plus any images (chat tool messages are text only)."""
    if isinstance(output, str):
        return output, []
    texts: list[str] = []
    images: list[dict[str, Any]] = []
    for p in output or ():
        q = _part(p) if isinstance(p, dict) else None
        if q is None:
            continue
        if q["type"] == "text":
            texts.append(q["text"])
        else:
            images.append(q)
    return "".join(texts), images


def input_to_messages(items: Any) -> list[Message]:
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    messages: list[Message] = []
    pending: list[dict[str, Any]] = []  # images from tool outputs, sent after the tool messages

    def flush() -> None:
        if pending:
            messages.append({"role": "user", "content": list(pending)})
            pending.clear()

    def call(call_id: str, name: str, arguments: str) -> None:
        tc: ToolCall = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
        last = messages[-1] if messages else None
        if last is not None and last["role"] == "assistant":
            last.setdefault("tool_calls", []).append(tc)  # one assistant turn: text + its calls
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [tc]})

    for item in items or ():
        itype = item.get("type") or ("message" if "role" in item else None)
        if itype in ("function_call_output", "custom_tool_call_output"):
            text, images = _output_text(item.get("output"))
            messages.append({"role": "tool", "tool_call_id": item.get("call_id") or "", "content": text})
            pending.extend(images)
            continue
        flush()
        if itype == "message":
            role = item.get("role")
            if role == "assistant":
                text = _output_text(item.get("content"))[0]
                if text:
                    messages.append({"role": "assistant", "content": text})
            elif role in ("system", "developer"):
                text = content_text(_user_content(item.get("content")))
                if text:
                    messages.append({"role": role, "content": text})
            else:
                messages.append({"role": "user", "content": _user_content(item.get("content"))})
        elif itype == "function_call":
            call(item.get("call_id") or new_id("call_"), item.get("name") or "", item.get("arguments") or "")
        elif itype == "custom_tool_call":
            call(item.get("call_id") or new_id("call_"), item.get("name") or "",
                 dump_arguments({"input": item.get("input") or ""}))
        # reasoning items (opaque to other providers), item references, built-in tool calls: dropped
    flush()
    return messages


def _tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict):
        if choice.get("type") == "function" and choice.get("name"):
            return {"type": "function", "function": {"name": choice["name"]}}
        if choice.get("type") == "allowed_tools" and choice.get("mode") in ("auto", "required"):
            return choice["mode"]
    return None


def offered_tools(req: dict[str, Any]) -> Iterator[tuple[str | None, dict[str, Any]]]:
    """(namespace, tool) of every function and custom tool the request offers: in ``tools``
    and in ``additional_tools`` input items (Codex sends its tools there), namespaces
    flattened (a call names its namespace in its own ``namespace`` field)."""
    groups: list[Any] = [req.get("tools")]
    items = req.get("input")
    if isinstance(items, list):
        groups.extend(i.get("tools") for i in items if isinstance(i, dict) and i.get("type") == "additional_tools")
    for group in groups:
        for t in group or ():
            if not isinstance(t, dict):
                continue
            if t.get("type") == "namespace" and isinstance(t.get("name"), str):
                for inner in t.get("tools") or ():
                    if isinstance(inner, dict) and inner.get("type") in ("function", "custom"):
                        yield t["name"], inner
            elif t.get("type") in ("function", "custom"):
                yield None, t


class ToolKinds(NamedTuple):
    """What a translated answer's tool calls need to look like what the caller offered."""

    custom: frozenset[str]  # freeform tools: called with a raw ``input`` string, not JSON
    namespaces: dict[str, str]  # tool name -> its namespace


def tool_kinds(req: dict[str, Any]) -> ToolKinds:
    custom: set[str] = set()
    namespaces: dict[str, str] = {}
    for ns, t in offered_tools(req):
        name = t.get("name")
        if not isinstance(name, str):
            continue
        if t.get("type") == "custom":
            custom.add(name)
        if ns is not None:
            namespaces.setdefault(name, ns)
    return ToolKinds(frozenset(custom), namespaces)


NO_TOOL_KINDS = ToolKinds(frozenset(), {})


def _chat_tool(t: dict[str, Any]) -> dict[str, Any] | None:
    if not t.get("name"):
        return None
    if t.get("type") == "custom":
        # A freeform tool takes raw text; Chat Completions only has JSON functions, so the
        # text travels as the one string member ``input`` (and comes back the same way).
        fn: dict[str, Any] = {"name": t["name"], "parameters": {
            "type": "object", "properties": {"input": {"type": "string", "description": "The tool's raw input."}},
            "required": ["input"], "additionalProperties": False}}
    else:
        fn = {"name": t["name"], "parameters": t.get("parameters") or {"type": "object", "properties": {}}}
        if t.get("strict") is not None:
            fn["strict"] = t["strict"]
    if t.get("description"):
        fn["description"] = t["description"]
    return {"type": "function", "function": fn}


_PASSED: tuple[Literal["temperature", "top_p", "user", "safety_identifier", "prompt_cache_key",
                       "parallel_tool_calls"], ...] = (
    "temperature", "top_p", "user", "safety_identifier", "prompt_cache_key", "parallel_tool_calls")


def to_canonical(req: dict[str, Any]) -> ChatRequest:
    if req.get("previous_response_id") or req.get("conversation"):
        raise bad_request(
            "'previous_response_id' and 'conversation' need the response state OpenAI keeps; this route's "
            "backend is not OpenAI and the gateway stores no responses. Send the whole conversation in "
            "'input' instead.", "previous_response_id", "unsupported_parameter")
    messages: list[Message] = []
    instructions = req.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    elif isinstance(instructions, list):
        messages.extend(input_to_messages(instructions))
    messages.extend(input_to_messages(req.get("input")))
    if not any(m["role"] != "system" for m in messages):
        raise bad_request("Missing required parameter: 'input'.", "input", "missing_required_parameter")

    out: ChatRequest = {"model": req["model"], "messages": messages}
    tools = []
    seen: set[str] = set()
    for _, t in offered_tools(req):
        tool = _chat_tool(t)
        if tool is not None and tool["function"]["name"] not in seen:
            seen.add(tool["function"]["name"])
            tools.append(tool)
        # hosted tools (web_search, file_search, code_interpreter, mcp, ...) and local_shell
        # exist only on OpenAI: dropped
    if tools:
        out["tools"] = tools
        tc = _tool_choice(req.get("tool_choice"))
        if tc is not None:
            out["tool_choice"] = tc
    if req.get("max_output_tokens"):
        out["max_completion_tokens"] = req["max_output_tokens"]
    for k in _PASSED:
        if req.get(k) is not None and (k != "parallel_tool_calls" or tools):
            out[k] = req[k]
    effort = (req.get("reasoning") or {}).get("effort")
    if isinstance(effort, str):
        out["reasoning_effort"] = effort
    fmt = (req.get("text") or {}).get("format")
    if isinstance(fmt, dict):
        if fmt.get("type") == "json_schema":
            js = {"name": fmt.get("name") or "output", "schema": fmt.get("schema") or {}}
            if fmt.get("strict") is not None:
                js["strict"] = fmt["strict"]
            out["response_format"] = {"type": "json_schema", "json_schema": js}
        elif fmt.get("type") == "json_object":
            out["response_format"] = {"type": "json_object"}
    if req.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


# -------------------------------------------------------------- canonical -> response


def responses_usage(u: CompletionUsage | None) -> dict[str, Any]:
    usage = usage_from_openai(u) or Usage()
    details = (u or {}).get("completion_tokens_details") or {}
    write = usage.cache_write_tokens or int(((u or {}).get("prompt_tokens_details") or {})
                                            .get("cache_write_tokens") or 0)
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {"cached_tokens": usage.cache_read_tokens, "cache_write_tokens": write},
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": int(details.get("reasoning_tokens") or 0)},
        "total_tokens": usage.input_tokens + usage.output_tokens,
    }


_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def response_object(rid: str, created: int, model: str, status: str, output: list[dict[str, Any]],
                    usage: dict[str, Any] | None, incomplete: str | None = None,
                    error: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "response",
        "created_at": created,
        "status": status,
        "error": error,
        "incomplete_details": {"reason": incomplete} if incomplete else None,
        "instructions": None,
        "metadata": {},
        "model": model,
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "store": False,
        "temperature": None,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": None,
        "truncation": "disabled",
        "usage": usage,
    }


def response_id(canonical_id: Any) -> str:
    s = str(canonical_id or "")
    return s if s.startswith("resp_") else "resp_" + (s.removeprefix("chatcmpl-") or new_id(""))


def call_item(tc_id: Any, name: str, arguments: str, kinds: ToolKinds, status: str = "completed") -> dict[str, Any]:
    """A canonical tool call as the Responses item the caller's tool expects."""
    item: dict[str, Any]
    if name in kinds.custom:
        raw = parse_arguments(arguments).get("input")
        item = {"type": "custom_tool_call", "id": new_id("ctc_"), "call_id": tc_id or new_id("call_"), "name": name,
                "input": raw if isinstance(raw, str) else (arguments or ""), "status": status}
    else:
        item = {"type": "function_call", "id": new_id("fc_"), "call_id": tc_id or new_id("call_"), "name": name,
                "arguments": arguments or "", "status": status}
    ns = kinds.namespaces.get(name)
    if ns is not None:
        item["namespace"] = ns
    return item


def from_canonical(resp: ChatResponse, model: str, kinds: ToolKinds = NO_TOOL_KINDS) -> dict[str, Any]:
    choice = (resp.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    incomplete = _INCOMPLETE.get(choice.get("finish_reason") or "stop")
    output: list[dict[str, Any]] = []
    reasoning = msg.get("reasoning_content")
    if isinstance(reasoning, str) and reasoning:
        output.append({"type": "reasoning", "id": new_id("rs_"),
                       "summary": [{"type": "summary_text", "text": reasoning}]})
    text = content_text(msg.get("content"))
    if text or msg.get("refusal"):
        part = _text_part(text) if text else {"type": "refusal", "refusal": msg["refusal"]}
        output.append({"type": "message", "id": new_id("msg_"), "status": "incomplete" if incomplete else "completed",
                       "role": "assistant", "content": [part]})
    for tc in msg.get("tool_calls") or ():
        fn = tc.get("function") or {}
        output.append(call_item(tc.get("id"), fn.get("name") or "", fn.get("arguments") or "", kinds))
    return response_object(response_id(resp.get("id")), int(resp.get("created") or time.time()), model,
                           "incomplete" if incomplete else "completed", output,
                           responses_usage(resp.get("usage")), incomplete)


# -------------------------------------------------------------------------- streaming


class _ResponsesEncoder(StreamEncoder):
    """Canonical chunks -> the Responses API's typed events, numbered in order.

    Output items open on their first delta and close (``*.done`` events) when the next
    item starts or the stream ends; the closing event carries every item and the usage.
    """

    def __init__(self, model: str, kinds: ToolKinds = NO_TOOL_KINDS) -> None:
        self.model = model
        self.kinds = kinds
        self.seq = 0
        self.rid = ""
        self.created = 0
        self.output: list[dict[str, Any]] = []  # finished items
        self.item: dict[str, Any] | None = None  # the open item
        self.text: list[str] = []
        self.args: list[str] = []
        self.tools: dict[int, int] = {}  # canonical tool-call index -> output index
        self.finish: str | None = None
        self.usage: CompletionUsage | None = None

    def _ev(self, etype: str, payload: dict[str, Any]) -> bytes:
        payload["type"] = etype
        payload["sequence_number"] = self.seq
        self.seq += 1
        return frame(orjson.dumps(payload), etype)

    def _start(self, chunk_id: Any, created: Any) -> bytes:
        self.rid = response_id(chunk_id)
        self.created = int(created or time.time())
        skeleton = response_object(self.rid, self.created, self.model, "in_progress", [], None)
        return (self._ev("response.created", {"response": skeleton})
                + self._ev("response.in_progress", {"response": skeleton}))

    def _close(self, incomplete: bool = False) -> bytes:
        item = self.item
        if item is None:
            return b""
        self.item = None
        index = len(self.output)
        ref = {"item_id": item["id"], "output_index": index}
        if item["type"] == "message":
            text = "".join(self.text)
            part = _text_part(text)
            done = {**item, "status": "incomplete" if incomplete else "completed", "content": [part]}
            out = (self._ev("response.output_text.done", {**ref, "content_index": 0, "text": text, "logprobs": []})
                   + self._ev("response.content_part.done", {**ref, "content_index": 0, "part": part}))
        elif item["type"] == "reasoning":
            text = "".join(self.text)
            part = {"type": "summary_text", "text": text}
            done = {**item, "summary": [part]}
            ref = {**ref, "summary_index": 0}
            out = (self._ev("response.reasoning_summary_text.done", {**ref, "text": text})
                   + self._ev("response.reasoning_summary_part.done", {**ref, "part": part}))
        elif item["type"] == "custom_tool_call":
            # Arguments arrive as JSON fragments of {"input": ...}: the raw input is known at the end.
            done = call_item(item["call_id"], item["name"], "".join(self.args), self.kinds)
            done["id"] = item["id"]
            out = (self._ev("response.custom_tool_call_input.delta", {**ref, "delta": done["input"]})
                   + self._ev("response.custom_tool_call_input.done", {**ref, "input": done["input"]}))
        else:
            args = "".join(self.args)
            done = {**item, "status": "completed", "arguments": args}
            out = self._ev("response.function_call_arguments.done",
                           {**ref, "name": item["name"], "arguments": args})
        self.output.append(done)
        return out + self._ev("response.output_item.done", {"output_index": index, "item": done})

    def _open(self, item: dict[str, Any]) -> bytes:
        out = self._close()
        self.item = item
        self.text, self.args = [], []
        out += self._ev("response.output_item.added", {"output_index": len(self.output), "item": item})
        if item["type"] == "message":
            out += self._ev("response.content_part.added", {"item_id": item["id"], "output_index": len(self.output),
                                                            "content_index": 0, "part": _text_part("")})
        elif item["type"] == "reasoning":
            out += self._ev("response.reasoning_summary_part.added", {
                "item_id": item["id"], "output_index": len(self.output), "summary_index": 0,
                "part": {"type": "summary_text", "text": ""}})
        return out

    def chunk(self, chunk: ChatChunk) -> bytes:
        out = b"" if self.rid else self._start(chunk.get("id"), chunk.get("created"))
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        choices = chunk.get("choices")
        if not choices:
            return out
        choice = choices[0]
        delta = choice.get("delta") or {}
        reasoning = delta.get("reasoning_content")
        if reasoning:
            # The upstream's reasoning (Anthropic thinking, Gemini thought summaries) as a
            # reasoning item's summary; it carries no encrypted content to send back.
            if self.item is None or self.item["type"] != "reasoning":
                out += self._open({"id": new_id("rs_"), "type": "reasoning", "summary": []})
            assert self.item is not None
            self.text.append(reasoning)
            out += self._ev("response.reasoning_summary_text.delta", {
                "item_id": self.item["id"], "output_index": len(self.output), "summary_index": 0, "delta": reasoning})
        text = delta.get("content")
        if text:
            if self.item is None or self.item["type"] != "message":
                out += self._open({"id": new_id("msg_"), "type": "message", "status": "in_progress",
                                   "role": "assistant", "content": []})
            assert self.item is not None
            self.text.append(text)
            out += self._ev("response.output_text.delta", {"item_id": self.item["id"], "output_index": len(self.output),
                                                           "content_index": 0, "delta": text, "logprobs": []})
        for tc in delta.get("tool_calls") or ():
            i = tc.get("index", 0)
            fn = tc.get("function") or {}
            if i not in self.tools:
                out += self._open(call_item(tc.get("id"), fn.get("name") or "", "", self.kinds, "in_progress"))
                self.tools[i] = len(self.output)
            args = fn.get("arguments")
            # A call's fragments arrive before the next call starts; a stray late one
            # (never seen from real upstreams) is dropped rather than misattributed.
            if args and self.item is not None and self.tools[i] == len(self.output):
                self.args.append(args)
                if self.item["type"] == "function_call":
                    out += self._ev("response.function_call_arguments.delta",
                                    {"item_id": self.item["id"], "output_index": len(self.output), "delta": args})
        if choice.get("finish_reason"):
            self.finish = choice["finish_reason"]
        return out

    def end(self) -> bytes:
        out = b"" if self.rid else self._start(None, None)
        incomplete = _INCOMPLETE.get(self.finish or "stop")
        out += self._close(incomplete is not None)
        final = response_object(self.rid, self.created, self.model, "incomplete" if incomplete else "completed",
                                self.output, responses_usage(self.usage), incomplete)
        return out + self._ev("response.incomplete" if incomplete else "response.completed", {"response": final})

    def error(self, err: GatewayError) -> bytes:
        out = b"" if self.rid else self._start(None, None)
        code = "rate_limit_exceeded" if err.type == "rate_limit_error" else "server_error"
        failed = response_object(self.rid, self.created, self.model, "failed", self.output, None,
                                 error={"code": code, "message": err.message})
        return (out + self._ev("error", {"code": err.code or code, "message": err.message, "param": err.param})
                + self._ev("response.failed", {"response": failed}))


def usage_from_responses(u: dict[str, Any] | None) -> Usage | None:
    if not u:
        return None
    details = u.get("input_tokens_details") or {}
    return Usage(
        input_tokens=int(u.get("input_tokens") or 0),
        output_tokens=int(u.get("output_tokens") or 0),
        cache_read_tokens=int(details.get("cached_tokens") or 0),
        cache_write_tokens=int(details.get("cache_write_tokens") or 0),
    )


_TERMINAL = (b'"response.completed"', b'"response.incomplete"', b'"response.failed"')


class _ResponsesTap(NativeTap):
    """Pass-through of an OpenAI Responses stream: usage from the terminal event, errors."""

    def __init__(self) -> None:
        self.usage: Usage | None = None
        self.done = False
        self.error = None

    def feed(self, event: SSEEvent) -> bool:
        name = event.event
        data = event.data
        if name is not None and not name.startswith(("response.completed", "response.incomplete",
                                                     "response.failed", "error")):
            return True  # the many delta events: no parsing
        if name is None and not (data.startswith(b'{"type":"error"') or any(t in data[:64] for t in _TERMINAL)):
            return True
        payload = orjson.loads(data)
        etype = payload.get("type") or name
        if etype == "error":
            self.error = openai_error_info(502, orjson.dumps({"error": payload}))
        elif etype in ("response.completed", "response.incomplete", "response.failed"):
            response = payload.get("response") or {}
            self.usage = usage_from_responses(response.get("usage"))
            self.done = True
            if etype == "response.failed":
                err = response.get("error") or {}
                self.error = openai_error_info(502, orjson.dumps({"error": err}))
        return True


class OpenAIResponses(Dialect):
    name = "openai-responses"

    def parse(self, body: bytes) -> Ingress:
        req = parse_request(body)
        return Ingress(req, req["model"], bool(req.get("stream")), True)

    def to_canonical(self, ingress: Ingress) -> ChatRequest:
        return to_canonical(ingress.body)

    def from_canonical(self, resp: ChatResponse, model: str) -> dict[str, Any]:
        return from_canonical(resp, model)

    def response_for(self, resp: ChatResponse, ingress: Ingress) -> dict[str, Any]:
        return from_canonical(resp, ingress.model, tool_kinds(ingress.body))

    def stream_encoder(self, model: str, include_usage: bool) -> StreamEncoder:
        return _ResponsesEncoder(model)

    def encoder_for(self, ingress: Ingress) -> StreamEncoder:
        return _ResponsesEncoder(ingress.model, tool_kinds(ingress.body))

    def render_error(self, err: GatewayError) -> bytes:
        return render_openai_error(err)

    def native_usage(self, body: dict[str, Any]) -> Usage | None:
        return usage_from_responses(body.get("usage"))

    def native_tap(self, include_usage: bool) -> NativeTap:
        return _ResponsesTap()


__all__ = ["OpenAIResponses", "from_canonical", "parse_request", "to_canonical"]
