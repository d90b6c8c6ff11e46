"""The operator's lease server on the real control plane: sidecars' ServiceAccount tokens (from the
API server's TokenRequest, audience modelroute) checked by TokenReview, the ledger written into
the ModelBudget before a grant is answered, the sum of grants never past the limit, a SIGKILL
losing nothing, and ``kubectl get mb``. The client is a plain HTTPS client speaking the lease
protocol (docs/budgets.md), the CA taken from the namespace's modelroute-config ConfigMap as a
sidecar takes it."""

from __future__ import annotations

import json
import ssl
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from modelroute_sidecar.budget.windows import rfc3339, window_start
from tests.controlplane.cluster import wait_for
from tests.operator.conftest import (
    API,
    Cluster,
    OperatorProcess,
    model_route,
    new_key,
    provider_key,
    secret,
)

pytestmark = pytest.mark.controlplane


def budget(name: str, *limits: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "ModelBudget", "metadata": {"name": name},
            "spec": {"limits": list(limits), **spec}}


class LeaseClient:
    """One sidecar process's side of the lease protocol: POST /budget/v1/leases with its token."""

    def __init__(self, url: str, ca: Path, token: str, holder: str) -> None:
        self.url, self.token, self.holder = url, token, holder
        self.context = ssl.create_default_context(cafile=str(ca))

    def post(self, body: Any, token: str | None = None, raw: bytes | None = None) -> tuple[int, dict[str, Any]]:
        data = raw if raw is not None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if (token or self.token) != "":
            headers["Authorization"] = f"Bearer {token if token is not None else self.token}"
        request = urllib.request.Request(f"{self.url}/budget/v1/leases", data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def lease(self, budget: str, window: str, *, used: dict[str, float] | None = None,
              want: dict[str, float] | None = None, start: str | None = None) -> tuple[int, dict[str, Any]]:
        entry = {"budget": budget, "window": window,
                 "windowStart": start or rfc3339(window_start(window, datetime.now(UTC)).timestamp()),
                 "used": used or {}, "want": want or {}}
        return self.post({"holder": self.holder, "leases": [entry]})


def token(cluster: Cluster, namespace: str, account: str, audience: str = "modelroute",
          pod: str | None = None) -> str:
    args = ["create", "token", account, "-n", namespace, "--audience", audience, "--duration", "1h"]
    if pod is not None:
        args += ["--bound-object-kind", "Pod", "--bound-object-name", pod]
    return cluster.kubectl(*args).stdout.strip()


def account(cluster: Cluster, namespace: str, name: str) -> None:
    cluster.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}}, namespace)


@pytest.fixture
def served(cluster: Cluster, operator: OperatorProcess, namespace: str, tmp_path: Path) -> Path:
    """A namespace with a route (so the operator writes its ConfigMap); the lease server's CA
    from that ConfigMap, as the sidecar mounts it."""
    cluster.apply([secret("k", new_key()), provider_key("openai", "k"), model_route("chat", "chat", "openai"),
                   model_route("cheap", "chat-cheap", "openai")], namespace)

    def ca() -> str | None:
        cm = cluster.get("configmap", "modelroute-config", namespace)
        return ((cm or {}).get("data") or {}).get("budget-ca.crt")

    pem = wait_for(ca, timeout=30, interval=0.1, what="budget-ca.crt in modelroute-config")
    path = tmp_path / "budget-ca.crt"
    path.write_text(str(pem))
    return path


def client(cluster: Cluster, operator: OperatorProcess, namespace: str, ca: Path, sa: str = "default",
           pod: str = "app") -> LeaseClient:
    return LeaseClient(f"https://127.0.0.1:{operator.budget_port}", ca, token(cluster, namespace, sa),
                       f"{namespace}/{pod}/{uuid.uuid4().hex[:8]}")


def ledger(cluster: Cluster, namespace: str, name: str, window: str) -> dict[str, Any]:
    body = cluster.get("modelbudget", name, namespace) or {}
    current: dict[str, Any] = (((body.get("status") or {}).get("ledger") or {}).get(window) or {}).get("current") or {}
    return current


