"""Validation of Anthropic Messages and count_tokens requests: strict types, 400s in Anthropic's words.

The shapes (TypedDicts) of this format's caller requests, kept in one module so the
validation can be swapped without touching the translation. A good request is checked
without pydantic (:mod:`..shapes`); pydantic judges and words the rest.
"""

# No `from __future__ import annotations` here: TypedDict turns every string annotation into a
# ForwardRef, compiling each one at import (for a request shape: ~1 ms and ~25 KiB in each pod).
from typing import Any, Literal, NotRequired

from typing_extensions import TypedDict

from ...errors import GatewayError
from ..json_numbers import NON_FINITE, bad_number
from ..shapes import OPEN, Shape, tagged

# strict, as the OpenAI dialects: a wrong JSON type is refused, never coerced ("5" into 5,
# "yes" into true), and NaN or infinities are no numbers (Anthropic's API refuses them too).
# Fields and blocks the gateway does not know stay allowed and pass through as sent.
_OPEN = OPEN

class _Block(TypedDict):
    """A content block of a type the gateway does not read (thinking, server tools, ...)."""

    __pydantic_config__ = _OPEN  # type: ignore[misc]
    type: str


# The blocks the translation reads have their fields typed as Anthropic documents them, so
# whatever reaches the translator is of the shape it expects. Unknown block types stay
# open (``_Block``): they pass through to Anthropic, and are dropped for other providers.
class _TextBlock(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    type: Literal["text"]
    text: str


class _Source(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    type: str
    data: NotRequired[str]
    media_type: NotRequired[str]
    url: NotRequired[str]


class _ImageBlock(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    type: Literal["image"]
    source: _Source


class _DocumentBlock(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    type: Literal["document"]
    source: dict[str, Any]  # base64, text, content, url or file: read only where data is a string
    title: NotRequired[str | None]


class _SearchResultBlock(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    type: Literal["search_result"]
    content: list[_TextBlock]


class _ToolUseBlock(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


def _tagged(known: dict[str, type]) -> Any:
    """A union of blocks chosen by their ``type`` (the open ``_Block`` for any other type)."""

    def tag(v: Any) -> str:
        t = v.get("type") if isinstance(v, dict) else None
        return f"_{t}" if isinstance(t, str) and t in known else "_other"

    return tagged({**{f"_{name}": b for name, b in known.items()}, "_other": _Block}, tag)


_INNER: dict[str, type] = {"text": _TextBlock, "image": _ImageBlock, "document": _DocumentBlock,
                           "search_result": _SearchResultBlock}
_InnerBlock = _tagged(_INNER)


class _ToolResultBlock(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    type: Literal["tool_result"]
    tool_use_id: str
    content: NotRequired[str | list[_InnerBlock] | None]  # type: ignore[valid-type]
    is_error: NotRequired[bool | None]


_AnyBlock = _tagged({**_INNER, "tool_use": _ToolUseBlock, "tool_result": _ToolResultBlock})


class _Message(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    # "system": mid-conversation system messages (instructions added after a user turn
    # without touching the cached prefix); Claude Code sends them for current models.
    role: Literal["user", "assistant", "system"]
    content: str | list[_AnyBlock]  # type: ignore[valid-type]


class _Tool(TypedDict):
    """Client tools (name, input_schema) and server tools (type, name) alike."""

    __pydantic_config__ = _OPEN  # type: ignore[misc]
    name: str
    type: NotRequired[str | None]
    description: NotRequired[str | None]
    input_schema: NotRequired[dict[str, Any] | None]


class CountTokensRequestModel(TypedDict):
    """``/v1/messages/count_tokens``: a Messages request without ``max_tokens``."""

    __pydantic_config__ = _OPEN  # type: ignore[misc]
    model: str
    messages: list[_Message]
    system: NotRequired[str | list[_AnyBlock] | None]  # type: ignore[valid-type]
    tools: NotRequired[list[_Tool] | None]
    tool_choice: NotRequired[dict[str, Any] | None]
    thinking: NotRequired[dict[str, Any] | None]


class MessagesRequestModel(CountTokensRequestModel):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    max_tokens: int
    stream: NotRequired[bool | None]
    stop_sequences: NotRequired[list[str] | None]
    temperature: NotRequired[float | None]
    top_p: NotRequired[float | None]
    top_k: NotRequired[int | None]
    metadata: NotRequired[dict[str, Any] | None]
    service_tier: NotRequired[str | None]
    output_config: NotRequired[dict[str, Any] | None]
    output_format: NotRequired[dict[str, Any] | None]


MESSAGES_REQUEST = Shape(MessagesRequestModel)
COUNT_TOKENS_REQUEST = Shape(CountTokensRequestModel)


def invalid(message: str) -> GatewayError:
    return GatewayError(400, message, type="invalid_request_error")


def _loc(loc: tuple[int | str, ...]) -> str:
    parts = []
    for p in loc:
        s = str(p)
        if s in ("str", "none") or "[" in s or s.startswith("_"):
            continue  # union branch names pydantic inserts
        parts.append(s)
    return ".".join(parts)


def validate(body: bytes, shape: Shape) -> dict[str, Any]:
    fast = shape.fast(body)
    if fast is not None:
        return fast
    from pydantic import ValidationError

    try:
        req: dict[str, Any] = shape.adapter.validate_json(body)
    except ValidationError as e:
        errors = e.errors(include_url=False)
        if errors[0]["type"] in ("json_invalid", "json_type"):
            raise invalid("There was an error parsing the body of your request: it is not valid JSON") from None
        first = max(errors, key=lambda err: len(err["loc"]))
        loc = _loc(first["loc"])
        raise invalid(f"{loc}: {first['msg']}" if loc else "The request body must be a JSON object.") from None
    bad = bad_number(body, req)
    if bad is not None:
        loc = ".".join(str(p) for p in bad[0])
        why = "Input should be a finite number" if bad[1] == NON_FINITE else "Input should be a 64-bit integer"
        raise invalid(f"{loc}: {why}" if loc else f"The request body holds a number no API takes: {bad[1]}")
    return req


