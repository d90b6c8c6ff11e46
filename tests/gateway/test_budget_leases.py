"""`modelroute sidecar` processes holding leases of one budget (issue 12, item 4), against a lease
server that speaks the lease protocol with the operator's own ledger (tests/fakes/lease_server.py):
the limit holds across processes, the token is read from its file on every call, an unreachable
operator meets the budget's failurePolicy, and the spend reaches the ledger in the end.
The same processes against the real operator, on the real control plane: tests/operator.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import openai
import pytest

from modelroute_sidecar.budget.ledger import Limit
from modelroute_sidecar.compile import compile_resources
from tests.controlplane.cluster import wait_for
from tests.fakes.lease_server import FakeLeaseServer
from tests.gateway.harness import API, model_route
from tests.gateway.procs import GatewayProcess, modelroute

TOKEN = "eyJhbGciOiJSUzI1NiJ9.pod-token-1"


def budget(name: str, routes: list[str], limits: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "ModelBudget", "metadata": {"name": name},
            "spec": {"selector": {"routes": routes}, "limits": limits, **spec}}


DOCS = [
    {"apiVersion": API, "kind": "ProviderKey", "metadata": {"name": "mock"},
     "spec": {"provider": "mock", "mock": {"firstByteMs": 5}}},
    model_route("shared", ("mock", "m-1")),
    model_route("closed", ("mock", "m-2")),
    model_route("open", ("mock", "m-3")),
    model_route("unknown", ("mock", "m-4")),
    budget("shared", ["shared"], [{"window": "1h", "requests": 60}]),
    budget("closed", ["closed"], [{"window": "1h", "requests": 4}]),
    budget("open", ["open"], [{"window": "1h", "requests": 4}], failurePolicy="Open"),
    budget("unknown", ["unknown"], [{"window": "1h", "requests": 4}]),  # not (yet) known to the server
    model_route("premium", ("mock", "m-5")),
    model_route("cheap", ("mock", "m-6")),
    budget("premium", ["premium"], [{"window": "1h", "requests": 2}], onExceeded="Downgrade", downgradeTo="cheap"),
]
LIMITS = {"shared": {"1h": Limit(requests=60)}, "closed": {"1h": Limit(requests=4)},
          "open": {"1h": Limit(requests=4)}, "premium": {"1h": Limit(requests=2)}}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[FakeLeaseServer]:
    with FakeLeaseServer(tmp_path, LIMITS, {TOKEN, TOKEN + "-rotated"}) as s:
        yield s


@contextmanager
def sidecar(tmp_path: Path, server: FakeLeaseServer, pod: str) -> Iterator[GatewayProcess]:
    d = tmp_path / pod
    (d / "config").mkdir(parents=True)
    (d / "config" / "config.json").write_text(compile_resources(DOCS, env={}).config.dump_json())
    (d / "token").write_text(TOKEN + "\n")
    env = {"MODELROUTE_BUDGET_URL": server.url, "MODELROUTE_BUDGET_CA": str(server.ca_file),
           "MODELROUTE_BUDGET_TOKEN_FILE": str(d / "token"), "MODELROUTE_NAMESPACE": "team-a",
           "MODELROUTE_POD_NAME": pod, "MODELROUTE_SERVICE_ACCOUNT": "web"}
    with modelroute(d, "sidecar", "--config-dir", str(d), env=env) as gp:
        yield gp


def chat(gp: GatewayProcess, model: str) -> int:
    client = openai.OpenAI(base_url=gp.url, api_key="placeholder", max_retries=0)
    try:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=5)
        return 200
    except openai.RateLimitError as e:
        assert e.code == "budget_exceeded" and e.response.headers.get("retry-after", "").isdigit(), e
        return 429


def test_three_sidecars_share_one_budget(tmp_path: Path, server: FakeLeaseServer) -> None:
    with ExitStack() as stack:
        gps = [stack.enter_context(sidecar(tmp_path, server, f"web-{i}")) for i in range(3)]
        with ThreadPoolExecutor(12) as pool:
            statuses = list(pool.map(lambda i: chat(gps[i % 3], "shared"), range(120)))
        served = statuses.count(200)
        assert statuses.count(429) == 120 - served  # every other answer a well-formed budget 429
        # requests reserve exactly what they use: the limit holds to the request
        assert served <= 60
        # ... and little of it is stranded in leases of processes that stopped asking
        assert served >= 50, statuses
        assert server.granted("shared", "1h") <= 60
    # each sidecar reported its spend on SIGTERM: the ledger has every served request
    assert server.spent("shared", "1h").requests == served
    assert len(server.holders_seen) == 3 and all(h.startswith("team-a/web-") for h in server.holders_seen)


def test_a_budget_the_operator_does_not_know_is_refused_saying_so(tmp_path: Path, server: FakeLeaseServer) -> None:
    with sidecar(tmp_path, server, "web-0") as gp:
        client = openai.OpenAI(base_url=gp.url, api_key="placeholder", max_retries=0)
        with pytest.raises(openai.RateLimitError) as e:
            client.chat.completions.create(model="unknown", messages=[{"role": "user", "content": "hi"}])
        assert "Budget 'unknown'" in e.value.message and "grants none (not found" in e.value.message
        assert chat(gp, "shared") == 200  # the other budgets are leased as ever


def test_the_token_file_is_read_on_every_call(tmp_path: Path, server: FakeLeaseServer) -> None:
    with sidecar(tmp_path, server, "web-0") as gp:
        assert chat(gp, "shared") == 200
        wait_for(lambda: TOKEN in server.tokens_seen, timeout=10, what="a lease call with the first token")
        (tmp_path / "web-0" / "token").write_text(TOKEN + "-rotated\n")  # kubelet rotated it
        assert chat(gp, "shared") == 200  # unreported spend: reported within ttl/2
        wait_for(lambda: TOKEN + "-rotated" in server.tokens_seen, timeout=10,
                 what="a lease call with the rotated token")


def test_an_unreachable_operator_meets_the_failure_policy(tmp_path: Path, server: FakeLeaseServer) -> None:
    with sidecar(tmp_path, server, "web-0") as gp:
        assert chat(gp, "closed") == 200 and chat(gp, "open") == 200
        wait_for(lambda: server.spent("open", "1h").requests == 1, timeout=10, what="the first spend reported")
        server.stop()
        # Closed: the lease held is spent, then refusals that say why
        statuses = [chat(gp, "closed") for _ in range(4)]
        assert statuses[0] == 200 and statuses[-1] == 429
        client = openai.OpenAI(base_url=gp.url, api_key="placeholder", max_retries=0)
        with pytest.raises(openai.RateLimitError) as e:
            client.chat.completions.create(model="closed", messages=[{"role": "user", "content": "hi"}])
        assert "cannot be reached" in e.value.message and "failurePolicy Closed" in e.value.message
        # Open: served past the lease (and past the limit) while the operator is away ...
        assert [chat(gp, "open") for _ in range(6)] == [200] * 6
        server.start()
        # ... and every request of it reported when the operator is back
        wait_for(lambda: server.spent("open", "1h").requests == 7, timeout=15, what="the spend reported")
        # now the ledger says the budget is over: refused like any exhausted budget
        wait_for(lambda: chat(gp, "open") == 429, timeout=15, what="a refusal once the operator is back")


def test_a_downgrade_budget_downgrades_while_the_operator_is_unreachable(tmp_path: Path,
                                                                         server: FakeLeaseServer) -> None:
    """Downgrade keeps apps working whatever keeps the lease short: exhausted, or an operator
    unreachable (or too slow to answer in time) under failurePolicy Closed."""
    with sidecar(tmp_path, server, "web-0") as gp:
        client = openai.OpenAI(base_url=gp.url, api_key="placeholder", max_retries=0)

        def backend() -> str:
            r = client.chat.completions.with_raw_response.create(
                model="premium", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
            return str(r.headers.get("x-modelroute-backend"))

        assert backend() == "mock/m-5"
        server.stop()
        served = [backend() for _ in range(5)]
        assert served[-1] == "mock/m-6" and set(served) <= {"mock/m-5", "mock/m-6"}, served


def test_spend_settled_just_before_a_window_ends_is_reported_into_that_window(tmp_path: Path,
                                                                              server: FakeLeaseServer) -> None:
    """The lease client in-process, its clock moved across a minute boundary: what was settled and
    not yet reported when the window rolled over still reaches that window's ledger."""
    import asyncio
    import time

    from modelroute_sidecar.budget.client import RemoteGranter
    from modelroute_sidecar.budget.holder import Budgets
    from modelroute_sidecar.budget.ledger import Amount
    from modelroute_sidecar.config import GatewayConfig, from_data

    limits = {"per-minute": {"1m": Limit(requests=100)}}
    server.budgets.update(limits)
    (tmp_path / "token").write_text(TOKEN)
    config = from_data({"budgets": {"per-minute": {
        "name": "per-minute", "limits": [{"window": "1m", "requests": 100}]}}}, GatewayConfig)
    # the server tells windows by its own clock: stay clear of a minute's end
    wait_for(lambda: time.time() % 60 < 45, timeout=20, what="not the last seconds of a minute")
    now = time.time()
    clock = [now - 60]  # the minute before this one

    async def run() -> None:
        granter = RemoteGranter(server.url, "team-a/web-0/abc", tmp_path / "token", server.ca_file)
        budgets = Budgets(granter, clock=lambda: clock[0])
        budgets.apply(config)
        sel = budgets.select("m", None, None)
        lease = sel[0].leases[0]
        previous_start = lease.start
        # the server must see this lease's window as its previous one: grant it by hand
        lease.granted.requests = 10
        for _ in range(3):
            (await budgets.reserve(sel, Amount(requests=1))).settle(granter, Amount(requests=1))
        clock[0] = now  # the next minute: a request rolls the lease over, unreported spend and all
        assert budgets.try_reserve(sel, Amount(requests=1)) is None  # rolled over: nothing granted here yet
        assert lease.previous is not None and lease.used.requests == 0
        await granter._call(granter.leases, short=[])
        assert lease.previous is None
        assert server.spent_in("per-minute", "1m", previous_start).requests == 3
        await granter.close()

    asyncio.run(run())