def test_a_grant_is_in_the_ledger_before_it_is_answered(cluster: Cluster, operator: OperatorProcess,
                                                        namespace: str, served: Path) -> None:
    cluster.apply(budget("team", {"window": "1h", "usd": 1.0, "requests": 100}), namespace)
    c = client(cluster, operator, namespace, served)
    status, answer = c.lease("team", "1h", want={"usd": 0.1, "requests": 2})
    assert status == 200, answer
    assert answer["ttlSeconds"] == 30
    [entry] = answer["leases"]
    assert entry["budget"] == "team" and entry["window"] == "1h" and entry["exhausted"] is False
    assert set(entry["granted"]) == {"usd", "requests"}  # tokens: not limited, never granted
    # One holder: it gets at least what it asked, at most half of what remains.
    assert 0.1 <= entry["granted"]["usd"] <= 0.5 and 2 <= entry["granted"]["requests"] <= 50
    assert entry["resetAt"].endswith(":00:00Z")
    # Read right after the answer: already written (write-ahead).
    held = ledger(cluster, namespace, "team", "1h")["holders"][c.holder]
    assert held["granted"]["usd"] == pytest.approx(entry["granted"]["usd"])
    # Reporting spend is idempotent (cumulative numbers): twice the same report, counted once.
    for _ in range(2):
        status, answer = c.lease("team", "1h", used={"usd": 0.05, "requests": 1})
        assert status == 200
    assert ledger(cluster, namespace, "team", "1h")["holders"][c.holder]["used"] == {
        "usd": 0.05, "tokens": 0, "requests": 1}


def test_grants_never_sum_past_the_limit_under_concurrent_holders(cluster: Cluster, operator: OperatorProcess,
                                                                   namespace: str, served: Path) -> None:
    cluster.apply(budget("team", {"window": "1d", "usd": 2.0}), namespace)
    accounts = [f"sa{i}" for i in range(4)]
    for a in accounts:
        account(cluster, namespace, a)
    clients = [client(cluster, operator, namespace, served, a, pod=f"pod{i}") for i, a in enumerate(accounts * 2)]
    granted: dict[str, float] = {c.holder: 0.0 for c in clients}
    used: dict[str, float] = {c.holder: 0.0 for c in clients}
    lock = threading.Lock()
    exhausted = threading.Event()

    def run(c: LeaseClient) -> None:
        while not exhausted.is_set():
            with lock:
                spend = max(0.0, granted[c.holder] - used[c.holder]) * 0.9  # spend most of the lease
                used[c.holder] += spend
                report = used[c.holder]
            status, answer = c.lease("team", "1d", used={"usd": report}, want={"usd": 0.05})
            assert status == 200, answer
            [entry] = answer["leases"]
            with lock:
                granted[c.holder] = max(granted[c.holder], entry["granted"]["usd"])
                assert sum(max(granted[h], used[h]) for h in granted) <= 2.0 + 1e-6
            if entry["exhausted"]:
                exhausted.set()

    with ThreadPoolExecutor(len(clients)) as pool:
        list(pool.map(run, clients))
    stored = ledger(cluster, namespace, "team", "1d")["holders"]
    total = sum(max(h["granted"]["usd"], h["used"]["usd"]) for h in stored.values())
    assert total <= 2.0 + 1e-6
    assert total == pytest.approx(2.0, abs=0.01)  # exhausted means (nearly) everything was handed out
    # Every grant a client was told is in the ledger (nothing answered that was not written).
    for holder, g in granted.items():
        assert stored[holder]["granted"]["usd"] >= g - 1e-9
    body = cluster.get("modelbudget", "team", namespace) or {}
    exceeded = [c for c in body["status"]["conditions"] if c["type"] == "Exceeded"]
    assert exceeded and exceeded[0]["status"] == "True" and "window 1d" in exceeded[0]["message"]
    event = wait_for(lambda: next((e for e in cluster.events(namespace) if e["reason"] == "BudgetExceeded"), None),
                     timeout=30, interval=0.2, what="a BudgetExceeded Event")
    assert event is not None and event["type"] == "Warning" and event["involvedObject"]["name"] == "team"


