"""OpenAI Responses API (`POST /v1/responses`): validation, `Prompt`, and rendering.

The Responses API differs from Chat Completions in ways a gateway must get right:
flat function tools (`{"type": "function", "name": ...}`), `call_id` on calls and
outputs, `max_output_tokens >= 16`, and typed SSE events with `sequence_number`
and no `[DONE]` terminator.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .base import rand_id
from .behaviour import IMAGE_TEXT, Prompt, Reply, ToolChoice, fragments
from .openai_wire import (
    OpenAIError,
    below_minimum,
    invalid_type,
    invalid_value,
    missing,
    typed_objects,
    unknown_parameter,
)

RESPONSES_PARAMS = frozenset(
    [
        "background",
        "client_metadata",
        "context_management",
        "conversation",
        "include",
        "input",
        "instructions",
        "max_output_tokens",
        "max_tool_calls",
        "metadata",
        "model",
        "parallel_tool_calls",
        "previous_response_id",
        "prompt",
        "prompt_cache_key",
        "prompt_cache_retention",
        "reasoning",
        "safety_identifier",
        "service_tier",
        "store",
        "stream",
        "stream_options",
        "temperature",
        "text",
        "tool_choice",
        "tools",
        "top_logprobs",
        "top_p",
        "truncation",
        "user",
    ]
)
MESSAGE_ROLES = ("user", "assistant", "system", "developer")
INPUT_PARTS = ("input_text", "input_image", "input_file", "input_audio", "output_text", "refusal")


@dataclass
class ResponsesRequest:
    model: str
    prompt: Prompt
    stream: bool
    body: dict[str, Any]
    custom_tools: frozenset[str] = frozenset()  # freeform tools: called with raw `input`, not JSON
    namespaces: dict[str, str] | None = None  # tool name -> the namespace it was offered in


def hex_id(prefix: str) -> str:
    return prefix + secrets.token_hex(24)


def parse_responses(body: dict[str, Any], model: str, *, strict_params: bool = True) -> ResponsesRequest:
    if strict_params:
        for name in body:
            if name not in RESPONSES_PARAMS:
                raise unknown_parameter(name)
    prompt = Prompt()
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise invalid_type("instructions", "a string", instructions)
        prompt.texts.append(instructions)
    offered: list[dict[str, Any]] = []  # tools added by `additional_tools` input items
    _read_input(body.get("input"), prompt, has_previous=body.get("previous_response_id") is not None,
                offered=offered)
    custom, namespaces = _read_tools(body, prompt, offered)
    limit = body.get("max_output_tokens")
    if limit is not None:
        if not isinstance(limit, int) or isinstance(limit, bool):
            raise invalid_type("max_output_tokens", "an integer", limit)
        if limit < 16:
            raise below_minimum("max_output_tokens", 16, limit)
        prompt.max_tokens = limit
    return ResponsesRequest(model=model, prompt=prompt, stream=body.get("stream") is True, body=body,
                            custom_tools=frozenset(custom), namespaces=namespaces)


def _parts_text(content: Any, param: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid_type(param, "one of a string or array of objects", content)
    texts: list[str] = []
    for at, part, kind in typed_objects(content, param, INPUT_PARTS):
        if kind in ("input_text", "output_text"):
            if not isinstance(part.get("text"), str):
                raise missing(f"{at}.text")
            texts.append(part["text"])
        elif kind == "refusal":
            texts.append(str(part.get("refusal", "")))
        elif kind == "input_image":
            texts.append(IMAGE_TEXT)
    return " ".join(texts)


def _read_input(items: Any, prompt: Prompt, *, has_previous: bool, offered: list[dict[str, Any]]) -> None:
    if items is None:
        return
    if isinstance(items, str):
        prompt.texts.append(items)
        prompt.last_role, prompt.last_user_text = "user", items
        return
    if not isinstance(items, list):
        raise invalid_type("input", "one of a string or array of input items", items)
    calls: set[str] = set()
    for i, item in enumerate(items):
        at = f"input[{i}]"
        if not isinstance(item, dict):
            raise invalid_type(at, "an object", item)
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            if role not in MESSAGE_ROLES:
                raise invalid_value(f"{at}.role", role, MESSAGE_ROLES)
            if "content" not in item:
                raise missing(f"{at}.content")
            text = _parts_text(item["content"], f"{at}.content")
            prompt.texts.append(text)
            if role == "user":
                prompt.last_role, prompt.last_user_text = "user", text
            elif role == "assistant":
                prompt.last_role = "assistant"
        elif kind in ("function_call", "custom_tool_call"):
            for key in ("call_id", "name", "arguments" if kind == "function_call" else "input"):
                if key not in item:
                    raise missing(f"{at}.{key}")
            calls.add(str(item["call_id"]))
            prompt.last_role = "assistant"
        elif kind == "additional_tools":
            # Tools added at this point of the conversation (Codex sends its tools this way).
            tools = item.get("tools")
            if not isinstance(tools, list):
                raise missing(f"{at}.tools")
            offered.extend(t for t in tools if isinstance(t, dict))
        elif kind in ("function_call_output", "custom_tool_call_output"):
            for key in ("call_id", "output"):
                if key not in item:
                    raise missing(f"{at}.{key}")
            if item["call_id"] not in calls and not has_previous:
                raise OpenAIError(
                    f"No tool call found for function call output with call_id {item['call_id']}.",
                    param="input",
                )
            text = _parts_text(item["output"], f"{at}.output")
            prompt.texts.append(text)
            if prompt.last_role != "tool":
                prompt.tool_results = []
            prompt.tool_results.append(text)
            prompt.last_role = "tool"
        elif kind is None:
            raise missing(f"{at}.type")
        # Other item types (reasoning, item_reference, built-in tool calls) carry no text we count.


def _read_tools(body: dict[str, Any], prompt: Prompt,
                offered: list[dict[str, Any]]) -> tuple[set[str], dict[str, str]]:
    tools = body.get("tools")
    names: list[str] = []
    custom: set[str] = set()
    namespaces: dict[str, str] = {}

    def read(items: Any, param: str, namespace: str | None) -> None:
        for at, tool, kind in typed_objects(items, param):
            if kind == "namespace" and namespace is None:
                # A group of function/custom tools; calls name it in their `namespace`.
                if not isinstance(tool.get("name"), str):
                    raise missing(f"{at}.name")
                read(tool.get("tools"), f"{at}.tools", tool["name"])
                continue
            if kind not in ("function", "custom"):
                continue  # built-in tools: accepted, never called by this model
            # The Chat Completions nesting ({"function": {...}}) is rejected by the real API.
            if not isinstance(tool.get("name"), str):
                raise missing(f"{at}.name")
            names.append(tool["name"])
            if kind == "custom":
                custom.add(tool["name"])
            if namespace is not None:
                namespaces[tool["name"]] = namespace

    if tools is not None:
        read(tools, "tools", None)
    if offered:
        read(offered, "input.tools", None)
    choice = body.get("tool_choice")
    parsed: ToolChoice = "auto"
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise invalid_value("tool_choice", choice, ("none", "auto", "required"))
        parsed = choice
    elif isinstance(choice, dict) and choice.get("type") == "function":
        if not isinstance(choice.get("name"), str):
            raise missing("tool_choice.name")
        parsed = ("function", choice["name"])
    prompt.tools = names
    prompt.tool_choice = parsed
    return custom, namespaces


@dataclass
class ResponsesRender:
    id: str
    created_at: int
    model: str
    reply: Reply
    req: ResponsesRequest
    item_id: str
    call_id: str
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def incomplete(self) -> bool:
        return self.reply.finish == "length"

    def usage(self) -> dict[str, Any]:
        inp = self.reply.input_tokens + self.cached_tokens
        out = self.reply.output_tokens + self.reasoning_tokens
        return {
            "input_tokens": inp,
            "input_tokens_details": {"cached_tokens": self.cached_tokens},
            "output_tokens": out,
            "output_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
            "total_tokens": inp + out,
        }

    @property
    def custom(self) -> bool:
        call = self.reply.tool_call
        return call is not None and call.name in self.req.custom_tools

    @property
    def call_input(self) -> str:
        """A call's arguments JSON, or a freeform tool's raw input."""
        call = self.reply.tool_call
        assert call is not None
        return str(call.args.get("input", "")) if self.custom else call.arguments

    def item(self, done: bool) -> dict[str, Any]:
        call = self.reply.tool_call
        if call is not None:
            item: dict[str, Any] = {
                "id": self.item_id,
                "type": "custom_tool_call" if self.custom else "function_call",
                "status": "completed" if done else "in_progress",
                "input" if self.custom else "arguments": self.call_input if done else "",
                "call_id": self.call_id,
                "name": call.name,
            }
            namespace = (self.req.namespaces or {}).get(call.name)
            if namespace is not None:
                item["namespace"] = namespace
            return item
        status = ("incomplete" if self.incomplete else "completed") if done else "in_progress"
        return {
            "id": self.item_id,
            "type": "message",
            "status": status,
            "content": [self.text_part(self.reply.text)] if done else [],
            "role": "assistant",
        }

    @staticmethod
    def text_part(text: str) -> dict[str, Any]:
        return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}

    def response(self, done: bool) -> dict[str, Any]:
        body = self.req.body
        status = ("incomplete" if self.incomplete else "completed") if done else "in_progress"
        choice = body.get("tool_choice", "auto")
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": False,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if done and self.incomplete else None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "max_tool_calls": None,
            "model": self.model,
            "output": [self.item(True)] if done else [],
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": {"effort": None, "summary": None},
            "service_tier": "default",
            "store": body.get("store", True),
            "temperature": body.get("temperature", 1.0),
            "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": choice,
            "tools": body.get("tools", []),
            "top_logprobs": 0,
            "top_p": body.get("top_p", 1.0),
            "truncation": "disabled",
            "usage": self.usage() if done else None,
            "user": None,
            "metadata": body.get("metadata") or {},
        }

    def events(self) -> Iterator[dict[str, Any]]:
        """Typed stream events without sequence numbers (the framer numbers them)."""
        yield {"type": "response.created", "response": self.response(False)}
        yield {"type": "response.in_progress", "response": self.response(False)}
        yield {"type": "response.output_item.added", "output_index": 0, "item": self.item(False)}
        call = self.reply.tool_call
        ref = {"item_id": self.item_id, "output_index": 0}
        if call is not None and self.custom:
            for frag in fragments(self.call_input):
                yield {"type": "response.custom_tool_call_input.delta", **ref, "delta": frag}
            yield {"type": "response.custom_tool_call_input.done", **ref, "input": self.call_input}
        elif call is not None:
            for frag in fragments(call.arguments):
                yield {"type": "response.function_call_arguments.delta", **ref, "delta": frag}
            yield {
                "type": "response.function_call_arguments.done",
                **ref,
                "name": call.name,
                "arguments": call.arguments,
            }
        else:
            at = {**ref, "content_index": 0}
            yield {"type": "response.content_part.added", **at, "part": self.text_part("")}
            for piece in self.reply.pieces:
                yield {"type": "response.output_text.delta", **at, "delta": piece, "logprobs": []}
            yield {"type": "response.output_text.done", **at, "text": self.reply.text, "logprobs": []}
            yield {"type": "response.content_part.done", **at, "part": self.text_part(self.reply.text)}
        yield {"type": "response.output_item.done", "output_index": 0, "item": self.item(True)}
        final = "response.incomplete" if self.incomplete else "response.completed"
        yield {"type": final, "response": self.response(True)}


def new_render(req: ResponsesRequest, reply: Reply, created_at: int, **usage: int) -> ResponsesRender:
    return ResponsesRender(
        id=hex_id("resp_"),
        created_at=created_at,
        model=req.model,
        reply=reply,
        req=req,
        item_id=hex_id(("ctc_" if reply.tool_call.name in req.custom_tools else "fc_") if reply.tool_call else "msg_"),
        call_id=rand_id("call_"),
        **usage,
    )
