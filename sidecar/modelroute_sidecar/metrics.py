"""Prometheus metrics: the names in DESIGN.md, plus the OpenTelemetry GenAI client metrics.

Each gateway owns its :class:`Metrics` (tests run many gateways in one process). The
per-request series are plain Python accumulators (:class:`Series`), rendered at scrape time:
a metrics library's objects take a lock on every update, which cost more than everything else
the gateway adds to a request. The event loop is the only writer, so no lock is needed; a
scrape renders in a thread (a big config makes a big page, which must not hold up requests)
and reads each dict through one C-level copy (``list(d.items())``), which the GIL keeps whole.
Rare events (failovers, circuit state, reloads) are :class:`Labelled` counters and gauges.

The exposition (text format 0.0.4) is written here rather than by prometheus_client: the
sidecar runs in every pod, and the library with what it imports (wsgiref, http.server, gzip
...) cost about 1.1 MiB resident and 15 ms of start-up in each; the format is small and
stable. The page is what prometheus_client's ``generate_latest`` wrote (labels sorted by
name, values as its ``floatToGoString``, no ``_created`` series); the tests read it with
prometheus_client's own parser.

Label values never come from callers unchecked: a model name only a ProviderKey glob matched
is counted under that glob (see :class:`~modelroute_sidecar.router.Backend`), so the number of
series is bounded by the config.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from typing import Any, Literal

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


class Num:
    """A counter's or gauge's value."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def set(self, value: float) -> None:
        self.value = value


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


_INF = float("inf")
Kind = Literal["counter", "gauge", "histogram"]


def format_value(value: float) -> str:
    """A sample value as Prometheus writes it (prometheus_client's ``floatToGoString``):
    ``+Inf``, ``-Inf``, ``NaN``, ``1.0`` for one, and Go's earlier switch to exponents."""
    d = float(value)
    if d == _INF:
        return "+Inf"
    if d == -_INF:
        return "-Inf"
    if d != d:
        return "NaN"
    s = repr(d)
    dot = s.find(".")
    if d > 0 and dot > 6:  # Python writes 1234567.0 where Go writes 1.234567e+06
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return s


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _label_parts(names: Sequence[str], values: Sequence[str]) -> list[tuple[str, str]]:
    """(name, 'name="escaped value"') sorted by name, as the exposition orders labels."""
    return [(k, f'{k}="{escape_label_value(v)}"') for k, v in sorted(zip(names, values, strict=True))]


def _sample(out: list[str], name: str, labels: str, value: float) -> None:
    out.append(f"{name}{{{labels}}} {format_value(value)}\n" if labels else f"{name} {format_value(value)}\n")


_LE: dict[tuple[float, ...], tuple[str, ...]] = {}
_CHUNK = 2048  # lines rendered into bytes at a time


def _le_texts(bounds: tuple[float, ...]) -> tuple[str, ...]:
    texts = _LE.get(bounds)
    if texts is None:
        texts = _LE.setdefault(bounds, tuple(format_value(b) for b in (*bounds, _INF)))
    return texts


class Family:
    """One metric family to render: its header, then the lines added to it."""

    __slots__ = ("lines", "name", "names")

    def __init__(self, name: str, help_text: str, kind: Kind, names: Sequence[str]) -> None:
        self.name = name + "_total" if kind == "counter" else name  # a counter's samples end in _total
        self.names = tuple(names)
        self.lines = [f"# HELP {self.name} {_escape_help(help_text)}\n# TYPE {self.name} {kind}\n"]

    def add(self, values: Sequence[str], value: float) -> None:
        _sample(self.lines, self.name, ",".join(p for _, p in _label_parts(self.names, values)), value)

    def add_histogram(self, values: Sequence[str], hist: Hist) -> None:
        """Cumulative ``_bucket`` lines (``le`` in its sorted place among the labels), ``_count``, ``_sum``."""
        parts = _label_parts(self.names, values)
        before = "".join(p + "," for k, p in parts if k < "le")
        after = "".join("," + p for k, p in parts if k > "le")
        out, bucket, total = self.lines, self.name + "_bucket", 0
        for le, n in zip(_le_texts(hist.bounds), hist.counts, strict=True):
            total += n
            out.append(f'{bucket}{{{before}le="{le}"{after}}} {format_value(total)}\n')
        labels = ",".join(p for _, p in parts)
        _sample(out, self.name + "_count", labels, total)
        _sample(out, self.name + "_sum", labels, hist.sum)


class Labelled:
    """A counter or gauge with labels whose children are :class:`Num`: for rare events."""

    __slots__ = ("children", "help", "kind", "name", "names")

    def __init__(self, name: str, help_text: str, kind: Kind, names: Sequence[str]) -> None:
        self.name, self.help, self.kind, self.names = name, help_text, kind, tuple(names)
        self.children: dict[tuple[str, ...], Num] = {}

    def labels(self, *values: str) -> Num:
        if len(values) != len(self.names):
            raise ValueError(f"{self.name}: labels {self.names}, got {values!r}")
        child = self.children.get(values)
        if child is None:  # setdefault: a reload builds its Runtime in a thread
            child = self.children.setdefault(values, Num())
        return child

    def family(self) -> Family:
        f = Family(self.name, self.help, self.kind, self.names)
        for values, child in list(self.children.items()):
            f.add(values, child.value)
        return f


