"""`FakeBedrock`: Amazon Bedrock Runtime on loopback, SigV4 verified as AWS documents it.

Routes (Bedrock Runtime API reference): ``POST /model/{modelId}/converse``,
``/converse-stream``, ``/invoke`` and ``/invoke-with-response-stream`` (Anthropic Claude
bodies, ``anthropic_version: bedrock-2023-05-31``). Streams are
``application/vnd.amazon.eventstream`` messages with CRCs (see aws_wire). Errors are
``{"message": ...}`` with the exception named in ``x-amzn-ErrorType``.

Authentication: SigV4 (service ``bedrock``, the fake's region) checked by
``aws_wire.verify_sigv4``, or a Bedrock API key as ``Authorization: Bearer``.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import orjson
from aiohttp import web

from .anthropic_messages import THINKING_TEXT, AnthropicError, new_message_render, parse_messages
from .aws_wire import AwsCredential, SigV4Error, event, exception, verify_sigv4
from .base import FakeUpstream, Rejected, dumps, rand_id
from .behaviour import IMAGE_TEXT, Prompt, Reply, fragments, respond, split_words

# The exception each status stands for (Bedrock Runtime API reference, "Errors").
EXCEPTIONS: dict[int, tuple[str, str]] = {
    400: ("ValidationException", "Malformed input request, please reformat your input and try again."),
    403: ("AccessDeniedException", "You don't have access to the model with the specified model ID."),
    404: ("ResourceNotFoundException", "The provided model identifier is invalid."),
    408: ("ModelTimeoutException", "Model has timed out in processing the request."),
    424: ("ModelErrorException", "The model returned an error."),
    429: ("ThrottlingException", "Too many requests, please wait before trying again."),
    500: ("InternalServerException", "The server encountered an internal error while processing the request."),
    503: ("ServiceUnavailableException", "Bedrock is unable to process your request."),
}
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_call": "tool_use", "stop_sequence": "stop_sequence"}
CONVERSE_FIELDS = frozenset({"messages", "system", "inferenceConfig", "toolConfig", "guardrailConfig",
                             "additionalModelRequestFields", "promptVariables", "additionalModelResponseFieldPaths",
                             "requestMetadata", "performanceConfig"})
BLOCK_KINDS = frozenset({"text", "image", "document", "video", "toolUse", "toolResult", "guardContent",
                         "cachePoint", "reasoningContent", "citationsContent", "searchResult"})
IMAGE_FORMATS = frozenset({"png", "jpeg", "gif", "webp"})
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
TOOL_ID = re.compile(r"^[a-zA-Z0-9_-]+$")
ANTHROPIC_VERSION = "bedrock-2023-05-31"


class BedrockError(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _padding() -> str:
    # Bedrock pads every stream payload with "p" so that lengths say nothing about content.
    return "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"[: secrets.randbelow(40) + 1]


def _b64(value: Any, where: str) -> None:
    if not isinstance(value, str):
        raise BedrockError(f"{where}: expected base64 bytes")
    try:
        base64.b64decode(value, validate=True)
    except binascii.Error:
        raise BedrockError(f"{where}: invalid base64") from None


# ------------------------------------------------------------------------ Converse request


def _block_text(block: dict[str, Any], at: str) -> str | None:
    """The block's counted text (None for blocks that hold none), validating its shape."""
    if len(block) != 1 or next(iter(block)) not in BLOCK_KINDS:
        raise BedrockError(f"{at}: a content block has exactly one member of "
                           f"{', '.join(sorted(BLOCK_KINDS))}")
    kind, value = next(iter(block.items()))
    if kind == "text":
        if not isinstance(value, str) or not value.strip():
            raise BedrockError(f"The text field in the ContentBlock object at {at} is blank. Add text to the text "
                               "field, and try again.")
        return value
    if kind == "image":
        if value.get("format") not in IMAGE_FORMATS:
            raise BedrockError(f"{at}.image.format: must be one of png, jpeg, gif, webp")
        source = value.get("source") or {}
        if "bytes" in source:
            _b64(source["bytes"], f"{at}.image.source.bytes")
        elif "s3Location" not in source:
            raise BedrockError(f"{at}.image.source: bytes or s3Location is required")
        return IMAGE_TEXT
    if kind == "document":
        if not isinstance(value.get("name"), str) or not value["name"]:
            raise BedrockError(f"{at}.document.name: required")
        _b64((value.get("source") or {}).get("bytes"), f"{at}.document.source.bytes")
        return None
    if kind == "cachePoint":
        if value != {"type": "default"}:
            raise BedrockError(f"{at}.cachePoint.type: must be default")
        return None
    return None


