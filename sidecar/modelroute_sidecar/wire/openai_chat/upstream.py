"""Chat Completions toward an upstream: the request (the canonical form with the backend's
model, and usage asked for on streams), its errors, and its stream.

The canonical form *is* this wire format, so there is little to translate; the OpenAI-shaped
kinds (``providers/openai.py``) choose URLs and auth headers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

from ...canonical import ChatChunk, usage_from_openai
from ...errors import ErrorType
from ...sse import SSEEvent
from ..base import StreamDecoder, StreamError, UpstreamErrorInfo

_STATUS_TYPES: dict[int, ErrorType] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    529: "overloaded_error",
}
_URL_MEMO_MAX = 1024
RETRYABLE_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})


def error_type_for(status: int) -> ErrorType:
    return _STATUS_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


# OpenAI's reasoning models; others refuse `reasoning_effort` (a translated Claude Code
# request asks for thinking on every turn, whatever model the route leads to).
REASONING_MODELS = re.compile(r"^(o\d|gpt-5|gpt-6|gpt-oss|codex-)")


def with_model(req: Mapping[str, Any], model: str, stream: bool, translated: bool = False) -> dict[str, Any]:
    """The request for the upstream: its model, and usage on streams (the gateway meters it).
    A request translated from another dialect asks for reasoning only of a model that reasons."""
    body = dict(req)
    body["model"] = model
    if translated and "reasoning_effort" in body and not REASONING_MODELS.match(model):
        del body["reasoning_effort"]
    if stream:
        opts = dict(body.get("stream_options") or {})
        opts["include_usage"] = True
        body["stream_options"] = opts
    return body


def openai_error_info(status: int, body: bytes) -> UpstreamErrorInfo:
    message = f"upstream returned HTTP {status}"
    try:
        err = orjson.loads(body).get("error")
        if isinstance(err, dict) and err.get("message"):
            message = str(err["message"])
        elif isinstance(err, str):
            message = err
    except (orjson.JSONDecodeError, AttributeError):
        pass
    return UpstreamErrorInfo(message, error_type_for(status), status in RETRYABLE_STATUSES or status >= 500)


class OpenAIStreamDecoder(StreamDecoder):
    """OpenAI chunks are canonical already: parse, note usage and the end."""

    __slots__ = ("done", "usage")

    def __init__(self) -> None:
        self.usage = None
        self.done = False

    def feed(self, event: SSEEvent) -> list[ChatChunk]:
        data = event.data
        if data == b"[DONE]":
            self.done = True
            return []
        if not data:
            return []
        chunk = orjson.loads(data)
        if "error" in chunk and "choices" not in chunk:
            err = chunk["error"] or {}
            raise StreamError(UpstreamErrorInfo(str(err.get("message", "upstream stream error")),
                                                "api_error", True))
        if chunk.get("usage"):
            self.usage = usage_from_openai(chunk["usage"])
        return [chunk]


