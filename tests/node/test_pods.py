"""modelroute on real pods: the webhook injects the sidecar from the built image, kubelet
runs it as a native sidecar next to an app container, and the app talks to it on
127.0.0.1 while a fake OpenAI upstream (on the node's address) answers.

Every request is made from inside a pod (the app container's own command, or
`kubectl exec` into it), with Python's standard library: what any app has.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from modelroute_operator import names
from modelroute_sidecar.config import DEFAULT_CONFIG_DIR, DEFAULT_PORT, KEYS_SUBDIR
from tests.controlplane.cluster import wait_for
from tests.fakes.openai import FakeOpenAI
from tests.gateway.harness import FAST
from tests.node.conftest import (
    APP,
    app_pod,
    app_pod_spec,
    condition,
    exec_in_background,
    exec_python,
    new_pod_namespace,
    pod,
    start_operator,
    wait_pod_ready,
)
from tests.node.node import Node, NodeAssets
from tests.operator.conftest import Cluster, OperatorProcess, model_route, new_key, provider_key, secret

pytestmark = pytest.mark.node

# Requests from inside a pod: urllib, one function for every dialect. Prints nothing itself.
CLIENT = r"""
import json, os, urllib.request, urllib.error
def call(path, body, headers=None, base=None):
    base = base or os.environ["OPENAI_BASE_URL"].rsplit("/v1", 1)[0]
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return {"status": r.status, "backend": r.headers.get("x-modelroute-backend"), "body": json.loads(r.read())}
    except urllib.error.HTTPError as e:
        return {"status": e.code, "backend": e.headers.get("x-modelroute-backend"),
                "body": e.read().decode(errors="replace")}
    except OSError as e:
        return {"status": 0, "error": repr(e)}
def chat(model, text="hello"):
    return call("/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": text}]},
                {"Authorization": "Bearer " + os.environ["OPENAI_API_KEY"]})
"""

# The app: its very first statement is a request to the sidecar (no retry, no wait).
FIRST_CALL = CLIENT + r"""
import signal
print(json.dumps({"base_url": os.environ["OPENAI_BASE_URL"], **chat("chat", "first words from the pod")}),
      flush=True)
