"""Gemini callers (the official google-genai SDK) through a real `modelroute serve`, to every upstream kind.

The SDK speaks ``/v1beta/models/{model}:generateContent``, ``:streamGenerateContent?alt=sse``
and ``:countTokens``. Upstreams are the faithful fakes (see test_every_dialect: they answer
``echo: <last user text>``, call the first offered tool with ``{"echo": <text>}``, answer a
tool result with ``tool said: <result>``, and count tokens as words) and the built-in mock.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest
import yaml
from google import genai
from google.genai import errors, types

from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.azure import FakeAzureOpenAI
from tests.fakes.base import FakeUpstream
from tests.fakes.gemini import FakeGemini
from tests.fakes.openai import FakeOpenAI
from tests.gateway.harness import FAST, model_route, provider_key
from tests.gateway.procs import GatewayProcess, modelroute, scrape

KINDS = ["openai", "azure", "anthropic", "gemini", "openai-compatible"]
BACKEND = {"openai": "openai/gpt-4o", "azure": "azure/prod-4o", "anthropic": "anthropic/claude-sonnet-4-6",
           "gemini": "gemini/gemini-2.5-flash", "openai-compatible": "compat/deepseek-chat",
           "mock": "mock/mock-large"}
LOOKUP = types.Tool(function_declarations=[types.FunctionDeclaration(
    name="lookup", description="Look up a word",
    parameters=types.Schema(type=types.Type.OBJECT, properties={"echo": types.Schema(type=types.Type.STRING)},
                            required=["echo"]))])


@dataclass
class Reply:
    status_code: int
    headers: Any
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)


def post(url: str, body: Any, headers: dict[str, str] | None = None) -> Reply:
    """A plain HTTP POST (raw bytes or JSON), whatever the status."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data, {"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return Reply(r.status, r.headers, r.read())
    except urllib.error.HTTPError as e:
        return Reply(e.code, e.headers, e.read())


@dataclass
class World:
    gp: GatewayProcess
    up: dict[str, FakeUpstream]

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.gp.port}"

    sdk: genai.Client | None = None

    def client(self) -> genai.Client:
        # One client for the module (a Client closes its connections when collected). The
        # key is a placeholder: the gateway holds the real ones.
        if self.sdk is None:
            self.sdk = genai.Client(api_key="modelroute-placeholder",
                                    http_options=types.HttpOptions(base_url=self.root))
        return self.sdk


