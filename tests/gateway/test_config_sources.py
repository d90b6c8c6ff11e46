"""Config sources fail safe, and reloads never stall requests (the real `modelroute` process).

A source that vanishes or cannot be read keeps the last good config serving, says so in the
log and counts ``modelroute_config_reloads_total{result="error"}``, exactly as a broken edit
does. A reload of a big config is read and compiled off the event loop: requests in flight
do not wait for it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from modelroute_sidecar.compile import compile_resources
from tests.fakes.base import wait_until
from tests.fakes.openai import FakeOpenAI
from tests.gateway.harness import FAST, model_route, provider_key, user
from tests.gateway.procs import GatewayProcess, modelroute, scrape
from tests.gateway.test_reload import project, write_yaml
from tests.gateway.traffic import Traffic
from tests.operator import kubelet_volume

ERRORS = 'modelroute_config_reloads_total{result="error"}'
SUCCESSES = 'modelroute_config_reloads_total{result="success"}'


def counter(gp: GatewayProcess, sample: str) -> float:
    for line in scrape(gp).splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


async def fails_safe(gp: GatewayProcess, traffic: Traffic, break_source: Callable[[], object],
                     restore: Callable[[], object]) -> None:
    """Break the source: an error is counted and logged, traffic keeps flowing; restore it: it reloads."""
    errors, successes = counter(gp, ERRORS), counter(gp, SUCCESSES)
    break_source()
    await wait_until(lambda: counter(gp, ERRORS) == errors + 1, within=20)
    n = len(traffic.ok)
    await wait_until(lambda: len(traffic.ok) >= n + 20, within=20)
    assert "keeping the previous config" in gp.logs()
    restore()
    await wait_until(lambda: counter(gp, SUCCESSES) == successes + 1, within=20)
    assert counter(gp, ERRORS) == errors + 1


async def test_serve_keeps_its_config_when_the_yaml_vanishes_or_cannot_be_read(tmp_path: Path) -> None:
    async with FakeOpenAI() as up:
        conf = tmp_path / "conf"
        conf.mkdir()
        cfg = conf / "routes.yaml"
        docs = [*provider_key("openai", "openai", up.base_url), model_route("chat", ("openai", "gpt-4o"), **FAST)]
        write_yaml(cfg, docs)
        with modelroute(tmp_path, "serve", "-f", str(conf), "--reload-interval", "0.1") as gp:
            traffic = Traffic(gp.url)
            await wait_until(lambda: len(traffic.ok) >= 20, within=20)
            # The YAML deleted (the directory left empty): was an empty config, every route 404.
            await fails_safe(gp, traffic, cfg.unlink, lambda: write_yaml(cfg, docs))
            # The file replaced by a symlink to nothing (a config volume gone from under it).
            gone = tmp_path / "gone.yaml"

            def dangle() -> None:
                cfg.unlink()
                cfg.symlink_to(gone)

            await fails_safe(gp, traffic, dangle, lambda: write_yaml(gone, docs))
            # Bytes that are not text.
            await fails_safe(gp, traffic, lambda: gone.write_bytes(b"\xff\xfe\x00garbage"),
                             lambda: write_yaml(gone, docs))
            # The whole directory gone.
            def recreate() -> None:
                conf.mkdir()
                write_yaml(cfg, docs)

            await fails_safe(gp, traffic, lambda: shutil.rmtree(conf), recreate)
            await traffic.stop()
            assert traffic.failed == []
            assert "no YAML files" in gp.logs() and "dangling symlink" in gp.logs() and "not UTF-8" in gp.logs()


async def test_serve_keeps_its_config_when_a_named_file_vanishes(tmp_path: Path) -> None:
    async with FakeOpenAI() as up:
        cfg = tmp_path / "routes.yaml"
        docs = [*provider_key("openai", "openai", up.base_url), model_route("chat", ("openai", "gpt-4o"), **FAST)]
        write_yaml(cfg, docs)
        with modelroute(tmp_path, "serve", "-f", str(cfg), "--reload-interval", "0.1") as gp:
            traffic = Traffic(gp.url)
            await wait_until(lambda: len(traffic.ok) >= 20, within=20)
            await fails_safe(gp, traffic, cfg.unlink, lambda: write_yaml(cfg, docs))
            await traffic.stop()
            assert traffic.failed == []
            assert "no such file or directory" in gp.logs()


async def test_sidecar_keeps_its_config_when_its_volumes_vanish(tmp_path: Path) -> None:
    async with FakeOpenAI(keys=["k1"]) as up:
        vol = tmp_path / "etc-modelroute"
        docs = [*provider_key("openai", "openai", up.base_url, ["k1"]), model_route("chat", ("openai", "gpt-4o"),
                                                                                    **FAST)]
        project(vol, docs)
        with modelroute(tmp_path, "sidecar", "--config-dir", str(vol), "--reload-interval", "0.1") as gp:
            traffic = Traffic(gp.url)
            await wait_until(lambda: len(traffic.ok) >= 20, within=20)
            # The ConfigMap's volume emptied, then the keys' volume removed outright.
            await fails_safe(gp, traffic, lambda: shutil.rmtree(vol / "config"), lambda: project(vol, docs))
            await fails_safe(gp, traffic, lambda: shutil.rmtree(vol / "keys"), lambda: project(vol, docs))
            # The ..data link pointing at nothing: every file behind it dangles.
            data = vol / "config" / "..data"

            def dangle() -> None:
                tmp = vol / "config" / "..data_tmp"
                tmp.symlink_to("..gone")
                os.replace(tmp, data)

            def reproject() -> None:
                shutil.rmtree(vol)
                project(vol, docs)

            await fails_safe(gp, traffic, dangle, reproject)
            await traffic.stop()
            assert traffic.failed == []
            assert {r.headers["authorization"] for r in up.requests} == {"Bearer k1"}


def small_docs(base_url: str) -> list[dict[str, Any]]:
    return [*provider_key("openai", "openai", base_url), model_route("chat", ("openai", "gpt-4o"), **FAST)]


def big_docs(base_url: str, routes: int) -> list[dict[str, Any]]:
    return small_docs(base_url) + [model_route(f"m{i}", ("openai", "gpt-4o"), name=f"m{i}") for i in range(routes)]


def prepare_big_reload(mode: str, tmp_path: Path, base_url: str) -> tuple[list[str], Callable[[], None]]:
    """The gateway's arguments, and the one quick step that swaps in a big config (everything
    slow happens here, before the clock starts: this process must not stall either)."""
    if mode == "serve":
        cfg, big = tmp_path / "routes.yaml", tmp_path / "big.yaml.next"
        write_yaml(cfg, small_docs(base_url))
        big.write_text(yaml.dump_all(big_docs(base_url, 10_000), Dumper=getattr(yaml, "CSafeDumper",
                                                                                  yaml.SafeDumper)))
        return ["serve", "-f", str(cfg)], lambda: os.replace(big, cfg)
    # The sidecar's JSON loads far faster than YAML (PyYAML, then pydantic): it takes
    # four times the routes to make a reload as long.
    vol = tmp_path / "etc-modelroute"
    project(vol, small_docs(base_url))
    payload = compile_resources(big_docs(base_url, 40_000)).config.dump_json().encode()

    def swap() -> None:
        kubelet_volume.write(vol / "config", {"config.json": payload})

    return ["sidecar", "--config-dir", str(vol)], swap


@pytest.mark.parametrize("mode", ["serve", "sidecar"])
async def test_a_big_reload_does_not_stall_requests(tmp_path: Path, mode: str) -> None:
    """10,000 routes take seconds to read and compile; requests meanwhile answer as fast as before."""
    async with FakeOpenAI() as up:
        args, swap = prepare_big_reload(mode, tmp_path, up.base_url)
        with modelroute(tmp_path, *args, "--reload-interval", "0.1") as gp:
            client = openai.AsyncOpenAI(base_url=gp.url, api_key="x", max_retries=0)
            latencies: list[tuple[float, float]] = []  # (start, seconds)

            async def one() -> None:
                started = time.perf_counter()
                r = await client.chat.completions.create(model="chat", messages=user("a b c"))
                assert r.choices[0].message.content == "echo: a b c"
                latencies.append((started, time.perf_counter() - started))

            for _ in range(200):  # the baseline, from this run on this machine
                await one()
            baseline = [s for _, s in latencies[50:]]
            # A stall is the whole reload (seconds). A second busy thread in the gateway on a loaded
            # machine stretches the worst request a few times over the baseline's worst (4x seen).
            bound = max(0.25, 20 * statistics.median(baseline), 8 * max(baseline))
            latencies.clear()
            loop_task_stop = asyncio.Event()

            async def loop() -> None:
                while not loop_task_stop.is_set():
                    await one()

            task = asyncio.create_task(loop())
            reloads = gp.logs().count("config reloaded")
            written = time.perf_counter()
            swap()
            await wait_until(lambda: gp.logs().count("config reloaded") > reloads, within=120, interval=0.05)
            reloaded = time.perf_counter()
            loop_task_stop.set()
            await task
            during = [s for start, s in latencies if written <= start <= reloaded]
            assert reloaded - written > 2 * bound, "the reload was too quick to show a stall"
            assert len(during) >= 10
            assert max(during) < bound, (max(during), bound, reloaded - written)
            r = await client.chat.completions.create(model="m9999", messages=user("a b c"))
            assert r.choices[0].message.content == "echo: a b c"
