"""One ModelBudget, several `modelroute sidecar` processes, the real operator (issue 12, item 4).

Each sidecar is a real process with its own ServiceAccount token from the API server's
TokenRequest (audience modelroute) in a file, as kubelet projects it; the config and the lease
server's CA come from the namespace's ConfigMap through a kubelet-like projection (as in
test_end_to_end.py). Apps use the official openai and anthropic SDKs, streamed and not, against
the faithful fakes. The operator is SIGKILLed mid-run and started again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.base import wait_until
from tests.fakes.openai import FakeOpenAI
from tests.gateway.procs import GatewayProcess, modelroute
from tests.operator.conftest import API, Cluster, OperatorProcess, model_route, new_key, provider_key, secret
from tests.operator.test_end_to_end import Kubelet

pytestmark = pytest.mark.controlplane

LIMIT = 60  # requests per hour, shared by every sidecar of the namespace
SIDECARS = 3
PER_SIDECAR = 3  # requests in flight per sidecar


def budget(name: str, routes: list[str], limits: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "ModelBudget", "metadata": {"name": name},
            "spec": {"selector": {"routes": routes}, "limits": limits, **spec}}


def sidecar_env(kubelet: Kubelet, operator: OperatorProcess, namespace: str, pod: str, token: Path,
                account: str) -> dict[str, str]:
    """What the webhook gives the sidecar container (tests/operator/test_injection.py checks it)."""
    return {"MODELROUTE_BUDGET_URL": f"https://127.0.0.1:{operator.budget_port}",
            "MODELROUTE_BUDGET_CA": str(kubelet.root / "config" / "budget-ca.crt"),
            "MODELROUTE_BUDGET_TOKEN_FILE": str(token), "MODELROUTE_NAMESPACE": namespace,
            "MODELROUTE_POD_NAME": pod, "MODELROUTE_SERVICE_ACCOUNT": account}


class App:
    """An app of one pod: both SDKs against its sidecar, four kinds of call in turn."""

    def __init__(self, gp: GatewayProcess) -> None:
        self.oai = openai.AsyncOpenAI(base_url=gp.url, api_key="placeholder", max_retries=0)
        self.claude = anthropic.AsyncAnthropic(base_url=f"http://127.0.0.1:{gp.port}", api_key="placeholder",
                                               max_retries=0)
        self.kinds = itertools.cycle(["openai", "openai-stream", "anthropic", "anthropic-stream"])
        self.results: Counter[str] = Counter()
        self.refusals: list[str] = []
        self.models: Counter[str] = Counter()
        self.tokens = 0  # input + output, as each answer's usage says

    async def call(self, model: str = "chat", claude_model: str = "claude") -> str:
        """One request: "ok", "exceeded" or "unreachable" (a budget 429, checked for its form)."""
        kind = next(self.kinds)
        try:
            if kind == "openai":
                r = await self.oai.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "hello there"}], max_tokens=16)
                assert r.choices[0].message.content and r.usage is not None
                self.models[r.model] += 1
                self.tokens += r.usage.prompt_tokens + r.usage.completion_tokens
            elif kind == "openai-stream":
                stream = await self.oai.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "hello there"}], max_tokens=16, stream=True,
                    stream_options={"include_usage": True})
                chunks = [c async for c in stream]
                assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                usage = chunks[-1].usage
                assert usage is not None
                self.tokens += usage.prompt_tokens + usage.completion_tokens
            elif kind == "anthropic":
                m = await self.claude.messages.create(
                    model=claude_model, max_tokens=16, messages=[{"role": "user", "content": "hello there"}])
                assert m.content
                self.models[m.model] += 1
                self.tokens += m.usage.input_tokens + m.usage.output_tokens
            else:
                async with self.claude.messages.stream(
                        model=claude_model, max_tokens=16, messages=[{"role": "user", "content": "hello there"}]) as s:
                    final = await s.get_final_message()
                assert final.content
                self.tokens += final.usage.input_tokens + final.usage.output_tokens
        except openai.RateLimitError as e:
            assert e.status_code == 429 and e.code == "budget_exceeded", e.body
            assert e.body is not None and e.body["type"] == "rate_limit_error"  # type: ignore[index]
            assert e.response.headers.get("retry-after", "").isdigit()
            result = self._refused(e.message)
        except anthropic.RateLimitError as e:
            body = e.body
            assert isinstance(body, dict) and body["type"] == "error", body
            assert body["error"]["type"] == "rate_limit_error", body
            assert e.response.headers.get("retry-after", "").isdigit()
            result = self._refused(body["error"]["message"])
        else:
            result = "ok"
        self.results[result] += 1
        return result

    def _refused(self, message: str) -> str:
        assert "Budget 'team'" in message and "window 1h" in message, message  # the only Reject budget
        self.refusals.append(message)
        return "unreachable" if "cannot be reached" in message else "exceeded"

    async def close(self) -> None:
        await self.oai.close()
        await self.claude.close()


def served(*fakes: FakeOpenAI | FakeAnthropic) -> int:
    return sum(len([r for r in f.requests if r.path.endswith(("/chat/completions", "/messages"))]) for f in fakes)


def ledger_used(cluster: Cluster, namespace: str, name: str, unit: str = "requests") -> int:
    body = cluster.get("modelbudget", name, namespace) or {}
    holders = (((body.get("status") or {}).get("ledger") or {}).get("1h") or {}).get("current", {}).get("holders", {})
    return sum(int(h["used"][unit]) for h in holders.values())


@dataclass
class World:
    oa: FakeOpenAI
    an: FakeAnthropic
    apps: list[App]
    stack: ExitStack  # the sidecars: closing it stops them (SIGTERM), and they report their spend


@asynccontextmanager
async def world(cluster: Cluster, operator: OperatorProcess, namespace: str, tmp_path: Path,
                docs: list[dict[str, Any]], sidecars: int = SIDECARS) -> AsyncIterator[World]:
    """The fakes, the namespace's objects (+ ``docs``), one ServiceAccount, token file and
    `modelroute sidecar` process per pod, and an app for each."""
    k_oa, k_an = new_key("oa-"), new_key("an-")
    async with FakeOpenAI(keys=[k_oa]) as oa, FakeAnthropic(keys=[k_an]) as an:
        accounts = [f"web-{i}" for i in range(sidecars)]
        await asyncio.to_thread(cluster.apply, [
            secret("oa", k_oa), secret("an", k_an),
            provider_key("openai", "oa", baseURL=oa.base_url),
            provider_key("anthropic", "an", provider="anthropic", baseURL=an.base_url),
            model_route("chat", "chat", ("openai", "gpt-4o-mini")),
            model_route("claude", "claude", ("anthropic", "claude-haiku-4-5")),
            *docs,
            *({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": a}} for a in accounts),
        ], namespace)
        for doc in docs:
            await asyncio.to_thread(cluster.wait_ready, "modelbudget", doc["metadata"]["name"], namespace)

        def mint(account: str) -> str:  # TokenRequest, as kubelet asks for the projected token
            return cluster.kubectl("create", "token", account, "-n", namespace, "--audience", "modelroute",
                                   "--duration", "1h").stdout.strip()

        tokens = []
        for i, a in enumerate(accounts):
            path = tmp_path / f"token-{i}"
            path.write_text(await asyncio.to_thread(mint, a))
            tokens.append(path)
        kubelet = Kubelet(cluster, namespace, tmp_path / "etc-modelroute")
        syncing = asyncio.create_task(kubelet.run())
        try:
            await wait_until(lambda: all(f'"{d["metadata"]["name"]}"' in kubelet.config() for d in docs)
                             and (kubelet.root / "config" / "budget-ca.crt").exists(), within=30)
            for i in range(sidecars):
                (tmp_path / f"pod-{i}").mkdir()
            with ExitStack() as stack:
                gps = [stack.enter_context(modelroute(
                    tmp_path / f"pod-{i}", "sidecar", "--config-dir", str(kubelet.root),
                    env=sidecar_env(kubelet, operator, namespace, f"web-{i}-pod", tokens[i], accounts[i])))
                       for i in range(sidecars)]
                apps = [App(gp) for gp in gps]
                try:
                    yield World(oa, an, apps, stack)
                finally:
                    for app in apps:
                        await app.close()
        finally:
            syncing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await syncing


async def test_sidecars_share_one_budget_through_an_operator_sigkill(
        cluster: Cluster, operator: OperatorProcess, namespace: str, tmp_path: Path) -> None:
    async with world(cluster, operator, namespace, tmp_path,
                     [budget("team", ["chat", "claude"], [{"window": "1h", "requests": LIMIT, "tokens": 10**7}])]) as w:
        oa, an, apps = w.oa, w.an, w.apps
        down = asyncio.Event()
        done = asyncio.Event()
        go = asyncio.Event()
        go.set()
        inflight = Counter[str]()
        while_down: Counter[str] = Counter()

        async def worker(app: App) -> None:
            streak = 0
            while not done.is_set():
                await go.wait()
                inflight["n"] += 1
                try:
                    result = await app.call()
                finally:
                    inflight["n"] -= 1
                if down.is_set():
                    while_down[result] += 1
                # exhausted for good: the sidecar refuses without asking again
                streak = streak + 1 if result == "exceeded" and not down.is_set() else 0
                if streak >= 6:
                    return

        workers = [asyncio.create_task(worker(app)) for app in apps for _ in range(PER_SIDECAR)]
        # A third of the budget spent, traffic paused until every sidecar has reported all it spent
        # and holds a lease with room left (it renews in the background when low) ...
        await wait_until(lambda: served(oa, an) >= LIMIT // 3, within=60)
        go.clear()
        await wait_until(lambda: inflight["n"] == 0, within=30)

        def all_hold_a_lease() -> bool:
            body = cluster.get("modelbudget", "team", namespace) or {}
            holders = body.get("status", {}).get("ledger", {}).get("1h", {}).get("current", {}).get("holders", {})
            for i, app in enumerate(apps):
                [h] = [h for name, h in holders.items() if name.startswith(f"{namespace}/web-{i}-pod/")] or [None]
                if h is None or h["used"]["requests"] != app.results["ok"] or \
                        h["granted"]["requests"] <= h["used"]["requests"]:
                    return False
            return True

        await wait_until(all_hold_a_lease, within=60, interval=0.2)
        # ... then the operator SIGKILLed: sidecars go on within their leases.
        await asyncio.to_thread(operator.kill)
        down.set()
        go.set()
        await wait_until(lambda: sum(while_down.values()) >= 3 * SIDECARS, within=60)
        down.clear()
        await asyncio.to_thread(operator.start)
        try:
            await asyncio.wait_for(asyncio.gather(*workers), timeout=180)
        finally:
            done.set()
        assert while_down["ok"] > 0, while_down  # leases kept serving with the operator gone
        refusals = [m for app in apps for m in app.refusals]
        w.stack.close()  # SIGTERM: each sidecar reports what it spent
        total = served(oa, an)
        assert total <= LIMIT  # a request reserves exactly what it uses: no overshoot at all
        assert total >= LIMIT - SIDECARS * PER_SIDECAR, total  # little stranded in leases
        assert sum(app.results["ok"] for app in apps) == total  # every request the fakes served, the app got
        await wait_until(lambda: ledger_used(cluster, namespace, "team") == total, within=30)
        # ...and the tokens of every answer, streamed or not: nothing lost through the SIGKILL.
        tokens = sum(app.tokens for app in apps)
        assert tokens > 0
        await wait_until(lambda: ledger_used(cluster, namespace, "team", "tokens") == tokens, within=30)
        assert any("cannot be reached" not in m for m in refusals)
        body = await asyncio.to_thread(cluster.get, "modelbudget", "team", namespace)
        assert body is not None
        [window] = body["status"]["windows"]
        assert window["spent"]["requests"] == total and window["spent"]["tokens"] == tokens
        assert window["limit"] == {"requests": LIMIT, "tokens": 10**7}
        row = (await asyncio.to_thread(cluster.kubectl, "get", "mb", "team", "-n", namespace)).stdout
        assert f"{total}/{LIMIT} requests" in row


async def test_a_downgrade_budget_switches_routes_without_failed_requests(
        cluster: Cluster, operator: OperatorProcess, namespace: str, tmp_path: Path) -> None:
    premium = 8
    docs = [model_route("premium", "premium", ("openai", "gpt-4o")),
            budget("premium", ["premium"], [{"window": "1h", "requests": premium}], onExceeded="Downgrade",
                   downgradeTo="chat")]
    async with world(cluster, operator, namespace, tmp_path, docs, sidecars=2) as w:
        # Both SDKs, streamed and not, through both sidecars: every call answered.
        for _ in range(3):
            results = await asyncio.gather(*(app.call(model="premium", claude_model="premium")
                                             for app in w.apps for _ in range(8)))
            assert results == ["ok"] * len(results)
        models = Counter(r.body.get("model") for r in w.oa.requests if r.path.endswith("/chat/completions"))
        assert models["gpt-4o"] == premium and models["gpt-4o-mini"] == 48 - premium, models
        w.stack.close()
        await wait_until(lambda: ledger_used(cluster, namespace, "premium") == premium, within=30)
