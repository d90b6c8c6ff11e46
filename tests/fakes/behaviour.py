"""The deterministic 'model' shared by every fake, so tests can compare providers.

Each provider module reduces its request to a `Prompt` and renders the `Reply`
in its own wire format.  Rules (identical for all providers):

* text reply: ``"echo: " + <text of the last user message>`` (text parts joined,
  each image part counts as the text ``[image]``);
* if functions are offered, tool choice allows calling one, and the last message is
  from the user: ONE call to the first offered (or the forced) function with
  arguments ``{"echo": "<last user text>"}``;
* if the last message is a tool result: ``"tool said: <result content>"``;
* a line ``tool-call: NAME {json}`` in the last user text, NAME an offered tool: ONE
  call to NAME with those arguments (how tests script a coding agent's turn: the
  agent runs the tool and sends its result back); a freeform (custom) tool gets
  the ``input`` member as its raw input. A fake in ``agent`` mode makes no other
  calls: a coding agent offers tools on every turn, and a plain prompt must get text;
* stop sequences cut the reply before the first match (finish = stop_sequence);
* max tokens below the reply's word count truncates it (finish = length);
* input tokens = whitespace-separated words over all system/message text and tool
  results (tool-call arguments and tool definitions are not counted, so the same
  conversation counts the same in every dialect); min 1;
* output tokens = words in the reply text, or 5 for a tool call.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

IMAGE_TEXT = "[image]"
TOOL_CALL_TOKENS = 5

# "auto" | "none" | "required" | ("function", name)
ToolChoice = str | tuple[str, str]
Finish = Literal["stop", "length", "tool_call", "stop_sequence"]


@dataclass
class Prompt:
    """A provider-neutral view of the request: only what the behaviour depends on."""

    texts: list[str] = field(default_factory=list)  # every counted text (system, messages, tool results)
    last_role: Literal["user", "tool", "assistant"] = "user"
    last_user_text: str = ""
    tool_results: list[str] = field(default_factory=list)  # trailing tool results, in order
    tools: list[str] = field(default_factory=list)  # offered function names, in order
    tool_choice: ToolChoice = "auto"
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    # Structured output (Gemini responseJsonSchema, OpenAI response_format json_schema,
    # Anthropic output_config.format): the answer is JSON that satisfies it.
    json_schema: dict[str, Any] | None = None

    @property
    def input_tokens(self) -> int:
        return max(1, sum(len(t.split()) for t in self.texts))


@dataclass
class ToolCall:
    name: str
    args: dict[str, Any]

    @property
    def arguments(self) -> str:
        return orjson.dumps(self.args).decode()


@dataclass
class Reply:
    text: str  # "" for a tool call
    pieces: list[str]  # the text split for streaming; "".join(pieces) == text
    tool_call: ToolCall | None
    finish: Finish
    stop_sequence: str | None
    input_tokens: int
    output_tokens: int


def split_words(text: str) -> list[str]:
    """Split into word pieces that concatenate back to `text` exactly (one piece = one token)."""
    pieces = re.findall(r"\s*\S+", text)
    if not pieces:
        return [text] if text else []
    tail = text[len("".join(pieces)) :]
    pieces[-1] += tail
    return pieces


TOOL_DIRECTIVE = re.compile(r"^tool-call: (\S+) (\{.*\})[ \t]*$", re.M)


def scripted_call(prompt: Prompt) -> ToolCall | None:
    """The call a ``tool-call:`` line in the last user text asks for, if its tool is offered."""
    if prompt.last_role != "user" or prompt.tool_choice == "none":
        return None
    for m in TOOL_DIRECTIVE.finditer(prompt.last_user_text):
        if m.group(1) in prompt.tools:
            args = orjson.loads(m.group(2))
            return ToolCall(name=m.group(1), args=args if isinstance(args, dict) else {})
    return None


def sample(schema: Any, text: str) -> Any:
    """The simplest value that satisfies a JSON Schema (or Gemini's upper-case types):
    every property, strings echo the prompt, numbers at their minimum, enums' first value."""
    if not isinstance(schema, dict):
        return text
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    kind = str((kind[0] if kind else "") if isinstance(kind, list) else kind or "").lower()
    if kind == "object" or "properties" in schema:
        return {k: sample(v, text) for k, v in (schema.get("properties") or {}).items()}
    if kind == "array":
        return [sample(schema.get("items"), text)]
    if kind in ("integer", "number"):
        return int(schema.get("minimum") or 0) if kind == "integer" else float(schema.get("minimum") or 0)
    if kind == "boolean":
        return True
    return text


def respond(prompt: Prompt, agent: bool = False) -> Reply:
    call = scripted_call(prompt)
    wants_tool = not agent and prompt.tools and prompt.tool_choice != "none" and prompt.last_role == "user"
    if call is None and wants_tool:
        name = prompt.tool_choice[1] if isinstance(prompt.tool_choice, tuple) else prompt.tools[0]
        call = ToolCall(name=name, args={"echo": prompt.last_user_text})
    if call is not None:
        return Reply(
            text="",
            pieces=[],
            tool_call=call,
            finish="tool_call",
            stop_sequence=None,
            input_tokens=prompt.input_tokens,
            output_tokens=TOOL_CALL_TOKENS,
        )
    if prompt.json_schema is not None:
        text = json.dumps(sample(prompt.json_schema, prompt.last_user_text))
    elif prompt.last_role == "tool":
        text = "tool said: " + " ".join(prompt.tool_results)
    else:
        text = "echo: " + prompt.last_user_text
    finish: Finish = "stop"
    matched: str | None = None
    cut = [(text.find(s), s) for s in prompt.stop if s and s in text]
    if cut:
        index, matched = min(cut)
        text = text[:index]
        finish = "stop_sequence"
    pieces = split_words(text)
    if prompt.max_tokens is not None and prompt.max_tokens < len(pieces):
        pieces = pieces[: max(prompt.max_tokens, 0)]
        text = "".join(pieces)
        finish = "length"
        matched = None
    return Reply(
        text=text,
        pieces=pieces,
        tool_call=None,
        finish=finish,
        stop_sequence=matched,
        input_tokens=prompt.input_tokens,
        output_tokens=len(pieces),
    )


def fragments(s: str, size: int = 4) -> list[str]:
    """Split a string (tool-call arguments JSON) into small fragments, as providers stream them."""
    return [s[i : i + size] for i in range(0, len(s), size)] or [""]


# The largest output dimensionality the providers' embedding models offer (3072: OpenAI's
# text-embedding-3-large, Gemini's gemini-embedding-001); more is a 400 there and here.
MAX_EMBEDDING_DIMENSIONS = 3072


def embed(text: str, dimensions: int) -> list[float]:
    """A deterministic unit vector for `text`: equal inputs embed equally, in every provider."""
    values: list[float] = []
    counter = 0
    while len(values) < dimensions:
        digest = hashlib.sha256(f"{counter}:{text}".encode()).digest()
        values.extend((b - 127.5) / 127.5 for b in digest)
        counter += 1
    values = values[:dimensions]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    # Round-trip through float32 so base64 and float encodings decode to the same numbers.
    return [struct.unpack("<f", struct.pack("<f", v / norm))[0] for v in values]
