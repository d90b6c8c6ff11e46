"""The lock-free series export exactly what Prometheus histograms and counters would."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from modelroute_sidecar.metrics import DURATION_BUCKETS, BackendMetrics, Family, Hist, Metrics, format_value


def samples(m: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(m.render().decode()) for s in fam.samples}


def test_histogram_buckets_are_cumulative_and_le_inclusive() -> None:
    m = Metrics()
    b = BackendMetrics(m, "chat", "openai", "gpt-4o", "openai/gpt-4o")
    for v in (0.01, 0.015, 0.5, 100.0):  # 0.01 sits exactly on a bound: it counts in le="0.01"
        b.duration.observe(v)
    got = samples(m)
    labels = {("route", "chat"), ("provider", "openai"), ("model", "gpt-4o")}

    def bucket(le: str) -> float:
        return got[("modelroute_request_duration_seconds_bucket", frozenset({*labels, ("le", le)}))]

    assert bucket("0.01") == 1 and bucket("0.02") == 2 and bucket("0.64") == 3 and bucket("+Inf") == 4
    assert got[("modelroute_request_duration_seconds_count", frozenset(labels))] == 4
    assert got[("modelroute_request_duration_seconds_sum", frozenset(labels))] == 100.525


def test_counters_survive_a_reload_that_rebuilds_backends() -> None:
    m = Metrics()
    BackendMetrics(m, "chat", "openai", "gpt-4o", "x").attempt("200")
    BackendMetrics(m, "chat", "openai", "gpt-4o", "x").attempt("200")  # a new Runtime, same series
    m.unrouted(404)
    got = samples(m)
    assert got[("modelroute_requests_total", frozenset({("route", "chat"), ("provider", "openai"),
                                                       ("model", "gpt-4o"), ("status", "200")}))] == 2
    assert got[("modelroute_requests_total", frozenset({("route", ""), ("provider", ""), ("model", ""),
                                                       ("status", "404")}))] == 1


def test_genai_metrics_use_semantic_convention_names() -> None:
    m = Metrics()
    BackendMetrics(m, "chat", "gemini", "gemini-2.5-flash", "g").genai("chat", 0.2, 10, 3)
    got = samples(m)
    base = {("gen_ai_operation_name", "chat"), ("gen_ai_provider_name", "gcp.gemini"),
            ("gen_ai_request_model", "chat"), ("gen_ai_response_model", "gemini-2.5-flash")}
    assert got[("gen_ai_client_operation_duration_seconds_count", frozenset({*base, ("error_type", "")}))] == 1
    assert got[("gen_ai_client_token_usage_sum", frozenset({*base, ("gen_ai_token_type", "input")}))] == 10
    assert got[("gen_ai_client_token_usage_sum", frozenset({*base, ("gen_ai_token_type", "output")}))] == 3


# The page is written by metrics.py, not prometheus_client (the sidecar does not load it); for
# the same data it must be byte for byte what prometheus_client's generate_latest writes.
LABEL_TEXT = st.text(st.characters(codec="utf-8"), max_size=12).filter(lambda s: "_created" not in s)


def prometheus_client_page(*metrics: Counter | Gauge | Histogram) -> str:
    """What prometheus_client writes for ``metrics``, less the ``_created`` series it adds
    (the gateway has none: they double the page for no use)."""
    registry = CollectorRegistry(auto_describe=False)
    for metric in metrics:
        registry.register(metric)
    lines = generate_latest(registry).decode().split("\n")  # not splitlines(): label values may hold U+0085
    return "".join(line + "\n" for line in lines[:-1] if "_created" not in line)


@given(st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**20), 10**20))
def test_values_are_written_as_prometheus_client_writes_them(value: float) -> None:
    assert format_value(value) == floatToGoString(value)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(LABEL_TEXT, LABEL_TEXT, st.floats(0, 1e12) | st.integers(0, 10**15)), max_size=4),
       st.lists(st.tuples(LABEL_TEXT, st.sampled_from([0.0, 1.0])), max_size=3))
def test_labelled_counters_and_gauges_as_prometheus_client(counts: list[tuple[str, str, float]],
                                                           ups: list[tuple[str, float]]) -> None:
    m = Metrics()
    theirs_counter = Counter("modelroute_failovers", "Moves from one backend to the next",
                             ["route", "from_backend", "to_backend", "reason"], registry=None)
    theirs_gauge = Gauge("modelroute_backend_up", "Circuit state: 1 closed, 0 open", ["route", "backend"],
                         registry=None)
    for route, backend, amount in counts:
        m.failovers.labels(route, backend, "b", "timeout").inc(amount)
        theirs_counter.labels(route, backend, "b", "timeout").inc(amount)
    for backend, up in ups:
        m.backend_up.labels("r\\\n\"", backend).set(up)
        theirs_gauge.labels("r\\\n\"", backend).set(up)
    ours = "".join(line for f in (m.failovers.family(), m.backend_up.family()) for line in f.lines)
    assert ours == prometheus_client_page(theirs_counter, theirs_gauge)


@settings(max_examples=60, deadline=None)
@given(LABEL_TEXT, LABEL_TEXT, st.lists(st.floats(0, 200) | st.sampled_from(DURATION_BUCKETS), max_size=30))
def test_histograms_as_prometheus_client(route: str, model: str, observed: list[float]) -> None:
    ours, hist = Family("modelroute_request_duration_seconds", "Request latency seen by the caller", "histogram",
                        ["route", "provider", "model"]), Hist(DURATION_BUCKETS)
    theirs = Histogram("modelroute_request_duration_seconds", "Request latency seen by the caller",
                       ["route", "provider", "model"], buckets=DURATION_BUCKETS, registry=None)
    child = theirs.labels(route, "openai", model)  # a series is rendered from its first Backend on
    for value in observed:
        hist.observe(value)
        child.observe(value)
    ours.add_histogram((route, "openai", model), hist)
    assert "".join(ours.lines) == prometheus_client_page(theirs)
