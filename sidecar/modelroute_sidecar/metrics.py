"""Prometheus metrics: the names in DESIGN.md, plus the OpenTelemetry GenAI client metrics.

Each gateway owns a registry (tests run many gateways in one process). Label children
are resolved once per backend and cached by :class:`BackendMetrics`, so a request does
dictionary lookups, not label formatting.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.exposition import generate_latest

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
}


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=False)
        disable_created_metrics()  # the _created series double the scrape for no use here
        self.requests = Counter("modelroute_requests", "Upstream attempts by outcome (HTTP status, "
                                "or connect_error/timeout/stream_error)",
                                ["route", "provider", "model", "status"], registry=r)
        self.tokens = Counter("modelroute_tokens", "Tokens by type (input/output)",
                              ["route", "provider", "model", "type"], registry=r)
        self.cost = Counter("modelroute_cost_usd", "Cost in USD from the price table",
                            ["route", "provider", "model"], registry=r)
        self.failovers = Counter("modelroute_failovers", "Moves from one backend to the next",
                                 ["route", "from_backend", "to_backend", "reason"], registry=r)
        self.backend_up = Gauge("modelroute_backend_up", "Circuit state: 1 closed, 0 open",
                                ["route", "backend"], registry=r)
        self.duration = Histogram("modelroute_request_duration_seconds", "Request latency seen by the caller",
                                  ["route", "provider", "model"], buckets=DURATION_BUCKETS, registry=r)
        self.ttft = Histogram("modelroute_time_to_first_token_seconds", "Time to the first streamed chunk",
                              ["route", "provider", "model"], buckets=TTFT_BUCKETS, registry=r)
        self.config_reloads = Counter("modelroute_config_reloads", "Config loads by result", ["result"],
                                      registry=r)
        genai = ["gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model",
                 "gen_ai_response_model", "error_type"]
        self.genai_duration = Histogram("gen_ai_client_operation_duration_seconds", "GenAI operation duration",
                                        genai, buckets=DURATION_BUCKETS, registry=r)
        self.genai_tokens = Histogram("gen_ai_client_token_usage", "Tokens used per GenAI operation",
                                      [*genai[:4], "gen_ai_token_type"], buckets=TOKEN_BUCKETS, registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def unrouted(self, status: int) -> None:
        """A request that never reached a route (bad input, unknown model): bounded labels."""
        self.requests.labels("", "", "", str(status)).inc()


class BackendMetrics:
    """The label children of one (route, backend) pair, resolved on first use."""

    __slots__ = ("_genai", "_m", "_status", "cost", "duration", "genai_labels", "input_tokens", "labels",
                 "output_tokens", "ttft", "up")

    def __init__(self, m: Metrics, route: str, provider: str, model: str, backend: str) -> None:
        self._m = m
        self.labels = (route, provider, model)
        self._status: dict[str, Counter] = {}
        self._genai: dict[tuple[str, str], tuple[Histogram, Histogram, Histogram]] = {}
        self.input_tokens = m.tokens.labels(route, provider, model, "input")
        self.output_tokens = m.tokens.labels(route, provider, model, "output")
        self.cost = m.cost.labels(route, provider, model)
        self.duration = m.duration.labels(route, provider, model)
        self.ttft = m.ttft.labels(route, provider, model)
        self.up = m.backend_up.labels(route, backend)
        self.up.set(1)
        self.genai_labels = (GENAI_PROVIDER.get(provider, provider), route, model)

    def attempt(self, status: str) -> None:
        c = self._status.get(status)
        if c is None:
            c = self._status[status] = self._m.requests.labels(*self.labels, status)
        c.inc()

    def genai(self, operation: str, seconds: float, input_tokens: int | None, output_tokens: int | None,
              error: str = "") -> None:
        children = self._genai.get((operation, error))
        if children is None:
            provider, request_model, response_model = self.genai_labels
            m = self._m
            children = self._genai[(operation, error)] = (
                m.genai_duration.labels(operation, provider, request_model, response_model, error),
                m.genai_tokens.labels(operation, provider, request_model, response_model, "input"),
                m.genai_tokens.labels(operation, provider, request_model, response_model, "output"),
            )
        duration, inp, out = children
        duration.observe(seconds)
        if input_tokens is not None:
            inp.observe(input_tokens)
        if output_tokens is not None:
            out.observe(output_tokens)