@pytest.fixture(scope="module")
def w(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with ExitStack() as stack:
        up: dict[str, Any] = {
            "openai": stack.enter_context(FakeOpenAI(keys=["sk-o"])),
            "azure": stack.enter_context(FakeAzureOpenAI(keys=["az-1"], deployments={"prod-4o": "gpt-4o"})),
            "anthropic": stack.enter_context(FakeAnthropic(keys=["sk-ant"])),
            "gemini": stack.enter_context(FakeGemini(keys=["g-key"])),
            "openai-compatible": stack.enter_context(FakeOpenAI(keys=["sk-c"], responses_api=False)),
        }
        docs = [
            *provider_key("openai", "openai", up["openai"].base_url, ["sk-o"]),
            *provider_key("azure", "azure-openai", up["azure"].url, ["az-1"], apiVersion="2024-10-21"),
            *provider_key("anthropic", "anthropic", up["anthropic"].base_url, ["sk-ant"]),
            *provider_key("gemini", "gemini", up["gemini"].base_url, ["g-key"]),
            *provider_key("compat", "openai-compatible", up["openai-compatible"].base_url, ["sk-c"]),
            *provider_key("mock", "mock", None, None),
            *[model_route(f"via-{k}", tuple(BACKEND[k].split("/")), **FAST)  # type: ignore[arg-type]
              for k in [*KINDS, "mock"]],
        ]
        path = tmp_path_factory.mktemp("gw-gemini") / "routes.yaml"
        path.write_text(yaml.safe_dump_all(docs))
        gp = stack.enter_context(modelroute(path.parent, "serve", "-f", str(path)))
        yield World(gp, up)


def metric(gp: GatewayProcess, name: str, **labels: str) -> float:
    total = 0.0
    for line in scrape(gp).splitlines():
        if line.startswith(name + "{"):
            got = dict(p.split("=", 1) for p in line[len(name) + 1:line.index("}")].split(","))
            if all(got.get(k) == f'"{v}"' for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


# ------------------------------------------------------------------------ generateContent


@pytest.mark.parametrize("kind", KINDS)
def test_generate_text(w: World, kind: str) -> None:
    before = metric(w.gp, "modelroute_tokens_total", route=f"via-{kind}", type="output")
    resp = w.client().models.generate_content(
        model=f"via-{kind}", contents="hello there",
        config=types.GenerateContentConfig(system_instruction="be brief", max_output_tokens=100))
    assert resp.text == "echo: hello there"
    cand = resp.candidates[0]  # type: ignore[index]
    assert cand.finish_reason == types.FinishReason.STOP
    usage = resp.usage_metadata
    assert usage is not None and (usage.prompt_token_count, usage.candidates_token_count) == (4, 3)
    assert usage.total_token_count == 7
    assert resp.sdk_http_response is not None
    assert resp.sdk_http_response.headers["x-modelroute-backend"] == BACKEND[kind]  # type: ignore[index]
    assert metric(w.gp, "modelroute_tokens_total", route=f"via-{kind}", type="output") == before + 3


@pytest.mark.parametrize("kind", KINDS)
def test_generate_stream(w: World, kind: str) -> None:
    chunks = list(w.client().models.generate_content_stream(model=f"via-{kind}", contents="one two three"))
    text = "".join(c.text or "" for c in chunks)
    assert text == "echo: one two three"
    assert len([c for c in chunks if c.text]) >= 3  # word by word, as the upstream streamed it
    last = chunks[-1]
    assert last.candidates[0].finish_reason == types.FinishReason.STOP  # type: ignore[index]
    assert last.usage_metadata is not None
    assert (last.usage_metadata.prompt_token_count, last.usage_metadata.candidates_token_count) == (3, 4)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_tools_round_trip(w: World, kind: str, stream: bool) -> None:
    client = w.client()
    config = types.GenerateContentConfig(
        tools=[LOOKUP], automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True))
    contents: list[Any] = [types.Content(role="user", parts=[types.Part(text="define gateway")])]
    if stream:
        chunks = list(client.models.generate_content_stream(model=f"via-{kind}", contents=contents, config=config))
        calls = [fc for c in chunks for fc in (c.function_calls or [])]
        model_parts = [p for c in chunks for p in (c.candidates[0].content.parts or [])]  # type: ignore[index,union-attr]
        usage = chunks[-1].usage_metadata
    else:
        first = client.models.generate_content(model=f"via-{kind}", contents=contents, config=config)
        calls = first.function_calls or []
        model_parts = first.candidates[0].content.parts or []  # type: ignore[index,union-attr]
        usage = first.usage_metadata
    [call] = calls
    assert (call.name, call.args) == ("lookup", {"echo": "define gateway"})
    assert usage is not None and usage.candidates_token_count == 5
    contents += [types.Content(role="model", parts=model_parts),
                 types.Content(role="user", parts=[types.Part.from_function_response(
                     name="lookup", response={"output": "a router"})])]
    second = client.models.generate_content(model=f"via-{kind}", contents=contents, config=config)
    assert second.text == "tool said: a router"
    assert second.candidates[0].finish_reason == types.FinishReason.STOP  # type: ignore[index]


def test_pass_through_to_gemini_keeps_the_request_as_sent(w: World) -> None:
    fake = w.up["gemini"]
    w.client().models.generate_content(
        model="via-gemini", contents="hello",
        config=types.GenerateContentConfig(top_k=7, safety_settings=[types.SafetySetting(
            category=types.HarmCategory.HARM_CATEGORY_HARASSMENT, threshold=types.HarmBlockThreshold.BLOCK_NONE)]))
    sent = fake.last_request
    assert sent.path == "/v1beta/models/gemini-2.5-flash:generateContent"
    body = sent.body
    assert body["generationConfig"]["topK"] == 7 and body["safetySettings"][0]["threshold"] == "BLOCK_NONE"
    # The caller's placeholder key is not forwarded: the gateway's own key is.
    assert sent.headers["x-goog-api-key"] == "g-key"


def test_mock_upstream(w: World) -> None:
    client = w.client()
    resp = client.models.generate_content(model="via-mock", contents="hello mock")
    assert resp.text and "hello mock" in resp.text
    text = "".join(c.text or "" for c in client.models.generate_content_stream(model="via-mock", contents="hi you"))
    assert "hi you" in text
    config = types.GenerateContentConfig(
        tools=[LOOKUP], automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True))
    called = client.models.generate_content(model="via-mock", contents="please lookup gateway", config=config)
    [call] = called.function_calls or []
    assert call.name == "lookup" and isinstance((call.args or {}).get("echo"), str)
    asked: Any = called.candidates[0].content  # type: ignore[index]
    answered = client.models.generate_content(model="via-mock", config=config, contents=[
        types.Content(role="user", parts=[types.Part(text="please lookup gateway")]), asked,
        types.Content(role="user", parts=[types.Part.from_function_response(
            name="lookup", response={"output": "a router"})])])
    assert answered.text and "a router" in answered.text


