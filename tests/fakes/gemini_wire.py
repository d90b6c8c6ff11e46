"""Gemini `generateContent` wire format: validation, reduction to a `Prompt`, rendering.

Faithful quirks a gateway must cope with:
* proto-JSON: both lowerCamelCase and snake_case field names are accepted, and
  unknown fields are a 400 ("Unknown name ... Cannot find field");
* zero-valued fields are omitted from responses (no `candidatesTokenCount: 0`);
* function calls carry no id, and finishReason is `STOP` even after a call;
* every stream chunk carries `usageMetadata`; only the last one is complete.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from .behaviour import IMAGE_TEXT, Prompt, Reply, ToolChoice

REQUEST_FIELDS = frozenset(
    [
        "contents",
        "systemInstruction",
        "tools",
        "toolConfig",
        "safetySettings",
        "generationConfig",
        "cachedContent",
        "labels",
        "model",
        "serviceTier",
        "store",
    ]
)
GENERATION_FIELDS = frozenset(
    [
        "stopSequences",
        "responseMimeType",
        "responseSchema",
        "responseJsonSchema",
        "_responseJsonSchema",
        "responseModalities",
        "candidateCount",
        "maxOutputTokens",
        "temperature",
        "topP",
        "topK",
        "seed",
        "presencePenalty",
        "frequencyPenalty",
        "responseLogprobs",
        "logprobs",
        "enableEnhancedCivicAnswers",
        "speechConfig",
        "thinkingConfig",
        "imageConfig",
        "mediaResolution",
        "routingConfig",
        "audioTimestamp",
        "enableAffectiveDialog",
        "modelSelectionConfig",
    ]
)
PART_DATA = [
    "text",
    "inlineData",
    "fileData",
    "functionCall",
    "functionResponse",
    "executableCode",
    "codeExecutionResult",
    "thought",
    "thoughtSignature",
    "videoMetadata",
    "partMetadata",
    "mediaResolution",
]
# Free-form values (user-named keys) that must not be camel-cased.
FREE_FORM = frozenset(
    [
        "args",
        "response",
        "parameters",
        "parametersJsonSchema",
        "responseSchema",
        "responseJsonSchema",
        "_responseJsonSchema",
        "labels",
        "properties",
    ]
)
FUNCTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,127}$")
FINISH = {"stop": "STOP", "length": "MAX_TOKENS", "tool_call": "STOP", "stop_sequence": "STOP"}


class GeminiError(Exception):
    def __init__(self, message: str, *, status: int = 400, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.details = details


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest) if rest and head else name


def camelize(value: Any) -> Any:
    """Proto-JSON accepts snake_case too; normalise to lowerCamelCase, sparing free-form maps."""
    if isinstance(value, list):
        return [camelize(v) for v in value]
    if isinstance(value, dict):
        return {camel(k): (v if camel(k) in FREE_FORM else camelize(v)) for k, v in value.items()}
    return value


def _unknown(name: str, where: str | None) -> GeminiError:
    at = f" at '{where}'" if where else ""
    text = f'Invalid JSON payload received. Unknown name "{name}"{at}: Cannot find field.'
    violation = {
        "@type": "type.googleapis.com/google.rpc.BadRequest",
        "fieldViolations": [{"field": where or "", "description": text}],
    }
    return GeminiError(text, details=[violation])


def _field(path: str, problem: str) -> GeminiError:
    return GeminiError(f"* GenerateContentRequest.{path}: {problem}\n")


THOUGHT_TEXT = "I will echo the user."


@dataclass
class GenerateRequest:
    prompt: Prompt
    include_thoughts: bool = False  # generationConfig.thinkingConfig.includeThoughts


def parse_generate(raw: dict[str, Any]) -> GenerateRequest:
    for name in raw:
        if camel(name) not in REQUEST_FIELDS:
            raise _unknown(name, None)
    body = camelize(raw)
    config = body.get("generationConfig") or {}
    if not isinstance(config, dict):
        raise GeminiError(
            "Invalid value at 'generation_config' (type.googleapis.com/google.ai.generativelanguage."
            f'v1beta.GenerationConfig), "{config}"'
        )
    for name in raw.get("generationConfig") or raw.get("generation_config") or {}:
        if camel(name) not in GENERATION_FIELDS:
            raise _unknown(name, "generation_config")
    prompt = Prompt()
    _read_system(body.get("systemInstruction"), prompt)
    _read_contents(body.get("contents"), prompt)
    _read_tools(body, prompt)
    limit = config.get("maxOutputTokens")
    if limit is not None:
        if not isinstance(limit, int):
            raise GeminiError(f"Invalid value at 'generation_config.max_output_tokens' (TYPE_INT32), {limit}")
        if limit > 0:
            prompt.max_tokens = limit
    stops = config.get("stopSequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise GeminiError("Invalid value at 'generation_config.stop_sequences' (TYPE_STRING)")
        prompt.stop = stops
    if config.get("responseMimeType") == "application/json":
        schema = config.get("responseJsonSchema") or config.get("_responseJsonSchema") or config.get("responseSchema")
        prompt.json_schema = schema if isinstance(schema, dict) else {"type": "object"}
    thinking = config.get("thinkingConfig") or {}
    return GenerateRequest(prompt=prompt, include_thoughts=isinstance(thinking, dict)
                           and thinking.get("includeThoughts") is True)


def _part_text(part: dict[str, Any]) -> str:
    if isinstance(part.get("text"), str) and not part.get("thought"):
        return str(part["text"])
    for key in ("inlineData", "fileData"):
        data = part.get(key)
        if isinstance(data, dict) and str(data.get("mimeType", "")).startswith("image/"):
            return IMAGE_TEXT
    return ""


def function_response_text(response: Any) -> str:
    """What the tool 'said': a lone string value (e.g. {"result": "42"}), else the JSON."""
    if isinstance(response, dict):
        strings = [v for v in response.values() if isinstance(v, str)]
        if len(response) == 1 and strings:
            return strings[0]
        for key in ("result", "output", "content"):
            if isinstance(response.get(key), str):
                return str(response[key])
    return orjson.dumps(response).decode()


def _read_system(system: Any, prompt: Prompt) -> None:
    if system is None:
        return
    if not isinstance(system, dict) or not isinstance(system.get("parts"), list):
        raise GeminiError("* GenerateContentRequest.system_instruction.parts: contents.parts must not be empty.\n")
    prompt.texts.extend(t for t in (_part_text(p) for p in system["parts"] if isinstance(p, dict)) if t)


def _read_contents(contents: Any, prompt: Prompt) -> None:
    if not contents:
        raise _field("contents", "contents is not specified")
    if not isinstance(contents, list):
        raise GeminiError(
            "Invalid value at 'contents' (type.googleapis.com/google.ai.generativelanguage.v1beta.Content)"
        )
    calls_in_previous = 0
    for i, content in enumerate(contents):
        if not isinstance(content, dict):
            raise GeminiError(f"Invalid value at 'contents[{i}]'")
        role = content.get("role") or "user"  # a blank role means user in single-turn requests
        if role not in ("user", "model"):
            raise GeminiError("Please use a valid role: user, model.")
        parts = content.get("parts")
        if not parts or not isinstance(parts, list):
            raise _field(f"contents[{i}].parts", "contents.parts must not be empty.")
        for j, part in enumerate(parts):
            if not isinstance(part, dict) or not any(k in part for k in PART_DATA):
                raise _field(
                    f"contents[{i}].parts[{j}].data", "required oneof field 'data' must have one initialized field"
                )
        responses = [p["functionResponse"] for p in parts if isinstance(p.get("functionResponse"), dict)]
        if responses:
            if calls_in_previous == 0:
                raise GeminiError(
                    "Please ensure that function response turn comes immediately after a function call turn."
                )
            if len(responses) != calls_in_previous:
                raise GeminiError(
                    "Please ensure that the number of function response parts is equal to the number of "
                    "function call parts of the function call turn."
                )
        calls_in_previous = sum(1 for p in parts if isinstance(p.get("functionCall"), dict))
        texts = [t for t in (_part_text(p) for p in parts) if t]
        results = [function_response_text(r.get("response")) for r in responses]
        prompt.texts.extend(results)
        if texts:
            prompt.texts.append(" ".join(texts))
        if role == "model":
            prompt.last_role = "assistant"
        elif results and not texts:
            prompt.last_role, prompt.tool_results = "tool", results
        else:
            prompt.last_role, prompt.last_user_text, prompt.tool_results = "user", " ".join(texts), []


def _read_tools(body: dict[str, Any], prompt: Prompt) -> None:
    names: list[str] = []
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise GeminiError("Invalid value at 'tools' (type.googleapis.com/google.ai.generativelanguage.v1beta.Tool)")
    for i, tool in enumerate(tools):
        for j, decl in enumerate((tool or {}).get("functionDeclarations") or []):
            name = decl.get("name") if isinstance(decl, dict) else None
            at = f"tools[{i}].function_declarations[{j}].name"
            if not name:
                raise _field(at, "Name cannot be empty.")
            if not FUNCTION_NAME.match(str(name)):
                raise _field(
                    at,
                    "Invalid function name. Must start with a letter or an underscore. Must be a-z, "
                    "A-Z, 0-9, or contain underscores, dots, colons and dashes, with a maximum length of 128.",
                )
            names.append(str(name))
    config = ((body.get("toolConfig") or {}).get("functionCallingConfig")) or {}
    mode = config.get("mode", "AUTO")
    allowed = config.get("allowedFunctionNames") or []
    if mode not in ("AUTO", "ANY", "NONE", "VALIDATED", "MODE_UNSPECIFIED"):
        raise GeminiError(
            f"Invalid value at 'tool_config.function_calling_config.mode' "
            f'(type.googleapis.com/google.ai.generativelanguage.v1beta.FunctionCallingConfig.Mode), "{mode}"'
        )
    if allowed and mode != "ANY":
        raise _field(
            "tool_config.function_calling_config.allowed_function_names",
            "allowed_function_names can only be set when mode is ANY.",
        )
    choice: ToolChoice = "auto"
    if mode == "NONE":
        choice = "none"
    elif mode == "ANY":
        choice = ("function", allowed[0]) if allowed else "required"
    prompt.tools = names
    prompt.tool_choice = choice


# ---- rendering -----------------------------------------------------------------------------


def nonzero(d: dict[str, Any]) -> dict[str, Any]:
    """Proto3 JSON leaves out zero-valued scalars."""
    return {k: v for k, v in d.items() if v not in (0, None)}


@dataclass
class GenerateRender:
    model: str
    response_id: str
    reply: Reply
    cached_tokens: int = 0
    thoughts_tokens: int = 0
    include_thoughts: bool = False  # a thought summary part leads the answer

    @property
    def prompt_tokens(self) -> int:
        return self.reply.input_tokens + self.cached_tokens

    def usage(self, final: bool) -> dict[str, Any]:
        candidates = self.reply.output_tokens if final else 0
        thoughts = self.thoughts_tokens if final else 0
        usage = nonzero(
            {
                "promptTokenCount": self.prompt_tokens,
                "candidatesTokenCount": candidates,
                "totalTokenCount": self.prompt_tokens + candidates + thoughts,
                "cachedContentTokenCount": self.cached_tokens,
                "thoughtsTokenCount": thoughts,
            }
        )
        usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": self.prompt_tokens}]
        return usage

    @property
    def thought(self) -> list[dict[str, Any]]:
        return [{"text": THOUGHT_TEXT, "thought": True}] if self.include_thoughts else []

    def parts(self) -> list[dict[str, Any]]:
        call = self.reply.tool_call
        if call is not None:
            return [*self.thought, {"functionCall": {"name": call.name, "args": call.args}}]
        return [*self.thought, {"text": self.reply.text}]

    def _wrap(self, parts: list[dict[str, Any]] | None, final: bool) -> dict[str, Any]:
        candidate: dict[str, Any] = (
            {"content": {"parts": parts, "role": "model"}} if parts else {"content": {"role": "model"}}
        )
        if final:
            candidate["finishReason"] = FINISH[self.reply.finish]
            candidate["index"] = 0
        return {
            "candidates": [candidate],
            "usageMetadata": self.usage(final),
            "modelVersion": self.model,
            "responseId": self.response_id,
        }

    def response(self) -> dict[str, Any]:
        return self._wrap(self.parts(), True)

    def chunks(self) -> Iterator[dict[str, Any]]:
        if self.reply.tool_call is not None:
            yield self._wrap(self.parts(), True)  # Gemini sends a call whole, never as fragments
            return
        pieces = self.reply.pieces or [""]
        if self.thought:
            yield self._wrap(self.thought, False)
        for piece in pieces[:-1]:
            yield self._wrap([{"text": piece}], False)
        yield self._wrap([{"text": pieces[-1]}], True)
