"""The node itself: pods run, and the machine stays untouched while it does."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.controlplane.cluster import wait_for
from tests.node.node import KUBELET_SYSCTLS, NODE_IP, Node, NodeAssets


def pod_phase(node: Node, name: str, namespace: str = "default") -> str:
    out = node.control_plane.kubectl("get", "pod", name, "-n", namespace, "-o", "json").stdout
    return str(json.loads(out)["status"].get("phase", ""))


def test_a_pod_of_the_built_image_runs_with_its_own_network(node: Node, node_assets: NodeAssets) -> None:
    cp = node.control_plane
    script = (
        "import socket, urllib.request, os; "
        "print('addr', socket.gethostbyname(socket.gethostname())); "
        "print('uid', os.getuid())"
    )
    cp.kubectl(
        "run", "hello", "--image", node_assets.image, "--image-pull-policy=Never", "--restart=Never",
        "--command", "--", "python3", "-c", script,
    )
    try:
        phase = wait_for(lambda: pod_phase(node, "hello") in ("Succeeded", "Failed") and pod_phase(node, "hello"),
                         timeout=120, what="pod hello to finish",
                         on_timeout=lambda: cp.kubectl("describe", "pod", "hello", check=False).stdout[-2000:])
        logs = cp.kubectl("logs", "hello").stdout
        assert phase == "Succeeded", logs
        lines = dict(line.split(" ", 1) for line in logs.splitlines())
        assert lines["uid"] == "65532"  # the image's USER
        assert lines["addr"].startswith("10.88.") and lines["addr"] != NODE_IP  # a netns of its own
    finally:
        cp.kubectl("delete", "pod", "hello", "--wait=false", "--ignore-not-found")


def test_the_machine_keeps_its_network_mounts_and_sysctls(node: Node) -> None:
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert "cni0" not in links and "veth" not in links
    mounts = Path("/proc/self/mounts").read_text()
    assert "node-run" not in mounts and "/var/lib/kubelet" not in mounts
    assert node.ns is not None
    for key, wanted in KUBELET_SYSCTLS.items():
        host = Path("/proc/sys", key).read_text().strip()
        inside = subprocess.run(node.ns.argv(["cat", f"/proc/sys/{key}"]),
                                capture_output=True, text=True, check=True).stdout.strip()
        assert inside == wanted, key  # what kubelet sees (protectKernelDefaults is on)
        assert host == node.machine_sysctls[key], key  # the machine's own value stays
