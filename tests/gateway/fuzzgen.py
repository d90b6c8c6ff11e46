"""Seeded generator of bad requests for the eight POST endpoints (Gemini's three included), and a driver that sends
them to a running gateway and keeps score.

Each request starts from a good body of its endpoint (tools, images, tool results,
streaming, ...) and gets one to three mutations: a node replaced by a hostile value (wrong
types, huge or non-finite numbers, deep nesting, odd strings), a key dropped or added, an
unknown role or content-block type, or damage to the bytes themselves (truncated, invalid
UTF-8, not an object). Some mutations make a body that the gateway must refuse itself
(``must_refuse``); the rest may be forwarded, and the upstream's answer then stands. Either
way the answer is never a 5xx, and never a dropped connection.
"""

from __future__ import annotations

import asyncio
import copy
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
MESSAGES = "/v1/messages"
COUNT_TOKENS = "/v1/messages/count_tokens"
RESPONSES = "/v1/responses"
# Gemini callers name the model in the path: "{model}" is filled in per request.
GEMINI = "/v1beta/models/{model}:generateContent"
GEMINI_STREAM = "/v1beta/models/{model}:streamGenerateContent?alt=sse"
GEMINI_COUNT = "/v1beta/models/{model}:countTokens"
PATHS = (CHAT, EMBEDDINGS, MESSAGES, COUNT_TOKENS, RESPONSES, GEMINI, GEMINI_STREAM, GEMINI_COUNT)
MODELS = ("via-openai", "via-azure", "via-anthropic", "via-gemini")
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
SCHEMA = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}


