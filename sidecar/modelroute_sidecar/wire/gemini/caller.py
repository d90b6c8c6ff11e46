"""The Gemini dialect: ``POST /v1beta/models/{model}:generateContent``, ``:streamGenerateContent``
and ``:countTokens``, what the google-genai SDKs and gemini-cli speak.

The model comes from the URL path, the body is a ``GenerateContentRequest``. Toward a
Gemini upstream it passes through untranslated (see ``wire/pairs.py``); toward any
other it goes through the canonical form. The Gemini wire facts (finish reasons, usage,
error statuses) are shared with the upstream direction in ``upstream.py`` next to this
module; this module holds the caller's direction.

Streams come in Gemini's two framings: ``?alt=sse`` (``data: {...}`` events, what the
SDKs use) and the default, one JSON array written element by element.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from ...canonical import ChatChunk, ChatRequest, ChatResponse, CompletionUsage, Message, ToolCall, Usage
from ...errors import GatewayError
from ...sse import SSEEvent
from ...tokens import CHARS_PER_TOKEN, MAX_IMAGE_TOKENS, base64_image_tokens, pdf_tokens
from ..base import Dialect, Ingress, NativeTap, StreamEncoder
from ..parts import new_id, parse_arguments
from .upstream import FINISH_REASONS, usage_from_gemini
from .validation import COUNT_TOKENS_REQUEST, GENERATE_REQUEST, invalid, validate

# Gemini's JSON takes proto field names too (``system_instruction``, as in Google's curl
# examples); the SDKs send the camelCase names. The ones translation reads are renamed.
_SNAKE = ("system_instruction", "generation_config", "tool_config", "function_declarations",
          "function_calling_config", "allowed_function_names", "inline_data", "file_data", "mime_type",
          "file_uri", "function_call", "function_response", "thought_signature", "max_output_tokens", "top_p",
          "stop_sequences", "candidate_count", "response_mime_type", "response_schema", "response_json_schema",
          "thinking_config", "thinking_budget", "include_thoughts", "presence_penalty", "frequency_penalty",
          "parameters_json_schema", "generate_content_request")
_CAMEL = {k: k.split("_")[0] + "".join(w.title() for w in k.split("_")[1:]) for k in _SNAKE}
_SNAKE_KEY = re.compile(("\"(" + "|".join(_SNAKE) + ")\"\\s*:").encode())
_USER_DATA = frozenset({"args", "response", "parameters", "parametersJsonSchema", "responseSchema",
                        "responseJsonSchema"})


def _camel(value: Any) -> Any:
    if isinstance(value, list):
        return [_camel(v) for v in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for k, v in value.items():
        k = _CAMEL.get(k, k)
        out[k] = v if k in _USER_DATA else _camel(v)  # a tool's own data keeps its names
    return out


def _camel_body(body: bytes) -> bytes:
    if not _SNAKE_KEY.search(body):
        return body
    try:
        return orjson.dumps(_camel(orjson.loads(body)))
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):
        return body  # validation says what is wrong with it


def parse_generate(body: bytes) -> dict[str, Any]:
    req = validate(_camel_body(body), GENERATE_REQUEST)
    if not req["contents"]:
        raise invalid("* GenerateContentRequest.contents: contents is not specified")
    return req


def parse_count(body: bytes) -> dict[str, Any]:
    """A ``countTokens`` body as the ``GenerateContentRequest`` it counts."""
    req = validate(_camel_body(body), COUNT_TOKENS_REQUEST)
    inner = req.get("generateContentRequest")
    if inner is not None:
        out: dict[str, Any] = dict(inner)
        out.pop("model", None)
    else:
        out = {"contents": req.get("contents") or []}
    if not out.get("contents"):
        raise invalid("* CountTokensRequest.contents: contents is not specified")
    return out


# ------------------------------------------------------------------- to canonical


def _schema(schema: Any) -> Any:
    """Gemini's OpenAPI-subset Schema (``type: STRING``, ``nullable``) -> JSON Schema."""
    if isinstance(schema, list):
        return [_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for k, v in schema.items():
        if k == "type" and isinstance(v, str):
            out["type"] = v.lower()
        elif k in ("properties", "$defs", "definitions") and isinstance(v, dict):
            out[k] = {name: _schema(s) for name, s in v.items()}
        elif k in ("items", "anyOf", "oneOf", "allOf", "not", "additionalProperties"):
            out[k] = _schema(v)
        elif k in ("nullable", "propertyOrdering"):
            continue
        else:
            out[k] = v
    if schema.get("nullable") is True and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


def _media(blob: dict[str, Any]) -> dict[str, Any]:
    mime, data = blob["mimeType"], blob["data"]
    if mime.startswith("image/"):
        return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}}
    if mime in ("audio/wav", "audio/x-wav", "audio/mp3", "audio/mpeg"):
        return {"type": "input_audio", "input_audio": {"data": data, "format": "mp3" if "mp" in mime else "wav"}}
    return {"type": "file", "file": {"file_data": f"data:{mime};base64,{data}"}}


