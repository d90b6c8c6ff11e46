"""Provider kinds bedrock and vertex from every caller dialect, through a real `modelroute serve`.

Callers are the official SDKs: openai (Chat Completions and Responses), anthropic
(Messages) and google-genai (generateContent). Upstreams are the faithful fakes:
``FakeBedrock`` verifies every SigV4 signature as AWS documents it and streams in the AWS
event stream framing with CRCs; ``FakeVertex`` checks the bearer token and serves
Google's and Anthropic's publisher models. Four backends:

* ``bedrock``: Amazon Nova through Converse/ConverseStream, whatever the caller;
* ``bedrock-claude``: a Claude inference profile: Anthropic callers pass through
  InvokeModel(WithResponseStream), the others go through Converse;
* ``vertex``: Gemini (Gemini callers pass through);
* ``vertex-claude``: Claude on Vertex (Anthropic callers pass through rawPredict).

The fakes' model answers ``echo: <last user text>``, calls the first offered tool with
``{"echo": <text>}``, answers a tool result with ``tool said: <result>``, and counts
tokens as words (5 output tokens for a call).
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
import yaml
from google import genai
from google.genai import types

from tests.fakes.aws_wire import AwsCredential, encode_message
from tests.fakes.base import wait_until_sync
from tests.fakes.bedrock import FakeBedrock
from tests.fakes.openai import FakeOpenAI
from tests.fakes.vertex import FakeVertex
from tests.gateway.harness import FAST, model_route, provider_key
from tests.gateway.procs import GatewayProcess, modelroute, scrape

AKID, SECRET = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
STS_AKID, STS_SECRET, STS_TOKEN = "ASIAQEXAMPLE2TEMPKEY", "tmpSecret/abc+def", "FwoGZXIvYXdzEXAMPLE/token+with=chars"
BEDROCK_API_KEY = "ABSKQmVkcm9ja0FQSUtleS1leGFtcGxl"
VERTEX_TOKEN = "ya29.a0AfB_vertex-test-token"
NOVA = "amazon.nova-pro-v1:0"
CLAUDE_PROFILE = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
PROFILE_ARN = f"arn:aws:bedrock:us-west-2:111122223333:inference-profile/{CLAUDE_PROFILE}"
VERTEX_CLAUDE = "claude-sonnet-4-5@20250929"
KINDS = ["bedrock", "bedrock-claude", "vertex", "vertex-claude"]
BACKEND = {"bedrock": f"bedrock/{NOVA}", "bedrock-claude": f"bedrock/{CLAUDE_PROFILE}",
           "vertex": "vertex/gemini-2.5-flash", "vertex-claude": f"vertex/{VERTEX_CLAUDE}"}
# Which upstream operation each (caller, kind) uses: the pass-throughs keep the caller's body.
PASS_THROUGH = {("messages", "bedrock-claude"): "invoke", ("messages", "vertex-claude"): "rawPredict",
                ("gemini", "vertex"): "generateContent"}
CHAT_TOOL = {"type": "function", "function": {"name": "lookup", "description": "Look up a word", "parameters": {
    "type": "object", "properties": {"echo": {"type": "string"}}, "required": ["echo"]}}}
MESSAGES_TOOL = {"name": "lookup", "description": "Look up a word",
                 "input_schema": CHAT_TOOL["function"]["parameters"]}  # type: ignore[index]
RESPONSES_TOOL = {"type": "function", "name": "lookup", "description": "Look up a word",
                  "parameters": CHAT_TOOL["function"]["parameters"], "strict": False}  # type: ignore[index]
LOOKUP = types.Tool(function_declarations=[types.FunctionDeclaration(
    name="lookup", description="Look up a word",
    parameters=types.Schema(type=types.Type.OBJECT, properties={"echo": types.Schema(type=types.Type.STRING)},
                            required=["echo"]))])


def secret_doc(name: str, value: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": {"apiKey": value}}


def bedrock_key(name: str, url: str, line: str, region: str = "us-east-1") -> list[dict[str, Any]]:
    return [secret_doc(f"{name}-key", line),
            {"apiVersion": "modelroute.dev/v1alpha1", "kind": "ProviderKey", "metadata": {"name": name},
             "spec": {"provider": "bedrock", "region": region, "baseURL": url, "secretRef": {"name": f"{name}-key"}}}]


@dataclass
class World:
    gp: GatewayProcess
    bedrock: FakeBedrock
    vertex: FakeVertex
    openai_up: FakeOpenAI
    sdk: genai.Client | None = None

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.gp.port}"

    def openai(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.gp.url, api_key="placeholder", max_retries=0)

    def anthropic(self) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=self.root, api_key="placeholder", max_retries=0)

    def genai(self) -> genai.Client:
        # One client for the module: a Client closes its connections when collected.
        if self.sdk is None:
            self.sdk = genai.Client(api_key="placeholder", http_options=types.HttpOptions(base_url=self.root))
        return self.sdk

    def metric(self, name: str, **labels: str) -> float:
        total = 0.0
        for line in scrape(self.gp).splitlines():
            if line.startswith(name + "{"):
                got = dict(p.split("=", 1) for p in line[len(name) + 1:line.index("}")].split(","))
                if all(got.get(k) == f'"{v}"' for k, v in labels.items()):
                    total += float(line.rsplit(" ", 1)[1])
        return total

    def upstream(self, kind: str) -> FakeBedrock | FakeVertex:
        return self.bedrock if kind.startswith("bedrock") else self.vertex


@contextmanager
def serve(tmp: Path, docs: list[dict[str, Any]]) -> Iterator[GatewayProcess]:
    path = tmp / "routes.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    with modelroute(tmp, "serve", "-f", str(path)) as gp:
        yield gp


@pytest.fixture(scope="module")
def w(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with ExitStack() as stack:
        bedrock = stack.enter_context(FakeBedrock(
            {AKID: AwsCredential(SECRET), STS_AKID: AwsCredential(STS_SECRET, STS_TOKEN)}, region="us-west-2",
            api_keys=[BEDROCK_API_KEY]))
        vertex = stack.enter_context(FakeVertex([VERTEX_TOKEN], project="my-project", location="us-east5"))
        oa = stack.enter_context(FakeOpenAI(keys=["sk-o"]))
        docs = [
            *bedrock_key("bedrock", bedrock.url, f"{AKID}:{SECRET}", region="us-west-2"),
            *bedrock_key("bedrock-sts", bedrock.url, f"{STS_AKID}:{STS_SECRET}:{STS_TOKEN}", region="us-west-2"),
            *bedrock_key("bedrock-apikey", bedrock.url, BEDROCK_API_KEY, region="us-west-2"),
            *bedrock_key("bedrock-wrong", bedrock.url, f"{AKID}:not-the-secret", region="us-west-2"),
            *bedrock_key("bedrock-region", bedrock.url, f"{AKID}:{SECRET}", region="eu-central-1"),
            *provider_key("vertex", "vertex", vertex.url, [VERTEX_TOKEN], project="my-project", location="us-east5"),
            *provider_key("vertex-expired", "vertex", vertex.url, ["ya29.expired"], project="my-project",
                          location="us-east5"),
            *provider_key("openai", "openai", oa.base_url, ["sk-o"]),
            *[model_route(f"via-{k}", tuple(BACKEND[k].split("/")), **FAST) for k in KINDS],  # type: ignore[arg-type]
            model_route("via-sts", ("bedrock-sts", NOVA), **FAST),
            model_route("via-arn", ("bedrock", PROFILE_ARN), **FAST),
            model_route("via-apikey", ("bedrock-apikey", CLAUDE_PROFILE), **FAST),
            model_route("bad-signature", ("bedrock-wrong", NOVA), **FAST),
            model_route("bad-region", ("bedrock-region", NOVA), **FAST),
            model_route("bad-token", ("vertex-expired", "gemini-2.5-flash"), **FAST),
            model_route("chain", ("bedrock", NOVA), ("vertex", VERTEX_CLAUDE), ("openai", "gpt-4o"), **FAST),
            model_route("chain-back", ("vertex", "gemini-2.5-flash"), ("bedrock", CLAUDE_PROFILE), **FAST),
        ]
        gp = stack.enter_context(serve(tmp_path_factory.mktemp("gw-cloud"), docs))
        yield World(gp, bedrock, vertex, oa)


@pytest.fixture(autouse=True)
def _clean(w: World) -> Iterator[None]:
    yield
    for up in (w.bedrock, w.vertex, w.openai_up):
        up.faults.clear()


def operation(w: World, kind: str) -> str:
    """The upstream operation of the last request to ``kind``'s fake."""
    path = w.upstream(kind).last_request.path
    return path.rsplit("/", 1)[-1].split(":", 1)[-1]


