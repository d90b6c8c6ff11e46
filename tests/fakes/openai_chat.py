"""Chat Completions: request validation, reduction to a `Prompt`, and rendering.

Validation covers the mistakes a translating gateway makes (unknown top-level
fields, `max_tokens` on reasoning models, tool messages out of sequence,
`stream_options` without `stream`), with the real API's messages.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .behaviour import Prompt, Reply, ToolChoice, fragments
from .openai_wire import (
    FUNCTION_NAME,
    REASONING_MODEL,
    OpenAIError,
    below_minimum,
    content_text,
    invalid_type,
    invalid_value,
    missing,
    typed_objects,
    unknown_parameter,
)

CHAT_PARAMS = frozenset(
    [
        "model",
        "messages",
        "audio",
        "frequency_penalty",
        "function_call",
        "functions",
        "logit_bias",
        "logprobs",
        "max_completion_tokens",
        "max_tokens",
        "metadata",
        "modalities",
        "n",
        "parallel_tool_calls",
        "prediction",
        "presence_penalty",
        "prompt_cache_key",
        "prompt_cache_retention",
        "reasoning_effort",
        "response_format",
        "safety_identifier",
        "seed",
        "service_tier",
        "stop",
        "store",
        "stream",
        "stream_options",
        "temperature",
        "tool_choice",
        "tools",
        "top_logprobs",
        "top_p",
        "user",
        "verbosity",
        "web_search_options",
    ]
)
ROLES = ("system", "assistant", "user", "function", "tool", "developer")
USER_PARTS = ("text", "image_url", "input_audio", "file")
TEXT_ONLY = ("text",)
ASSISTANT_PARTS = ("text", "refusal")


@dataclass
class ChatRequest:
    model: str
    prompt: Prompt
    stream: bool
    include_usage: bool
    forced_tool: bool  # a named tool_choice: OpenAI then reports finish_reason "stop"
    raw: dict[str, Any] = field(default_factory=dict)


def parse_chat(body: dict[str, Any], model: str, *, strict_params: bool = True) -> ChatRequest:
    if strict_params:
        for name in body:
            if name not in CHAT_PARAMS:
                raise unknown_parameter(name)
    messages = body.get("messages")
    if messages is None:
        raise missing("messages")
    if not isinstance(messages, list):
        raise invalid_type("messages", "an array of objects", messages)
    if not messages:
        raise OpenAIError(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
            param="messages",
            code="empty_array",
        )
    prompt = Prompt()
    _read_messages(messages, prompt)
    _read_tools(body, prompt)
    _read_limits(body, model, prompt)
    stream = body.get("stream") is True
    options = body.get("stream_options")
    if options is not None and not stream:
        raise OpenAIError(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
        )
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    return ChatRequest(
        model=model,
        prompt=prompt,
        stream=stream,
        include_usage=include_usage,
        forced_tool=isinstance(prompt.tool_choice, tuple),
        raw=body,
    )


def _read_messages(messages: list[Any], prompt: Prompt) -> None:
    pending: list[str] = []  # tool_call ids of the last assistant turn still awaiting results
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise invalid_type(where, "an object", msg)
        role = msg.get("role")
        if role is None:
            raise missing(f"{where}.role")
        if role not in ROLES:
            raise invalid_value(f"{where}.role", role, ROLES)
        if role != "tool" and pending:
            raise _unanswered(i, pending)
        content = msg.get("content")
        if role == "user":
            if "content" not in msg:
                raise missing(f"{where}.content")
            text = content_text(content, f"{where}.content", USER_PARTS)
            prompt.texts.append(text)
            prompt.last_role, prompt.last_user_text, prompt.tool_results = "user", text, []
        elif role in ("system", "developer"):
            if "content" not in msg:
                raise missing(f"{where}.content")
            prompt.texts.append(content_text(content, f"{where}.content", TEXT_ONLY))
        elif role == "assistant":
            calls = msg.get("tool_calls")
            if content is None and not calls and msg.get("function_call") is None:
                raise missing(f"{where}.content")
            prompt.texts.append(content_text(content, f"{where}.content", ASSISTANT_PARTS))
            pending = _tool_call_ids(calls, where)
            prompt.last_role = "assistant"
        elif role == "tool":
            call_id = msg.get("tool_call_id")
            if call_id is None:
                raise missing(f"{where}.tool_call_id")
            if call_id not in pending:
                raise OpenAIError(
                    "Invalid parameter: messages with role 'tool' must be a response to a "
                    "preceeding message with 'tool_calls'.",
                    param=f"messages.[{i}].role",
                )
            pending.remove(call_id)
            text = content_text(content, f"{where}.content", TEXT_ONLY)
            prompt.texts.append(text)
            if prompt.last_role != "tool":
                prompt.tool_results = []
            prompt.tool_results.append(text)
            prompt.last_role = "tool"
        else:  # legacy "function" role
            prompt.texts.append(content_text(content, f"{where}.content", TEXT_ONLY))
    if pending:
        raise _unanswered(len(messages), pending)


def _unanswered(i: int, pending: list[str]) -> OpenAIError:
    return OpenAIError(
        "An assistant message with 'tool_calls' must be followed by tool messages responding to "
        "each 'tool_call_id'. The following tool_call_ids did not have response messages: " + ", ".join(pending),
        param=f"messages.[{i}].role",
    )


def _tool_call_ids(calls: Any, where: str) -> list[str]:
    if calls is None:
        return []
    if not isinstance(calls, list):
        raise invalid_type(f"{where}.tool_calls", "an array of objects", calls)
    ids: list[str] = []
    for j, call in enumerate(calls):
        at = f"{where}.tool_calls[{j}]"
        if not isinstance(call, dict):
            raise invalid_type(at, "an object", call)
        for key in ("id", "type", "function"):
            if key not in call:
                raise missing(f"{at}.{key}")
        fn = call["function"]
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise missing(f"{at}.function.name")
        if not isinstance(fn.get("arguments"), str):
            raise missing(f"{at}.function.arguments")
        ids.append(str(call["id"]))
    return ids


def _read_tools(body: dict[str, Any], prompt: Prompt) -> None:
    tools = body.get("tools")
    choice = body.get("tool_choice")
    names: list[str] = []
    if tools is not None:
        for at, tool, kind in typed_objects(tools, "tools", ("function", "custom")):
            fn = tool.get("function") if kind == "function" else tool.get("custom")
            if not isinstance(fn, dict):
                raise missing(f"{at}.{kind}")
            name = fn.get("name")
            if name is None:
                raise missing(f"{at}.{kind}.name")
            if not isinstance(name, str) or not FUNCTION_NAME.match(name):
                raise OpenAIError(
                    f"Invalid '{at}.{kind}.name': string does not match pattern. Expected a string "
                    "that matches the pattern '^[a-zA-Z0-9_-]+$'.",
                    param=f"{at}.{kind}.name",
                    code="invalid_value",
                )
            names.append(name)
    if choice is not None and not names:
        raise OpenAIError(
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
            param="tool_choice",
        )
    parsed: ToolChoice = "auto"
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise invalid_value("tool_choice", choice, ("none", "auto", "required"))
        parsed = choice
    elif isinstance(choice, dict):
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if not isinstance(name, str):
            raise missing("tool_choice.function.name")
        if name not in names:
            raise OpenAIError(
                f"Invalid value for 'tool_choice': function '{name}' not found in 'tools'.",
                param="tool_choice",
            )
        parsed = ("function", name)
    elif choice is not None:
        raise invalid_type("tool_choice", "one of a string or object", choice)
    prompt.tools = names
    prompt.tool_choice = parsed


def _read_limits(body: dict[str, Any], model: str, prompt: Prompt) -> None:
    reasoning = bool(REASONING_MODEL.match(model))
    max_tokens = body.get("max_tokens")
    max_completion = body.get("max_completion_tokens")
    if max_tokens is not None and max_completion is not None:
        raise OpenAIError(
            "Setting 'max_tokens' and 'max_completion_tokens' at the same time is not supported.",
            param="max_tokens",
        )
    if reasoning and max_tokens is not None:
        raise OpenAIError(
            "Unsupported parameter: 'max_tokens' is not supported with this model. "
            "Use 'max_completion_tokens' instead.",
            param="max_tokens",
            code="unsupported_parameter",
        )
    for name, value in (("max_tokens", max_tokens), ("max_completion_tokens", max_completion)):
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            raise invalid_type(name, "an integer", value)
        if value < 1:
            raise below_minimum(name, 1, value)
        prompt.max_tokens = value
    temperature = body.get("temperature")
    if temperature is not None:
        if not isinstance(temperature, int | float) or isinstance(temperature, bool):
            raise invalid_type("temperature", "a decimal", temperature)
        if reasoning and temperature != 1:
            raise OpenAIError(
                f"Unsupported value: 'temperature' does not support {temperature} with this model. "
                "Only the default (1) value is supported.",
                param="temperature",
                code="unsupported_value",
            )
        if temperature > 2:
            raise OpenAIError(
                "Invalid 'temperature': decimal above maximum value. Expected a value <= 2, "
                f"but got {temperature} instead.",
                param="temperature",
                code="decimal_above_max_value",
            )
    stop = body.get("stop")
    if stop is not None:
        if reasoning:
            raise OpenAIError(
                "Unsupported parameter: 'stop' is not supported with this model.",
                param="stop",
                code="unsupported_parameter",
            )
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise invalid_type("stop", "one of a string or array of strings", stop)
        if len(stops) > 4:
            raise OpenAIError(
                "Invalid 'stop': array too long. Expected an array with maximum length 4, "
                f"but got an array with length {len(stops)} instead.",
                param="stop",
                code="array_above_max_length",
            )
        prompt.stop = stops
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        prompt.json_schema = schema if isinstance(schema, dict) else {"type": "object"}


def finish_reason(reply: Reply, forced_tool: bool) -> str:
    if reply.finish == "length":
        return "length"
    if reply.tool_call is not None:
        # OpenAI reports "stop", not "tool_calls", when tool_choice names the function.
        return "stop" if forced_tool else "tool_calls"
    return "stop"


@dataclass
class ChatRender:
    """Everything needed to render one reply, for OpenAI and the Azure variant."""

    id: str
    created: int
    model: str
    fingerprint: str
    reply: Reply
    req: ChatRequest
    usage: dict[str, Any]
    call_id: str
    azure: bool = False


def usage_block(reply: Reply, *, cached_tokens: int = 0, reasoning_tokens: int = 0) -> dict[str, Any]:
    # The prompt's cached part is inside prompt_tokens, and reasoning is inside completion_tokens.
    prompt_tokens = reply.input_tokens + cached_tokens
    completion = reply.output_tokens + reasoning_tokens
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


AZURE_FILTER = {
    "hate": {"filtered": False, "severity": "safe"},
    "self_harm": {"filtered": False, "severity": "safe"},
    "sexual": {"filtered": False, "severity": "safe"},
    "violence": {"filtered": False, "severity": "safe"},
}


def completion_object(r: ChatRender) -> dict[str, Any]:
    reply = r.reply
    message: dict[str, Any] = {
        "role": "assistant",
        "content": None if reply.tool_call else reply.text,
        "refusal": None,
        "annotations": [],
    }
    if reply.tool_call:
        message["tool_calls"] = [
            {
                "id": r.call_id,
                "type": "function",
                "function": {"name": reply.tool_call.name, "arguments": reply.tool_call.arguments},
            }
        ]
    choice: dict[str, Any] = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": finish_reason(reply, r.req.forced_tool),
    }
    obj: dict[str, Any] = {
        "id": r.id,
        "object": "chat.completion",
        "created": r.created,
        "model": r.model,
        "choices": [choice],
        "usage": r.usage,
        "service_tier": "default",
        "system_fingerprint": r.fingerprint,
    }
    if r.azure:
        choice["content_filter_results"] = AZURE_FILTER
        obj["prompt_filter_results"] = [{"prompt_index": 0, "content_filter_results": AZURE_FILTER}]
        del obj["service_tier"]
    return obj


def completion_chunks(r: ChatRender) -> Iterator[dict[str, Any]]:
    """The chunk objects of a streamed completion, in order (framing is the caller's)."""
    reply = r.reply

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        if r.azure:
            choice["content_filter_results"] = {} if finish else AZURE_FILTER
        c: dict[str, Any] = {
            "id": r.id,
            "object": "chat.completion.chunk",
            "created": r.created,
            "model": r.model,
            "system_fingerprint": r.fingerprint,
            "choices": [choice],
        }
        if not r.azure:
            c["service_tier"] = "default"
        if r.req.include_usage:
            c["usage"] = None
        return c

    if r.azure:
        # Azure first sends the prompt's content-filter verdict in a chunk with no choices
        # and blank id/model: gateways must not take identity from the first chunk.
        yield {
            "choices": [],
            "created": 0,
            "id": "",
            "model": "",
            "object": "",
            "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": AZURE_FILTER}],
        }
    if reply.tool_call:
        yield chunk(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "index": 0,
                        "id": r.call_id,
                        "type": "function",
                        "function": {"name": reply.tool_call.name, "arguments": ""},
                    }
                ],
                "refusal": None,
            }
        )
        for frag in fragments(reply.tool_call.arguments):
            yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": frag}}]})
    else:
        yield chunk({"role": "assistant", "content": "", "refusal": None})
        for piece in reply.pieces:
            yield chunk({"content": piece})
    yield chunk({}, finish_reason(reply, r.req.forced_tool))
    if r.req.include_usage:
        last = chunk({})
        last["choices"] = []
        last["usage"] = r.usage
        yield last