def _tool_output(response: dict[str, Any] | None) -> str:
    """A functionResponse's ``response`` as a tool message's text: its ``output`` (the SDKs'
    and gemini-cli's convention) when that is all it holds, else the whole object."""
    if not response:
        return ""
    if set(response) == {"output"} and isinstance(response["output"], str):
        return str(response["output"])
    return orjson.dumps(response).decode()


class _CallIds:
    """Function-call ids: the caller's where it sent them, else generated, so that a
    functionResponse (matched by id, else by name in order) finds its call."""

    def __init__(self) -> None:
        self.pending: dict[str, list[str]] = {}

    def call(self, fc: dict[str, Any]) -> str:
        cid = fc.get("id") or new_id("call_")
        self.pending.setdefault(fc["name"], []).append(cid)
        return str(cid)

    def response(self, fr: dict[str, Any]) -> str:
        queue = self.pending.get(fr["name"]) or []
        cid = fr.get("id")
        if cid and cid in queue:
            queue.remove(cid)
            return str(cid)
        return queue.pop(0) if queue else str(cid or new_id("call_"))


def _model_message(parts: list[dict[str, Any]], ids: _CallIds) -> Message | None:
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[ToolCall] = []
    for p in parts:
        fc = p.get("functionCall")
        if fc:
            tc: ToolCall = {"id": ids.call(fc), "type": "function", "function": {
                "name": fc["name"], "arguments": orjson.dumps(fc.get("args") or {}).decode()}}
            if p.get("thoughtSignature"):
                tc["extra_content"] = {"google": {"thought_signature": p["thoughtSignature"]}}
            calls.append(tc)
        elif isinstance(p.get("text"), str):
            (thoughts if p.get("thought") else texts).append(p["text"])
    if not (texts or calls or thoughts):
        return None
    msg: Message = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        msg["tool_calls"] = calls
    if thoughts:
        msg["reasoning_content"] = "".join(thoughts)
    return msg


def _user_messages(parts: list[dict[str, Any]], ids: _CallIds, out: list[Message]) -> None:
    content: list[dict[str, Any]] = []
    for p in parts:
        fr = p.get("functionResponse")
        if fr:  # tool results answer the call just before: they come first
            out.append({"role": "tool", "tool_call_id": ids.response(fr), "content": _tool_output(fr.get("response"))})
        elif isinstance(p.get("text"), str) and not p.get("thought"):
            if p["text"]:
                content.append({"type": "text", "text": p["text"]})
        elif p.get("inlineData"):
            content.append(_media(p["inlineData"]))
        elif p.get("fileData"):
            content.append({"type": "image_url", "image_url": {"url": p["fileData"]["fileUri"]}})
    if content:
        if all(c["type"] == "text" for c in content):
            out.append({"role": "user", "content": "".join(c["text"] for c in content)})
        else:
            out.append({"role": "user", "content": content})


_MODES = {"AUTO": "auto", "NONE": "none", "ANY": "required", "VALIDATED": "auto"}


def _tool_choice(tool_config: dict[str, Any] | None) -> Any:
    fcc = (tool_config or {}).get("functionCallingConfig") or {}
    mode = _MODES.get(str(fcc.get("mode") or "AUTO").upper())
    names = fcc.get("allowedFunctionNames") or []
    if mode == "required" and len(names) == 1:
        return {"type": "function", "function": {"name": names[0]}}
    return None if mode == "auto" else mode


def _effort(budget: int | None) -> str | None:
    if budget is None or budget == 0:
        return None
    if budget < 0:
        return "medium"  # dynamic thinking
    return "low" if budget <= 1024 else "medium" if budget <= 8192 else "high"


