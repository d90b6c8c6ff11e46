"""Under load (bounded loops, 32 callers at once) through the real `modelroute serve` process.

A primary that is killed, answers 500 / 429 / garbage / an invalid stream, or hangs, next to a
healthy secondary: not one request fails. A reload and a key rotation under load: not one
request fails, and none waits longer than the same run's baseline allows.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.fakes.base import wait_until
from tests.fakes.openai import FakeOpenAI
from tests.gateway.harness import FAST, model_route, provider_key
from tests.gateway.procs import GatewayProcess, modelroute
from tests.gateway.test_reload import write_yaml

CONCURRENCY = 32
# A hanging primary costs the first callers this long; a busy machine must not reach it otherwise.
SPEC = {**FAST, "timeouts": {**FAST["timeouts"], "firstByteSeconds": 2}}


@dataclass
class Load:
    """``total`` chat requests from ``CONCURRENCY`` callers; every second one streams."""

    gp: GatewayProcess
    total: int
    streams: bool = True
    done: int = 0
    failed: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    backends: list[str] = field(default_factory=list)

    async def run(self) -> Load:
        started = 0
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as s:

            async def caller() -> None:
                nonlocal started
                while started < self.total:
                    started += 1
                    stream = self.streams and started % 2 == 0
                    t = time.perf_counter()
                    try:
                        self.backends.append(await self.one(s, stream))
                    except Exception as e:  # every failure is recorded; the test asserts there are none
                        self.failed.append(f"{type(e).__name__}: {e}")
                    self.latencies.append(time.perf_counter() - t)
                    self.done += 1

            await asyncio.gather(*[caller() for _ in range(CONCURRENCY)])
        return self

    async def one(self, s: aiohttp.ClientSession, stream: bool) -> str:
        body = {"model": "chat", "messages": [{"role": "user", "content": "a b c"}], "stream": stream}
        async with s.post(self.gp.url + "/chat/completions", json=body) as r:
            raw = await r.read()
            assert r.status == 200, raw[:300]
            if not stream:
                assert orjson.loads(raw)["choices"][0]["message"]["content"] == "echo: a b c"
                return r.headers["x-modelroute-backend"]
        events = [line[6:] for line in raw.split(b"\n") if line.startswith(b"data: ")]
        assert events[-1] == b"[DONE]", raw[-300:]
        chunks = [orjson.loads(e) for e in events[:-1]]
        assert not any("error" in c for c in chunks), raw[-300:]
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
        assert text == "echo: a b c", text
        return r.headers["x-modelroute-backend"]


@contextmanager
def fake_openai_process(keys: list[str]) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A fake OpenAI in its own process, so it can be killed as a crashing provider is."""
    code = ("import asyncio\nfrom tests.fakes.openai import FakeOpenAI\n"
            "async def main():\n"
            f"    async with FakeOpenAI(keys={keys!r}) as up:\n"
            "        print(up.base_url, flush=True)\n"
            "        await asyncio.Event().wait()\n"
            "asyncio.run(main())\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, cwd=os.getcwd())
    try:
        assert proc.stdout is not None
        yield proc, proc.stdout.readline().decode().strip()
    finally:
        proc.kill()
        proc.wait()


def pair_config(path: Path, primary_url: str, secondary_url: str) -> None:
    write_yaml(path, [*provider_key("p", "openai", primary_url, ["k-p"]),
                      *provider_key("s", "openai", secondary_url, ["k-s"]),
                      model_route("chat", ("p", "gpt-4o"), ("s", "gpt-4o-mini"), **SPEC)])


async def test_a_killed_primary_fails_no_request(tmp_path: Path) -> None:
    async with FakeOpenAI(keys=["k-s"]) as secondary:
        with fake_openai_process(["k-p"]) as (primary, url):
            cfg = tmp_path / "routes.yaml"
            pair_config(cfg, url, secondary.base_url)
            with modelroute(tmp_path, "serve", "-f", str(cfg)) as gp:
                # Non-streaming: a stream the primary had begun when it died cannot be saved
                # (its bytes reached the caller); everything else must be.
                load = Load(gp, 1500, streams=False)
                task = asyncio.create_task(load.run())
                await wait_until(lambda: load.done >= 300, within=60)
                primary.send_signal(signal.SIGKILL)
                await task
        assert load.failed == []
        assert load.backends.count("p/gpt-4o") >= 300 and "s/gpt-4o-mini" in load.backends


FAULTS: dict[str, Callable[[FakeOpenAI], Any]] = {
    "500": lambda up: up.faults.fail_next(10_000, 500),
    "429": lambda up: up.faults.fail_next(10_000, 429, retry_after=1),
    "garbage": lambda up: up.faults.fail_next(10_000, 200, body=b"<html>not what you asked for</html>"),
    "invalid-sse": lambda up: up.faults.garbage_mid_stream(0),
    "hanging": lambda up: up.faults.hang(),
}


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_a_failing_primary_fails_no_request(tmp_path: Path, fault: str) -> None:
    async with FakeOpenAI(keys=["k-p"]) as primary, FakeOpenAI(keys=["k-s"]) as secondary:
        cfg = tmp_path / "routes.yaml"
        pair_config(cfg, primary.base_url, secondary.base_url)
        with modelroute(tmp_path, "serve", "-f", str(cfg)) as gp:
            FAULTS[fault](primary)
            load = await Load(gp, 600).run()
            primary.faults.clear()
        assert load.failed == []
        assert primary.requests, "the primary was never tried"
        if fault != "invalid-sse":  # its non-streaming answers are fine
            assert set(load.backends) == {"s/gpt-4o-mini"}
        else:
            assert "s/gpt-4o-mini" in load.backends


def bound_from(baseline: list[float]) -> float:
    """Slower than this is a stall: several times the worst of the same run's quiet phase."""
    return max(0.25, 4 * max(baseline), 20 * statistics.median(baseline))


async def test_reload_and_key_rotation_under_load_fail_nothing_and_stall_nothing(tmp_path: Path) -> None:
    async with FakeOpenAI(keys=["k1", "k2"]) as up, FakeOpenAI(keys=["k-other"]) as other:
        cfg = tmp_path / "routes.yaml"

        def config(key: str, *extra: tuple[str, str]) -> None:
            write_yaml(cfg, [*provider_key("openai", "openai", up.base_url, [key]),
                             *provider_key("other", "openai", other.base_url, ["k-other"]),
                             model_route("chat", ("openai", "gpt-4o"), *extra, **FAST)])

        config("k1")
        with modelroute(tmp_path, "serve", "-f", str(cfg), "--reload-interval", "0.1") as gp:
            baseline = (await Load(gp, 600).run()).latencies[CONCURRENCY:]
            load = Load(gp, 2400)
            task = asyncio.create_task(load.run())
            await wait_until(lambda: load.done >= 200, within=60)
            config("k2")  # the key rotated, as a Secret edit does
            await wait_until(lambda: up.requests[-1].headers["authorization"] == "Bearer k2", within=20)
            up.keys.discard("k1")  # and the old key revoked once the new one is live
            n = load.done
            await wait_until(lambda: load.done >= n + 200, within=60)
            config("k2", ("other", "gpt-4.1"))  # a route change
            await wait_until(lambda: "config reloaded" in gp.logs() and gp.logs().count("config reloaded") >= 2,
                             within=20)
            await task
        assert load.failed == []
        assert max(load.latencies) < bound_from(baseline), (max(load.latencies), bound_from(baseline))
        assert {r.headers["authorization"] for r in up.requests[-100:]} == {"Bearer k2"}