def _gemini_templates() -> list[dict[str, Any]]:
    return [
        {"systemInstruction": {"parts": [{"text": "be brief"}]},
         "contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
        {"generationConfig": {"temperature": 0.2, "maxOutputTokens": 20, "stopSequences": ["END"],
                              "responseMimeType": "application/json", "responseJsonSchema": SCHEMA,
                              "thinkingConfig": {"thinkingBudget": 1024, "includeThoughts": True}},
         "contents": [{"role": "user", "parts": [{"text": "what is this"},
                                                 {"inlineData": {"mimeType": "image/png", "data": PNG}}]}]},
        {"tools": [{"functionDeclarations": [{"name": "lookup", "parameters": {
            "type": "OBJECT", "properties": {"q": {"type": "STRING"}}, "required": ["q"]}}]}],
         "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["lookup"]}},
         "contents": [{"role": "user", "parts": [{"text": "look up x"}]},
                      {"role": "model", "parts": [{"functionCall": {"name": "lookup", "args": {"q": "x"}},
                                                   "thoughtSignature": "c2ln"}]},
                      {"role": "user", "parts": [{"functionResponse": {"name": "lookup",
                                                                       "response": {"output": "x is y"}}}]}]},
    ]


def _templates(model: str) -> dict[str, list[dict[str, Any]]]:
    return {
        GEMINI: _gemini_templates(),
        GEMINI_STREAM: _gemini_templates(),
        GEMINI_COUNT: [{"contents": [{"parts": [{"text": "hi"}]}]},
                       {"generateContentRequest": _gemini_templates()[2]}],
        CHAT: [
            {"model": model, "messages": [{"role": "system", "content": "be brief"},
                                          {"role": "user", "content": "hi"}]},
            {"model": model, "stream": True, "stream_options": {"include_usage": True}, "temperature": 0.2,
             "max_tokens": 20, "stop": ["END"], "messages": [{"role": "user", "content": [
                 {"type": "text", "text": "what is this"},
                 {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "low"}}]}]},
            {"model": model, "tools": [{"type": "function", "function": {"name": "lookup", "parameters": SCHEMA}}],
             "tool_choice": "auto", "messages": [
                 {"role": "user", "content": "look up x"},
                 {"role": "assistant", "content": None, "tool_calls": [
                     {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q":"x"}'}}]},
                 {"role": "tool", "tool_call_id": "call_1", "content": "x is y"}]},
        ],
        EMBEDDINGS: [
            {"model": model, "input": "hello"},
            {"model": model, "input": ["a", "b"], "encoding_format": "float", "dimensions": 8},
            {"model": model, "input": [[1, 2, 3]]},
        ],
        MESSAGES: [
            {"model": model, "max_tokens": 50, "system": "be brief", "messages": [{"role": "user", "content": "hi"}]},
            {"model": model, "max_tokens": 50, "stream": True, "temperature": 0.5, "top_k": 3,
             "metadata": {"user_id": "u"}, "thinking": {"type": "enabled", "budget_tokens": 1024},
             "system": [{"type": "text", "text": "sys", "cache_control": {"type": "ephemeral"}}],
             "messages": [{"role": "user", "content": [
                 {"type": "text", "text": "what is this"},
                 {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}]}]},
            {"model": model, "max_tokens": 50, "tool_choice": {"type": "auto"},
             "tools": [{"name": "lookup", "input_schema": SCHEMA}], "messages": [
                 {"role": "user", "content": "look up x"},
                 {"role": "assistant", "content": [{"type": "text", "text": "ok"},
                                                   {"type": "tool_use", "id": "toolu_1", "name": "lookup",
                                                    "input": {"q": "x"}}]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                               "content": [{"type": "text", "text": "x is y"}]}]}]},
        ],
        COUNT_TOKENS: [
            {"model": model, "system": "be brief", "messages": [{"role": "user", "content": "hi"}]},
            {"model": model, "tools": [{"name": "lookup", "input_schema": SCHEMA}],
             "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
        ],
        RESPONSES: [
            {"model": model, "input": "hi", "instructions": "be brief"},
            {"model": model, "stream": True, "reasoning": {"effort": "low"}, "max_output_tokens": 30,
             "text": {"format": {"type": "json_schema", "name": "out", "schema": SCHEMA}},
             "input": [{"role": "user", "content": [
                 {"type": "input_text", "text": "what is this"},
                 {"type": "input_image", "image_url": f"data:image/png;base64,{PNG}"}]}]},
            {"model": model, "tools": [{"type": "function", "name": "lookup", "parameters": SCHEMA}],
             "tool_choice": "auto", "input": [
                 {"type": "message", "role": "user", "content": "look up x"},
                 {"type": "function_call", "call_id": "call_1", "name": "lookup", "arguments": '{"q":"x"}'},
                 {"type": "function_call_output", "call_id": "call_1", "output": "x is y"}]},
        ],
    }


# Values put in place of a node. "RAW:" values are spliced into the JSON text as they are.
HOSTILE: list[Any] = [
    None, True, False, 0, -1, 1.5, -0.0, 2**63, -(2**63), 1e308, "", "x", "5", "yes", "true", "false",
    "null", [], {}, [None], [[[]]], {"type": None}, {"type": "no_such_type"}, {"type": 5}, "\u0000", "\u202e",
    "é" * 1000, "😀" * 50, {"role": "user"}, [{"type": "text"}], {"url": 5}, [1, "a", None, {}],
    "RAW:NaN", "RAW:Infinity", "RAW:-Infinity", "RAW:1e999", "RAW:-1e400", "RAW:1" + "0" * 400,
    "RAW:1" + "0" * 400 + ".5", f"RAW:{10**30}", f"RAW:{-(10**30)}", f"RAW:{2**64}",
    'RAW:"\\ud800"', 'RAW:"\\udfff\\ud800"', "DEEP:list:40", "DEEP:dict:40", "DEEP:list:300", "DEEP:dict:300",
    "DEEP:list:3000", "LONG:100000",
]
PLAIN = [v for v in HOSTILE if not (isinstance(v, str) and v.split(":")[0] in ("RAW", "DEEP", "LONG"))]
REFUSED_SPLICES = ("RAW:NaN", "RAW:Infinity", "RAW:-Infinity", "RAW:1e999", "RAW:-1e400", 'RAW:"\\ud800"',
                   'RAW:"\\udfff\\ud800"', "RAW:1" + "0" * 400 + ".5", "DEEP:list:300", "DEEP:dict:300",
                   "DEEP:list:3000")
ROLES: list[Any] = ["system", "developer", "tool", "function", "bot", "", "USER", None, 5, "assistant", "user"]
BLOCK_TYPES: list[Any] = ["no_such_block", "", None, 7, "text", "image", "tool_use", "tool_result", "thinking",
                          "input_text", "image_url", "function_call", "server_tool_use", "document"]
REQUIRED = {CHAT: ("model", "messages"), EMBEDDINGS: ("model", "input"), MESSAGES: ("model", "messages", "max_tokens"),
            COUNT_TOKENS: ("model", "messages"), RESPONSES: ("model",), GEMINI: ("contents",),
            GEMINI_STREAM: ("contents",), GEMINI_COUNT: ()}


@dataclass
class FuzzRequest:
    path: str
    body: bytes
    must_refuse: bool
    mutations: list[str]


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _set(root: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    node = root
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return root


def _raw(value: str, rng: random.Random) -> bytes:
    kind, _, arg = value.partition(":")
    if kind == "RAW":
        return arg.encode()
    if kind == "DEEP":
        shape, depth = arg.split(":")
        d = int(depth)
        return b"[" * d + b"]" * d if shape == "list" else b'{"a":' * d + b"1" + b"}" * d
    assert kind == "LONG"
    return orjson.dumps("".join(rng.choice("abc \n\t\"\\/") for _ in range(int(arg))))


class Generator:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.templates = {m: _templates(m) for m in MODELS}

    def next(self) -> FuzzRequest:
        rng = self.rng
        path = rng.choice(PATHS)
        model = rng.choice(MODELS)
        body: Any = copy.deepcopy(rng.choice(self.templates[model][path]))
        mutations: list[str] = []
        splices: dict[str, bytes] = {}
        refused_tokens: list[str] = []
        for _ in range(rng.randint(1, 3)):
            op = rng.random()
            nodes = _paths(body)
            if op < 0.45 or not isinstance(body, dict):  # a node replaced by a hostile value
                where = rng.choice(nodes)
                value = copy.deepcopy(rng.choice(HOSTILE))
                if value == "LONG:100000":
                    value = "".join(rng.choice("abc \n\t\"\\/") for _ in range(100_000))
                elif value in ("DEEP:list:40", "DEEP:dict:40"):  # deep, and still within every parser's limit
                    value = orjson.loads(_raw(value, rng))
                elif isinstance(value, str) and value.split(":")[0] in ("RAW", "DEEP"):
                    token = f"__splice{len(splices)}__"
                    splices[token] = _raw(value, rng)
                    if value in REFUSED_SPLICES:
                        refused_tokens.append(token)
                    value = token
                body = _set(body, where, value)
                mutations.append(f"set {where!r}={str(value)[:30]!r}")
            elif op < 0.6:  # a key dropped
                keyed = [n for n in nodes if n and isinstance(n[-1], str)]
                if keyed:
                    where = rng.choice(keyed)
                    parent = body
                    for p in where[:-1]:
                        parent = parent[p]
                    del parent[where[-1]]
                    mutations.append(f"drop {where!r}")
            elif op < 0.7:  # an unknown key, at the top or deeper
                dicts = [n for n in nodes if isinstance(_get(body, n), dict)]
                where = rng.choice(dicts)
                _get(body, where)[rng.choice(["x", "future_field", "_", "🙂", "type", "role", "content"])] = \
                    copy.deepcopy(rng.choice(PLAIN))
                mutations.append(f"add at {where!r}")
            elif op < 0.85:  # roles and content-block types no one has heard of
                targets = [n for n in nodes if n and n[-1] in ("role", "type")]
                if targets:
                    where = rng.choice(targets)
                    value = rng.choice(ROLES if where[-1] == "role" else BLOCK_TYPES)
                    body = _set(body, where, value)
                    mutations.append(f"set {where!r}={value!r}")
            elif isinstance(body, dict):  # streaming flipped: the same body down the other path
                body["stream"] = not body.get("stream")
                mutations.append(f"stream={body['stream']}")
        raw = orjson.dumps(body)
        # Refused for sure: not an object, a required field missing or of the wrong kind, or a
        # number or nesting no JSON parser of the gateway's takes (still in the body at the end).
        must_refuse = not isinstance(body, dict) or any(k not in body or not _fits(k, body[k]) for k in REQUIRED[path])
        must_refuse |= any(f'"{t}"'.encode() in raw for t in refused_tokens)
        for token, data in splices.items():
            raw = raw.replace(b'"' + token.encode() + b'"', data)
        if rng.random() < 0.15:  # damage to the bytes themselves
            raw, refused, what = self._damage(raw)
            must_refuse |= refused
            mutations.append(what)
        return FuzzRequest(path.format(model=model), raw, must_refuse, mutations)

    def _damage(self, raw: bytes) -> tuple[bytes, bool, str]:
        rng = self.rng
        choice = rng.randrange(9)
        at = rng.randrange(len(raw) + 1)
        if choice == 0:
            return raw[:min(at, len(raw) - 1)], True, "truncated"
        if choice == 1:
            return raw[:at] + b"\xff\xfe" + raw[at:], True, "invalid utf-8"
        if choice == 2:
            not_object = [b"", b"null", b"[]", b'"str"', b"42", b"true", b"{", b"}", b"\x00" * 10]
            return rng.choice(not_object), True, "not an object"
        if choice == 3:
            return raw + rng.choice([b"}", b"garbage", b"{}", b","]), True, "trailing data"
        if choice == 4:
            return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))), True, "noise"
        if choice == 5:
            return b"\xef\xbb\xbf" + raw, False, "bom"
        if choice == 6:
            return raw.replace(b'"', b"'", 1), True, "single quote"
        if choice == 7:
            return raw.replace(b":", b": \n\t", rng.randrange(1, 5)), False, "whitespace"
        return raw[:at] + b"\x00" + raw[at:], True, "nul byte"


