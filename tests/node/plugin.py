"""pytest plugin: a real Kubernetes node (and its own control plane) for the session.

Load it with `pytest_plugins` (tests/conftest.py does). A test asks for the `node`
fixture; such tests get the `node` marker automatically, so `-m "not node"` leaves them
out and `-m node` runs only them.

What the node needs (Debian packages, kubelet and kube-scheduler, the pause image and the
modelroute image built from the Dockerfile) is installed, built or found in the caches
once, after collection and before the first test, with progress on stderr; only when a
selected test needs it (`--collect-only` builds nothing). A failure there is an error in
every node test, never a skip.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.controlplane import plugin as controlplane_plugin
from tests.controlplane.cluster import ControlPlaneError
from tests.node.node import Node, NodeAssets, NodeError, prepare

FIXTURE = "node"
ASSETS_FIXTURE = "node_assets"
MARKER = "node"
_ASSETS = pytest.StashKey[NodeAssets | Exception]()
_NODE = pytest.StashKey[Node]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}: runs real pods on a kubelet + containerd node in a private network namespace "
        "(see tests/node)",
    )


def _wants_node(item: pytest.Item) -> bool:
    names = getattr(item, "fixturenames", ())
    return FIXTURE in names or ASSETS_FIXTURE in names


def pytest_itemcollected(item: pytest.Item) -> None:
    if _wants_node(item):
        item.add_marker(MARKER)


@pytest.hookimpl(trylast=True)  # after -m/-k deselection: prepare only if a selected test needs it
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.option.collectonly and any(_wants_node(item) for item in items):
        _resolve(config)


def _resolve(config: pytest.Config) -> NodeAssets | Exception:
    found = config.stash.get(_ASSETS, None)
    if found is None:
        bin_dir = controlplane_plugin._resolve(config)
        if isinstance(bin_dir, ControlPlaneError):
            found = bin_dir
        else:
            try:
                found = prepare(bin_dir, controlplane_plugin._stderr())
            except (NodeError, OSError) as e:
                found = e
        config.stash[_ASSETS] = found
    return found


@pytest.fixture(scope="session")
def node_assets(request: pytest.FixtureRequest) -> NodeAssets:
    """The node's binaries and image archives (the modelroute image among them)."""
    assets = _resolve(request.config)
    if isinstance(assets, Exception):
        pytest.fail(f"the node's prerequisites are unavailable: {assets}", pytrace=False)
    return assets


@pytest.fixture(scope="session")
def node(
    request: pytest.FixtureRequest, node_assets: NodeAssets, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Node]:
    """A control plane + containerd + kubelet + kube-scheduler, started once per session,
    torn down completely at its end. See tests.node.node.Node."""
    assets = node_assets
    work_dir: Path = tmp_path_factory.mktemp("node")
    n = Node(assets, work_dir)
    request.config.stash[_NODE] = n
    try:
        n.start()
    except (NodeError, ControlPlaneError, TimeoutError) as e:
        pytest.fail(f"the node did not start: {e}", pytrace=False)
    try:
        yield n
    finally:
        n.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """On a failing node test, show the tail of the node's logs."""
    report = yield
    n = item.config.stash.get(_NODE, None)
    if report.failed and n is not None and _wants_node(item):
        report.sections.append((f"node logs ({n.log_dir})", n.describe_logs(25)))
    return report
