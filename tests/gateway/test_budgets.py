"""ModelBudgets in `modelroute serve` (issue 12): a real gateway process with caller keys, the
faithful fakes as upstreams, the official openai, anthropic and google-genai SDKs as callers.

Each budget selects its own routes, so the tests of this module do not share spend.
"""

from __future__ import annotations

import base64
import json
import re
import signal
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
import yaml
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from modelroute_sidecar.pricing import BUILTIN_PRICES
from tests.controlplane.cluster import wait_for
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.gemini import FakeGemini
from tests.fakes.openai import FakeOpenAI
from tests.gateway.harness import API, model_route, provider_key
from tests.gateway.procs import GatewayProcess, modelroute, scrape

ALICE, BOB = "mrk-alice-budget-51d2e8", "mrk-bob-budget-93a7c4"
USD_LIMIT = 0.001
TOKEN_LIMIT = 100
SCREEN_LIMIT = 20_000
CJK_LIMIT = 5_000


def budget(name: str, routes: list[str], limits: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "ModelBudget", "metadata": {"name": name},
            "spec": {"selector": {"routes": routes, **spec.pop("selector", {})}, "limits": limits, **spec}}


def docs(up: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        *provider_key("oa", "openai", up["openai"].base_url, ["sk-o"]),
        *provider_key("an", "anthropic", up["anthropic"].base_url, ["sk-ant"]),
        *provider_key("ge", "gemini", up["gemini"].base_url, ["g-key"]),
        model_route("gpt-4o-mini", "oa"),
        model_route("blocked-openai", ("oa", "gpt-4o-mini")),
        model_route("blocked-claude", ("an", "claude-haiku-4-5")),
        model_route("blocked-gemini", ("ge", "gemini-2.5-flash")),
        model_route("premium", ("oa", "gpt-4o")),
        model_route("economy", ("an", "claude-haiku-4-5")),
        model_route("streamed", ("oa", "gpt-4o-mini")),
        model_route("streamed-claude", ("an", "claude-haiku-4-5")),
        model_route("usd", ("oa", "gpt-4o")),
        model_route("tokens", ("an", "claude-haiku-4-5")),
        model_route("screens", ("an", "claude-haiku-4-5")),
        model_route("screens-openai", ("oa", "gpt-4o")),
        model_route("cjk", ("an", "claude-haiku-4-5")),
        budget("zero", ["blocked-*"], [{"window": "1h", "requests": 1}]),  # spent by the fixture
        budget("alice-daily", ["gpt-4o-mini"], [{"window": "1d", "requests": 3}],
               selector={"serviceAccounts": ["alice"]}),
        budget("premium", ["premium"], [{"window": "1h", "requests": 2}], onExceeded="Downgrade",
               downgradeTo="economy"),
        budget("streams", ["streamed*"], [{"window": "month", "tokens": 1_000_000}]),
        budget("dollars", ["usd"], [{"window": "1d", "usd": USD_LIMIT}]),
        budget("tokens", ["tokens"], [{"window": "1h", "tokens": TOKEN_LIMIT}]),
        budget("screens", ["screens*"], [{"window": "1h", "tokens": SCREEN_LIMIT}]),
        budget("cjk", ["cjk"], [{"window": "1h", "tokens": CJK_LIMIT}]),
    ]


@dataclass
class World:
    gp: GatewayProcess
    up: dict[str, Any]

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.gp.port}"

    def oai(self, key: str = ALICE) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.gp.url, api_key=key, max_retries=0)

    def claude(self, key: str = ALICE) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=self.root, api_key=key, max_retries=0)

    sdk: genai.Client | None = None

    def gemini(self) -> genai.Client:
        # one for the module: a Client closes its connections when collected
        if self.sdk is None:
            self.sdk = genai.Client(api_key=ALICE, http_options=types.HttpOptions(
                base_url=self.root, retry_options=types.HttpRetryOptions(attempts=1)))
        return self.sdk


