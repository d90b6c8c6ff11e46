"""Operator scale benchmark on a real control plane (etcd + kube-apiserver, as the tests use).

    python bench/operator_scale.py [--namespaces 50] [--routes 10] [--pods 300] [--kubeconfig FILE]

What it measures, with the operator running as users run it (`python -m modelroute_operator`,
as a ServiceAccount bound to deploy/clusterrole.yaml, and to deploy/namespace-clusterrole.yaml
in each benchmark namespace):

1. 500 ModelRoutes (10 in each of 50 namespaces, each with a ProviderKey and its Secret)
   applied at once: the time until every ModelRoute is Ready, and until every namespace's
   ConfigMap holds all its routes.
2. Edit-to-ConfigMap latency: one ModelRoute edited at a time, until the change is in its
   namespace's ConfigMap (what a running sidecar then picks up).
3. Admission: a burst of pod creations (concurrent), with the injection annotation and
   without it (no webhook call): create latency p50/p99 seen by the client, and the API
   server's own webhook admission duration.

Without --kubeconfig it starts a throw-away control plane (tests/controlplane; the first
run may build the binaries). This is a benchmark, not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modelroute_operator.kube import ApiError, Kube, core_path, custom_path  # noqa: E402
from tests.controlplane.cluster import ControlPlane, find_binaries, free_port  # noqa: E402

API = "modelroute.dev/v1alpha1"


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


async def poll(condition: Callable[[], Awaitable[bool]], within: float, what: str) -> float:
    start = time.monotonic()
    while not await condition():
        if time.monotonic() - start > within:
            raise TimeoutError(f"{what} not within {within}s")
        await asyncio.sleep(0.05)
    return time.monotonic()


async def bounded(n: int, coros: list[Awaitable[Any]]) -> list[Any]:
    sem = asyncio.Semaphore(n)

    async def one(c: Awaitable[Any]) -> Any:
        async with sem:
            return await c

    return await asyncio.gather(*(one(c) for c in coros))


def setup_rbac(cp_kubectl: Callable[..., Any]) -> None:
    cp_kubectl("apply", "-f", str(ROOT / "crds"))
    cp_kubectl("wait", "--for=condition=Established", "--timeout=60s",
               "crd/modelroutes.modelroute.dev", "crd/providerkeys.modelroute.dev")
    cp_kubectl("create", "namespace", "modelroute-system")
    cp_kubectl("create", "serviceaccount", "-n", "modelroute-system", "modelroute-operator")
    cp_kubectl("apply", "-f", str(ROOT / "deploy" / "clusterrole.yaml"))
    cp_kubectl("create", "clusterrolebinding", "modelroute-operator", "--clusterrole=modelroute-operator",
               "--serviceaccount=modelroute-system:modelroute-operator")
    cp_kubectl("apply", "-f", str(ROOT / "deploy" / "namespace-clusterrole.yaml"))
    cp_kubectl("apply", "-f", str(ROOT / "deploy" / "admission-policy.yaml"))


def enabled(namespace: str) -> dict[str, Any]:
    """The RoleBinding that lets the operator serve ``namespace`` (docs/install.md)."""
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "modelroute-operator", "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "modelroute-operator-namespace"},
            "subjects": [{"kind": "ServiceAccount", "name": "modelroute-operator", "namespace": "modelroute-system"}]}


async def webhook_metrics(kube: Kube) -> tuple[float, float]:
    """(sum, count) of apiserver_admission_webhook_admission_duration_seconds for our webhooks."""
    text = await kube._api.call_api(*await kube._api.param_serialize(  # raw text endpoint
        method="GET", resource_path="/metrics", header_params={"Accept": "text/plain"},
        auth_settings=["BearerToken"]))
    body = (await text.read()).decode()
    total = count = 0.0
    for line in body.splitlines():
        if line.startswith("apiserver_admission_webhook_admission_duration_seconds_") and "inject.modelroute" in line:
            value = float(line.rsplit(" ", 1)[1])
            if line.startswith("apiserver_admission_webhook_admission_duration_seconds_sum"):
                total += value
            elif line.startswith("apiserver_admission_webhook_admission_duration_seconds_count"):
                count += value
    return total, count


def start_operator(kubeconfig: Path, log_path: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "modelroute_operator", "--webhook-address", f"127.0.0.1:{free_port()}",
             "--sidecar-image", "registry.test/modelroute:bench"],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def stop_operator(op: subprocess.Popen[bytes]) -> None:
    op.send_signal(signal.SIGTERM)
    try:
        op.wait(30)
    except subprocess.TimeoutExpired:
        op.kill()
        op.wait()


async def bench(args: argparse.Namespace, admin: Kube, kubeconfig: Path, log_path: Path) -> None:
    n_ns, n_routes = args.namespaces, args.routes
    namespaces = [f"bench-{i:03d}" for i in range(n_ns)]

    op = start_operator(kubeconfig, log_path)

    def log_text() -> str:
        return log_path.read_text(errors="replace")

    try:
        start = time.monotonic()
        while "webhook listening on" not in await asyncio.to_thread(log_text):
            if op.poll() is not None or time.monotonic() - start > 60:
                raise RuntimeError("operator did not start:\n" + log_text()[-3000:])
            await asyncio.sleep(0.05)
        print(f"operator up in {time.monotonic() - start:.2f}s (log: {log_path})")

        # --- 1. 500 routes ----------------------------------------------------------------
        await bounded(16, [admin.create("/api/v1/namespaces", {"metadata": {"name": ns}}) for ns in namespaces])
        await bounded(16, [admin.create(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
                                        enabled(ns)) for ns in namespaces])
        docs: list[tuple[str, dict[str, Any]]] = []
        for ns in namespaces:
            docs.append((core_path("secrets", ns), {"metadata": {"name": "openai-key"},
                                                    "stringData": {"apiKey": f"sk-bench-{ns}"}}))
            docs.append((custom_path("providerkeys", ns), {
                "apiVersion": API, "kind": "ProviderKey", "metadata": {"name": "openai"},
                "spec": {"provider": "openai", "secretRef": {"name": "openai-key"}}}))
            for r in range(n_routes):
                docs.append((custom_path("modelroutes", ns), {
                    "apiVersion": API, "kind": "ModelRoute", "metadata": {"name": f"route-{r}"},
                    "spec": {"model": f"model-{r}", "backends": [{"providerKey": "openai", "model": "gpt-4o"}]}}))
        total_routes = n_ns * n_routes
        t0 = time.monotonic()
        await bounded(args.concurrency, [admin.create(path, body) for path, body in docs])
        t_applied = time.monotonic()

        async def all_ready() -> bool:
            items = await admin.list(f"/apis/{API}/modelroutes")
            ready = sum(1 for o in items if any(
                c.get("type") == "Ready" and c.get("status") == "True"
                and c.get("observedGeneration") == o["metadata"]["generation"]
                for c in (o.get("status") or {}).get("conditions") or []))
            return ready == total_routes

        t_ready = await poll(all_ready, 600, f"{total_routes} ModelRoutes Ready")

        async def all_compiled() -> bool:
            cms = await bounded(16, [admin.get(core_path("configmaps", ns, "modelroute-config")) for ns in namespaces])
            return all(cm is not None and len(json.loads(cm["data"]["config.json"])["routes"]) == n_routes
                       for cm in cms)

        t_compiled = await poll(all_compiled, 600, "every ConfigMap complete")
        print(f"\n{total_routes} ModelRoutes in {n_ns} namespaces ({len(docs)} objects created, "
              f"{args.concurrency} at a time):")
        print(f"  created in                  {t_applied - t0:6.2f} s")
        print(f"  all Ready after             {t_ready - t0:6.2f} s from the first create "
              f"({t_ready - t_applied:.2f} s after the last)")
        print(f"  all ConfigMaps complete at  {t_compiled - t0:6.2f} s")

        # --- 2. edit -> ConfigMap ------------------------------------------------------------
        latencies = []
        for i in range(args.edits):
            ns = namespaces[i % n_ns]
            model = f"gpt-edit-{i}"
            t = time.monotonic()
            await admin.merge_patch(custom_path("modelroutes", ns, "route-0"),
                                    {"spec": {"backends": [{"providerKey": "openai", "model": model}]}})

            async def has_edit(ns: str = ns, model: str = model) -> bool:
                cm = await admin.get(core_path("configmaps", ns, "modelroute-config"))
                return cm is not None and model in cm["data"]["config.json"]

            latencies.append(await poll(has_edit, 60, "the edit") - t)
        print(f"\nedit -> ConfigMap ({args.edits} edits, one at a time): "
              f"p50 {ms(quantile(latencies, 0.5))}, p99 {ms(quantile(latencies, 0.99))}, "
              f"max {ms(max(latencies))}")

        # --- 3. admission ----------------------------------------------------------------------
        def pod(name: str, inject: bool) -> dict[str, Any]:
            ann = {"modelroute.dev/inject": "true"} if inject else {}
            return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "annotations": ann},
                    "spec": {"containers": [{"name": "app", "image": "app:1"}]}}

        async def timed_create(ns: str, body: dict[str, Any]) -> float:
            t = time.monotonic()
            stored = await admin.create(core_path("pods", ns), body)
            elapsed = time.monotonic() - t
            injected = any(c["name"] == "modelroute-sidecar" for c in stored["spec"].get("initContainers", []))
            assert injected == ("modelroute.dev/inject" in body["metadata"]["annotations"]), stored["metadata"]
            return elapsed

        async def burst(inject: bool, tag: str) -> list[float]:
            return await bounded(args.pod_concurrency, [
                timed_create(namespaces[i % n_ns], pod(f"{tag}-{i}", inject)) for i in range(args.pods)])

        await burst(True, "warm")  # connections, TLS sessions, caches
        one_by_one = {inject: [await timed_create(namespaces[i % n_ns], pod(f"seq-{inject:d}-{i}", inject))
                               for i in range(args.sequential)] for inject in (False, True)}
        print(f"\nadmission, {args.sequential} pod creations one at a time (client-side create latency):")
        for inject, label in ((False, "without injection (no webhook call)"), (True, "with injection")):
            print(f"  {label:37s} p50 {ms(quantile(one_by_one[inject], 0.5))}, "
                  f"p99 {ms(quantile(one_by_one[inject], 0.99))}")
        s0, c0 = await webhook_metrics(admin)
        plain = await burst(False, "plain")
        injected = await burst(True, "inject")
        s1, c1 = await webhook_metrics(admin)
        print(f"\nadmission, a burst of {args.pods} pod creations, {args.pod_concurrency} concurrent "
              f"(client-side create latency):")
        print(f"  without injection (no webhook call)  p50 {ms(quantile(plain, 0.5))}, "
              f"p99 {ms(quantile(plain, 0.99))}")
        print(f"  with injection                        p50 {ms(quantile(injected, 0.5))}, "
              f"p99 {ms(quantile(injected, 0.99))}")
        if c1 > c0:
            print(f"  API server's webhook call duration    mean {ms((s1 - s0) / (c1 - c0))} "
                  f"over {int(c1 - c0)} calls")
        print(f"  injected pods/s                       {args.pods / sum(injected) * args.pod_concurrency:.0f} "
              f"(approx., {args.pod_concurrency} in flight)")

        warnings = [ln for ln in (await asyncio.to_thread(log_text)).splitlines()
                    if re.search(r"\[(WARNING|ERROR)", ln)]
        print(f"\noperator warnings/errors during the run: {len(warnings)}")
        for ln in warnings[:5]:
            print("  " + ln[:200])
    finally:
        await asyncio.to_thread(stop_operator, op)


async def main_async(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="modelroute-bench-"))
    cp: ControlPlane | None = None
    try:
        if args.kubeconfig:
            admin_config = Path(args.kubeconfig)
            kubectl = ["kubectl", "--kubeconfig", str(admin_config)]

            def run(*a: str) -> Any:
                return subprocess.run([*kubectl, *a], check=True, capture_output=True, text=True)

            run("apply", "-f", str(ROOT / "crds"))
            operator_config = admin_config
        else:
            print("starting a control plane ...", flush=True)
            cp = ControlPlane(find_binaries(build_log=sys.stderr), work / "controlplane")
            cp.start()
            admin_config = cp.kubeconfig
            setup_rbac(cp.kubectl)
            operator_config = cp.service_account_kubeconfig("modelroute-system", "modelroute-operator")
        admin = await Kube.connect(admin_config)
        try:
            version = await admin.server_version()
            print(f"Kubernetes {version[0]}.{version[1]}, {os.cpu_count()} CPUs")
            await bench(args, admin, operator_config, work / "operator.log")
        finally:
            await admin.close()
    except ApiError as e:
        print(f"API error: {e}", file=sys.stderr)
        raise
    finally:
        if cp is not None:
            cp.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--namespaces", type=int, default=50)
    p.add_argument("--routes", type=int, default=10, help="ModelRoutes per namespace")
    p.add_argument("--concurrency", type=int, default=32, help="creates in flight while applying")
    p.add_argument("--edits", type=int, default=20)
    p.add_argument("--pods", type=int, default=300, help="pods per burst")
    p.add_argument("--pod-concurrency", type=int, default=25)
    p.add_argument("--sequential", type=int, default=100, help="pods created one at a time, each way")
    p.add_argument("--kubeconfig", help="use this cluster (admin) instead of starting a control plane; the "
                                        "operator then runs with the same credentials")
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
