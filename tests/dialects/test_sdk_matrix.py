"""The official Python SDKs as clients of `modelroute serve`: every caller dialect x every upstream
kind in the pair table (wire/pairs.py), streamed and not, each a full tool round trip.

openai (Chat Completions and Responses), anthropic (Messages) and google-genai (Gemini) call
the gateway; the upstreams are the faithful fakes of tests/fakes and the built-in mock. The
matrix is made from the pair table, so a new dialect or kind fails here until it has a client
and an upstream. The user's words name the tool ("lookup"), which is what makes the mock call
it; the fakes call the first offered tool with ``{"echo": <last user text>}``. A kind whose
models speak different formats (bedrock, vertex) is tried with one model of each.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import anthropic
import openai
import pytest
import yaml
from google import genai
from google.genai import types

from modelroute_sidecar.wire import pairs
from tests.dialects.test_cloud_kinds import (
    AKID,
    CLAUDE_PROFILE,
    NOVA,
    SECRET,
    VERTEX_CLAUDE,
    VERTEX_TOKEN,
    bedrock_key,
)
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.aws_wire import AwsCredential
from tests.fakes.azure import FakeAzureOpenAI
from tests.fakes.bedrock import FakeBedrock
from tests.fakes.gemini import FakeGemini
from tests.fakes.openai import FakeOpenAI
from tests.fakes.vertex import FakeVertex
from tests.gateway.harness import FAST, model_route, provider_key
from tests.gateway.procs import GatewayProcess, modelroute

ASK = "lookup gateway"
RESULT = "a router"
# kind -> its backends (ProviderKey, model): one, or one a format for kinds whose models differ
BACKENDS: dict[str, list[tuple[str, str]]] = {
    "openai": [("openai", "gpt-4o")], "openai-compatible": [("compat", "deepseek-chat")],
    "azure-openai": [("azure", "prod-4o")], "anthropic": [("anthropic", "claude-sonnet-4-6")],
    "gemini": [("gemini", "gemini-2.5-flash")], "mock": [("mock", "mock-large")],
    "bedrock": [("bedrock", NOVA), ("bedrock", CLAUDE_PROFILE)],
    "vertex": [("vertex", "gemini-2.5-flash"), ("vertex", VERTEX_CLAUDE)],
}
ROUTES = {f"via-{kind}-{model}": kind for kind, backends in BACKENDS.items() for _, model in backends}
SCHEMA = {"type": "object", "properties": {"echo": {"type": "string"}}, "required": ["echo"],
          "additionalProperties": False}


@dataclass
class World:
    gp: GatewayProcess

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.gp.port}"


@pytest.fixture(scope="module")
def w(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with ExitStack() as stack:
        openai_up = stack.enter_context(FakeOpenAI(keys=["sk-o"]))
        compat = stack.enter_context(FakeOpenAI(keys=["sk-c"], responses_api=False))
        azure = stack.enter_context(FakeAzureOpenAI(keys=["az-1"], deployments={"prod-4o": "gpt-4o"}))
        claude = stack.enter_context(FakeAnthropic(keys=["sk-ant"]))
        gemini = stack.enter_context(FakeGemini(keys=["g-key"]))
        bedrock = stack.enter_context(FakeBedrock({AKID: AwsCredential(SECRET)}, region="us-west-2"))
        vertex = stack.enter_context(FakeVertex([VERTEX_TOKEN], project="my-project", location="us-east5"))
        docs = [
            *provider_key("openai", "openai", openai_up.base_url, ["sk-o"]),
            *provider_key("compat", "openai-compatible", compat.base_url, ["sk-c"]),
            *provider_key("azure", "azure-openai", azure.url, ["az-1"], apiVersion="2024-10-21"),
            *provider_key("anthropic", "anthropic", claude.base_url, ["sk-ant"]),
            *provider_key("gemini", "gemini", gemini.base_url, ["g-key"]),
            *provider_key("mock", "mock", None, None),
            *bedrock_key("bedrock", bedrock.url, f"{AKID}:{SECRET}", region="us-west-2"),
            *provider_key("vertex", "vertex", vertex.url, [VERTEX_TOKEN], project="my-project", location="us-east5"),
            *[model_route(f"via-{kind}-{model}", (pk, model), **FAST)
              for kind, backends in BACKENDS.items() for pk, model in backends],
        ]
        path = tmp_path_factory.mktemp("gw-sdks") / "routes.yaml"
        path.write_text(yaml.safe_dump_all(docs))
        yield World(stack.enter_context(modelroute(path.parent, "serve", "-f", str(path))))


def test_the_matrix_covers_the_pair_table() -> None:
    assert set(BACKENDS) == set(pairs.KINDS)
    assert set(ROUND_TRIPS) == set(pairs.DIALECTS)


def _said_the_result(text: str | None) -> None:
    # The fakes answer "tool said: a router", the mock "[mock m] The tool returned: a router".
    assert text is not None and RESULT in text


# ----------------------------------------------------------------- one round trip per SDK


def answer(stream: bool, create: Callable[..., Any], streamed: Callable[..., Any], final: str, **kw: Any) -> Any:
    """The whole answer, asked for whole, or streamed through the SDK's own stream helper and
    reassembled by it (``final`` names the helper's method), as a client does."""
    if not stream:
        return create(**kw)
    with streamed(**kw) as s:
        for _ in s:
            pass
        return getattr(s, final)()


def chat(w: World, model: str, stream: bool) -> None:
    client = openai.OpenAI(base_url=w.root + "/v1", api_key="placeholder", max_retries=0)
    tool: Any = {"type": "function", "function": {"name": "lookup", "description": "Look up a word",
                                                  "parameters": SCHEMA, "strict": True}}
    msgs: list[Any] = [{"role": "user", "content": ASK}]

    def ask() -> Any:
        extra = {"stream_options": {"include_usage": True}} if stream else {}
        return answer(stream, client.chat.completions.create, client.chat.completions.stream, "get_final_completion",
                      model=model, messages=msgs, tools=[tool], **extra)

    first = ask()
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None  # streamed or not, as OpenAI answers a tool call
    [tc] = choice.message.tool_calls or []
    assert tc.function.name == "lookup" and json.loads(tc.function.arguments) == {"echo": ASK}
    assert first.usage is not None and first.usage.completion_tokens > 0
    call = {"id": tc.id, "type": "function", "function": {"name": "lookup", "arguments": tc.function.arguments}}
    msgs += [{"role": "assistant", "content": None, "tool_calls": [call]},
             {"role": "tool", "tool_call_id": tc.id, "content": RESULT}]
    second = ask()
    assert second.choices[0].finish_reason == "stop"
    _said_the_result(second.choices[0].message.content)


def responses(w: World, model: str, stream: bool) -> None:
    client = openai.OpenAI(base_url=w.root + "/v1", api_key="placeholder", max_retries=0)
    tool: Any = {"type": "function", "name": "lookup", "description": "Look up a word", "parameters": SCHEMA,
                 "strict": True}
    items: list[Any] = [{"role": "user", "content": [{"type": "input_text", "text": ASK}]}]

    def ask() -> Any:
        return answer(stream, client.responses.create, client.responses.stream, "get_final_response",
                      model=model, input=items, tools=[tool], store=False)

    first = ask()
    assert first.status == "completed"
    [call] = [o for o in first.output if o.type == "function_call"]
    assert call.name == "lookup" and json.loads(call.arguments) == {"echo": ASK}
    assert first.usage is not None and first.usage.output_tokens > 0
    items += [{"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
              {"type": "function_call_output", "call_id": call.call_id, "output": RESULT}]
    second = ask()
    _said_the_result(second.output_text)


def messages(w: World, model: str, stream: bool) -> None:
    client = anthropic.Anthropic(base_url=w.root, api_key="placeholder", max_retries=0)
    tool: Any = {"name": "lookup", "description": "Look up a word", "input_schema": SCHEMA}
    msgs: list[Any] = [{"role": "user", "content": ASK}]

    def ask() -> Any:
        return answer(stream, client.messages.create, client.messages.stream, "get_final_message",
                      model=model, max_tokens=200, messages=msgs, tools=[tool])

    first = ask()
    assert first.stop_reason == "tool_use"
    [call] = [b for b in first.content if b.type == "tool_use"]
    assert call.name == "lookup" and call.input == {"echo": ASK}
    assert first.usage.output_tokens > 0
    msgs += [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
             {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": RESULT}]}]
    second = ask()
    assert second.stop_reason == "end_turn"
    _said_the_result("".join(b.text for b in second.content if b.type == "text"))


def gemini(w: World, model: str, stream: bool) -> None:
    client = genai.Client(api_key="placeholder", http_options=types.HttpOptions(base_url=w.root))
    config = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[types.FunctionDeclaration(
            name="lookup", description="Look up a word", parameters_json_schema=SCHEMA)])],
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True))
    contents: list[Any] = [types.Content(role="user", parts=[types.Part(text=ASK)])]

    def ask() -> tuple[list[types.Part], list[types.FunctionCall], str, Any]:
        if not stream:
            resp = client.models.generate_content(model=model, contents=contents, config=config)
            chunks = [resp]
        else:
            chunks = list(client.models.generate_content_stream(model=model, contents=contents, config=config))
        parts = [p for c in chunks for cand in (c.candidates or [])[:1] for p in (cand.content and cand.content.parts)
                 or []]
        calls = [fc for c in chunks for fc in (c.function_calls or [])]
        text = "".join(p.text for p in parts if p.text and not p.thought)
        return parts, calls, text, chunks[-1]

    parts, calls, text, last = ask()
    [call] = calls
    assert call.name == "lookup" and call.args == {"echo": ASK}
    assert text == ""  # a function call and nothing else: no empty text part
    assert all(p.text is None for p in parts if not p.thought)
    assert last.usage_metadata is not None and (last.usage_metadata.candidates_token_count or 0) > 0
    contents += [types.Content(role="model", parts=parts),
                 types.Content(role="user", parts=[types.Part.from_function_response(
                     name="lookup", response={"output": RESULT})])]
    _, calls, text, last = ask()
    assert not calls
    assert last.candidates[0].finish_reason == types.FinishReason.STOP
    _said_the_result(text)


ROUND_TRIPS: dict[str, Callable[[World, str, bool], None]] = {
    "openai-chat": chat, "openai-responses": responses, "anthropic-messages": messages, "gemini": gemini}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize("dialect", list(pairs.DIALECTS))
def test_tool_round_trip(w: World, dialect: str, route: str, stream: bool) -> None:
    ROUND_TRIPS[dialect](w, route, stream)
