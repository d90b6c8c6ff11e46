"""Property-based round trips: what a translation must keep, whatever the input.

Text, roles, tool calls and their arguments, and usage survive
canonical -> provider -> canonical, caller dialect -> canonical -> caller dialect, and
streams encoded to a provider's SSE bytes, split at arbitrary points and decoded again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.responses import Response

from modelroute_sidecar.canonical import ChatChunk, ChatResponse, Message, Usage, usage_from_openai
from modelroute_sidecar.sse import SSEParser, frame
from modelroute_sidecar.wire.anthropic import upstream as anthropic
from modelroute_sidecar.wire.anthropic.caller import AnthropicMessages
from modelroute_sidecar.wire.anthropic.caller import from_canonical as to_anthropic_message
from modelroute_sidecar.wire.anthropic.caller import to_canonical as anthropic_to_canonical
from modelroute_sidecar.wire.gemini import upstream as gemini
from modelroute_sidecar.wire.openai_responses.caller import OpenAIResponses
from modelroute_sidecar.wire.openai_responses.caller import from_canonical as to_response
from modelroute_sidecar.wire.openai_responses.caller import to_canonical as responses_to_canonical

from .helpers import canonical_stream, decode, reassemble, split_at

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ------------------------------------------------------------------------ strategies

texts = st.text(min_size=1, max_size=40)
names = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,15}", fullmatch=True)
ids = st.from_regex(r"call_[0-9a-f]{6,12}", fullmatch=True)
json_scalars = (st.none() | st.booleans() | st.integers(-(2**53), 2**53)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
arguments = st.dictionaries(st.text(max_size=8), json_values, max_size=4)


@st.composite
def usages(draw: st.DrawFn) -> Usage:
    cached = draw(st.integers(0, 10_000))
    written = draw(st.integers(0, 10_000))
    fresh = draw(st.integers(0, 10_000))
    return Usage(cached + written + fresh, draw(st.integers(0, 10_000)), cached, written)


@st.composite
def tool_calls(draw: st.DrawFn) -> list[dict[str, Any]]:
    n = draw(st.integers(1, 3))
    call_ids = draw(st.lists(ids, min_size=n, max_size=n, unique=True))
    return [{"id": i, "type": "function",
             "function": {"name": draw(names), "arguments": orjson.dumps(draw(arguments)).decode()}}
            for i in call_ids]


@st.composite
def conversations(draw: st.DrawFn) -> list[Message]:
    """Valid OpenAI chat histories: optional system, then user/assistant exchanges where
    every tool call is answered by a tool message."""
    msgs: list[Message] = []
    if draw(st.booleans()):
        msgs.append({"role": "system", "content": draw(texts)})
    for _ in range(draw(st.integers(1, 4))):
        msgs.append({"role": "user", "content": draw(texts)})
        if draw(st.booleans()):
            calls = draw(tool_calls())
            msgs.append({"role": "assistant", "content": draw(st.none() | texts), "tool_calls": cast(Any, calls)})
            msgs += [{"role": "tool", "tool_call_id": c["id"], "content": draw(texts)} for c in calls]
            if draw(st.booleans()):
                msgs.append({"role": "assistant", "content": draw(texts)})
        elif draw(st.booleans()):
            msgs.append({"role": "assistant", "content": draw(texts)})
    return msgs


def view(messages: Sequence[Mapping[str, Any]], *, ids: bool = True) -> list[tuple[Any, ...]]:
    """What must survive: roles, texts, tool calls (arguments as values), tool results."""
    out: list[tuple[Any, ...]] = []
    for m in messages:
        content = m.get("content")
        text = content if isinstance(content, str) else "".join(
            p.get("text", "") for p in content or () if isinstance(p, dict))
        calls = tuple((c["id"] if ids else None, c["function"]["name"], orjson.loads(c["function"]["arguments"]))
                      for c in m.get("tool_calls") or ())
        out.append((m["role"], text or None, calls, m.get("tool_call_id") if ids else None))
    return out


def merge_users(v: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Consecutive user messages become one turn in Anthropic and Gemini (strict alternation)."""
    out: list[tuple[Any, ...]] = []
    for m in v:
        if out and m[0] == "user" and out[-1][0] == "user":
            out[-1] = ("user", (out[-1][1] or "") + (m[1] or ""), (), None)
        else:
            out.append(m)
    return out


