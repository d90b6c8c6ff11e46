"""The lock-free series export exactly what Prometheus histograms and counters would."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from modelroute_sidecar.metrics import BackendMetrics, Metrics


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
