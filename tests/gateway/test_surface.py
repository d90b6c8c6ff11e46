"""The rest of the OpenAI surface (issue 14 item 3) through a real `modelroute serve`: images,
audio speech and transcriptions, moderations, legacy completions, files and batches with the
official `openai` SDK as the client; rerank (no official SDK) over raw HTTP. Upstreams are the
OpenAI, Azure OpenAI and OpenAI-compatible fakes (tests/fakes/openai_surface.py), and the mock.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import urllib.error
import urllib.request
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from modelroute_sidecar.config import ProviderKeyConfig, from_data
from modelroute_sidecar.surface.upstream import account_url, model_url
from tests.controlplane.cluster import wait_for
from tests.fakes.azure import FakeAzureOpenAI
from tests.fakes.openai import FakeOpenAI
from tests.fakes.openai_surface import speech_bytes
from tests.gateway.harness import model_route, provider_key
from tests.gateway.procs import GatewayProcess, modelroute, scrape
from tests.gateway.rawhttp import LAST_CHUNK, chunk, exchange, head, read_response

OAI_KEY = "sk-surface-primary-5f1e9a7c3b"
OAI2_KEY = "sk-surface-second-8d2c4e6a0f"
WRONG_KEY = "sk-surface-revoked-2b4d6f8a0c"
AZ_KEY = "azure-surface-key-3b5d7f9a1c"
COMPAT_KEY = "compat-surface-key-6e8a0c2e4g"
ALICE = "mrk-alice-surface-1a2b3c"
BOB = "mrk-bob-surface-4d5e6f"
FAST_RETRIES = {"maxAttempts": 2, "backoffBaseSeconds": 0.01, "backoffMaxSeconds": 0.02}
LIMIT = 32 * 1024 * 1024  # the gateway's default maxBodyBytes
DEPLOYMENTS = {"dep-image": "gpt-image-1", "dep-instruct": "gpt-35-turbo-instruct", "dep-stt": "gpt-4o-transcribe"}


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, Any]]:
    ups: dict[str, Any] = {"oai": FakeOpenAI([OAI_KEY]), "oai2": FakeOpenAI([OAI2_KEY]),
                           "azure": FakeAzureOpenAI([AZ_KEY], deployments=DEPLOYMENTS),
                           "compat": FakeOpenAI([COMPAT_KEY], rerank_api=True)}
    for up in ups.values():
        up.start_in_thread()
    try:
        yield ups
    finally:
        for up in ups.values():
            up.stop()


def docs(f: dict[str, Any]) -> list[dict[str, Any]]:
    both = ("openai-2", "openai")
    return [
        *provider_key("openai", "openai", f["oai"].base_url, [OAI_KEY]),
        *provider_key("openai-2", "openai", f["oai2"].base_url, [OAI2_KEY]),
        *provider_key("openai-rot", "openai", f["oai"].base_url, [WRONG_KEY, OAI_KEY]),
        *provider_key("azure", "azure-openai", f["azure"].base_url, [AZ_KEY], apiVersion="2024-10-21"),
        *provider_key("compat", "openai-compatible", f["compat"].base_url, [COMPAT_KEY]),
        *provider_key("claude", "anthropic", "http://127.0.0.1:9", ["sk-ant-unused-1234"]),
        {"apiVersion": "modelroute.dev/v1alpha1", "kind": "ProviderKey", "metadata": {"name": "mock"},
         "spec": {"provider": "mock"}},
        model_route("img", ("openai", "gpt-image-1")),
        model_route("dalle", ("openai", "dall-e-3")),
        model_route("tts", ("openai", "gpt-4o-mini-tts")),
        model_route("stt", ("openai", "gpt-4o-transcribe")),
        model_route("whisper", ("openai", "whisper-1")),
        model_route("mod", ("openai", "omni-moderation-latest")),
        model_route("instruct", ("openai", "gpt-3.5-turbo-instruct")),
        model_route("batchy", ("openai", "gpt-4o-mini")),
        model_route("rot-batch", ("openai-rot", "gpt-4o-mini")),
        model_route("rerank", ("compat", "jina-reranker-v2-base-multilingual")),
        model_route("az-img", ("azure", "dep-image")),
        model_route("az-instruct", ("azure", "dep-instruct")),
        model_route("az-stt", ("azure", "dep-stt")),
        model_route("claude", ("claude", "claude-sonnet-4-5")),
        model_route("mixed", ("claude", "claude-sonnet-4-5"), ("openai", "gpt-image-1")),
        *[model_route(f"fo-{n}", *[(pk, m) for pk in both], retries=FAST_RETRIES)
          for n, m in (("img", "gpt-image-1"), ("stt", "gpt-4o-transcribe"), ("instruct", "gpt-3.5-turbo-instruct"),
                       ("tts", "gpt-4o-mini-tts"))],
        model_route("private", ("openai", "gpt-image-1"), allowedServiceAccounts=["alice"]),
        model_route("demo", ("mock", "mock-1")),
    ]


@pytest.fixture(scope="module")
def gw(fakes: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("surface")
    (tmp / "routes.yaml").write_text(yaml.safe_dump_all(docs(fakes)))
    (tmp / "callers.yaml").write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Secret",
                                                      "metadata": {"name": "callers"},
                                                      "stringData": {"alice": ALICE, "bob": BOB}}))
    with modelroute(tmp, "serve", "-f", str(tmp / "routes.yaml"), "--caller-keys", str(tmp / "callers.yaml"),
                    env={"OPENAI_API_KEY": "", "ANTHROPIC_API_KEY": ""}) as proc:
        yield proc


@pytest.fixture(autouse=True)
def clean(fakes: dict[str, Any]) -> None:
    for up in fakes.values():
        up.reset()


_CLIENTS: dict[tuple[int, str, str | None], openai.OpenAI] = {}


@pytest.fixture(scope="module", autouse=True)
def close_clients() -> Iterator[None]:
    yield
    for c in _CLIENTS.values():
        c.close()
    _CLIENTS.clear()


def client(gw: GatewayProcess, key: str = ALICE, route: str | None = None) -> openai.OpenAI:
    """One SDK client per gateway, caller and route (closed after the module)."""
    c = _CLIENTS.get((gw.port, key, route))
    if c is None:
        headers = {"x-modelroute-route": route} if route else None
        c = _CLIENTS[(gw.port, key, route)] = openai.OpenAI(base_url=gw.url, api_key=key, max_retries=0,
                                                            default_headers=headers)
    return c


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wav_file(path: Path, seconds: float = 0.5) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        frames = bytearray()
        for i in range(int(16000 * seconds)):
            frames += int(8000 * math.sin(2 * math.pi * 440 * i / 16000)).to_bytes(2, "little", signed=True)
        w.writeframes(bytes(frames))
    return path


def post(gw: GatewayProcess, path: str, body: Any, key: str = ALICE) -> tuple[int, dict[str, str], Any]:
    req = urllib.request.Request(f"http://127.0.0.1:{gw.port}{path}", data=json.dumps(body).encode(), method="POST",
                                 headers={"content-type": "application/json", "authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read())


# ---- upstream URLs (pure) ----------------------------------------------------------------

@pytest.mark.parametrize(("provider", "version", "path", "model", "url"), [
    ("openai", None, "images/generations", "gpt-image-1", "https://up/v1/images/generations"),
    ("openai-compatible", None, "rerank", "bge", "https://up/v1/rerank"),
    ("azure-openai", None, "audio/speech", "tts dep", "https://up/openai/deployments/tts%20dep/audio/speech"
                                                       "?api-version=2024-10-21"),
    ("azure-openai", "2025-04-01-preview", "completions", "d", "https://up/openai/deployments/d/completions"
                                                            "?api-version=2025-04-01-preview"),
    ("azure-openai", "v1", "audio/transcriptions", "d", "https://up/openai/v1/audio/transcriptions"),
])
def test_model_urls(provider: str, version: str | None, path: str, model: str, url: str) -> None:
    base = "https://up/v1" if provider != "azure-openai" else "https://up"
    pk = from_data({"name": "p", "provider": provider, "baseURL": base, "apiVersion": version}, ProviderKeyConfig)
    assert model_url(pk, path, model) == url


def test_account_urls() -> None:
    def pk(provider: str, version: str | None = None) -> ProviderKeyConfig:
        return from_data({"name": "p", "provider": provider, "apiVersion": version,
                          "baseURL": "https://up" + ("/v1" if provider == "openai" else "")}, ProviderKeyConfig)
    assert account_url(pk("openai"), "files", {"purpose": "batch"}) == "https://up/v1/files?purpose=batch"
    assert account_url(pk("azure-openai"), "batches/b1/cancel") == \
        "https://up/openai/batches/b1/cancel?api-version=2024-10-21"
    assert account_url(pk("azure-openai", "v1"), "files", {"limit": "2"}) == "https://up/openai/v1/files?limit=2"


# ---- per-model operations against OpenAI --------------------------------------------------

def test_images_generate_passes_through_with_usage_and_cost(gw: GatewayProcess, fakes: dict[str, Any]) -> None:
    before = scrape(gw)
    raw = client(gw).images.with_raw_response.generate(model="img", prompt="a red fox in snow", n=2)
    images = raw.parse()
    assert raw.headers["x-modelroute-backend"] == "openai/gpt-image-1"
    assert [d.b64_json for d in images.data or []] == [hashlib.sha256(b"a red fox in snow").hexdigest()] * 2
    assert images.usage is not None and images.usage.output_tokens == 1056
    sent = fakes["oai"].requests_to("/images/generations")[-1]
    assert sent.body["model"] == "gpt-image-1" and sent.headers["authorization"] == f"Bearer {OAI_KEY}"
    after = scrape(gw)
    labels = {"route": "img", "provider": "openai", "model": "gpt-image-1"}
    assert metric(after, "modelroute_requests_total", status="200", **labels) - \
        metric(before, "modelroute_requests_total", status="200", **labels) == 1
    assert metric(after, "modelroute_tokens_total", type="output", **labels) - \
        metric(before, "modelroute_tokens_total", type="output", **labels) == 1056
    cost = metric(after, "modelroute_cost_usd_total", **labels) - metric(before, "modelroute_cost_usd_total", **labels)
    assert cost == pytest.approx((5 * 5.0 + 1056 * 40.0) / 1e6)  # five words in, 1056 image tokens out


def test_images_url_format_of_dall_e(gw: GatewayProcess) -> None:
    images = client(gw).images.generate(model="dalle", prompt="a lighthouse", response_format="url")
    assert (images.data or [])[0].url == f"https://images.example/{hashlib.sha256(b'a lighthouse').hexdigest()}.png"


@pytest.mark.parametrize(("fmt", "ctype"), [("mp3", "audio/mpeg"), ("wav", "audio/wav")])
def test_speech_streams_audio_bytes_with_their_content_type(gw: GatewayProcess, fmt: str, ctype: str) -> None:
    text = f"Hello from the gateway as {fmt}."
    with client(gw).audio.speech.with_streaming_response.create(
            model="tts", voice="alloy", input=text, response_format=fmt) as resp:  # type: ignore[arg-type]
        assert resp.headers["content-type"] == ctype
        assert resp.headers.get("content-length") is None  # streamed through, not buffered
        got = b"".join(resp.iter_bytes(4096))
    assert got == speech_bytes(text)


def test_transcription_of_a_real_file(gw: GatewayProcess, fakes: dict[str, Any], tmp_path: Path) -> None:
    audio = wav_file(tmp_path / "hello.wav")
    before = scrape(gw)
    with audio.open("rb") as f:
        result = client(gw).audio.transcriptions.create(model="stt", file=f, language="en")
    data = audio.read_bytes()
    assert result.text == f"hello.wav {len(data)} {hashlib.sha256(data).hexdigest()}"
    assert result.usage is not None and result.usage.type == "tokens"
    sent = fakes["oai"].requests_to("/audio/transcriptions")[-1]
    assert b'name="model"\r\n\r\ngpt-4o-transcribe\r\n' in sent.raw and b'name="language"\r\n\r\nen\r\n' in sent.raw
    assert sent.headers["content-length"] == str(len(sent.raw))
    labels = {"route": "stt", "provider": "openai", "model": "gpt-4o-transcribe"}
    assert metric(scrape(gw), "modelroute_tokens_total", type="input", **labels) - \
        metric(before, "modelroute_tokens_total", type="input", **labels) == 40


def test_streamed_transcription_is_passed_through_and_metered(gw: GatewayProcess, tmp_path: Path) -> None:
    data = wav_file(tmp_path / "s.wav", 0.2).read_bytes()
    labels = {"route": "stt", "provider": "openai", "model": "gpt-4o-transcribe"}
    before = metric(scrape(gw), "modelroute_tokens_total", type="input", **labels)
    events = list(client(gw).audio.transcriptions.create(model="stt", file=("s.wav", data), stream=True))
    expected = f"s.wav {len(data)} {hashlib.sha256(data).hexdigest()}"
    assert "".join(e.delta for e in events if e.type == "transcript.text.delta") == expected
    done = events[-1]
    assert done.type == "transcript.text.done" and done.text == expected and done.usage is not None
    assert metric(scrape(gw), "modelroute_tokens_total", type="input", **labels) - before == 40


def test_transcription_as_text_and_translation(gw: GatewayProcess, tmp_path: Path) -> None:
    audio = wav_file(tmp_path / "short.wav", 0.1)
    data = audio.read_bytes()
    text = client(gw).audio.transcriptions.create(model="whisper", file=("short.wav", data), response_format="text")
    assert str(text).strip() == f"short.wav {len(data)} {hashlib.sha256(data).hexdigest()}"
    with pytest.deprecated_call():  # the SDK marks translations deprecated; the API still serves them
        translated = client(gw).audio.translations.create(model="whisper", file=("short.wav", data))
    assert translated.text.startswith("short.wav ")


def test_moderations(gw: GatewayProcess, fakes: dict[str, Any]) -> None:
    result = client(gw).moderations.create(model="mod", input=["a kind word", "an attack plan"])
    assert [r.flagged for r in result.results] == [False, True]
    assert result.results[1].categories.violence is True
    assert fakes["oai"].requests_to("/moderations")[-1].body["model"] == "omni-moderation-latest"


def test_completions_whole_and_streamed_are_metered(gw: GatewayProcess, fakes: dict[str, Any]) -> None:
    c = client(gw)
    labels = {"route": "instruct", "provider": "openai", "model": "gpt-3.5-turbo-instruct"}
    before = metric(scrape(gw), "modelroute_tokens_total", type="output", **labels)
    whole = c.completions.create(model="instruct", prompt="one two three", max_tokens=8)
    assert whole.choices[0].text == "Echo: one two three" and whole.usage is not None
    chunks = list(c.completions.create(model="instruct", prompt="four five", stream=True))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == "Echo: four five"
    assert all(ch.usage is None for ch in chunks)  # not asked for: the gateway's own usage chunk is dropped
    sent = fakes["oai"].requests_to("/completions")[-1].body
    assert sent["stream_options"] == {"include_usage": True} and sent["model"] == "gpt-3.5-turbo-instruct"
    asked = list(c.completions.create(model="instruct", prompt="six", stream=True,
                                      stream_options={"include_usage": True}))
    assert asked[-1].usage is not None and asked[-1].usage.completion_tokens == 2
    assert metric(scrape(gw), "modelroute_tokens_total", type="output", **labels) - before == 4 + 3 + 2


def test_rerank_in_the_jina_cohere_shape(gw: GatewayProcess, fakes: dict[str, Any]) -> None:
    docs = ["the cat sat", "dogs bark loudly", "a cat and a dog"]
    status, headers, body = post(gw, "/v1/rerank", {"model": "rerank", "query": "cat dog", "documents": docs,
                                                    "top_n": 2, "return_documents": True})
    assert status == 200 and headers["x-modelroute-backend"] == "compat/jina-reranker-v2-base-multilingual"
    assert [r["index"] for r in body["results"]] == [2, 0]
    assert body["results"][0]["document"] == {"text": "a cat and a dog"}
    sent = fakes["compat"].requests_to("/rerank")[-1]
    assert sent.body["model"] == "jina-reranker-v2-base-multilingual"
    assert sent.headers["authorization"] == f"Bearer {COMPAT_KEY}"


# ---- Azure OpenAI: the deployment URL form ------------------------------------------------

def test_azure_deployment_urls(gw: GatewayProcess, fakes: dict[str, Any], tmp_path: Path) -> None:
    c = client(gw)
    assert (c.images.generate(model="az-img", prompt="x").data or [])[0].b64_json
    assert c.completions.create(model="az-instruct", prompt="hi there").choices[0].text == "Echo: hi there"
    audio = wav_file(tmp_path / "az.wav", 0.1)
    assert c.audio.transcriptions.create(model="az-stt", file=("az.wav", audio.read_bytes())).text.startswith("az.wav ")
    seen = {(r.path, r.query.get("api-version"), r.headers.get("api-key")) for r in fakes["azure"].requests}
    for op in ("dep-image/images/generations", "dep-instruct/completions", "dep-stt/audio/transcriptions"):
        assert (f"/openai/deployments/{op}", "2024-10-21", AZ_KEY) in seen


def test_azure_files_and_batches(gw: GatewayProcess, fakes: dict[str, Any]) -> None:
    c = client(gw, route="az-instruct")
    line = {"custom_id": "1", "method": "POST", "url": "/v1/completions", "body": {"model": "az-instruct",
                                                                                   "prompt": "hi"}}
    f = c.files.create(file=("in.jsonl", json.dumps(line).encode() + b"\n"), purpose="batch")
    batch = c.batches.create(input_file_id=f.id, endpoint="/v1/completions", completion_window="24h")
    assert c.batches.retrieve(batch.id).status == "validating"
    paths = {(r.method, r.path, r.query.get("api-version")) for r in fakes["azure"].requests}
    assert ("POST", "/openai/files", "2024-10-21") in paths and ("POST", "/openai/batches", "2024-10-21") in paths
    stored = fakes["azure"].files[f.id][1]
    assert json.loads(stored)["body"]["model"] == "dep-instruct"  # the route's name became the deployment


# ---- a route whose backends cannot ------------------------------------------------------

@pytest.mark.parametrize(("call", "route", "kinds"), [
    ("images", "claude", "anthropic"), ("moderations", "az-instruct", "azure-openai"), ("rerank", "img", "openai")])
def test_a_backend_without_the_operation_is_a_clear_400(gw: GatewayProcess, call: str, route: str,
                                                        kinds: str) -> None:
    if call == "rerank":
        status, _, body = post(gw, "/v1/rerank", {"model": route, "query": "q", "documents": ["d"]})
        err = body["error"]
    else:
        c = client(gw)
        with pytest.raises(openai.BadRequestError) as e:
            if call == "images":
                c.images.generate(model=route, prompt="x")
            else:
                c.moderations.create(model=route, input="x")
        status, err = e.value.status_code, e.value.body
    assert status == 400
    assert isinstance(err, dict) and err["code"] == "unsupported_operation" and err["type"] == "invalid_request_error"
    assert f"Route '{route}'" in err["message"] and f"kind {kinds}" in err["message"]


def test_a_route_mixing_kinds_uses_the_backends_that_can(gw: GatewayProcess, fakes: dict[str, Any]) -> None:
    raw = client(gw).images.with_raw_response.generate(model="mixed", prompt="x")
    assert raw.headers["x-modelroute-backend"] == "openai/gpt-image-1" and raw.headers["x-modelroute-attempts"] == "1"


# ---- failover -----------------------------------------------------------------------------

def test_images_fail_over(gw: GatewayProcess, fakes: dict[str, Any]) -> None:
    fakes["oai2"].faults.fail_next(1, 503)
    raw = client(gw).images.with_raw_response.generate(model="fo-img", prompt="y")
    assert raw.headers["x-modelroute-backend"] == "openai/gpt-image-1" and raw.headers["x-modelroute-attempts"] == "2"


def test_transcription_fails_over_with_the_whole_upload(gw: GatewayProcess, fakes: dict[str, Any],
                                                         tmp_path: Path) -> None:
    audio = wav_file(tmp_path / "fo.wav", 1.0)
    data = audio.read_bytes()
    fakes["oai2"].faults.fail_next(1, 500)
    raw = client(gw).audio.transcriptions.with_raw_response.create(model="fo-stt", file=("fo.wav", data))
    assert raw.headers["x-modelroute-attempts"] == "2"
    assert raw.parse().text == f"fo.wav {len(data)} {hashlib.sha256(data).hexdigest()}"
    first, second = fakes["oai2"].requests_to("/audio/transcriptions")[0], fakes["oai"].requests_to(
        "/audio/transcriptions")[0]
    assert len(first.raw) == len(second.raw)  # the same form, each with its own boundary


def test_speech_and_streamed_completions_fail_over(gw: GatewayProcess, fakes: dict[str, Any]) -> None:
    fakes["oai2"].faults.fail_next(2, 502)
    with client(gw).audio.speech.with_streaming_response.create(model="fo-tts", voice="alloy", input="hi") as r:
        assert r.headers["x-modelroute-attempts"] == "2" and r.read() == speech_bytes("hi")
    chunks = list(client(gw).completions.create(model="fo-instruct", prompt="again", stream=True))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == "Echo: again"


def test_audio_cut_off_upstream_is_cut_off_for_the_caller(gw: GatewayProcess, fakes: dict[str, Any]) -> None:
    """After its first bytes a binary answer cannot fail over, and has no error event: the
    caller's body ends without its final chunk, so no client takes it for a whole file."""
    fakes["oai"].faults.die_mid_stream(2)
    labels = {"route": "tts", "provider": "openai", "model": "gpt-4o-mini-tts"}
    broken = metric(scrape(gw), "modelroute_requests_total", status="stream_error", **labels)
    with client(gw).audio.speech.with_streaming_response.create(model="tts", voice="alloy", input="cut") as r:
        assert r.status_code == 200
        with pytest.raises(Exception) as e:  # httpx's RemoteProtocolError: incomplete chunked read
            r.read()
    assert "incomplete" in str(e.value).lower() or "peer closed" in str(e.value).lower(), e.value
    assert fakes["oai"].streams_died == 1
    assert metric(scrape(gw), "modelroute_requests_total", status="stream_error", **labels) == broken + 1
    fakes["oai"].faults.clear()
    with client(gw).audio.speech.with_streaming_response.create(model="tts", voice="alloy", input="ok") as r:
        assert r.read() == speech_bytes("ok")  # and the next call is whole


