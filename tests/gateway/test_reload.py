"""Config reloads under traffic: `serve` watching YAML, `sidecar` watching a kubelet volume."""

from __future__ import annotations

import asyncio
import os
import threading
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
from tests.gateway.traffic import Traffic
from tests.operator import kubelet_volume


def write_yaml(path: Path, docs: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump_all(docs))
    os.replace(tmp, path)  # editors and `kubectl`-style tools replace files; so do we


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


def project(volume_root: Path, docs: list[dict[str, Any]]) -> None:
    result = compile_resources(docs)
    assert not result.errors
    kubelet_volume.write(volume_root / "config", {"config.json": result.config.dump_json().encode()})
    kubelet_volume.write(volume_root / "keys", {name: "\n".join(keys).encode() for name, keys in result.keys.items()},
                         mode=0o400)


async def test_sidecar_follows_atomic_volume_swaps_under_traffic(tmp_path: Path) -> None:
    async with FakeOpenAI(keys=["k1", "k2"]) as up:
        vol = tmp_path / "etc-modelroute"
        project(vol, [*provider_key("openai", "openai", up.base_url, ["k1"]),
                      model_route("chat", ("openai", "gpt-4o"), **FAST)])
        with modelroute(tmp_path, "sidecar", "--config-dir", str(vol), "--reload-interval", "0.1") as gp:
            traffic = Traffic(gp.url)
            await wait_until(lambda: len(traffic.ok) >= 20, within=20)
            # Rotate the key and move the route to another model, as the operator would; the
            # old key is revoked once the new one is live, as a key rotation goes.
            project(vol, [*provider_key("openai", "openai", up.base_url, ["k2"]),
                          model_route("chat", ("openai", "gpt-4.1"), **FAST)])
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
                          model_route("chat", ("openai", "gpt-4o"), **FAST)])

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


@pytest.mark.parametrize("kind", ["sidecar", "serve"])
async def test_an_idle_pod_polls_its_volume_without_a_thread(tmp_path: Path, kind: str) -> None:
    """The sidecar's poll of its volume is two readlinks, made on the event loop: a thread for it
    would keep an executor thread (and its malloc arena) in every idle pod. `serve` walks the
    directories it was given, of any size, so its poll stays off the loop."""
    from modelroute_sidecar.loader import ConfigDirSource, FileSource, Source, watch

    docs = [*provider_key("openai", "openai", "http://127.0.0.1:9/v1", ["k"]), model_route("chat", ("openai", "m"))]
    source: Source
    if kind == "sidecar":
        project(tmp_path / "vol", docs)
        source = ConfigDirSource(tmp_path / "vol")
    else:
        write_yaml(tmp_path / "routes.yaml", docs)
        source = FileSource([tmp_path], env={})
    threads: list[int] = []
    poll = source.signature

    def signature() -> object:
        threads.append(threading.get_ident())
        return poll()

    source.signature = signature  # type: ignore[method-assign]
    watcher = asyncio.create_task(watch(source, lambda c, k: None, lambda p: None, lambda r: None, 0.01, poll()))
    try:
        await wait_until(lambda: len(threads) >= 3)
    finally:
        watcher.cancel()
    loop_thread = threading.get_ident()
    assert (set(threads) == {loop_thread}) == (kind == "sidecar"), threads
