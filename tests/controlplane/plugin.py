"""pytest plugin: a real Kubernetes control plane for the whole session.

Load it with `pytest_plugins = ["tests.controlplane.plugin"]` (tests/conftest.py does).
A test asks for the `control_plane` fixture; such tests get the `controlplane` marker
automatically, so `-m "not controlplane"` leaves them out. A test that only renders, lints or
packages the chart asks for the `helm` fixture instead (marker `helm`): the same binaries,
no control plane started.

The binaries come from $KUBEBUILDER_ASSETS, else from `tests/controlplane/build.sh`
(its cache, or a build). That happens once, after collection and before the first test,
so a cold build is not cut short by a test's timeout; `--collect-only` builds nothing.
Missing binaries are an error in every test that needs them, never a skip.
"""

from __future__ import annotations

import sys
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import IO

import pytest

from tests.controlplane.cluster import ControlPlane, ControlPlaneError, Helm, find_binaries

FIXTURE = "control_plane"
MARKER = "controlplane"
HELM_FIXTURE = "helm"
HELM_MARKER = "helm"
# Fixture -> the marker its tests get.
MARKERS = {FIXTURE: MARKER, HELM_FIXTURE: HELM_MARKER}
_BIN_DIR = pytest.StashKey[Path | ControlPlaneError]()
_CONTROL_PLANE = pytest.StashKey[ControlPlane]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}: runs against a real etcd + kube-apiserver + kube-controller-manager "
        "(local processes, see tests/controlplane)",
    )
    config.addinivalue_line(
        "markers", f"{HELM_MARKER}: runs the tests' helm (built with the control plane) without a cluster")


def pytest_itemcollected(item: pytest.Item) -> None:
    for fixture, marker in MARKERS.items():
        if fixture in getattr(item, "fixturenames", ()):
            item.add_marker(marker)


@pytest.hookimpl(trylast=True)  # after -m/-k deselection: build only if a selected test needs it
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.option.collectonly:
        return  # listing tests never builds anything
    if any(f in getattr(item, "fixturenames", ()) for item in items for f in MARKERS):
        _resolve(config)  # an error is kept and raised by the fixture, in each test


def _stderr() -> IO[str]:
    # The build's own progress and errors go straight to the terminal (capture is
    # suspended between collection and the first test, but be safe if it is not).
    try:
        sys.stderr.fileno()
        return sys.stderr
    except (AttributeError, OSError, ValueError):
        return sys.__stderr__ or sys.stderr


def _resolve(config: pytest.Config) -> Path | ControlPlaneError:
    found = config.stash.get(_BIN_DIR, None)
    if found is None:
        try:
            found = find_binaries(build_log=_stderr())
        except ControlPlaneError as e:
            found = e
        config.stash[_BIN_DIR] = found
    return found


def _bin_dir(config: pytest.Config) -> Path:
    found = _resolve(config)
    if isinstance(found, ControlPlaneError):
        pytest.fail(f"control-plane binaries unavailable: {found}", pytrace=False)
    return found


@pytest.fixture(scope="session")
def control_plane(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver + kube-controller-manager, started once per session (per
    xdist worker), stopped at its end. See ControlPlane for what it offers."""
    cp = ControlPlane(_bin_dir(request.config), tmp_path_factory.mktemp("controlplane"))
    request.config.stash[_CONTROL_PLANE] = cp
    try:
        cp.start()
    except ControlPlaneError as e:
        pytest.fail(f"control plane did not start: {e}", pytrace=False)
    try:
        yield cp
    finally:
        cp.stop()


@pytest.fixture(scope="session")
def helm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """The tests' helm, for what needs no cluster (template, lint, package, show)."""
    return Helm(_bin_dir(request.config), tmp_path_factory.mktemp("helm"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """On a failing control-plane test, show the tail of the control plane's logs."""
    report = yield
    cp = item.config.stash.get(_CONTROL_PLANE, None)
    if report.failed and cp is not None and FIXTURE in getattr(item, "fixturenames", ()):
        report.sections.append((f"control-plane logs ({cp.log_dir})", cp.describe_logs(30)))
    return report