def test_refusals(cluster: Cluster, operator: OperatorProcess, namespace: str, served: Path,
                  request: pytest.FixtureRequest) -> None:
    cluster.apply(budget("team", {"window": "1h", "requests": 10}), namespace)
    c = client(cluster, operator, namespace, served)
    # No token, a token for the API server (not for modelroute), garbage: 401, and nothing written.
    assert c.post({"holder": c.holder, "leases": []}, token="")[0] == 401
    assert c.post({"holder": c.holder, "leases": []}, token=token(cluster, namespace, "default",
                                                                  audience="https://kubernetes.default.svc"))[0] == 401
    status, answer = c.post({"holder": c.holder, "leases": []}, token="not-a-token")
    assert status == 401 and "not-a-token" not in json.dumps(answer)
    # A token of another namespace cannot touch this namespace's budget.
    other = f"{namespace[:50]}-other"
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": other}})
    request.addfinalizer(lambda: cluster.delete("namespace", other))
    intruder = LeaseClient(c.url, served, token(cluster, other, "default"), c.holder)
    status, answer = intruder.lease("team", "1h", want={"requests": 5})
    assert status == 403, answer
    assert "may not hold leases" in answer["error"]["message"]
    assert c.holder not in ledger(cluster, namespace, "team", "1h").get("holders", {})
    # ...and its own namespace has no such budget.
    own = LeaseClient(c.url, served, intruder.token, f"{other}/app/1")
    status, answer = own.lease("team", "1h", want={"requests": 5})
    assert status == 200 and answer["leases"][0]["error"] == "not found"
    # A pod-bound token holds leases only as that pod.
    cluster.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bound"},
                   "spec": {"serviceAccountName": "default", "containers": [{"name": "app", "image": "app:1"}]}},
                  namespace)
    bound = token(cluster, namespace, "default", pod="bound")
    assert LeaseClient(c.url, served, bound, f"{namespace}/bound/1").lease("team", "1h")[0] == 200
    assert LeaseClient(c.url, served, bound, f"{namespace}/another/1").lease("team", "1h")[0] == 403
    # Bad bodies: a 400 that says what is wrong.
    for body, words in [(b"{", "not JSON"), (json.dumps({"holder": c.holder}).encode(), "leases"),
                        (json.dumps({"holder": c.holder, "leases": [{"budget": "team", "window": "1w",
                                                                       "windowStart": "x"}]}).encode(), "window"),
                        (json.dumps({"holder": c.holder, "leases": [{
                            "budget": "team", "window": "1h", "windowStart": "2026-01-01T00:00:00Z",
                            "used": {"usd": -1}}]}).encode(), "usd")]:
        status, answer = c.post(None, raw=body)
        assert status == 400 and words in answer["error"]["message"], (body, answer)
    # A window the budget does not have, a window long gone.
    assert c.lease("team", "1d")[1]["leases"][0]["error"] == "no such window"
    gone = c.lease("team", "1h", start="2020-01-01T00:00:00Z")[1]["leases"][0]
    assert "not the current or the previous window" in gone["error"]
    assert "not-a-token" not in operator.logs() and intruder.token not in operator.logs()
    answers = {dict(labels)["code"]: v for (name, labels), v in operator.scrape().items()
               if name == "modelroute_operator_lease_requests_total"}
    assert answers["401"] >= 3 and answers["403"] >= 2 and answers["400"] >= 4 and answers["200"] >= 3, answers


def test_sigkill_loses_nothing(cluster: Cluster, operator: OperatorProcess, namespace: str, served: Path) -> None:
    cluster.apply(budget("team", {"window": "1h", "tokens": 100_000}), namespace)
    c = client(cluster, operator, namespace, served)
    status, answer = c.lease("team", "1h", used={"tokens": 0}, want={"tokens": 10_000})
    assert status == 200
    first = answer["leases"][0]["granted"]["tokens"]
    operator.kill()
    try:
        # Unreachable: the sidecar keeps spending its lease meanwhile.
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"{c.url}/budget/v1/leases", context=c.context, timeout=5)
    finally:
        operator.start()
    status, answer = c.lease("team", "1h", used={"tokens": first})
    assert status == 200
    held = ledger(cluster, namespace, "team", "1h")["holders"][c.holder]
    assert held["used"]["tokens"] == first and held["granted"]["tokens"] >= first
    body = cluster.get("modelbudget", "team", namespace) or {}
    assert body["status"]["windows"][0]["spent"]["tokens"] == first


def test_kubectl_get_mb_shows_spent_of_limit(cluster: Cluster, operator: OperatorProcess, namespace: str,
                                            served: Path) -> None:
    cluster.apply([budget("team", {"window": "1h", "usd": 1.0}, {"window": "1d", "requests": 1000}),
                   budget("down", {"window": "1h", "usd": 1.0}, onExceeded="Downgrade", downgradeTo="nope")],
                  namespace)
    cluster.wait_ready("modelbudget", "team", namespace)
    cluster.wait_ready("modelbudget", "down", namespace, status="False", reason="DowngradeTargetNotFound")
    c = client(cluster, operator, namespace, served)
    assert c.lease("team", "1h", used={"usd": 0.41}, want={"usd": 0.01})[0] == 200

    def row() -> list[str] | None:
        lines = cluster.kubectl("get", "mb", "team", "-n", namespace).stdout.splitlines()
        return lines[1].split() if "$0.41/$1.00" in lines[1] else None

    cols = wait_for(row, timeout=30, interval=0.2, what="kubectl get mb shows $0.41/$1.00")
    assert cols is not None and cols[:4] == ["team", "1h", "$0.41/$1.00", "False"]
    # The downgrade target appears: Ready.
    cluster.apply(budget("down", {"window": "1h", "usd": 1.0}, onExceeded="Downgrade", downgradeTo="chat-cheap"),
                  namespace)
    cluster.wait_ready("modelbudget", "down", namespace)


