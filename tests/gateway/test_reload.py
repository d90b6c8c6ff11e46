"""Config reloads under traffic: `serve` watching YAML, `sidecar` watching a kubelet volume."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from modelroute_sidecar.compile import compile_resources

from tests.fakes.base import wait_until
from tests.fakes.openai import FakeOpenAI
from tests.gateway.harness import FAST, model_route, provider_key, user
from tests.gateway.procs import modelroute, scrape


def write_yaml(path: Path, docs: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump_all(docs))
    os.replace(tmp, path)  # editors and `kubectl`-style tools replace files; so do we


class Traffic:
    """Requests back to back from several clients until stopped; records every outcome."""

    def __init__(self, url: str, model: str = "chat", clients: int = 4) -> None:
        self.client = openai.AsyncOpenAI(base_url=url, api_key="placeholder", max_retries=0)
        self.model = model
        self.ok: list[str] = []  # backend of each success
        self.failed: list[BaseException] = []
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._run(i % 2 == 1)) for i in range(clients)]

    async def _run(self, stream: bool) -> None:
        while not self._stop.is_set():
            try:
                if stream:
                    sr = await self.client.chat.completions.with_raw_response.create(
                        model=self.model, messages=user("a b c"), stream=True)
                    text = "".join([c.choices[0].delta.content or "" async for c in sr.parse() if c.choices])
                    assert text == "echo: a b c", text
                    self.ok.append(sr.headers["x-modelroute-backend"])
                else:
                    r = await self.client.chat.completions.with_raw_response.create(
                        model=self.model, messages=user("a b c"))
                    assert r.parse().choices[0].message.content == "echo: a b c"
                    self.ok.append(r.headers["x-modelroute-backend"])
            except Exception as e:
                self.failed.append(e)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        await self.client.close()


async def test_serve_reloads_yaml_under_traffic_without_a_failed_request(tmp_path: Path) -> None:
    async with FakeOpenAI(keys=["k-old"]) as old, FakeOpenAI(keys=["k-new"]) as new:
        cfg = tmp_path / "routes.yaml"
        write_yaml(cfg, [*provider_key("old", "openai", old.base_url, ["k-old"]),
                         model_route("chat", ("old", "gpt-4o"), **FAST)])
        with modelroute(tmp_path, "serve", "-f", str(tmp_path), "--reload-interval", "0.1") as gp:
            traffic = Traffic(gp.url)
            await wait_until(lambda: len(traffic.ok) >= 20, within=20)
            write_yaml(cfg, [*provider_key("old", "openai", old.base_url, ["k-old"]),
                             *provider_key("new", "openai", new.base_url, ["k-new"]),
                             model_route("chat", ("new", "gpt-4.1"), **FAST)])
            await wait_until(lambda: traffic.ok.count("new/gpt-4.1") >= 20, within=20)
            # A broken edit keeps the last good config serving.
            cfg.write_text("apiVersion: modelroute.dev/v1alpha1\nkind: ModelRoute\nmetadata: {name: x}\nspec: {}\n")
            await wait_until(lambda: 'modelroute_config_reloads_total{result="error"}' in scrape(gp), within=20)
            n = len(traffic.ok)
            await wait_until(lambda: len(traffic.ok) >= n + 20, within=20)
            await traffic.stop()
            assert traffic.failed == []
            assert traffic.ok[-1] == "new/gpt-4.1"
            assert "spec.model: Field required" in gp.logs() and "spec.backends: Field required" in gp.logs()


def atomic_write(volume: Path, files: dict[str, str], generation: int) -> None:
    """Lay ``files`` out as kubelet's atomic writer does, and swap them in with one rename."""
    volume.mkdir(parents=True, exist_ok=True)
    ts = volume / f"..2026_11_24_00_00_{generation:02d}.000000001"
    ts.mkdir()
    for name, text in files.items():
        (ts / name).write_text(text)
    tmp = volume / "..data_tmp"
    tmp.symlink_to(ts.name)
    os.replace(tmp, volume / "..data")
    for name in files:
        link = volume / name
        if not link.is_symlink():
            link.symlink_to(f"..data/{name}")
    for old in volume.glob("..2026_*"):
        if old != ts:
            for f in old.iterdir():
                f.unlink()
            old.rmdir()


def project(volume_root: Path, docs: list[dict[str, Any]], generation: int) -> None:
    result = compile_resources(docs)
    assert not result.errors
    atomic_write(volume_root / "config", {"config.json": result.config.dump_json()}, generation)
    atomic_write(volume_root / "keys", {name: "\n".join(keys) for name, keys in result.keys.items()}, generation)


async def test_sidecar_follows_atomic_volume_swaps_under_traffic(tmp_path: Path) -> None:
    async with FakeOpenAI(keys=["k1", "k2"]) as up:
        vol = tmp_path / "etc-modelroute"
        project(vol, [*provider_key("openai", "openai", up.base_url, ["k1"]),
                      model_route("chat", ("openai", "gpt-4o"), **FAST)], 1)
        with modelroute(tmp_path, "sidecar", "--config-dir", str(vol), "--reload-interval", "0.1") as gp:
            traffic = Traffic(gp.url)
            await wait_until(lambda: len(traffic.ok) >= 20, within=20)
            # Rotate the key and move the route to another model, as the operator would; the
            # old key is revoked once the new one is live, as a key rotation goes.
            project(vol, [*provider_key("openai", "openai", up.base_url, ["k2"]),
                          model_route("chat", ("openai", "gpt-4.1"), **FAST)], 2)
            await wait_until(lambda: traffic.ok.count("openai/gpt-4.1") >= 20, within=20)
            up.keys.discard("k1")
            n = len(up.requests)
            await wait_until(lambda: len(up.requests) >= n + 20, within=20)
            await traffic.stop()
            assert traffic.failed == []
            assert {r.headers["authorization"] for r in up.requests[n:]} == {"Bearer k2"}


async def test_sidecar_starts_before_its_volumes_are_populated(tmp_path: Path) -> None:
    """A namespace without routes yet: the sidecar is ready (the pod must not hang on it),
    answers 404 for every model, and serves as soon as the operator's ConfigMap appears."""
    async with FakeOpenAI() as up:
        vol = tmp_path / "etc-modelroute"
        with modelroute(tmp_path, "sidecar", "--config-dir", str(vol), "--reload-interval", "0.1") as gp:
            client = openai.AsyncOpenAI(base_url=gp.url, api_key="x", max_retries=0)
            with pytest.raises(openai.NotFoundError):
                await client.chat.completions.create(model="chat", messages=user("hi"))
            project(vol, [*provider_key("openai", "openai", up.base_url),
                          model_route("chat", ("openai", "gpt-4o"), **FAST)], 1)

            async def served() -> bool:
                try:
                    r = await client.chat.completions.create(model="chat",
                                                             messages=user("hi"))
                except openai.NotFoundError:
                    return False
                return r.choices[0].message.content == "echo: hi"

            deadline = asyncio.get_running_loop().time() + 20
            while not await served():
                assert asyncio.get_running_loop().time() < deadline, "the sidecar never picked up its config"
                await asyncio.sleep(0.05)
