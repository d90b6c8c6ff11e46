"""Gemini API upstream: canonical (OpenAI Chat) <-> ``generateContent`` / ``embedContent``.

Pure translators (``build_request``, ``parse_response``, ``build_embeddings``,
``parse_embeddings``, ``error_info``) plus :class:`GeminiStreamDecoder`; the kinds that
speak this format (``providers/gemini.py``) bind them to a ProviderKey's URL and auth.

Wire facts that shape this module:

* Gemini may return no function-call ids: we generate ``call_<hex>`` ones, and match
  tool results back to functions by the name of the call with that id.
* ``finishReason`` is ``STOP`` even when the model called a function: that is
  ``tool_calls`` in canonical terms.
* Gemini 3 rejects history whose function calls lack the ``thoughtSignature`` it sent.
  We carry the signature where Gemini's own OpenAI-compatible endpoint does
  (``tool_calls[].extra_content.google.thought_signature``) and, for calls that come
  back without one (another provider's history, a client that dropped the field), send
  the sentinel Google documents for history it did not produce.
"""

from __future__ import annotations

import mimetypes
import re
import time
from typing import Any

import orjson

from ...canonical import (
    ChatChunk,
    ChatRequest,
    ChatResponse,
    Choice,
    CompletionUsage,
    Delta,
    FinishReason,
    Message,
    ToolCall,
    Usage,
    role_first,
)
from ...errors import ErrorType, bad_request
from ...sse import SSEEvent
from ..base import StreamDecoder, StreamError, UpstreamErrorInfo
from ..parts import content_text, dump_arguments, new_id, parse_arguments, split_data_url, stop_list

FOREIGN_SIGNATURE = "skip_thought_signature_validator"
MAX_STOP_SEQUENCES = 5  # Gemini rejects more

FINISH_REASONS: dict[str, FinishReason] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
    "IMAGE_RECITATION": "content_filter",
    "MODEL_ARMOR": "content_filter",
    "LANGUAGE": "content_filter",
}

# The OpenAPI-subset Schema keys Gemini's FunctionDeclaration.parameters accepts; others
# (additionalProperties, $schema, exclusiveMinimum, propertyNames, ...) are a 400.
_SCHEMA_KEYS = frozenset({
    "type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems",
    "properties", "required", "minProperties", "maxProperties", "minLength", "maxLength",
    "pattern", "example", "anyOf", "propertyOrdering", "default", "items", "minimum", "maximum",
})
_SCHEMA_FORMATS = frozenset({"enum", "date-time", "int32", "int64", "float", "double"})
_MAX_REF_DEPTH = 8


# ----------------------------------------------------------------------------- schema


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def gemini_schema(schema: Any, defs: dict[str, Any] | None = None, depth: int = 0) -> dict[str, Any]:
    """JSON Schema -> the subset Gemini accepts, keeping every constraint it can express.

    Local ``$ref``s are inlined (Gemini has no references), ``type: [X, "null"]`` becomes
    ``nullable``, ``const`` becomes a one-value enum, and unknown keys are dropped.
    """
    if not isinstance(schema, dict):
        return {}
    if defs is None:
        # A schema is the caller's JSON, of any shape: read only what has the expected one.
        defs = {**_mapping(schema.get("definitions")), **_mapping(schema.get("$defs"))}
    ref = schema.get("$ref")
    if isinstance(ref, str):
        if depth >= _MAX_REF_DEPTH:
            return {"type": "object"}  # recursive schemas: stop here rather than loop
        target = defs.get(ref.rsplit("/", 1)[-1])
        merged = {**_mapping(target), **{k: v for k, v in schema.items() if k != "$ref"}}
        return gemini_schema(merged, defs, depth + 1)

    out: dict[str, Any] = {}
    stype = schema.get("type")
    if isinstance(stype, list):
        kinds = [t for t in stype if t != "null"]
        if len(kinds) < len(stype):
            out["nullable"] = True
        if len(kinds) == 1:
            stype = kinds[0]
        elif kinds:
            out["anyOf"] = [gemini_schema({**schema, "type": t}, defs, depth) for t in kinds]
            stype = None
        else:
            stype = None
    if isinstance(stype, str):
        out["type"] = stype

    for key, value in schema.items():
        if key not in _SCHEMA_KEYS or key in ("type", "properties", "items", "anyOf", "required", "enum"):
            continue
        if key == "format" and value not in _SCHEMA_FORMATS:
            continue
        out[key] = value

    if "const" in schema and "enum" not in schema:
        enum: Any = [schema["const"]]
    else:
        enum = schema.get("enum")
    if isinstance(enum, list) and enum and all(isinstance(e, str) for e in enum):
        out["enum"] = enum
        out.setdefault("type", "string")

    props = schema.get("properties")
    if isinstance(props, dict):
        out["properties"] = {k: gemini_schema(v, defs, depth) for k, v in props.items()}
        required = schema.get("required")
        req = [r for r in required if isinstance(r, str) and r in props] if isinstance(required, list) else []
        if req:
            out["required"] = req
    items = schema.get("items")
    if isinstance(items, list):  # tuple form: Gemini has one item schema
        items = items[0] if items else None
    if isinstance(items, dict):
        out["items"] = gemini_schema(items, defs, depth)
    alts = schema.get("anyOf") or schema.get("oneOf")
    if isinstance(alts, list) and "anyOf" not in out:
        subs = [s for s in alts if not (isinstance(s, dict) and s.get("type") == "null")]
        if len(subs) < len(alts):
            out["nullable"] = True
        if len(subs) == 1:
            out.update({k: v for k, v in gemini_schema(subs[0], defs, depth).items() if k not in out})
        elif subs:
            out["anyOf"] = [gemini_schema(s, defs, depth) for s in subs]
    all_of = schema.get("allOf")
    if isinstance(all_of, list):
        for sub in all_of:
            for k, v in gemini_schema(sub, defs, depth).items():
                if k == "properties":
                    out.setdefault("properties", {}).update(v)
                elif k == "required":
                    out["required"] = [*out.get("required", []), *v]
                else:
                    out.setdefault(k, v)
    return out


