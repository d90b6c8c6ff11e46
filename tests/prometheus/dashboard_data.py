"""Every query of the Grafana dashboard, as Grafana sends it, on a real Prometheus that scraped
real sidecars after real traffic: each must return data.

"Data" is at least one sample with a finite value: an empty vector is a panel that says
"No data", and NaN (a quantile of nothing) is one that draws nothing.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.chart.dashboard import dashboard, expand, queries, variable_queries
from tests.chart.promql import parse_grafana_query
from tests.fakes.base import Faults
from tests.prometheus.server import Prometheus

# Scrape every second, so that a minute's rate holds plenty of samples; the durations are
# what Grafana would compute for a short time range at that scrape interval.
SCRAPE_INTERVAL = "1s"
DURATIONS = {"__rate_interval": "1m", "__interval": "15s", "__range": "10m"}
ALL = ".*"  # the dashboard's allValue for route, provider and model

MESSAGES: Any = [{"role": "user", "content": "hello there"}]


async def traffic_round(client: openai.AsyncOpenAI, model: str, primary_faults: Faults) -> None:
    """What every panel shows something of: a plain request, a failover (the primary answers
    503 once), a stream (time to first token) and a request for a model no route serves."""
    ok = await client.chat.completions.with_raw_response.create(model=model, messages=MESSAGES)
    assert ok.http_response.status_code == 200
    primary_faults.fail_next(1, 503)
    failed_over = await client.chat.completions.with_raw_response.create(model=model, messages=MESSAGES)
    assert failed_over.headers["x-modelroute-backend"] != ok.headers["x-modelroute-backend"], "no failover"
    stream = await client.chat.completions.create(
        model=model, messages=MESSAGES, stream=True, stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert any(c.choices and c.choices[0].delta.content for c in chunks)
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="no-such-model", messages=MESSAGES)


def requests_seen(prom: Prometheus, namespace: str) -> float:
    result = prom.query(f'sum(modelroute_requests_total{{namespace="{namespace}"}})')
    return float(result[0]["value"][1]) if result else -1.0


def requests_in(exposition: str) -> float:
    """The sum of modelroute_requests_total in a /metrics scrape."""
    return sum(s.value for fam in text_string_to_metric_families(exposition) for s in fam.samples
               if s.name == "modelroute_requests_total")


async def traffic_prometheus_has_seen(
    prom: Prometheus, namespace: str, rounds: int, send: Callable[[], Awaitable[None]],
    sidecar_requests: Callable[[], Awaitable[float]], within: float = 60.0,
) -> None:
    """Send `rounds` rounds of traffic, each time waiting until Prometheus has scraped all of
    it (its modelroute_requests_total is the sidecars' own). Two rounds at least: a counter's
    first sample is where increase() and rate() start from, so the second round is what they see."""
    for i in range(rounds):
        await send()
        expected = await sidecar_requests()
        assert expected > 0
        deadline = time.monotonic() + within
        while (seen := requests_seen(prom, namespace)) != expected:
            if time.monotonic() > deadline:
                raise TimeoutError(f"prometheus has {seen:g} requests in namespace {namespace} after round {i + 1}, "
                                   f"the sidecars {expected:g}\n{prom.logs(30)}")
            await asyncio.sleep(0.25)


def has_data(samples: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(s["value"][1])) for s in samples)


def dashboard_problems(prom: Prometheus, namespace: str, want: dict[str, set[str]]) -> list[str]:
    """Every panel query, with the namespace variable set to `namespace` and the others to
    All, must return data; every template variable must offer at least the values in `want`."""
    d = dashboard()
    variables = {"namespace": namespace, "route": ALL, "provider": ALL, "model": ALL}
    problems: list[str] = []
    for where, expr, _ in queries(d):
        sent = expand(expr, variables, DURATIONS)
        if not has_data(prom.query(sent)):
            problems.append(f"{where}: no data for {sent}")
    for where, query in variable_queries(d):
        label = next(iter(parse_grafana_query(query).grouping))
        selector = expand(query, variables, DURATIONS).split("label_values(", 1)[1].rsplit(",", 1)[0]
        offered = set(prom.label_values(label, selector))
        wanted = want.get(where.removeprefix("variable "), set())
        if not offered or not wanted <= offered:
            problems.append(f"{where}: offers {sorted(offered)}, wanted at least {sorted(wanted)}")
    return problems
