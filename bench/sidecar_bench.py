"""The sidecar's speed benchmark (issue 2): what the gateway adds, as ratios measured in one run.

Every path gets the same requests against the same instant upstream (``bench.fast_upstream``),
measured round-robin in small batches so machine noise falls on all of them alike:

- ``direct``: the client straight to the upstream;
- ``bare``: ``bench.bare_proxy``, a dozen-line aiohttp pass-through: the floor;
- ``gateway``: ``python -m modelroute_sidecar sidecar --config-dir <dir>`` as a pod runs it
  (the ConfigMap's ``config.json`` and the Secret's key files, compiled from the same
  resources the operator would read), at its default log level, and ``gateway-warn`` with
  ``--log-level warning``;
- ``litellm``: ``litellm --config <yaml>``, when installed (``pip install 'modelroute[bench]'``,
  or any environment, with ``--litellm-bin``); otherwise its row says "not installed".

Measured: added latency (p50/p99 of path minus direct, sequential non-streaming requests on
keep-alive connections, aiohttp client); added time to first token on streams; throughput
with the proxy confined to one core and 32 requests in flight; resident memory idle and with
1,000 open streams; time from process start to ``/readyz``. The footprint section prints
each target's ratio and PASS/FAIL. Results print as a table and go
to ``bench/results/`` as JSON. Timings are reported against the targets, never asserted.

Run: ``python -m bench.sidecar_bench`` (a few minutes), ``--quick`` (under a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import http.client
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO, cast

import aiohttp

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"
MIB = 1024 * 1024

# The request every path gets: a small, typical chat completion.
CHAT = {"model": "bench", "messages": [{"role": "system", "content": "You are terse."},
                                       {"role": "user", "content": "Say hello."}], "max_tokens": 32}
STREAM = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
SLOW_STREAM = {**STREAM, "model": "bench-slow"}
# LiteLLM refuses to start without a master key; every path gets the same bearer token.
BENCH_KEY = "sk-bench-" + "5f0c3e1a9b7d4c2e8f6a1b3d5c7e9f0a2b4c6d8e"
HEADERS = {"content-type": "application/json", "authorization": f"Bearer {BENCH_KEY}"}

TARGETS = {
    "added_latency_vs_bare": 1.0,  # gateway added p50 and p99 at most the bare proxy's (issue 13)
    "litellm_factor": 10.0,  # ... and at least this many times lower than LiteLLM's
    "throughput_vs_bare": 1.0,  # one-core non-streaming throughput (CPU per request) at least the bare proxy's
    # Issue 13: the sidecar runs in every pod, so its footprint is judged against the floor's.
    "idle_rss_vs_bare": 1.0,  # idle RSS at most this times the bare proxy's
    "open_streams_rss_mib": 100.0,  # ... and at most this with 1,000 open streams
    "start_vs_bare": 1.2,  # start to ready at most this times the bare proxy's start to open port
}
IDLE_SETTLE = 2.5  # seconds after ready before idle RSS is read: past the sidecar's first config poll (1 s)
SATURATED = 0.85  # share of its core a proxy must use for its req/s to count as its one-core throughput


# --------------------------------------------------------------------------- settings


@dataclass
class Settings:
    warmup: int  # sequential requests per path before measuring
    rounds: int  # latency: round-robin rounds over the paths
    batch: int  # latency: sequential requests per path per round
    stream_rounds: int
    stream_batch: int
    tp_rounds: int  # throughput: windows per path, interleaved
    tp_seconds: float  # throughput: seconds per window
    concurrency: int  # throughput: requests in flight
    open_streams: int  # memory: concurrent open streams
    starts: int  # start-to-ready: gateway starts
    chunks: int  # content chunks per fast stream
    open_within: float  # memory: seconds allowed to open the streams (LiteLLM takes long)


FULL = Settings(warmup=300, rounds=40, batch=50, stream_rounds=20, stream_batch=25, tp_rounds=5, tp_seconds=3.0,
                concurrency=32, open_streams=1000, starts=5, chunks=20, open_within=60.0)
QUICK = Settings(warmup=20, rounds=8, batch=20, stream_rounds=4, stream_batch=10, tp_rounds=2, tp_seconds=0.75,
                 concurrency=32, open_streams=1000, starts=3, chunks=20, open_within=5.0)


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _proc_children(pid: int) -> list[int]:
    out: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry))
    return out


def _tree(pid: int) -> list[int]:
    pids: list[int] = []
    todo = [pid]
    while todo and len(pids) < 64:
        p = todo.pop()
        pids.append(p)
        todo.extend(_proc_children(p))
    return pids


def rss_bytes(pid: int) -> int:
    """VmRSS of a process and its descendants (LiteLLM may run workers as children)."""
    total = 0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
    return total


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads) and its descendants."""
    total = 0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / _TICK


class Proc:
    """A server under test, started as its own process, pinned to ``cores``."""

    def __init__(self, name: str, argv: list[str], cores: set[int] | None, log: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = argv
        self.cores = cores
        self.log_path = log
        self.env = env
        self.popen: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self._log: TextIO | None = None

    def start(self) -> None:
        cores = self.cores
        self._log = open(self.log_path, "a")  # noqa: SIM115 - open for the process's life
        env = {**os.environ, **(self.env or {})}
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "sidecar"), env.get("PYTHONPATH", "")])
        self.started = time.perf_counter()
        self.popen = subprocess.Popen(
            self.argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None)

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def log_tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None


def wait_http(proc: Proc, port: int, path: str | None, timeout: float, poll: float = 0.001) -> float:
    """Seconds from the process's start until ``GET path`` answers 200 (or, without a path,
    until the port accepts connections). A tight loop: refused connections cost microseconds."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode if proc.popen else '?'}:\n"
                               f"{proc.log_tail()}")
        try:
            if path is None:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return time.perf_counter() - proc.started
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            try:
                conn.request("GET", path)
                if conn.getresponse().status == 200:
                    return time.perf_counter() - proc.started
            finally:
                conn.close()
        except OSError:
            pass
        time.sleep(poll)
    raise RuntimeError(f"{proc.name} not ready after {timeout:g}s:\n{proc.log_tail()}")


# --------------------------------------------------------------------------- configs


def gateway_yaml(upstream_port: int) -> str:
    return f"""\
apiVersion: v1
kind: Secret
metadata: {{name: bench-key}}
stringData: {{apiKey: sk-bench}}
---
apiVersion: modelroute.dev/v1alpha1
kind: ProviderKey
metadata: {{name: fast}}
spec:
  provider: openai-compatible
  baseURL: http://127.0.0.1:{upstream_port}/v1
  secretRef: {{name: bench-key}}
---
apiVersion: modelroute.dev/v1alpha1
kind: ProviderKey
metadata: {{name: slow}}
spec:
  provider: openai-compatible
  baseURL: http://127.0.0.1:{upstream_port}/slow/v1
  secretRef: {{name: bench-key}}
---
apiVersion: modelroute.dev/v1alpha1
kind: ModelRoute
metadata: {{name: bench}}
spec:
  model: bench
  backends: [{{providerKey: fast}}]
