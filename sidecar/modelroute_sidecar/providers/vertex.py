"""Google Vertex AI upstream: Gemini and Anthropic publisher models, with OAuth bearer tokens.

A model id picks its publisher: ``claude-*`` (``claude-sonnet-4-5@20250929``) is
Anthropic's, served at ``.../publishers/anthropic/models/{model}:rawPredict`` (and
``:streamRawPredict``) with Anthropic's Messages body minus ``model`` plus
``anthropic_version: vertex-2023-10-16``; every other id is Google's, served at
``.../publishers/google/models/{model}:generateContent`` (and
``:streamGenerateContent?alt=sse``) with the Gemini API's request shape. The wire formats
are ``wire/anthropic`` and ``wire/gemini``, reused as they are;
Anthropic callers on Claude and Gemini callers on Gemini pass through.

The Secret's key lines are OAuth 2 access tokens (``gcloud auth print-access-token``),
sent as ``Authorization: Bearer``; they expire within an hour, so clusters use workload
identity instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import orjson

from ..canonical import ChatRequest, ChatResponse
from ..config import ProviderKeyConfig
from ..syntax import path_segment
from ..wire.anthropic import upstream as anthropic
from ..wire.base import StreamDecoder, UpstreamErrorInfo
from ..wire.gemini import upstream as gemini
from .base import PreparedRequest, ProviderAdapter

ANTHROPIC_VERSION = "vertex-2023-10-16"


def is_anthropic(model: str) -> bool:
    return model.startswith("claude-")


# Vertex's CountTokensRequest takes these of a GenerateContentRequest (not safetySettings,
# toolConfig, cachedContent: a 400 there).
_COUNT_FIELDS = frozenset({"contents", "systemInstruction", "system_instruction", "tools", "generationConfig",
                           "generation_config"})


def _count_request(req: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in req.items() if k in _COUNT_FIELDS}


def error_info(status: int, body: bytes) -> UpstreamErrorInfo:
    """Google's front end answers ``{"error": {"code", "message", "status"}}``; Claude's own
    errors come back in Anthropic's shape (``{"type": "error", "error": {"type", ...}}``)."""
    try:
        data = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict) and data.get("type") == "error":
        return anthropic.error_info(status, body)
    return gemini.error_info(status, body)


class VertexAdapter(ProviderAdapter):
    kind = "vertex"
    # Errors may come from Google's front end whatever the publisher: always rendered in the
    # caller's dialect.
    native_errors: ClassVar[bool] = False

    def __init__(self, pk: ProviderKeyConfig) -> None:
        super().__init__(pk)
        location = pk.location or "global"
        self.publishers_url = (f"{pk.base_url.rstrip('/')}/v1/projects/{pk.project}/locations/{location}"
                               "/publishers/")
        self.headers = {"content-type": "application/json", **pk.headers}

    def _url(self, model: str, method: str) -> str:
        if is_anthropic(model):
            return f"{self.publishers_url}anthropic/models/{path_segment(model)}:{method}"
        return f"{self.publishers_url}google/models/{path_segment(model.removeprefix('models/'))}:{method}"

    def speaks_for(self, dialect: str, model: str) -> bool:
        if dialect == "anthropic-messages":
            return is_anthropic(model)
        return dialect == "gemini" and not is_anthropic(model)

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"authorization": "Bearer " + key}

    def _anthropic_body(self, body: dict[str, Any], stream: bool) -> bytes:
        body.pop("model", None)  # the model is the path
        body["anthropic_version"] = ANTHROPIC_VERSION
        if stream:
            body["stream"] = True
        else:
            body.pop("stream", None)
        return orjson.dumps(body)

    def _gemini_method(self, stream: bool) -> str:
        return "streamGenerateContent?alt=sse" if stream else "generateContent"

    def chat(self, req: ChatRequest, model: str, stream: bool) -> PreparedRequest:
        if is_anthropic(model):
            body = anthropic.build_request(req, model.split("@", 1)[0], stream)
            method = "streamRawPredict" if stream else "rawPredict"
            return PreparedRequest(self._url(model, method), self._anthropic_body(body, stream), self.headers)
        body = gemini.build_request(req, model, stream)
        return PreparedRequest(self._url(model, self._gemini_method(stream)), orjson.dumps(body), self.headers)

    def native(self, dialect: str, req: dict[str, Any], model: str, stream: bool) -> PreparedRequest:
        if dialect == "anthropic-messages":
            method = "streamRawPredict" if stream else "rawPredict"
            body = dict(req)
            if isinstance(body.get("messages"), list):  # unsigned thinking: refused by Claude anywhere
                body["messages"] = anthropic.signed_messages(body["messages"])
            return PreparedRequest(self._url(model, method), self._anthropic_body(body, stream), self.headers)
        if dialect == "gemini":
            return PreparedRequest(self._url(model, self._gemini_method(stream)), orjson.dumps(req), self.headers)
        raise NotImplementedError(dialect)

    def count_tokens(self, messages: dict[str, Any], canonical: Callable[[], ChatRequest],
                     model: str) -> PreparedRequest | None:
        if is_anthropic(model):
            # Anthropic's count on Vertex: one endpoint for every Claude model, named in the body.
            body = {**messages, "model": model, "anthropic_version": ANTHROPIC_VERSION}
            return PreparedRequest(f"{self.publishers_url}anthropic/models/count-tokens:rawPredict",
                                   orjson.dumps(body), self.headers)
        inner = gemini.build_request(canonical(), model, False)
        return PreparedRequest(self._url(model, "countTokens"), orjson.dumps(_count_request(inner)), self.headers)

    def count_native(self, req: dict[str, Any], model: str) -> PreparedRequest | None:
        """``countTokens`` for a Gemini caller's GenerateContentRequest (Google's models only)."""
        if is_anthropic(model):
            return None
        return PreparedRequest(self._url(model, "countTokens"), orjson.dumps(_count_request(req)), self.headers)

    def token_count(self, body: bytes) -> int:
        data = orjson.loads(body)
        return int(data["input_tokens"] if "input_tokens" in data else data["totalTokens"])

    def parse_chat(self, body: bytes, model: str) -> ChatResponse:
        if is_anthropic(model):
            return anthropic.parse_response(orjson.loads(body), model)
        return gemini.parse_response(orjson.loads(body), model)

    def stream_decoder(self, model: str) -> StreamDecoder:
        if is_anthropic(model):
            return anthropic.AnthropicStreamDecoder(model)
        return gemini.GeminiStreamDecoder(model)

    def error_info(self, status: int, body: bytes) -> UpstreamErrorInfo:
        return error_info(status, body)
