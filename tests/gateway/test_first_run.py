"""A new user's first minutes: README command 1 on a machine with no keys, and what they see.

README command 1 runs as written, in a fresh virtualenv, inside a network namespace of its
own (loopback only: no internet, no keys), and answers routed requests through the official
openai and anthropic SDKs. Then: one access-log line per request, refused ones included;
errors about missing keys that say what would satisfy them; placeholder keys reported as
not ready; a warning for files that route nothing; --version; the operator extra.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelroute_sidecar.compile import compile_resources, is_placeholder
from tests.fakes.base import wait_until_sync as wait_until
from tests.gateway.harness import API
from tests.gateway.procs import GatewayProcess, modelroute

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "examples" / "quickstart.yaml"
KEY_VARS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY", "AZURE_OPENAI_API_KEY")
_SCRIPT = shutil.which("modelroute")
CLI = [_SCRIPT] if _SCRIPT else [sys.executable, "-m", "modelroute_sidecar"]


def no_keys_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in KEY_VARS and not k.startswith("MODELROUTE_KEY_")}
    return {**env, **extra}


def readme_command_1() -> str:
    """The first line of README's first shell block, without its comment."""
    block = re.search(r"```sh\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert block, "README.md starts with a shell block"
    command = block.group(1).splitlines()[0].split("#")[0].strip()
    assert command == "pip install -e . && modelroute serve -f examples/quickstart.yaml", command
    return command


# The caller, run next to the gateway (inside its network namespace): the official SDKs.
CLIENT = r'''
import json, sys, time, urllib.request
import anthropic, openai

def get(url):
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status, r.read().decode()
    except Exception as e:
        return 0, str(e)

deadline = time.monotonic() + 240  # the pip install comes first
while get("http://127.0.0.1:8701/readyz")[0] != 200:
    if time.monotonic() > deadline:
        sys.exit("the gateway never became ready")
    time.sleep(0.2)
out = {}
oai = openai.OpenAI(base_url="http://127.0.0.1:8700/v1", api_key="unused", max_retries=0)
raw = oai.chat.completions.with_raw_response.create(model="demo", messages=[{"role": "user", "content": "hi there"}])
out["chat"] = raw.parse().choices[0].message.content
out["chat_backend"] = raw.headers["x-modelroute-backend"]
out["stream"] = "".join(c.choices[0].delta.content or "" for c in oai.chat.completions.create(
    model="demo", stream=True, messages=[{"role": "user", "content": "stream me"}]) if c.choices)
out["responses"] = oai.responses.create(model="demo", input="hello codex").output_text
claude = anthropic.Anthropic(base_url="http://127.0.0.1:8700", api_key="unused", max_retries=0)
msg = claude.messages.create(model="demo", max_tokens=64, messages=[{"role": "user", "content": "hello claude"}])
out["messages"] = msg.content[0].text
drill = oai.chat.completions.with_raw_response.create(model="demo-failover",
                                                      messages=[{"role": "user", "content": "drill"}])
out["drill_attempts"] = drill.headers["x-modelroute-attempts"]
out["drill_backend"] = drill.headers["x-modelroute-backend"]
try:
    oai.chat.completions.create(model="chat-default", messages=[{"role": "user", "content": "real one"}])
    out["chat_default"] = "answered"
except openai.APIStatusError as e:
    out["chat_default"] = [e.status_code, e.message]
out["metrics"] = [line for line in get("http://127.0.0.1:8701/metrics")[1].splitlines()
                  if line.startswith("modelroute_failovers_total")]
print("RESULT " + json.dumps(out))
'''


def _netns_available() -> bool:
    unshare = shutil.which("unshare")
    if unshare is None or shutil.which("ip") is None:
        return False
    return subprocess.run([unshare, "-rn", "true"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtualenv that sees the installed dependencies but has no modelroute of its own."""
    root = tmp_path_factory.mktemp("fresh")
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(root / "venv")], check=True)
    return root / "venv"


def test_readme_command_1_answers_every_dialect_with_no_keys_and_no_internet(fresh_venv: Path,
                                                                             tmp_path: Path) -> None:
    command = readme_command_1()
    env = no_keys_env(PATH=f"{fresh_venv / 'bin'}:{os.environ['PATH']}", VIRTUAL_ENV=str(fresh_venv))
    env.pop("PYTHONPATH", None)  # the package comes from the command's own install
    client = tmp_path / "client.py"
    client.write_text(CLIENT)
    python = str(fresh_venv / "bin" / "python")
    script = f'({command}) > {tmp_path}/serve.log 2>&1 &\n{python} {client}\n'
    if _netns_available():
        # No internet in there: pip takes the build backend from a local wheelhouse.
        wheels = tmp_path / "wheels"
        subprocess.run([python, "-m", "pip", "download", "--quiet", "--dest", str(wheels), "setuptools>=68"],
                       check=True, env=env, timeout=300)
        env.update(PIP_NO_INDEX="1", PIP_FIND_LINKS=str(wheels))
        argv = ["unshare", "-rn", "bash", "-c", "ip link set lo up\n" + script]
    else:  # no user namespaces here: the host's loopback (ports 8700 and 8701 must be free)
        argv = ["bash", "-c", script]
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=400)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the gateway, started in the background of our session
        proc.wait()
    log = (tmp_path / "serve.log").read_text() if (tmp_path / "serve.log").exists() else ""
    line = next((ln for ln in output.splitlines() if ln.startswith("RESULT ")), None)
    assert line, f"{output}\n--- serve.log:\n{log}"
    got = json.loads(line.removeprefix("RESULT "))
    assert "hi there" in got["chat"] and got["chat_backend"] == "mock/mock-1"
    assert "stream me" in got["stream"]
    assert "hello codex" in got["responses"]
    assert "hello claude" in got["messages"]
    assert got["drill_attempts"] == "2" and got["drill_backend"] == "mock/mock-1"
    assert any('route="demo-failover"' in m and m.endswith(" 1.0") for m in got["metrics"]), got["metrics"]
    status, message = got["chat_default"]
    assert status == 503
    for words in ("OPENAI_API_KEY", "MODELROUTE_KEY_OPENAI", "Secret openai-key", "ANTHROPIC_API_KEY"):
        assert words in message, message


# ---- one access-log line per request ------------------------------------------------------

@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with modelroute(tmp_path_factory.mktemp("qs"), "serve", "-f", str(QUICKSTART), env=no_keys_env()) as gp:
        yield gp


def access_lines(gp: GatewayProcess, rid: str) -> list[dict[str, Any]]:
    out = []
    for line in gp.logs().splitlines():
        if rid in line and line.startswith("{"):
            rec = json.loads(line)
            if rec.get("logger") == "modelroute.access" and rec.get("msg") == "request":
                out.append(rec)
    return out


def call(gp: GatewayProcess, method: str, path: str, body: bytes | None, rid: str,
         headers: dict[str, str] | None = None) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{gp.port}{path}", data=body, method=method,
                                 headers={"x-request-id": rid, "content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()
            return int(r.status)
    except urllib.error.HTTPError as e:
        e.read()
        return e.code


def raw_oversized(gp: GatewayProcess, rid: str) -> int:
    """A body announced larger than any limit: refused with 413 before it is read."""
    with socket.create_connection(("127.0.0.1", gp.port), timeout=10) as s:
        s.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nx-request-id: {rid}\r\n"
                  "content-type: application/json\r\ncontent-length: 999999999999\r\n\r\n{".encode())
        head = s.recv(4096).decode()
    return int(head.split()[1])


def chat(model: str, content: str = "hi") -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": content}]}).encode()


REQUESTS: list[tuple[str, str, str, bytes | None, int, str | None, str | None]] = [
    # id, method, path, body, status, dialect, reason
    ("ok", "POST", "/v1/chat/completions", chat("demo"), 200, "openai-chat", None),
    ("ok-anthropic", "POST", "/v1/messages",
     json.dumps({"model": "demo", "max_tokens": 9, "messages": [{"role": "user", "content": "x"}]}).encode(),
     200, "anthropic-messages", None),
    ("unknown-model", "POST", "/v1/chat/completions", chat("no-such-model"), 404, "openai-chat", "model_not_found"),
    ("bad-json", "POST", "/v1/responses", b"{not json", 400, "openai-responses", None),
    ("no-backend", "POST", "/v1/chat/completions", chat("chat-default"), 503, "openai-chat", "no_backend"),
    ("unknown-url", "GET", "/v1/nothing-here", None, 404, None, "unknown_url"),
    ("models", "GET", "/v1/models", None, 200, None, None),
    ("count-tokens", "POST", "/v1/messages/count_tokens",
     json.dumps({"model": "demo", "messages": [{"role": "user", "content": "x"}]}).encode(),
     200, "anthropic-messages", None),
]


@pytest.mark.parametrize(("case", "method", "path", "body", "status", "dialect", "reason"), REQUESTS,
                         ids=[r[0] for r in REQUESTS])
def test_every_request_leaves_exactly_one_access_line(quickstart: GatewayProcess, case: str, method: str,
                                                      path: str, body: bytes | None, status: int,
                                                      dialect: str | None, reason: str | None) -> None:
    rid = f"{case}-{uuid.uuid4().hex[:8]}"
    assert call(quickstart, method, path, body, rid) == status
    wait_until(lambda: bool(access_lines(quickstart, rid)), within=5)
    (line,) = access_lines(quickstart, rid)
    assert line["status"] == status and line["dialect"] == dialect
    if reason is not None:
        assert line["reason"] == reason
    elif status != 200:
        assert line["reason"]  # a 400 names what was wrong
    else:
        assert line["reason"] is None


def test_an_oversized_body_leaves_one_line_too(quickstart: GatewayProcess) -> None:
    rid = f"too-big-{uuid.uuid4().hex[:8]}"
    assert raw_oversized(quickstart, rid) == 413
    wait_until(lambda: bool(access_lines(quickstart, rid)), within=5)
    (line,) = access_lines(quickstart, rid)
    assert line["status"] == 413 and line["dialect"] == "openai-chat" and line["reason"] == "request_too_large"


def test_a_failover_is_one_line_with_its_attempts(quickstart: GatewayProcess) -> None:
    rid = f"drill-{uuid.uuid4().hex[:8]}"
    assert call(quickstart, "POST", "/v1/chat/completions", chat("demo-failover"), rid) == 200
    wait_until(lambda: bool(access_lines(quickstart, rid)), within=5)
    (line,) = access_lines(quickstart, rid)
    assert line["status"] == 200 and line["attempts"] in (1, 2) and line["backend"] == "mock/mock-1"


# ---- keys: what would satisfy them, and placeholders ---------------------------------------

def pk_doc(name: str, provider: str = "openai", secret: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"provider": provider}
    if secret:
        spec["secretRef"] = {"name": secret}
    return {"apiVersion": API, "kind": "ProviderKey", "metadata": {"name": name}, "spec": spec}


def secret_doc(name: str, value: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": {"apiKey": value}}


@pytest.mark.parametrize("key", ["sk-REPLACE-ME", "sk-ant-REPLACE_WITH_YOUR_KEY", "changeme", "sk-...",
                                 "xxx", "sk-xxxxxxxxxxxx", "your-key-here", "<your api key>", "YOUR_API_KEY"])
def test_placeholder_keys_are_not_ready_in_serve_and_in_the_operator(key: str) -> None:
    assert is_placeholder(key)
    docs = [pk_doc("openai-prod", secret="openai"), secret_doc("openai", f"sk-real-one\n{key}")]
    envs: tuple[dict[str, str] | None, ...] = ({}, None)
    for env in envs:  # serve (environment fallbacks on) and the operator (off)
        st = compile_resources(docs, env=env).statuses[("ProviderKey", "openai-prod")]
        assert not st.ready and st.reason == "KeyPlaceholder", st
        assert key not in st.message and "placeholder" in st.message
        assert ("OPENAI_API_KEY" in st.message) == (env is not None)
    # In serve, the environment may supply the real key instead.
    st = compile_resources(docs, env={"OPENAI_API_KEY": "sk-from-env"}).statuses[("ProviderKey", "openai-prod")]
    assert st.ready and "OPENAI_API_KEY" in st.message
    # A placeholder in the environment is no key either.
    st = compile_resources([pk_doc("openai")], env={"OPENAI_API_KEY": key}).statuses[("ProviderKey", "openai")]
    assert st.reason == "KeyPlaceholder" and "environment variable OPENAI_API_KEY" in st.message


@pytest.mark.parametrize("key", ["sk-test", "sk-proj-4fJx9QmZ2wLr8TbNc1VyHs7DkUe3Ga6P", "sk-ant-api03-Zx81-kQ",
                                 "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY", "3f2a9c1e8b7d4f60a5c2e9b1d7f3a8c4"])
def test_real_looking_keys_are_not_placeholders(key: str) -> None:
    assert not is_placeholder(key)


def test_missing_key_messages_name_the_variables_and_the_secret() -> None:
    docs = [pk_doc("openai-prod", secret="openai-key"), pk_doc("claude", "anthropic")]
    serve = compile_resources(docs, env={}).statuses
    msg = serve[("ProviderKey", "openai-prod")].message
    assert "Secret openai-key" in msg and "MODELROUTE_KEY_OPENAI_PROD" in msg and "OPENAI_API_KEY" in msg
    msg = serve[("ProviderKey", "claude")].message
    assert "secretRef" in msg and "MODELROUTE_KEY_CLAUDE" in msg and "ANTHROPIC_API_KEY" in msg
    cluster = compile_resources(docs, env=None).statuses[("ProviderKey", "openai-prod")].message
    assert "kubectl create secret generic openai-key --from-literal=apiKey=" in cluster


def test_example_placeholders_show_in_serves_log(tmp_path: Path) -> None:
    example = REPO / "examples" / "openai-anthropic-failover.yaml"
    with modelroute(tmp_path, "serve", "-f", str(example), env=no_keys_env()) as gp:
        wait_until(lambda: "KeyPlaceholder" in gp.logs(), within=5)
    assert "REPLACE" not in gp.logs()  # the reason, never the value


# ---- the command line ------------------------------------------------------------------------

def test_serve_warns_when_its_files_define_no_route(tmp_path: Path) -> None:
    only_secret = tmp_path / "secret.yaml"
    only_secret.write_text("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {apiKey: sk-a}\n")
    with modelroute(tmp_path, "serve", "-f", str(only_secret)) as gp:
        wait_until(lambda: "define no ModelRoute and no ProviderKey" in gp.logs(), within=5)
    with modelroute(tmp_path, "serve", "-f", str(QUICKSTART), env=no_keys_env()) as gp:
        pass
    assert "define no" not in gp.logs()


def test_version() -> None:
    out = subprocess.run([*CLI, "--version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and re.fullmatch(r"modelroute \d+\.\d+\.\d+\S*\n", out.stdout), out


def test_operator_without_its_extra_says_what_to_install(tmp_path: Path) -> None:
    # kopf as it is when the extra was not installed: not importable.
    (tmp_path / "kopf").mkdir()
    (tmp_path / "kopf" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'kopf'\", name='kopf')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([*CLI, "operator"], capture_output=True, text=True, timeout=30, env=env)
    assert out.returncode == 1
    assert "pip install 'modelroute[operator]'" in out.stderr and "Traceback" not in out.stderr, out.stderr
    helped = subprocess.run([*CLI, "operator", "--help"], capture_output=True, text=True, timeout=30, env=env)
    assert helped.returncode == 0 and "modelroute operator" in helped.stdout


def test_a_model_a_keyless_provider_would_serve_says_which_key_is_missing(quickstart: GatewayProcess) -> None:
    import openai

    client = openai.OpenAI(base_url=quickstart.url, api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    message = str(e.value)
    assert "ProviderKey openai would serve it but is not ready" in message
    assert "OPENAI_API_KEY" in message and "Secret openai-key" in message and "anthropic" not in message
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="llama-local", messages=[{"role": "user", "content": "hi"}])
    assert "not ready" not in str(e.value)
