"""pytest plugin: the Prometheus server the monitoring tests scrape with.

A test asks for the `prometheus_binary` fixture (the path of a `prometheus` built by
tests/prometheus/build.sh, or $MODELROUTE_PROMETHEUS); such tests get the `prometheus`
marker. Like the control plane's binaries, it is found or built once, after collection and
before the first test (never for `--collect-only`), with progress on stderr; a failure is an
error in every test that needs it, never a skip.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.controlplane.plugin import _stderr
from tests.prometheus.server import PrometheusError, find_prometheus

FIXTURE = "prometheus_binary"
MARKER = "prometheus"
_BINARY = pytest.StashKey[Path | PrometheusError]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{MARKER}: runs a real Prometheus (built from Go modules, see tests/prometheus)")


def _wants(item: pytest.Item) -> bool:
    return FIXTURE in getattr(item, "fixturenames", ())


def pytest_itemcollected(item: pytest.Item) -> None:
    if _wants(item):
        item.add_marker(MARKER)


@pytest.hookimpl(trylast=True)  # after -m/-k deselection: build only if a selected test needs it
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.option.collectonly and any(_wants(item) for item in items):
        _resolve(config)


def _resolve(config: pytest.Config) -> Path | PrometheusError:
    found = config.stash.get(_BINARY, None)
    if found is None:
        try:
            found = find_prometheus(build_log=_stderr())
        except PrometheusError as e:
            found = e
        config.stash[_BINARY] = found
    return found


@pytest.fixture(scope="session")
def prometheus_binary(request: pytest.FixtureRequest) -> Path:
    found = _resolve(request.config)
    if isinstance(found, PrometheusError):
        pytest.fail(f"prometheus unavailable: {found}", pytrace=False)
    return found