def _get(root: Any, path: tuple[Any, ...]) -> Any:
    node = root
    for p in path:
        node = node[p]
    return node


def _fits(key: str, value: Any) -> bool:
    """Whether ``value`` is of the kind a required top-level field takes (strictly)."""
    if isinstance(value, str) and value.startswith("__splice"):
        return False
    if key == "model":
        return isinstance(value, str) and value != ""
    if key == "max_tokens":
        return isinstance(value, int) and not isinstance(value, bool) and 1 <= value < 2**63
    if key in ("messages", "contents"):
        return isinstance(value, list) and value != []
    if key == "input":
        return isinstance(value, str | list)
    return True


# ---- sending them, keeping score ------------------------------------------------------------

@dataclass
class Score:
    sent: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)  # 5xx, with the request that caused it
    dropped: list[str] = field(default_factory=list)  # no complete HTTP response
    wrongly_forwarded: list[str] = field(default_factory=list)  # must_refuse, yet an upstream was called
    wrong_shape: list[str] = field(default_factory=list)  # an error not in the caller's dialect
    attempts: int = 0  # upstream attempts the gateway reported (x-modelroute-attempts)
    slowest: list[tuple[float, str]] = field(default_factory=list)  # the five slowest answers
    seconds: float = 0.0


def _describe(req: FuzzRequest, status: int | str, text: bytes) -> str:
    return f"{status} {req.path} {req.mutations} body={req.body[:300]!r} answer={text[:300]!r}"


