"""From `kubectl apply` to a request: operator -> ConfigMap/Secret -> (kubelet) -> sidecar.

There is no kubelet here, so the test plays its part: it projects the namespace's
`modelroute-config` and `modelroute-keys` into a directory with kubelet's atomic-writer
layout (tests/operator/kubelet_volume.py), syncing as kubelet does. `modelroute sidecar
--config-dir` runs on that directory; an app (the `openai` SDK, placeholder key) sends
requests through it to a fake OpenAI upstream, while the ModelRoute is edited and the
key rotated in the API server. The sidecar follows without a restart and without a
failed request.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from tests.fakes.base import wait_until
from tests.fakes.openai import FakeOpenAI
from tests.gateway.harness import FAST
from tests.gateway.procs import modelroute
from tests.gateway.traffic import Traffic
from tests.operator import kubelet_volume
from tests.operator.conftest import Cluster, OperatorProcess, model_route, new_key, provider_key, secret

pytestmark = pytest.mark.controlplane


class Kubelet:
    """Keeps ``root/config`` and ``root/keys`` in step with the namespace's objects."""

    def __init__(self, cluster: Cluster, namespace: str, root: Path, period: float = 0.2) -> None:
        self.cluster, self.namespace, self.root, self.period = cluster, namespace, root, period
        self.swaps = 0

    def sync(self) -> None:
        cm = self.cluster.get("configmap", "modelroute-config", self.namespace)
        keys = self.cluster.get("secret", "modelroute-keys", self.namespace)
        self.swaps += kubelet_volume.write(self.root / "config", kubelet_volume.configmap_files(cm))
        self.swaps += kubelet_volume.write(self.root / "keys", kubelet_volume.secret_files(keys), mode=0o400)

    async def run(self) -> None:
        while True:
            await asyncio.to_thread(self.sync)
            await asyncio.sleep(self.period)  # kubelet's sync period, scaled down

    def keys(self) -> str:
        return kubelet_volume.current(self.root / "keys").get("openai", b"").decode()

    def config(self) -> str:
        return kubelet_volume.current(self.root / "config").get("config.json", b"").decode()


async def test_a_running_sidecar_follows_route_edits_and_key_rotation(
        cluster: Cluster, operator: OperatorProcess, namespace: str, tmp_path: Path) -> None:
    k1, k2 = new_key("e2e-1-"), new_key("e2e-2-")
    async with FakeOpenAI(keys=[k1, k2]) as upstream:

        def apply(*docs: dict) -> None:
            cluster.apply(list(docs), namespace)

        await asyncio.to_thread(apply, secret("openai-key", k1),
                                provider_key("openai", "openai-key", baseURL=upstream.base_url),
                                model_route("chat", "chat", ("openai", "gpt-4o"), **FAST))
        await asyncio.to_thread(cluster.wait_ready, "modelroute", "chat", namespace)

        kubelet = Kubelet(cluster, namespace, tmp_path / "etc-modelroute")
        syncing = asyncio.create_task(kubelet.run())
        try:
            await wait_until(lambda: '"chat"' in kubelet.config() and kubelet.keys() == k1, within=30)
            with modelroute(tmp_path, "sidecar", "--config-dir", str(kubelet.root), "--reload-interval", "0.1",
                            "--log-level", "debug") as sidecar:
                app = Traffic(sidecar.url, "chat")
                await wait_until(lambda: len(app.ok) >= 20, within=30)
                assert set(app.ok) == {"openai/gpt-4o"}

                # Edit the route in the API server.
                await asyncio.to_thread(apply, model_route("chat", "chat", ("openai", "gpt-4.1"), **FAST))
                await wait_until(lambda: app.ok.count("openai/gpt-4.1") >= 20, within=60)

                # Rotate the key in the API server; revoke the old one once the new one is in use.
                def uses(key: str) -> int:
                    return sum(r.headers.get("authorization") == f"Bearer {key}" for r in upstream.requests)

                await asyncio.to_thread(apply, secret("openai-key", k2))
                await wait_until(lambda: uses(k2) >= 10, within=60)
                upstream.keys.discard(k1)
                revoked_at = len(upstream.requests)
                await wait_until(lambda: len(upstream.requests) >= revoked_at + 20, within=30)
                await app.stop()

                assert app.failed == [], app.failed[:3]
                assert {r.headers.get("authorization") for r in upstream.requests[revoked_at:]} == {f"Bearer {k2}"}
                assert sidecar.proc.poll() is None  # the same process all along: no restart
                assert kubelet.swaps >= 4  # config and keys, each swapped at least twice
                logs = sidecar.logs()
                assert k1 not in logs and k2 not in logs
        finally:
            syncing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await syncing