# ---- files and batches --------------------------------------------------------------------

def test_files_and_batches_with_the_sdk(gw: GatewayProcess, fakes: dict[str, Any], tmp_path: Path) -> None:
    c = client(gw, route="batchy")
    lines = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "batchy", "messages": [{"role": "user", "content": f"q{i}"}]}} for i in range(3)]
    path = tmp_path / "batch.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    with path.open("rb") as fh:
        f = c.files.create(file=fh, purpose="batch")
    assert f.object == "file" and f.filename == "batch.jsonl" and f.purpose == "batch"
    stored = fakes["oai"].files[f.id][1]
    assert [json.loads(x)["body"]["model"] for x in stored.splitlines()] == ["gpt-4o-mini"] * 3
    assert c.files.retrieve(f.id).bytes == len(stored)
    assert f.id in [x.id for x in c.files.list(purpose="batch")]
    assert c.files.content(f.id).content == stored
    batch = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                             metadata={"team": "a"})
    assert batch.status == "validating" and batch.metadata == {"team": "a"}
    assert c.batches.retrieve(batch.id).id == batch.id
    assert batch.id in [b.id for b in c.batches.list(limit=10)]
    assert c.batches.cancel(batch.id).status == "cancelling"
    other = c.files.create(file=("x.txt", b"hello"), purpose="user_data")
    deleted = c.files.delete(other.id)
    assert deleted.deleted and deleted.id == other.id
    with pytest.raises(openai.NotFoundError):
        c.files.retrieve(other.id)


