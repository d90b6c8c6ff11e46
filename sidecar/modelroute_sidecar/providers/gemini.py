"""The ``gemini`` kind: the Gemini API (``generativelanguage.googleapis.com``), which speaks the
Gemini wire format (``wire/gemini``). What is particular to the kind: the ``/v1beta/models/``
URLs and ``x-goog-api-key``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from ..canonical import ChatRequest, ChatResponse
from ..config import ProviderKeyConfig
from ..syntax import path_segment
from ..wire.base import StreamDecoder, UpstreamErrorInfo
from ..wire.gemini.upstream import (
    GeminiStreamDecoder,
    build_embeddings,
    build_request,
    error_info,
    parse_embeddings,
    parse_response,
)
from .base import PreparedRequest, ProviderAdapter


class GeminiAdapter(ProviderAdapter):
    kind = "gemini"

    def __init__(self, pk: ProviderKeyConfig) -> None:
        super().__init__(pk)
        base = pk.base_url.rstrip("/")
        self.models_url = (base if base.endswith("/v1beta") else base + "/v1beta") + "/models/"
        self.headers = {"content-type": "application/json", **pk.headers}

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"x-goog-api-key": key}

    def _url(self, model: str, method: str) -> str:
        # The name is one path segment, whatever it holds: it can never reach another path.
        return f"{self.models_url}{path_segment(model.removeprefix('models/'))}:{method}"

    def chat(self, req: ChatRequest, model: str, stream: bool) -> PreparedRequest:
        url = self._url(model, "streamGenerateContent?alt=sse" if stream else "generateContent")
        return PreparedRequest(url, orjson.dumps(build_request(req, model, stream)), self.headers)

    def parse_chat(self, body: bytes, model: str) -> ChatResponse:
        return parse_response(orjson.loads(body), model)

    def count_tokens(self, messages: dict[str, Any], canonical: Callable[[], ChatRequest],
                     model: str) -> PreparedRequest | None:
        inner = build_request(canonical(), model, False)
        body = {"generateContentRequest": {"model": "models/" + model.removeprefix("models/"), **inner}}
        return PreparedRequest(self._url(model, "countTokens"), orjson.dumps(body), self.headers)

    def native(self, dialect: str, req: dict[str, Any], model: str, stream: bool) -> PreparedRequest:
        """A Gemini caller's GenerateContentRequest, as sent, to the backend's model (the
        upstream always streams as SSE; the dialect re-frames for JSON-array callers)."""
        url = self._url(model, "streamGenerateContent?alt=sse" if stream else "generateContent")
        return PreparedRequest(url, orjson.dumps(req), self.headers)

    def count_native(self, req: dict[str, Any], model: str) -> PreparedRequest:
        """``countTokens`` for a Gemini caller's GenerateContentRequest."""
        body = {"generateContentRequest": {"model": "models/" + model.removeprefix("models/"), **req}}
        return PreparedRequest(self._url(model, "countTokens"), orjson.dumps(body), self.headers)

    def token_count(self, body: bytes) -> int:
        return int(orjson.loads(body)["totalTokens"])

    def stream_decoder(self, model: str) -> StreamDecoder:
        return GeminiStreamDecoder(model)

    def embeddings(self, req: dict[str, Any], model: str) -> PreparedRequest:
        method, body = build_embeddings(req, model.removeprefix("models/"))
        return PreparedRequest(self._url(model, method), orjson.dumps(body), self.headers)

    def parse_embeddings(self, body: bytes, model: str) -> dict[str, Any]:
        return parse_embeddings(orjson.loads(body), model)

    def error_info(self, status: int, body: bytes) -> UpstreamErrorInfo:
        return error_info(status, body)