---
apiVersion: modelroute.dev/v1alpha1
kind: ModelRoute
metadata: {{name: bench-slow}}
spec:
  model: bench-slow
  backends: [{{providerKey: slow, model: bench}}]
"""


def sidecar_config_dir(root: Path, resources_yaml: str) -> Path:
    """What a pod mounts: the operator's compile of ``resources_yaml`` as ``config/config.json``
    and the keys as ``keys/<ProviderKey>`` (kubelet's plain layout, without the ..data links)."""
    from modelroute_sidecar.compile import compile_resources  # the bench's process, not the sidecar's
    from modelroute_sidecar.loader import read_documents

    root.mkdir(parents=True)
    src = root / "resources.yaml"
    src.write_text(resources_yaml)
    result = compile_resources(read_documents([src]))
    if result.errors:
        raise RuntimeError("; ".join(result.errors))
    (root / "config").mkdir()
    (root / "keys").mkdir()
    (root / "config" / "config.json").write_text(result.config.dump_json())
    for name, keys in result.keys.items():
        (root / "keys" / name).write_text("\n".join(keys))
    return root


def litellm_yaml(upstream_port: int) -> str:
    return f"""\
general_settings:
  master_key: {BENCH_KEY}
model_list:
  - model_name: bench
    litellm_params:
      model: openai/bench
      api_base: http://127.0.0.1:{upstream_port}/v1
      api_key: sk-bench
  - model_name: bench-slow
    litellm_params:
      model: openai/bench
      api_base: http://127.0.0.1:{upstream_port}/slow/v1
      api_key: sk-bench
"""


def find_litellm(explicit: str | None) -> str | None:
    if explicit:
        return explicit if Path(explicit).exists() or shutil.which(explicit) else None
    env = os.environ.get("MODELROUTE_BENCH_LITELLM")
    if env and (Path(env).exists() or shutil.which(env)):
        return env
    return shutil.which("litellm")


def litellm_version(binary: str) -> str | None:
    python = Path(binary).with_name("python")
    if not python.exists():
        python = Path(sys.executable)
    try:
        out = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


# --------------------------------------------------------------------------- paths


@dataclass
class Path_:
    """One way from the client to the upstream."""

    name: str
    label: str
    port: int
    proc: Proc | None  # None for direct
    prefix: str = "/v1"  # path prefix of chat completions
    slow_prefix: str = "/slow/v1"  # for the bare proxy and direct; the others route by model
    ready_path: str | None = None
    ready_port: int | None = None
    routed_slow: bool = False  # slow streams by model name (gateway, litellm) rather than URL

    def path(self, slow: bool = False) -> str:
        prefix = self.prefix if (not slow or self.routed_slow) else self.slow_prefix
        return f"{prefix}/chat/completions"

    def url(self, slow: bool = False) -> str:
        return f"http://127.0.0.1:{self.port}{self.path(slow)}"


# --------------------------------------------------------------------------- measurement


def pct(values: Sequence[float], q: float) -> float:
    """Percentile ``q`` (0-100) with linear interpolation; values need not be sorted."""
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """The load generator's own GC pauses would land on whichever path is being timed."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@dataclass
class Samples:
    values: list[float] = field(default_factory=list)
    errors: int = 0
    last_error: str | None = None
    cpu_seconds: float | None = None  # the server's CPU time over the measured requests

    def summary(self) -> dict[str, Any]:
        v = self.values
        n = len(v) + self.errors
        return {"n": len(v), "errors": self.errors, "last_error": self.last_error,
                "cpu_us_per_request": self.cpu_seconds / n * 1e6 if self.cpu_seconds is not None and n else None,
                "p50_ms": pct(v, 50) * 1000 if v else None, "p90_ms": pct(v, 90) * 1000 if v else None,
                "p99_ms": pct(v, 99) * 1000 if v else None, "mean_ms": statistics.fmean(v) * 1000 if v else None}


async def _one_chat(session: aiohttp.ClientSession, url: str, body: bytes) -> float:
    t0 = time.perf_counter()
    async with session.post(url, data=body, headers=HEADERS) as r:
        await r.read()
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}")
    return time.perf_counter() - t0


async def _one_stream(session: aiohttp.ClientSession, url: str, body: bytes) -> tuple[float, float]:
    """(time to first body bytes, time to the end of the stream)."""
    t0 = time.perf_counter()
    async with session.post(url, data=body, headers=HEADERS) as r:
        if r.status != 200:
            await r.read()
            raise RuntimeError(f"HTTP {r.status}")
        first = await r.content.readany()
        ttft = time.perf_counter() - t0
        if not first.startswith(b"data:"):
            raise RuntimeError(f"unexpected first bytes {first[:40]!r}")
        tail = first
        while chunk := await r.content.readany():
            tail = chunk
        if not tail.rstrip().endswith(b"[DONE]"):
            raise RuntimeError("stream did not end with [DONE]")
    return ttft, time.perf_counter() - t0


async def measure_sequential(paths: list[Path_], warmup: int, rounds: int, batch: int,
                             stream: bool) -> dict[str, dict[str, Samples]]:
    """Round-robin batches of sequential requests over each path's keep-alive connection.

    Each round starts at a different path, so no path always follows the same one."""
    body = json.dumps(STREAM if stream else CHAT).encode()
    out: dict[str, dict[str, Samples]] = {p.name: {"first": Samples(), "total": Samples()} for p in paths}
    sessions = {p.name: aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1), auto_decompress=False,
                                              timeout=aiohttp.ClientTimeout(total=30)) for p in paths}

    async def one(p: Path_, record: bool) -> None:
        s = out[p.name]
        try:
            if stream:
                first, total = await _one_stream(sessions[p.name], p.url(), body)
            else:
                first = total = await _one_chat(sessions[p.name], p.url(), body)
        except (aiohttp.ClientError, RuntimeError, TimeoutError) as e:
            s["total"].errors += 1
            s["total"].last_error = f"{type(e).__name__}: {e}"
            return
        if record:
            s["first"].values.append(first)
            s["total"].values.append(total)

    try:
        for p in paths:
            for _ in range(warmup):
                await one(p, False)
            out[p.name]["total"].errors = 0  # warm-up errors (a cold path) do not count
        # The servers idle while the other paths are measured: their CPU time over the whole
        # phase is what these requests cost them (noise from other processes does not count).
        cpu0 = {p.name: p.proc.cpu() for p in paths if p.proc is not None}
        for r in range(rounds):
            k = r % len(paths)
            for p in paths[k:] + paths[:k]:
                with no_gc():
                    for _ in range(batch):
                        await one(p, True)
        for p in paths:
            if p.proc is not None:
                out[p.name]["total"].cpu_seconds = p.proc.cpu() - cpu0[p.name]
    finally:
        for s in sessions.values():
            await s.close()
    return out


_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)")


class _LoadConn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection sending the same request back to back until the deadline.

    Far cheaper per request than any HTTP client library, so the load generator (which
    shares a core with the upstream) stays out of the way of the proxy being measured."""

    def __init__(self, request: bytes, deadline: float, stats: dict[str, int], done: asyncio.Future[None]) -> None:
        self.request = request
        self.deadline = deadline
        self.stats = stats
        self.done = done
        self.buf = b""
        self.need = -1  # bytes of the whole response once the head is read; -2 chunked
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.need == -1:
            i = self.buf.find(b"\r\n\r\n")
            if i < 0:
                return
            head = self.buf[:i].lower()
            self.status = int(head[9:12])
            m = _CONTENT_LENGTH.search(head)
            self.need = i + 4 + int(m.group(1)) if m else -2
        if self.need == -2:
            if not self.buf.endswith(b"\r\n0\r\n\r\n"):
                return
        elif len(self.buf) < self.need:
            return
        self.stats["ok" if self.status == 200 else "errors"] += 1
        self.buf = b""
        self.need = -1
        assert self.transport is not None
        if time.perf_counter() < self.deadline:
            self.transport.write(self.request)
        else:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.need != -1 or self.buf:
            self.stats["errors"] += 1
        if not self.done.done():
            self.done.set_result(None)


async def throughput_window(port: int, path: str, concurrency: int, seconds: float) -> tuple[int, int, float]:
    """(completed, errors, elapsed seconds) of ``concurrency`` connections for ``seconds``."""
    body = json.dumps(CHAT).encode()
    request = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
               f"Authorization: Bearer {BENCH_KEY}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    loop = asyncio.get_running_loop()
    stats = {"ok": 0, "errors": 0}
    t0 = time.perf_counter()
    deadline = t0 + seconds
    futures: list[asyncio.Future[None]] = []
    for _ in range(concurrency):
        fut: asyncio.Future[None] = loop.create_future()
        futures.append(fut)
        try:
            await loop.create_connection(functools.partial(_LoadConn, request, deadline, stats, fut),
                                         "127.0.0.1", port)
        except OSError:
            stats["errors"] += 1
            fut.set_result(None)
    try:
        await asyncio.wait_for(asyncio.gather(*futures), timeout=seconds + 10)
    except TimeoutError:
        stats["errors"] += 1
    return stats["ok"], stats["errors"], time.perf_counter() - t0


async def measure_throughput(paths: list[Path_], upstream: Proc, s: Settings) -> dict[str, dict[str, Any]]:
    """Interleaved windows of ``concurrency`` requests in flight; CPU time of each server per window."""
    acc = {p.name: {"ok": 0, "errors": 0, "seconds": 0.0, "proxy_cpu": 0.0, "upstream_cpu": 0.0} for p in paths}
    machine: dict[str, dict[str, list[int]]] = {p.name: {} for p in paths}  # cpuN -> [total, idle] jiffies
    for p in paths:  # a short warm-up window each
        await throughput_window(p.port, p.path(), s.concurrency, min(0.5, s.tp_seconds / 3))
    for r in range(s.tp_rounds):
        k = r % len(paths)
        for p in paths[k:] + paths[:k]:
            await asyncio.sleep(0.2)  # let the previous window's connections close
            cpu0 = p.proc.cpu() if p.proc else 0.0
            up0 = upstream.cpu()
            m0 = per_cpu_jiffies()
            with no_gc():
                ok, errors, seconds = await throughput_window(p.port, p.path(),
                                                              s.concurrency, s.tp_seconds)
            for cpu, (total, idle) in per_cpu_jiffies().items():
                acc_m = machine[p.name].setdefault(cpu, [0, 0])
                acc_m[0] += total - m0.get(cpu, (0, 0))[0]
                acc_m[1] += idle - m0.get(cpu, (0, 0))[1]
            a = acc[p.name]
            a["ok"] += ok
            a["errors"] += errors
            a["seconds"] += seconds
            a["proxy_cpu"] += (p.proc.cpu() - cpu0) if p.proc else 0.0
            a["upstream_cpu"] += upstream.cpu() - up0
    out: dict[str, dict[str, Any]] = {}
    for name, a in acc.items():
        secs = a["seconds"] or 1.0
        out[name] = {"requests": a["ok"], "errors": a["errors"], "seconds": round(a["seconds"], 3),
                     "rps": a["ok"] / secs, "proxy_core_busy": a["proxy_cpu"] / secs,
                     "upstream_core_busy": a["upstream_cpu"] / secs,
                     # CPU the proxy spent per request: what one core's capacity is, whatever the noise.
                     "proxy_cpu_us_per_request": a["proxy_cpu"] / a["ok"] * 1e6 if a["ok"] and a["proxy_cpu"] else None,
                     # How busy each core of the machine was, everything on it counted (others' work too).
                     "machine_cpu_busy": {cpu: round(1 - idle / total, 3) for cpu, (total, idle)
                                          in sorted(machine[name].items()) if total}}
    return out


def machine_busy(since: dict[str, tuple[int, int]]) -> dict[str, float]:
    now = per_cpu_jiffies()
    out = {}
    for cpu, (total, idle) in now.items():
        t0, i0 = since.get(cpu, (0, 0))
        if total > t0:
            out[cpu] = round(1 - (idle - i0) / (total - t0), 3)
    return out


def per_cpu_jiffies() -> dict[str, tuple[int, int]]:
    """(total, idle + iowait) jiffies of each core, from /proc/stat."""
    out: dict[str, tuple[int, int]] = {}
    with contextlib.suppress(OSError), open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *vals = line.split()
                v = [int(x) for x in vals]
                out[name] = (sum(v[:8]), v[3] + v[4])
    return out


async def measure_open_streams(p: Path_, n: int, open_within: float) -> dict[str, Any]:
    """RSS of the path's process with ``n`` slow streams open through it."""
    assert p.proc is not None
    body = json.dumps(SLOW_STREAM).encode()
    url = p.url(slow=True)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False,
                                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=30))
    opened = 0
    errors: list[str] = []
    all_open = asyncio.Event()
    before = p.proc.rss()

    async def one() -> None:
        nonlocal opened
        try:
            async with session.post(url, data=body, headers=HEADERS) as r:
                if r.status != 200:
                    errors.append(f"HTTP {r.status}")
                    return
                await r.content.readany()
                opened += 1
                if opened == n:
                    all_open.set()
                while await r.content.readany():
                    pass
        except (aiohttp.ClientError, OSError) as e:
            errors.append(type(e).__name__)

    tasks: list[asyncio.Task[None]] = []
    t0 = time.perf_counter()
    try:
        for i in range(0, n, 100):  # in waves, so no listen backlog overflows
            tasks += [asyncio.create_task(one()) for _ in range(min(100, n - i))]
            await asyncio.sleep(0.05)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_open.wait(), open_within)
        open_seconds = time.perf_counter() - t0
        await asyncio.sleep(1.0)  # a couple of chunks through every stream
        rss_open = p.proc.rss()
        peak = _vm_hwm(p.proc.pid)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await session.close()
    await asyncio.sleep(1.0)
    return {"streams": n, "opened": opened, "errors": len(errors), "first_error": errors[0] if errors else None,
            "seconds_to_open": round(open_seconds, 3), "rss_before_mib": before / MIB, "rss_open_mib": rss_open / MIB,
            "vm_hwm_mib": peak / MIB if peak else None, "rss_after_close_mib": p.proc.rss() / MIB,
            "per_stream_kib": (rss_open - before) / max(opened, 1) / 1024}