def test_files_need_a_route(gw: GatewayProcess) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client(gw).files.list()
    assert isinstance(e.value.body, dict) and e.value.body["code"] == "missing_route"
    assert "x-modelroute-route" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client(gw, route="../admin").files.list()
    assert isinstance(e.value.body, dict) and e.value.body["param"] == "x-modelroute-route"
    assert e.value.body["code"] == "invalid_model_name"
    with pytest.raises(openai.NotFoundError):
        client(gw, route="no-such-route").batches.list()


def test_creating_is_tried_once_reading_again(gw: GatewayProcess, fakes: dict[str, Any]) -> None:
    c = client(gw, route="batchy")
    fakes["oai"].faults.fail_next(1, 500)
    with pytest.raises(openai.InternalServerError):
        c.files.create(file=("a.jsonl", b"{}\n"), purpose="batch")
    assert len([r for r in fakes["oai"].requests if r.path.endswith("/files")]) == 1  # never repeated
    f = c.files.create(file=("a.jsonl", b"{}\n"), purpose="batch")
    fakes["oai"].faults.fail_next(1, 503)
    again = c.files.with_raw_response.retrieve(f.id)  # a read is repeated once
    assert again.parse().id == f.id and again.headers["x-modelroute-attempts"] == "2"
    assert again.headers["x-modelroute-backend"] == "openai/gpt-4o-mini"
    fakes["oai"].faults.drop_next(1)
    assert c.files.retrieve(f.id).id == f.id  # after a dropped connection too
    fakes["oai"].faults.drop_next(10)  # more than the gateway's two tries (and aiohttp's own reconnects)
    with pytest.raises(openai.APIStatusError) as e:
        c.files.retrieve(f.id)
    fakes["oai"].faults.clear()
    assert e.value.status_code == 502 and isinstance(e.value.body, dict)
    assert e.value.body["code"] == "upstream_unavailable"