# ----------------------------------------------------- canonical -> provider -> canonical


@SETTINGS
@given(conversations())
def test_canonical_through_anthropic_request(msgs: list[Message]) -> None:
    body = anthropic.build_request({"model": "m", "messages": msgs}, "claude", False)
    back = anthropic_to_canonical(body)["messages"]
    assert view(back) == merge_users(view(msgs))


def gemini_request_view(body: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Gemini's request read back as (role, text, calls, tool-response name) tuples."""
    out: list[tuple[Any, ...]] = []
    for s in (body.get("systemInstruction") or {}).get("parts") or ():
        out.append(("system", s["text"], (), None))
    for content in body["contents"]:
        texts = [p["text"] for p in content["parts"] if "text" in p]
        calls = tuple((None, p["functionCall"]["name"], p["functionCall"]["args"])
                      for p in content["parts"] if "functionCall" in p)
        if content["role"] == "model":
            out.append(("assistant", "".join(texts) or None, calls, None))
            continue
        for p in content["parts"]:
            if "functionResponse" in p:
                out.append(("tool", p["functionResponse"]["response"]["output"], (),
                            p["functionResponse"]["name"]))
        if texts:
            out.append(("user", "".join(texts), (), None))
    return out


@SETTINGS
@given(conversations())
def test_canonical_through_gemini_request(msgs: list[Message]) -> None:
    body = gemini.build_request({"model": "m", "messages": msgs}, "gemini")
    names_by_id: dict[str, str] = {}  # as of each tool message: ids may be reused across turns
    expect = []
    for m, (r, t, c, tid) in zip(msgs, view(msgs), strict=True):
        names_by_id.update({tc["id"]: tc["function"]["name"] for tc in m.get("tool_calls") or ()})
        expect.append((r, t, c, names_by_id.get(tid) if tid else None))
    # Gemini has one content per turn: consecutive user texts (after tool results) merge.
    assert gemini_request_view(body) == merge_users([(r, t, tuple((None, *c[1:]) for c in calls), n)
                                                     for r, t, calls, n in expect])
    for content in body["contents"]:
        calls = [p for p in content["parts"] if "functionCall" in p]
        if calls:  # Gemini 3 needs a signature on the first call of every step
            assert calls[0]["thoughtSignature"] == gemini.FOREIGN_SIGNATURE


@st.composite
def canonical_responses(draw: st.DrawFn) -> tuple[ChatResponse, Usage]:
    calls = draw(st.none() | tool_calls())
    text = draw(st.none() | texts) if calls else draw(texts)
    finish = "tool_calls" if calls else draw(st.sampled_from(["stop", "length", "content_filter"]))
    usage = draw(usages())
    msg: dict[str, Any] = {"role": "assistant", "content": text}
    if calls:
        msg["tool_calls"] = calls
    resp = {"id": "chatcmpl-x", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": msg, "finish_reason": finish}], "usage": anthropic.openai_usage(usage)}
    return cast(ChatResponse, resp), usage


def response_view(resp: Mapping[str, Any], *, ids: bool = True) -> tuple[Any, ...]:
    choice = resp["choices"][0]
    [m] = view([choice["message"]], ids=ids)
    return m, choice["finish_reason"]


@SETTINGS
@given(canonical_responses())
def test_canonical_response_through_anthropic(case: tuple[ChatResponse, Usage]) -> None:
    resp, usage = case
    message = to_anthropic_message(resp, "m")  # what an Anthropic upstream would have said
    back = anthropic.parse_response(message, "m")
    assert response_view(back) == response_view(resp)
    assert usage_from_openai(back["usage"]) == usage


def gemini_response(resp: Mapping[str, Any], usage: Usage) -> dict[str, Any]:
    """A canonical response as Gemini would have sent it (no call ids, STOP for calls)."""
    choice = resp["choices"][0]
    msg = choice["message"]
    parts: list[dict[str, Any]] = [{"text": msg["content"]}] if msg.get("content") else []
    parts += [{"functionCall": {"name": c["function"]["name"], "args": orjson.loads(c["function"]["arguments"])}}
              for c in msg.get("tool_calls") or ()]
    finish = {"stop": "STOP", "tool_calls": "STOP", "length": "MAX_TOKENS", "content_filter": "SAFETY"}
    return {"candidates": [{"content": {"role": "model", "parts": parts},
                            "finishReason": finish[choice["finish_reason"]]}],
            "usageMetadata": {"promptTokenCount": usage.input_tokens, "candidatesTokenCount": usage.output_tokens,
                              "cachedContentTokenCount": usage.cache_read_tokens}}


@SETTINGS
@given(canonical_responses())
def test_canonical_response_through_gemini(case: tuple[ChatResponse, Usage]) -> None:
    resp, usage = case
    back = gemini.parse_response(gemini_response(resp, usage), "m")
    assert response_view(back, ids=False) == response_view(resp, ids=False)
    assert usage_from_openai(back["usage"]) == Usage(usage.input_tokens, usage.output_tokens, usage.cache_read_tokens)


# ----------------------------------------------------- caller -> canonical -> caller


@st.composite
def anthropic_messages(draw: st.DrawFn) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if draw(st.booleans()):
        content.append({"type": "text", "text": draw(texts)})
    n = draw(st.integers(0 if content else 1, 3))
    for i in draw(st.lists(ids, min_size=n, max_size=n, unique=True)):
        content.append({"type": "tool_use", "id": i, "name": draw(names), "input": draw(arguments)})
    stop = "tool_use" if n else draw(st.sampled_from(["end_turn", "max_tokens"]))
    u = draw(usages())
    return {"id": "msg_" + draw(st.from_regex(r"[A-Za-z0-9]{8}", fullmatch=True)), "type": "message",
            "role": "assistant", "model": "m", "content": content, "stop_reason": stop, "stop_sequence": None,
            "usage": {"input_tokens": u.input_tokens - u.cache_read_tokens - u.cache_write_tokens,
                      "output_tokens": u.output_tokens, "cache_creation_input_tokens": u.cache_write_tokens,
                      "cache_read_input_tokens": u.cache_read_tokens}}


@SETTINGS
@given(anthropic_messages())
def test_anthropic_message_survives_canonical(message: dict[str, Any]) -> None:
    assert to_anthropic_message(anthropic.parse_response(message, "m"), "m") == message


@st.composite
def anthropic_requests(draw: st.DrawFn) -> dict[str, Any]:
    """Claude-Code-shaped histories: tool_use answered by tool_result blocks (then text)."""
    msgs: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(1, 3))):
        msgs.append({"role": "user", "content": [{"type": "text", "text": draw(texts)}]})
        calls = [{"type": "tool_use", "id": i, "name": draw(names), "input": draw(arguments)}
                 for i in draw(st.lists(ids, max_size=3, unique=True))]
        if calls:
            msgs.append({"role": "assistant", "content": [{"type": "text", "text": draw(texts)}, *calls]})
            results = [{"type": "tool_result", "tool_use_id": c["id"], "content": draw(texts)} for c in calls]
            msgs.append({"role": "user", "content": results})
        msgs.append({"role": "assistant", "content": [{"type": "text", "text": draw(texts)}]})
    return {"model": "m", "max_tokens": 1024, "system": draw(texts), "messages": msgs}