class Metrics:
    def __init__(self) -> None:
        self.series: dict[tuple[str, str, str], Series] = {}
        self.budgets: Any = None  # the gateway's Budgets (budget/holder.py), read at scrape time
        self.credentials: Any = None  # the gateway's CredentialSources, read at scrape time
        self.failovers = Labelled("modelroute_failovers", "Moves from one backend to the next", "counter",
                                  ["route", "from_backend", "to_backend", "reason"])
        self.backend_up = Labelled("modelroute_backend_up", "Circuit state: 1 closed, 0 open", "gauge",
                                   ["route", "backend"])
        self.access_denied = Labelled("modelroute_access_denied", "Requests refused: the caller may not use the "
                                      "route", "counter", ["route"])
        self.config_reloads = Labelled("modelroute_config_reloads", "Config loads by result", "counter", ["result"])

    def series_for(self, route: str, provider: str, model: str) -> Series:
        key = (route, provider, model)
        s = self.series.get(key)
        if s is None:  # setdefault: a reload builds its Runtime in a thread
            s = self.series.setdefault(key, Series(key))
        return s

    def render(self) -> bytes:
        """The page, in the Prometheus text format 0.0.4 (runs in a thread, beside the loop)."""
        with gcpause.paused():  # a big page is many short-lived strings: no collection for them
            families = [*self._series_families(), *self._budget_families(), *self._credential_families(),
                        *(m.family() for m in (self.failovers, self.backend_up, self.access_denied,
                                               self.config_reloads))]
            # Joined and encoded a few thousand lines at a time: one join or encode of a whole
            # big page holds the GIL, and so the event loop, for tens of milliseconds.
            return b"".join("".join(f.lines[i:i + _CHUNK]).encode() for f in families
                            for i in range(0, len(f.lines), _CHUNK))

    def _series_families(self) -> list[Family]:
        requests = Family("modelroute_requests", "Upstream attempts by outcome (HTTP status, or "
                          "connect_error/timeout/stream_error/client_closed)", "counter", [*ROUTE_LABELS, "status"])
        tokens = Family("modelroute_tokens", "Tokens by type (input/output)", "counter", [*ROUTE_LABELS, "type"])
        cost = Family("modelroute_cost_usd", "Cost in USD from the price table", "counter", ROUTE_LABELS)
        duration = Family("modelroute_request_duration_seconds", "Request latency seen by the caller", "histogram",
                          ROUTE_LABELS)
        ttft = Family("modelroute_time_to_first_token_seconds", "Time to the first streamed chunk", "histogram",
                      ROUTE_LABELS)
        g_duration = Family("gen_ai_client_operation_duration_seconds", "GenAI operation duration", "histogram",
                            [*GENAI_LABELS, "error_type"])
        g_tokens = Family("gen_ai_client_token_usage", "Tokens used per GenAI operation", "histogram",
                          [*GENAI_LABELS, "gen_ai_token_type"])
        for s in list(self.series.values()):
            route, provider, model = labels = s.labels
            for status, n in list(s.requests.items()):
                requests.add((*labels, status), n)
            if not route:
                continue  # the unrouted series counts requests only
            tokens.add((*labels, "input"), s.input_tokens.value)
            tokens.add((*labels, "output"), s.output_tokens.value)
            cost.add(labels, s.cost.value)
            duration.add_histogram(labels, s.duration)
            if s.ttft.sum or any(s.ttft.counts):
                ttft.add_histogram(labels, s.ttft)
            for (operation, error), (d, i, o) in list(s.genai.items()):
                g = (operation, GENAI_PROVIDER.get(provider, provider), route, model)
                g_duration.add_histogram((*g, error), d)
                if any(i.counts):
                    g_tokens.add_histogram((*g, "input"), i)
                if any(o.counts):
                    g_tokens.add_histogram((*g, "output"), o)
        return [requests, tokens, cost, duration, ttft, g_duration, g_tokens]

    def _budget_families(self) -> list[Family]:
        """ModelBudget spend as this process knows it (in serve: the whole spend; in a pod: this
        sidecar's own); the labels come from the config, never from callers."""
        spent = Family("modelroute_budget_spent", "Spend in the current budget window (unit usd, tokens or requests)",
                       "gauge", ["budget", "window", "unit"])
        limit = Family("modelroute_budget_limit", "A budget window's limit", "gauge", ["budget", "window", "unit"])
        rejections = Family("modelroute_budget_rejections", "Requests refused with 429 budget_exceeded", "counter",
                            ["budget"])
        budgets = self.budgets
        for state in list(budgets.states.values()) if budgets is not None else ():
            for lease in state.leases:
                for unit in lease.units:
                    spent.add((state.name, lease.window.name, unit), lease.used.get(unit))
                    limit.add((state.name, lease.window.name, unit), lease.limit.get(unit))
            rejections.add((state.name,), state.rejections)
        return [spent, limit, rejections]

    def _credential_families(self) -> list[Family]:
        """Workload identity credentials: renewals by result and the expiry of the one held, per
        ProviderKey (an alert on renewal failures or a near expiry catches a broken trust policy
        before requests fail)."""
        renewals = Family("modelroute_credential_renewals", "Workload identity credential fetches by result",
                          "counter", ["provider_key", "result"])
        expiry = Family("modelroute_credential_expiry_timestamp_seconds", "When the workload identity credential "
                        "held now expires (Unix time)", "gauge", ["provider_key"])
        sources = self.credentials.by_name if self.credentials is not None else {}
        for name, src in sorted(sources.items()):
            counts = getattr(src, "renewals", None)
            if counts is None:
                continue  # a static or misconfigured source: nothing is fetched
            for result in ("success", "failure"):
                renewals.add((name, result), counts[result])
            if src.expires_at is not None:
                expiry.add((name,), src.expires_at)
        return [renewals, expiry]

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
