"""The per-model operations: what each one is called, which upstream kinds serve it, how its
request is checked and what usage its answer carries. A table, read at import; pure functions.
"""

# No `from __future__ import annotations` here: TypedDict turns every string annotation into a
# ForwardRef, compiling each one at import (for a request shape: ~1 ms and ~25 KiB in each pod).
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, NotRequired

from typing_extensions import TypedDict

from ..canonical import Usage, usage_from_openai
from ..wire.shapes import Shape

# Every OpenAI-shaped upstream kind; the mock answers them too (see surface/mock.py).
OPENAI_KINDS = frozenset({"openai", "azure-openai", "openai-compatible", "mock"})

_OPEN: dict[str, Any] = {"extra": "allow"}  # pydantic's TypedDict config (see wire/shapes.py)


def no_usage(body: dict[str, Any]) -> Usage | None:
    return None


def completion_usage(body: dict[str, Any]) -> Usage | None:
    return usage_from_openai(body.get("usage"))


def token_usage(body: dict[str, Any]) -> Usage | None:
    """``usage: {input_tokens, output_tokens}`` (images; transcriptions of ``type: tokens``).
    A transcription billed by ``type: duration`` (whisper-1) carries seconds, not tokens: None."""
    u = body.get("usage")
    if not isinstance(u, dict) or u.get("type", "tokens") != "tokens":
        return None
    return Usage(int(u.get("input_tokens") or 0), int(u.get("output_tokens") or 0))


def rerank_usage(body: dict[str, Any]) -> Usage | None:
    """Jina and vLLM answer ``usage.total_tokens``; Cohere ``meta.billed_units`` in search
    units, which are no tokens (not metered)."""
    u = body.get("usage")
    if not isinstance(u, dict):
        return None
    return Usage(int(u.get("prompt_tokens") or u.get("total_tokens") or 0), 0)


class _Images(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    model: str
    prompt: str
    n: NotRequired[int | None]


class _Speech(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    model: str
    input: str
    voice: str | dict[str, Any]


class _Moderations(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    model: str
    input: str | list[str] | list[dict[str, Any]]


class _StreamOptions(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    include_usage: NotRequired[bool]


class _Completions(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    model: str
    prompt: str | list[str] | list[int] | list[list[int]]
    stream: NotRequired[bool | None]
    stream_options: NotRequired[_StreamOptions | None]


class _Rerank(TypedDict):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    model: str
    query: str
    documents: list[str | dict[str, Any]]
    top_n: NotRequired[int | None]


@dataclass(frozen=True, slots=True)
class Operation:
    """One per-model operation of the surface."""

    name: str  # the gen_ai operation label and the access log's dialect suffix
    path: str  # under an OpenAI base URL (Azure: under the deployment)
    kinds: frozenset[str]  # upstream kinds that serve it
    body: Literal["json", "multipart"]
    schema: Shape | None  # the JSON body's required fields (None: multipart)
    usage: Callable[[dict[str, Any]], Usage | None] = no_usage
    streams: bool = False  # ``stream: true`` is an OpenAI SSE stream ending in [DONE]
    required: tuple[str, ...] = ()  # multipart fields that must be present, besides model


# Upstream kinds by operation. OpenAI serves all but rerank; Azure OpenAI has no moderations
# (its content filters do that) and no rerank; OpenAI-compatible servers serve what they
# serve (vLLM, Jina and Cohere-compatible servers have /rerank), and say so with a 404.
_NOT_AZURE = OPENAI_KINDS - {"azure-openai"}
_RERANK = frozenset({"openai-compatible", "mock"})

OPERATIONS: dict[str, Operation] = {
    "/v1/images/generations": Operation("image_generation", "images/generations", OPENAI_KINDS, "json",
                                        Shape(_Images), token_usage),
    "/v1/audio/speech": Operation("speech", "audio/speech", OPENAI_KINDS, "json", Shape(_Speech)),
    "/v1/audio/transcriptions": Operation("transcription", "audio/transcriptions", OPENAI_KINDS, "multipart",
                                          None, token_usage, required=("file",)),
    "/v1/audio/translations": Operation("translation", "audio/translations", OPENAI_KINDS, "multipart",
                                        None, token_usage, required=("file",)),
    "/v1/moderations": Operation("moderation", "moderations", _NOT_AZURE, "json", Shape(_Moderations)),
    "/v1/completions": Operation("text_completion", "completions", OPENAI_KINDS, "json",
                                 Shape(_Completions), completion_usage, streams=True),
    "/v1/rerank": Operation("rerank", "rerank", _RERANK, "json", Shape(_Rerank), rerank_usage),
}


def unsupported_message(op: Operation, route: str, kinds: list[str]) -> str:
    can = ", ".join(sorted(op.kinds - {"mock"}))
    return (f"Route '{route}' cannot serve /v1/{op.path}: its backends are of kind {', '.join(sorted(set(kinds)))}, "
            f"and only {can} (or mock) upstreams have this operation.")