def _read_tool_result(value: dict[str, Any], at: str) -> str:
    if not isinstance(value.get("toolUseId"), str) or not TOOL_ID.match(value["toolUseId"]):
        raise BedrockError(f"{at}.toolResult.toolUseId: must match [a-zA-Z0-9_-]+")
    texts = []
    if not value.get("content"):
        raise BedrockError(f"{at}.toolResult.content: must not be empty")
    for j, c in enumerate(value["content"]):
        if "text" in c:
            if not isinstance(c["text"], str) or not c["text"].strip():
                raise BedrockError(f"The text field in the ContentBlock object at {at}.toolResult.content.{j} is "
                                   "blank. Add text to the text field, and try again.")
            texts.append(c["text"])
        elif "json" in c:
            texts.append(orjson.dumps(c["json"]).decode())
        elif "image" not in c and "document" not in c:
            raise BedrockError(f"{at}.toolResult.content[{j}]: text, json, image or document")
    if value.get("status") not in (None, "success", "error"):
        raise BedrockError(f"{at}.toolResult.status: success or error")
    return " ".join(texts)


def parse_converse(body: Any) -> tuple[Prompt, bool]:
    """(prompt, thinking) of a Converse request; raises :class:`BedrockError` as Bedrock would."""
    if not isinstance(body, dict):
        raise BedrockError("Malformed input request, please reformat your input and try again.")
    for name in body:
        if name not in CONVERSE_FIELDS:
            raise BedrockError(f"Malformed input request: extraneous key [{name}] is not permitted, please "
                               "reformat your input and try again.")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BedrockError("A conversation must start with a user message. Try again with a conversation that "
                           "starts with a user message.")
    prompt = Prompt()
    for i, s in enumerate(body.get("system") or []):
        text = _block_text(s, f"system[{i}]")
        if text:
            prompt.texts.append(text)
    uses_tools = False
    open_calls: set[str] = set()
    for i, msg in enumerate(messages):
        role = msg.get("role")
        if role not in ("user", "assistant"):
            raise BedrockError(f"messages[{i}].role: must be user or assistant")
        if (i == 0 and role != "user") or (i > 0 and messages[i - 1].get("role") == role):
            raise BedrockError("A conversation must alternate between user and assistant roles. Make sure the "
                               "conversation alternates between user and assistant roles and try again.")
        content = msg.get("content")
        if not isinstance(content, list) or not content:
            raise BedrockError(f"messages[{i}].content: must not be empty")
        results: list[str] = []
        user_texts: list[str] = []
        calls: set[str] = set()
        for j, block in enumerate(content):
            at = f"messages[{i}].content[{j}]"
            if not isinstance(block, dict):
                raise BedrockError(f"{at}: must be an object")
            if "toolUse" in block:
                uses_tools = True
                tu = block["toolUse"]
                if role != "assistant" or not TOOL_ID.match(str(tu.get("toolUseId"))) \
                        or not isinstance(tu.get("input"), dict):
                    raise BedrockError(f"{at}.toolUse: an assistant block with toolUseId, name and object input")
                calls.add(tu["toolUseId"])
                continue
            if "toolResult" in block:
                uses_tools = True
                if role != "user":
                    raise BedrockError(f"{at}.toolResult: only in user messages")
                tid = block["toolResult"].get("toolUseId")
                if tid not in open_calls:
                    raise BedrockError("The toolResult blocks at " + f"messages.{i}.content contain a toolUseId "
                                       "that does not match a toolUse block of the previous turn.")
                results.append(_read_tool_result(block["toolResult"], at))
                continue
            text = _block_text(block, at)
            if text:
                prompt.texts.append(text)
                if role == "user":
                    user_texts.append(text)
        open_calls = calls
        prompt.texts.extend(results)
        if role == "user":
            prompt.last_role = "tool" if results and not user_texts else "user"
            prompt.tool_results = results
            if user_texts:
                prompt.last_user_text = " ".join(user_texts)
        else:
            prompt.last_role = "assistant"
    if messages[-1].get("role") != "user":
        raise BedrockError("A conversation must end with a user message. Try again with a conversation that ends "
                           "with a user message.")
    config = body.get("toolConfig")
    if uses_tools and not config:
        raise BedrockError("The toolConfig field must be defined when using toolUse and toolResult content blocks.")
    if config is not None:
        tools = config.get("tools")
        if not isinstance(tools, list) or not tools:
            raise BedrockError("toolConfig.tools: must not be empty")
        for k, tool in enumerate(tools):
            if "cachePoint" in tool:
                continue
            spec = tool.get("toolSpec") or {}
            if not TOOL_NAME.match(str(spec.get("name"))):
                raise BedrockError(f"toolConfig.tools[{k}].toolSpec.name: must match [a-zA-Z0-9_-]{{1,64}}")
            if not isinstance((spec.get("inputSchema") or {}).get("json"), dict):
                raise BedrockError(f"toolConfig.tools[{k}].toolSpec.inputSchema.json: required")
            prompt.tools.append(spec["name"])
        choice = config.get("toolChoice")
        if choice is not None:
            if list(choice) == ["any"]:
                prompt.tool_choice = "required"
            elif list(choice) == ["tool"]:
                prompt.tool_choice = ("function", choice["tool"]["name"])
            elif list(choice) != ["auto"]:
                raise BedrockError("toolConfig.toolChoice: one of auto, any, tool")
    inference = body.get("inferenceConfig") or {}
    max_tokens = inference.get("maxTokens")
    if max_tokens is not None:
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise BedrockError("inferenceConfig.maxTokens: must be at least 1")
        prompt.max_tokens = max_tokens
    for name in ("temperature", "topP"):
        value = inference.get(name)
        if value is not None and not (isinstance(value, int | float) and 0 <= value <= 1):
            raise BedrockError(f"inferenceConfig.{name}: must be between 0 and 1")
    stops = inference.get("stopSequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
            raise BedrockError("inferenceConfig.stopSequences: non-empty strings")
        prompt.stop = stops
    thinking = ((body.get("additionalModelRequestFields") or {}).get("thinking") or {})
    if thinking:
        budget = thinking.get("budget_tokens")
        if thinking.get("type") != "enabled" or not isinstance(budget, int) or budget < 1024:
            raise BedrockError("thinking.budget_tokens: Input should be greater than or equal to 1024")
        if max_tokens is None or max_tokens <= budget:
            raise BedrockError("`max_tokens` must be greater than `thinking.budget_tokens`.")
        if prompt.tool_choice != "auto":
            raise BedrockError("Thinking may not be enabled when tool_choice forces tool use.")
        if prompt.max_tokens is not None:
            prompt.max_tokens -= budget  # the budget is out of maxTokens: the answer keeps the rest
    return prompt, bool(thinking)


# ----------------------------------------------------------------------- Converse answers


class ConverseRender:
    def __init__(self, reply: Reply, thinking: bool, cache_read: int, cache_write: int) -> None:
        self.reply = reply
        self.thinking = thinking
        self.cache_read = cache_read
        self.cache_write = cache_write
        self.tool_id = rand_id("tooluse_", 22)

    @property
    def output_tokens(self) -> int:
        return self.reply.output_tokens + (len(THINKING_TEXT.split()) if self.thinking else 0)

    def usage(self) -> dict[str, Any]:
        # inputTokens leaves out the cache reads and writes; totalTokens counts them.
        u = {"inputTokens": self.reply.input_tokens, "outputTokens": self.output_tokens,
             "totalTokens": self.reply.input_tokens + self.cache_read + self.cache_write + self.output_tokens}
        if self.cache_read or self.cache_write:
            u.update(cacheReadInputTokens=self.cache_read, cacheWriteInputTokens=self.cache_write)
        return u

    @property
    def signature(self) -> str:
        return base64.b64encode(THINKING_TEXT.encode()).decode()

    def content(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if self.thinking:
            out.append({"reasoningContent": {"reasoningText": {"text": THINKING_TEXT, "signature": self.signature}}})
        call = self.reply.tool_call
        if call is not None:
            out.append({"toolUse": {"toolUseId": self.tool_id, "name": call.name, "input": call.args}})
        else:
            out.append({"text": self.reply.text})
        return out

    def response(self) -> dict[str, Any]:
        return {"output": {"message": {"role": "assistant", "content": self.content()}},
                "stopReason": STOP_REASONS[self.reply.finish], "usage": self.usage(),
                "metrics": {"latencyMs": 42}}

    def events(self) -> Iterator[tuple[str, dict[str, Any]]]:
        yield "messageStart", {"role": "assistant"}
        index = 0
        if self.thinking:
            for piece in split_words(THINKING_TEXT):
                yield "contentBlockDelta", {"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": piece}}}
            yield "contentBlockDelta", {"contentBlockIndex": 0,
                                        "delta": {"reasoningContent": {"signature": self.signature}}}
            yield "contentBlockStop", {"contentBlockIndex": 0}
            index = 1
        call = self.reply.tool_call
        if call is not None:
            yield "contentBlockStart", {"contentBlockIndex": index,
                                        "start": {"toolUse": {"toolUseId": self.tool_id, "name": call.name}}}
            for frag in fragments(call.arguments):
                yield "contentBlockDelta", {"contentBlockIndex": index, "delta": {"toolUse": {"input": frag}}}
        else:
            for piece in self.reply.pieces or [""]:
                yield "contentBlockDelta", {"contentBlockIndex": index, "delta": {"text": piece}}
        yield "contentBlockStop", {"contentBlockIndex": index}
        yield "messageStop", {"stopReason": STOP_REASONS[self.reply.finish]}
        yield "metadata", {"usage": self.usage(), "metrics": {"latencyMs": 42}}