def test_a_refused_key_moves_a_create_to_the_next_key(gw: GatewayProcess, fakes: dict[str, Any]) -> None:
    """A 401 says nothing was created: the create goes again with the ProviderKey's next key."""
    c = client(gw, route="rot-batch")
    made = [c.files.create(file=(f"{i}.jsonl", b"{}\n"), purpose="batch") for i in range(2)]
    assert all(f.id in fakes["oai"].files for f in made)
    posts = [r for r in fakes["oai"].requests if r.method == "POST" and r.path.endswith("/files")]
    refused = [r for r in posts if r.headers["authorization"] == f"Bearer {WRONG_KEY}"]
    assert len(refused) == 1 and len(posts) == 3  # the revoked key once, then it rests


# ---- access, keys, logs ------------------------------------------------------------------

def test_allowed_service_accounts_hold(gw: GatewayProcess) -> None:
    assert client(gw, ALICE).images.generate(model="private", prompt="x").data
    with pytest.raises(openai.PermissionDeniedError):
        client(gw, BOB).images.generate(model="private", prompt="x")
    with pytest.raises(openai.PermissionDeniedError):
        client(gw, BOB, route="private").files.list()
    with pytest.raises(openai.AuthenticationError):
        client(gw, "mrk-nobody").moderations.create(model="mod", input="x")


