"""The ``mock`` provider: deterministic answers in-process, no key, no network.

It answers the engine in OpenAI's wire format, so every caller dialect reaches it through
the same translators as a real upstream, and failures it injects travel the same paths
(HTTP statuses, a stream that breaks off) as real ones: failover, retries, circuit
breakers and metrics behave as they would in production. Everything it says is derived
from the request alone (the reply echoes the prompt; embeddings are seeded by their
input text; injected failures are picked by a hash of the request body), so the same
request gets the same answer, or the same failure, on every run.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
import re
import time
from array import array
from typing import Any, ClassVar

import orjson

from ..canonical import ChatRequest, ChatResponse, CompletionUsage, FinishReason, Message
from ..config import MockSettings, ProviderKeyConfig
from ..wire.base import StreamDecoder, UpstreamErrorInfo
from ..wire.openai_chat.upstream import OpenAIStreamDecoder, error_type_for, openai_error_info, with_model
from .base import PreparedRequest, ProviderAdapter

CHAT_URL = "mock:chat/completions"
EMBEDDINGS_URL = "mock:embeddings"
DEFAULT_DIMENSIONS = 1536  # text-embedding-3-small's, the most common default
MAX_DIMENSIONS = 8192
SNIPPET_CHARS = 200  # of the prompt, echoed in the reply
_WORD = re.compile(r"\s*\S+")


# -- pure functions: what the mock says ---------------------------------------------------

def count_tokens(text: str) -> int:
    """About four characters a token, the usual rule of thumb; at least one."""
    return max(1, (len(text) + 3) // 4)


def message_text(content: Any) -> str:
    """The text of a canonical message's content (a string or a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def snippet(text: str, limit: int = SNIPPET_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def split_tokens(text: str) -> list[str]:
    """Stream pieces: one word (with its leading space) each, as token streams look."""
    return _WORD.findall(text) or ([text] if text else [])


def prompt_tokens(req: ChatRequest) -> int:
    messages = req.get("messages") or []
    total = sum(count_tokens(message_text(m.get("content"))) + 3 for m in messages if isinstance(m, dict))
    if req.get("tools"):
        total += count_tokens(orjson.dumps(req["tools"]).decode())
    return max(total, 1)


def chosen_tool(req: ChatRequest) -> dict[str, Any] | None:
    """The tool to call: one the caller forces, or one the last user message names.

    After a tool result the mock answers in text, so an agent loop ends.
    """
    tools = [t["function"] for t in req.get("tools") or []
             if isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("function"), dict)
             and isinstance(t["function"].get("name"), str)]
    choice = req.get("tool_choice")
    messages = req.get("messages") or []
    if not tools or choice == "none" or not messages or messages[-1].get("role") != "user":
        return None
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        return next((t for t in tools if t["name"] == name), None)
    text = message_text(messages[-1].get("content"))
    for tool in tools:
        if re.search(rf"(?<![\w-]){re.escape(tool['name'])}(?![\w-])", text, re.IGNORECASE):
            return tool
    return tools[0] if choice == "required" else None


def _value_for(schema: Any, text: str) -> Any:
    if not isinstance(schema, dict):
        return text
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    return {"integer": 1, "number": 1, "boolean": True, "array": [], "object": {}, "null": None}.get(
        str(kind), text)


def tool_arguments(tool: dict[str, Any], text: str) -> dict[str, Any]:
    """Arguments that satisfy the tool's schema: each required property, typed."""
    params: dict[str, Any] = tool["parameters"] if isinstance(tool.get("parameters"), dict) else {}
    props: dict[str, Any] = params["properties"] if isinstance(params.get("properties"), dict) else {}
    required = [r for r in params.get("required") or [] if isinstance(r, str)]
    fill = snippet(text, 60)
    return {name: _value_for(props.get(name), fill) for name in required}


def reply_text(req: ChatRequest, model: str, settings: MockSettings) -> str:
    if settings.reply is not None:
        return settings.reply
    messages = [m for m in req.get("messages") or [] if isinstance(m, dict)]
    last = messages[-1] if messages else {}
    said = snippet(message_text(last.get("content")))
    if last.get("role") == "tool":
        return f"[mock {model}] The tool returned: {said or '(nothing)'}"
    return f"[mock {model}] You said: {said}" if said else f"[mock {model}] You said nothing."