# ---------------------------------------------------------------- OpenAI Chat Completions


@pytest.mark.parametrize("kind", KINDS)
def test_chat_text_and_usage(w: World, kind: str) -> None:
    before = w.metric("modelroute_tokens_total", route=f"via-{kind}", type="output")
    raw = w.openai().chat.completions.with_raw_response.create(
        model=f"via-{kind}", messages=[{"role": "system", "content": "be brief"},
                                       {"role": "user", "content": "hello there"}])
    resp = raw.parse()
    assert raw.headers["x-modelroute-backend"] == BACKEND[kind]
    assert resp.choices[0].message.content == "echo: hello there"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None and (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (4, 3)
    assert operation(w, kind) in ("converse", "generateContent", "rawPredict")
    assert w.metric("modelroute_tokens_total", route=f"via-{kind}", type="output") == before + 3
    # The OpenTelemetry GenAI name of the provider.
    provider = "aws.bedrock" if kind.startswith("bedrock") else "gcp.vertex_ai"
    assert w.metric("gen_ai_client_token_usage_count", gen_ai_provider_name=provider) >= 2


@pytest.mark.parametrize("kind", KINDS)
def test_chat_stream(w: World, kind: str) -> None:
    chunks = list(w.openai().chat.completions.create(
        model=f"via-{kind}", messages=[{"role": "user", "content": "one two three"}], stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: one two three"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    assert operation(w, kind) in ("converse-stream", "streamGenerateContent", "streamRawPredict")


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_chat_tools_round_trip(w: World, kind: str, stream: bool) -> None:
    client = w.openai()
    msgs: list[Any] = [{"role": "user", "content": "define gateway"}]
    if stream:
        calls: dict[int, dict[str, str]] = {}
        finish = None
        tools: Any = [CHAT_TOOL]
        stream_: Any = client.chat.completions.create(model=f"via-{kind}", messages=msgs, tools=tools, stream=True)
        for c in stream_:
            for tc in (c.choices[0].delta.tool_calls or []) if c.choices else []:
                slot = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
                slot["id"] += tc.id or ""
                slot["name"] += (tc.function.name or "") if tc.function else ""
                slot["arguments"] += (tc.function.arguments or "") if tc.function else ""
            if c.choices and c.choices[0].finish_reason:
                finish = c.choices[0].finish_reason
        [call] = calls.values()
        call_id, name, arguments = call["id"], call["name"], call["arguments"]
    else:
        first = client.chat.completions.create(model=f"via-{kind}", messages=msgs, tools=[CHAT_TOOL])  # type: ignore[list-item]
        finish = first.choices[0].finish_reason
        [tc] = first.choices[0].message.tool_calls or []
        call_id, name, arguments = tc.id, tc.function.name, tc.function.arguments  # type: ignore[union-attr]
    assert finish == "tool_calls"
    assert (name, json.loads(arguments)) == ("lookup", {"echo": "define gateway"})
    msgs += [{"role": "assistant", "content": None, "tool_calls": [
        {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}]},
             {"role": "tool", "tool_call_id": call_id, "content": "a router"}]
    second = client.chat.completions.create(model=f"via-{kind}", messages=msgs, tools=[CHAT_TOOL])  # type: ignore[list-item]
    assert second.choices[0].message.content == "tool said: a router"


@pytest.mark.parametrize("kind", ["bedrock", "bedrock-claude"])
def test_chat_images_reach_bedrock_as_bytes(w: World, kind: str) -> None:
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 32).decode()
    image = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}}
    messages: Any = [{"role": "user", "content": [{"type": "text", "text": "what is"}, image]}]
    resp = w.openai().chat.completions.create(model=f"via-{kind}", messages=messages)
    assert resp.choices[0].message.content == "echo: what is [image]"
    [_, image] = w.bedrock.last_request.body["messages"][0]["content"]
    assert image == {"image": {"format": "png", "source": {"bytes": png}}}
    # Converse fetches no link: a 400 in the caller's dialect, and the upstream is never asked.
    n = len(w.bedrock.requests)
    with pytest.raises(openai.BadRequestError, match="base64 data URLs"):
        w.openai().chat.completions.create(model=f"via-{kind}", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}])
    assert len(w.bedrock.requests) == n


