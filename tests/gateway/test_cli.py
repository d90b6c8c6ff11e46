"""`modelroute` on the command line, as a user meets it.

Bad files and paths end in a non-zero exit with a message naming the file, document and
field (never a traceback); every subcommand has --help; the repository's examples/ serve as
they are; SIGTERM drains a stream in flight and exits 0; the API listens on 127.0.0.1 only;
and a config file saved in place, in two writes, is never applied half-written.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from tests.fakes.base import wait_until
from tests.fakes.openai import FakeOpenAI
from tests.gateway.harness import FAST, free_port, model_route, provider_key
from tests.gateway.procs import GatewayProcess, http_status, modelroute

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
SPEC: dict[str, Any] = FAST
_SCRIPT = shutil.which("modelroute")
# The console script a user runs; `python -m` where the environment has no scripts directory.
CLI = [_SCRIPT] if _SCRIPT else [sys.executable, "-m", "modelroute_sidecar"]
TRACEBACK = "Traceback (most recent call last)"


def run(*args: str, timeout: float = 30, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, **kw)


def serve_once(*files: str, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """`modelroute serve -f ...` expected to exit by itself (it must not start serving)."""
    args = [a for f in files for a in ("-f", f)]
    return run("serve", *args, "--port", str(free_port()), "--metrics-port", "0", *extra)


# ---- bad files and paths -----------------------------------------------------------------

GOOD_PK = "apiVersion: modelroute.dev/v1alpha1\nkind: ProviderKey\nmetadata: {name: vllm}\n" \
          "spec: {provider: openai-compatible, baseURL: 'http://127.0.0.1:9/v1'}\n"
BAD_FILES = {
    # id: (file text, every piece the message must hold)
    "backend-without-providerKey": (
        GOOD_PK + "---\napiVersion: modelroute.dev/v1alpha1\nkind: ModelRoute\nmetadata: {name: chat}\n"
        "spec:\n  model: chat\n  backends:\n    - model: gpt-4o\n",
        ("document 2", "ModelRoute chat", "spec.backends[0].providerKey", "Field required")),
    "route-without-model": (
        "apiVersion: modelroute.dev/v1alpha1\nkind: ModelRoute\nmetadata: {name: x}\nspec: {backends: "
        "[{providerKey: vllm}]}\n", ("document 1", "ModelRoute x", "spec.model", "Field required")),
    "unknown-provider": (
        "apiVersion: modelroute.dev/v1alpha1\nkind: ProviderKey\nmetadata: {name: p}\nspec: {provider: watsonx}\n",
        ("document 1", "ProviderKey p", "spec.provider", "'openai'")),
    "typo-in-a-field": (
        GOOD_PK + "---\napiVersion: modelroute.dev/v1alpha1\nkind: ModelRoute\nmetadata: {name: chat}\n"
        "spec: {model: chat, backend: [{providerKey: vllm}]}\n",
        ("document 2", "spec.backend", "Extra inputs are not permitted")),
    "typo-in-the-kind": (
        "apiVersion: modelroute.dev/v1alpha1\nkind: Modelroute\nmetadata: {name: chat}\nspec: {}\n",
        ("document 1", "unknown kind 'Modelroute'")),
    "invalid-yaml": (GOOD_PK + "---\nkind: ModelRoute\nmetadata: {name: chat\n",
                     ("invalid YAML", "line ")),
    "tab-indentation": ("kind: ModelRoute\nspec:\n\tmodel: chat\n", ("invalid YAML", "line 3")),
    "document-not-a-mapping": (GOOD_PK + "---\n- just\n- a list\n", ("document 2 is not a mapping",)),
    "list-with-a-non-mapping-item": ("apiVersion: v1\nkind: List\nitems: [chat]\n",
                                     ("document 1 item 1 is not a mapping",)),
    "list-items-not-a-list": ("apiVersion: v1\nkind: List\nitems: chat\n", ("items is not a list",)),
}


@pytest.mark.parametrize(("text", "says"), list(BAD_FILES.values()), ids=list(BAD_FILES))
def test_serve_a_bad_file_exits_with_a_message_naming_file_document_and_field(tmp_path: Path, text: str,
                                                                             says: tuple[str, ...]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    proc = serve_once(str(bad))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "invalid configuration" in proc.stderr and str(bad) in proc.stderr, out
    for piece in says:
        assert piece in proc.stderr, (piece, out)
    assert TRACEBACK not in out and "listening" not in out, out


def test_serve_names_the_bad_file_among_several(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(GOOD_PK)
    bad = tmp_path / "routes" / "bad.yml"
    bad.parent.mkdir()
    bad.write_text("apiVersion: modelroute.dev/v1alpha1\nkind: ModelRoute\nmetadata: {name: chat}\n"
                   "spec:\n  model: chat\n  backends:\n    - model: gpt-4o\n")
    for args in ((str(good), str(bad)), (str(tmp_path),)):
        proc = serve_once(*args)
        assert proc.returncode == 2 and str(good) not in proc.stderr, proc.stderr
        assert f"{bad}: document 1 (ModelRoute chat): spec.backends[0].providerKey: Field required" in proc.stderr


@pytest.mark.parametrize("missing", ["no-such-file.yaml", "no/such/dir/"])
def test_serve_a_missing_path_is_a_clear_error(tmp_path: Path, missing: str) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(GOOD_PK)
    path = str(tmp_path / missing)
    proc = serve_once(str(good), path)
    assert proc.returncode != 0
    assert f"{path.rstrip('/')}: no such file or directory" in proc.stderr, proc.stderr
    assert TRACEBACK not in proc.stderr + proc.stdout


BAD_FLAGS = {
    "no-file": (("serve",), "the following arguments are required: -f/--filename"),
    "port-out-of-range": (("serve", "-f", "x.yaml", "--port", "99999"), "argument --port: '99999' is not a TCP port"),
    "port-not-a-number": (("serve", "-f", "x.yaml", "--port", "http"), "argument --port: 'http' is not a TCP port"),
    "metrics-port-negative": (("serve", "-f", "x.yaml", "--metrics-port", "-1"), "argument --metrics-port"),
    "reload-interval-zero": (("serve", "-f", "x.yaml", "--reload-interval", "0"),
                             "argument --reload-interval: 0 is not a positive number of seconds"),
    "unknown-log-level": (("serve", "-f", "x.yaml", "--log-level", "verbose"), "argument --log-level"),
    "unknown-subcommand": (("proxy",), "invalid choice: 'proxy'"),
    "no-subcommand": ((), "the following arguments are required: command"),
}


@pytest.mark.parametrize(("args", "says"), list(BAD_FLAGS.values()), ids=list(BAD_FLAGS))
def test_bad_flags_are_usage_errors(args: tuple[str, ...], says: str) -> None:
    proc = run(*args)
    assert proc.returncode == 2 and says in proc.stderr and "usage: modelroute" in proc.stderr, proc.stderr
    assert TRACEBACK not in proc.stderr


def test_a_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(GOOD_PK)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run("serve", "-f", str(good), "--port", str(port), "--metrics-port", "0")
    assert proc.returncode == 1 and "address already in use" in proc.stderr and str(port) in proc.stderr
    assert TRACEBACK not in proc.stderr


# ---- --help ----------------------------------------------------------------------------

HELP = {
    "top": ((), ("serve", "sidecar", "operator")),
    "serve": (("serve",), ("-f FILE_OR_DIR", "--port", "--metrics-port", "--host", "127.0.0.1", "MODELROUTE_KEY_",
                           "OPENAI_API_KEY", "--reload-interval", "--log-format")),
    "sidecar": (("sidecar",), ("--config-dir", "/etc/modelroute", "--port", "--metrics-port")),
    "operator": (("operator",), ("usage: modelroute operator", "--namespace", "--sidecar-image")),
}


@pytest.mark.parametrize(("sub", "says"), list(HELP.values()), ids=list(HELP))
def test_help(sub: tuple[str, ...], says: tuple[str, ...]) -> None:
    proc = run(*sub, "--help")
    assert proc.returncode == 0, proc.stderr
    for piece in says:
        assert piece in proc.stdout, (piece, proc.stdout)
    assert proc.stderr == "" or TRACEBACK not in proc.stderr


# ---- the examples ------------------------------------------------------------------------

def example_route_names() -> set[str]:
    names: set[str] = set()
    for f in sorted(EXAMPLES.glob("*.y*ml")):
        for doc in yaml.safe_load_all(f.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "ModelRoute":
                names.add(doc["spec"]["model"])
    return names


async def test_serve_the_examples_directory(tmp_path: Path) -> None:
    expected = example_route_names()
    assert len(expected) >= 3, expected
    # No provider keys in the environment: nothing may go out to real providers.
    no_keys = {v: "" for v in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY",
                               "AZURE_OPENAI_API_KEY", "DEEPSEEK_API_KEY")}
    with modelroute(tmp_path, "serve", "-f", str(EXAMPLES), env=no_keys) as gp:
        client = openai.AsyncOpenAI(base_url=gp.url, api_key="x", max_retries=0)
        listed = {m.id async for m in client.models.list()}
        assert expected <= listed, (expected, listed)
        literal = listed - expected
        assert all(not any(c in name for c in "*?[") for name in literal), literal
        for name in sorted(expected):
            model = await client.models.retrieve(name)
            assert model.id == name
        await client.close()
        logs = gp.logs()
    assert TRACEBACK not in logs
    # Files that define the same object twice are one object, not a conflict with itself.
    assert "Conflict" not in logs, logs


# ---- SIGTERM ----------------------------------------------------------------------------

async def test_sigterm_drains_a_stream_in_flight_and_exits_0(tmp_path: Path) -> None:
    async with FakeOpenAI() as up:
        cfg = tmp_path / "routes.yaml"
        cfg.write_text(yaml.safe_dump_all([*provider_key("openai", "openai", up.base_url),
                                           model_route("chat", ("openai", "gpt-4o"), **SPEC)]))
        with modelroute(tmp_path, "serve", "-f", str(cfg)) as gp:
            up.faults.slow_stream(0.03)  # about a second of stream still to come at SIGTERM
            words = " ".join(f"w{i}" for i in range(40))
            client = openai.AsyncOpenAI(base_url=gp.url, api_key="x", max_retries=0)
            stream = await client.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": words}], stream=True)
            chunks = aiter(stream)
            first = await anext(chunks)
            assert up.active_streams == 1
            gp.proc.send_signal(signal.SIGTERM)
            # Draining: the gateway reports itself not ready (503, or the probe port already closed).
            ready = f"http://127.0.0.1:{gp.metrics_port}/readyz"
            await wait_until(lambda: http_status(ready) in (503, 0), within=10)
            # The stream in flight finishes, whole and well-formed.
            text = first.choices[0].delta.content or "" if first.choices else ""
            async with asyncio.timeout(20):
                async for c in chunks:
                    text += c.choices[0].delta.content or "" if c.choices else ""
            assert text == f"echo: {words}"
            await client.close()
            code = await asyncio.to_thread(gp.proc.wait, 20)
        assert code == 0
        assert up.streams_completed == 1 and up.active_streams == 0
        logs = gp.logs()
        assert TRACEBACK not in logs and "Task was destroyed" not in logs, logs


# ---- where the API listens ------------------------------------------------------------------

def local_addresses() -> set[str]:
    """This machine's own non-loopback IPv4/IPv6 addresses, by every means at hand."""
    found: set[str] = set()
    with contextlib.suppress(OSError):
        found.add(socket.gethostbyname(socket.gethostname()))
    with contextlib.suppress(OSError):
        found.update(str(info[4][0]) for info in socket.getaddrinfo(socket.gethostname(), None))
    for family, probe in ((socket.AF_INET, "10.255.255.255"), (socket.AF_INET6, "fd00:ffff::1")):
        with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((probe, 9))  # no packet is sent; the kernel picks the outgoing address
            found.add(s.getsockname()[0])
    with contextlib.suppress(OSError):
        lines = Path("/proc/net/fib_trie").read_text().splitlines()
        found.update(lines[i - 1].split()[-1] for i, line in enumerate(lines) if "/32 host LOCAL" in line)
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/if_inet6").read_text().splitlines():
            raw = line.split()[0]
            found.add(socket.inet_ntop(socket.AF_INET6, bytes.fromhex(raw)))
    return {a.split("%")[0] for a in found
            if not a.startswith(("127.", "0.")) and a not in ("::1", "::") and not a.startswith("fe80")}


