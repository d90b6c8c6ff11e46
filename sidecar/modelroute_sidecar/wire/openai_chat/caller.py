"""The OpenAI Chat Completions dialect: ``POST /v1/chat/completions``.

Canonical form is this dialect, so translation is the identity; the work here is
validating input into clear 400s and framing the stream. Validation and JSON parsing
happen in one pass in pydantic-core (``validate_json`` into TypedDicts, which yields
plain dicts and keeps fields the gateway does not know about).
"""

from __future__ import annotations

from typing import Any, cast

import orjson

from ...canonical import ChatChunk, ChatRequest, ChatResponse, Usage, usage_from_openai
from ...errors import GatewayError, bad_request
from ...sse import SSEEvent, frame
from ..base import Dialect, Ingress, NativeTap, StreamEncoder
from .validation import CHAT_REQUEST, EMBEDDINGS_REQUEST, parse_json_object


def render_openai_error(err: GatewayError) -> bytes:
    return orjson.dumps({"error": {"message": err.message, "type": err.type, "param": err.param,
                                   "code": err.code}})


class _ChatEncoder(StreamEncoder):
    __slots__ = ("include_usage",)

    def __init__(self, include_usage: bool) -> None:
        self.include_usage = include_usage

    def chunk(self, chunk: ChatChunk) -> bytes:
        if not chunk.get("choices") and chunk.get("usage") and not self.include_usage:
            return b""  # the usage chunk the gateway asked for, not the caller
        return frame(orjson.dumps(chunk))

    def end(self) -> bytes:
        return b"data: [DONE]\n\n"

    def error(self, err: GatewayError) -> bytes:
        # The openai SDK raises APIError on a data event carrying "error".
        return frame(render_openai_error(err))


class _ChatTap(NativeTap):
    """Pass-through of an OpenAI stream: spot usage, the error event and [DONE]."""

    __slots__ = ("done", "error", "include_usage", "usage")

    def __init__(self, include_usage: bool) -> None:
        self.include_usage = include_usage
        self.usage: Usage | None = None
        self.done = False
        self.error = None

    def feed(self, event: SSEEvent) -> bool:
        data = event.data
        if data == b"[DONE]":
            self.done = True
            return True
        # Substring checks first: only the one usage chunk (and errors) get parsed twice.
        if b'"usage":{' in data or b'"usage": {' in data:
            chunk = orjson.loads(data)
            if chunk.get("usage"):
                self.usage = usage_from_openai(chunk["usage"])
            if not chunk.get("choices"):
                return self.include_usage
        elif data.startswith(b'{"error"'):
            from ..openai_chat.upstream import openai_error_info

            self.error = openai_error_info(502, data)
        return True


class OpenAIChat(Dialect):
    name = "openai-chat"

    def parse(self, body: bytes) -> Ingress:
        req = parse_json_object(body, CHAT_REQUEST)
        if not req["messages"]:
            raise bad_request("Invalid 'messages': empty array. Expected an array with minimum length 1.",
                              "messages", "empty_array")
        if not req["model"]:
            raise bad_request("Invalid 'model': empty string.", "model")
        stream = bool(req.get("stream"))
        opts = req.get("stream_options") or {}
        return Ingress(req, req["model"], stream, bool(opts.get("include_usage")))

    def to_canonical(self, ingress: Ingress) -> ChatRequest:
        return cast(ChatRequest, ingress.body)  # validated as ChatRequestModel: canonical already

    def from_canonical(self, resp: ChatResponse, model: str) -> dict[str, Any]:
        return cast(dict[str, Any], resp)  # the caller's own format

    def stream_encoder(self, model: str, include_usage: bool) -> StreamEncoder:
        return _ChatEncoder(include_usage)

    def render_error(self, err: GatewayError) -> bytes:
        return render_openai_error(err)

    def native_usage(self, body: dict[str, Any]) -> Usage | None:
        return usage_from_openai(body.get("usage"))

    def native_tap(self, include_usage: bool) -> NativeTap:
        return _ChatTap(include_usage)


def parse_embeddings(body: bytes) -> Ingress:
    req = parse_json_object(body, EMBEDDINGS_REQUEST)
    if req["input"] == [] or req["input"] == "":
        raise bad_request("'$.input' is invalid. Please check the API reference: "
                          "https://platform.openai.com/docs/api-reference.", "input")
    return Ingress(req, req["model"], False, False)