@SETTINGS
@given(anthropic_requests())
def test_anthropic_request_survives_canonical(req: dict[str, Any]) -> None:
    ing = AnthropicMessages().parse(orjson.dumps(req))
    again = anthropic.build_request(anthropic_to_canonical(ing.body), "m", False)
    assert again["system"] == [{"type": "text", "text": req["system"]}]
    # Same turns, same blocks; the last tool_result message and the next user text merge
    # in Anthropic's alternation, exactly as Claude Code would have sent them.
    def blocks(msgs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
        return [(m["role"], b) for m in msgs for b in m["content"]]
    assert blocks(again["messages"]) == blocks(req["messages"])


@st.composite
def responses_inputs(draw: st.DrawFn) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(1, 3))):
        items.append({"type": "message", "role": "user", "content": [{"type": "input_text", "text": draw(texts)}]})
        for i in draw(st.lists(ids, max_size=2, unique=True)):
            items.append({"type": "function_call", "call_id": i, "name": draw(names),
                          "arguments": orjson.dumps(draw(arguments)).decode()})
            items.append({"type": "function_call_output", "call_id": i, "output": draw(texts)})
        items.append({"type": "message", "role": "assistant",
                      "content": [{"type": "output_text", "text": draw(texts)}]})
    return items


@SETTINGS
@given(responses_inputs())
def test_responses_input_becomes_canonical(items: list[dict[str, Any]]) -> None:
    canon = responses_to_canonical(OpenAIResponses().parse(orjson.dumps({"model": "m", "input": items})).body)
    expect: list[tuple[Any, ...]] = []
    for it in items:
        if it["type"] == "message":
            expect.append((it["role"], it["content"][0]["text"], (), None))
        elif it["type"] == "function_call":
            call = (it["call_id"], it["name"], orjson.loads(it["arguments"]))
            if expect and expect[-1][0] == "assistant" and not expect[-1][1]:
                expect[-1] = (*expect[-1][:2], (*expect[-1][2], call), None)
            else:
                expect.append(("assistant", None, (call,), None))
        else:
            expect.append(("tool", it["output"], (), it["call_id"]))
    assert view(canon["messages"]) == expect


