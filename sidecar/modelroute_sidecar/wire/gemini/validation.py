"""Validation of Gemini generateContent and countTokens requests: 400s in Google's words.

The shapes (TypedDicts) of this format's caller requests, kept in one module so the
validation can be swapped without touching the translation. A good request is checked
without pydantic (:mod:`..shapes`); pydantic judges and words the rest.
"""

# No `from __future__ import annotations` here: TypedDict turns every string annotation into a
# ForwardRef, compiling each one at import (for a request shape: ~1 ms and ~25 KiB in each pod).
from typing import Any, NotRequired

from typing_extensions import TypedDict

from ...errors import GatewayError
from ..json_numbers import NON_FINITE, bad_number
from ..shapes import OPEN, Shape

_OPEN = OPEN

# ------------------------------------------------------------------------- validation
# Every field the translation reads is typed as Gemini documents it (camelCase, as the
# SDKs send it); the rest stays open and passes through to a Gemini upstream as sent.


class _Blob(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    mimeType: str
    data: str


class _FileData(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    fileUri: str
    mimeType: NotRequired[str]


class _FunctionCall(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    name: str
    args: NotRequired[dict[str, Any] | None]
    id: NotRequired[str | None]


class _FunctionResponse(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    name: str
    response: NotRequired[dict[str, Any] | None]
    id: NotRequired[str | None]


class _Part(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    text: NotRequired[str | None]
    thought: NotRequired[bool | None]
    thoughtSignature: NotRequired[str | None]
    inlineData: NotRequired[_Blob | None]
    fileData: NotRequired[_FileData | None]
    functionCall: NotRequired[_FunctionCall | None]
    functionResponse: NotRequired[_FunctionResponse | None]


class _Content(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    role: NotRequired[str | None]
    parts: NotRequired[list[_Part] | None]


class _Declaration(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    name: str
    description: NotRequired[str | None]
    parameters: NotRequired[dict[str, Any] | None]
    parametersJsonSchema: NotRequired[dict[str, Any] | None]


class _Tool(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    functionDeclarations: NotRequired[list[_Declaration] | None]


class _CallingConfig(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    mode: NotRequired[str | None]
    allowedFunctionNames: NotRequired[list[str] | None]


class _ToolConfig(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    functionCallingConfig: NotRequired[_CallingConfig | None]


class _ThinkingConfig(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    thinkingBudget: NotRequired[int | None]
    includeThoughts: NotRequired[bool | None]


class _GenerationConfig(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    maxOutputTokens: NotRequired[int | None]
    temperature: NotRequired[float | int | None]
    topP: NotRequired[float | int | None]
    seed: NotRequired[int | None]
    presencePenalty: NotRequired[float | int | None]
    frequencyPenalty: NotRequired[float | int | None]
    stopSequences: NotRequired[list[str] | None]
    candidateCount: NotRequired[int | None]
    responseMimeType: NotRequired[str | None]
    responseSchema: NotRequired[dict[str, Any] | None]
    responseJsonSchema: NotRequired[dict[str, Any] | None]
    thinkingConfig: NotRequired[_ThinkingConfig | None]


class GenerateContentRequestModel(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    contents: list[_Content]
    systemInstruction: NotRequired[_Content | None]
    tools: NotRequired[list[_Tool] | None]
    toolConfig: NotRequired[_ToolConfig | None]
    generationConfig: NotRequired[_GenerationConfig | None]


class CountTokensRequestModel(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    contents: NotRequired[list[_Content] | None]
    generateContentRequest: NotRequired[GenerateContentRequestModel | None]


GENERATE_REQUEST = Shape(GenerateContentRequestModel)
COUNT_TOKENS_REQUEST = Shape(CountTokensRequestModel)


def invalid(message: str) -> GatewayError:
    return GatewayError(400, message, type="invalid_request_error")


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
            raise invalid("Invalid JSON payload received: the body is not valid JSON.") from None
        first = max(errors, key=lambda err: len(err["loc"]))
        loc = ".".join(str(p) for p in first["loc"] if not str(p).startswith(("function-", "nullable", "dict[")))
        if not loc:
            raise invalid("Invalid JSON payload received: the body must be a JSON object.") from None
        raise invalid(f"Invalid JSON payload received. {loc}: {first['msg']}") from None
    bad = bad_number(body, req)
    if bad is not None:
        loc = ".".join(str(p) for p in bad[0])
        why = "must be a finite number" if bad[1] == NON_FINITE else "must be a 64-bit integer"
        raise invalid(f"Invalid JSON payload received. {loc or 'A number'} {why}.")
    return req