def _error_shape_ok(path: str, text: bytes) -> bool:
    try:
        body = orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(body, dict):
        return False
    if path.startswith("/v1beta/"):  # Gemini's shape
        err = body.get("error")
        return isinstance(err, dict) and isinstance(err.get("message"), str) and isinstance(err.get("code"), int) \
            and isinstance(err.get("status"), str)
    if path.startswith(MESSAGES):
        return body.get("type") == "error" and isinstance(body.get("error"), dict) and \
            isinstance(body["error"].get("message"), str) and isinstance(body["error"].get("type"), str)
    return isinstance(body.get("error"), dict) and isinstance(body["error"].get("message"), str)


async def send_all(base_url: str, gen: Generator, n: int, concurrency: int = 16) -> Score:
    """Send ``n`` generated requests to ``base_url`` (http://127.0.0.1:PORT), ``concurrency`` at a time."""
    score = Score()
    queue = [gen.next() for _ in range(n)]
    started = time.monotonic()
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as http:
        async def one(req: FuzzRequest) -> None:
            headers = {"content-type": "application/json", "anthropic-version": "2023-06-01"}
            t0 = time.monotonic()
            try:
                async with http.post(base_url + req.path, data=req.body, headers=headers) as r:
                    text = await r.read()
                    status = r.status
                    attempts = r.headers.get("x-modelroute-attempts")
            except (TimeoutError, aiohttp.ClientError) as e:
                score.dropped.append(_describe(req, type(e).__name__, str(e).encode()))
                return
            score.statuses[status] += 1
            took = time.monotonic() - t0
            if len(score.slowest) < 5 or took > score.slowest[0][0]:
                score.slowest = sorted([*score.slowest, (took, _describe(req, status, text))])[-5:]
            if attempts is not None:
                score.attempts += int(attempts)
            if status >= 500:
                score.server_errors.append(_describe(req, status, text))
            if req.must_refuse and (attempts is not None or status < 400):
                score.wrongly_forwarded.append(_describe(req, status, text))
            if status >= 400 and not _error_shape_ok(req.path, text):
                score.wrong_shape.append(_describe(req, status, text))

        async def worker(items: list[FuzzRequest]) -> None:
            for req in items:
                await one(req)
                score.sent += 1

        await asyncio.gather(*(worker(queue[i::concurrency]) for i in range(concurrency)))
    score.seconds = time.monotonic() - started
    return score
