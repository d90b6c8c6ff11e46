"""A real Prometheus server as a local process, and the parts of its HTTP API the tests use.

Pure library, no pytest in here; `plugin.py` finds (or builds) the binary once per session.

    binary = find_prometheus()
    with Prometheus(binary, work_dir, config) as prom:
        prom.query('sum(rate(modelroute_requests_total[1m]))')

The scrape configuration users are told to use for annotation-based discovery lives in
deploy/prometheus/scrape-config.yaml; `annotated_pods_job` reads it, so the docs and the test
are the same text.
"""

from __future__ import annotations

import atexit
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import yaml

from tests.controlplane.cluster import Component, free_port, run_build_script, tail, wait_for

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build.sh"
SCRAPE_CONFIG = HERE.parents[1] / "deploy" / "prometheus" / "scrape-config.yaml"


class PrometheusError(RuntimeError):
    """Prometheus could not be found, built, started, or answered with an error."""


def find_prometheus(build_log: IO[str] | None = None, build_script: Path = BUILD_SCRIPT) -> Path:
    """The `prometheus` binary: $MODELROUTE_PROMETHEUS, the build script's cache, or a build."""
    binary = run_build_script(build_script, "prometheus", PrometheusError, build_log)
    if not os.access(binary, os.X_OK):
        raise PrometheusError(f"{build_script} printed {binary}, which is not an executable")
    return binary


def annotated_pods_job(
    kubeconfig: Path, *, job: str = "kubernetes-pods", namespaces: Sequence[str] = ()
) -> dict[str, Any]:
    """deploy/prometheus/scrape-config.yaml's job, reading the API server with `kubeconfig`
    (and only `namespaces`, when given)."""
    (config,) = yaml.safe_load(SCRAPE_CONFIG.read_text())["scrape_configs"]
    config = dict(config, job_name=job)
    (sd,) = config["kubernetes_sd_configs"]
    sd = dict(sd, kubeconfig_file=str(kubeconfig))
    if namespaces:
        sd["namespaces"] = {"names": list(namespaces)}
    config["kubernetes_sd_configs"] = [sd]
    return config


class Prometheus:
    """`prometheus` with a configuration of the caller's, on a free loopback port.

    `wrap` turns the command line into the one to run, e.g. a node's `nsenter` prefix so that
    it runs (and scrapes) inside the node's network namespace; `on_port` is called with the
    port before start-up, e.g. to publish it from there to this side's loopback.
    """

    def __init__(
        self,
        binary: Path,
        work_dir: Path,
        config: Mapping[str, Any],
        *,
        wrap: Callable[[list[str]], list[str]] = lambda argv: argv,
        on_port: Callable[[int], None] = lambda port: None,
        start_timeout: float = 60.0,
    ) -> None:
        self.binary = binary
        self.work_dir = work_dir
        self.config = dict(config)
        self.wrap = wrap
        self.on_port = on_port
        self.start_timeout = start_timeout
        self.port = 0
        self.component: Component | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.work_dir / "prometheus.log"

    def __enter__(self) -> Prometheus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Prometheus:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        config_file = self.work_dir / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(self.config, sort_keys=False))
        self.port = free_port()
        self.on_port(self.port)
        argv = [
            str(self.binary),
            f"--config.file={config_file}",
            f"--storage.tsdb.path={self.work_dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=debug",  # the discovery's own account of what it saw, for a failing test
        ]
        self.component = Component("prometheus", self.wrap(argv), self.log_path)
        atexit.register(self.stop)
        self.component.start(os.environ)
        try:
            wait_for(self._ready, timeout=self.start_timeout, what="prometheus /-/ready",
                     on_timeout=lambda: f"\n{tail(self.log_path, 40)}")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.component is not None:
            self.component.stop()
        atexit.unregister(self.stop)

    def _ready(self) -> bool:
        assert self.component is not None
        if not self.component.alive():
            raise PrometheusError(f"prometheus exited:\n{tail(self.log_path, 40)}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    # -- the HTTP API

    def api(self, path: str, **params: str | Sequence[str]) -> Any:
        """GET /api/v1/<path>: its `data`, or PrometheusError with Prometheus' own error."""
        query = urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as e:
            body = json.load(e)
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query, now: the vector's samples ({"metric": {...}, "value": [t, "v"]})."""
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def label_values(self, label: str, match: str) -> list[str]:
        """What Grafana's label_values(match, label) shows."""
        values: list[str] = self.api(f"label/{label}/values", **{"match[]": match})
        return values

    def active_targets(self) -> list[dict[str, Any]]:
        targets: list[dict[str, Any]] = self.api("targets", state="active")["activeTargets"]
        return targets

    def logs(self, lines: int = 60) -> str:
        return tail(self.log_path, lines)