# -------------------------------------------------------------------------- countTokens


def test_count_tokens_asks_gemini(w: World) -> None:
    n = len(w.up["gemini"].requests)
    resp = w.client().models.count_tokens(model="via-gemini", contents="one two three four")
    assert resp.total_tokens == 4
    [asked] = w.up["gemini"].requests[n:]
    assert asked.path == "/v1beta/models/gemini-2.5-flash:countTokens"


@pytest.mark.parametrize("kind", ["openai", "anthropic", "mock"])
def test_count_tokens_estimates_elsewhere(w: World, kind: str) -> None:
    resp = w.client().models.count_tokens(model=f"via-{kind}", contents="x" * 400)
    assert resp.total_tokens is not None and 100 <= resp.total_tokens <= 130
    r = post(f"{w.root}/v1beta/models/via-{kind}:countTokens", {"contents": [{"parts": [{"text": "hi"}]}]})
    assert r.status_code == 200 and r.headers["x-modelroute-estimate"] == "true"


# ------------------------------------------------------------------- models and framing


def test_list_models(w: World) -> None:
    names = {m.name for m in w.client().models.list()}
    assert {f"models/via-{k}" for k in [*KINDS, "mock"]} <= names
    got = w.client().models.get(model="via-openai")
    assert got.name == "models/via-openai"


