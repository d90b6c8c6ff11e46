"""Run a real gateway (aiohttp server on loopback) from resource documents, for tests."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import openai
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from modelroute_sidecar.app import DEFAULT_UPSTREAM_CLIENT, Gateway, admin_app, api_runner
from modelroute_sidecar.compile import compile_resources
from modelroute_sidecar.config import GatewayConfig
from modelroute_sidecar.router import Clock
from tests.controlplane.cluster import free_port

API = "modelroute.dev/v1alpha1"
UPSTREAM_CLIENT = os.environ.get("MODELROUTE_UPSTREAM_CLIENT")


def provider_key(name: str, provider: str, base_url: str | None, keys: Iterable[str] | None = ("sk-test",),
                 models: list[str] | None = None, **spec: Any) -> list[dict[str, Any]]:
    """A ProviderKey and (when ``keys``) its Secret, as one would `kubectl apply` them."""
    body: dict[str, Any] = {"provider": provider, **spec}
    if base_url is not None:
        body["baseURL"] = base_url
    if models is not None:
        body["models"] = models
    docs: list[dict[str, Any]] = []
    if keys is not None:
        body["secretRef"] = {"name": f"{name}-key"}
        docs.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"{name}-key"},
                     "stringData": {"apiKey": "\n".join(keys)}})
    docs.append({"apiVersion": API, "kind": "ProviderKey", "metadata": {"name": name}, "spec": body})
    return docs


def model_route(model: str, *backends: str | tuple[str, str] | dict[str, Any], name: str | None = None,
                **spec: Any) -> dict[str, Any]:
    """A ModelRoute; a backend is "pk", ("pk", "model") or a full dict."""
    bs = []
    for b in backends:
        if isinstance(b, str):
            bs.append({"providerKey": b})
        elif isinstance(b, tuple):
            bs.append({"providerKey": b[0], "model": b[1]})
        else:
            bs.append(b)
    return {"apiVersion": API, "kind": "ModelRoute", "metadata": {"name": name or model.replace(".", "-")},
            "spec": {"model": model, "backends": bs, **spec}}


def user(content: Any) -> Any:
    """One user message, typed loosely so the SDK's TypedDicts do not fight test data."""
    return [{"role": "user", "content": content}]


# Fast defaults for tests: little backoff, short timeouts, so failures show quickly.
FAST: dict[str, Any] = {"retries": {"backoffBaseSeconds": 0.01, "backoffMaxSeconds": 0.05},
        "timeouts": {"connectSeconds": 2, "firstByteSeconds": 5, "betweenChunksSeconds": 5, "totalSeconds": 20}}


@dataclass
class RunningGateway:
    gateway: Gateway
    url: str  # base URL for the OpenAI SDK: http://127.0.0.1:P/v1
    root: str  # http://127.0.0.1:P
    metrics_url: str

    def client(self, **kw: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.url, api_key="modelroute-placeholder", max_retries=0, **kw)

    def apply(self, docs: Iterable[Mapping[str, Any]], base: GatewayConfig | None = None) -> None:
        result = compile_resources(list(docs), base=base)
        assert not result.errors, result.errors
        self.gateway.apply(result.config, result.keys)

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of /metrics, keyed by (name, sorted labels)."""
        async with aiohttp.ClientSession() as s, s.get(self.metrics_url) as r:
            text = await r.text()
        out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for fam in text_string_to_metric_families(text):
            for sample in fam.samples:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return out

    async def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        total = 0.0
        for (n, ls), v in (await self.metrics()).items():
            d = dict(ls)
            if n == name and all(d.get(k) == val for k, val in labels.items()):
                total += v
        return total


class ManualClock:
    """A monotonic clock that moves only when a test says so (breakers, key cooldowns)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@asynccontextmanager
async def running_gateway(docs: Iterable[Mapping[str, Any]], base: GatewayConfig | None = None,
                          clock: Clock = time.monotonic) -> AsyncIterator[RunningGateway]:
    # MODELROUTE_UPSTREAM_CLIENT=lean|aiohttp runs the suites with that upstream client.
    gw = Gateway(upstream_client=UPSTREAM_CLIENT or DEFAULT_UPSTREAM_CLIENT, clock=clock)
    result = compile_resources(list(docs), base=base)
    assert not result.errors, result.errors
    gw.apply(result.config, result.keys)
    await gw.start()
    api = api_runner(gw)
    admin = web.AppRunner(admin_app(gw), access_log=None)
    await api.setup()
    await admin.setup()
    port, mport = free_port(), free_port()
    await web.TCPSite(api, "127.0.0.1", port).start()
    await web.TCPSite(admin, "127.0.0.1", mport).start()
    try:
        yield RunningGateway(gw, f"http://127.0.0.1:{port}/v1", f"http://127.0.0.1:{port}",
                             f"http://127.0.0.1:{mport}/metrics")
    finally:
        await api.cleanup()
        await admin.cleanup()
        await gw.close()
