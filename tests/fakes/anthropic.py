"""`FakeAnthropic`: the Anthropic Messages API on loopback.

Routes: `POST /v1/messages` (stream and not), `POST /v1/messages/count_tokens`,
`GET /v1/models`.  Auth by `x-api-key` or `Authorization: Bearer` (the current
SDK sends Bearer); the `anthropic-version` header is required.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator
from typing import Any

from aiohttp import web

from .anthropic_messages import AnthropicError, new_message_render, parse_messages
from .base import FakeUpstream, Rejected, dumps, json_response
from .behaviour import respond

DEFAULT_MODELS = ("claude-sonnet-4-6", "claude-haiku-4-5", "claude-opus-4-7")
STATUS_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    402: ("billing_error", "Your credit balance is too low to access the Anthropic API."),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "Not found"),
    409: ("conflict_error", "Conflict"),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: (
        "rate_limit_error",
        "This request would exceed the rate limit for your organization of 50 input tokens per minute.",
    ),
    500: ("api_error", "Internal server error"),
    504: ("timeout_error", "Request timed out"),
    529: ("overloaded_error", "Overloaded"),
}


def sse(event: dict[str, Any]) -> bytes:
    return b"event: " + str(event["type"]).encode() + b"\ndata: " + dumps(event) + b"\n\n"


class FakeAnthropic(FakeUpstream):
    """Anthropic upstream.

    `cache_read_tokens` / `cache_creation_tokens` are reported on top of
    `input_tokens` (which, as in the real API, excludes them).
    """

    provider = "anthropic"

    def __init__(
        self,
        keys: Iterable[str] = ("sk-ant-test",),
        *,
        models: Iterable[str] | None = None,
        strict_params: bool = True,
    ) -> None:
        super().__init__(keys, models=models)
        self.strict_params = strict_params
        self.cache_read_tokens = 0
        self.cache_creation_tokens = 0

    @property
    def base_url(self) -> str:
        """What `anthropic.Anthropic(base_url=...)` takes."""
        return self.url

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/messages", self.messages)
        app.router.add_post("/v1/messages/count_tokens", self.count_tokens)
        app.router.add_get("/v1/models", self.list_models)

    # ---- errors ------------------------------------------------------------------
    @staticmethod
    def request_id() -> str:
        return "req_011C" + secrets.token_hex(10)

    def error(self, status: int, kind: str, message: str) -> web.Response:
        rid = self.request_id()
        body = {"type": "error", "error": {"type": kind, "message": message}, "request_id": rid}
        return json_response(body, status=status, headers={"request-id": rid})

    def error_response(
        self, status: int, message: str | None = None, *, retry_after: float | None = None
    ) -> web.Response:
        default_kind = "api_error" if status >= 500 else "invalid_request_error"
        kind, text = STATUS_ERRORS.get(status, (default_kind, f"HTTP {status}"))
        resp = self.error(status, kind, message or text)
        if status == 529 or status >= 500:
            resp.headers["x-should-retry"] = "true"
        return resp

    def not_found_response(self, request: web.Request) -> web.Response:
        return self.error(404, "not_found_error", "Not Found")

    def stream_error_frame(self, sent: int) -> bytes:
        message = self.faults.error_message or "Overloaded"
        return sse({"type": "error", "error": {"type": "overloaded_error", "message": message}})

    # ---- checks --------------------------------------------------------------------
    def check_headers(self, request: web.Request) -> None:
        key = request.headers.get("x-api-key")
        auth = request.headers.get("Authorization", "")
        if key is None and auth.startswith("Bearer "):
            key = auth.removeprefix("Bearer ").strip()
        if key is None:
            raise Rejected(self.error(401, "authentication_error", "x-api-key header is required"))
        if key not in self.keys:
            raise Rejected(self.error(401, "authentication_error", "invalid x-api-key"))
        if "anthropic-version" not in request.headers:
            raise Rejected(self.error(400, "invalid_request_error", "anthropic-version: header is required"))

    def _parse(self, request: web.Request, count_only: bool) -> Any:
        self.check_headers(request)
        try:
            req = parse_messages(self.body_of(request), count_only=count_only, strict_params=self.strict_params)
        except AnthropicError as e:
            raise Rejected(self.error(e.status, e.type, str(e))) from e
        if self.models is not None and req.model not in self.models:
            raise Rejected(self.error(404, "not_found_error", f"model: {req.model}"))
        return req

    # ---- routes ----------------------------------------------------------------------
    async def messages(self, request: web.Request) -> web.StreamResponse:
        req = self._parse(request, count_only=False)
        reply = respond(req.prompt, self.agent)
        render = new_message_render(req, reply, self.cache_read_tokens, self.cache_creation_tokens)
        headers = {"request-id": self.request_id()}
        if not req.stream:
            return json_response(render.message(), headers=headers)

        def frames() -> Iterator[bytes]:
            for event in render.events():
                yield sse(event)

        return await self.stream(request, frames(), headers=headers)

    async def count_tokens(self, request: web.Request) -> web.StreamResponse:
        req = self._parse(request, count_only=True)
        return json_response({"input_tokens": req.prompt.input_tokens})

    async def list_models(self, request: web.Request) -> web.StreamResponse:
        self.check_headers(request)
        names = self.models if self.models is not None else list(DEFAULT_MODELS)
        data = [{"type": "model", "id": n, "display_name": n, "created_at": "2025-09-29T00:00:00Z"} for n in names]
        return json_response({"data": data, "has_more": False, "first_id": names[0], "last_id": names[-1]})