# ---------------------------------------------------------------------------- request


def _media_part(url: str) -> dict[str, Any]:
    data = split_data_url(url)
    if data is not None:
        return {"inlineData": {"mimeType": data[0], "data": data[1]}}
    mime = mimetypes.guess_type(url.split("?", 1)[0])[0] or "image/jpeg"
    return {"fileData": {"mimeType": mime, "fileUri": url}}


def _user_parts(content: Any) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[dict[str, Any]] = []
    for part in content:
        if isinstance(part, str):
            if part:
                parts.append({"text": part})
            continue
        ptype = part.get("type")
        if ptype == "text" or (ptype is None and "text" in part):
            if part.get("text"):
                parts.append({"text": part["text"]})
        elif ptype == "image_url":
            iu = part.get("image_url")
            url = iu.get("url") if isinstance(iu, dict) else iu
            if isinstance(url, str) and url:
                parts.append(_media_part(url))
        elif ptype == "file":
            f = part.get("file") or {}
            if isinstance(f.get("file_data"), str):
                parts.append(_media_part(f["file_data"]))
        elif ptype == "input_audio":
            audio = part.get("input_audio") or {}
            if audio.get("data"):
                parts.append({"inlineData": {"mimeType": f"audio/{audio.get('format') or 'wav'}",
                                             "data": audio["data"]}})
    return parts


def _signature(tc: ToolCall) -> str | None:
    extra = tc.get("extra_content")
    if isinstance(extra, dict):
        google = extra.get("google")
        if isinstance(google, dict) and isinstance(google.get("thought_signature"), str):
            return google["thought_signature"]
    return None


def _model_parts(msg: Message, names: dict[str, str]) -> list[dict[str, Any]]:
    text = content_text(msg.get("content"))
    parts: list[dict[str, Any]] = [{"text": text}] if text else []
    for i, tc in enumerate(msg.get("tool_calls") or ()):
        fn = tc.get("function") or {}
        name = fn.get("name") or ""
        if tc.get("id"):
            names[tc["id"]] = name
        part: dict[str, Any] = {"functionCall": {"name": name, "args": parse_arguments(fn.get("arguments"))}}
        sig = _signature(tc)
        if sig is None and i == 0:
            sig = FOREIGN_SIGNATURE  # Gemini 3 needs one on the first call of each step
        if sig is not None:
            part["thoughtSignature"] = sig
        parts.append(part)
    return parts


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice is None or choice == "auto":
        return None
    if choice == "none":
        return {"functionCallingConfig": {"mode": "NONE"}}
    if choice == "required":
        return {"functionCallingConfig": {"mode": "ANY"}}
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") or choice.get("name")
        if name:
            return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [name]}}
    return None