signal.pause()
"""


def configure(cluster: Cluster, namespace: str, upstream: FakeOpenAI, key: str, model: str = "gpt-4o") -> None:
    """Secret + ProviderKey (the fake, by the node's address) + ModelRoute `chat`."""
    upstream.keys.add(key)
    cluster.apply([
        secret("openai-key", key),
        provider_key("openai", "openai-key", baseURL=upstream.base_url),
        model_route("chat", "chat", ("openai", model), **FAST),
    ], namespace)
    cluster.wait_ready("modelroute", "chat", namespace)


def started_at(status: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(status["state"]["running"]["startedAt"].replace("Z", "+00:00"))


def first_line(cluster: Cluster, name: str, namespace: str) -> Any:
    def logged() -> str:
        return cluster.kubectl("logs", name, "-n", namespace, "-c", APP).stdout.strip()

    text = wait_for(logged, timeout=60, what=f"the first output of {namespace}/{name}")
    return json.loads(text.splitlines()[0])


class Configured:
    """One namespace with a route to the fake, and one annotated app pod running in it."""

    def __init__(self, cluster: Cluster, namespace: str, key: str, pod: dict[str, Any]) -> None:
        self.cluster, self.namespace, self.key, self.pod = cluster, namespace, key, pod
        self.name = pod["metadata"]["name"]


@pytest.fixture(scope="module")
def configured(node_cluster: Cluster, node_operator: OperatorProcess, upstream: FakeOpenAI,
               node_assets: NodeAssets) -> Iterator[Configured]:
    cluster, key = node_cluster, new_key("pod-")
    namespace = new_pod_namespace(cluster, "pods-configured")
    configure(cluster, namespace, upstream, key)
    cluster.apply(app_pod("app", node_assets.image, FIRST_CALL), namespace)
    ready = wait_pod_ready(cluster, "app", namespace)
    yield Configured(cluster, namespace, key, ready)
    cluster.kubectl("delete", "namespace", namespace, "--wait=false")


def test_the_sidecar_starts_first_and_answers_the_apps_first_call(configured: Configured,
                                                                   upstream: FakeOpenAI) -> None:
    spec = configured.pod["spec"]
    sidecar = spec["initContainers"][0]
    assert sidecar["name"] == names.SIDECAR_CONTAINER and sidecar["restartPolicy"] == "Always"
    assert sidecar["securityContext"]["readOnlyRootFilesystem"] is True
    status = configured.pod["status"]
    (sidecar_status,) = [s for s in status["initContainerStatuses"] if s["name"] == names.SIDECAR_CONTAINER]
    (app_status,) = [s for s in status["containerStatuses"] if s["name"] == APP]
    assert sidecar_status["started"] and sidecar_status["ready"]
    assert started_at(sidecar_status) <= started_at(app_status)
    assert app_status["restartCount"] == 0

    first = first_line(configured.cluster, configured.name, configured.namespace)
    assert first["base_url"] == f"http://127.0.0.1:{DEFAULT_PORT}/v1"
    assert first["status"] == 200, first
    assert first["backend"] == "openai/gpt-4o"
    assert first["body"]["choices"][0]["message"]["content"]
    # The fake saw it, with the real key the app never held.
    (seen,) = [r for r in upstream.requests_to("/chat/completions")
               if "first words from the pod" in json.dumps(r.body)]
    assert seen.headers["authorization"] == f"Bearer {configured.key}"
    assert seen.body["model"] == "gpt-4o"


def test_anthropic_and_responses_dialects_from_inside_the_pod(configured: Configured) -> None:
    script = CLIENT + r"""
messages = call("/v1/messages", {"model": "chat", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]},
                {"x-api-key": os.environ["ANTHROPIC_API_KEY"], "anthropic-version": "2023-06-01"},
                base=os.environ["ANTHROPIC_BASE_URL"])
responses = call("/v1/responses", {"model": "chat", "input": "hi"},
                 {"Authorization": "Bearer " + os.environ["OPENAI_API_KEY"]})
print(json.dumps({"messages": messages, "responses": responses, "anthropic": os.environ["ANTHROPIC_BASE_URL"]}))
"""
    out = exec_python(configured.cluster, configured.name, configured.namespace, script)
    assert out["anthropic"] == f"http://127.0.0.1:{DEFAULT_PORT}"
    messages, responses = out["messages"], out["responses"]
    assert messages["status"] == 200, messages
    assert messages["body"]["type"] == "message" and messages["body"]["role"] == "assistant"
    assert messages["body"]["content"][0]["type"] == "text" and messages["body"]["content"][0]["text"]
    assert responses["status"] == 200, responses
    assert responses["body"]["object"] == "response" and responses["body"]["status"] == "completed"
    texts = [part["text"] for item in responses["body"]["output"] if item["type"] == "message"
             for part in item["content"] if part["type"] == "output_text"]
    assert texts and texts[0]
    assert messages["backend"] == responses["backend"] == "openai/gpt-4o"


def test_kubelet_probes_the_sidecar_ready(configured: Configured) -> None:
    sidecar = configured.pod["spec"]["initContainers"][0]
    assert sidecar["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert condition(pod(configured.cluster, configured.name, configured.namespace), "Ready") == "True"


def test_a_namespace_without_config_still_gets_a_ready_pod(node_cluster: Cluster, node_operator: OperatorProcess,
                                                           pod_namespace: str, node_assets: NodeAssets) -> None:
    script = CLIENT + "print(json.dumps(chat('chat')), flush=True)\nimport signal\nsignal.pause()\n"
    node_cluster.apply(app_pod("bare", node_assets.image, script), pod_namespace)
    ready = wait_pod_ready(node_cluster, "bare", pod_namespace)
    assert ready["spec"]["initContainers"][0]["name"] == names.SIDECAR_CONTAINER
    first = first_line(node_cluster, "bare", pod_namespace)
    assert first["status"] == 404 and '"model_not_found"' in first["body"], first  # served, with no routes


def test_the_keys_are_not_visible_from_the_app_container(configured: Configured) -> None:
    key = configured.key
    # Reversed: the key itself must not appear in this script's own command line.
    look = f"KEY = {key[::-1]!r}[::-1]\nCONFIG_DIR = {DEFAULT_CONFIG_DIR!r}\n" + r"""
import json, os
found = {"env": [k for k, v in os.environ.items() if KEY in v], "files": [], "proc": [], "pids": []}
def scan(path):
    try:
        with open(path, "rb") as f:
            if KEY.encode() in f.read(1 << 20):
                found["files"].append(path)
    except OSError:
        pass
for top in ("/etc", "/tmp", "/var", "/run", "/scratch", "/home", "/root", "/mnt", "/srv"):
    for root, dirs, files in os.walk(top):
        for f in files:
            scan(os.path.join(root, f))
for pid in os.listdir("/proc"):
    if pid.isdigit():
        found["pids"].append(int(pid))
        for what in ("environ", "cmdline"):
            try:
                with open(f"/proc/{pid}/{what}", "rb") as f:
                    if KEY.encode() in f.read():
                        found["proc"].append(f"{pid}/{what}")
            except OSError:
                pass
        if os.path.exists(f"/proc/{pid}/root{CONFIG_DIR}"):
            found["proc"].append(f"{pid}/root{CONFIG_DIR}")
print(json.dumps(found))
"""
    found = exec_python(configured.cluster, configured.name, configured.namespace, look)
    assert found["env"] == [] and found["files"] == [] and found["proc"] == [], found
    assert len(found["pids"]) <= 3, found["pids"]  # its own processes only: no shared PID namespace
    # The control: the sidecar container does hold the key, where the webhook mounted it.
    mine = exec_python(configured.cluster, configured.name, configured.namespace,
                       f"import json, os; d = {DEFAULT_CONFIG_DIR + '/' + KEYS_SUBDIR!r}; "
                       "print(json.dumps({n: open(os.path.join(d, n)).read() for n in os.listdir(d) "
                       "if not n.startswith('..')}))",
                       container=names.SIDECAR_CONTAINER)
    assert any(key in v for v in mine.values()), list(mine)


def test_route_edit_and_key_rotation_reach_the_running_sidecar_without_a_failed_request(
        node: Node, node_cluster: Cluster, node_operator: OperatorProcess, upstream: FakeOpenAI,
        pod_namespace: str, node_assets: NodeAssets, tmp_path: Path) -> None:
    cluster, ns = node_cluster, pod_namespace
    k1, k2 = new_key("rot-1-"), new_key("rot-2-")
    configure(cluster, ns, upstream, k1)
    cluster.apply(app_pod("looper", node_assets.image, "import signal; signal.pause()"), ns)
    wait_pod_ready(cluster, "looper", ns)

    # A client inside the pod, sending requests one after another until told to stop.
    loop = CLIENT + r"""
import time, collections
ok, failed = collections.Counter(), []
while not os.path.exists("/scratch/stop"):
    r = chat("chat")
    if r["status"] == 200:
        ok[r["backend"]] += 1
    else:
        failed.append(r)
    time.sleep(0.02)  # pacing: a steady client, not a load test
print(json.dumps({"ok": ok, "failed": failed[:5], "failures": len(failed)}), flush=True)
"""
    out = tmp_path / "loop.out"
    client = exec_in_background(node, "looper", ns, loop, out)
    try:
        def sent(model: str | None = None, key: str | None = None) -> int:
            return sum(1 for r in upstream.requests_to("/chat/completions")
                       if (model is None or (isinstance(r.body, dict) and r.body.get("model") == model))
                       and (key is None or r.headers.get("authorization") == f"Bearer {key}"))

        wait_for(lambda: sent("gpt-4o", k1) >= 10, timeout=60, what="the loop's first requests")
        # Edit the route: the same sidecar process picks it up from the ConfigMap volume.
        cluster.apply(model_route("chat", "chat", ("openai", "gpt-4.1"), **FAST), ns)
        wait_for(lambda: sent("gpt-4.1") >= 10, timeout=120, what="requests with the edited route")
        # Rotate: the provider accepts both keys, the Secret changes, then the old key is revoked.
        upstream.keys.add(k2)
        cluster.apply(secret("openai-key", k2), ns)
        wait_for(lambda: sent(key=k2) >= 10, timeout=120, what="requests with the new key")
        upstream.keys.discard(k1)
        revoked_at = len(upstream.requests)
        wait_for(lambda: len(upstream.requests) >= revoked_at + 20, timeout=60, what="requests after revoking")
    finally:
        cluster.kubectl("exec", "looper", "-n", ns, "-c", APP, "--", "python3", "-c",
                        "open('/scratch/stop', 'w').close()", check=False)
        client.wait(60)
    summary = json.loads(out.read_text().strip().splitlines()[-1])
    assert summary["failures"] == 0, summary["failed"]
    assert summary["ok"].get("openai/gpt-4o", 0) >= 10 and summary["ok"].get("openai/gpt-4.1", 0) >= 30, summary
    sidecar = next(s for s in pod(cluster, "looper", ns)["status"]["initContainerStatuses"]
                   if s["name"] == names.SIDECAR_CONTAINER)
    assert sidecar["restartCount"] == 0  # followed without a restart


def test_a_pod_created_while_the_operator_is_down_is_refused_then_created_by_its_controller(
        node: Node, node_cluster: Cluster, node_operator: OperatorProcess, upstream: FakeOpenAI,
        pod_namespace: str, node_assets: NodeAssets) -> None:
    cluster, ns = node_cluster, pod_namespace
    configure(cluster, ns, upstream, new_key("down-"))
    node_operator.kill()  # crashed: its webhook configuration stays, failurePolicy Fail
    try:
        webhook = cluster.get("mutatingwebhookconfiguration", names.WEBHOOK_CONFIGURATION)
        assert webhook is not None and webhook["webhooks"][0]["failurePolicy"] == "Fail"
        refused = cluster.apply(app_pod("direct", node_assets.image, "import signal; signal.pause()"), ns,
                                check=False)
        assert refused.returncode != 0 and "failed calling webhook" in refused.stderr, refused.stderr
        template = {"metadata": {"labels": {"app": "web"}, "annotations": {"modelroute.dev/inject": "true"}},
                    "spec": app_pod_spec(node_assets.image, FIRST_CALL)}
        cluster.apply({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
                       "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}}, "template": template}},
                      ns)

        def refused_by_webhook() -> bool:
            return any(e.get("reason") == "FailedCreate" and "failed calling webhook" in e.get("message", "")
                       for e in cluster.events(ns))

        wait_for(refused_by_webhook, timeout=60, what="the ReplicaSet's FailedCreate event")
        assert cluster.items("pods", ns) == []
    finally:
        restarted_at = time.monotonic()
        start_operator(node, node_operator)

    def running() -> dict[str, Any] | None:
        pods = cluster.items("pods", ns, "-l", "app=web")
        return pods[0] if pods and condition(pods[0], "Ready") == "True" else None

    web = wait_for(running, timeout=180, interval=0.5, what="the Deployment's pod, once the operator is back")
    assert web is not None
    assert web["spec"]["initContainers"][0]["name"] == names.SIDECAR_CONTAINER
    first = first_line(cluster, web["metadata"]["name"], ns)
    assert first["status"] == 200, first
    assert time.monotonic() - restarted_at < 180
