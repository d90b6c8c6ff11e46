"""The ``anthropic`` kind: Anthropic's API, which speaks the Anthropic Messages wire format
(``wire/anthropic``). What is particular to the kind: the URL, ``x-api-key`` and the
``anthropic-version`` header.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from ..canonical import ChatRequest, ChatResponse
from ..config import ProviderKeyConfig
from ..wire.anthropic.upstream import (
    API_VERSION,
    LEGACY_API_VERSION,
    AnthropicStreamDecoder,
    build_request,
    error_info,
    native_request,
    parse_response,
    signed_messages,
)
from ..wire.base import StreamDecoder, UpstreamErrorInfo
from .base import PreparedRequest, ProviderAdapter


class AnthropicAdapter(ProviderAdapter):
    kind = "anthropic"

    def __init__(self, pk: ProviderKeyConfig) -> None:
        super().__init__(pk)
        base = pk.base_url.rstrip("/")
        self.url = base + "/messages" if base.endswith("/v1") else base + "/v1/messages"
        self.api_version = pk.api_version or API_VERSION
        self._sampling = self.api_version == LEGACY_API_VERSION
        self.headers = {
            "content-type": "application/json",
            "anthropic-version": self.api_version,
            **pk.headers,
        }

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"x-api-key": key}

    def chat(self, req: ChatRequest, model: str, stream: bool) -> PreparedRequest:
        body = build_request(req, model, stream, sampling=self._sampling)
        return PreparedRequest(self.url, orjson.dumps(body), self.headers)

    def parse_chat(self, body: bytes, model: str) -> ChatResponse:
        return parse_response(orjson.loads(body), model)

    def stream_decoder(self, model: str) -> StreamDecoder:
        return AnthropicStreamDecoder(model)

    def native(self, dialect: str, req: dict[str, Any], model: str, stream: bool) -> PreparedRequest:
        if dialect != "anthropic-messages":
            raise NotImplementedError(dialect)
        # The dialect forwards the caller's anthropic-version and anthropic-beta headers, so
        # the body is valid upstream exactly when it would be sent there directly.
        return PreparedRequest(self.url, orjson.dumps(native_request(req, model, stream)), self.headers)

    def count_tokens(self, messages: dict[str, Any], canonical: Callable[[], ChatRequest],
                     model: str) -> PreparedRequest | None:
        body = dict(messages)
        body["model"] = model
        if isinstance(body.get("messages"), list):
            body["messages"] = signed_messages(body["messages"])
        return PreparedRequest(self.url + "/count_tokens", orjson.dumps(body), self.headers)

    def token_count(self, body: bytes) -> int:
        return int(orjson.loads(body)["input_tokens"])

    def error_info(self, status: int, body: bytes) -> UpstreamErrorInfo:
        return error_info(status, body)