def _declarations(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    decls: list[dict[str, Any]] = []
    for t in tools:
        if t.get("type", "function") != "function":
            continue
        fn = t.get("function") or {}
        decl: dict[str, Any] = {"name": fn.get("name") or ""}
        if fn.get("description"):
            decl["description"] = fn["description"]
        params = gemini_schema(fn.get("parameters"))
        if params.get("properties"):  # Gemini rejects an OBJECT schema with no properties
            decl["parameters"] = params
        decls.append(decl)
    return decls


def build_request(req: ChatRequest, model: str, stream: bool = False) -> dict[str, Any]:
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool-call id -> function name, for functionResponse

    def add(role: str, parts: list[dict[str, Any]]) -> None:
        if not parts:
            return
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)  # parallel results must share one content
        else:
            contents.append({"role": role, "parts": parts})

    for msg in req.get("messages") or ():
        role = msg.get("role")
        if role in ("system", "developer"):
            text = content_text(msg.get("content"))
            if text:
                system.append({"text": text})
        elif role == "user":
            add("user", _user_parts(msg.get("content")))
        elif role == "assistant":
            add("model", _model_parts(msg, names))
        elif role in ("tool", "function"):
            name = names.get(msg.get("tool_call_id") or "") or msg.get("name") or "function"
            output = content_text(msg.get("content"))
            add("user", [{"functionResponse": {"name": name, "response": {"output": output}}}])

    if not contents:  # Gemini needs at least one content; a system-only prompt becomes the user turn
        contents.append({"role": "user", "parts": system or [{"text": " "}]})
        system = []
    body: dict[str, Any] = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": system}

    decls = _declarations(req.get("tools") or [])
    if decls:
        body["tools"] = [{"functionDeclarations": decls}]
        tc = _tool_choice(req.get("tool_choice"))
        if tc is not None:
            body["toolConfig"] = tc

    gen: dict[str, Any] = {}
    max_tokens = req.get("max_completion_tokens") or req.get("max_tokens")
    if max_tokens:
        gen["maxOutputTokens"] = int(max_tokens)
    for dst, value in (("temperature", req.get("temperature")), ("topP", req.get("top_p")),
                       ("seed", req.get("seed")), ("presencePenalty", req.get("presence_penalty")),
                       ("frequencyPenalty", req.get("frequency_penalty"))):
        if value is not None:
            gen[dst] = value
    stops = stop_list(req.get("stop"))
    if stops:
        gen["stopSequences"] = stops[:MAX_STOP_SEQUENCES]
    if isinstance(req.get("n"), int) and req["n"] > 1:
        gen["candidateCount"] = req["n"]
    rf = req.get("response_format")
    if isinstance(rf, dict):
        if rf.get("type") == "json_object":
            gen["responseMimeType"] = "application/json"
        elif rf.get("type") == "json_schema":
            gen["responseMimeType"] = "application/json"
            schema = (rf.get("json_schema") or {}).get("schema")
            if isinstance(schema, dict):
                gen["responseJsonSchema"] = schema  # takes full JSON Schema, unlike tool parameters
    effort = req.get("reasoning_effort")
    if isinstance(effort, str) and THINKING_MODELS.match(model):
        # Gemini thinks with a token budget, and returns thought summaries on request.
        gen["thinkingConfig"] = {"thinkingBudget": THINKING_BUDGETS.get(effort, -1), "includeThoughts": True}
    if gen:
        body["generationConfig"] = gen
    return body


# Models that think (2.5 and later); a budget per OpenAI reasoning effort (-1: dynamic).
THINKING_MODELS = re.compile(r"^(models/)?gemini-(2\.5|[3-9])")
THINKING_BUDGETS = {"minimal": 512, "low": 1024, "medium": 8192, "high": 24576}


# --------------------------------------------------------------------------- response


def usage_from_gemini(u: dict[str, Any] | None) -> Usage:
    """``promptTokenCount`` already includes cached tokens; thinking tokens are output."""
    if not u:
        return Usage()
    return Usage(
        input_tokens=int(u.get("promptTokenCount") or 0) + int(u.get("toolUsePromptTokenCount") or 0),
        output_tokens=int(u.get("candidatesTokenCount") or 0) + int(u.get("thoughtsTokenCount") or 0),
        cache_read_tokens=int(u.get("cachedContentTokenCount") or 0),
    )