def test_upstream_errors_never_carry_a_key(gw: GatewayProcess, fakes: dict[str, Any], tmp_path: Path) -> None:
    quoted = f"Invalid request: your key {OAI_KEY} cannot do that"
    fakes["oai"].faults.fail_next(1, 400, message=quoted)
    with pytest.raises(openai.BadRequestError) as e:
        client(gw).images.generate(model="img", prompt="x")
    fakes["oai"].faults.fail_next(1, 400, message=quoted)
    with pytest.raises(openai.BadRequestError) as e2:
        client(gw).audio.transcriptions.create(model="stt", file=("k.wav", wav_file(tmp_path / "k.wav").read_bytes()))
    fakes["oai"].faults.fail_next(1, 400, message=quoted)
    with pytest.raises(openai.BadRequestError) as e3:
        client(gw, route="batchy").files.list()
    for err in (e, e2, e3):
        assert OAI_KEY not in str(err.value.body) and OAI_KEY[:12] not in str(err.value.body)
    assert OAI_KEY[:12] not in gw.logs()


def test_access_log_lines(gw: GatewayProcess) -> None:
    client(gw).moderations.create(model="mod", input="log me")
    client(gw, route="batchy").files.list()
    wait_for(lambda: '"operation":"files.list"' in gw.logs(), timeout=10, what="the files access-log line")
    lines = [json.loads(x) for x in gw.logs().splitlines() if x.startswith("{")]
    mod = [x for x in lines if x.get("dialect") == "openai-moderation" and x.get("route") == "mod"]
    assert mod and mod[-1]["status"] == 200 and mod[-1]["caller"] == "alice"
    files = [x for x in lines if x.get("operation") == "files.list"]
    assert files[-1]["route"] == "batchy" and files[-1]["backend"] == "openai/gpt-4o-mini"


