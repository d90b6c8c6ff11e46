"""The OpenAI-shaped kinds: ``openai``, ``openai-compatible`` (DeepSeek, Groq, Mistral, vLLM,
Ollama, ...) and ``azure-openai``. They speak the Chat Completions wire format
(``wire/openai_chat``, which is also the canonical form) and, where the server has it,
Responses (``wire/openai_responses``); what is particular to each kind is its URLs and
auth header.
"""

from __future__ import annotations

from typing import Any, ClassVar

import orjson

from ..canonical import ChatRequest, ChatResponse
from ..config import ProviderKeyConfig
from ..syntax import path_segment
from ..wire.base import StreamDecoder, UpstreamErrorInfo
from ..wire.openai_chat.upstream import OpenAIStreamDecoder, openai_error_info, with_model
from .base import PreparedRequest, ProviderAdapter

_URL_MEMO_MAX = 1024


class OpenAIAdapter(ProviderAdapter):
    kind: ClassVar[str] = "openai"

    def __init__(self, pk: ProviderKeyConfig) -> None:
        super().__init__(pk)
        self._headers = {"content-type": "application/json", "accept": "application/json", **pk.headers}
        self._stream_headers = {**self._headers, "accept": "text/event-stream"}

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"authorization": f"Bearer {key}"} if key else {}

    def url(self, operation: str, model: str) -> str:
        return f"{self.base_url}/{operation}"

    def _prepare(self, operation: str, body: dict[str, Any], model: str, stream: bool) -> PreparedRequest:
        return PreparedRequest(self.url(operation, model), orjson.dumps(body),
                               self._stream_headers if stream else self._headers)

    def chat(self, req: ChatRequest, model: str, stream: bool) -> PreparedRequest:
        return self._prepare("chat/completions", with_model(req, model, stream, translated=True), model, stream)

    def native(self, dialect: str, req: dict[str, Any], model: str, stream: bool) -> PreparedRequest:
        if dialect == "openai-chat":
            return self._prepare("chat/completions", with_model(req, model, stream), model, stream)
        if dialect == "openai-responses":
            return self._prepare("responses", {**req, "model": model}, model, stream)
        raise NotImplementedError(dialect)

    def parse_chat(self, body: bytes, model: str) -> ChatResponse:
        resp: ChatResponse = orjson.loads(body)
        return resp

    def stream_decoder(self, model: str) -> StreamDecoder:
        return OpenAIStreamDecoder()

    def embeddings(self, req: dict[str, Any], model: str) -> PreparedRequest:
        return self._prepare("embeddings", {**req, "model": model}, model, False)

    def parse_embeddings(self, body: bytes, model: str) -> dict[str, Any]:
        resp: dict[str, Any] = orjson.loads(body)
        return resp

    def error_info(self, status: int, body: bytes) -> UpstreamErrorInfo:
        return openai_error_info(status, body)


class OpenAICompatibleAdapter(OpenAIAdapter):
    kind: ClassVar[str] = "openai-compatible"


class AzureOpenAIAdapter(OpenAIAdapter):
    """Azure OpenAI: the backend's model is the *deployment* name.

    ``apiVersion: v1`` selects Azure's newer ``/openai/v1/...`` surface (model in the
    body, no api-version); any other value the classic deployment URLs.
    """

    kind: ClassVar[str] = "azure-openai"

    def __init__(self, pk: ProviderKeyConfig) -> None:
        super().__init__(pk)
        self._api_version = pk.api_version or "2024-10-21"
        self._urls: dict[tuple[str, str], str] = {}

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"api-key": key} if key else {}

    def url(self, operation: str, model: str) -> str:
        # Backends are few; memoise so the hot path does no formatting. Glob-routed names are
        # the caller's choice, so the memo is bounded.
        cached = self._urls.get((operation, model))
        if cached is None:
            if self._api_version == "v1":
                cached = f"{self.base_url}/openai/v1/{operation}"
            else:
                # The deployment is one path segment, whatever the name holds.
                cached = (f"{self.base_url}/openai/deployments/{path_segment(model)}/{operation}"
                          f"?api-version={self._api_version}")
            if len(self._urls) < _URL_MEMO_MAX:
                self._urls[(operation, model)] = cached
        return cached