def caller_keys() -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "callers"},
            "stringData": {"alice": ALICE, "bob": BOB}}


@pytest.fixture(scope="module")
def w(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("budgets")
    with ExitStack() as stack:
        up: dict[str, Any] = {
            "openai": stack.enter_context(FakeOpenAI(keys=["sk-o"])),
            "anthropic": stack.enter_context(FakeAnthropic(keys=["sk-ant"])),
            "gemini": stack.enter_context(FakeGemini(keys=["g-key"])),
        }
        (tmp / "routes.yaml").write_text(yaml.safe_dump_all(docs(up)))
        (tmp / "callers.yaml").write_text(yaml.safe_dump(caller_keys()))
        gp = stack.enter_context(modelroute(
            tmp, "serve", "-f", str(tmp / "routes.yaml"), "--caller-keys", str(tmp / "callers.yaml"),
            "--state-dir", str(tmp / "state"), env={"OPENAI_API_KEY": "", "ANTHROPIC_API_KEY": ""}))
        world = World(gp, up)
        chat(world.oai(), "blocked-openai")  # the one request budget "zero" allows
        yield world


def metric(gp: GatewayProcess, name: str, **labels: str) -> float | None:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in scrape(gp).splitlines():
        if line.startswith(name + "{") and line[len(name) + 1:line.index("}")] == want:
            return float(line.rsplit(" ", 1)[1])
    return None


def chat(client: openai.OpenAI, model: str, **kw: Any) -> Any:
    return client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hello there"}], max_tokens=20, **kw)


def retry_after_ok(value: str | None, window_seconds: int) -> None:
    assert value is not None and value.isdigit(), value
    # until the window resets: at most its length, and consistent with the clock
    assert 1 <= int(value) <= window_seconds


# --- Reject: a 429 in each caller's dialect --------------------------------------------------


def test_reject_openai_chat(w: World) -> None:
    with pytest.raises(openai.RateLimitError) as e:
        chat(w.oai(), "blocked-openai")
    err = e.value
    assert err.status_code == 429 and err.code == "budget_exceeded"
    assert err.body is not None and err.body["type"] == "rate_limit_error"  # type: ignore[index]
    assert "Budget 'zero'" in err.message and "window 1h" in err.message
    retry_after_ok(err.response.headers.get("retry-after"), 3600)
    before = len(w.up["openai"].requests)
    with pytest.raises(openai.RateLimitError):
        chat(w.oai(), "blocked-openai")
    assert len(w.up["openai"].requests) == before  # refused before any upstream call


def test_reject_openai_responses(w: World) -> None:
    with pytest.raises(openai.RateLimitError) as e:
        w.oai().responses.create(model="blocked-openai", input="hello", max_output_tokens=20)
    assert e.value.code == "budget_exceeded" and "Budget 'zero'" in e.value.message
    retry_after_ok(e.value.response.headers.get("retry-after"), 3600)


def test_reject_anthropic(w: World) -> None:
    with pytest.raises(anthropic.RateLimitError) as e:
        w.claude().messages.create(model="blocked-claude", max_tokens=20,
                                   messages=[{"role": "user", "content": "hello"}])
    body = e.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "rate_limit_error"
    assert "Budget 'zero'" in body["error"]["message"] and "window 1h" in body["error"]["message"]
    retry_after_ok(e.value.response.headers.get("retry-after"), 3600)


def test_reject_anthropic_stream(w: World) -> None:
    with pytest.raises(anthropic.RateLimitError), w.claude().messages.stream(
            model="blocked-claude", max_tokens=20, messages=[{"role": "user", "content": "hello"}]) as s:
        s.get_final_message()


def test_reject_gemini(w: World) -> None:
    with pytest.raises(genai_errors.ClientError) as e:
        w.gemini().models.generate_content(model="blocked-gemini", contents="hello")
    assert e.value.code == 429 and e.value.status == "RESOURCE_EXHAUSTED"
    assert "Budget 'zero'" in str(e.value.message)
    # the same on the wire: Gemini's error object, and Retry-After
    req = urllib.request.Request(f"{w.root}/v1beta/models/blocked-gemini:streamGenerateContent?alt=sse",
                                 data=json.dumps({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}).encode(),
                                 headers={"content-type": "application/json", "x-goog-api-key": ALICE})
    with pytest.raises(urllib.error.HTTPError) as raw:
        urllib.request.urlopen(req, timeout=10)
    body = json.loads(raw.value.read())
    assert raw.value.code == 429 and body["error"]["code"] == 429 and body["error"]["status"] == "RESOURCE_EXHAUSTED"
    retry_after_ok(raw.value.headers.get("retry-after"), 3600)


def test_rejections_are_counted(w: World) -> None:
    with pytest.raises(openai.RateLimitError):
        chat(w.oai(), "blocked-openai")
    wait_for(lambda: (metric(w.gp, "modelroute_budget_rejections_total", budget="zero") or 0) >= 1,
             timeout=10, what="the rejection counter")
    assert metric(w.gp, "modelroute_budget_limit", budget="zero", window="1h", unit="requests") == 1
    assert metric(w.gp, "modelroute_budget_spent", budget="zero", window="1h", unit="requests") == 1


def test_a_request_bigger_than_the_limit_is_told_so(w: World) -> None:
    with pytest.raises(openai.RateLimitError) as e:  # $0.001 a day; 100,000 output tokens of gpt-4o cost $1
        w.oai(BOB).chat.completions.create(model="usd", messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=100_000)
    assert e.value.code == "budget_exceeded"
    assert "this request alone may spend more than the limit" in e.value.message and "lower max_tokens" in \
        e.value.message


# --- caller selection -------------------------------------------------------------------------


def test_a_budget_for_one_caller_leaves_the_others_alone(w: World) -> None:
    for _ in range(3):
        assert chat(w.oai(ALICE), "gpt-4o-mini").http_response.status_code == 200
    with pytest.raises(openai.RateLimitError) as e:
        chat(w.oai(ALICE), "gpt-4o-mini")
    assert "Budget 'alice-daily'" in e.value.message and "window 1d" in e.value.message
    retry_after_ok(e.value.response.headers.get("retry-after"), 86400)
    for _ in range(5):  # bob is not selected by alice-daily
        assert chat(w.oai(BOB), "gpt-4o-mini").http_response.status_code == 200
    assert metric(w.gp, "modelroute_budget_spent", budget="alice-daily", window="1d", unit="requests") == 3


# --- Downgrade ----------------------------------------------------------------------------------


def test_downgrade_serves_every_request(w: World) -> None:
    backends = []
    for i in range(8):
        raw = chat(w.oai(BOB), "premium") if i % 2 else None
        if raw is None:
            resp = w.claude(BOB).messages.with_raw_response.create(
                model="premium", max_tokens=20, messages=[{"role": "user", "content": "hello"}])
            assert resp.http_response.status_code == 200 and resp.parse().content
            backends.append(resp.http_response.headers["x-modelroute-backend"])
        else:
            assert raw.http_response.status_code == 200 and raw.parse().choices[0].message.content
            backends.append(raw.http_response.headers["x-modelroute-backend"])
    assert backends[:2] == ["oa/gpt-4o", "oa/gpt-4o"]
    assert set(backends[2:]) == {"an/claude-haiku-4-5"}
    assert metric(w.gp, "modelroute_budget_spent", budget="premium", window="1h", unit="requests") == 2
    assert metric(w.gp, "modelroute_budget_rejections_total", budget="premium") == 0


# --- settling from the upstream's usage -----------------------------------------------------------


def test_streams_settle_from_their_usage(w: World) -> None:
    total = 0
    stream = w.oai().chat.completions.create(model="streamed", messages=[{"role": "user", "content": "count"}],
                                             max_tokens=50, stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.usage is not None:
            total += chunk.usage.total_tokens
    with w.claude().messages.stream(model="streamed-claude", max_tokens=50,
                                    messages=[{"role": "user", "content": "count"}]) as s:
        final = s.get_final_message()
    total += final.usage.input_tokens + final.usage.output_tokens
    resp = w.claude().messages.create(model="streamed-claude", max_tokens=50,
                                      messages=[{"role": "user", "content": "once more"}])
    total += resp.usage.input_tokens + resp.usage.output_tokens
    assert total > 0
    wait_for(lambda: metric(w.gp, "modelroute_budget_spent", budget="streams", window="month",
                            unit="tokens") == total, timeout=10, what=f"{total} tokens settled")


def test_an_aborted_stream_is_charged_its_reservation(w: World) -> None:
    """An OpenAI stream reports usage only at its end: cut off before it, the call is charged
    what it reserved (its max_tokens included), the most the upstream can bill for it."""
    before = metric(w.gp, "modelroute_budget_spent", budget="streams", window="month", unit="tokens") or 0
    w.up["openai"].faults.event_delay = 0.05
    try:
        stream = w.oai().chat.completions.create(
            model="streamed", messages=[{"role": "user", "content": "a long answer please " * 20}],
            max_tokens=500, stream=True)
        for _ in stream:
            break  # the caller goes away after the first words
        stream.close()
        wait_for(lambda: (metric(w.gp, "modelroute_budget_spent", budget="streams", window="month",
                                 unit="tokens") or 0) >= before + 500, timeout=10,
                 what="the aborted stream charged with its reservation")
    finally:
        w.up["openai"].faults.event_delay = 0.0


def test_usd_limit_holds(w: World) -> None:
    served = refused = 0
    for _ in range(40):
        try:
            chat(w.oai(BOB), "usd")
            served += 1
        except openai.RateLimitError as e:
            assert e.code == "budget_exceeded" and "Budget 'dollars'" in e.message
            refused += 1
    assert served >= 1 and refused >= 1
    spent = metric(w.gp, "modelroute_budget_spent", budget="dollars", window="1d", unit="usd")
    assert spent is not None and 0 < spent <= USD_LIMIT  # one caller at a time: no overshoot at all
    # and what was spent is what gpt-4o's price makes of the upstream's usage
    price = BUILTIN_PRICES["gpt-4o"]
    assert spent >= served * (price.input + price.output) / 1_000_000  # at least a token each way per call


def test_token_limit_holds(w: World) -> None:
    used = refused = 0
    for _ in range(60):
        try:
            m = w.claude(BOB).messages.create(model="tokens", max_tokens=20,
                                              messages=[{"role": "user", "content": "hello"}])
            used += m.usage.input_tokens + m.usage.output_tokens
        except anthropic.RateLimitError as e:
            assert isinstance(e.body, dict) and "Budget 'tokens'" in e.body["error"]["message"]
            refused += 1
    assert used > 0 and refused > 0
    spent = metric(w.gp, "modelroute_budget_spent", budget="tokens", window="1h", unit="tokens")
    assert spent == used <= TOKEN_LIMIT  # the spend is the upstream's usage, and it stayed within


# --- the reservation: images by their pixels, text by a bound that holds for every script ----------------


def screenshot() -> bytes:
    """A 1920 x 1080 PNG of about 1 MiB (a block of noise does not compress)."""
    import io

    from PIL import Image

    img = Image.new("RGB", (1920, 1080), "white")
    img.paste(Image.effect_noise((600, 600), 90).convert("RGB"), (100, 100))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def test_a_screenshot_reserves_by_its_pixels_not_its_bytes(w: World) -> None:
    png = screenshot()
    assert len(png) > 900_000  # by its bytes (base64: 4/3 of them), over 300,000 tokens, 15 times the limit
    data = base64.b64encode(png).decode()
    m = w.claude(BOB).messages.create(model="screens", max_tokens=50, messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}},
        {"type": "text", "text": "What does this screen show?"}]}])
    r = w.oai(BOB).chat.completions.create(model="screens-openai", max_tokens=50,
                                           messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}},
        {"type": "text", "text": "What does this screen show?"}]}])
    assert r.usage is not None
    spent = metric(w.gp, "modelroute_budget_spent", budget="screens", window="1h", unit="tokens")
    assert spent == m.usage.input_tokens + m.usage.output_tokens + r.usage.total_tokens


