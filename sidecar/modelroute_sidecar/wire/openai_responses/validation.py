"""Validation of Responses requests: strict types, clear 400s in OpenAI's words.

The shapes (TypedDicts) of this format's caller requests, kept in one module so the
validation can be swapped without touching the translation. A good request is checked
without pydantic (:mod:`..shapes`); pydantic judges and words the rest.
"""

# No `from __future__ import annotations` here: TypedDict turns every string annotation into a
# ForwardRef, compiling each one at import (for a request shape: ~1 ms and ~25 KiB in each pod).
from typing import Any, Literal, NotRequired

from typing_extensions import TypedDict

from ..shapes import OPEN, Shape, tagged

# Strict, as the other dialects: wrong JSON types are refused, not coerced. What the
# translation reads is typed as OpenAI documents it; item and part types the gateway does
# not know stay open (they pass through to OpenAI, and are dropped for other providers).
_OPEN = OPEN


class _Tool(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    type: str
    name: NotRequired[str | None]
    description: NotRequired[str | None]
    parameters: NotRequired[dict[str, Any] | None]
    strict: NotRequired[bool | None]


class _Typed(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    type: NotRequired[str]


class _TextPart(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    type: str
    text: str


class _RefusalPart(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    type: Literal["refusal"]
    refusal: str


class _ImageURL(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    url: NotRequired[str | None]


class _ImagePart(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    type: Literal["input_image"]
    image_url: NotRequired[str | _ImageURL | None]
    detail: NotRequired[str | None]


class _FilePart(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    type: Literal["input_file"]
    file_data: NotRequired[str | None]
    filename: NotRequired[str | None]


class _AudioPart(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    type: Literal["input_audio"]
    input_audio: NotRequired[dict[str, Any] | None]


def _tagged(known: dict[str, type], default: str | None = None) -> Any:
    """A union chosen by ``type`` (``default`` when absent); any other type stays open."""

    def tag(v: Any) -> str:
        t = v.get("type", default) if isinstance(v, dict) else None
        if t is None and isinstance(v, dict) and "role" in v:
            t = "message"
        return f"_{t}" if isinstance(t, str) and t in known else "_other"

    return tagged({**{f"_{name}": b for name, b in known.items()}, "_other": _Typed}, tag)


_Part = _tagged({"input_text": _TextPart, "output_text": _TextPart, "text": _TextPart, "refusal": _RefusalPart,
                 "input_image": _ImagePart, "input_file": _FilePart, "input_audio": _AudioPart})


class _MessageItem(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    type: NotRequired[Literal["message"]]
    role: str
    content: NotRequired[str | list[_Part] | None]  # type: ignore[valid-type]


class _CallItem(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    type: str
    call_id: NotRequired[str | None]
    name: NotRequired[str | None]
    arguments: NotRequired[str | None]
    input: NotRequired[str | None]


class _OutputItem(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    type: str
    call_id: NotRequired[str | None]
    output: NotRequired[str | list[_Part] | None]  # type: ignore[valid-type]


_Item = _tagged({"message": _MessageItem, "function_call": _CallItem, "custom_tool_call": _CallItem,
                 "function_call_output": _OutputItem, "custom_tool_call_output": _OutputItem})


class ResponsesRequestModel(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    model: str
    input: NotRequired[str | list[_Item] | None]  # type: ignore[valid-type]
    instructions: NotRequired[str | list[_Item] | None]  # type: ignore[valid-type]
    stream: NotRequired[bool | None]
    tools: NotRequired[list[_Tool] | None]
    tool_choice: NotRequired[str | dict[str, Any] | None]
    max_output_tokens: NotRequired[int | None]
    previous_response_id: NotRequired[str | None]
    conversation: NotRequired[str | dict[str, Any] | None]
    reasoning: NotRequired[dict[str, Any] | None]
    text: NotRequired[dict[str, Any] | None]
    temperature: NotRequired[float | None]
    top_p: NotRequired[float | None]
    parallel_tool_calls: NotRequired[bool | None]
    store: NotRequired[bool | None]
    user: NotRequired[str | None]
    safety_identifier: NotRequired[str | None]
    prompt_cache_key: NotRequired[str | None]
    metadata: NotRequired[dict[str, Any] | None]


RESPONSES_REQUEST = Shape(ResponsesRequestModel)


