"""The /metrics page of a real `modelroute serve`, read by an independent parser.

The gateway writes the Prometheus text format itself (metrics.py); prometheus_client's parser
reads it here after traffic on several routes: every family keeps its name, type, HELP and
labels; names from the config with quotes, backslashes, newlines and non-ASCII come back
exactly; histogram buckets are cumulative up to ``+Inf`` = ``_count``; and the counts are the
requests sent. A page the parser misreads, or one a renamed metric broke, fails here.
"""

from __future__ import annotations

import math
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import openai
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.openai import FakeOpenAI
from tests.gateway.harness import API, FAST, model_route, provider_key, user
from tests.gateway.procs import GatewayProcess, modelroute

# A ProviderKey and a ModelBudget may be named anything in a file `serve` reads: their names
# reach the backend and budget labels.
HOSTILE_KEY = 'q"uote\\back\\\\slash\nnew line-é✓中'
HOSTILE_BUDGET = 'b"ud\\get\n\\n-ü'
ROUTE = ["model", "provider", "route"]
GENAI = ["gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model", "gen_ai_response_model"]

# Every family the gateway exposes: (type, HELP, labels). What dashboards and alerts read.
FAMILIES: dict[str, tuple[str, str, list[str]]] = {
    "modelroute_requests": ("counter", "Upstream attempts by outcome (HTTP status, or "
                            "connect_error/timeout/stream_error/client_closed)", [*ROUTE, "status"]),
    "modelroute_tokens": ("counter", "Tokens by type (input/output)", [*ROUTE, "type"]),
    "modelroute_cost_usd": ("counter", "Cost in USD from the price table", ROUTE),
    "modelroute_request_duration_seconds": ("histogram", "Request latency seen by the caller", ROUTE),
    "modelroute_time_to_first_token_seconds": ("histogram", "Time to the first streamed chunk", ROUTE),
    "gen_ai_client_operation_duration_seconds": ("histogram", "GenAI operation duration", [*GENAI, "error_type"]),
    "gen_ai_client_token_usage": ("histogram", "Tokens used per GenAI operation", [*GENAI, "gen_ai_token_type"]),
    "modelroute_budget_spent": ("gauge", "Spend in the current budget window (unit usd, tokens or requests)",
                                ["budget", "unit", "window"]),
    "modelroute_budget_limit": ("gauge", "A budget window's limit", ["budget", "unit", "window"]),
    "modelroute_budget_rejections": ("counter", "Requests refused with 429 budget_exceeded", ["budget"]),
    "modelroute_credential_renewals": ("counter", "Workload identity credential fetches by result",
                                       ["provider_key", "result"]),
    "modelroute_credential_expiry_timestamp_seconds": ("gauge", "When the workload identity credential held now "
                                                       "expires (Unix time)", ["provider_key"]),
    "modelroute_failovers": ("counter", "Moves from one backend to the next",
                             ["from_backend", "reason", "route", "to_backend"]),
    "modelroute_backend_up": ("gauge", "Circuit state: 1 closed, 0 open", ["backend", "route"]),
    "modelroute_access_denied": ("counter", "Requests refused: the caller may not use the route", ["route"]),
    "modelroute_config_reloads": ("counter", "Config loads by result", ["result"]),
}
PLAIN, STREAMED = 5, 3


def budget(name: str, routes: list[str], limits: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "ModelBudget", "metadata": {"name": name},
            "spec": {"selector": {"routes": routes}, "limits": limits}}