# ---- hostile multipart --------------------------------------------------------------------

FORM_HEAD = {"Authorization": f"Bearer {ALICE}"}


def form(boundary: str, *, model: str | None = "stt", file: bytes | None = b"RIFFdata") -> bytes:
    out = b""
    if model is not None:
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n{model}\r\n'.encode()
    if file is not None:
        out += (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
                f"Content-Type: audio/wav\r\n\r\n").encode() + file + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def multipart_request(body: bytes, boundary: str = "B0UNDARY", length: int | None = None) -> bytes:
    hs = {**FORM_HEAD, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    return head("POST", "/v1/audio/transcriptions", hs, length=len(body) if length is None else length) + body


async def test_hostile_multipart_is_4xx_and_breaks_nothing(gw: GatewayProcess, fakes: dict[str, Any]) -> None:
    port = gw.port
    cases: list[tuple[bytes, int, str | None]] = [
        (multipart_request(form("B0UNDARY"), boundary="OTHER"), 400, "invalid_multipart"),  # wrong boundary
        (multipart_request(form("B0UNDARY", model=None)), 400, None),  # missing model
        (multipart_request(form("B0UNDARY", file=None)), 400, None),  # missing file
        (multipart_request(b"--B0UNDARY\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nstt\r\n"),
         400, "invalid_multipart"),  # ends before its closing boundary
        (multipart_request(form("B0UNDARY", model="../../etc")), 400, "invalid_model_name"),
        (head("POST", "/v1/audio/transcriptions", FORM_HEAD, length=2) + b"{}", 400, "invalid_content_type"),
        (multipart_request(b"", length=LIMIT + 1), 413, "request_too_large"),  # announced too big
    ]
    for data, status, code in cases:
        r = await exchange(port, data)
        assert r.status == status, (data[:300], r.body)
        err = r.json()
        assert isinstance(err, dict) and set(err["error"]) == {"message", "type", "param", "code"}
        if code is not None:
            assert err["error"]["code"] == code
    # Chunked, no length, over the limit: refused once the limit is passed, not after reading it all.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    hs = {**FORM_HEAD, "Content-Type": "multipart/form-data; boundary=B0UNDARY"}
    writer.write(head("POST", "/v1/audio/transcriptions", hs, chunked=True))
    writer.write(chunk(b'--B0UNDARY\r\nContent-Disposition: form-data; name="file"; filename="big"\r\n\r\n'))
    sent = 0
    piece = chunk(b"\0" * (1 << 20))
    try:
        while sent < LIMIT + (4 << 20):
            writer.write(piece)
            await writer.drain()
            sent += 1 << 20
        writer.write(LAST_CHUNK)
        await writer.drain()
    except ConnectionError:
        pass
    r = await asyncio.wait_for(read_response(reader), 30)
    writer.close()
    assert r.status == 413
    # A body cut short by the caller closing its side: the connection ends, with no 500 and
    # nothing sent upstream.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = form("B0UNDARY")
    writer.write(multipart_request(body[: len(body) // 2], length=len(body)))
    await writer.drain()
    writer.write_eof()
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(read_response(reader), 30)
    writer.close()
    assert "internal_error" not in gw.logs()
    # Then a real request still works, and the fakes never saw any of the above.
    assert not fakes["oai"].requests_to("/audio/transcriptions")
    ok = await exchange(port, multipart_request(form("B0UNDARY")))
    assert ok.status == 200 and ok.json()["text"].startswith("a.wav 8 ")  # type: ignore[index]


# ---- the mock answers every endpoint ----------------------------------------------------

def test_the_mock_answers_the_whole_surface(gw: GatewayProcess, tmp_path: Path) -> None:
    c = client(gw, route="demo")
    assert (c.images.generate(model="demo", prompt="x").data or [])[0].b64_json
    with c.audio.speech.with_streaming_response.create(model="demo", voice="alloy", input="hi") as r:
        assert r.headers["content-type"] == "audio/wav" and r.read()[:4] == b"RIFF"
    assert "m.wav" in c.audio.transcriptions.create(model="demo", file=("m.wav", b"RIFF")).text
    assert c.moderations.create(model="demo", input="x").results[0].flagged is False
    assert c.completions.create(model="demo", prompt="hello").choices[0].text.endswith("hello")
    status, _, body = post(gw, "/v1/rerank", {"model": "demo", "query": "red cat", "documents": ["blue", "red cat"]})
    assert status == 200 and body["results"][0]["index"] == 1
    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "demo", "messages": [{"role": "user", "content": "ping"}]}}
    f = c.files.create(file=("in.jsonl", json.dumps(line).encode()), purpose="batch")
    batch = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    done = c.batches.retrieve(batch.id)
    assert done.status == "completed" and done.output_file_id
    out = json.loads(c.files.content(done.output_file_id).content)
    assert out["custom_id"] == "a" and out["response"]["status_code"] == 200


# ---- every field of every JSON endpoint, hostile --------------------------------------------

HOSTILE: list[Any] = [None, True, 0, -1, 1.5, 2**63, 1e308, "", "x", "5", [], {}, [None], [[[]]], {"type": None},
                      "\u0000", "é" * 1000, [1, "a", None, {}], "RAW:NaN", "RAW:1e999", f"RAW:{2**64}",
                      'RAW:"\\ud800"', "RAW:" + "[" * 300 + "]" * 300]
TEMPLATES: dict[str, dict[str, Any]] = {
    "/v1/images/generations": {"model": "img", "prompt": "a fox", "n": 1, "size": "1024x1024"},
    "/v1/audio/speech": {"model": "tts", "input": "hi", "voice": "alloy", "response_format": "mp3"},
    "/v1/moderations": {"model": "mod", "input": ["a", "b"]},
    "/v1/completions": {"model": "instruct", "prompt": "hi", "max_tokens": 5, "stream": True,
                        "stream_options": {"include_usage": True}},
    "/v1/rerank": {"model": "rerank", "query": "q", "documents": ["a", {"text": "b"}], "top_n": 1},
    "/v1/batches": {"input_file_id": "file-x", "endpoint": "/v1/chat/completions", "completion_window": "24h",
                    "metadata": {"a": "b"}},
}


def hostile_bodies() -> Iterator[tuple[str, str, bytes]]:
    """(path, what, body): each field of each template dropped, or set to each hostile value,
    for the route to a fake and for the mock."""
    for path, template in TEMPLATES.items():
        for target in ("fake", "mock"):
            base = dict(template)
            if target == "mock" and "model" in base:
                base["model"] = "demo"
            for field in base:
                dropped = {k: v for k, v in base.items() if k != field}
                yield path, f"{target}: drop {field}", json.dumps(dropped).encode()
                for value in HOSTILE:
                    if isinstance(value, str) and value.startswith("RAW:"):
                        body = json.dumps({**base, field: "__SPLICE__"}).encode().replace(
                            b'"__SPLICE__"', value[4:].encode())
                    else:
                        body = json.dumps({**base, field: value}).encode()
                    yield path, f"{target}: {field}={str(value)[:20]!r}", body


async def test_hostile_json_bodies_are_4xx_never_5xx(gw: GatewayProcess) -> None:
    import aiohttp

    failures: list[str] = []
    statuses: dict[int, int] = {}
    cases = list(hostile_bodies())
    async with aiohttp.ClientSession() as session:
        sem = asyncio.Semaphore(8)

        async def one(path: str, what: str, body: bytes) -> None:
            route = "demo" if what.startswith("mock") else "batchy"
            headers = {"content-type": "application/json", "authorization": f"Bearer {ALICE}",
                       "x-modelroute-route": route}
            async with sem, session.post(f"http://127.0.0.1:{gw.port}{path}", data=body, headers=headers) as r:
                text = await r.read()
                statuses[r.status] = statuses.get(r.status, 0) + 1
                if r.status >= 500:
                    failures.append(f"{path} {what}: {r.status} {text[:200]!r}")
                elif r.status >= 400:
                    err = json.loads(text).get("error")
                    if not isinstance(err, dict) or not isinstance(err.get("message"), str):
                        failures.append(f"{path} {what}: {r.status} not OpenAI's error shape: {text[:200]!r}")

        await asyncio.gather(*(one(*case) for case in cases))
    print(f"hostile JSON: {len(cases)} requests, statuses {dict(sorted(statuses.items()))}")
    assert failures == [], "\n".join(failures[:20])
    assert statuses.get(400, 0) > len(cases) // 3 and statuses.get(200, 0) > 50, statuses
    assert "Traceback" not in gw.logs()
