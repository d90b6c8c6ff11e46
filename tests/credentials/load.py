"""Chat requests from many callers through a gateway process until a condition holds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp
import orjson

from tests.gateway.procs import GatewayProcess


async def chat(s: aiohttp.ClientSession, gp: GatewayProcess, stream: bool, model: str = "chat") -> None:
    body = {"model": model, "messages": [{"role": "user", "content": "a b c"}], "stream": stream}
    async with s.post(gp.url + "/chat/completions", json=body) as r:
        raw = await r.read()
        assert r.status == 200, raw[:300]
        if stream:
            assert raw.rstrip().endswith(b"data: [DONE]"), raw[-200:]
        else:
            assert orjson.loads(raw)["choices"][0]["message"]["content"]


def load_until(gp: GatewayProcess, done: Callable[[], bool], callers: int = 24,
               within: float = 60) -> tuple[int, list[str], float]:
    """(requests, failures, seconds): ``callers`` at once, every second request streamed."""
    failures: list[str] = []
    sent = 0

    async def run() -> float:
        nonlocal sent
        started = time.monotonic()
        async with aiohttp.ClientSession() as s:

            async def caller(i: int) -> None:
                nonlocal sent
                while not done() and time.monotonic() < started + within:
                    try:
                        await chat(s, gp, stream=(sent + i) % 2 == 0)
                    except Exception as e:  # every failure is recorded; the tests assert there are none
                        failures.append(f"{type(e).__name__}: {e}")
                    sent += 1

            await asyncio.gather(*[caller(i) for i in range(callers)])
        return time.monotonic() - started

    elapsed = asyncio.run(run())
    return sent, failures, elapsed