def _seed(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def fails(body: bytes, rate: float) -> bool:
    """Whether this request is one of the ``rate`` share that fails: by its hash, not by chance."""
    return rate > 0 and _seed(body) / 2**64 < rate


class Answer:
    """One chat answer: text pieces or a tool call, usage and finish reason."""

    __slots__ = ("arguments", "finish_reason", "id", "input_tokens", "model", "pieces", "tool")

    def __init__(self, req: ChatRequest, body: bytes, settings: MockSettings) -> None:
        self.model = str(req.get("model") or "mock")
        self.id = f"chatcmpl-mock-{_seed(body):016x}"
        self.input_tokens = prompt_tokens(req)
        tool = chosen_tool(req)
        self.tool = tool
        self.arguments = ""
        self.finish_reason: FinishReason = "stop"
        limit = req.get("max_completion_tokens") or req.get("max_tokens")
        if tool is not None:
            last = req["messages"][-1]
            self.arguments = orjson.dumps(tool_arguments(tool, message_text(last.get("content")))).decode()
            # Arguments stream in pieces of a few characters, as real upstreams send them.
            self.pieces = [self.arguments[i:i + 16] for i in range(0, len(self.arguments), 16)] or ["{}"]
            self.finish_reason = "tool_calls"
        else:
            self.pieces = split_tokens(reply_text(req, self.model, settings))
            if isinstance(limit, int) and 0 < limit < len(self.pieces):
                self.pieces = self.pieces[:limit]
                self.finish_reason = "length"

    @property
    def output_tokens(self) -> int:
        return count_tokens(self.arguments) + 5 if self.tool is not None else len(self.pieces)

    def usage(self) -> CompletionUsage:
        return {"prompt_tokens": self.input_tokens, "completion_tokens": self.output_tokens,
                "total_tokens": self.input_tokens + self.output_tokens}

    def tool_call_id(self) -> str:
        return "call_" + self.id[-16:]

    def completion(self) -> ChatResponse:
        message: Message = {"role": "assistant", "content": None if self.tool else "".join(self.pieces)}
        if self.tool is not None:
            message["tool_calls"] = [{"id": self.tool_call_id(), "type": "function",
                                      "function": {"name": self.tool["name"], "arguments": self.arguments}}]
        return {"id": self.id, "object": "chat.completion", "created": int(time.time()), "model": self.model,
                "choices": [{"index": 0, "message": message, "finish_reason": self.finish_reason}],
                "usage": self.usage()}

    def events(self, include_usage: bool) -> list[bytes]:
        """The answer as OpenAI SSE events, one chunk per piece."""
        created = int(time.time())
        head = {"id": self.id, "object": "chat.completion.chunk", "created": created, "model": self.model}

        def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
            chunk = {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return b"data: " + orjson.dumps(chunk) + b"\n\n"

        out = [event({"role": "assistant", "content": "" if self.tool is None else None})]
        if self.tool is not None:
            out.append(event({"tool_calls": [{"index": 0, "id": self.tool_call_id(), "type": "function",
                                              "function": {"name": self.tool["name"], "arguments": ""}}]}))
            out.extend(event({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}) for p in self.pieces)
        else:
            out.extend(event({"content": p}) for p in self.pieces)
        out.append(event({}, self.finish_reason))
        if include_usage:
            out.append(b"data: " + orjson.dumps({**head, "choices": [], "usage": self.usage()}) + b"\n\n")
        out.append(b"data: [DONE]\n\n")
        return out


def embedding_inputs(value: Any) -> list[str]:
    """Each input of an embeddings request as text (token arrays by their numbers)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return [" ".join(map(str, value))]
    if isinstance(value, list):
        return [v if isinstance(v, str) else " ".join(map(str, v)) if isinstance(v, list) else str(v)
                for v in value]
    return [str(value)]


def embedding(text: str, model: str, dimensions: int) -> list[float]:
    """A unit vector seeded by (model, text): the same text embeds the same everywhere."""
    rnd = random.Random(_seed(f"{model}\0{text}".encode()))
    vec = [rnd.gauss(0.0, 1.0) for _ in range(dimensions)]
    norm = sum(v * v for v in vec) ** 0.5 or 1.0
    return [v / norm for v in vec]


def embeddings_response(req: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """(status, body) for an embeddings request, as OpenAI would answer it."""
    model = str(req.get("model") or "mock")
    dims = req.get("dimensions", DEFAULT_DIMENSIONS)
    if not isinstance(dims, int) or isinstance(dims, bool) or not 1 <= dims <= MAX_DIMENSIONS:
        return 400, {"error": {"message": f"dimensions must be an integer from 1 to {MAX_DIMENSIONS}",
                               "type": "invalid_request_error", "param": "dimensions", "code": None}}
    b64 = req.get("encoding_format") == "base64"
    texts = embedding_inputs(req.get("input"))
    data = []
    for i, text in enumerate(texts):
        vec = embedding(text, model, dims)
        value: Any = base64.b64encode(array("f", vec).tobytes()).decode() if b64 else vec
        data.append({"object": "embedding", "index": i, "embedding": value})
    used = sum(count_tokens(t) for t in texts)
    return 200, {"object": "list", "data": data, "model": model,
                 "usage": {"prompt_tokens": used, "total_tokens": used}}


# -- the response object the engine reads --------------------------------------------------

class MockResponse:
    """The surface of an upstream response the engine uses (status, headers, read, readany)."""

    __slots__ = ("_break_after", "_events", "_interval", "_sent", "content", "headers", "status")

    def __init__(self, status: int, events: list[bytes], interval: float = 0.0,
                 break_after: int | None = None) -> None:
        self.status = status
        self.headers: dict[str, str] = {"content-type": "application/json"}
        self.content = self
        self._events = events
        self._interval = interval
        self._break_after = break_after
        self._sent = 0

    async def readany(self) -> bytes:
        i = self._sent
        if i >= len(self._events):
            return b""
        if self._break_after is not None and i >= self._break_after:
            raise ConnectionResetError("mock: the stream breaks off here (spec.mock.failAfterChunks)")
        if i and self._interval:
            await asyncio.sleep(self._interval)
        self._sent = i + 1
        return self._events[i]

    async def read(self) -> bytes:
        parts = []
        while data := await self.readany():
            parts.append(data)
        return b"".join(parts)

    def close(self) -> None:
        self._sent = len(self._events)


class MockAdapter(ProviderAdapter):
    kind: ClassVar[str] = "mock"
    in_process: ClassVar[bool] = True
    priced: ClassVar[bool] = False

    def __init__(self, pk: ProviderKeyConfig) -> None:
        self.pk = pk
        self.base_url = pk.base_url
        self.proxy, self.proxy_auth = None, None  # never on the network
        self.settings = pk.mock or MockSettings()
        s = self.settings
        self._first_byte = s.first_byte_ms / 1000
        self._interval = s.chunk_interval_ms / 1000

    def auth_headers(self, key: str) -> dict[str, str]:
        return {}

    def chat(self, req: ChatRequest, model: str, stream: bool) -> PreparedRequest:
        return PreparedRequest(CHAT_URL, orjson.dumps(with_model(req, model, stream)), {})

    def parse_chat(self, body: bytes, model: str) -> ChatResponse:
        resp: ChatResponse = orjson.loads(body)
        return resp

    def stream_decoder(self, model: str) -> StreamDecoder:
        return OpenAIStreamDecoder()

    def embeddings(self, req: dict[str, Any], model: str) -> PreparedRequest:
        return PreparedRequest(EMBEDDINGS_URL, orjson.dumps({**req, "model": model}), {})

    def parse_embeddings(self, body: bytes, model: str) -> dict[str, Any]:
        resp: dict[str, Any] = orjson.loads(body)
        return resp

    def error_info(self, status: int, body: bytes) -> UpstreamErrorInfo:
        return openai_error_info(status, body)

    async def respond(self, prepared: PreparedRequest) -> MockResponse:
        """Answer ``prepared`` as an OpenAI upstream would, with the injected latency and failures."""
        s = self.settings
        if self._first_byte:
            await asyncio.sleep(self._first_byte)
        body = prepared.body
        if fails(body, s.failure_rate):
            err = {"error": {"message": f"mock: injected failure (spec.mock.failureRate {s.failure_rate:g})",
                             "type": error_type_for(s.fail_status), "param": None, "code": "mock_failure"}}
            return MockResponse(s.fail_status, [orjson.dumps(err)])
        if prepared.url.startswith("mock:surface/"):  # images, audio, moderations, completions, rerank
            from ..surface.mock import respond

            return respond(prepared, s, self._interval)
        req = orjson.loads(body)
        if prepared.url == EMBEDDINGS_URL:
            status, out = embeddings_response(req)
            return MockResponse(status, [orjson.dumps(out)])
        answer = Answer(req, body, s)
        if req.get("stream"):
            include_usage = bool((req.get("stream_options") or {}).get("include_usage"))
            resp = MockResponse(200, answer.events(include_usage), self._interval, s.fail_after_chunks)
            resp.headers["content-type"] = "text/event-stream"
            return resp
        # failAfterChunks cuts a whole answer too, when it would have taken more chunks.
        cut = s.fail_after_chunks is not None and s.fail_after_chunks < len(answer.pieces)
        resp = MockResponse(200, [orjson.dumps(answer.completion())], 0.0, 0 if cut else None)
        if self._interval:
            # Generation takes its time without a stream too: one interval per piece.
            await asyncio.sleep(self._interval * len(answer.pieces))
        return resp