def to_canonical(req: dict[str, Any], model: str, stream: bool) -> ChatRequest:
    messages: list[Message] = []
    system = "".join(p.get("text") or "" for p in ((req.get("systemInstruction") or {}).get("parts") or ()))
    if system:
        messages.append({"role": "system", "content": system})
    ids = _CallIds()
    for c in req["contents"]:
        parts = c.get("parts") or []
        if c.get("role") == "model":
            msg = _model_message(parts, ids)
            if msg:
                messages.append(msg)
        else:
            _user_messages(parts, ids, messages)
    out: ChatRequest = {"model": model, "messages": messages}
    tools = [{"type": "function", "function": {
        "name": d["name"],
        **({"description": d["description"]} if d.get("description") else {}),
        "parameters": (d.get("parametersJsonSchema") or _schema(d.get("parameters"))
                       or {"type": "object", "properties": {}})}}
        for t in req.get("tools") or () for d in (t.get("functionDeclarations") or ())]
    if tools:
        out["tools"] = tools
        choice = _tool_choice(req.get("toolConfig"))
        if choice is not None:
            out["tool_choice"] = choice
    gen = req.get("generationConfig") or {}
    if gen.get("maxOutputTokens"):
        out["max_completion_tokens"] = gen["maxOutputTokens"]
    if gen.get("temperature") is not None:
        out["temperature"] = gen["temperature"]
    if gen.get("topP") is not None:
        out["top_p"] = gen["topP"]
    if gen.get("seed") is not None:
        out["seed"] = gen["seed"]
    if gen.get("presencePenalty") is not None:
        out["presence_penalty"] = gen["presencePenalty"]
    if gen.get("frequencyPenalty") is not None:
        out["frequency_penalty"] = gen["frequencyPenalty"]
    if gen.get("stopSequences"):
        out["stop"] = gen["stopSequences"][:4]  # OpenAI takes at most four
    if isinstance(gen.get("candidateCount"), int) and gen["candidateCount"] > 1:
        out["n"] = gen["candidateCount"]
    if gen.get("responseMimeType") == "application/json":
        schema = gen.get("responseJsonSchema") or _schema(gen.get("responseSchema"))
        out["response_format"] = ({"type": "json_schema", "json_schema": {"name": "response", "schema": schema}}
                                  if schema else {"type": "json_object"})
    effort = _effort((gen.get("thinkingConfig") or {}).get("thinkingBudget"))
    if effort is not None:
        out["reasoning_effort"] = effort
    if stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


# ----------------------------------------------------------------- from canonical

_FINISH = {"stop": "STOP", "tool_calls": "STOP", "function_call": "STOP", "length": "MAX_TOKENS",
           "content_filter": "SAFETY"}
assert set(_FINISH.values()) <= set(FINISH_REASONS)  # the same vocabulary as the upstream side


