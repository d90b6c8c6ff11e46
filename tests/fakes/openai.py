"""`FakeOpenAI`: the OpenAI API (and any OpenAI-compatible upstream) on loopback.

Routes under `base_path` (default `/v1`): `POST /chat/completions`,
`POST /responses`, `POST /embeddings`, `GET /models`, `GET /models/{id}`.
Bearer auth against `up.keys`.
"""

from __future__ import annotations

import base64
import secrets
import struct
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any

from aiohttp import web

from .base import Rejected, dumps, json_response, rand_id
from .behaviour import MAX_EMBEDDING_DIMENSIONS, embed, respond
from .openai_chat import ChatRender, completion_chunks, completion_object, parse_chat, usage_block
from .openai_responses import new_render, parse_responses
from .openai_surface import SurfaceRoutes
from .openai_wire import (
    OpenAIError,
    above_maximum,
    below_minimum,
    invalid_value,
    mask_key,
    missing,
    require_model,
    require_object,
    status_error,
)

DEFAULT_MODELS = ("gpt-4o", "gpt-4o-mini", "o3-mini", "text-embedding-3-small", "text-embedding-ada-002")
Route = Callable[[web.Request], Awaitable[web.StreamResponse]]


def sse_data(obj: Any) -> bytes:
    return b"data: " + dumps(obj) + b"\n\n"


def sse_event(obj: dict[str, Any]) -> bytes:
    return b"event: " + str(obj["type"]).encode() + b"\ndata: " + dumps(obj) + b"\n\n"