def listeners(port: int) -> list[str]:
    """Local addresses of the LISTEN sockets on ``port``, from /proc/net/tcp and tcp6."""
    out = []
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                addr, hexport = fields[1].split(":")
                if fields[3] == "0A" and int(hexport, 16) == port:
                    raw = bytes.fromhex(addr)
                    # The kernel prints each 32-bit word in host (little-endian) order.
                    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                    out.append(socket.inet_ntop(family, raw))
    return out


def connects(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(3)
        try:
            s.connect((host, port))
        except (ConnectionRefusedError, TimeoutError, OSError):
            return False
        return True


def test_the_api_listens_on_loopback_only(tmp_path: Path) -> None:
    cfg = tmp_path / "routes.yaml"
    cfg.write_text(GOOD_PK)
    with modelroute(tmp_path, "serve", "-f", str(cfg)) as gp:
        assert listeners(gp.port) == ["127.0.0.1"], listeners(gp.port)
        # Metrics and probes are on every interface (kubelet probes the pod IP): the check can see that.
        assert listeners(gp.metrics_port) in (["0.0.0.0"], ["::"], ["0.0.0.0", "::"]), listeners(gp.metrics_port)
        assert connects("127.0.0.1", gp.port)
        others = local_addresses()
        for addr in sorted(others):
            assert not connects(addr, gp.port), f"the API answered on {addr}"
        v4 = sorted(a for a in others if ":" not in a)
        if v4:
            assert connects(v4[0], gp.metrics_port), f"the metrics port should answer on {v4[0]}"


# ---- an in-place save -------------------------------------------------------------------

def reloads(gp: GatewayProcess, n: int) -> Callable[[], bool]:
    return lambda: gp.logs().count("config reloaded") >= n


async def test_a_config_saved_in_place_in_two_writes_is_never_applied_half_written(tmp_path: Path) -> None:
    """An editor or `cat > file` truncates, then writes; a poll between must not apply the middle."""
    async with FakeOpenAI() as up:
        head = yaml.safe_dump_all(provider_key("openai", "openai", up.base_url, models=[]))
        full = head + "---\n" + yaml.safe_dump(model_route("chat", ("openai", "gpt-4o"), **SPEC))
        cfg = tmp_path / "routes.yaml"
        cfg.write_text(full)
        interval = 0.5
        with modelroute(tmp_path, "serve", "-f", str(cfg), "--reload-interval", str(interval)) as gp:
            client = openai.AsyncOpenAI(base_url=gp.url, api_key="x", max_retries=0)
            failures: list[Exception] = []
            done = asyncio.Event()

            async def traffic() -> None:
                while not done.is_set():
                    try:
                        await client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "x"}])
                    except openai.APIError as e:
                        failures.append(e)

            task = asyncio.create_task(traffic())
            await wait_until(lambda: len(up.requests) >= 5, within=10)
            for n in range(1, 5):
                # The writer's timing is the input here, not a wait for anything: the gateway polls
                # at a steady pace, and the previous save's reload marks a poll (the first save has
                # no such mark and lands anywhere). Start the save 0.85 intervals after it and hold
                # the half-written file for 0.3 intervals, so the next poll (one interval after the
                # mark) lands on the half-written file, while the save takes far less than an interval.
                await asyncio.sleep(interval * 0.85)
                with cfg.open("w") as f:  # truncate ...
                    f.write(head)  # ... the first documents, without the route ...
                    f.flush()
                    await asyncio.sleep(interval * 0.3)
                    f.write(f"---\n# save {n}\n" + full.split("---\n", 2)[-1])  # ... and the rest
                # Each save is noticed, once, and applied whole.
                await wait_until(reloads(gp, n), within=10)
            done.set()
            await task
            await client.close()
            assert failures == [], failures[:3]
            logs = gp.logs()
            assert logs.count("config reloaded") == 4 and logs.count('"routes":1') == 4, logs
            assert '"routes":0' not in logs and "config reload failed" not in logs, logs