# ----------------------------------------------------------------------- OpenAI Responses


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_responses_text(w: World, kind: str, stream: bool) -> None:
    client = w.openai()
    if stream:
        events = list(client.responses.create(model=f"via-{kind}", input="hello there", stream=True))
        done = [e for e in events if e.type == "response.completed"]
        assert len(done) == 1
        resp = done[0].response
    else:
        resp = client.responses.create(model=f"via-{kind}", input="hello there")
    assert resp.output_text == "echo: hello there"
    assert resp.usage is not None and resp.usage.output_tokens == 3


@pytest.mark.parametrize("kind", KINDS)
def test_responses_tools_round_trip(w: World, kind: str) -> None:
    client = w.openai()
    first = client.responses.create(model=f"via-{kind}", input="define gateway", tools=[RESPONSES_TOOL])  # type: ignore[list-item]
    [call] = [o for o in first.output if o.type == "function_call"]
    assert (call.name, json.loads(call.arguments)) == ("lookup", {"echo": "define gateway"})
    second = client.responses.create(model=f"via-{kind}", tools=[RESPONSES_TOOL], input=[  # type: ignore[list-item]
        {"role": "user", "content": "define gateway"},
        {"type": "function_call", "call_id": call.call_id, "name": "lookup", "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "a router"}])
    assert second.output_text == "tool said: a router"


# ---------------------------------------------------------------------- Anthropic Messages


@pytest.mark.parametrize("kind", KINDS)
def test_messages_text(w: World, kind: str) -> None:
    raw = w.anthropic().messages.with_raw_response.create(
        model=f"via-{kind}", max_tokens=100, system="be brief", messages=[{"role": "user", "content": "hello there"}])
    msg = raw.parse()
    assert raw.headers["x-modelroute-backend"] == BACKEND[kind]
    assert [b.type for b in msg.content] == ["text"] and msg.content[0].text == "echo: hello there"  # type: ignore[union-attr]
    assert msg.stop_reason == "end_turn"
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (4, 3)
    want = PASS_THROUGH.get(("messages", kind))
    assert operation(w, kind) == (want or ("converse" if kind.startswith("bedrock") else "generateContent"))


@pytest.mark.parametrize("kind", KINDS)
def test_messages_stream(w: World, kind: str) -> None:
    with w.anthropic().messages.stream(model=f"via-{kind}", max_tokens=100,
                                       messages=[{"role": "user", "content": "one two three"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == "echo: one two three"
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (3, 4)
    assert w.metric("modelroute_time_to_first_token_seconds_count", route=f"via-{kind}") >= 1


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_messages_tools_round_trip(w: World, kind: str, stream: bool) -> None:
    client: Any = w.anthropic()
    msgs: list[dict[str, Any]] = [{"role": "user", "content": "define gateway"}]
    kwargs: dict[str, Any] = {"model": f"via-{kind}", "max_tokens": 200, "tools": [MESSAGES_TOOL]}
    if stream:
        with client.messages.stream(messages=msgs, **kwargs) as s:
            first = s.get_final_message()
    else:
        first = client.messages.create(messages=msgs, **kwargs)
    assert first.stop_reason == "tool_use"
    [call] = [b for b in first.content if b.type == "tool_use"]
    assert (call.name, call.input) == ("lookup", {"echo": "define gateway"})
    msgs += [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
             {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "a router"}]}]
    second = client.messages.create(messages=msgs, **kwargs)
    assert second.content[0].text == "tool said: a router"


def test_messages_to_claude_on_bedrock_keep_thinking_cache_control_and_betas(w: World) -> None:
    """InvokeModel gets the caller's Messages body: thinking, cache_control, and the
    anthropic-beta header as Bedrock's anthropic_beta list."""
    client = w.anthropic()
    with client.messages.stream(
            model="via-bedrock-claude", max_tokens=3000, thinking={"type": "enabled", "budget_tokens": 1024},
            system=[{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
            messages=[{"role": "user", "content": "hello there"}],
            extra_headers={"anthropic-beta": "context-1m-2025-08-07,interleaved-thinking-2025-05-14"}) as s:
        final = s.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].signature  # type: ignore[union-attr]
    sent = w.bedrock.last_request
    assert sent.path == f"/model/{CLAUDE_PROFILE}/invoke-with-response-stream"
    assert sent.body["anthropic_version"] == "bedrock-2023-05-31" and "model" not in sent.body
    assert sent.body["anthropic_beta"] == ["context-1m-2025-08-07", "interleaved-thinking-2025-05-14"]
    assert sent.body["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert sent.body["system"][0]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    assert sent.headers["accept"] == "application/vnd.amazon.eventstream"


def test_messages_to_claude_on_vertex_pass_through(w: World) -> None:
    client = w.anthropic()
    client.messages.create(model="via-vertex-claude", max_tokens=50, messages=[{"role": "user", "content": "hi"}],
                           extra_headers={"anthropic-beta": "context-1m-2025-08-07"})
    sent = w.vertex.last_request
    assert sent.path == ("/v1/projects/my-project/locations/us-east5/publishers/anthropic/models/"
                         f"{VERTEX_CLAUDE}:rawPredict")
    assert sent.body["anthropic_version"] == "vertex-2023-10-16" and "model" not in sent.body
    assert sent.headers["anthropic-beta"] == "context-1m-2025-08-07"
    assert sent.headers["authorization"] == f"Bearer {VERTEX_TOKEN}"


def test_messages_errors_from_bedrock_in_anthropic_shape(w: World) -> None:
    # Bedrock's {"message"} error, about the caller's own request, reaches it as an Anthropic error.
    with pytest.raises(anthropic.BadRequestError) as e:
        w.anthropic().messages.create(model="via-bedrock-claude", max_tokens=10, extra_body={"temperature": 1.5},
                                      messages=[{"role": "user", "content": "hi"}])
    body: Any = e.value.body
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "temperature" in body["error"]["message"]


# ------------------------------------------------------------------------- Gemini callers


@pytest.mark.parametrize("kind", KINDS)
def test_gemini_generate(w: World, kind: str) -> None:
    resp = w.genai().models.generate_content(
        model=f"via-{kind}", contents="hello there",
        config=types.GenerateContentConfig(system_instruction="be brief", max_output_tokens=100))
    assert resp.text == "echo: hello there"
    assert resp.usage_metadata is not None
    assert (resp.usage_metadata.prompt_token_count, resp.usage_metadata.candidates_token_count) == (4, 3)
    want = PASS_THROUGH.get(("gemini", kind))
    if want:
        assert operation(w, kind) == want


@pytest.mark.parametrize("kind", KINDS)
def test_gemini_stream_and_tools(w: World, kind: str) -> None:
    client = w.genai()
    chunks = list(client.models.generate_content_stream(model=f"via-{kind}", contents="one two three"))
    assert "".join(c.text or "" for c in chunks) == "echo: one two three"
    config = types.GenerateContentConfig(
        tools=[LOOKUP], automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True))
    contents: list[Any] = [types.Content(role="user", parts=[types.Part(text="define gateway")])]
    streamed = list(client.models.generate_content_stream(model=f"via-{kind}", contents=contents, config=config))
    [call] = [fc for c in streamed for fc in (c.function_calls or [])]
    assert (call.name, call.args) == ("lookup", {"echo": "define gateway"})
    parts = [p for c in streamed for p in (c.candidates[0].content.parts or [])]  # type: ignore[index,union-attr]
    contents += [types.Content(role="model", parts=parts), types.Content(role="user", parts=[
        types.Part.from_function_response(name="lookup", response={"output": "a router"})])]
    second = client.models.generate_content(model=f"via-{kind}", contents=contents, config=config)
    assert second.text == "tool said: a router"


# ---------------------------------------------------------------------------- token counts


@pytest.mark.parametrize("kind, counted", [("bedrock-claude", True), ("vertex-claude", True), ("vertex", True),
                                           ("bedrock", False)])
def test_count_tokens_asks_the_cloud_where_it_counts(w: World, kind: str, counted: bool) -> None:
    up = w.upstream(kind)
    n = len(up.requests)
    raw = w.anthropic().messages.with_raw_response.count_tokens(
        model=f"via-{kind}", system="be brief", messages=[{"role": "user", "content": "one two three"}])
    assert ("x-modelroute-estimate" in raw.headers) != counted
    if counted:
        assert raw.parse().input_tokens == 5 and raw.headers["x-modelroute-backend"] == BACKEND[kind]
    if counted:
        [asked] = up.requests[n:]
        assert asked.path.endswith(("/count-tokens", "count-tokens:rawPredict", ":countTokens"))
        if kind == "bedrock-claude":  # the foundation model: CountTokens takes no inference profile
            assert asked.path == "/model/anthropic.claude-sonnet-4-5-20250929-v1:0/count-tokens"


def test_gemini_count_tokens_asks_vertex(w: World) -> None:
    n = len(w.vertex.requests)
    assert w.genai().models.count_tokens(model="via-vertex", contents="one two three four").total_tokens == 4
    [asked] = w.vertex.requests[n:]
    assert asked.path.endswith("/publishers/google/models/gemini-2.5-flash:countTokens")


# ------------------------------------------------------------------ signatures and tokens


def test_every_bedrock_request_was_signed_and_verified(w: World) -> None:
    n, verified = len(w.bedrock.requests), w.bedrock.verified
    w.openai().chat.completions.create(model="via-bedrock", messages=[{"role": "user", "content": "hi"}])
    assert (len(w.bedrock.requests), w.bedrock.verified) == (n + 1, verified + 1)
    sent = w.bedrock.last_request
    auth = sent.headers["authorization"]
    assert auth.startswith(f"AWS4-HMAC-SHA256 Credential={AKID}/") and "/us-west-2/bedrock/aws4_request" in auth
    assert "x-amz-security-token" not in sent.headers
    # The model id reaches Bedrock as one path segment with its ':' (what the signature covers).
    assert w.bedrock.last_request.path == f"/model/{NOVA}/converse"


def test_an_inference_profile_arn_is_one_signed_path_segment(w: World) -> None:
    """An ARN holds '/' and ':': the '/' goes as %2F (one segment), and the signature covers
    the path exactly as sent, which the fake recomputes from the raw request line."""
    refused = len(w.bedrock.refused)
    resp = w.openai().chat.completions.create(model="via-arn", messages=[{"role": "user", "content": "hi"}])
    assert resp.choices[0].message.content == "echo: hi"
    msg = w.anthropic().messages.create(model="via-arn", max_tokens=20, messages=[{"role": "user", "content": "hi"}])
    assert msg.content[0].text == "echo: hi"  # type: ignore[union-attr]
    assert w.bedrock.last_request.path == f"/model/{PROFILE_ARN}/invoke"  # a Claude profile: InvokeModel
    assert len(w.bedrock.refused) == refused
    assert "%2F" in w.bedrock.last_request_raw_path


def test_temporary_credentials_send_their_session_token(w: World) -> None:
    resp = w.openai().chat.completions.create(model="via-sts", messages=[{"role": "user", "content": "hi"}])
    assert resp.choices[0].message.content == "echo: hi"
    sent = w.bedrock.last_request
    assert sent.headers["x-amz-security-token"] == STS_TOKEN
    assert "x-amz-security-token" in sent.headers["authorization"].split("SignedHeaders=")[1].split(",")[0]


def test_bedrock_api_key_is_a_bearer_token(w: World) -> None:
    msg = w.anthropic().messages.create(model="via-apikey", max_tokens=20, messages=[{"role": "user", "content": "hi"}])
    assert msg.content[0].text == "echo: hi"  # type: ignore[union-attr]
    assert w.bedrock.last_request.headers["authorization"] == f"Bearer {BEDROCK_API_KEY}"


@pytest.mark.parametrize("route, refusal", [("bad-signature", "InvalidSignatureException"),
                                            ("bad-region", "InvalidSignatureException")])
def test_a_refused_signature_is_an_auth_failure_never_leaking_the_secret(w: World, route: str, refusal: str) -> None:
    refused = len(w.bedrock.refused)
    with pytest.raises(openai.APIStatusError) as e:
        w.openai().chat.completions.create(model=route, messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 502
    assert "refused the gateway's credentials" in str(e.value.body)
    assert w.bedrock.refused[refused:][:1] == [refusal]
    assert "not-the-secret" not in w.gp.logs() and SECRET not in w.gp.logs()


def test_an_expired_vertex_token_is_an_auth_failure(w: World) -> None:
    with pytest.raises(openai.APIStatusError) as e:
        w.openai().chat.completions.create(model="bad-token", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 502 and "refused the gateway's credentials" in str(e.value.body)
    assert "ya29.expired" not in w.gp.logs()


# --------------------------------------------------------------------- streams that break


@pytest.mark.parametrize("kind", ["bedrock", "bedrock-claude"])
def test_a_bedrock_stream_exception_ends_the_callers_stream_with_an_error(w: World, kind: str) -> None:
    w.bedrock.faults.slow_stream(0.02)  # events in separate reads: the first ones reach the caller
    w.bedrock.faults.error_mid_stream(after_chunks=3, message="model stream broke")
    text = ""
    with pytest.raises(anthropic.APIStatusError) as e, w.anthropic().messages.stream(
            model=f"via-{kind}", max_tokens=50, messages=[{"role": "user", "content": "one two three four"}]) as s:
        for t in s.text_stream:
            text += t
    # Mid-stream (after output reached the caller): the upstream's message, in an error event.
    assert "model stream broke" in str(e.value) and "All backends" not in str(e.value)
    assert w.metric("modelroute_requests_total", route=f"via-{kind}", status="stream_error") >= 1


def test_a_corrupted_event_stream_frame_is_never_passed_on(w: World) -> None:
    bad = bytearray(encode_message({":event-type": "contentBlockDelta", ":message-type": "event"},
                                   b'{"contentBlockIndex":0,"delta":{"text":"INJECTED"}}'))
    bad[-1] ^= 0xFF  # the message CRC no longer matches
    w.bedrock.faults.slow_stream(0.02)
    w.bedrock.faults.garbage_mid_stream(after_chunks=2, raw=bytes(bad))
    chunks = []
    with pytest.raises(openai.APIError):
        for c in w.openai().chat.completions.create(model="via-bedrock", stream=True,
                                                   messages=[{"role": "user", "content": "one two three"}]):
            chunks.append(c)
    assert "INJECTED" not in "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


# ------------------------------------------------------------------- failover, usage, cost


@pytest.mark.parametrize("stream", [False, True])
def test_failover_from_bedrock_to_vertex_to_openai(w: World, stream: bool) -> None:
    w.bedrock.faults.fail_next(1, 503)
    w.vertex.faults.fail_next(1, 429)
    before = w.metric("modelroute_failovers_total", route="chain")
    raw = w.openai().chat.completions.with_raw_response.create(
        model="chain", messages=[{"role": "user", "content": "hello there"}], stream=stream)
    assert raw.headers["x-modelroute-backend"] == "openai/gpt-4o" and raw.headers["x-modelroute-attempts"] == "3"
    w.bedrock.faults.fail_next(1, 500)
    raw = w.openai().chat.completions.with_raw_response.create(
        model="chain", messages=[{"role": "user", "content": "hello there"}], stream=stream)
    assert raw.headers["x-modelroute-backend"] == f"vertex/{VERTEX_CLAUDE}"
    assert w.metric("modelroute_failovers_total", route="chain") == before + 3


def test_failover_from_vertex_to_bedrock_claude_for_an_anthropic_caller(w: World) -> None:
    w.vertex.faults.fail_next(1, 503)
    raw = w.anthropic().messages.with_raw_response.create(
        model="chain-back", max_tokens=50, messages=[{"role": "user", "content": "hello there"}])
    assert raw.headers["x-modelroute-backend"] == f"bedrock/{CLAUDE_PROFILE}"
    assert raw.parse().content[0].text == "echo: hello there"  # type: ignore[union-attr]
    assert operation(w, "bedrock") == "invoke"


@pytest.mark.parametrize("kind, price", [("bedrock-claude", (3.0, 15.0)), ("vertex-claude", (3.0, 15.0)),
                                         ("vertex", (0.30, 2.50)), ("bedrock", (0.80, 3.20))])
def test_cost_from_the_model_ids_of_the_clouds(w: World, kind: str, price: tuple[float, float]) -> None:
    before = w.metric("modelroute_cost_usd_total", route=f"via-{kind}")
    w.openai().chat.completions.create(model=f"via-{kind}", messages=[{"role": "user", "content": "one two three"}])
    cost = w.metric("modelroute_cost_usd_total", route=f"via-{kind}") - before
    assert cost == pytest.approx((3 * price[0] + 4 * price[1]) / 1e6)


def test_bedrock_cache_tokens_count_as_input_and_price_apart(w: World) -> None:
    w.bedrock.cache_read_tokens, w.bedrock.cache_write_tokens = 100, 10
    try:
        resp = w.openai().chat.completions.create(model="via-bedrock-claude",
                                                  messages=[{"role": "user", "content": "one two three"}])
    finally:
        w.bedrock.cache_read_tokens = w.bedrock.cache_write_tokens = 0
    u = resp.usage
    assert u is not None and u.prompt_tokens == 113 and u.prompt_tokens_details is not None
    assert u.prompt_tokens_details.cached_tokens == 100


def test_the_fake_refuses_unsigned_requests(w: World) -> None:
    """The fake is strict: a request without a signature is AWS's 403, not an answer."""
    req = urllib.request.Request(f"{w.bedrock.url}/model/{NOVA}/converse", json.dumps(
        {"messages": [{"role": "user", "content": [{"text": "hi"}]}]}).encode(), {"content-type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 403 and e.value.headers["x-amzn-ErrorType"].startswith("MissingAuthenticationToken")
    wait_until_sync(lambda: w.bedrock.refused[-1:] == ["MissingAuthenticationTokenException"])


# ------------------------------------------------------------------------------- footprint

_IMPORTS = """
import sys
from modelroute_sidecar.compile import compile_resources
from modelroute_sidecar.metrics import Metrics
from modelroute_sidecar.router import Runtime, State
result = compile_resources({docs!r})
Runtime(result.config, result.keys, State(), Metrics())
print(sorted({{m.split(".")[0] for m in sys.modules if m.startswith("botocore")}}))
"""


@pytest.mark.parametrize("kinds, loaded", [(["vertex", "openai"], False), (["bedrock", "openai"], True)])
def test_botocore_is_loaded_only_for_a_bedrock_key(kinds: list[str], loaded: bool) -> None:
    """botocore (about 20 MB resident) is imported with the first bedrock ProviderKey, not before."""
    import subprocess
    import sys

    docs: list[dict[str, Any]] = []
    for kind in kinds:
        if kind == "bedrock":
            docs += bedrock_key("b", "http://127.0.0.1:1", f"{AKID}:{SECRET}")
        elif kind == "vertex":
            docs += provider_key("v", "vertex", None, [VERTEX_TOKEN], project="my-project")
        else:
            docs += provider_key("o", "openai", None, ["sk-o"])
    out = subprocess.run([sys.executable, "-c", _IMPORTS.format(docs=docs)], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert out.strip() == ("['botocore']" if loaded else "[]")


@pytest.mark.parametrize("kind", ["bedrock", "vertex"])
def test_operations_the_kinds_do_not_serve_are_a_clear_400(w: World, kind: str) -> None:
    n = len(w.upstream(kind).requests)
    with pytest.raises(openai.BadRequestError):
        w.openai().embeddings.create(model=f"via-{kind}", input="hi")
    with pytest.raises(openai.BadRequestError):
        w.openai().images.generate(model=f"via-{kind}", prompt="a cat")
    assert len(w.upstream(kind).requests) == n  # refused before anything was sent