# ------------------------------------------------------------------------------- the fake


class FakeBedrock(FakeUpstream):
    provider = "bedrock"
    stream_content_type = "application/vnd.amazon.eventstream"

    def __init__(
        self,
        credentials: Mapping[str, AwsCredential] | None = None,
        *,
        region: str = "us-east-1",
        api_keys: Iterable[str] = (),
        models: Iterable[str] | None = None,
    ) -> None:
        super().__init__(api_keys, models=models)
        # Read at each request: a live view (e.g. of what a fake STS issued) stays current.
        self.credentials: Mapping[str, AwsCredential] = credentials if credentials is not None else {}
        self.region = region
        self.cache_read_tokens = 0
        self.cache_write_tokens = 0
        self.verified = 0  # requests whose SigV4 signature checked out
        self.refused: list[str] = []  # exception names of refused signatures
        self.last_request_raw_path = ""  # as on the request line, percent-encoding and all

    @property
    def base_url(self) -> str:
        """What a ProviderKey's baseURL takes."""
        return self.url

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post(r"/model/{model:[^/]+}/{operation}", self.model_operation)

    # ---- errors -----------------------------------------------------------------
    @staticmethod
    def error(status: int, name: str, message: str) -> web.Response:
        return web.Response(body=dumps({"message": message}), status=status, content_type="application/json",
                            headers={"x-amzn-ErrorType": f"{name}:http://internal.amazon.com/coral/com.amazon.bedrock/",
                                     "x-amzn-RequestId": secrets.token_hex(16)})

    def error_response(self, status: int, message: str | None = None, *,
                       retry_after: float | None = None) -> web.Response:
        name, text = EXCEPTIONS.get(status, ("InternalServerException" if status >= 500 else "ValidationException",
                                             f"HTTP {status}"))
        return self.error(status, name, message or text)

    def not_found_response(self, request: web.Request) -> web.Response:
        return self.error(404, "UnknownOperationException", "")

    def stream_error_frame(self, sent: int) -> bytes:
        message = self.faults.error_message or "The system encountered an unexpected error during processing."
        return exception("internalServerException", dumps({"message": message}))

    # ---- checks -------------------------------------------------------------------
    def authenticate(self, request: web.Request, raw: bytes) -> None:
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            if auth.removeprefix("Bearer ") not in self.keys:
                raise Rejected(self.error(403, "UnrecognizedClientException",
                                          "The security token included in the request is invalid."))
            return
        headers: dict[str, list[str]] = {}
        for name, value in request.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        path, _, query = request.raw_path.partition("?")
        try:
            verify_sigv4(method=request.method, raw_path=path, raw_query=query, headers=headers, body=raw,
                         credentials=self.credentials, region=self.region, service="bedrock")
        except SigV4Error as e:
            self.refused.append(e.name)
            raise Rejected(self.error(403, e.name, e.message)) from None
        self.verified += 1

    # ---- routes -------------------------------------------------------------------
    async def model_operation(self, request: web.Request) -> web.StreamResponse:
        self.last_request_raw_path = request.raw_path
        self.authenticate(request, self.requests[-1].raw)
        model = request.match_info["model"]
        operation = request.match_info["operation"]
        if operation not in ("converse", "converse-stream", "invoke", "invoke-with-response-stream", "count-tokens"):
            return self.not_found_response(request)
        if self.models is not None and model not in self.models:
            return self.error(400, "ValidationException", "The provided model identifier is invalid.")
        body = self.body_of(request)
        try:
            if operation == "count-tokens":
                return self.count_tokens(model, body)
            if operation.startswith("converse"):
                return await self.converse(request, body, stream=operation == "converse-stream")
            return await self.invoke(request, model, body, stream=operation == "invoke-with-response-stream")
        except BedrockError as e:
            return self.error(e.status, "ValidationException", str(e))

    def count_tokens(self, model: str, body: Any) -> web.Response:
        """CountTokens: ``{"input": {"invokeModel": {"body": "<JSON>"}}}`` or ``{"input": {"converse":
        {...}}}``, for foundation models (not inference profiles)."""
        if not model.startswith("anthropic."):
            raise BedrockError("The provided model doesn't support counting tokens.")
        given = (body or {}).get("input") if isinstance(body, dict) else None
        if not isinstance(given, dict) or len(given) != 1:
            raise BedrockError("input: exactly one of invokeModel, converse")
        if "converse" in given:
            prompt, _ = parse_converse(given["converse"])
        else:
            invoke = orjson.loads((given.get("invokeModel") or {})["body"])
            if invoke.get("anthropic_version") != ANTHROPIC_VERSION:
                raise BedrockError("Malformed input request: #: required key [anthropic_version] not found")
            messages = {k: v for k, v in invoke.items() if k not in ("anthropic_version", "anthropic_beta")}
            try:
                prompt = parse_messages({**messages, "model": model}).prompt
            except AnthropicError as e:
                raise BedrockError(str(e)) from None
        return web.Response(body=dumps({"inputTokens": prompt.input_tokens}), content_type="application/json")

    async def converse(self, request: web.Request, body: Any, *, stream: bool) -> web.StreamResponse:
        prompt, thinking = parse_converse(body)
        render = ConverseRender(respond(prompt, self.agent), thinking, self.cache_read_tokens,
                                self.cache_write_tokens)
        if not stream:
            return web.Response(body=dumps(render.response()), content_type="application/json")

        def frames() -> Iterator[bytes]:
            for name, payload in render.events():
                yield event(name, dumps({**payload, "p": _padding()}))

        return await self.stream(request, frames())

    async def invoke(self, request: web.Request, model: str, body: Any, *, stream: bool) -> web.StreamResponse:
        if not isinstance(body, dict):
            raise BedrockError("Malformed input request, please reformat your input and try again.")
        for name in ("model", "stream"):
            if name in body:
                raise BedrockError(f"Malformed input request: #: extraneous key [{name}] is not permitted, please "
                                   "reformat your input and try again.")
        if body.get("anthropic_version") != ANTHROPIC_VERSION:
            raise BedrockError("Malformed input request: #: required key [anthropic_version] not found, please "
                               "reformat your input and try again.")
        betas = body.get("anthropic_beta")
        if betas is not None and not (isinstance(betas, list) and all(isinstance(b, str) for b in betas)):
            raise BedrockError("Malformed input request: #/anthropic_beta: expected type: JSONArray")
        messages = {k: v for k, v in body.items() if k not in ("anthropic_version", "anthropic_beta")}
        try:
            req = parse_messages({**messages, "model": model})
        except AnthropicError as e:
            raise BedrockError(str(e)) from None
        reply = respond(req.prompt, self.agent)
        render = new_message_render(req, reply, self.cache_read_tokens, self.cache_write_tokens)
        if not stream:
            return web.Response(body=dumps(render.message()), content_type="application/json")

        def frames() -> Iterator[bytes]:
            for ev in render.events():
                if ev["type"] == "message_stop":
                    ev = {**ev, "amazon-bedrock-invocationMetrics": {
                        "inputTokenCount": reply.input_tokens, "outputTokenCount": render.output_tokens,
                        "invocationLatency": 42, "firstByteLatency": 21}}
                chunk = {"bytes": base64.b64encode(dumps(ev)).decode(), "p": _padding()}
                yield event("chunk", dumps(chunk))

        return await self.stream(request, frames())


__all__ = ["AwsCredential", "FakeBedrock", "parse_converse"]