class FakeOpenAI(SurfaceRoutes):
    """OpenAI upstream.

    `served_models` maps a requested model to the name echoed back (the real API
    answers `gpt-4o` with a dated snapshot); unmapped names are echoed as sent.
    `cached_tokens` / `reasoning_tokens` add to the reported usage details.
    """

    provider = "openai"
    azure_dialect = False  # Azure's content-filter fields in chat responses

    def __init__(
        self,
        keys: Iterable[str] = ("sk-test",),
        *,
        models: Iterable[str] | None = None,
        base_path: str = "/v1",
        served_models: Mapping[str, str] | None = None,
        embedding_dimensions: int = 8,
        strict_params: bool = True,
        responses_api: bool = True,
        rerank_api: bool = False,
    ) -> None:
        super().__init__(keys, models=models)
        self.rerank_api = rerank_api  # POST /rerank in the Jina/Cohere shape (vLLM, Jina)
        self.surface_init()
        # False: an OpenAI-compatible server without the Responses API (DeepSeek, Mistral,
        # many vLLM/Ollama builds): `POST /responses` is a 404 like any unknown URL.
        self.responses_api = responses_api
        # True: `stream: true` is ignored and the answer is one JSON body, as some
        # OpenAI-compatible servers and proxies in front of them do.
        self.ignores_stream = False
        self.base_path = base_path.rstrip("/")
        self.served_models = dict(served_models or {})
        self.embedding_dimensions = embedding_dimensions
        self.strict_params = strict_params  # reject unknown top-level fields, as the real API does
        self.cached_tokens = 0
        self.reasoning_tokens = 0
        self.require_auth = True

    @property
    def base_url(self) -> str:
        """What an OpenAI client takes as `base_url`."""
        return self.url + self.base_path

    # ---- wiring -----------------------------------------------------------------
    def add_routes(self, app: web.Application) -> None:
        bp = self.base_path
        app.router.add_post(f"{bp}/chat/completions", self._guard(self.chat_completions))
        if self.responses_api:
            app.router.add_post(f"{bp}/responses", self._guard(self.responses))
        app.router.add_post(f"{bp}/embeddings", self._guard(self.embeddings))
        app.router.add_get(f"{bp}/models", self._guard(self.list_models))
        app.router.add_get(f"{bp}/models/{{model}}", self._guard(self.get_model))
        self.add_model_routes(app, bp)
        self.add_account_routes(app, bp)

    def _guard(self, route: Route) -> Route:
        async def handler(request: web.Request) -> web.StreamResponse:
            try:
                return await route(request)
            except OpenAIError as e:
                raise Rejected(self.openai_error(e)) from e

        return handler

    def openai_error(self, e: OpenAIError) -> web.Response:
        return json_response(e.body, status=e.status, headers=self.response_headers())

    def response_headers(self) -> dict[str, str]:
        return {"x-request-id": "req_" + secrets.token_hex(16)}

    def error_response(
        self, status: int, message: str | None = None, *, retry_after: float | None = None
    ) -> web.Response:
        return json_response(status_error(status, message), status=status, headers=self.response_headers())

    def not_found_response(self, request: web.Request) -> web.Response:
        body = {
            "error": {
                "message": f"Invalid URL ({request.method} {request.path})",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        }
        return json_response(body, status=404)

    def stream_error_frame(self, sent: int) -> bytes:
        # Mid-stream failures arrive as a data line holding an `error` object, and no [DONE].
        return sse_data(status_error(500, self.faults.error_message))

    # ---- shared checks -----------------------------------------------------------
    def authenticate(self, request: web.Request) -> None:
        auth = request.headers.get("Authorization", "")
        if not self.require_auth:
            return  # a self-hosted server (vLLM, Ollama) started without an API key
        if not auth:
            raise OpenAIError(
                "You didn't provide an API key. You need to provide your API key in an Authorization "
                "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password "
                "field (with blank username) if you're accessing the API from your browser and are "
                "prompted for a username and password. You can obtain an API key from "
                "https://platform.openai.com/account/api-keys.",
                status=401,
            )
        key = auth.removeprefix("Bearer ").strip()
        if key not in self.keys:
            raise OpenAIError(
                f"Incorrect API key provided: {mask_key(key)}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                status=401,
                code="invalid_api_key",
            )

    def check_model(self, model: str) -> None:
        if self.models is not None and model not in self.models:
            raise OpenAIError(
                f"The model `{model}` does not exist or you do not have access to it.",
                status=404,
                code="model_not_found",
            )

    def served(self, model: str) -> str:
        return self.served_models.get(model, model)

    # ---- chat completions ------------------------------------------------------------
    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        self.authenticate(request)
        body = require_object(self.body_of(request))
        model = require_model(body)
        self.check_model(model)
        return await self.render_chat(request, body, self.served(model), azure=self.azure_dialect)

    async def render_chat(
        self, request: web.Request, body: dict[str, Any], served: str, *, azure: bool
    ) -> web.StreamResponse:
        # Validate against the served model: reasoning-model rules follow the real model.
        req = parse_chat(body, served, strict_params=self.strict_params)
        reply = respond(req.prompt, self.agent)
        render = ChatRender(
            id=rand_id("chatcmpl-", 29),
            created=int(time.time()),
            model=served,
            fingerprint="fp_" + secrets.token_hex(5),
            reply=reply,
            req=req,
            usage=usage_block(reply, cached_tokens=self.cached_tokens, reasoning_tokens=self.reasoning_tokens),
            call_id=rand_id("call_"),
            azure=azure,
        )
        headers = self.response_headers()
        if not req.stream or self.ignores_stream:
            return json_response(completion_object(render), headers=headers)

        def frames() -> Iterator[bytes]:
            for chunk in completion_chunks(render):
                yield sse_data(chunk)
            yield b"data: [DONE]\n\n"

        return await self.stream(request, frames(), headers=headers)

    # ---- responses -----------------------------------------------------------------
    async def responses(self, request: web.Request) -> web.StreamResponse:
        self.authenticate(request)
        body = require_object(self.body_of(request))
        model = require_model(body)
        self.check_model(model)
        req = parse_responses(body, model, strict_params=self.strict_params)
        req.model = self.served(model)
        render = new_render(
            req,
            respond(req.prompt, self.agent),
            int(time.time()),
            cached_tokens=self.cached_tokens,
            reasoning_tokens=self.reasoning_tokens,
        )
        headers = self.response_headers()
        if not req.stream:
            return json_response(render.response(True), headers=headers)

        def frames() -> Iterator[bytes]:
            for seq, event in enumerate(render.events()):
                yield sse_event({"type": event["type"], "sequence_number": seq, **event})

        def error_frame(sent: int) -> bytes:
            error = status_error(500)["error"]
            return sse_event(
                {
                    "type": "error",
                    "code": "server_error",
                    "message": error["message"],
                    "param": None,
                    "sequence_number": sent,
                }
            )

        return await self.stream(request, frames(), headers=headers, error_frame=error_frame)

    # ---- embeddings ------------------------------------------------------------------
    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        self.authenticate(request)
        body = require_object(self.body_of(request))
        model = require_model(body)
        self.check_model(model)
        return json_response(self.embedding_result(body, self.served(model)), headers=self.response_headers())

    def embedding_result(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        texts, tokens = _embedding_inputs(body.get("input") if "input" in body else _MISSING)
        fmt = body.get("encoding_format", "float")
        if fmt not in ("float", "base64"):
            raise invalid_value("encoding_format", fmt, ("float", "base64"))
        dims = body.get("dimensions")
        if dims is not None:
            if not model.startswith("text-embedding-3"):
                raise OpenAIError("This model does not support specifying dimensions.")
            if not isinstance(dims, int) or dims < 1:
                raise below_minimum("dimensions", 1, dims)
            if dims > MAX_EMBEDDING_DIMENSIONS:
                raise above_maximum("dimensions", MAX_EMBEDDING_DIMENSIONS, dims)
        size = dims or self.embedding_dimensions
        data = []
        for i, text in enumerate(texts):
            vector = embed(text, size)
            value: Any = vector
            if fmt == "base64":
                # Little-endian float32, the layout the SDKs decode.
                value = base64.b64encode(struct.pack(f"<{size}f", *vector)).decode()
            data.append({"object": "embedding", "index": i, "embedding": value})
        return {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    # ---- models ---------------------------------------------------------------------
    def model_object(self, name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": 1715367049, "owned_by": "system"}

    async def list_models(self, request: web.Request) -> web.StreamResponse:
        self.authenticate(request)
        names = self.models if self.models is not None else list(DEFAULT_MODELS)
        return json_response({"object": "list", "data": [self.model_object(n) for n in names]})

    async def get_model(self, request: web.Request) -> web.StreamResponse:
        self.authenticate(request)
        name = request.match_info["model"]
        names = self.models if self.models is not None else list(DEFAULT_MODELS)
        if name not in names:
            raise OpenAIError(f"The model '{name}' does not exist", status=404, param="model", code="model_not_found")
        return json_response(self.model_object(name))


_MISSING = object()
_INVALID_INPUT = "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference."


def _embedding_inputs(value: Any) -> tuple[list[str], int]:
    """Texts to embed and the token count: strings, string arrays, token arrays, arrays of those."""
    if value is _MISSING:
        raise missing("input")
    if isinstance(value, str):
        if not value:
            raise OpenAIError(_INVALID_INPUT)
        return [value], max(1, len(value.split()))
    if not isinstance(value, list) or not value:
        raise OpenAIError(_INVALID_INPUT)
    if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return [" ".join(map(str, value))], len(value)
    texts: list[str] = []
    tokens = 0
    for v in value:
        if isinstance(v, str) and v:
            texts.append(v)
            tokens += max(1, len(v.split()))
        elif isinstance(v, list) and v and all(isinstance(t, int) for t in v):
            texts.append(" ".join(map(str, v)))
            tokens += len(v)
        else:
            raise OpenAIError(_INVALID_INPUT)
    return texts, tokens