def test_cjk_text_reserves_a_token_per_byte(w: World) -> None:
    prompt = "この文書を要約して、重要な点を三つ挙げてください。" * 80  # 1,920 characters, 5,760 UTF-8 bytes
    assert len(prompt) * 3 // 4 < CJK_LIMIT < len(prompt.encode())  # four bytes a token would let it through
    for ascii_only in (False, True):  # raw UTF-8 (the SDKs), and the \uXXXX escapes of json.dumps' default
        body = json.dumps({"model": "cjk", "max_tokens": 100, "messages": [{"role": "user", "content": prompt}]},
                          ensure_ascii=ascii_only).encode()
        req = urllib.request.Request(f"{w.root}/v1/messages", data=body, headers={
            "content-type": "application/json", "x-api-key": BOB, "anthropic-version": "2023-06-01"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        answer = json.loads(e.value.read())
        assert e.value.code == 429 and answer["error"]["type"] == "rate_limit_error"
        message = answer["error"]["message"]
        assert "this request alone may spend more than the limit" in message
        reserved = int(re.search(r"it reserves (\d+) tokens", message).group(1))  # type: ignore[union-attr]
        assert reserved >= len(prompt.encode()) + 100
    # a short one fits, and is charged what the upstream reports
    m = w.claude(BOB).messages.create(model="cjk", max_tokens=100, messages=[{"role": "user", "content": prompt[:200]}])
    spent = metric(w.gp, "modelroute_budget_spent", budget="cjk", window="1h", unit="tokens")
    assert spent == m.usage.input_tokens + m.usage.output_tokens


# --- restarts keep the spend -------------------------------------------------------------------------


MOCK_DOCS = [
    {"apiVersion": API, "kind": "ProviderKey", "metadata": {"name": "mock"}, "spec": {"provider": "mock"}},
    model_route("kept", ("mock", "m-1")),
    budget("kept", ["kept"], [{"window": "month", "requests": 5}, {"window": "1h", "tokens": 100_000}]),
]


def _kept_gateway(tmp: Path) -> Any:
    return modelroute(tmp, "serve", "-f", str(tmp / "routes.yaml"), "--state-dir", str(tmp / "state"))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_restart_keeps_the_spend(tmp_path: Path, sig: signal.Signals) -> None:
    (tmp_path / "routes.yaml").write_text(yaml.safe_dump_all(MOCK_DOCS))
    with _kept_gateway(tmp_path) as gp:
        client = openai.OpenAI(base_url=gp.url, api_key="x", max_retries=0)
        for _ in range(3):
            chat(client, "kept")
        tokens = metric(gp, "modelroute_budget_spent", budget="kept", window="1h", unit="tokens")
        assert tokens is not None and tokens > 0
        gp.proc.send_signal(sig)
        gp.proc.wait(10)
    with _kept_gateway(tmp_path) as gp:
        assert metric(gp, "modelroute_budget_spent", budget="kept", window="month", unit="requests") == 3
        assert metric(gp, "modelroute_budget_spent", budget="kept", window="1h", unit="tokens") == tokens
        client = openai.OpenAI(base_url=gp.url, api_key="x", max_retries=0)
        for _ in range(2):
            chat(client, "kept")
        with pytest.raises(openai.RateLimitError) as e:
            chat(client, "kept")
        assert "window month" in e.value.message
    # the journal was compacted at the second start: one line per window, then this run's events
    lines = (tmp_path / "state" / "budgets.journal").read_bytes().splitlines()
    assert sum(1 for line in lines if line.startswith(b'{"t"')) == 2
    assert len(lines) == 2 + 2 * 2  # two reserve + settle pairs (the refused call never reserved)


def test_without_state_dir_the_spend_starts_over(tmp_path: Path) -> None:
    (tmp_path / "routes.yaml").write_text(yaml.safe_dump_all(MOCK_DOCS))
    for _ in range(2):
        with modelroute(tmp_path, "serve", "-f", str(tmp_path / "routes.yaml")) as gp:
            client = openai.OpenAI(base_url=gp.url, api_key="x", max_retries=0)
            for _ in range(5):
                chat(client, "kept")
            with pytest.raises(openai.RateLimitError):
                chat(client, "kept")


def test_a_broken_budget_is_refused_at_start(tmp_path: Path) -> None:
    bad = budget("bad", [], [{"window": "1w", "requests": 1}])
    (tmp_path / "routes.yaml").write_text(yaml.safe_dump_all([*MOCK_DOCS[:2], bad]))
    with modelroute(tmp_path, "serve", "-f", str(tmp_path / "routes.yaml"), ready=False) as gp:
        assert gp.proc.wait(20) == 2
        assert re.search(r"ModelBudget bad\): spec\.limits\[0\]\.window: .*window '1w': windows are Nm, Nh or Nd",
                         gp.logs())


def test_a_reload_keeps_the_spend_and_takes_the_new_limit(tmp_path: Path) -> None:
    (tmp_path / "routes.yaml").write_text(yaml.safe_dump_all(MOCK_DOCS))
    with modelroute(tmp_path, "serve", "-f", str(tmp_path / "routes.yaml"), "--reload-interval", "0.2") as gp:
        client = openai.OpenAI(base_url=gp.url, api_key="x", max_retries=0)
        for _ in range(5):
            chat(client, "kept")
        with pytest.raises(openai.RateLimitError):
            chat(client, "kept")
        raised = [*MOCK_DOCS[:2], budget("kept", ["kept"], [{"window": "month", "requests": 7},
                                                            {"window": "1h", "tokens": 100_000}])]
        (tmp_path / "routes.yaml").write_text(yaml.safe_dump_all(raised))
        wait_for(lambda: metric(gp, "modelroute_budget_limit", budget="kept", window="month", unit="requests") == 7,
                 timeout=15, what="the raised limit loaded")
        assert metric(gp, "modelroute_budget_spent", budget="kept", window="month", unit="requests") == 5
        for _ in range(2):
            chat(client, "kept")
        with pytest.raises(openai.RateLimitError):
            chat(client, "kept")


def test_a_budget_added_by_a_reload_is_enforced(tmp_path: Path) -> None:
    """A gateway that started without budgets (and so without the budget machinery) takes one
    from a reload and enforces it from then on."""
    (tmp_path / "routes.yaml").write_text(yaml.safe_dump_all(MOCK_DOCS[:2]))
    with modelroute(tmp_path, "serve", "-f", str(tmp_path / "routes.yaml"), "--reload-interval", "0.2") as gp:
        client = openai.OpenAI(base_url=gp.url, api_key="x", max_retries=0)
        for _ in range(6):
            chat(client, "kept")  # no budget yet: more than the limit to come
        (tmp_path / "routes.yaml").write_text(yaml.safe_dump_all(MOCK_DOCS))
        wait_for(lambda: metric(gp, "modelroute_budget_limit", budget="kept", window="month", unit="requests") == 5,
                 timeout=15, what="the budget loaded")
        for _ in range(5):
            chat(client, "kept")
        with pytest.raises(openai.RateLimitError) as e:
            chat(client, "kept")
        assert "window month" in e.value.message