@SETTINGS
@given(canonical_responses())
def test_canonical_response_as_responses_object(case: tuple[ChatResponse, Usage]) -> None:
    resp, usage = case
    out = Response.model_validate(to_response(resp, "m"))
    msg = resp["choices"][0]["message"]
    assert out.output_text == (msg["content"] or "")
    calls = [(o.call_id, o.name, orjson.loads(o.arguments)) for o in out.output if o.type == "function_call"]
    assert calls == [c[:3] for c in view([msg])[0][2]]
    assert out.usage is not None
    assert (out.usage.input_tokens, out.usage.output_tokens, out.usage.input_tokens_details.cached_tokens,
            out.usage.input_tokens_details.cache_write_tokens) == (
        usage.input_tokens, usage.output_tokens, usage.cache_read_tokens, usage.cache_write_tokens)


# ------------------------------------------------------------- streams, split anywhere


def _fragments(draw: st.DrawFn, s: str) -> list[str]:
    cuts = sorted(draw(st.lists(st.integers(0, len(s)), max_size=4)))
    out, start = [], 0
    for c in cuts:
        out.append(s[start:c])
        start = c
    out.append(s[start:])
    return out


@st.composite
def canonical_streams(draw: st.DrawFn) -> tuple[list[ChatChunk], list[str], list[tuple[str, str, str]], str, Usage]:
    pieces = draw(st.lists(texts, max_size=5))
    tools = []
    for i in draw(st.lists(ids, max_size=3, unique=True)):
        args = orjson.dumps(draw(arguments)).decode()
        tools.append((i, draw(names), _fragments(draw, args)))
    finish = "tool_calls" if tools else draw(st.sampled_from(["stop", "length"]))
    usage = draw(usages())
    return (canonical_stream(pieces, tools, finish, usage), pieces,
            [(i, n, "".join(f)) for i, n, f in tools], finish, usage)


cut_points = st.lists(st.integers(0, 1 << 20), max_size=30)


