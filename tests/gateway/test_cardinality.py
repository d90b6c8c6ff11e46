"""Names callers make up cannot grow metrics or memory, and a scrape never holds up a request.

Through the real `modelroute serve` process: thousands of distinct model names on a glob
ProviderKey leave /metrics (size and series) and the process's memory where they were, and a
chat request sent while a big /metrics page renders answers as fast as without one.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.openai import FakeOpenAI
from tests.gateway.harness import FAST, model_route, provider_key
from tests.gateway.procs import GatewayProcess, modelroute
from tests.gateway.test_reload import write_yaml

CONCURRENCY = 32


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def get_metrics(s: aiohttp.ClientSession, gp: GatewayProcess) -> str:
    async with s.get(gp.metrics_url) as r:
        assert r.status == 200
        return await r.text()


async def get_page(s: aiohttp.ClientSession, gp: GatewayProcess) -> bytes:
    """The page undecoded: decoding tens of MB at once would hold up this test's own loop."""
    async with s.get(gp.metrics_url) as r:
        assert r.status == 200
        return await r.read()


def series(text: str) -> int:
    return sum(len(f.samples) for f in text_string_to_metric_families(text))


async def send(s: aiohttp.ClientSession, gp: GatewayProcess, names: list[str]) -> None:
    """One chat request per name, ``CONCURRENCY`` at a time; every one must succeed."""
    queue = list(reversed(names))

    async def worker() -> None:
        while queue:
            name = queue.pop()
            async with s.post(gp.url + "/chat/completions", json={
                    "model": name, "messages": [{"role": "user", "content": "hi"}]}) as r:
                assert r.status == 200, await r.text()
                await r.read()

    await asyncio.gather(*[worker() for _ in range(CONCURRENCY)])


async def test_made_up_model_names_leave_metrics_and_memory_bounded(tmp_path: Path) -> None:
    async with FakeOpenAI() as up:
        cfg = tmp_path / "routes.yaml"
        write_yaml(cfg, [*provider_key("openai", "openai", up.base_url, models=["gpt-*"]),
                         model_route("chat", ("openai", "gpt-4o"), **FAST)])
        with modelroute(tmp_path, "serve", "-f", str(cfg)) as gp:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as s:
                # Warm up past every cache the gateway keeps, then measure.
                await send(s, gp, [f"gpt-warm-{i}" for i in range(2000)])
                before = await get_metrics(s, gp)
                rss_before = rss_bytes(gp.proc.pid)
                await send(s, gp, [f"gpt-made-up-{i}" for i in range(4000)])
                after = await get_metrics(s, gp)
                rss_after = rss_bytes(gp.proc.pid)
        assert series(after) == series(before)
        assert len(after) - len(before) < 200, (len(before), len(after))  # counters gain a digit or two
        assert "made-up" not in after and "warm" not in after
        requests = [s for f in text_string_to_metric_families(after) for s in f.samples
                    if s.name == "modelroute_requests_total" and s.labels.get("route") == "gpt-*"]
        assert [(s.labels["model"], s.value) for s in requests] == [("gpt-*", 6000)]  # still counted
        # 4 KiB a name before names were bounded; now only allocator noise.
        assert rss_after - rss_before < 4000 * 512, (rss_before, rss_after)
        assert len(up.requests) == 6000


async def test_a_request_during_a_big_scrape_is_not_held_up(tmp_path: Path) -> None:
    async with FakeOpenAI() as up:
        cfg = tmp_path / "routes.yaml"
        docs = [*provider_key("openai", "openai", up.base_url), model_route("chat", ("openai", "gpt-4o"), **FAST)]
        # Five backends a route: 30,000 series, a page (60 MB) that takes a while to render.
        backends = [("openai", m) for m in ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "o3")]
        docs += [model_route(f"m{i}", *backends, name=f"m{i}") for i in range(6000)]
        cfg.write_text(yaml.dump_all(docs, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper)))
        with modelroute(tmp_path, "serve", "-f", str(cfg)) as gp:
            async with aiohttp.ClientSession() as s:

                async def chat() -> float:
                    started = time.perf_counter()
                    async with s.post(gp.url + "/chat/completions", json={
                            "model": "chat", "messages": [{"role": "user", "content": "hi"}]}) as r:
                        assert r.status == 200
                        await r.read()
                    return time.perf_counter() - started

                baseline = [await chat() for _ in range(150)][30:]
                # Held up, a request waits out the whole render (seconds); the render thread sharing
                # the GIL and the cores costs a request a few switch intervals and time slices.
                bound = max(0.25, 20 * statistics.median(baseline), 8 * max(baseline))
                started = time.perf_counter()
                scrape = asyncio.create_task(get_page(s, gp))
                during: list[float] = []
                while not scrape.done():
                    during.append(await chat())
                page = await scrape
                scrape_seconds = time.perf_counter() - started
        assert b'route="m5999"' in page
        assert scrape_seconds > 2 * bound, "the scrape was too quick to show a stall"
        assert len(during) >= 5
        assert max(during) < bound, (max(during), bound, scrape_seconds)