def test_a_window_rolls_over_without_traffic(cluster: Cluster, operator: OperatorProcess, namespace: str,
                                            served: Path) -> None:
    """A 1m window spent: Exceeded, with a Warning Event; at the next minute the operator shows a new
    window at zero and Exceeded False by itself (nobody asks for a lease), with a Normal Event."""
    cluster.apply(budget("minute", {"window": "1m", "requests": 2}), namespace)
    c = client(cluster, operator, namespace, served)
    # Not in a minute's last seconds, so the lease and the first read fall in the same window.
    wait_for(lambda: time.time() % 60 < 45, timeout=20, interval=0.2, what="a minute's first 45 seconds")
    status, answer = c.lease("minute", "1m", used={"requests": 2}, want={"requests": 1})
    assert status == 200 and answer["leases"][0]["exhausted"] is True, answer
    first = (cluster.get("modelbudget", "minute", namespace) or {})["status"]
    assert first["windows"][0]["spent"]["requests"] == 2
    assert [cd["status"] for cd in first["conditions"] if cd["type"] == "Exceeded"] == ["True"]

    def rolled() -> dict[str, Any] | None:
        st = (cluster.get("modelbudget", "minute", namespace) or {}).get("status") or {}
        windows = st.get("windows") or [{}]
        return st if windows[0].get("start", first["windows"][0]["start"]) != first["windows"][0]["start"] else None

    now = (cluster.get("modelbudget", "minute", namespace) or {})["status"]
    after = wait_for(rolled, timeout=75, interval=0.5, what="the next 1m window in status",
                     on_timeout=lambda: f"\n{now}")
    assert after is not None
    assert after["windows"][0]["spent"] == {"usd": 0, "tokens": 0, "requests": 0}
    assert after["spent"] == "0/2 requests"
    assert [cd["status"] for cd in after["conditions"] if cd["type"] == "Exceeded"] == ["False"]
    # The spent window stays as `previous` for late settles; a new one has no holders.
    assert after["ledger"]["1m"]["previous"]["holders"][c.holder]["used"]["requests"] == 2
    reasons = wait_for(lambda: {e["reason"] for e in cluster.events(namespace)
                                if e["involvedObject"]["name"] == "minute"} >= {"BudgetExceeded", "BudgetAvailable"},
                       timeout=30, interval=0.2, what="the Events of the window")
    assert reasons


@pytest.mark.usefixtures("webhook_config_restored")
def test_two_operator_replicas_never_grant_past_the_limit(cluster: Cluster, operator: OperatorProcess,
                                                          operator_kubeconfig: Path, namespace: str, served: Path,
                                                          tmp_path: Path) -> None:
    """Two operators (a rolling upgrade, or two replicas) leasing one budget at once: each ledger
    write carries the resourceVersion it read, so neither overwrites the other's grants."""
    second = OperatorProcess(operator_kubeconfig, tmp_path / "second.log", cluster,
                             # the same certificate (so the ConfigMaps' CA does not flap between them)
                             "--webhook-cert-dir", str(operator.log_path.parent / f"certs-{operator.webhook_port}"))
    second.start()
    try:
        cluster.apply(budget("team", {"window": "1d", "requests": 200}), namespace)
        clients = [client(cluster, operator, namespace, served, pod=f"pod{i}") for i in range(8)]
        for c in clients[1::2]:
            c.url = f"https://127.0.0.1:{second.budget_port}"
        told: dict[str, float] = {}

        def run(c: LeaseClient) -> None:
            granted = 0.0
            while True:  # spend every grant at once, ask for more, until the budget says exhausted
                status, answer = c.lease("team", "1d", used={"requests": granted}, want={"requests": 5})
                assert status == 200, answer
                [entry] = answer["leases"]
                granted = entry["granted"]["requests"]
                told[c.holder] = granted
                if entry["exhausted"]:
                    return

        with ThreadPoolExecutor(len(clients)) as pool:
            list(pool.map(run, clients))
        holders = ledger(cluster, namespace, "team", "1d")["holders"]
        assert sum(max(h["granted"]["requests"], h["used"]["requests"]) for h in holders.values()) <= 200
        assert sum(told.values()) <= 200  # what the sidecars were told, all of it in the ledger:
        for holder, granted in told.items():
            assert holders[holder]["granted"]["requests"] >= granted
        assert sum(told.values()) >= 200 - len(clients)  # and the budget handed out, not lost
    finally:
        assert second.stop() == 0, second.logs()[-3000:]
