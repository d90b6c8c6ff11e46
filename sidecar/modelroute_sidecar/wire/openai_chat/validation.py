"""Validation of Chat Completions (and embeddings) requests: strict types, clear 400s in OpenAI's words.

The shapes (TypedDicts) of this format's caller requests, kept in one module so the
validation can be swapped without touching the translation. A good request is checked
without pydantic (:mod:`..shapes`); pydantic judges and words the rest.
"""

# No `from __future__ import annotations` here: TypedDict turns every string annotation into a
# ForwardRef, compiling each one at import (for a request shape: ~1 ms and ~25 KiB in each pod).
import json
import re
from typing import Any, Literal, NotRequired

from typing_extensions import TypedDict

from ...errors import bad_request
from ..json_numbers import bad_number
from ..shapes import OPEN, Shape

# strict: a wrong JSON type is the caller's mistake to hear about, not to have coerced
# ("10" into 10, "yes" into true); NaN and infinities are not numbers an upstream takes.
_OPEN = OPEN


class _ImageURL(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    url: str
    detail: NotRequired[str]


class _TextPart(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    type: Literal["text"]
    text: str


class _ImagePart(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    type: Literal["image_url"]
    image_url: _ImageURL


class _File(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    file_data: NotRequired[str]
    filename: NotRequired[str]
    file_id: NotRequired[str]


class _FilePart(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    type: Literal["file"]
    file: _File


class _Audio(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    data: str
    format: str


class _AudioPart(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    type: Literal["input_audio"]
    input_audio: _Audio


class _RefusalPart(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    type: Literal["refusal"]
    refusal: str


# Every field a translator reads is typed here, so what reaches it has the documented shape.
_Part = _TextPart | _ImagePart | _FilePart | _AudioPart | _RefusalPart


class _Function(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    name: str
    arguments: str


class _ToolCall(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    id: str
    type: Literal["function"]
    function: _Function


class _Message(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: NotRequired[str | list[_Part] | None]
    name: NotRequired[str]
    tool_calls: NotRequired[list[_ToolCall] | None]
    tool_call_id: NotRequired[str]


class _FunctionDef(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    name: str
    description: NotRequired[str | None]
    parameters: NotRequired[dict[str, Any] | None]
    strict: NotRequired[bool | None]


class _Tool(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    type: Literal["function"]
    function: _FunctionDef


class _StreamOptions(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    include_usage: NotRequired[bool]


class ChatRequestModel(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    model: str
    messages: list[_Message]
    stream: NotRequired[bool | None]
    stream_options: NotRequired[_StreamOptions | None]
    tools: NotRequired[list[_Tool] | None]
    max_tokens: NotRequired[int | None]
    max_completion_tokens: NotRequired[int | None]
    n: NotRequired[int | None]
    temperature: NotRequired[float | None]
    top_p: NotRequired[float | None]
    stop: NotRequired[str | list[str] | None]
    tool_choice: NotRequired[str | dict[str, Any] | None]
    parallel_tool_calls: NotRequired[bool | None]
    response_format: NotRequired[dict[str, Any] | None]
    user: NotRequired[str | None]
    safety_identifier: NotRequired[str | None]
    reasoning_effort: NotRequired[str | None]
    seed: NotRequired[int | None]
    presence_penalty: NotRequired[float | None]
    frequency_penalty: NotRequired[float | None]
    metadata: NotRequired[dict[str, Any] | None]


class EmbeddingsRequestModel(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: NotRequired[Literal["float", "base64"]]
    dimensions: NotRequired[int]


CHAT_REQUEST = Shape(ChatRequestModel)
EMBEDDINGS_REQUEST = Shape(EmbeddingsRequestModel)

_MALFORMED = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
    "your HTTP library correctly. The OpenAI API expects a JSON payload.)"
)


def validation_message(err: Any) -> tuple[str, str | None]:
    """The first problem, in OpenAI's words where possible, and the parameter it is about."""
    errors = err.errors(include_url=False)
    if errors[0]["type"] in ("json_invalid", "json_type"):
        # Say where and why ("EOF while parsing a list at line 1 column 31", "recursion
        # limit exceeded ..."): the HINT alone sends a developer looking in the wrong place.
        return f"{_MALFORMED} {errors[0]['msg']}.", None
    # A union branch (content part "_TextPart", ...) whose "type" did not match is the wrong
    # branch: its other complaints are noise. Of the rest, the deepest error is the problem.
    wrong = [e for e in errors if e["type"] == "literal_error" and len(e["loc"]) > 1
             and e["loc"][-1] == "type" and str(e["loc"][-2]).startswith("_")]
    branches = {e["loc"][:-1] for e in wrong}
    errors = [e for e in errors if not any(e["loc"][:len(b)] == b for b in branches)] + wrong
    first = max(errors, key=lambda e: (len(e["loc"]), e not in wrong))
    loc = _param(first["loc"])
    if not loc:
        return "The request body must be a JSON object.", None
    if first["type"] == "missing":
        return f"Missing required parameter: '{loc}'.", loc
    # Every alternative a union offered for this parameter, not just the first one tried.
    same = [e for e in errors if e["type"] == first["type"] and _param(e["loc"]) == loc]
    if first["type"] == "literal_error":
        values = dict.fromkeys(v for e in same for v in re.findall(r"'[^']*'", e.get("ctx", {}).get("expected", "")))
        got = json.dumps(first["input"])[:100]  # not orjson: the value may be an int beyond 64 bits
        return f"Invalid value for '{loc}': {got}. Supported values are: {', '.join(values)}.", loc
    if first["type"] == "union_tag_invalid":
        return f"Invalid value for '{loc}': {first['msg']}.", loc
    expected = dict.fromkeys(e["msg"].removeprefix("Input should be ") for e in errors if _param(e["loc"]) == loc
                             and e["type"].endswith("_type"))
    if len(expected) > 1:
        return f"Invalid type for '{loc}': expected {' or '.join(expected)}.", loc
    return f"Invalid type for '{loc}': {first['msg']}.", loc


def _param(loc: tuple[int | str, ...]) -> str:
    out = ""
    for p in loc:
        if isinstance(p, int):
            out += f"[{p}]"
        elif p in ("str", "list[_Part]", "none") or "[" in str(p) or str(p).startswith("_"):
            continue  # union branch names pydantic inserts
        else:
            out += ("." if out else "") + str(p)
    return out


def parse_json_object(body: bytes, shape: Shape) -> dict[str, Any]:
    fast = shape.fast(body)
    if fast is not None:
        return fast
    from pydantic import ValidationError

    try:
        parsed: dict[str, Any] = shape.adapter.validate_json(body)
    except ValidationError as e:
        message, param = validation_message(e)
        raise bad_request(message, param) from None
    bad = bad_number(body, parsed)
    if bad is not None:
        param = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in bad[0]).lstrip(".") or None
        raise bad_request(f"Invalid value for '{param}': {bad[1]}." if param else f"Invalid body: {bad[1]}.", param)
    return parsed


