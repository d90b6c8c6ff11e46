"""`FakeVertex`: Vertex AI's publisher model endpoints on loopback, for Google and Anthropic models.

Routes (Vertex AI REST reference):
``POST /v1/projects/{project}/locations/{location}/publishers/google/models/{model}:generateContent``
(``:streamGenerateContent?alt=sse``, ``:countTokens``) with the Gemini request shape, and
``.../publishers/anthropic/models/{model}:rawPredict`` (``:streamRawPredict``) with
Anthropic's Messages body, ``anthropic_version: vertex-2023-10-16`` and the model in the
path. Authentication: ``Authorization: Bearer <OAuth access token>``; the front end's
errors are Google's ``{"error": {"code", "message", "status"}}``, Claude's own are
Anthropic's.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterable, Iterator
from typing import Any

from aiohttp import web

from .anthropic import sse
from .anthropic_messages import AnthropicError, new_message_render, parse_messages
from .base import FakeUpstream, Rejected, dumps, json_response
from .behaviour import respond
from .gemini import STATUS
from .gemini_wire import GeminiError, GenerateRender, camelize, parse_generate

ANTHROPIC_VERSION = "vertex-2023-10-16"


class FakeVertex(FakeUpstream):
    provider = "vertex"

    def __init__(self, tokens: Iterable[str] = ("ya29.test-token",), *, project: str = "my-project",
                 location: str = "us-east5", models: Iterable[str] | None = None) -> None:
        super().__init__(tokens, models=models)
        self.project = project
        self.location = location

    @property
    def base_url(self) -> str:
        """What a ProviderKey's baseURL takes."""
        return self.url

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/projects/{project}/locations/{location}/publishers/{publisher}/models/{target}",
                            self.model_method)

    # ---- errors -----------------------------------------------------------------
    @staticmethod
    def error(status: int, message: str) -> web.Response:
        name = STATUS.get(status, ("UNKNOWN", ""))[0]
        return json_response({"error": {"code": status, "message": message, "status": name}}, status=status)

    def error_response(self, status: int, message: str | None = None, *,
                       retry_after: float | None = None) -> web.Response:
        return self.error(status, message or STATUS.get(status, ("", f"HTTP {status}"))[1])

    def stream_error_frame(self, sent: int) -> bytes:
        message = self.faults.error_message or STATUS[500][1]
        return b"data: " + dumps({"error": {"code": 500, "message": message, "status": "INTERNAL"}}) + b"\r\n\r\n"

    def authenticate(self, request: web.Request) -> None:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            raise Rejected(self.error(401, "Request is missing required authentication credential. Expected OAuth 2 "
                                           "access token, login cookie or other valid authentication credential."))
        if auth.removeprefix("Bearer ") not in self.keys:
            raise Rejected(self.error(401, "Request had invalid authentication credentials. Expected OAuth 2 access "
                                           "token, login cookie or other valid authentication credential."))

    # ---- routes -------------------------------------------------------------------
    async def model_method(self, request: web.Request) -> web.StreamResponse:
        self.authenticate(request)
        info = request.match_info
        if info["project"] != self.project or info["location"] != self.location:
            return self.error(403, f"Permission 'aiplatform.endpoints.predict' denied on resource "
                                   f"'//aiplatform.googleapis.com/projects/{info['project']}/locations/"
                                   f"{info['location']}' (or it may not exist).")
        model, _, method = info["target"].partition(":")
        if self.models is not None and model not in self.models:
            return self.error(404, f"Publisher Model `projects/{self.project}/locations/{self.location}/publishers/"
                                   f"{info['publisher']}/models/{model}` not found.")
        if info["publisher"] == "google" and method in ("generateContent", "streamGenerateContent", "countTokens"):
            try:
                return await self.gemini(request, model, method)
            except GeminiError as e:
                return self.error(e.status, str(e))
        if info["publisher"] == "anthropic" and model == "count-tokens" and method == "rawPredict":
            return self.claude_count(request)
        if info["publisher"] == "anthropic" and method in ("rawPredict", "streamRawPredict"):
            return await self.claude(request, model, stream=method == "streamRawPredict")
        return self.error(404, f"Method not found: {request.path}")

    async def gemini(self, request: web.Request, model: str, method: str) -> web.StreamResponse:
        body = self.body_of(request)
        if not isinstance(body, dict):
            raise GeminiError("Invalid JSON payload received.")
        for content in camelize(body).get("contents") or []:
            if content.get("role") not in ("user", "model"):
                # Vertex, unlike the Gemini API, insists on a role for every content.
                raise GeminiError("Please use a valid role: user, model.")
        if method == "countTokens":
            for name in body:
                if name not in ("contents", "systemInstruction", "system_instruction", "tools", "generationConfig",
                                "generation_config", "model", "instances"):
                    raise GeminiError(f'Invalid JSON payload received. Unknown name "{name}": Cannot find field.')
            req = parse_generate({k: v for k, v in body.items() if k != "model"})
            return json_response({"totalTokens": req.prompt.input_tokens, "totalBillableCharacters": 0})
        req = parse_generate(body)
        render = GenerateRender(model=model, response_id=base64.urlsafe_b64encode(secrets.token_bytes(15)).decode(),
                                reply=respond(req.prompt, self.agent), include_thoughts=req.include_thoughts)
        if method == "generateContent":
            return json_response(render.response())
        if request.query.get("alt") != "sse":
            return json_response(list(render.chunks()))

        def frames() -> Iterator[bytes]:
            for chunk in render.chunks():
                yield b"data: " + dumps(chunk) + b"\r\n\r\n"

        return await self.stream(request, frames())

    def claude_count(self, request: web.Request) -> web.Response:
        """Anthropic's count_tokens on Vertex: the model is named in the body."""
        body: Any = self.body_of(request)
        try:
            if not isinstance(body, dict) or body.get("anthropic_version") != ANTHROPIC_VERSION:
                raise AnthropicError(f"anthropic_version: Input should be '{ANTHROPIC_VERSION}'")
            req = parse_messages({k: v for k, v in body.items() if k != "anthropic_version"}, count_only=True)
        except AnthropicError as e:
            return json_response({"type": "error", "error": {"type": e.type, "message": str(e)}}, status=e.status)
        return json_response({"input_tokens": req.prompt.input_tokens})

    async def claude(self, request: web.Request, model: str, *, stream: bool) -> web.StreamResponse:
        body: Any = self.body_of(request)
        try:
            if not isinstance(body, dict) or body.get("anthropic_version") != ANTHROPIC_VERSION:
                raise AnthropicError(f"anthropic_version: Input should be '{ANTHROPIC_VERSION}'")
            if "model" in body:
                raise AnthropicError("model: Extra inputs are not permitted")
            req = parse_messages({**{k: v for k, v in body.items() if k != "anthropic_version"},
                                  "model": model})
        except AnthropicError as e:
            return json_response({"type": "error", "error": {"type": e.type, "message": str(e)}}, status=e.status)
        render = new_message_render(req, respond(req.prompt, self.agent), 0, 0)
        if not stream:
            return json_response(render.message())
        # Claude on Vertex streams Anthropic's own SSE, its in-stream errors included.
        return await self.stream(request, (sse(ev) for ev in render.events()), error_frame=self._claude_error)

    def _claude_error(self, sent: int) -> bytes:
        message = self.faults.error_message or "Overloaded"
        return sse({"type": "error", "error": {"type": "overloaded_error", "message": message}})
