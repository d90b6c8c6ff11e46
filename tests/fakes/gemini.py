"""`FakeGemini`: the Gemini API (generativelanguage, v1beta and v1) on loopback.

Routes: `POST /{version}/models/{model}:generateContent`,
`:streamGenerateContent?alt=sse`, `:embedContent`, `:batchEmbedContents`,
`:countTokens`, and `GET /{version}/models`.  Auth by the `x-goog-api-key`
header or the `key` query parameter.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterable, Iterator
from typing import Any

from aiohttp import web

from .base import FakeUpstream, Rejected, dumps, json_response
from .behaviour import MAX_EMBEDDING_DIMENSIONS, embed, respond
from .gemini_wire import GeminiError, GenerateRender, camelize, parse_generate

DEFAULT_MODELS = ("gemini-2.5-flash", "gemini-2.5-pro", "gemini-embedding-001")
STATUS: dict[int, tuple[str, str]] = {
    400: ("INVALID_ARGUMENT", "Request contains an invalid argument."),
    401: ("UNAUTHENTICATED", "Request had invalid authentication credentials."),
    403: ("PERMISSION_DENIED", "The caller does not have permission"),
    404: ("NOT_FOUND", "Requested entity was not found."),
    409: ("ABORTED", "The operation was aborted."),
    429: ("RESOURCE_EXHAUSTED", "You exceeded your current quota, please check your plan and billing details."),
    499: ("CANCELLED", "The operation was cancelled."),
    500: (
        "INTERNAL",
        "An internal error has occurred. Please retry or report in "
        "https://developers.generativeai.google/guide/troubleshooting",
    ),
    501: ("NOT_IMPLEMENTED", "Method not implemented."),
    503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
    504: ("DEADLINE_EXCEEDED", "Deadline expired before operation could complete."),
}
METHODS = ("generateContent", "streamGenerateContent", "embedContent", "batchEmbedContents", "countTokens")


class FakeGemini(FakeUpstream):
    """Gemini upstream.

    `cached_tokens` is reported as `cachedContentTokenCount` (inside
    `promptTokenCount`); `thoughts_tokens` as `thoughtsTokenCount` (outside
    `candidatesTokenCount`, inside `totalTokenCount`), as thinking models do.
    """

    provider = "gemini"

    def __init__(
        self,
        keys: Iterable[str] = ("gemini-key",),
        *,
        models: Iterable[str] | None = None,
        embedding_dimensions: int = 8,
    ) -> None:
        super().__init__(keys, models=models)
        self.embedding_dimensions = embedding_dimensions
        self.cached_tokens = 0
        self.thoughts_tokens = 0

    @property
    def base_url(self) -> str:
        """What `genai.Client(http_options={"base_url": ...})` takes."""
        return self.url

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/{version}/models/{target}", self.model_method)
        app.router.add_get("/{version}/models", self.list_models)

    # ---- errors --------------------------------------------------------------------
    @staticmethod
    def error(status: int, message: str, details: list[dict[str, Any]] | None = None) -> web.Response:
        name = STATUS.get(status, ("UNKNOWN", ""))[0]
        body: dict[str, Any] = {"error": {"code": status, "message": message, "status": name}}
        if details:
            body["error"]["details"] = details
        return json_response(body, status=status)

    def error_response(
        self, status: int, message: str | None = None, *, retry_after: float | None = None
    ) -> web.Response:
        details = None
        if status == 429 and retry_after is not None:
            # Gemini says when to retry in the body (google.rpc.RetryInfo), not only in a header.
            details = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{int(retry_after)}s"}]
        return self.error(status, message or STATUS.get(status, ("", f"HTTP {status}"))[1], details)

    def not_found_response(self, request: web.Request) -> web.Response:
        return self.error(404, f"Method not found: {request.method} {request.path}")

    def stream_error_frame(self, sent: int) -> bytes:
        message = self.faults.error_message or STATUS[500][1]
        return b"data: " + dumps({"error": {"code": 500, "message": message, "status": "INTERNAL"}}) + b"\r\n\r\n"

    # ---- checks -------------------------------------------------------------------------
    def authenticate(self, request: web.Request) -> None:
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        if key is None:
            if request.headers.get("Authorization", "").startswith("Bearer "):
                raise Rejected(
                    self.error(
                        401,
                        "Request had invalid authentication credentials. Expected OAuth 2 access token, "
                        "login cookie or other valid authentication credential. See "
                        "https://developers.google.com/identity/sign-in/web/devconsole-project.",
                    )
                )
            raise Rejected(
                self.error(
                    403,
                    "Method doesn't allow unregistered callers (callers without established identity). "
                    "Please use API Key or other form of API consumer identity to call this API.",
                )
            )
        if key not in self.keys:
            info = {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            }
            raise Rejected(self.error(400, "API key not valid. Please pass a valid API key.", [info]))

    def body(self, request: web.Request) -> dict[str, Any]:
        body = self.body_of(request)
        if not isinstance(body, dict):
            raise GeminiError("Invalid JSON payload received. Expected an object key or }.\n")
        return body

    # ---- routes -----------------------------------------------------------------------------
    async def model_method(self, request: web.Request) -> web.StreamResponse:
        model, _, method = request.match_info["target"].partition(":")
        if method not in METHODS:
            return self.not_found_response(request)
        self.authenticate(request)
        if self.models is not None and model not in self.models:
            return self.error(
                404,
                f"models/{model} is not found for API version {request.match_info['version']}, or is not "
                f"supported for {method}. Call ListModels to see the list of available models and their "
                "supported methods.",
            )
        try:
            if method in ("generateContent", "streamGenerateContent"):
                return await self.generate(request, model, stream=method == "streamGenerateContent")
            if method == "countTokens":
                return self.count_tokens(request)
            return self.embed(request, model, batch=method == "batchEmbedContents")
        except GeminiError as e:
            return self.error(e.status, str(e), e.details)

    async def generate(self, request: web.Request, model: str, *, stream: bool) -> web.StreamResponse:
        req = parse_generate(self.body(request))
        render = GenerateRender(
            model=model,
            response_id=base64.urlsafe_b64encode(secrets.token_bytes(15)).decode(),
            reply=respond(req.prompt, self.agent),
            cached_tokens=self.cached_tokens,
            thoughts_tokens=self.thoughts_tokens,
            include_thoughts=req.include_thoughts,
        )
        if not stream:
            return json_response(render.response())
        if request.query.get("alt") != "sse":
            # Without alt=sse the API streams one JSON array; tests and gateways use SSE.
            return json_response(list(render.chunks()))

        def frames() -> Iterator[bytes]:
            for chunk in render.chunks():
                yield b"data: " + dumps(chunk) + b"\r\n\r\n"

        return await self.stream(request, frames())

    def count_tokens(self, request: web.Request) -> web.StreamResponse:
        body = camelize(self.body(request))
        inner = body.get("generateContentRequest") or {"contents": body.get("contents")}
        inner = {k: v for k, v in inner.items() if k != "model"}
        req = parse_generate(inner)
        total = req.prompt.input_tokens
        return json_response({"totalTokens": total, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": total}]})

    def _embedding(self, request_body: dict[str, Any], where: str) -> dict[str, Any]:
        content = request_body.get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        if not parts:
            raise GeminiError(f"* {where}.content: contents.parts must not be empty.\n")
        text = " ".join(str(p.get("text", "")) for p in parts if isinstance(p, dict))
        dims = request_body.get("outputDimensionality") or self.embedding_dimensions
        if not isinstance(dims, int) or not 1 <= dims <= MAX_EMBEDDING_DIMENSIONS:
            raise GeminiError(f"* {where}.output_dimensionality: must be between 1 and "
                              f"{MAX_EMBEDDING_DIMENSIONS}, got {dims}.\n")
        return {"values": embed(text, dims)}

    def embed(self, request: web.Request, model: str, *, batch: bool) -> web.StreamResponse:
        body = camelize(self.body(request))
        if not batch:
            return json_response({"embedding": self._embedding(body, "EmbedContentRequest")})
        requests = body.get("requests")
        if not requests or not isinstance(requests, list):
            raise GeminiError("* BatchEmbedContentsRequest.requests: requests is not specified\n")
        out = []
        for i, item in enumerate(requests):
            named = str(item.get("model", f"models/{model}")).removeprefix("models/")
            if named != model:
                raise GeminiError(
                    f"* BatchEmbedContentsRequest.requests[{i}].model: model must match the model in the URL "
                    f"(models/{model}).\n"
                )
            out.append(self._embedding(item, f"BatchEmbedContentsRequest.requests[{i}]"))
        return json_response({"embeddings": out})

    async def list_models(self, request: web.Request) -> web.StreamResponse:
        self.authenticate(request)
        names = self.models if self.models is not None else list(DEFAULT_MODELS)
        models = [
            {
                "name": f"models/{n}",
                "displayName": n,
                "supportedGenerationMethods": (
                    ["embedContent", "batchEmbedContents"] if "embedding" in n else ["generateContent", "countTokens"]
                ),
            }
            for n in names
        ]
        return json_response({"models": models})
