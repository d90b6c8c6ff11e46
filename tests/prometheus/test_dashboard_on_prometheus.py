"""The Grafana dashboard on a real Prometheus: a real `modelroute serve` in front of two fake
OpenAI upstreams, scraped every second with the labels the chart's PodMonitor (and
deploy/prometheus/scrape-config.yaml) give a sidecar; after two rounds of traffic, every panel
and template-variable query of charts/modelroute/dashboards/modelroute.json returns data.
The same check on real pods, discovered through the Kubernetes API, is in tests/node."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import openai
import yaml

from tests.fakes.openai import FakeOpenAI
from tests.gateway.harness import FAST, model_route, provider_key
from tests.gateway.procs import modelroute, scrape
from tests.prometheus.dashboard_data import (
    SCRAPE_INTERVAL,
    dashboard_problems,
    requests_in,
    traffic_prometheus_has_seen,
    traffic_round,
)
from tests.prometheus.server import Prometheus

NAMESPACE = "team-a"


async def test_every_dashboard_query_returns_data(prometheus_binary: Path, tmp_path: Path) -> None:
    async with FakeOpenAI(keys=["k-a"]) as a, FakeOpenAI(keys=["k-b"]) as b:
        cfg = tmp_path / "routes.yaml"
        fast: dict[str, Any] = dict(FAST)
        cfg.write_text(yaml.safe_dump_all([
            *provider_key("primary", "openai", a.base_url, ["k-a"]),
            *provider_key("secondary", "openai", b.base_url, ["k-b"]),
            model_route("chat", ("primary", "gpt-4o-mini"), ("secondary", "gpt-4o"), **fast),
        ]))
        with modelroute(tmp_path, "serve", "-f", str(cfg)) as gp:
            config = {
                "global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": SCRAPE_INTERVAL},
                "scrape_configs": [{
                    "job_name": "modelroute",
                    "static_configs": [{"targets": [f"127.0.0.1:{gp.metrics_port}"],
                                        "labels": {"namespace": NAMESPACE, "pod": "gateway-0", "app": "gateway"}}],
                }],
            }
            with Prometheus(prometheus_binary, tmp_path / "prometheus", config) as prom:
                client = openai.AsyncOpenAI(base_url=gp.url, api_key="placeholder", max_retries=0)
                try:
                    await traffic_prometheus_has_seen(
                        prom, NAMESPACE, rounds=2,
                        send=lambda: traffic_round(client, "chat", a.faults),
                        sidecar_requests=lambda: asyncio.to_thread(lambda: requests_in(scrape(gp))))
                finally:
                    await client.close()
                problems = dashboard_problems(prom, NAMESPACE, want={
                    "namespace": {NAMESPACE}, "route": {"chat"}, "provider": {"openai"},
                    "model": {"gpt-4o-mini", "gpt-4o"}})
                assert not problems, "\n".join(problems)