def _vm_hwm(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# --------------------------------------------------------------------------- the run


def raise_nofile(want: int = 65536) -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def plan_cores() -> tuple[set[int] | None, set[int] | None, str]:
    """(cores for load generator + upstream, core for the server under test, description)."""
    avail = sorted(os.sched_getaffinity(0))
    if len(avail) < 2:
        return None, None, f"no pinning: only {len(avail)} usable core(s)"
    sut = {avail[-1]}
    load = set(avail[:-1])
    return load, sut, (f"load generator + upstream on cpu {','.join(map(str, sorted(load)))}; "
                       f"each proxy/gateway (one at a time under load) on cpu {avail[-1]}")


def compile_bytecode() -> None:
    """Byte-compile the gateway's and the floor's code, as the image does (``compileall`` after
    ``pip install``): with PYTHONDONTWRITEBYTECODE set (as on this project's machine) every
    start would otherwise compile the gateway's modules from source, which the installed
    gateway never does, while its dependencies load their installed bytecode."""
    import compileall

    for d in (REPO / "sidecar" / "modelroute_sidecar", REPO / "bench"):
        compileall.compile_dir(d, quiet=1, workers=1)


class Bench:
    def __init__(self, args: argparse.Namespace, s: Settings) -> None:
        self.args = args
        self.s = s
        self.tmp = Path(tempfile.mkdtemp(prefix="modelroute-bench-"))
        self.procs: list[Proc] = []
        self.load_cores, self.sut_cores, self.pinning = plan_cores()
        if args.no_pin:
            self.load_cores = self.sut_cores = None
            self.pinning = "no pinning (--no-pin)"
        self.litellm_bin = None if args.no_litellm else find_litellm(args.litellm_bin)
        self.results: dict[str, Any] = {}

    def say(self, msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    def spawn(self, name: str, argv: list[str], cores: set[int] | None, env: dict[str, str] | None = None) -> Proc:
        proc = Proc(name, argv, cores, self.tmp / f"{name}.log", env)
        proc.start()
        self.procs.append(proc)
        return proc

    def gateway_argv(self, cfg: Path, port: int, metrics_port: int, level: str | None,
                     profile: str | None = None) -> list[str]:
        argv = [sys.executable]
        if profile == "cprofile":
            argv += ["-m", "cProfile", "-o", str(self.tmp / "gateway.prof")]
        elif profile == "pyinstrument":
            argv += ["-m", "pyinstrument", "-i", "0.0002", "-r", "pyisession",
                     "-o", str(self.tmp / "gateway.pyisession")]
        argv += ["-m", "modelroute_sidecar", "sidecar", "--config-dir", str(cfg), "--port", str(port),
                 "--metrics-port", str(metrics_port)]
        if level:
            argv += ["--log-level", level]
        return argv

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            p.stop()

    async def run(self) -> dict[str, Any]:
        s, args = self.s, self.args
        nofile = raise_nofile()
        if self.load_cores:
            os.sched_setaffinity(0, self.load_cores)
        started = time.time()
        load_before = os.getloadavg()
        self.say(f"pinning: {self.pinning}; open files limit {nofile[0]}")
        compile_bytecode()

        up_port = free_port()
        upstream = self.spawn("upstream", [sys.executable, "-m", "bench.fast_upstream", "--port", str(up_port),
                                           "--chunks", str(s.chunks), "--slow-interval", "1.0",
                                           "--slow-seconds", str(args.slow_seconds)], self.load_cores)
        gw_cfg = sidecar_config_dir(self.tmp / "sidecar", gateway_yaml(up_port))

        paths: list[Path_] = [Path_("direct", "direct (no proxy)", up_port, None)]
        bare_port = free_port()
        bare = self.spawn("bare", [sys.executable, "-m", "bench.bare_proxy", "--port", str(bare_port),
                                   "--upstream", f"http://127.0.0.1:{up_port}"], self.sut_cores)
        paths.append(Path_("bare", "bare aiohttp proxy (floor)", bare_port, bare))
        for name, label, level in (("gateway", "gateway (default log level)", None),
                                   ("gateway-warn", "gateway --log-level warning", "warning")):
            port, mport = free_port(), free_port()
            proc = self.spawn(name, self.gateway_argv(gw_cfg, port, mport, level), self.sut_cores)
            paths.append(Path_(name, label, port, proc, ready_path="/readyz", ready_port=mport, routed_slow=True))
        litellm_row: dict[str, Any] = {"installed": self.litellm_bin is not None, "skipped": bool(args.no_litellm)}
        if self.litellm_bin:
            cfg = self.tmp / "litellm.yaml"
            cfg.write_text(litellm_yaml(up_port))
            port = free_port()
            proc = self.spawn("litellm", [self.litellm_bin, "--config", str(cfg), "--host", "127.0.0.1",
                                          "--port", str(port)], self.sut_cores,
                              env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False"})
            paths.append(Path_("litellm", "LiteLLM proxy", port, proc, ready_path="/health/liveliness",
                               ready_port=port, routed_slow=True))
            litellm_row["binary"] = self.litellm_bin
            litellm_row["version"] = litellm_version(self.litellm_bin)

        wait_http(upstream, up_port, None, 30)
        ready: dict[str, float] = {}
        for p in paths:
            if p.proc is None:
                continue
            timeout = 180 if p.name == "litellm" else 30
            try:
                ready[p.name] = wait_http(p.proc, p.ready_port or p.port, p.ready_path, timeout)
            except RuntimeError as e:
                if p.name != "litellm":
                    raise
                litellm_row["error"] = str(e)
                self.say(f"LiteLLM did not start; its row is left out: {e}")
                p.proc.stop()
        paths = [p for p in paths if p.proc is None or p.proc.alive()]
        await asyncio.sleep(IDLE_SETTLE)  # idle: let start-up work (and the first config poll) settle
        idle_rss = {p.name: p.proc.rss() / MIB for p in paths if p.proc}
        self.say("started: " + ", ".join(f"{k} {v:.2f}s" for k, v in ready.items()))

        self.say(f"latency: {s.rounds} rounds x {s.batch} sequential requests per path")
        busy: dict[str, dict[str, float]] = {}
        j0 = per_cpu_jiffies()
        lat = await measure_sequential(paths, s.warmup, s.rounds, s.batch, stream=False)
        busy["latency"], j0 = machine_busy(j0), per_cpu_jiffies()
        self.say(f"streams: {s.stream_rounds} rounds x {s.stream_batch} streams per path")
        streams = await measure_sequential(paths, max(s.warmup // 5, 5), s.stream_rounds, s.stream_batch,
                                           stream=True)
        tp_paths = [p for p in paths if p.proc is not None] + [paths[0]]
        self.say(f"throughput: {s.tp_rounds} x {s.tp_seconds:g}s windows per path, {s.concurrency} in flight")
        busy["streams"], j0 = machine_busy(j0), per_cpu_jiffies()
        tp = await measure_throughput(tp_paths, upstream, s)
        busy["throughput"] = machine_busy(j0)
        idle_after_load = {p.name: p.proc.rss() / MIB for p in paths if p.proc}

        mem: dict[str, Any] = {}
        for p in paths:
            if p.proc is None or p.name == "gateway-warn":
                continue
            self.say(f"memory: {s.open_streams} open streams through {p.name}")
            mem[p.name] = await measure_open_streams(p, s.open_streams, s.open_within)

        # Start-up is timed on a quiet core: the servers measured above (LiteLLM's workers
        # above all) would otherwise share it with the process being started.
        for p in paths:
            if p.proc is not None:
                p.proc.stop()
        self.say(f"start to ready: {s.starts} gateway starts")
        starts, start_cpu, start_rss = self.measure_starts(gw_cfg, s.starts)
        bare_starts, bare_cpu, bare_rss = self.measure_bare_starts(up_port, s.starts)

        profile = None
        if args.profile:
            profile = await self.profile_gateway(gw_cfg, args.profile)
        self.results = self.assemble(paths, lat, streams, tp, idle_rss, idle_after_load, mem, ready, starts,
                                     start_cpu, start_rss, bare_starts, bare_cpu, bare_rss, litellm_row, profile)
        self.results["environment"].update({"machine_cpu_busy": busy, "load_before": load_before,
                                            "load_after": os.getloadavg(),
                                            "open_files_limit": nofile[0], "wall_seconds": time.time() - started})
        return self.results

    def measure_starts(self, cfg: Path, n: int) -> tuple[list[float], list[float], list[float]]:
        """Wall seconds from exec to ready, CPU seconds spent by then, and idle RSS (once the
        first config poll has run), per start."""
        times, cpu, rss = [], [], []
        for i in range(n):
            port, mport = free_port(), free_port()
            proc = self.spawn(f"gateway-start{i}", self.gateway_argv(cfg, port, mport, None), self.sut_cores)
            try:
                times.append(wait_http(proc, mport, "/readyz", 30))
                cpu.append(proc.cpu())
                time.sleep(IDLE_SETTLE)
                rss.append(proc.rss() / MIB)
            finally:
                proc.stop()
        return times, cpu, rss

    def measure_bare_starts(self, up_port: int, n: int) -> tuple[list[float], list[float], list[float]]:
        """The same for the bare proxy, measured the same way (start to open port)."""
        times, cpu, rss = [], [], []
        for i in range(n):
            port = free_port()
            proc = self.spawn(f"bare-start{i}", [sys.executable, "-m", "bench.bare_proxy", "--port", str(port),
                                                 "--upstream", f"http://127.0.0.1:{up_port}"], self.sut_cores)
            try:
                times.append(wait_http(proc, port, None, 30))
                cpu.append(proc.cpu())
                time.sleep(IDLE_SETTLE)
                rss.append(proc.rss() / MIB)
            finally:
                proc.stop()
        return times, cpu, rss

    async def profile_gateway(self, cfg: Path, kind: str) -> dict[str, Any]:
        """A separate gateway under a profiler, driven by sequential and concurrent load."""
        port, mport = free_port(), free_port()
        proc = self.spawn(f"gateway-{kind}", self.gateway_argv(cfg, port, mport, None, profile=kind), self.sut_cores)
        wait_http(proc, mport, "/readyz", 60)
        p = Path_("gateway-profiled", "gateway under profiler", port, proc, routed_slow=True)
        self.say(f"profiling the gateway with {kind}")
        await measure_sequential([p], 100, 4, 250, stream=False)
        await measure_sequential([p], 20, 2, 100, stream=True)
        await throughput_window(port, "/v1/chat/completions", self.s.concurrency, 3 * self.s.tp_seconds)
        proc.stop(60)
        return render_profile(kind, self.tmp)

    def assemble(self, paths: list[Path_], lat: dict[str, dict[str, Samples]], streams: dict[str, dict[str, Samples]],
                 tp: dict[str, dict[str, Any]], idle_rss: dict[str, float], idle_after: dict[str, float],
                 mem: dict[str, Any], ready: dict[str, float], starts: list[float], start_cpu: list[float],
                 start_rss: list[float], bare_starts: list[float], bare_cpu: list[float], bare_rss: list[float],
                 litellm_row: dict[str, Any],
                 profile: dict[str, Any] | None) -> dict[str, Any]:
        d_lat = lat["direct"]["total"].values
        d_ttft = streams["direct"]["first"].values
        rows: dict[str, Any] = {}
        for p in paths:
            L = lat[p.name]["total"]
            F = streams[p.name]["first"]
            T = streams[p.name]["total"]
            row: dict[str, Any] = {"label": p.label, "latency": L.summary(), "ttft": F.summary(),
                                   "stream_total": T.summary()}
            if L.values and d_lat and p.name != "direct":
                row["added_latency_ms"] = {"p50": (pct(L.values, 50) - pct(d_lat, 50)) * 1000,
                                           "p99": (pct(L.values, 99) - pct(d_lat, 99)) * 1000}
            if F.values and d_ttft and p.name != "direct":
                row["added_ttft_ms"] = {"p50": (pct(F.values, 50) - pct(d_ttft, 50)) * 1000,
                                        "p99": (pct(F.values, 99) - pct(d_ttft, 99)) * 1000}
            if p.name in tp:
                row["throughput"] = tp[p.name]
            if p.proc is not None:
                row["pid_cores"] = sorted(p.proc.cores) if p.proc.cores else None
                row["idle_rss_mib"] = idle_rss.get(p.name)
                row["idle_rss_after_load_mib"] = idle_after.get(p.name)
                row["start_to_ready_s"] = ready.get(p.name)
            if p.name in mem:
                row["open_streams"] = mem[p.name]
            rows[p.name] = row
        if "litellm" not in rows:
            rows["litellm"] = {"label": "LiteLLM proxy", "skipped": litellm_row["skipped"],
                               "not_installed": not litellm_row["installed"] and not litellm_row["skipped"],
                               "error": litellm_row.get("error")}
        rows["litellm"]["install"] = litellm_row

        startup = {"gateway_runs_s": starts, "gateway_median_s": statistics.median(starts) if starts else None,
                   "gateway_cpu_s_runs": start_cpu,
                   "gateway_cpu_median_s": statistics.median(start_cpu) if start_cpu else None,
                   "gateway_idle_rss_mib_runs": start_rss,
                   "gateway_idle_rss_median_mib": statistics.median(start_rss) if start_rss else None,
                   "bare_proxy_idle_rss_mib_runs": bare_rss,
                   "bare_proxy_idle_rss_median_mib": statistics.median(bare_rss) if bare_rss else None,
                   "bare_proxy_runs_s": bare_starts,
                   "bare_proxy_median_s": statistics.median(bare_starts) if bare_starts else None,
                   "bare_proxy_cpu_median_s": statistics.median(bare_cpu) if bare_cpu else None}
        return {"rows": rows, "startup": startup, "targets": evaluate(rows, startup), "profile": profile,
                "settings": asdict(self.s), "environment": environment(self.pinning),
                "command": rerun_command(self.args)}


def evaluate(rows: dict[str, Any], startup: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target: measured figure, threshold, pass/fail (None when it cannot be judged)."""
    out: list[dict[str, Any]] = []

    def add(name: str, gw: str, measured: float | None, limit: float, ok: bool | None, detail: str) -> None:
        out.append({"target": name, "gateway_row": gw, "measured": measured, "limit": limit, "pass": ok,
                    "detail": detail})

    bare = rows.get("bare", {})
    lit = rows.get("litellm", {})
    for gw in ("gateway", "gateway-warn"):
        g = rows.get(gw)
        if not g:
            continue
        for q in ("p50", "p99"):
            ga = g.get("added_latency_ms", {}).get(q)
            ba = bare.get("added_latency_ms", {}).get(q)
            limit = TARGETS["added_latency_vs_bare"]
            if ga is not None and ba is not None and (ga <= 0 or ba <= 0):
                # Direct's own tail was the slowest: a noise spike, or too few samples for a p99.
                add(f"added latency {q} <= {limit:g}x bare proxy", gw, None, limit, None,
                    f"cannot judge: gateway {ga:+.3f} ms, bare {ba:+.3f} ms against direct")
            elif ga is not None and ba is not None:
                ratio = ga / ba
                add(f"added latency {q} <= {limit:g}x bare proxy", gw, ratio, limit, ratio <= limit,
                    f"gateway +{ga:.3f} ms, bare +{ba:.3f} ms")
            la = lit.get("added_latency_ms", {}).get(q)
            f = TARGETS["litellm_factor"]
            if ga is not None and la is not None and ga > 0:
                factor = la / ga
                add(f"added latency {q} >= {f:g}x lower than LiteLLM", gw, factor, f, factor >= f,
                    f"LiteLLM +{la:.3f} ms, gateway +{ga:.3f} ms")
            else:
                add(f"added latency {q} >= {f:g}x lower than LiteLLM", gw, None, f, None,
                    f"cannot judge: gateway {ga:+.3f} ms against direct" if ga is not None and la is not None else
                    "LiteLLM skipped" if lit.get("skipped") else
                    "LiteLLM not installed" if lit.get("not_installed") else "LiteLLM not measured")
        gtp, btp = g.get("throughput", {}), bare.get("throughput", {})
        if gtp.get("rps") and btp.get("rps"):
            limit = TARGETS["throughput_vs_bare"]
            measured = gtp["rps"] / btp["rps"]
            gc_, bc = gtp.get("proxy_cpu_us_per_request"), btp.get("proxy_cpu_us_per_request")
            capacity = bc / gc_ if gc_ and bc else None
            saturated = min(gtp["proxy_core_busy"], btp["proxy_core_busy"]) >= SATURATED
            # A proxy that did not keep its core busy was held back by something else (the
            # machine's other load, usually): then its req/s say little, and its CPU per request
            # tells what one core would carry.
            by_rps = saturated or capacity is None
            ratio = measured if by_rps or capacity is None else capacity
            busy = min(gtp["proxy_core_busy"], btp["proxy_core_busy"])
            basis = ("req/s (both kept their core busy)" if by_rps
                     else f"CPU per request, as a proxy kept its core only {busy:.0%} busy")
            add(f"one-core throughput >= {limit:g}x bare proxy", gw, ratio, limit, ratio >= limit,
                f"judged on {basis}: gateway {gtp['rps']:.0f} req/s, bare {btp['rps']:.0f} req/s (ratio "
                f"{measured:.2f}); CPU per request {_f(gc_, '{:.0f}')} us vs {_f(bc, '{:.0f}')} us (ratio "
                f"{_f(capacity, '{:.2f}')})")
    g = rows.get("gateway", {})
    b_idle = bare.get("idle_rss_mib")
    if g.get("idle_rss_mib") is not None and b_idle:
        limit = TARGETS["idle_rss_vs_bare"]
        ratio = g["idle_rss_mib"] / b_idle
        add(f"idle RSS <= {limit:g}x bare proxy", "gateway", ratio, limit, ratio <= limit,
            f"gateway {g['idle_rss_mib']:.1f} MiB, bare {b_idle:.1f} MiB")
    gm, bm_ = startup.get("gateway_idle_rss_median_mib"), startup.get("bare_proxy_idle_rss_median_mib")
    if gm is not None and bm_:
        limit = TARGETS["idle_rss_vs_bare"]
        add(f"idle RSS <= {limit:g}x bare proxy (fresh starts)", "gateway", gm / bm_, limit, gm / bm_ <= limit,
            f"median of {len(startup['gateway_idle_rss_mib_runs'])} starts each: gateway {gm:.1f} MiB, bare "
            f"{bm_:.1f} MiB, {IDLE_SETTLE:g} s after ready")
    opened = g.get("open_streams") or {}
    if opened.get("rss_open_mib") is not None:
        limit = TARGETS["open_streams_rss_mib"]
        add(f"RSS with {opened.get('opened', '?')} open streams <= {limit:g} MiB", "gateway",
            opened["rss_open_mib"], limit, opened["rss_open_mib"] <= limit,
            f"{opened.get('opened', '?')}/{opened.get('streams', '?')} streams open")
    if startup.get("gateway_median_s") is not None and startup.get("bare_proxy_median_s"):
        limit = TARGETS["start_vs_bare"]
        m, bm = startup["gateway_median_s"], startup["bare_proxy_median_s"]
        add(f"start to ready <= {limit:g}x bare proxy (median)", "gateway", m / bm, limit, m / bm <= limit,
            f"gateway {m:.3f} s ({len(startup['gateway_runs_s'])} starts: "
            + ", ".join(f"{x:.3f}" for x in startup["gateway_runs_s"])
            + f"), bare {bm:.3f} s; CPU time spent by ready, median gateway "
            + f"{_f(startup['gateway_cpu_median_s'], '{:.2f}')} s, bare "
            + f"{_f(startup.get('bare_proxy_cpu_median_s'), '{:.2f}')} s")
    return out


def render_profile(kind: str, tmp: Path) -> dict[str, Any]:
    """Keep the profile in bench/results/ and summarise it (pyinstrument's also as text)."""
    out: dict[str, Any] = {"kind": kind}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    prof = RESULTS_DIR / "gateway.prof"
    if kind == "cprofile":
        shutil.copy(tmp / "gateway.prof", prof)
    else:
        session = RESULTS_DIR / "gateway.pyisession"
        shutil.copy(tmp / "gateway.pyisession", session)
        text = RESULTS_DIR / "gateway.pyinstrument.txt"
        for renderer, dest, extra in (("pstats", prof, []),
                                      ("text", text, ["--show-all", "--no-color", "-p",
                                                      "processor_options.filter_threshold=0.005"])):
            subprocess.run([sys.executable, "-m", "pyinstrument", f"--load={session}", "-r", renderer,
                            "-o", str(dest), *extra], check=True, timeout=300)
        out["text_file"] = str(text)
        out["request_tree"] = request_tree(text.read_text(errors="replace"))
    out["file"] = str(prof)
    out["top"] = cprofile_top(prof, 40)
    return out


def request_tree(text: str, max_depth: int = 9, share: float = 0.015, limit: int = 70) -> list[str]:
    """The subtree of pyinstrument's text report under the server's request handling, pruned to
    frames holding at least ``share`` of it and at most ``max_depth`` levels below it."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if "RequestHandler._handle_request" in line), None)
    if start is None:
        return []

    def indent(line: str) -> int:
        return len(line) - len(line.lstrip("│├└─ "))

    def seconds(line: str) -> float:
        m = re.search(r"(\d+\.\d+) ", line.lstrip("│├└─ "))
        return float(m.group(1)) if m else 0.0

    base, total = indent(lines[start]), seconds(lines[start]) or 1.0
    out = [lines[start][base:]]
    for line in lines[start + 1:]:
        depth = indent(line)
        if depth <= base:
            break
        if (depth - base) // 3 <= max_depth and seconds(line) >= share * total:
            out.append(line[base:])
        if len(out) >= limit:
            break
    return out


def cprofile_top(path: Path, n: int) -> list[dict[str, Any]]:
    """The functions of the gateway's own code with the most time, internal and cumulative."""
    import pstats

    st = pstats.Stats(str(path))
    entries: list[dict[str, Any]] = []
    total = sum(v[2] for v in st.stats.values())  # type: ignore[attr-defined]
    for (file, line, func), (_cc, nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        entries.append({"function": func, "file": file, "line": line, "calls": nc, "tottime_s": tt, "cumtime_s": ct,
                        "own": "modelroute_sidecar" in file})
    entries.sort(key=lambda e: e["tottime_s"], reverse=True)
    top = entries[:n]
    own = sorted((e for e in entries if e["own"] and e["function"] != "<module>" and not e["file"].endswith("cli.py")),
                 key=lambda e: e["cumtime_s"], reverse=True)[:n]
    return [{"total_tottime_s": total}, {"by_tottime": top}, {"own_by_cumtime": own}]


_USABLE_CORES = len(os.sched_getaffinity(0))


def environment(pinning: str) -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions: dict[str, str | None] = {}
    for mod in ("aiohttp", "uvloop", "orjson", "pydantic"):
        try:
            import importlib.metadata as md

            versions[mod] = md.version(mod)
        except Exception:
            versions[mod] = None
    git: dict[str, Any] = {}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        git["head"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                     text=True, timeout=10).stdout.strip()
        git["sidecar_uncommitted"] = subprocess.run(
            ["git", "status", "--porcelain", "--", "sidecar"], cwd=REPO, capture_output=True, text=True,
            timeout=10).stdout.split()[1::2]
    return {"python": platform.python_version(), "platform": platform.platform(), "cpu": cpu, "git": git,
            "cores": os.cpu_count(), "usable_cores": _USABLE_CORES, "pinning": pinning,
            "versions": versions, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def rerun_command(args: argparse.Namespace) -> str:
    python = "python" if sys.prefix == sys.base_prefix else sys.executable  # a venv's own interpreter
    argv = [python, "-m", "bench.sidecar_bench", *args.raw_argv]
    return f"cd {shlex.quote(str(REPO))} && " + " ".join(shlex.quote(a) for a in argv)


# --------------------------------------------------------------------------- report


def _f(v: float | None, fmt: str = "{:.3f}") -> str:
    return "-" if v is None else fmt.format(v)


ORDER = ("direct", "bare", "gateway", "gateway-warn", "litellm")
FOOTPRINT = ("idle RSS", "open streams", "start to ready")  # the targets the footprint section repeats


def _verdict(t: dict[str, Any]) -> str:
    verdict = {True: "PASS", False: "FAIL", None: "n/a "}[t["pass"]]
    ratio = "-" if t["measured"] is None else (f"{t['measured']:.1f}" if "MiB" in t["target"]
                                                else f"{t['measured']:.2f}x")
    return f"{verdict}  {t['target']:<46} [{t['gateway_row']:<12}] {ratio:>7}  {t['detail']}"


def _table(out: Callable[[str], None], title: str, cols: list[tuple[str, int]], lines: list[list[str]]) -> None:
    out(title)
    head = f"{'path':<30}" + "".join(f" {c:>{w}}" for c, w in cols)
    out(head)
    out("-" * len(head))
    for cells in lines:
        out(f"{cells[0]:<30}" + "".join(f" {c:>{w}}" for c, (_, w) in zip(cells[1:], cols, strict=False)))


def report(res: dict[str, Any], out: Callable[[str], None] = print) -> None:
    rows = res["rows"]
    env = res["environment"]
    sets = res["settings"]
    out("")
    out(f"modelroute sidecar benchmark — {env['cpu'] or 'cpu ?'}, {env['usable_cores']} usable cores, "
        f"Python {env['python']}, aiohttp {env['versions'].get('aiohttp')}")
    git = env.get("git") or {}
    dirty = git.get("sidecar_uncommitted")
    out(f"commit {git.get('head', '?')}" + (f" with uncommitted changes in {', '.join(dirty)}" if dirty else ""))
    out(f"pinning: {env['pinning']}")
    out(f"load average before/after: {env['load_before'][0]:.2f} / {env['load_after'][0]:.2f}"
        f"   (wall {env['wall_seconds']:.0f} s)")
    if env.get("machine_cpu_busy"):
        out("machine busy per phase (all processes): " + "; ".join(
            f"{phase} " + " ".join(f"{c} {v:.0%}" for c, v in b.items())
            for phase, b in env["machine_cpu_busy"].items()))
    out("")

    measured = [(n, rows[n]) for n in ORDER if n in rows and "latency" in rows[n]]
    missing = [(n, rows[n]) for n in ORDER if n in rows and "latency" not in rows[n]]

    def why(r: dict[str, Any]) -> str:
        return ("skipped (--no-litellm)" if r.get("skipped") else "not installed" if r.get("not_installed")
                else f"not measured: {(r.get('error') or '?').splitlines()[0][:80]}")

    def added(r: dict[str, Any], key: str, q: str) -> str:
        return _f(r.get(key, {}).get(q)) if key in r else "-"

    lines = []
    for _, r in measured:
        L = r["latency"]
        lines.append([r["label"], _f(L["p50_ms"]), _f(L["p99_ms"]), added(r, "added_latency_ms", "p50"),
                      added(r, "added_latency_ms", "p99"), _f(L.get("cpu_us_per_request"), "{:.0f}"),
                      str(L["errors"])])
    lines += [[r["label"], why(r)] for _, r in missing]
    _table(out, f"Non-streaming latency, ms: {sets['rounds']} interleaved rounds x {sets['batch']} sequential "
           "requests per path over keep-alive; added = path minus direct, same run",
           [("p50", 8), ("p99", 8), ("added p50", 9), ("added p99", 9), ("cpu us/req", 10), ("err", 4)], lines)
    out("")
    lines = []
    for _, r in measured:
        F, T = r["ttft"], r["stream_total"]
        lines.append([r["label"], _f(F["p50_ms"]), _f(F["p99_ms"]), added(r, "added_ttft_ms", "p50"),
                      added(r, "added_ttft_ms", "p99"), _f(T["p50_ms"]), _f(T.get("cpu_us_per_request"), "{:.0f}"),
                      str(F["errors"] + T["errors"])])
    _table(out, f"Streams ({sets['chunks']} chunks + usage + [DONE]), ms: time to first token; "
           f"{sets['stream_rounds']} rounds x {sets['stream_batch']} per path",
           [("ttft p50", 8), ("ttft p99", 8), ("added p50", 9), ("added p99", 9), ("whole p50", 9),
            ("cpu us/strm", 11), ("err", 4)], lines)
    out("")
    lines = []
    bare_tp = rows.get("bare", {}).get("throughput", {})
    for n, r in measured:
        tp = r.get("throughput")
        if not tp:
            continue
        direct = n == "direct"
        vs = (tp["rps"] / bare_tp["rps"]) if bare_tp.get("rps") and not direct else None
        cap = (bare_tp["proxy_cpu_us_per_request"] / tp["proxy_cpu_us_per_request"]
               if bare_tp.get("proxy_cpu_us_per_request") and tp.get("proxy_cpu_us_per_request") else None)
        lines.append([r["label"], _f(tp["rps"], "{:.0f}"),
                      _f(tp["upstream_core_busy"] if direct else tp["proxy_core_busy"], "{:.0%}"),
                      _f(tp.get("proxy_cpu_us_per_request"), "{:.0f}"), _f(vs, "{:.2f}"), _f(cap, "{:.2f}"),
                      str(tp["errors"])])
    _table(out, f"Throughput, non-streaming, {sets['concurrency']} in flight, each proxy alone on one core "
           f"({sets['tp_rounds']} interleaved windows x {sets['tp_seconds']:g} s)",
           [("req/s", 7), ("core busy", 9), ("cpu us/req", 10), ("vs bare", 7), ("cpu vs bare", 11), ("err", 4)],
           lines)
    mb = {n: r["throughput"].get("machine_cpu_busy") for n, r in measured if r.get("throughput")}
    if any(mb.values()):
        out("  whole machine during the windows (all processes, others' too): " + "; ".join(
            f"{n} " + " ".join(f"{c} {v:.0%}" for c, v in b.items()) for n, b in mb.items() if b))
    out("  core busy: the proxy's CPU time / wall time (for direct, the upstream's); under 85% the proxy was held")
    out("  back by something else (other load on the machine) and 'cpu vs bare' (bare's CPU per request / this")
    out("  one's) is what one core would carry.")
    out("")
    lines = []
    for n, r in measured:
        if n == "direct":
            continue
        m = r.get("open_streams") or {}
        lines.append([r["label"], _f(r.get("idle_rss_mib"), "{:.1f}"), _f(r.get("idle_rss_after_load_mib"), "{:.1f}"),
                      f"{m['opened']}/{m['streams']}" if m else "-", _f(m.get("rss_open_mib"), "{:.1f}"),
                      _f(m.get("per_stream_kib"), "{:.1f}"), _f(r.get("start_to_ready_s"), "{:.3f}")])
    _table(out, "Memory (VmRSS, MiB) and start", [("idle", 7), ("after load", 10), ("streams open", 12),
                                                   ("RSS open", 8), ("KiB/stream", 10), ("first start s", 13)],
           lines)
    st = res["startup"]
    out(f"  gateway start to ready (exec to GET /readyz 200), {len(st['gateway_runs_s'])} starts: median "
        f"{_f(st['gateway_median_s'], '{:.3f}')} s [{', '.join(f'{x:.3f}' for x in st['gateway_runs_s'])}]; "
        f"CPU spent by then, median {_f(st['gateway_cpu_median_s'], '{:.2f}')} s")
    out(f"  bare proxy start to port open, {len(st['bare_proxy_runs_s'])} starts: median "
        f"{_f(st['bare_proxy_median_s'], '{:.3f}')} s [{', '.join(f'{x:.3f}' for x in st['bare_proxy_runs_s'])}]; "
        f"CPU {_f(st.get('bare_proxy_cpu_median_s'), '{:.2f}')} s")
    if st.get("gateway_idle_rss_median_mib") is not None:
        out(f"  idle RSS {IDLE_SETTLE:g} s after ready, per start: gateway "
            f"[{', '.join(f'{x:.1f}' for x in st['gateway_idle_rss_mib_runs'])}], bare proxy "
            f"[{', '.join(f'{x:.1f}' for x in st.get('bare_proxy_idle_rss_mib_runs') or [])}] MiB")
    out("Footprint targets (issue 13):")
    for t in res["targets"]:
        if any(k in t["target"] for k in FOOTPRINT):
            out("  " + _verdict(t))
    out("")
    out("Targets (the gateway at its default log level; --log-level warning alongside):")
    for t in res["targets"]:
        out("  " + _verdict(t))
    prof = res.get("profile")
    if prof:
        out("")
        if prof.get("request_tree"):
            out(f"Profile ({prof['kind']}): where the gateway's request handling goes (seconds on stack):")
            for line in prof["request_tree"]:
                out("  " + line)
        else:
            out(f"Profile ({prof['kind']}) of the gateway's own code on the request path, by cumulative time:")
            for e in prof["top"][2]["own_by_cumtime"][:30]:
                out(f"  {e['cumtime_s']:8.3f}s cum {e['tottime_s']:8.3f}s own {e['calls']:>8} calls  "
                    f"{Path(e['file']).name}:{e['line']} {e['function']}")
            out("Top of all functions by own time:")
            for e in prof["top"][1]["by_tottime"][:25]:
                out(f"  {e['tottime_s']:8.3f}s own {e['calls']:>8} calls  {e['file']}:{e['line']} {e['function']}")
        out(f"Profile files: {prof['file']}" + (f", {prof['text_file']}" if prof.get("text_file") else ""))
    out("")
    out(f"Rerun: {res['command']}")
    if res.get("json"):
        out(f"JSON:  {res['json']}")


# --------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.sidecar_bench",
                                description="What the modelroute sidecar adds over a bare proxy and LiteLLM.")
    p.add_argument("--quick", action="store_true", help="a short smoke run (under a minute)")
    p.add_argument("--no-litellm", action="store_true", help="leave LiteLLM out even when installed")
    p.add_argument("--litellm-bin", help="the `litellm` executable (default: $MODELROUTE_BENCH_LITELLM or PATH)")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    p.add_argument("--profile", choices=["cprofile", "pyinstrument"],
                   help="afterwards, run a separate gateway under this profiler and report where its time goes")
    p.add_argument("--json", type=Path, help="where to write the results (default bench/results/<time>.json)")
    p.add_argument("--slow-seconds", type=float, default=120.0, help="a slow stream's longest life")
    for name in ("warmup", "rounds", "batch", "stream-rounds", "stream-batch", "tp-rounds", "concurrency",
                 "open-streams", "starts", "chunks"):
        p.add_argument(f"--{name}", type=int, help="override the preset's count")
    p.add_argument("--tp-seconds", type=float, help="override the preset's throughput window")
    p.add_argument("--open-within", type=float, help="override the seconds allowed to open the streams")
    args = p.parse_args(argv)
    args.raw_argv = list(sys.argv[1:] if argv is None else argv)
    return args


def settings_from(args: argparse.Namespace) -> Settings:
    s = QUICK if args.quick else FULL
    over = {f: getattr(args, f) for f in Settings.__dataclass_fields__ if getattr(args, f, None) is not None}
    return Settings(**{**asdict(s), **over})


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    s = settings_from(args)
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    bench = Bench(args, s)
    try:
        res = asyncio.run(bench.run())
    except RuntimeError as e:
        print(f"benchmark failed: {e}", file=sys.stderr)
        return 1
    finally:
        bench.stop_all()
        shutil.rmtree(bench.tmp, ignore_errors=True)
    dest = args.json or RESULTS_DIR / f"sidecar_bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    res["json"] = str(dest)
    dest.write_text(json.dumps(res, indent=2, default=str))
    report(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
