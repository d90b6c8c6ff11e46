"""The PromQL reader the dashboard test relies on: it must find every metric and nothing else."""

from __future__ import annotations

import pytest

from tests.chart.promql import PromQLError, Selector, family, parse, parse_grafana_query

CASES = [
    ('sum(rate(modelroute_requests_total{route=~"$route",status!~"2.."}[$__rate_interval]))',
     [Selector("modelroute_requests_total", frozenset({"route", "status"}))], set()),
    ('histogram_quantile(0.99, sum by (le, route) (rate(modelroute_request_duration_seconds_bucket[5m])))',
     [Selector("modelroute_request_duration_seconds_bucket")], {"le", "route"}),
    ('sum without (pod) (a_total) / ignoring(type) group_left(model) b_total',
     [Selector("a_total"), Selector("b_total")], {"pod", "type", "model"}),
    ('count(modelroute_backend_up{route="sum(x) by (y)"} == 0) or vector(0)',
     [Selector("modelroute_backend_up", frozenset({"route"}))], set()),
    ('sum(rate(m_total{model="gpt-4o", a=\'b{c}\'}[1h30m] offset 5m)) * 3600 > bool 1e3',
     [Selector("m_total", frozenset({"model", "a"}))], set()),
    ('{__name__="x_total", job="j"}', [Selector("x_total", frozenset({"job"}))], set()),
    ('topk(5, sort_desc(sum by (namespace) (increase(cost_total[$__range]))))', [Selector("cost_total")],
     {"namespace"}),
    ('sum(a:recorded:rate5m) and on (ns) b', [Selector("a:recorded:rate5m"), Selector("b")], {"ns"}),
]


@pytest.mark.parametrize(("expr", "selectors", "grouping"), CASES)
def test_parse_finds_metrics_matchers_and_grouping(expr: str, selectors: list[Selector], grouping: set[str]) -> None:
    usage = parse(expr)
    assert usage.selectors == selectors
    assert usage.grouping == grouping


def test_label_values_query() -> None:
    usage = parse_grafana_query('label_values(modelroute_requests_total{namespace=~"$namespace"}, route)')
    assert usage.selectors == [Selector("modelroute_requests_total", frozenset({"namespace"}))]
    assert usage.grouping == {"route"}


@pytest.mark.parametrize("expr", ['sum(rate(x{a="b"[5m]))', '{job="x"}', "x # y"])
def test_garbage_is_an_error_not_silence(expr: str) -> None:
    with pytest.raises(PromQLError):
        parse(expr)


def test_family() -> None:
    assert family("modelroute_request_duration_seconds_bucket") == "modelroute_request_duration_seconds"
    assert family("modelroute_requests_total") == "modelroute_requests"
    assert family("modelroute_backend_up") == "modelroute_backend_up"
