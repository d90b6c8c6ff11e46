"""Anthropic Messages API: request validation, reduction to a `Prompt`, rendering.

Validation messages mirror the real API's (pydantic-style `path: problem` text),
including the traps of translating from OpenAI: a `system` role inside
`messages`, unpaired `tool_use`/`tool_result`, `temperature > 1`, unknown fields.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .base import rand_id
from .behaviour import IMAGE_TEXT, Prompt, Reply, ToolChoice, fragments, split_words
from .openai_wire import FUNCTION_NAME

MESSAGE_PARAMS = frozenset(
    [
        "model",
        "messages",
        "max_tokens",
        "system",
        "metadata",
        "stop_sequences",
        "stream",
        "temperature",
        "top_k",
        "top_p",
        "tools",
        "tool_choice",
        "thinking",
        "service_tier",
        "container",
        "mcp_servers",
        "context_management",
        "output_config",
        "output_format",
        "inference_geo",
    ]
)
COUNT_PARAMS = frozenset(
    ["model", "messages", "system", "tools", "tool_choice", "thinking", "mcp_servers", "context_management"]
)
BLOCK_TYPES = [
    "text",
    "image",
    "document",
    "search_result",
    "thinking",
    "redacted_thinking",
    "tool_use",
    "tool_result",
    "server_tool_use",
    "web_search_tool_result",
    "web_fetch_tool_result",
    "code_execution_tool_result",
    "container_upload",
]
IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
THINKING_TEXT = "I will echo the user."
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_call": "tool_use", "stop_sequence": "stop_sequence"}


class AnthropicError(Exception):
    def __init__(self, message: str, *, status: int = 400, type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.type = type


@dataclass
class MessagesRequest:
    model: str
    prompt: Prompt
    stream: bool
    thinking: bool


def _require_int(body: dict[str, Any], name: str, minimum: int) -> int:
    value = body[name]
    if not isinstance(value, int) or isinstance(value, bool):
        raise AnthropicError(f"{name}: Input should be a valid integer")
    if value < minimum:
        raise AnthropicError(f"{name}: Input should be greater than or equal to {minimum}")
    return value


def parse_messages(body: Any, *, count_only: bool = False, strict_params: bool = True) -> MessagesRequest:
    if not isinstance(body, dict):
        raise AnthropicError("There was an error parsing the body of your request.")
    allowed = COUNT_PARAMS if count_only else MESSAGE_PARAMS
    if strict_params:
        for name in body:
            if name not in allowed:
                raise AnthropicError(f"{name}: Extra inputs are not permitted")
    required = ("model", "messages") if count_only else ("model", "max_tokens", "messages")
    for name in required:
        if name not in body:
            raise AnthropicError(f"{name}: Field required")
    model = body["model"]
    if not isinstance(model, str):
        raise AnthropicError("model: Input should be a valid string")
    prompt = Prompt()
    _read_system(body.get("system"), prompt)
    _read_messages(body["messages"], prompt)
    _read_tools(body, prompt)
    thinking = _read_thinking(body, prompt)
    if not count_only:
        prompt.max_tokens = _require_int(body, "max_tokens", 1)
        budget = body["thinking"].get("budget_tokens") if thinking else None
        if budget is not None and prompt.max_tokens <= budget:  # adaptive thinking has no budget
            raise AnthropicError(
                "`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our "
                "documentation at https://docs.claude.com/en/docs/build-with-claude/extended-thinking"
                "#max-tokens-and-context-window-size"
            )
        temperature = body.get("temperature")
        if temperature is not None:
            if not isinstance(temperature, int | float) or isinstance(temperature, bool):
                raise AnthropicError("temperature: Input should be a valid number")
            if temperature > 1:
                raise AnthropicError("temperature: Input should be less than or equal to 1")
            if temperature < 0:
                raise AnthropicError("temperature: Input should be greater than or equal to 0")
            if thinking and temperature != 1:
                raise AnthropicError(
                    "`temperature` may only be set to 1 when thinking is enabled. Please consult our "
                    "documentation at https://docs.claude.com/en/docs/build-with-claude/extended-thinking"
                    "#feature-compatibility"
                )
        stops = body.get("stop_sequences")
        if stops is not None:
            if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
                raise AnthropicError("stop_sequences: Input should be a valid list")
            prompt.stop = stops
    fmt = (body.get("output_config") or {}).get("format") or body.get("output_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema" and isinstance(fmt.get("schema"), dict):
        prompt.json_schema = fmt["schema"]
    return MessagesRequest(model=model, prompt=prompt, stream=body.get("stream") is True, thinking=thinking)


def _read_system(system: Any, prompt: Prompt, at: str = "system") -> None:
    if system is None:
        return
    if isinstance(system, str):
        prompt.texts.append(system)
        return
    if not isinstance(system, list):
        raise AnthropicError(f"{at}: Input should be a valid list")
    for i, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise AnthropicError(f"{at}.{i}.type: Input should be 'text'")
        if not isinstance(block.get("text"), str):
            raise AnthropicError(f"{at}.{i}.text: Field required")
        prompt.texts.append(block["text"])


def _read_messages(messages: Any, prompt: Prompt) -> None:
    if not isinstance(messages, list):
        raise AnthropicError("messages: Input should be a valid list")
    pending: list[str] = []  # tool_use ids of the previous assistant turn
    last_turn = ""  # role of the previous user/assistant message
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise AnthropicError(f"messages.{i}: Input should be a valid dictionary or object")
        role = msg.get("role")
        if role == "system":
            # Mid-conversation system messages: text instructions added right after a user
            # turn (the top-level ``system`` stays the cached prefix). They count as input
            # and leave the turn order as it was. Anywhere else the old refusal stands.
            if last_turn != "user":
                raise AnthropicError(
                    'messages: Unexpected role "system". The Messages API accepts a top-level `system` '
                    'parameter, not "system" as an input message role.'
                )
            _read_system(msg.get("content"), prompt, f"messages.{i}.content")
            continue
        last_turn = str(role)
        if role not in ("user", "assistant"):
            raise AnthropicError(f"messages.{i}.role: Input should be 'user', 'assistant' or 'system'")
        if "content" not in msg:
            raise AnthropicError(f"messages.{i}.content: Field required")
        blocks = _blocks(msg["content"], i)
        final_assistant = role == "assistant" and i == len(messages) - 1
        if not blocks and not final_assistant:
            raise AnthropicError(
                f"messages.{i}: all messages must have non-empty content except for the optional "
                "final assistant message"
            )
        results = [b for b in blocks if b.get("type") == "tool_result"]
        result_ids = [str(b.get("tool_use_id")) for b in results]
        if pending:
            missing_ids = [p for p in pending if p not in result_ids]
            if role != "user" or missing_ids:
                raise AnthropicError(
                    f"messages.{i - 1}: `tool_use` ids were found without `tool_result` blocks immediately "
                    f"after: {', '.join(missing_ids or pending)}. Each `tool_use` block must have a "
                    "corresponding `tool_result` block in the next message."
                )
        for rid in result_ids:
            if rid not in pending:
                raise AnthropicError(
                    f"messages.{i}.content.0: unexpected `tool_use_id` found in `tool_result` blocks: {rid}. "
                    "Each `tool_result` block must have a corresponding `tool_use` block in the previous message."
                )
        pending = [str(b.get("id")) for b in blocks if b.get("type") == "tool_use"] if role == "assistant" else []
        _count(blocks, role, prompt)
    if pending and messages:
        # A trailing assistant tool_use with no result is fine only as a prefill... the API rejects it.
        raise AnthropicError(
            f"messages.{len(messages) - 1}: `tool_use` ids were found without `tool_result` blocks "
            f"immediately after: {', '.join(pending)}. Each `tool_use` block must have a corresponding "
            "`tool_result` block in the next message."
        )


def _blocks(content: Any, i: int) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise AnthropicError(f"messages.{i}.content: Input should be a valid list")
    for j, block in enumerate(content):
        at = f"messages.{i}.content.{j}"
        if not isinstance(block, dict):
            raise AnthropicError(f"{at}: Input should be a valid dictionary or object")
        kind = block.get("type")
        if kind not in BLOCK_TYPES:
            expected = ", ".join(f"'{t}'" for t in BLOCK_TYPES)
            raise AnthropicError(
                f"{at}: Input tag '{kind}' found using 'type' does not match any of the expected tags: {expected}"
            )
        if kind == "text" and not isinstance(block.get("text"), str):
            raise AnthropicError(f"{at}.text.text: Field required")
        if kind == "image":
            _check_image(block.get("source"), f"{at}.image.source")
        if kind == "tool_use":
            for key in ("id", "name", "input"):
                if key not in block:
                    raise AnthropicError(f"{at}.tool_use.{key}: Field required")
        if kind == "tool_result" and "tool_use_id" not in block:
            raise AnthropicError(f"{at}.tool_result.tool_use_id: Field required")
        if kind == "thinking":
            if not isinstance(block.get("signature"), str):
                raise AnthropicError(f"{at}.thinking.signature: Field required")
            # Anthropic verifies that a thinking block sent back is one Claude produced, unchanged:
            # an empty signature, or another model's reasoning, is refused.
            if block["signature"] != sign(str(block.get("thinking"))):
                raise AnthropicError(f"{at}: Invalid `signature` in `thinking` block")
    return content


def sign(thinking: str) -> str:
    """The fake's signature of its own thinking (Anthropic's is opaque, and verified the same way)."""
    return base64.b64encode(hashlib.sha256(thinking.encode()).digest()).decode()


def _check_image(source: Any, at: str) -> None:
    if not isinstance(source, dict):
        raise AnthropicError(f"{at}: Field required")
    kind = source.get("type")
    if kind == "base64":
        if source.get("media_type") not in IMAGE_TYPES:
            raise AnthropicError(
                f"{at}.base64.media_type: Input should be 'image/jpeg', 'image/png', 'image/gif' or 'image/webp'"
            )
        if not isinstance(source.get("data"), str):
            raise AnthropicError(f"{at}.base64.data: Field required")
    elif kind == "url":
        if not isinstance(source.get("url"), str):
            raise AnthropicError(f"{at}.url.url: Field required")
    elif kind != "file":
        raise AnthropicError(
            f"{at}: Input tag '{kind}' found using 'type' does not match any of the expected tags: "
            "'base64', 'url', 'file'"
        )


def _block_text(block: dict[str, Any]) -> str:
    kind = block.get("type")
    if kind == "text":
        return str(block["text"])
    if kind == "image":
        return IMAGE_TEXT
    if kind == "tool_result":
        content = block.get("content", "")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return " ".join(_block_text(b) for b in content if isinstance(b, dict))
    return ""


def _count(blocks: list[dict[str, Any]], role: str, prompt: Prompt) -> None:
    results = [_block_text(b) for b in blocks if b.get("type") == "tool_result"]
    others = [_block_text(b) for b in blocks if b.get("type") not in ("tool_result", "tool_use", "thinking")]
    text = " ".join(t for t in others if t)
    prompt.texts.extend(results)
    if text:
        prompt.texts.append(text)
    if role == "assistant":
        prompt.last_role = "assistant"
    elif results and not text:
        prompt.last_role, prompt.tool_results = "tool", results
    else:
        prompt.last_role, prompt.last_user_text, prompt.tool_results = "user", text, []


def _read_tools(body: dict[str, Any], prompt: Prompt) -> None:
    tools = body.get("tools")
    names: list[str] = []
    if tools is not None:
        if not isinstance(tools, list):
            raise AnthropicError("tools: Input should be a valid list")
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict):
                raise AnthropicError(f"tools.{i}: Input should be a valid dictionary or object")
            if tool.get("type", "custom") != "custom":
                continue  # server tools (web_search_..., bash_...) are accepted and never called here
            name = tool.get("name")
            if not isinstance(name, str):
                raise AnthropicError(f"tools.{i}.custom.name: Field required")
            if not FUNCTION_NAME.match(name):
                raise AnthropicError(f"tools.{i}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'")
            if not isinstance(tool.get("input_schema"), dict):
                raise AnthropicError(f"tools.{i}.custom.input_schema: Field required")
            names.append(name)
    choice = body.get("tool_choice")
    parsed: ToolChoice = "auto"
    if choice is not None:
        if not tools:
            raise AnthropicError("tool_choice may only be specified while providing tools.")
        kind = choice.get("type") if isinstance(choice, dict) else None
        if kind not in ("auto", "any", "tool", "none"):
            raise AnthropicError(
                f"tool_choice: Input tag '{kind}' found using 'type' does not match any of the expected "
                "tags: 'auto', 'any', 'tool', 'none'"
            )
        if kind == "tool":
            name = choice.get("name")
            if not isinstance(name, str):
                raise AnthropicError("tool_choice.tool.name: Field required")
            parsed = ("function", name)
        else:
            parsed = {"auto": "auto", "any": "required", "none": "none"}[str(kind)]
    prompt.tools = names
    prompt.tool_choice = parsed


def _read_thinking(body: dict[str, Any], prompt: Prompt) -> bool:
    thinking = body.get("thinking")
    if thinking is None:
        return False
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if kind == "disabled":
        return False
    if kind == "adaptive":
        return True
    if kind != "enabled":
        raise AnthropicError(
            f"thinking: Input tag '{kind}' found using 'type' does not match any of the expected tags: "
            "'enabled', 'disabled', 'adaptive'"
        )
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int):
        raise AnthropicError("thinking.enabled.budget_tokens: Field required")
    if budget < 1024:
        raise AnthropicError("thinking.enabled.budget_tokens: Input should be greater than or equal to 1024")
    if isinstance(prompt.tool_choice, tuple) or prompt.tool_choice == "required":
        raise AnthropicError("Thinking may not be enabled when tool_choice forces tool use.")
    return True


# ---- rendering ------------------------------------------------------------------------------


@dataclass
class MessageRender:
    id: str
    model: str
    reply: Reply
    thinking: bool
    tool_id: str
    cache_read: int = 0
    cache_creation: int = 0

    @property
    def thinking_tokens(self) -> int:
        return len(THINKING_TEXT.split()) if self.thinking else 0

    @property
    def output_tokens(self) -> int:
        return self.reply.output_tokens + self.thinking_tokens

    def usage(self, output_tokens: int) -> dict[str, Any]:
        return {
            "input_tokens": self.reply.input_tokens,
            "cache_creation_input_tokens": self.cache_creation,
            "cache_read_input_tokens": self.cache_read,
            "cache_creation": {"ephemeral_5m_input_tokens": self.cache_creation, "ephemeral_1h_input_tokens": 0},
            "output_tokens": output_tokens,
            "service_tier": "standard",
        }

    @property
    def signature(self) -> str:
        return sign(THINKING_TEXT)

    def blocks(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if self.thinking:
            out.append({"type": "thinking", "thinking": THINKING_TEXT, "signature": self.signature})
        call = self.reply.tool_call
        if call is not None:
            out.append({"type": "tool_use", "id": self.tool_id, "name": call.name, "input": call.args})
        else:
            out.append({"type": "text", "text": self.reply.text})
        return out

    def message(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": self.blocks(),
            "stop_reason": STOP_REASONS[self.reply.finish],
            "stop_sequence": self.reply.stop_sequence,
            "usage": self.usage(self.output_tokens),
        }

    def events(self) -> Iterator[dict[str, Any]]:
        start = self.message()
        start.update(content=[], stop_reason=None, stop_sequence=None, usage=self.usage(1))
        yield {"type": "message_start", "message": start}
        for index, block in enumerate(self.blocks()):
            kind = block["type"]
            empty = {
                "thinking": {"type": "thinking", "thinking": "", "signature": ""},
                "text": {"type": "text", "text": ""},
                "tool_use": {**block, "input": {}},
            }[kind]
            yield {"type": "content_block_start", "index": index, "content_block": empty}
            if index == 0:
                yield {"type": "ping"}
            for delta in self._deltas(block):
                yield {"type": "content_block_delta", "index": index, "delta": delta}
            yield {"type": "content_block_stop", "index": index}
        usage = self.usage(self.output_tokens)
        del usage["cache_creation"], usage["service_tier"]
        yield {
            "type": "message_delta",
            "delta": {"stop_reason": STOP_REASONS[self.reply.finish], "stop_sequence": self.reply.stop_sequence},
            # Cumulative totals for the whole message, not increments.
            "usage": usage,
        }
        yield {"type": "message_stop"}

    def _deltas(self, block: dict[str, Any]) -> Iterator[dict[str, Any]]:
        kind = block["type"]
        if kind == "thinking":
            for piece in split_words(THINKING_TEXT):
                yield {"type": "thinking_delta", "thinking": piece}
            yield {"type": "signature_delta", "signature": block["signature"]}
        elif kind == "text":
            for piece in self.reply.pieces:
                yield {"type": "text_delta", "text": piece}
        else:
            call = self.reply.tool_call
            assert call is not None
            yield {"type": "input_json_delta", "partial_json": ""}
            for frag in fragments(call.arguments):
                yield {"type": "input_json_delta", "partial_json": frag}


def new_message_render(req: MessagesRequest, reply: Reply, cache_read: int, cache_creation: int) -> MessageRender:
    return MessageRender(
        id=rand_id("msg_01", 22),
        model=req.model,
        reply=reply,
        thinking=req.thinking,
        tool_id=rand_id("toolu_01", 22),
        cache_read=cache_read,
        cache_creation=cache_creation,
    )
