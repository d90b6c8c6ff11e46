"""OpenAI, OpenAI-compatible (DeepSeek, Groq, Mistral, vLLM, Ollama, ...) and Azure OpenAI.

The canonical form *is* OpenAI's wire format, so this adapter mostly replaces the model
and asks for usage on streams; the work is in choosing URLs and auth headers.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import orjson

from ..canonical import ChatChunk, ChatRequest, ChatResponse, usage_from_openai
from ..config import ProviderKeyConfig
from ..errors import ErrorType
from ..sse import SSEEvent
from ..syntax import path_segment
from .base import PreparedRequest, ProviderAdapter, StreamDecoder, StreamError, UpstreamErrorInfo

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


def with_model(req: dict[str, Any], model: str, stream: bool, translated: bool = False) -> dict[str, Any]:
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


class OpenAIAdapter(ProviderAdapter):
    kind: ClassVar[str] = "openai"
    native_dialects: ClassVar[frozenset[str]] = frozenset({"openai-chat", "openai-responses"})

    def __init__(self, pk: ProviderKeyConfig) -> None:
        super().__init__(pk)
        self._headers = {"content-type": "application/json", "accept": "application/json", **pk.headers}
        self._stream_headers = {**self._headers, "accept": "text/event-stream"}
        self._bridged = pk.responses_api == "bridge"

    def speaks(self, dialect: str) -> bool:
        if dialect == "openai-responses" and self._bridged:
            return False
        return dialect in self.native_dialects

    @property
    def probes_responses(self) -> bool:
        """Whether a 404/405 on ``/responses`` should switch this upstream to the bridge."""
        return self.pk.responses_api == "auto" and not self._bridged and "openai-responses" in self.native_dialects

    def bridge_responses(self) -> None:
        """From now on, Responses requests are translated to Chat Completions for this upstream."""
        self._bridged = True

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
    native_dialects: ClassVar[frozenset[str]] = frozenset({"openai-chat"})

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
