"""Caller identity and access (issue 12): a real `modelroute serve` with caller keys, the
official SDKs as callers; `modelroute sidecar` as the pod's ServiceAccount.

Callers: alice (two keys, stringData) and bob (one key, base64 data). Routes: one for all,
one for alice, one for alice and bob; ProviderKey globs: open-* for all, team-* for alice.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
import yaml

from modelroute_sidecar.cli import loopback
from modelroute_sidecar.compile import compile_resources
from tests.controlplane.cluster import wait_for
from tests.gateway.harness import API, model_route
from tests.gateway.procs import GatewayProcess, modelroute, scrape

ALICE_KEYS = ("mrk-alice-7f3a9c1e5b2d", "mrk-alice-second-0a9b8c")
BOB_KEY = "mrk-bob-4d6e8f0a2c4e"
WRONG_KEY = "mrk-nobody-1a2b3c4d5e6f"


def mock_key(name: str, models: list[str], allowed: list[str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"provider": "mock", "models": models}
    if allowed is not None:
        spec["allowedServiceAccounts"] = allowed
    return {"apiVersion": API, "kind": "ProviderKey", "metadata": {"name": name}, "spec": spec}


DOCS = [
    mock_key("shared", ["open-*"]),
    mock_key("private", ["team-*", "team-fixed"], ["alice"]),
    model_route("everyone", ("shared", "m")),
    model_route("alice-only", ("shared", "m"), allowedServiceAccounts=["alice"]),
    model_route("pair", ("shared", "m"), allowedServiceAccounts=["alice", "bob"]),
]


def caller_keys(bob_key: str = BOB_KEY) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "callers"},
            "stringData": {"alice": "\n".join(ALICE_KEYS) + "\n"},
            "data": {"bob": base64.b64encode(bob_key.encode()).decode()}}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("access")
    (tmp / "routes.yaml").write_text(yaml.safe_dump_all(DOCS))
    (tmp / "callers.yaml").write_text(yaml.safe_dump(caller_keys()))
    with modelroute(tmp, "serve", "-f", str(tmp / "routes.yaml"), "--caller-keys", str(tmp / "callers.yaml"),
                    "--log-level", "debug", "--reload-interval", "0.2",
                    env={"OPENAI_API_KEY": "", "ANTHROPIC_API_KEY": ""}) as proc:
        yield proc


def oai(gw: GatewayProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url, api_key=key, max_retries=0)


def claude(gw: GatewayProcess, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=f"http://127.0.0.1:{gw.port}", api_key=key, max_retries=0)


def message(gw: GatewayProcess, key: str, model: str = "everyone") -> anthropic.types.Message:
    return claude(gw, key).messages.create(model=model, max_tokens=10, messages=[{"role": "user", "content": "hi"}])


def body_of(e: pytest.ExceptionInfo[anthropic.APIStatusError]) -> dict[str, Any]:
    body = e.value.body
    assert isinstance(body, dict)
    return body


def chat(gw: GatewayProcess, key: str, model: str) -> str:
    r = oai(gw, key).chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    return r.choices[0].message.content or ""


def raw(gw: GatewayProcess, path: str, headers: dict[str, str], body: dict[str, Any] | None = None
        ) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{gw.port}{path}", data=data,
                                 headers={"content-type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


CHAT = {"model": "everyone", "messages": [{"role": "user", "content": "hi"}]}
MESSAGE = {"model": "everyone", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}


def test_without_a_caller_key_every_endpoint_is_a_401_in_the_callers_dialect(gw: GatewayProcess) -> None:
    status, body = raw(gw, "/v1/chat/completions", {}, CHAT)
    assert status == 401
    assert body["error"]["type"] == "authentication_error" and body["error"]["code"] == "invalid_api_key"
    assert "Missing caller key" in body["error"]["message"]
    status, body = raw(gw, "/v1/messages", {}, MESSAGE)
    assert status == 401
    assert body["type"] == "error" and body["error"]["type"] == "authentication_error"
    for path in ("/v1/models", "/v1/models/everyone"):
        status, body = raw(gw, path, {})
        assert status == 401 and body["error"]["code"] == "invalid_api_key", path
    status, body = raw(gw, "/v1/messages/count_tokens", {}, MESSAGE)
    assert status == 401 and body["error"]["type"] == "authentication_error"
    # A Bearer of nothing, or another scheme, is no key either.
    for auth in ("Bearer ", "Basic " + base64.b64encode(f"alice:{ALICE_KEYS[0]}".encode()).decode(), ALICE_KEYS[0]):
        assert raw(gw, "/v1/chat/completions", {"authorization": auth}, CHAT)[0] == 401


def test_a_wrong_key_is_a_401_for_both_sdks(gw: GatewayProcess) -> None:
    with pytest.raises(openai.AuthenticationError) as e:
        chat(gw, WRONG_KEY, "everyone")
    assert e.value.status_code == 401 and e.value.code == "invalid_api_key"
    assert WRONG_KEY not in str(e.value.body)
    with pytest.raises(anthropic.AuthenticationError) as a:
        message(gw, WRONG_KEY)
    assert a.value.status_code == 401
    assert body_of(a)["error"]["type"] == "authentication_error"


def test_the_right_key_by_bearer_or_x_api_key(gw: GatewayProcess) -> None:
    assert chat(gw, ALICE_KEYS[0], "everyone")  # the OpenAI SDK: Authorization: Bearer
    assert chat(gw, ALICE_KEYS[1], "everyone")  # either of a caller's keys
    assert chat(gw, BOB_KEY, "everyone")  # from base64 data
    msg = message(gw, BOB_KEY)  # the Anthropic SDK: x-api-key
    assert msg.content
    # A client that sends both (a placeholder in one): the good one counts.
    status, _ = raw(gw, "/v1/chat/completions", {"authorization": "Bearer placeholder", "x-api-key": BOB_KEY}, CHAT)
    assert status == 200


def test_a_route_not_allowed_to_the_caller_is_a_403_naming_route_and_caller(gw: GatewayProcess) -> None:
    before = scrape(gw)
    with pytest.raises(openai.PermissionDeniedError) as e:
        chat(gw, BOB_KEY, "alice-only")
    assert e.value.status_code == 403 and e.value.code == "access_denied"
    said = e.value.body["message"]  # type: ignore[index]
    assert "'bob'" in said and "ModelRoute/alice-only" in said and BOB_KEY not in said
    with pytest.raises(anthropic.PermissionDeniedError) as a:
        message(gw, BOB_KEY, "alice-only")
    assert body_of(a)["error"]["type"] == "permission_error"
    assert raw(gw, "/v1/models/alice-only", {"x-api-key": BOB_KEY})[0] == 403
    assert raw(gw, "/v1/messages/count_tokens", {"x-api-key": BOB_KEY}, {**MESSAGE, "model": "alice-only"})[0] == 403
    # Allowed: alice here, both on the pair.
    assert chat(gw, ALICE_KEYS[1], "alice-only")
    assert chat(gw, BOB_KEY, "pair") and chat(gw, ALICE_KEYS[0], "pair")
    after = scrape(gw)
    assert denied(after, "alice-only") - denied(before, "alice-only") == 4
    lines = [json.loads(line) for line in gw.logs().splitlines() if line.startswith("{")]
    refused = [r for r in lines if r.get("status") == 403 and r.get("model") == "alice-only"]
    assert refused and all(r["reason"] == "access_denied" and "'bob'" in r["message"] for r in refused)
    # Served requests name their caller in the access log (never its key).
    served = {(r.get("route"), r.get("caller")) for r in lines if r.get("status") == 200 and "route" in r}
    assert {("alice-only", "alice"), ("pair", "bob"), ("pair", "alice")} <= served


def denied(text: str, route: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
               if s.name == "modelroute_access_denied_total" and s.labels.get("route") == route)


def test_glob_routed_names_follow_the_provider_keys_allowed_service_accounts(gw: GatewayProcess) -> None:
    assert chat(gw, BOB_KEY, "open-anything")
    assert chat(gw, ALICE_KEYS[0], "team-anything")
    with pytest.raises(openai.PermissionDeniedError) as e:
        chat(gw, BOB_KEY, "team-anything")
    assert "ProviderKey private" in e.value.body["message"]  # type: ignore[index]


def test_models_lists_only_what_the_caller_may_use(gw: GatewayProcess) -> None:
    alice = sorted(m.id for m in oai(gw, ALICE_KEYS[0]).models.list())
    bob = sorted(m.id for m in oai(gw, BOB_KEY).models.list())
    assert alice == ["alice-only", "everyone", "pair", "team-fixed"]
    assert bob == ["everyone", "pair"]
    assert raw(gw, "/v1/models/pair", {"authorization": f"Bearer {BOB_KEY}"})[0] == 200


def test_caller_keys_reload_with_the_files_and_never_reach_the_log(gw: GatewayProcess, tmp_path: Path) -> None:
    files = [a for a in gw.proc.args if isinstance(a, str) and a.endswith("callers.yaml")]  # type: ignore[union-attr]
    callers = Path(files[0])
    rotated = "mrk-bob-rotated-9e8d7c6b"
    callers.write_text(yaml.safe_dump(caller_keys(rotated)))
    wait_for(lambda: raw(gw, "/v1/chat/completions", {"x-api-key": rotated}, CHAT)[0] == 200, timeout=15,
             what="the rotated key to be accepted")
    assert raw(gw, "/v1/chat/completions", {"x-api-key": BOB_KEY}, CHAT)[0] == 401
    # A broken caller-keys file keeps the last good one.
    callers.write_text("kind: Secret\ndata:\n  bob: '%%% not base64'\n")
    wait_for(lambda: "caller keys" in gw.logs() and "not valid base64" in gw.logs(), timeout=15,
             what="the failed reload to be logged")
    assert raw(gw, "/v1/chat/completions", {"x-api-key": rotated}, CHAT)[0] == 200
    callers.write_text(yaml.safe_dump(caller_keys()))
    wait_for(lambda: raw(gw, "/v1/chat/completions", {"x-api-key": BOB_KEY}, CHAT)[0] == 200, timeout=15,
             what="the original key to be accepted again")
    assert raw(gw, "/v1/chat/completions", {"authorization": f"Bearer {WRONG_KEY}"}, CHAT)[0] == 401
    assert raw(gw, "/v1/chat/completions", {"x-api-key": BOB_KEY}, {**CHAT, "model": "alice-only"})[0] == 403
    wait_for(lambda: '"status":403' in gw.logs(), timeout=10, what="the access-log line of the 403")
    logs = gw.logs()
    assert '"status":401' in logs and '"status":403' in logs  # the refusals were logged, at debug level
    for secret in (*ALICE_KEYS, BOB_KEY, WRONG_KEY, rotated):
        assert secret not in logs
    assert "caller keys of alice, bob" in logs


def run_serve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "routes.yaml").write_text(yaml.safe_dump_all(DOCS))
    return subprocess.run([sys.executable, "-m", "modelroute_sidecar", "serve", "-f", str(tmp_path / "routes.yaml"),
                           "--metrics-port", "0", *args], capture_output=True, text=True, timeout=30)


def test_serve_refuses_to_be_an_open_proxy(tmp_path: Path) -> None:
    for host in ("0.0.0.0", "::", "192.0.2.10", "gateway.example"):
        r = run_serve(tmp_path, "--host", host)
        assert r.returncode == 2, (host, r.stderr)
        assert "without --caller-keys" in r.stderr and "--allow-unauthenticated" in r.stderr
    assert [h for h in ("127.0.0.1", "127.8.9.10", "::1", "localhost") if not loopback(h)] == []


def test_a_bad_caller_keys_file_stops_serve_without_quoting_a_key(tmp_path: Path) -> None:
    shared = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "c"},
              "stringData": {"alice": BOB_KEY, "bob": BOB_KEY}}
    for doc, words in ((shared, "share a key"), ({"kind": "Secret", "stringData": {"a b": BOB_KEY}}, "caller names"),
                       ({"kind": "Secret", "stringData": {"alice": "\n"}}, "holds no key"),
                       ({"kind": "ConfigMap", "data": {"alice": BOB_KEY}}, "exactly one Secret")):
        (tmp_path / "callers.yaml").write_text(yaml.safe_dump(doc))
        r = run_serve(tmp_path, "--caller-keys", str(tmp_path / "callers.yaml"))
        assert r.returncode == 2 and words in r.stderr, r.stderr
        assert BOB_KEY not in r.stderr + r.stdout


def test_sidecar_callers_are_the_pods_service_account(tmp_path: Path) -> None:
    result = compile_resources(DOCS)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.json").write_text(result.config.dump_json())
    env = {"MODELROUTE_SERVICE_ACCOUNT": "bob"}
    with modelroute(tmp_path, "sidecar", "--config-dir", str(tmp_path), env=env) as side:
        # No key needed: every caller of 127.0.0.1 is the pod, and the pod is bob.
        assert chat(side, "placeholder", "pair")
        with pytest.raises(openai.PermissionDeniedError) as e:
            chat(side, "placeholder", "alice-only")
        assert "ServiceAccount 'bob'" in e.value.body["message"]  # type: ignore[index]
        assert sorted(m.id for m in oai(side, "x").models.list()) == ["everyone", "pair"]
    with modelroute(tmp_path, "sidecar", "--config-dir", str(tmp_path), "--service-account", "alice") as side:
        assert chat(side, "x", "alice-only") and chat(side, "x", "team-x")


def test_gemini_callers_send_their_key_as_x_goog_api_key_or_in_the_url(gw: GatewayProcess) -> None:
    from google import genai
    from google.genai import errors, types

    def gemini(key: str) -> genai.Client:
        return genai.Client(api_key=key, http_options=types.HttpOptions(base_url=f"http://127.0.0.1:{gw.port}"))

    bob, wrong = gemini(BOB_KEY), gemini(WRONG_KEY)  # held: a Client closes its connections when collected
    assert bob.models.generate_content(model="pair", contents="hi").text
    with pytest.raises(errors.ClientError) as e:
        wrong.models.generate_content(model="pair", contents="hi")
    assert e.value.code == 401 and e.value.status == "UNAUTHENTICATED" and WRONG_KEY not in str(e.value)
    with pytest.raises(errors.ClientError) as e:
        bob.models.generate_content(model="alice-only", contents="hi")
    assert e.value.code == 403 and e.value.status == "PERMISSION_DENIED" and "'bob'" in str(e.value)
    with pytest.raises(errors.ClientError) as e:
        bob.models.count_tokens(model="alice-only", contents="hi")
    assert e.value.code == 403
    assert sorted(m.name or "" for m in bob.models.list()) == ["models/everyone", "models/pair"]
    # ?key= (curl, older clients): the same key, the same caller.
    status, body = raw(gw, f"/v1beta/models/pair:generateContent?key={BOB_KEY}", {},
                       {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]})
    assert status == 200 and body["candidates"]
    status, body = raw(gw, "/v1beta/models", {})
    assert status == 401 and body["error"]["status"] == "UNAUTHENTICATED"
    assert raw(gw, "/v1beta/models/alice-only", {"x-goog-api-key": BOB_KEY})[0] == 403
    assert BOB_KEY not in gw.logs()


def test_allow_unauthenticated_serves_anonymous_callers_whom_lists_still_refuse(tmp_path: Path) -> None:
    (tmp_path / "routes.yaml").write_text(yaml.safe_dump_all(DOCS))
    with modelroute(tmp_path, "serve", "-f", str(tmp_path / "routes.yaml"), "--host", "0.0.0.0",
                    "--allow-unauthenticated") as anon:
        assert chat(anon, "anything", "everyone")
        with pytest.raises(openai.PermissionDeniedError) as e:
            chat(anon, "anything", "pair")
        assert "An anonymous caller may not use model 'pair'" in e.value.body["message"]  # type: ignore[index]
        assert sorted(m.id for m in oai(anon, "x").models.list()) == ["everyone"]
        assert "anonymous (no caller keys)" in anon.logs()