@SETTINGS
@given(canonical_streams(), cut_points)
def test_stream_through_anthropic_sse(case: Any, cuts: list[int]) -> None:
    chunks, pieces, tools, finish, usage = case
    enc = AnthropicMessages().stream_encoder("m", True)  # Anthropic's wire format, byte for byte
    wire = b"".join(enc.chunk(c) for c in chunks) + enc.end()
    dec = anthropic.AnthropicStreamDecoder("m")
    got = reassemble(decode(split_at(wire, cuts), dec))
    assert got.text == "".join(pieces)
    assert got.tools == tools
    assert got.finish == finish
    assert got.usage == usage and dec.usage == usage and dec.done


def gemini_sse(chunks: list[ChatChunk]) -> bytes:
    """A canonical stream as Gemini streams it: text parts as they come, each function call
    whole (Gemini does not stream arguments), finishReason and usage on the last event."""
    r = reassemble(chunks)
    out = b""
    for c in chunks:
        for ch in c.get("choices") or ():
            if ch["delta"].get("content"):
                out += frame(orjson.dumps({"candidates": [{"content": {"role": "model", "parts": [
                    {"text": ch["delta"]["content"]}]}}]}))
    u = r.usage or Usage()
    parts = [{"functionCall": {"name": n, "args": orjson.loads(a)}} for _, n, a in r.tools]
    last = {"candidates": [{"content": {"role": "model", "parts": parts},
                            "finishReason": "MAX_TOKENS" if r.finish == "length" else "STOP"}],
            "usageMetadata": {"promptTokenCount": u.input_tokens, "candidatesTokenCount": u.output_tokens,
                              "cachedContentTokenCount": u.cache_read_tokens}}
    return out + frame(orjson.dumps(last))


@SETTINGS
@given(canonical_streams(), cut_points)
def test_stream_through_gemini_sse(case: Any, cuts: list[int]) -> None:
    chunks, pieces, tools, finish, usage = case
    dec = gemini.GeminiStreamDecoder("m")
    got = reassemble(decode(split_at(gemini_sse(chunks), cuts), dec))
    assert got.text == "".join(pieces)
    assert [(n, orjson.loads(a)) for _, n, a in got.tools] == [(n, orjson.loads(a)) for _, n, a in tools]
    assert got.finish == finish
    assert got.usage == Usage(usage.input_tokens, usage.output_tokens, usage.cache_read_tokens)
    assert dec.done


@SETTINGS
@given(canonical_streams(), cut_points)
def test_stream_through_responses_events(case: Any, cuts: list[int]) -> None:
    chunks, pieces, tools, finish, usage = case
    enc = OpenAIResponses().stream_encoder("m", True)
    wire = b"".join(enc.chunk(c) for c in chunks) + enc.end()
    parser = SSEParser()
    text, args, calls, final = "", {}, {}, None
    seq = []
    for piece in split_at(wire, cuts):
        for ev in parser.feed(piece):
            e = orjson.loads(ev.data)
            seq.append(e["sequence_number"])
            if e["type"] == "response.output_text.delta":
                text += e["delta"]
            elif e["type"] == "response.output_item.added" and e["item"]["type"] == "function_call":
                calls[e["item"]["id"]] = (e["item"]["call_id"], e["item"]["name"])
                args[e["item"]["id"]] = ""
            elif e["type"] == "response.function_call_arguments.delta":
                args[e["item_id"]] += e["delta"]
            elif e["type"] in ("response.completed", "response.incomplete"):
                final = Response.model_validate(e["response"])
    assert seq == list(range(len(seq)))
    assert text == "".join(pieces)
    assert [(*calls[k], args[k]) for k in calls] == tools
    assert final is not None and final.output_text == text
    assert final.status == ("incomplete" if finish == "length" else "completed")
    assert final.usage is not None
    assert (final.usage.input_tokens, final.usage.output_tokens, final.usage.input_tokens_details.cached_tokens) == (
        usage.input_tokens, usage.output_tokens, usage.cache_read_tokens)
