"""Shared pieces for the translation tests: chunk streams, SSE splitting, SDK clients."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import anthropic
import httpx2
import openai
import orjson

from modelroute_sidecar.canonical import ChatChunk, Usage, usage_from_openai
from modelroute_sidecar.sse import SSEParser
from modelroute_sidecar.wire.anthropic.upstream import openai_usage
from modelroute_sidecar.wire.base import StreamDecoder


@dataclass
class Reassembled:
    """What a canonical stream says, put back together."""

    text: str = ""
    tools: list[tuple[str, str, str]] = field(default_factory=list)  # (id, name, arguments)
    finish: str | None = None
    usage: Usage | None = None
    role: str | None = None


def reassemble(chunks: Iterable[ChatChunk]) -> Reassembled:
    out = Reassembled()
    calls: dict[int, list[str]] = {}
    for c in chunks:
        if c.get("usage"):
            out.usage = usage_from_openai(c["usage"])
        for ch in c.get("choices") or ():
            d = ch.get("delta") or {}
            if d.get("role"):
                out.role = d["role"]
            text = d.get("content")
            if text:
                out.text += text
            for tc in d.get("tool_calls") or ():
                slot = calls.setdefault(tc["index"], ["", "", ""])
                if tc.get("id"):
                    slot[0] = tc["id"]
                fn = tc.get("function") or {}
                if fn.get("name"):
                    slot[1] = fn["name"]
                slot[2] += fn.get("arguments") or ""
            if ch.get("finish_reason"):
                out.finish = ch["finish_reason"]
    out.tools = [tuple(calls[i]) for i in sorted(calls)]  # type: ignore[misc]
    return out


def chunk(delta: Any, finish: Any = None, cid: str = "chatcmpl-1") -> ChatChunk:
    return {"id": cid, "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def canonical_stream(text_pieces: list[str], tools: list[tuple[str, str, list[str]]], finish: str,
                     usage: Usage) -> list[ChatChunk]:
    """A stream shaped like OpenAI's: role, text deltas, tool calls (id+name, then argument
    fragments), the finish chunk, then the usage chunk."""
    out = [chunk({"role": "assistant", "content": ""})]
    out += [chunk({"content": p}) for p in text_pieces if p]
    for i, (tid, name, frags) in enumerate(tools):
        out.append(chunk({"tool_calls": [{"index": i, "id": tid, "type": "function",
                                          "function": {"name": name, "arguments": ""}}]}))
        out += [chunk({"tool_calls": [{"index": i, "function": {"arguments": f}}]}) for f in frags if f]
    out.append(chunk({}, finish))
    # openai_usage rather than Usage.to_openai: it keeps cache writes too.
    out.append({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [],
                "usage": openai_usage(usage)})
    return out


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, start = [], 0
    for p in points:
        pieces.append(data[start:p])
        start = p
    pieces.append(data[start:])
    return pieces


def decode(pieces: Iterable[bytes], decoder: StreamDecoder) -> list[ChatChunk]:
    parser = SSEParser()
    out: list[ChatChunk] = []
    for piece in pieces:
        for ev in parser.feed(piece):
            out += decoder.feed(ev)
    out += decoder.finish()
    return out


def events(data: bytes) -> list[tuple[str | None, dict[str, Any]]]:
    return [(ev.event, orjson.loads(ev.data)) for ev in SSEParser().feed(data)]


def _transport(status: int, body: bytes, content_type: str,
               seen: list[httpx2.Request] | None) -> httpx2.MockTransport:
    def handler(request: httpx2.Request) -> httpx2.Response:
        if seen is not None:
            seen.append(request)
        return httpx2.Response(status, content=body, headers={"content-type": content_type})

    return httpx2.MockTransport(handler)


def anthropic_client(body: bytes, *, stream: bool = False, status: int = 200,
                     seen: list[httpx2.Request] | None = None) -> anthropic.Anthropic:
    """The official SDK reading ``body`` as the server's answer."""
    ctype = "text/event-stream" if stream else "application/json"
    return anthropic.Anthropic(api_key="k", base_url="http://gw.test", max_retries=0,
                               http_client=httpx2.Client(transport=_transport(status, body, ctype, seen)))


def openai_client(body: bytes, *, stream: bool = False, status: int = 200,
                  seen: list[httpx2.Request] | None = None) -> openai.OpenAI:
    ctype = "text/event-stream" if stream else "application/json"
    return openai.OpenAI(api_key="k", base_url="http://gw.test/v1", max_retries=0,
                         http_client=httpx2.Client(transport=_transport(status, body, ctype, seen)))


Encode = Callable[[list[ChatChunk]], bytes]