@dataclass
class Scraped:
    text: str
    content_type: str
    input_tokens: int  # as the SDK's usage reported them, route "chat"
    output_tokens: int

    def families(self) -> dict[str, Any]:
        return {f.name: f for f in text_string_to_metric_families(self.text)}

    def samples(self, name: str, **labels: str) -> list[Sample]:
        return [s for f in text_string_to_metric_families(self.text) for s in f.samples
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]

    def total(self, name: str, **labels: str) -> float:
        return sum(s.value for s in self.samples(name, **labels))


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scraped]:
    tmp = tmp_path_factory.mktemp("metrics-page")
    with ExitStack() as stack:
        oa = stack.enter_context(FakeOpenAI(keys=["sk-o"]))
        an = stack.enter_context(FakeAnthropic(keys=["sk-ant"]))
        (tmp / "routes.yaml").write_text(yaml.safe_dump_all([
            *provider_key("oa", "openai", oa.base_url, ["sk-o"]),
            *provider_key(HOSTILE_KEY, "openai", oa.base_url, ["sk-o"]),
            *provider_key("an", "anthropic", an.base_url, ["sk-ant"]),
            model_route("chat", ("oa", "gpt-4o"), ("an", "claude-haiku-4-5"), **FAST),
            model_route("weird", (HOSTILE_KEY, "gpt-4o-mini"), ("oa", "gpt-4o"), **FAST),
            model_route("claude", ("an", "claude-haiku-4-5"), **FAST),
            model_route("private", ("oa", "gpt-4o"), allowedServiceAccounts=["alice"]),
            budget(HOSTILE_BUDGET, ["chat"], [{"window": "1h", "requests": 1000}, {"window": "1d", "usd": 5}]),
            budget("tiny", ["claude"], [{"window": "1h", "requests": 2}]),
        ]))
        (tmp / "callers.yaml").write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "callers"},
            "stringData": {"alice": "mrk-alice-5b1f0c9e", "bob": "mrk-bob-77d2a4e1"}}))
        gp: GatewayProcess = stack.enter_context(modelroute(
            tmp, "serve", "-f", str(tmp / "routes.yaml"), "--caller-keys", str(tmp / "callers.yaml"),
            env={"OPENAI_API_KEY": "", "ANTHROPIC_API_KEY": ""}))
        client = openai.OpenAI(base_url=gp.url, api_key="mrk-bob-77d2a4e1", max_retries=0)
        inp = out = 0
        for _ in range(PLAIN):
            usage = client.chat.completions.create(model="chat", messages=user("hi")).usage
            assert usage
            inp, out = inp + usage.prompt_tokens, out + usage.completion_tokens
        for _ in range(STREAMED):
            for chunk in client.chat.completions.create(model="chat", messages=user("hi"), stream=True,
                                                        stream_options={"include_usage": True}):
                if chunk.usage:
                    inp, out = inp + chunk.usage.prompt_tokens, out + chunk.usage.completion_tokens
        oa.faults.fail_next(1, status=503)  # the first backend fails: one failover to anthropic
        usage = client.chat.completions.create(model="chat", messages=user("fail over")).usage
        assert usage
        inp, out = inp + usage.prompt_tokens, out + usage.completion_tokens
        oa.faults.fail_next(1, status=500)  # the hostile key's backend fails
        assert client.chat.completions.create(model="weird", messages=user("hi")).choices
        for _ in range(2):
            assert client.chat.completions.create(model="claude", messages=user("hi")).choices
        with pytest.raises(openai.RateLimitError):  # budget "tiny" allows 2
            client.chat.completions.create(model="claude", messages=user("hi"))
        for _ in range(2):
            with pytest.raises(openai.NotFoundError):
                client.chat.completions.create(model="no-such-model", messages=user("hi"))
        with pytest.raises(openai.PermissionDeniedError):
            client.chat.completions.create(model="private", messages=user("hi"))
        with urllib.request.urlopen(gp.metrics_url, timeout=10) as r:
            yield Scraped(r.read().decode(), r.headers["content-type"], inp, out)


def test_every_family_keeps_its_name_type_help_and_labels(page: Scraped) -> None:
    assert page.content_type == "text/plain; version=0.0.4; charset=utf-8"
    families = page.families()
    assert list(families) == list(FAMILIES)  # and in this order
    for name, (kind, help_text, labels) in FAMILIES.items():
        f = families[name]
        assert (f.type, f.documentation) == (kind, help_text), name
        for s in f.samples:
            assert sorted(k for k in s.labels if k != "le") == sorted(labels), (name, s)
    # What the text says for the counters: `_total` on the HELP, TYPE and sample lines.
    assert "# TYPE modelroute_requests_total counter\n" in page.text
    assert "\n# HELP modelroute_failovers_total Moves from one backend to the next\n" in page.text
    assert "_created" not in page.text