def openai_usage(u: dict[str, Any] | None) -> CompletionUsage:
    out = usage_from_gemini(u).to_openai()
    thoughts = int((u or {}).get("thoughtsTokenCount") or 0)
    if thoughts:
        out["completion_tokens_details"] = {"reasoning_tokens": thoughts}
    return out


def _tool_call(part: dict[str, Any], fc: dict[str, Any]) -> ToolCall:
    tc: ToolCall = {
        "id": fc.get("id") or new_id("call_"),
        "type": "function",
        "function": {"name": fc.get("name") or "", "arguments": dump_arguments(fc.get("args"))},
    }
    if part.get("thoughtSignature"):
        tc["extra_content"] = {"google": {"thought_signature": part["thoughtSignature"]}}
    return tc


def _finish(reason: str | None, has_tools: bool) -> FinishReason:
    finish = FINISH_REASONS.get(reason or "STOP", "stop")
    return "tool_calls" if has_tools and finish == "stop" else finish


def parse_response(body: dict[str, Any], model: str) -> ChatResponse:
    choices: list[Choice] = []
    for i, cand in enumerate(body.get("candidates") or ()):
        texts: list[str] = []
        thoughts: list[str] = []
        tool_calls: list[ToolCall] = []
        for part in (cand.get("content") or {}).get("parts") or ():
            if "functionCall" in part:
                tool_calls.append(_tool_call(part, part["functionCall"] or {}))
            elif isinstance(part.get("text"), str):
                (thoughts if part.get("thought") else texts).append(part["text"])
        message: Message = {"role": "assistant", "content": "".join(texts) if texts or not tool_calls else None}
        if tool_calls:
            message["tool_calls"] = tool_calls
        if thoughts:
            message["reasoning_content"] = "".join(thoughts)
        choices.append({"index": cand.get("index", i), "message": message,
                        "finish_reason": _finish(cand.get("finishReason"), bool(tool_calls)),
                        "logprobs": None})
    if not choices:  # the prompt itself was blocked (promptFeedback.blockReason)
        choices.append({"index": 0, "message": {"role": "assistant", "content": ""},
                        "finish_reason": "content_filter", "logprobs": None})
    return {
        "id": body.get("responseId") or new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": openai_usage(body.get("usageMetadata")),
    }


