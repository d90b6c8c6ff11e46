"""The Grafana dashboard: valid JSON, sane layout, and every metric (and label) it queries is one
a real sidecar exports, after real traffic: success, failover and a stream."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.chart.chart import find, render
from tests.chart.dashboard import dashboard, panels, queries, variable_queries
from tests.chart.promql import Usage, parse, parse_grafana_query
from tests.controlplane.cluster import Helm
from tests.fakes.openai import FakeOpenAI
from tests.gateway.harness import FAST, model_route, provider_key
from tests.gateway.procs import modelroute, scrape

# DESIGN.md's metrics: the dashboard shows every one of them.
DESIGN_METRICS = {
    "modelroute_requests_total", "modelroute_tokens_total", "modelroute_cost_usd_total",
    "modelroute_failovers_total", "modelroute_backend_up", "modelroute_request_duration_seconds_bucket",
    "modelroute_time_to_first_token_seconds_bucket", "gen_ai_client_operation_duration_seconds_bucket",
    "gen_ai_client_token_usage_bucket",
}
# Labels Prometheus itself puts on every scraped series (the Prometheus Operator adds container).
PROMETHEUS_LABELS = {"job", "instance", "container"}
LEGEND_LABEL = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")
VARIABLE = re.compile(r"\$\{?([a-zA-Z_][a-zA-Z0-9_]*)")


def test_dashboard_is_valid_and_laid_out() -> None:
    d = dashboard()
    assert d["uid"] == "modelroute" and d["title"] and isinstance(d["schemaVersion"], int)
    ps = panels(d)
    ids = [p["id"] for p in ps]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in d["templating"]["list"]}
    assert {"datasource", "namespace", "route", "provider", "model"} <= variables
    occupied: dict[tuple[int, int], str] = {}
    for p in ps:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in occupied, f"{p['title']!r} overlaps {occupied[(x, y)]!r}"
                occupied[(x, y)] = p["title"]
        if p["type"] != "row":
            assert p["targets"], f"{p['title']!r} has no query"
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            for t in p["targets"]:
                assert t["datasource"] == p["datasource"], p["title"]
    for where, expr, _ in queries(d):
        used = set(VARIABLE.findall(expr)) - {"__rate_interval", "__range", "__interval"}
        assert used <= variables, f"{where} uses undefined variables {used - variables}"


def test_dashboard_shows_every_metric_of_the_design() -> None:
    used = set().union(*(parse(expr).metrics for _, expr, _ in queries(dashboard())))
    assert used >= DESIGN_METRICS, f"not on the dashboard: {sorted(DESIGN_METRICS - used)}"


def scrape_labels(helm: Helm, tmp_path: Path) -> set[str]:
    """What the chart's PodMonitor puts on every sidecar series, plus Prometheus' own."""
    docs = render(helm, tmp_path, {"monitoring": {"podMonitor": {"enabled": True}}})
    pm = find(docs, "PodMonitor")
    targets = {r["targetLabel"] for e in pm["spec"]["podMetricsEndpoints"] for r in e.get("relabelings", [])}
    assert "namespace" in targets
    return targets | PROMETHEUS_LABELS


def series_labels(exposition: str) -> dict[str, set[str]]:
    """Sample name -> label names, for every sample of a /metrics scrape."""
    out: dict[str, set[str]] = {}
    for fam in text_string_to_metric_families(exposition):
        for s in fam.samples:
            out.setdefault(s.name, set()).update(s.labels)
    return out


async def drive_traffic(tmp_path: Path) -> str:
    """A real `modelroute serve` in front of two fake OpenAI upstreams: a plain request, a
    failover and a stream; returns the scrape of /metrics."""
    async with FakeOpenAI(keys=["k-a"]) as a, FakeOpenAI(keys=["k-b"]) as b:
        cfg = tmp_path / "routes.yaml"
        fast: dict[str, Any] = dict(FAST)
        cfg.write_text(yaml.safe_dump_all([
            *provider_key("primary", "openai", a.base_url, ["k-a"]),
            *provider_key("secondary", "openai", b.base_url, ["k-b"]),
            model_route("chat", ("primary", "gpt-4o-mini"), ("secondary", "gpt-4o"), **fast),
        ]))
        with modelroute(tmp_path, "serve", "-f", str(cfg)) as gp:
            client = openai.AsyncOpenAI(base_url=gp.url, api_key="placeholder", max_retries=0)
            try:
                messages: Any = [{"role": "user", "content": "hello there"}]
                ok = await client.chat.completions.with_raw_response.create(model="chat", messages=messages)
                assert ok.headers["x-modelroute-backend"] == "primary/gpt-4o-mini"
                a.faults.fail_next(1, 503)
                failed_over = await client.chat.completions.with_raw_response.create(model="chat", messages=messages)
                assert failed_over.headers["x-modelroute-backend"] == "secondary/gpt-4o"
                stream = await client.chat.completions.create(
                    model="chat", messages=messages, stream=True, stream_options={"include_usage": True})
                chunks = [c async for c in stream]
                assert any(c.choices and c.choices[0].delta.content for c in chunks)
                with pytest.raises(openai.NotFoundError):
                    await client.chat.completions.create(model="no-such-model", messages=messages)
            finally:
                await client.close()
            return scrape(gp)


async def test_every_dashboard_metric_and_label_is_exported_by_a_real_sidecar(
        helm: Helm, tmp_path: Path) -> None:
    exported = series_labels(await drive_traffic(tmp_path))
    extra = scrape_labels(helm, tmp_path)
    d = dashboard()
    checked: list[tuple[str, str, Usage, str]] = [(w, e, parse(e), legend) for w, e, legend in queries(d)]
    checked += [(w, q, parse_grafana_query(q), "") for w, q in variable_queries(d)]
    problems: list[str] = []
    for where, expr, usage, legend in checked:
        if not usage.selectors:
            problems.append(f"{where}: no metric in {expr!r}")
        available = set(extra)
        for sel in usage.selectors:
            if sel.metric not in exported:
                problems.append(f"{where}: {sel.metric} is not in the sidecar's /metrics")
                continue
            labels = exported[sel.metric] | extra
            available |= labels
            if not sel.labels <= labels:
                problems.append(f"{where}: {sel.metric} has no label(s) {sorted(sel.labels - labels)}")
        if not usage.grouping <= available | {"le"}:
            problems.append(f"{where}: groups by unknown label(s) {sorted(usage.grouping - available - {'le'})}")
        legend_labels = set(LEGEND_LABEL.findall(legend))
        shown = usage.grouping if usage.grouping else available
        if not legend_labels <= shown:
            problems.append(f"{where}: legend shows label(s) {sorted(legend_labels - shown)} the query drops")
    assert not problems, "\n".join(problems)


def test_the_check_catches_a_metric_the_sidecar_does_not_export() -> None:
    """The comparison above is only as good as its parsing: a made-up name must stand out."""
    exposition = "# TYPE modelroute_requests_total counter\nmodelroute_requests_total{route=\"r\"} 1\n"
    exported = series_labels(exposition)
    usage = parse('sum(rate(modelroute_request_total{route="r"}[5m])) / sum(rate(modelroute_requests_total[5m]))')
    assert [s.metric for s in usage.selectors if s.metric not in exported] == ["modelroute_request_total"]