def usage_metadata(usage: Usage | CompletionUsage | None) -> dict[str, int]:
    """Canonical usage (a Usage, or OpenAI's usage object) as Gemini's ``usageMetadata``."""
    if isinstance(usage, Usage):
        prompt, output, cached, thoughts = usage.input_tokens, usage.output_tokens, usage.cache_read_tokens, 0
    else:
        u = usage or {}
        prompt, output = int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0)
        cached = int((u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
        thoughts = int((u.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0)
    out = {"promptTokenCount": prompt, "candidatesTokenCount": output - thoughts, "totalTokenCount": prompt + output}
    if thoughts:
        out["thoughtsTokenCount"] = thoughts
    if cached:
        out["cachedContentTokenCount"] = cached
    return out


def _call_part(tc: ToolCall) -> dict[str, Any]:
    fn = tc.get("function") or {}
    part: dict[str, Any] = {"functionCall": {"id": tc.get("id") or new_id("call_"), "name": fn.get("name") or "",
                                             "args": parse_arguments(fn.get("arguments"))}}
    sig = ((tc.get("extra_content") or {}).get("google") or {}).get("thought_signature")
    if isinstance(sig, str):
        part["thoughtSignature"] = sig
    return part


def from_canonical(resp: ChatResponse, model: str) -> dict[str, Any]:
    candidates = []
    for i, choice in enumerate(resp.get("choices") or ()):
        msg = choice.get("message") or {}
        parts: list[dict[str, Any]] = []
        if isinstance(msg.get("reasoning_content"), str) and msg["reasoning_content"]:
            parts.append({"text": msg["reasoning_content"], "thought": True})
        if isinstance(msg.get("content"), str) and msg["content"]:
            parts.append({"text": msg["content"]})
        parts.extend(_call_part(tc) for tc in msg.get("tool_calls") or ())
        candidates.append({"content": {"role": "model", "parts": parts or [{"text": ""}]},
                           "finishReason": _FINISH.get(choice.get("finish_reason") or "stop", "OTHER"),
                           "index": choice.get("index", i)})
    return {"candidates": candidates, "usageMetadata": usage_metadata(resp.get("usage")),
            "modelVersion": model, "responseId": str(resp.get("id") or new_id(""))}


# ------------------------------------------------------------------------ streams


class _Framing:
    """Gemini's two stream framings: SSE events, or the elements of one JSON array."""

    def __init__(self, sse: bool) -> None:
        self.sse = sse
        self.started = False

    def item(self, payload: bytes) -> bytes:
        if self.sse:
            return b"data: " + payload + b"\r\n\r\n"
        head = b"," if self.started else b"["
        self.started = True
        return head + b"\r\n" + payload

    def close(self) -> bytes:
        if self.sse:
            return b""
        return b"]" if self.started else b"[]"


def _error_body(err: GatewayError) -> dict[str, Any]:
    return {"error": {"code": err.status, "message": err.message, "status": status_name(err.status)}}


_STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                 408: "DEADLINE_EXCEEDED", 409: "ABORTED", 413: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED",
                 499: "CANCELLED", 500: "INTERNAL", 501: "UNIMPLEMENTED", 502: "UNAVAILABLE", 503: "UNAVAILABLE",
                 504: "DEADLINE_EXCEEDED"}


def status_name(status: int) -> str:
    """The google.rpc status name Gemini pairs with an HTTP status."""
    return _STATUS_NAMES.get(status, "FAILED_PRECONDITION" if status < 500 else "INTERNAL")


class _GenerateEncoder(StreamEncoder):
    """Canonical chunks -> partial GenerateContentResponses.

    Text and thoughts go out as they come. Function calls, which canonical streams in
    pieces, go out whole (as Gemini sends them) with the finishing event, which also
    carries the final ``usageMetadata``.
    """

    def __init__(self, model: str, sse: bool) -> None:
        self.model = model
        self.framing = _Framing(sse)
        self.id = ""
        self.calls: dict[int, ToolCall] = {}
        self.finish: str | None = None
        self.usage: Usage | CompletionUsage | None = None
        self.ended = False

    def note_usage(self, usage: Usage) -> None:
        self.usage = usage

    def _event(self, parts: list[dict[str, Any]], finish: str | None = None) -> bytes:
        cand: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
        body: dict[str, Any] = {"candidates": [cand], "modelVersion": self.model, "responseId": self.id}
        if finish is not None:
            cand["finishReason"] = finish
            body["usageMetadata"] = usage_metadata(self.usage)
        elif self.usage is not None:
            body["usageMetadata"] = usage_metadata(self.usage)
        return self.framing.item(orjson.dumps(body))

    def _final(self) -> bytes:
        if self.ended or self.finish is None:
            return b""
        self.ended = True
        parts = [_call_part(tc) for _, tc in sorted(self.calls.items())]
        return self._event(parts, self.finish)

    def chunk(self, chunk: ChatChunk) -> bytes:
        if not self.id:
            self.id = str(chunk.get("id") or new_id(""))
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        choices = chunk.get("choices") or ()
        if not choices:
            return self._final() if chunk.get("usage") else b""
        choice = choices[0]
        delta = choice.get("delta") or {}
        out = b""
        parts: list[dict[str, Any]] = []
        if isinstance(delta.get("reasoning_content"), str) and delta["reasoning_content"]:
            parts.append({"text": delta["reasoning_content"], "thought": True})
        if isinstance(delta.get("content"), str) and delta["content"]:
            parts.append({"text": delta["content"]})
        if parts:
            out += self._event(parts)
        for tc in delta.get("tool_calls") or ():
            slot = self.calls.setdefault(int(tc.get("index") or 0), {"function": {"name": "", "arguments": ""}})
            if tc.get("id"):
                slot["id"] = tc["id"]
            if tc.get("extra_content"):
                slot["extra_content"] = tc["extra_content"]
            fn = tc.get("function") or {}
            slot["function"]["name"] += fn.get("name") or ""
            slot["function"]["arguments"] += fn.get("arguments") or ""
        finish = choice.get("finish_reason")
        if finish:
            self.finish = _FINISH.get(finish, "OTHER")
        return out

    def end(self) -> bytes:
        if self.finish is None:
            self.finish = "STOP"
        return self._final() + self.framing.close()

    def error(self, err: GatewayError) -> bytes:
        return self.framing.item(orjson.dumps(_error_body(err))) + self.framing.close()

    def frame(self, event: SSEEvent) -> bytes:
        return self.framing.item(event.data)

    def close(self) -> bytes:
        return self.framing.close()


class _GenerateTap(NativeTap):
    """Reads usage, the finish and in-band errors from a Gemini upstream's SSE stream, and
    (for a caller that asked for the JSON-array framing) re-frames its events."""

    def __init__(self, sse: bool) -> None:
        self.reframe = not sse  # the encoder writes each event as an array element

    def feed(self, event: SSEEvent) -> bool:
        if not event.data:
            return False
        data = orjson.loads(event.data)
        err = data.get("error")
        if isinstance(err, dict):
            from .upstream import error_info

            self.error = error_info(int(err.get("code") or 500), event.data)
            return False
        if data.get("usageMetadata"):
            self.usage = usage_from_gemini(data["usageMetadata"])
        for cand in data.get("candidates") or ():
            if cand.get("finishReason"):
                self.done = True
        if not data.get("candidates") and (data.get("promptFeedback") or {}).get("blockReason"):
            self.done = True
        return True



# ---------------------------------------------------------------------- countTokens


def estimate_tokens(req: dict[str, Any]) -> int:
    """Input tokens of a GenerateContentRequest where no upstream can count: text by
    characters, images by pixel size and PDFs by pages (see tokens.py)."""
    media = 0
    texts: list[Any] = [req.get("systemInstruction"), req.get("tools")]
    for c in req.get("contents") or ():
        for p in c.get("parts") or ():
            blob = p.get("inlineData")
            if blob:
                mime = blob["mimeType"]
                media += (base64_image_tokens(blob["data"]) if mime.startswith("image/")
                          else pdf_tokens(blob["data"]) if mime == "application/pdf" else MAX_IMAGE_TOKENS)
            elif p.get("fileData"):
                media += MAX_IMAGE_TOKENS
            else:
                texts.append(p)
    return max(1, media + len(orjson.dumps(texts)) // CHARS_PER_TOKEN)


# ------------------------------------------------------------------------- dialect


class GeminiGenerate(Dialect):
    """One instance per stream framing (``sse``); both are the dialect ``gemini``."""

    name = "gemini"
    stream_content_type = "text/event-stream; charset=utf-8"

    def __init__(self, sse: bool = True) -> None:
        self.sse = sse
        if not sse:
            self.stream_content_type = "application/json; charset=utf-8"

    def parse(self, body: bytes) -> Ingress:
        raise NotImplementedError("the model and stream come from the URL: use parse_for")

    def parse_for(self, body: bytes, model: str, stream: bool) -> Ingress:
        return Ingress(parse_generate(body), model, stream, True)

    def to_canonical(self, ingress: Ingress) -> ChatRequest:
        return to_canonical(ingress.body, ingress.model, ingress.stream)

    def from_canonical(self, resp: ChatResponse, model: str) -> dict[str, Any]:
        return from_canonical(resp, model)

    def stream_encoder(self, model: str, include_usage: bool) -> StreamEncoder:
        return _GenerateEncoder(model, self.sse)

    def render_error(self, err: GatewayError) -> bytes:
        return orjson.dumps(_error_body(err))

    def native_usage(self, body: dict[str, Any]) -> Usage | None:
        return usage_from_gemini(body.get("usageMetadata"))

    def native_tap(self, include_usage: bool) -> NativeTap:
        return _GenerateTap(self.sse)


def model_entry(name: str) -> dict[str, Any]:
    """One routable name as a Gemini ``Model``."""
    return {"name": f"models/{name}", "baseModelId": name, "version": "modelroute", "displayName": name,
            "supportedGenerationMethods": ["generateContent", "streamGenerateContent", "countTokens"]}