class GeminiStreamDecoder(StreamDecoder):
    """``streamGenerateContent?alt=sse`` events -> canonical chunks.

    Every event is a partial GenerateContentResponse; function calls arrive whole, so
    each becomes one tool-call delta with id, name and all arguments. The event carrying
    ``finishReason`` also carries the final ``usageMetadata``.
    """

    def __init__(self, model: str) -> None:
        self._model = model
        self._id = ""
        self._created = int(time.time())
        self._tools = 0
        self._role = False  # the role goes on the first delta, once it is known what comes first
        self._u: dict[str, Any] | None = None
        self.usage = None
        self.done = False

    def _chunk(self, delta: Delta, finish: FinishReason | None = None) -> ChatChunk:
        return {"id": self._id, "object": "chat.completion.chunk", "created": self._created,
                "model": self._model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    def feed(self, event: SSEEvent) -> list[ChatChunk]:
        if not event.data:
            return []
        data = orjson.loads(event.data)
        if isinstance(data, list):  # a JSON-array body (non-SSE mode) carries errors this way
            data = data[0] if data else {}
        if "error" in data:
            err = data["error"] or {}
            raise StreamError(_info_from_error(err, int(err.get("code") or 500)))
        if data.get("usageMetadata"):  # on every chunk, so far: the best usage known at each event
            self._u = data["usageMetadata"]
            self.usage = usage_from_gemini(self._u)
        if self.done:
            self.usage = usage_from_gemini(self._u)
            return []
        out: list[ChatChunk] = []
        if not self._id:
            self._id = data.get("responseId") or new_id("chatcmpl-")
        cands = data.get("candidates") or ()
        cand = cands[0] if cands else {}
        for part in (cand.get("content") or {}).get("parts") or ():
            if "functionCall" in part:
                tc = _tool_call(part, part["functionCall"] or {})
                tc["index"] = self._tools
                self._tools += 1
                out.append(self._chunk({"tool_calls": [tc]}))
            elif isinstance(part.get("text"), str) and part["text"]:
                text: str = part["text"]
                out.append(self._chunk({"reasoning_content": text} if part.get("thought") else {"content": text}))
        reason = cand.get("finishReason")
        blocked = not cands and (data.get("promptFeedback") or {}).get("blockReason")
        if reason or blocked:
            out.append(self._chunk({}, _finish(reason, self._tools > 0) if reason else "content_filter"))
            self.done = True
            self.usage = usage_from_gemini(self._u)
            out.append({"id": self._id, "object": "chat.completion.chunk", "created": self._created,
                        "model": self._model, "choices": [], "usage": openai_usage(self._u)})
        if not self._role:
            self._role = role_first(out)
        return out


# ------------------------------------------------------------------------- embeddings


def _embed_content(text: str) -> dict[str, Any]:
    return {"parts": [{"text": text}]}


def build_embeddings(req: dict[str, Any], model: str) -> tuple[str, dict[str, Any]]:
    """OpenAI embeddings request -> (method, body): ``embedContent`` for one string,
    ``batchEmbedContents`` for a list."""
    inp = req.get("input")
    dims = req.get("dimensions")
    if isinstance(inp, str):
        body: dict[str, Any] = {"content": _embed_content(inp)}
        if dims:
            body["outputDimensionality"] = dims
        return "embedContent", body
    if isinstance(inp, list) and inp and all(isinstance(s, str) for s in inp):
        reqs = []
        for s in inp:
            r: dict[str, Any] = {"model": f"models/{model}", "content": _embed_content(s)}
            if dims:
                r["outputDimensionality"] = dims
            reqs.append(r)
        return "batchEmbedContents", {"requests": reqs}
    raise bad_request("Gemini embeddings take a string or a list of strings as 'input' (not token arrays)",
                      "input", "invalid_value")


def parse_embeddings(body: dict[str, Any], model: str) -> dict[str, Any]:
    if "embedding" in body:
        vectors = [(body["embedding"] or {}).get("values") or []]
    else:
        vectors = [(e or {}).get("values") or [] for e in body.get("embeddings") or ()]
    tokens = int((body.get("usageMetadata") or {}).get("promptTokenCount") or 0)
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


# ----------------------------------------------------------------------------- errors

_STATUS_TYPES: dict[str, ErrorType] = {
    "INVALID_ARGUMENT": "invalid_request_error",
    "FAILED_PRECONDITION": "invalid_request_error",
    "OUT_OF_RANGE": "invalid_request_error",
    "UNAUTHENTICATED": "authentication_error",
    "PERMISSION_DENIED": "permission_error",
    "NOT_FOUND": "not_found_error",
    "RESOURCE_EXHAUSTED": "rate_limit_error",
    "UNAVAILABLE": "overloaded_error",
    "INTERNAL": "api_error",
    "UNKNOWN": "api_error",
    "DEADLINE_EXCEEDED": "timeout_error",
}
_RETRYABLE = frozenset({"RESOURCE_EXHAUSTED", "UNAVAILABLE", "INTERNAL", "UNKNOWN", "DEADLINE_EXCEEDED"})


def _info_from_error(err: dict[str, Any], status: int) -> UpstreamErrorInfo:
    gstatus = str(err.get("status") or "")
    etype: ErrorType | None = _STATUS_TYPES.get(gstatus)
    message = str(err.get("message") or gstatus or f"Gemini returned HTTP {status}")
    # A bad key is a 400 INVALID_ARGUMENT with reason API_KEY_INVALID, not a 401.
    reasons = {d.get("reason") for d in err.get("details") or () if isinstance(d, dict)}
    if "API_KEY_INVALID" in reasons or "API key not valid" in message:
        etype = "authentication_error"
    if etype is None:
        etype = ("authentication_error" if status == 401 else "permission_error" if status == 403
                 else "not_found_error" if status == 404 else "rate_limit_error" if status == 429
                 else "timeout_error" if status == 504 else "api_error" if status >= 500
                 else "invalid_request_error")
    retryable = status in (408, 429) or status >= 500 or gstatus in _RETRYABLE
    return UpstreamErrorInfo(message, etype, retryable)


def error_info(status: int, body: bytes) -> UpstreamErrorInfo:
    try:
        data: Any = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError:
        data = {}
    if isinstance(data, list):
        data = data[0] if data else {}
    err = data.get("error") if isinstance(data, dict) else None
    if not isinstance(err, dict):
        text = body[:300].decode("utf-8", "replace").strip()
        err = {"message": text or f"Gemini returned HTTP {status}"}
    return _info_from_error(err, status)