def test_names_with_quotes_backslashes_newlines_and_unicode_come_back_exactly(page: Scraped) -> None:
    assert page.total("modelroute_backend_up", route="weird", backend=f"{HOSTILE_KEY}/gpt-4o-mini") == 1
    [failover] = page.samples("modelroute_failovers_total", route="weird")
    assert failover.labels == {"route": "weird", "from_backend": f"{HOSTILE_KEY}/gpt-4o-mini",
                               "to_backend": "oa/gpt-4o", "reason": "server_error"}
    assert failover.value == 1
    spent = {(s.labels["window"], s.labels["unit"]): s.value
             for s in page.samples("modelroute_budget_spent", budget=HOSTILE_BUDGET)}
    assert spent[("1h", "requests")] == PLAIN + STREAMED + 1
    assert 0 < spent[("1d", "usd")] < 5
    assert page.total("modelroute_budget_limit", budget=HOSTILE_BUDGET, unit="requests") == 1000
    # Escaped on the wire: one sample per line, the newline written as \n.
    line = next(x for x in page.text.splitlines() if x.startswith("modelroute_backend_up{backend=\"q"))
    assert line == ('modelroute_backend_up{backend="q\\"uote\\\\back\\\\\\\\slash\\nnew line-é✓中/gpt-4o-mini",'
                    'route="weird"} 1.0')


def test_histograms_are_cumulative_and_end_at_their_count(page: Scraped) -> None:
    checked = 0
    for name, (kind, _, _) in FAMILIES.items():
        if kind != "histogram":
            continue
        buckets: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = defaultdict(list)
        count: dict[tuple[tuple[str, str], ...], float] = {}
        for s in page.families()[name].samples:
            key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
            if s.name == name + "_bucket":
                buckets[key].append((float(s.labels["le"]), s.value))
            elif s.name == name + "_count":
                count[key] = s.value
            else:
                assert s.name == name + "_sum" and s.value >= 0
        assert buckets.keys() == count.keys() and buckets, name
        for key, bs in buckets.items():
            bounds, values = [b for b, _ in bs], [v for _, v in bs]
            assert bounds == sorted(set(bounds)) and math.isinf(bounds[-1]), (name, key)
            assert values == sorted(values) and values[-1] == count[key], (name, key)
            checked += 1
    assert checked >= 10


def test_counts_are_the_requests_sent(page: Scraped) -> None:
    answered = PLAIN + STREAMED + 1
    assert page.total("modelroute_requests_total", route="chat", status="200") == answered
    assert page.total("modelroute_requests_total", route="chat", model="gpt-4o", status="503") == 1
    assert page.total("modelroute_request_duration_seconds_count", route="chat") == answered
    assert page.total("modelroute_time_to_first_token_seconds_count", route="chat") == STREAMED
    assert page.total("gen_ai_client_operation_duration_seconds_count", gen_ai_request_model="chat") == answered
    assert page.total("modelroute_failovers_total", route="chat", reason="server_error") == 1
    assert page.total("modelroute_tokens_total", route="chat", type="input") == page.input_tokens
    assert page.total("modelroute_tokens_total", route="chat", type="output") == page.output_tokens
    assert page.total("gen_ai_client_token_usage_sum", gen_ai_request_model="chat",
                      gen_ai_token_type="input") == page.input_tokens
    assert page.total("modelroute_cost_usd_total", route="chat") > 0
    assert page.total("modelroute_requests_total", route="claude", status="200") == 2
    assert page.total("modelroute_budget_rejections_total", budget="tiny") == 1
    assert page.total("modelroute_requests_total", route="", status="404") == 2
    assert page.total("modelroute_access_denied_total", route="private") == 1
    assert page.total("modelroute_config_reloads_total", result="success") == 1