@pytest.mark.parametrize("kind", ["gemini", "openai", "anthropic"])
def test_json_array_stream(w: World, kind: str) -> None:
    """Without ``alt=sse``, Gemini streams one JSON array, passed through or translated."""
    r = post(f"{w.root}/v1beta/models/via-{kind}:streamGenerateContent",
             {"contents": [{"role": "user", "parts": [{"text": "one two three"}]}]}, {"x-goog-api-key": "placeholder"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    items = r.json()
    assert isinstance(items, list) and len(items) >= 3
    text = "".join(p.get("text", "") for i in items for c in i.get("candidates", [])
                   for p in c["content"].get("parts", []))
    assert text == "echo: one two three"
    assert items[-1]["candidates"][0]["finishReason"] == "STOP"
    assert items[-1]["usageMetadata"]["candidatesTokenCount"] == 4


# ------------------------------------------------------------------------------ refusals


def _post(w: World, path: str, body: Any) -> Reply:
    return post(w.root + path, body)


def _gemini_error(r: Reply, code: int, status: str) -> str:
    body = r.json()
    assert r.status_code == code, (r.status_code, body)
    err = body["error"]
    assert set(err) >= {"code", "message", "status"} and err["code"] == code and err["status"] == status, body
    return str(err["message"])


@pytest.mark.parametrize(("body", "says"), [
    (b"{not json", "not valid JSON"),
    (b"[]", "JSON object"),
    ({}, "contents"),
    ({"contents": []}, "contents is not specified"),
    ({"contents": [{"parts": [{"text": 5}]}]}, "contents.0.parts.0.text"),
    ({"contents": [{"parts": [{"text": "a"}]}], "generationConfig": {"maxOutputTokens": "9"}}, "maxOutputTokens"),
    ({"contents": [{"parts": [{"functionCall": {"args": {}}}]}]}, "functionCall.name"),
    (b'{"contents": [{"parts": [{"text": "a"}]}], "generationConfig": {"temperature": NaN}}', "finite"),
])
@pytest.mark.parametrize("method", ["generateContent", "streamGenerateContent?alt=sse", "countTokens"])
def test_bad_input_is_a_gemini_400(w: World, method: str, body: Any, says: str) -> None:
    if method == "countTokens" and body == {}:
        says = "contents is not specified"
    if method == "countTokens" and isinstance(body, dict) and set(body) - {"contents"}:
        body = {"generateContentRequest": body}  # countTokens takes the whole request there
    msg = _gemini_error(_post(w, f"/v1beta/models/via-openai:{method}", body), 400, "INVALID_ARGUMENT")
    assert says in msg


def test_unknown_model_and_method(w: World) -> None:
    _gemini_error(_post(w, "/v1beta/models/nowhere-9:generateContent", {"contents": [{"parts": [{"text": "a"}]}]}),
                  404, "NOT_FOUND")
    _gemini_error(_post(w, "/v1beta/models/via-openai:embedEverything", {}), 404, "NOT_FOUND")
    # The route's own path spelled with escapes is still the route.
    r = _post(w, "/v1beta/%6Dodels/via-openai%3AgenerateContent", {"contents": [{"parts": [{"text": "a"}]}]})
    assert r.status_code == 200 and r.json()["candidates"][0]["content"]["parts"] == [{"text": "echo: a"}]
    with pytest.raises(errors.ClientError) as e:
        w.client().models.generate_content(model="nowhere-9", contents="hi")
    assert e.value.code == 404 and e.value.status == "NOT_FOUND"


HOSTILE = ["x/../../v1beta/tunedModels", "x?key=EVIL", "x/..", "x%2F..%2Fy", "x/./y", "x y", "x\r\nHost: evil", "x%00y",
           "x\uff0e\uff0e\uff0fy", "x#frag", "y" * 3000]


@pytest.mark.parametrize("method", ["generateContent", "streamGenerateContent?alt=sse", "countTokens"])
def test_hostile_model_names_are_refused_before_anything_is_sent(w: World, method: str) -> None:
    before = {k: len(f.requests) for k, f in w.up.items()}
    body = {"contents": [{"parts": [{"text": "hi"}]}]}
    for name in HOSTILE:
        # As one path segment, every byte escaped: the gateway decodes it and must refuse it.
        r = _post(w, f"/v1beta/models/gemini-{quote(name, safe='')}:{method}", body)
        assert r.status_code == 400, (name, r.status_code, r.content)
        assert "model name" in _gemini_error(r, 400, "INVALID_ARGUMENT"), name
    assert {k: len(f.requests) for k, f in w.up.items()} == before
    assert "internal error" not in w.gp.logs()


def test_the_caller_key_never_reaches_logs_or_upstreams(w: World) -> None:
    secret = "AIzaSy-caller-secret-0123456789"
    r = post(f"{w.root}/v1beta/models/via-gemini:generateContent?key={secret}",
             {"contents": [{"parts": [{"text": "hi"}]}]})
    assert r.status_code == 200
    sent = w.up["gemini"].last_request
    assert secret not in sent.path and secret not in json.dumps(sent.headers) and secret not in json.dumps(sent.query)
    assert secret not in w.gp.logs()


@pytest.mark.parametrize("kind", ["openai", "anthropic", "gemini"])
def test_proto_field_names_as_in_googles_curl_examples(w: World, kind: str) -> None:
    """Gemini's JSON takes ``system_instruction`` as well as ``systemInstruction``."""
    r = post(f"{w.root}/v1beta/models/via-{kind}:generateContent", {
        "system_instruction": {"parts": [{"text": "be brief"}]},
        "contents": [{"role": "user", "parts": [{"text": "define gateway"}]}],
        "tools": [{"function_declarations": [{"name": "lookup", "parameters": {
            "type": "OBJECT", "properties": {"echo": {"type": "STRING"}}, "required": ["echo"]}}]}],
        "generation_config": {"max_output_tokens": 50}})
    assert r.status_code == 200, r.content
    [part] = r.json()["candidates"][0]["content"]["parts"]
    assert part["functionCall"]["name"] == "lookup" and part["functionCall"]["args"] == {"echo": "define gateway"}


@pytest.mark.parametrize("kind", KINDS)
def test_structured_output(w: World, kind: str) -> None:
    """``responseJsonSchema`` (gemini-cli's router asks this way) reaches every upstream as its
    own structured-output request, and the JSON comes back as the text."""
    schema = {"type": "object", "properties": {"reasoning": {"type": "string"}, "score": {"type": "integer"}},
              "required": ["reasoning", "score"]}
    config = types.GenerateContentConfig(response_mime_type="application/json", response_json_schema=schema)
    resp = w.client().models.generate_content(model=f"via-{kind}", contents="rate this", config=config)
    assert json.loads(resp.text or "") == {"reasoning": "rate this", "score": 0}
