"""Prometheus metrics: the names in DESIGN.md, plus the OpenTelemetry GenAI client metrics.

Each gateway owns a registry (tests run many gateways in one process). The per-request
series are plain Python accumulators (:class:`Series`), exported by a collector at scrape
time: prometheus_client's own metric objects take a lock on every update, which cost more
than everything else the gateway adds to a request. The event loop is the only writer, so no
lock is needed; a scrape renders in a thread (a big config makes a big page, which must not
hold up requests) and reads each dict through one C-level copy (``list(d.items())``), which
the GIL keeps whole. Rare events (failovers, circuit state, reloads) keep prometheus_client's
objects.

Label values never come from callers unchecked: a model name only a ProviderKey glob matched
is counted under that glob (see :class:`~modelroute_sidecar.router.Backend`), so the number of
series is bounded by the config.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from . import gcpause

# OpenTelemetry GenAI semantic conventions: bucket boundaries and provider names.
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
GENAI_PROVIDER = {
    "openai": "openai",
    "azure-openai": "azure.ai.openai",
    "anthropic": "anthropic",
    "gemini": "gcp.gemini",
    "openai-compatible": "openai_compatible",
    "bedrock": "aws.bedrock",
    "vertex": "gcp.vertex_ai",
}
ROUTE_LABELS = ["route", "provider", "model"]
GENAI_LABELS = ["gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model", "gen_ai_response_model"]


class Hist:
    """A histogram's buckets (non-cumulative until exported), sum and count."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # first bucket whose bound >= value
        self.sum += value

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        total = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            out.append((floatToGoString(bound), total))
        return out


class Num:
    """A counter's value."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class Series:
    """Everything counted for one (route, provider, model); lives as long as the gateway."""

    __slots__ = ("cost", "duration", "genai", "input_tokens", "labels", "output_tokens", "requests", "ttft")

    def __init__(self, labels: tuple[str, str, str]) -> None:
        self.labels = labels
        self.requests: dict[str, int] = {}
        self.input_tokens = Num()
        self.output_tokens = Num()
        self.cost = Num()
        self.duration = Hist(DURATION_BUCKETS)
        self.ttft = Hist(TTFT_BUCKETS)
        # (operation, error_type) -> (duration, input tokens, output tokens)
        self.genai: dict[tuple[str, str], tuple[Hist, Hist, Hist]] = {}


class _SeriesCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        series = list(self.m.series.values())
        requests = CounterMetricFamily("modelroute_requests", "Upstream attempts by outcome (HTTP status, or "
                                       "connect_error/timeout/stream_error/client_closed)",
                                       labels=[*ROUTE_LABELS, "status"])
        tokens = CounterMetricFamily("modelroute_tokens", "Tokens by type (input/output)",
                                     labels=[*ROUTE_LABELS, "type"])
        cost = CounterMetricFamily("modelroute_cost_usd", "Cost in USD from the price table", labels=ROUTE_LABELS)
        duration = HistogramMetricFamily("modelroute_request_duration_seconds", "Request latency seen by the caller",
                                         labels=ROUTE_LABELS)
        ttft = HistogramMetricFamily("modelroute_time_to_first_token_seconds", "Time to the first streamed chunk",
                                     labels=ROUTE_LABELS)
        g_duration = HistogramMetricFamily("gen_ai_client_operation_duration_seconds", "GenAI operation duration",
                                           labels=[*GENAI_LABELS, "error_type"])
        g_tokens = HistogramMetricFamily("gen_ai_client_token_usage", "Tokens used per GenAI operation",
                                         labels=[*GENAI_LABELS, "gen_ai_token_type"])
        for s in series:
            labels = list(s.labels)
            for status, n in list(s.requests.items()):
                requests.add_metric([*labels, status], n)
            if not s.labels[0]:
                continue  # the unrouted series counts requests only
            tokens.add_metric([*labels, "input"], s.input_tokens.value)
            tokens.add_metric([*labels, "output"], s.output_tokens.value)
            cost.add_metric(labels, s.cost.value)
            duration.add_metric(labels, s.duration.buckets(), s.duration.sum)
            if s.ttft.sum or any(s.ttft.counts):
                ttft.add_metric(labels, s.ttft.buckets(), s.ttft.sum)
            route, provider, model = s.labels
            for (operation, error), (d, i, o) in list(s.genai.items()):
                g = [operation, GENAI_PROVIDER.get(provider, provider), route, model]
                g_duration.add_metric([*g, error], d.buckets(), d.sum)
                if any(i.counts):
                    g_tokens.add_metric([*g, "input"], i.buckets(), i.sum)
                if any(o.counts):
                    g_tokens.add_metric([*g, "output"], o.buckets(), o.sum)
        yield from (requests, tokens, cost, duration, ttft, g_duration, g_tokens)


class _BudgetCollector(Collector):
    """ModelBudget spend as this process knows it (in serve: the whole spend; in a pod: this
    sidecar's own), read at scrape time; the labels come from the config, never from callers."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        spent = GaugeMetricFamily("modelroute_budget_spent", "Spend in the current budget window "
                                  "(unit usd, tokens or requests)", labels=["budget", "window", "unit"])
        limit = GaugeMetricFamily("modelroute_budget_limit", "A budget window's limit",
                                  labels=["budget", "window", "unit"])
        rejections = CounterMetricFamily("modelroute_budget_rejections", "Requests refused with 429 "
                                         "budget_exceeded", labels=["budget"])
        budgets = self.m.budgets
        for state in list(budgets.states.values()) if budgets is not None else ():
            for lease in state.leases:
                for unit in lease.units:
                    spent.add_metric([state.name, lease.window.name, unit], lease.used.get(unit))
                    limit.add_metric([state.name, lease.window.name, unit], lease.limit.get(unit))
            rejections.add_metric([state.name], state.rejections)
        yield from (spent, limit, rejections)


