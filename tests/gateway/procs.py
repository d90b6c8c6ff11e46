"""Run `modelroute` as a user would: a subprocess, with its logs kept for assertions."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.gateway.harness import UPSTREAM_CLIENT, free_port


@dataclass
class GatewayProcess:
    proc: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_ready(url: str, proc: subprocess.Popen[bytes], log_path: Path, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"modelroute exited with {proc.returncode}:\n{log_path.read_text()}")
        if http_status(url) == 200:
            return
        time.sleep(0.02)
    raise TimeoutError(f"{url} not ready within {within}s:\n{log_path.read_text()}")


@contextmanager
def modelroute(tmp_path: Path, *args: str, env: dict[str, str] | None = None,
               ready: bool = True) -> Iterator[GatewayProcess]:
    """`python -m modelroute_sidecar <args> --port P --metrics-port M`, stopped with SIGTERM."""
    port, mport = free_port(), free_port()
    if UPSTREAM_CLIENT and args[:1] in (("serve",), ("sidecar",)):
        args = (*args, "--upstream-client", UPSTREAM_CLIENT)
    log_path = tmp_path / f"modelroute-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "modelroute_sidecar", *args, "--port", str(port), "--metrics-port", str(mport)],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    gp = GatewayProcess(proc, port, mport, log_path)
    try:
        if ready:
            wait_ready(f"http://127.0.0.1:{mport}/readyz", proc, log_path)
        yield gp
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def http_status(url: str) -> int:
    """The status of GET url, or 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=0.5) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def scrape(gp: GatewayProcess) -> str:
    with urllib.request.urlopen(gp.metrics_url, timeout=5) as r:
        return str(r.read().decode())