class _CredentialCollector(Collector):
    """Workload identity credentials, read at scrape time: renewals by result and the expiry of
    the one held, per ProviderKey (an alert on renewal failures or a near expiry catches a
    broken trust policy before requests fail)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        renewals = CounterMetricFamily("modelroute_credential_renewals", "Workload identity credential "
                                       "fetches by result", labels=["provider_key", "result"])
        expiry = GaugeMetricFamily("modelroute_credential_expiry_timestamp_seconds", "When the workload "
                                   "identity credential held now expires (Unix time)", labels=["provider_key"])
        sources = self.metrics.credentials.by_name if self.metrics.credentials is not None else {}
        for name, src in sorted(sources.items()):
            counts = getattr(src, "renewals", None)
            if counts is None:
                continue  # a static or misconfigured source: nothing is fetched
            for result in ("success", "failure"):
                renewals.add_metric([name, result], counts[result])
            if src.expires_at is not None:
                expiry.add_metric([name], src.expires_at)
        yield from (renewals, expiry)


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=False)
        disable_created_metrics()  # the _created series double the scrape for no use here
        self.series: dict[tuple[str, str, str], Series] = {}
        r.register(_SeriesCollector(self))
        self.budgets: Any = None  # the gateway's Budgets (budget/holder.py), read at scrape time
        r.register(_BudgetCollector(self))
        self.credentials: Any = None  # the gateway's CredentialSources, read at scrape time
        r.register(_CredentialCollector(self))
        self.failovers = Counter("modelroute_failovers", "Moves from one backend to the next",
                                 ["route", "from_backend", "to_backend", "reason"], registry=r)
        self.backend_up = Gauge("modelroute_backend_up", "Circuit state: 1 closed, 0 open",
                                ["route", "backend"], registry=r)
        self.access_denied = Counter("modelroute_access_denied", "Requests refused: the caller may not use the route",
                                     ["route"], registry=r)
        self.config_reloads = Counter("modelroute_config_reloads", "Config loads by result", ["result"],
                                      registry=r)

    def series_for(self, route: str, provider: str, model: str) -> Series:
        key = (route, provider, model)
        s = self.series.get(key)
        if s is None:  # setdefault: a reload builds its Runtime in a thread
            s = self.series.setdefault(key, Series(key))
        return s

    def render(self) -> bytes:
        with gcpause.paused():  # a big page is many short-lived samples: no collection for them
            return generate_latest(self.registry)

    def unrouted(self, status: int) -> None:
        """A request that never reached a route (bad input, unknown model): bounded labels."""
        requests = self.series_for("", "", "").requests
        key = str(status)
        requests[key] = requests.get(key, 0) + 1


class BackendMetrics:
    """What one (route, backend) pair updates per request: its Series, and its circuit gauge."""

    __slots__ = ("cost", "duration", "input_tokens", "output_tokens", "series", "ttft", "up")

    def __init__(self, m: Metrics, route: str, provider: str, model: str, backend: str) -> None:
        s = self.series = m.series_for(route, provider, model)
        self.input_tokens = s.input_tokens
        self.output_tokens = s.output_tokens
        self.cost = s.cost
        self.duration = s.duration
        self.ttft = s.ttft
        self.up = m.backend_up.labels(route, backend)

    def attempt(self, status: str) -> None:
        requests = self.series.requests
        requests[status] = requests.get(status, 0) + 1

    def genai(self, operation: str, seconds: float, input_tokens: int | None, output_tokens: int | None,
              error: str = "") -> None:
        hists = self.series.genai.get((operation, error))
        if hists is None:
            hists = self.series.genai[(operation, error)] = (Hist(DURATION_BUCKETS), Hist(TOKEN_BUCKETS),
                                                              Hist(TOKEN_BUCKETS))
        duration, inp, out = hists
        duration.observe(seconds)
        if input_tokens is not None:
            inp.observe(input_tokens)
        if output_tokens is not None:
            out.observe(output_tokens)
