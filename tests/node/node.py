"""A real Kubernetes node for the test control plane: containerd + runc + CNI bridge,
kubelet and kube-scheduler, all inside a private network + mount namespace.

Pure library, no pytest in here; `plugin.py` wraps it in a session fixture.

    with Node(assets, work_dir) as node:          # control plane included, inside the namespace
        node.control_plane.kubectl("run", ...)    # kubectl from the host reaches it
        node.import_image(archive)                # `ctr -n k8s.io images import`
        node.ns.call(fake.start_in_thread)        # a fake upstream pods reach on node.ip

What stays private to the namespace: links, routes and addresses (bridge cni0, pods'
veths), every mount (tmpfs over /run, /var/lib and /var/log, the pods' volumes), the
sysctls kubelet insists on (read-only bind mounts holding the values it wants). What
cannot be private: cgroups. Kubelet's tree lives under its own `cgroupRoot`, created
here and removed at teardown with everything in it.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import yaml

from tests.controlplane.cluster import (
    DEFAULT_CONTROLLERS,
    KUBERNETES_SERVICE_IP,
    Component,
    ControlPlane,
    free_port,
    tail,
    wait_for,
)
from tests.node.netns import Namespace

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / "tests" / "controlplane" / "build.sh"
IMAGE_SCRIPT = ROOT / "image" / "build.sh"
NODE_BINARIES = ("kubelet", "kube-scheduler")
NODE_NAME = "modelroute-node"
NODE_IP = "10.88.0.1"
POD_SUBNET = "10.88.0.0/16"
PAUSE_IMAGE = "registry.k8s.io/pause:3.10.2"
CNI_BIN_DIR = "/usr/lib/cni"
# Debian packages the node runs on (bookworm names), and what each provides.
PACKAGES = {
    "containerd": "/usr/bin/containerd",
    "runc": "/usr/sbin/runc",
    "containernetworking-plugins": f"{CNI_BIN_DIR}/bridge",
    "debootstrap": "/usr/sbin/debootstrap",
    "buildah": "/usr/bin/buildah",
    "gcc": "/usr/bin/gcc",
    "libc6-dev": "/usr/lib/x86_64-linux-gnu/libc.a",
    "iproute2": "/usr/sbin/ip",
    "debian-archive-keyring": "/usr/share/keyrings/debian-archive-keyring.gpg",  # debootstrap's bookworm
}

# The control plane a node needs on top of the default one: the taint `not-ready` is
# removed by node-lifecycle; Deployments need deployment + replicaset; Services need
# endpoints and endpointslices.
NODE_CONTROLLERS = (
    *DEFAULT_CONTROLLERS,
    "node-lifecycle-controller",
    "deployment-controller",
    "replicaset-controller",
    "endpoints-controller",
    "endpointslice-controller",
)

# What kubelet checks with protectKernelDefaults (pkg/kubelet/cm, setupKernelTunables).
KUBELET_SYSCTLS = {
    "vm/overcommit_memory": "1",
    "vm/panic_on_oom": "0",
    "kernel/panic": "10",
    "kernel/panic_on_oops": "1",
    "kernel/keys/root_maxkeys": "1000000",
    "kernel/keys/root_maxbytes": "25000000",
}


class NodeError(RuntimeError):
    """The node could not be prepared, started or used."""


def log_progress(out: IO[str] | None, message: str) -> None:
    if out is not None:
        print(f"node: {message}", file=out, flush=True)


# --- one-time preparation ---------------------------------------------------------------


def missing_packages() -> list[str]:
    return [pkg for pkg, path in PACKAGES.items() if not os.path.exists(path)]


def install_packages(out: IO[str] | None) -> None:
    """apt-get install what is missing (CI's fresh machine); nothing when all are there."""
    missing = missing_packages()
    if not missing:
        return
    if os.geteuid() != 0:
        raise NodeError(f"the node needs these Debian packages: {' '.join(missing)} (apt-get install as root)")
    start = time.monotonic()
    log_progress(out, f"apt-get install {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]):
        result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise NodeError(f"{' '.join(argv)} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    log_progress(out, f"installed in {time.monotonic() - start:.0f}s")


def _last_line(argv: Sequence[str], out: IO[str] | None, what: str) -> str:
    result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=out or subprocess.PIPE, text=True, check=False)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise NodeError(f"{what}: `{' '.join(argv)}` failed (exit {result.returncode})\n{result.stderr or ''}")
    return lines[-1]


def node_binaries(out: IO[str] | None) -> Path:
    """kubelet and kube-scheduler, built like the control plane (cached by version)."""
    bin_dir = Path(_last_line(["bash", str(BUILD_SCRIPT), "node"], out, "kubelet and kube-scheduler"))
    missing = [b for b in NODE_BINARIES if not os.access(bin_dir / b, os.X_OK)]
    if missing:
        raise NodeError(f"{bin_dir} lacks {', '.join(missing)}")
    return bin_dir


def modelroute_image(out: IO[str] | None) -> Path:
    """The OCI archive image/build.sh makes from the Dockerfile (cached by content)."""
    return Path(_last_line(["bash", str(IMAGE_SCRIPT)], out, "the modelroute image"))


def image_reference(archive: Path) -> str:
    """The reference an OCI archive's index names (what `ctr images import` tags)."""
    with tarfile.open(archive) as tar:
        member = tar.extractfile("index.json")
        assert member is not None
        index = json.load(member)
    annotations = index["manifests"][0].get("annotations") or {}
    ref = annotations.get("io.containerd.image.name") or annotations.get("org.opencontainers.image.ref.name")
    if not ref:
        raise NodeError(f"{archive}: index.json names no image")
    return str(ref)


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "modelroute" / "node"


def _gomodcache() -> Path:
    result = subprocess.run(["go", "env", "GOMODCACHE"], capture_output=True, text=True, check=True)
    return Path(result.stdout.strip())


def pause_image(k8s_version: str, out: IO[str] | None) -> Path:
    """registry.k8s.io/pause as an OCI archive, from Kubernetes' own pause.c (module cache)."""
    archive = _cache_dir() / f"pause-{PAUSE_IMAGE.rsplit(':', 1)[1]}-{k8s_version}.oci.tar"
    if archive.exists():
        return archive
    source = _gomodcache() / f"k8s.io/kubernetes@{k8s_version}" / "build" / "pause" / "linux" / "pause.c"
    if not source.exists():
        raise NodeError(f"{source} is missing: build the node binaries first (tests/controlplane/build.sh node)")
    log_progress(out, f"building {PAUSE_IMAGE} from {source}")
    archive.parent.mkdir(parents=True, exist_ok=True)
    binary = archive.with_suffix(".bin")
    version = PAUSE_IMAGE.rsplit(":", 1)[1]
    subprocess.run(
        ["gcc", "-Os", "-Wall", "-Werror", "-static", f"-DVERSION=v{version}", "-o", str(binary), str(source)],
        check=True,
        capture_output=True,
    )
    subprocess.run(["strip", str(binary)], check=True)
    write_oci_archive(
        archive,
        PAUSE_IMAGE,
        {"pause": (binary.read_bytes(), 0o755)},
        {"Entrypoint": ["/pause"], "User": "65535:65535"},
    )
    binary.unlink()
    return archive


def write_oci_archive(
    path: Path, ref: str, files: Mapping[str, tuple[bytes, int]], config: Mapping[str, Any]
) -> None:
    """A one-layer OCI image archive (oci-layout, index.json, blobs) of `files`."""
    layer_buf = io.BytesIO()
    with tarfile.open(fileobj=layer_buf, mode="w", format=tarfile.PAX_FORMAT) as layer:
        for name, (data, mode) in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            layer.addfile(info, io.BytesIO(data))
    diff = layer_buf.getvalue()
    layer_blob = gzip.compress(diff, mtime=0)

    def digest(data: bytes) -> str:
        return "sha256:" + hashlib.sha256(data).hexdigest()

    image_config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": dict(config),
            "rootfs": {"type": "layers", "diff_ids": [digest(diff)]},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": digest(image_config),
                "size": len(image_config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": digest(layer_blob),
                    "size": len(layer_blob),
                }
            ],
        }
    ).encode()
    index = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": digest(manifest),
                    "size": len(manifest),
                    "annotations": {"io.containerd.image.name": ref, "org.opencontainers.image.ref.name": ref},
                }
            ],
        }
    ).encode()
    tmp = path.with_suffix(".tmp")
    with tarfile.open(tmp, "w") as tar:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))

        add("oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        add("index.json", index)
        for blob in (layer_blob, image_config, manifest):
            add(f"blobs/sha256/{digest(blob).split(':')[1]}", blob)
    tmp.rename(path)


@dataclass(frozen=True)
class NodeAssets:
    """Everything a node needs that is built once: binaries and image archives."""

    controlplane_bin: Path
    node_bin: Path
    pause_archive: Path
    image_archive: Path

    @property
    def image(self) -> str:
        return image_reference(self.image_archive)


def prepare(controlplane_bin: Path, out: IO[str] | None) -> NodeAssets:
    """Install, build or find in the caches everything the node needs (progress on `out`)."""
    install_packages(out)
    node_bin = node_binaries(out)
    k8s_version = _k8s_version(controlplane_bin)
    pause = pause_image(k8s_version, out)
    image = modelroute_image(out)
    return NodeAssets(controlplane_bin, node_bin, pause, image)


def _k8s_version(bin_dir: Path) -> str:
    # The version build.sh stamped, read from go.mod as it does (no binary is run).
    go_mod = BUILD_SCRIPT.parent / "go" / "go.mod"
    for line in go_mod.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "k8s.io/kubernetes" and parts[1].startswith("v"):
            return parts[1]
    raise NodeError(f"no k8s.io/kubernetes version in {go_mod}")


# --- the running node -------------------------------------------------------------------


def _namespace_setup(sysctl_dir: str) -> str:
    """Shell run inside the fresh namespaces before anything else."""
    sysctls = "\n".join(
        f'pin {key} {value}' for key, value in KUBELET_SYSCTLS.items()
    )
    return f"""
# Private state: nothing containerd, runc, CNI or kubelet writes reaches the machine.
mount -t tmpfs -o mode=0755 node-run /run
mount -t tmpfs -o mode=0755 node-var-lib /var/lib
mount -t tmpfs -o mode=0755 node-var-log /var/log
mkdir -p {sysctl_dir}
# kubelet (protectKernelDefaults) wants these values; it sees them, the machine keeps its own.
pin() {{
    if [ "$(cat /proc/sys/$1)" != "$2" ]; then
        f={sysctl_dir}/$(echo "$1" | tr / .)
        echo "$2" > "$f"
        mount --bind "$f" "/proc/sys/$1"
        mount -o remount,bind,ro "/proc/sys/$1"
    fi
}}
{sysctls}
ip link set lo up
# The `kubernetes` Service's ClusterIP, local here: pods route to it through the bridge.
ip addr add {KUBERNETES_SERVICE_IP}/32 dev lo
# The pods' bridge, addressed up front: the node's InternalIP lives on it.
ip link add cni0 type bridge
ip addr add {NODE_IP}/16 dev cni0
ip link set cni0 up
"""


class Node:
    """Control plane + containerd + kubelet + kube-scheduler in one private namespace pair.

    Attributes once started: `control_plane` (kubectl/helm/api_client from the host work
    through a forwarded apiserver port), `ns` (the Namespace), `ip`, `log_dir`.
    """

    def __init__(self, assets: NodeAssets, work_dir: Path, *, start_timeout: float = 180.0) -> None:
        self.assets = assets
        self.work_dir = work_dir
        self.log_dir = work_dir / "logs"
        self.start_timeout = start_timeout
        self.ip = NODE_IP
        self.name = NODE_NAME
        self.cgroup_root = f"/modelroute-node-{os.getpid()}-{time.monotonic_ns() % 10**6}"
        self.containerd_socket = "/run/containerd/containerd.sock"
        self.components: list[Component] = []
        self.ns: Namespace | None = None
        self.machine_sysctls: dict[str, str] = {}
        self.control_plane = ControlPlane(
            assets.controlplane_bin,
            work_dir / "controlplane",
            controllers=NODE_CONTROLLERS,
            service_account_admission=True,
            authorization_modes=("Node", "RBAC"),
            client_certs={
                # Node authorizer: system:node:<name> in group system:nodes.
                "kubelet": (f"system:node:{NODE_NAME}", ("system:nodes",)),
                "scheduler": ("system:kube-scheduler", ()),
                # What the apiserver shows kubelet for logs/exec (kubelet checks it against the CA).
                "apiserver-kubelet-client": ("kube-apiserver-kubelet-client", ("system:masters",)),
            },
        )
        cp = self.control_plane
        cp.apiserver_args = (
            # A webhook behind a Service is called at the Service's endpoints (the pod's IP),
            # as kube-proxy would route its ClusterIP.
            "--enable-aggregator-routing=true",
            "--kubelet-preferred-address-types=InternalIP",
            f"--kubelet-client-certificate={cp.pki_path('apiserver-kubelet-client.crt')}",
            f"--kubelet-client-key={cp.pki_path('apiserver-kubelet-client.key')}",
        )

    # -- lifecycle

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Node:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # What the machine had before: kubelet must never change it (tests compare).
        self.machine_sysctls = {k: Path("/proc/sys", k).read_text().strip() for k in KUBELET_SYSCTLS}
        self._make_cgroup_root()
        self.ns = Namespace.create(_namespace_setup("/run/modelroute-sysctl"), self.log_dir / "namespace.log")
        ns = self.ns
        cp = self.control_plane
        # Started from a thread inside the network namespace: its processes and its
        # readiness probes live there; the host reaches the apiserver by the same URL.
        ns.call(cp.start)
        apiserver_port = int(cp.server.rsplit(":", 1)[1])
        ns.publish(apiserver_port)
        # Pods reach the API server as on any cluster: through the `kubernetes` Service
        # (KUBERNETES_SERVICE_HOST/PORT, in-cluster config), its ClusterIP a local address here.
        ns.forward((KUBERNETES_SERVICE_IP, 443), ("127.0.0.1", apiserver_port))
        self._start_containerd()
        for archive in (self.assets.pause_archive, self.assets.image_archive):
            self.import_image(archive)
        self._start_kubelet()
        self._start_scheduler()
        self.wait_node_ready()

    def stop(self) -> None:
        """Kill everything (pods, runtime, node, control plane); remove the cgroups."""
        for component in reversed(self.components):
            component.stop(grace=5)
        self.components = []
        if self.ns is not None:
            self.ns.destroy(extra_pids=self._cgroup_pids)
            self.ns = None
        self.control_plane.stop()
        self._remove_cgroup_root()

    # -- cgroups (v1 hierarchies, plus the unified one in hybrid mode)

    def _cgroup_dirs(self) -> list[Path]:
        """Kubelet's cgroupRoot in every hierarchy: one per v1 controller (and the hybrid
        unified one), or the one v2 hierarchy."""
        base = Path("/sys/fs/cgroup")
        if (base / "cgroup.controllers").exists():
            hierarchies = [base]
        else:
            hierarchies = [d for d in sorted(base.iterdir()) if (d / "cgroup.procs").exists()]
        return [d / self.cgroup_root.lstrip("/") for d in hierarchies]

    def _make_cgroup_root(self) -> None:
        for d in self._cgroup_dirs():
            d.mkdir(exist_ok=True)
            if d.parent.name == "cpuset":  # a new cpuset has no CPUs or memory nodes until told
                for f in ("cpuset.cpus", "cpuset.mems"):
                    (d / f).write_text((d.parent / f).read_text())

    def _cgroup_pids(self) -> list[int]:
        pids: set[int] = set()
        for d in self._cgroup_dirs():
            if d.exists():
                for procs in d.rglob("cgroup.procs"):
                    with contextlib.suppress(OSError):
                        pids.update(int(p) for p in procs.read_text().split())
        return sorted(pids)

    def _remove_cgroup_root(self) -> None:
        for d in self._cgroup_dirs():
            if not d.exists():
                continue
            # Children before parents; a cgroup directory is removed with rmdir, never rm.
            for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(FileNotFoundError):
                    sub.rmdir()
            with contextlib.suppress(FileNotFoundError):
                d.rmdir()

    # -- containerd

    def _launch(self, name: str, argv: Sequence[str]) -> Component:
        assert self.ns is not None
        component = Component(name, self.ns.argv(argv), self.log_dir / f"{name}.log")
        self.components.append(component)
        component.start(os.environ)
        return component

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        assert self.ns is not None
        argv = self.ns.argv(["ctr", "--address", self.containerd_socket, "-n", "k8s.io", *args])
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if check and result.returncode != 0:
            raise NodeError(f"`ctr {' '.join(args)}` exited {result.returncode}: {result.stderr.strip()}")
        return result

    def _containerd_config(self) -> Path:
        cni_dir = self.work_dir / "cni"
        (cni_dir / "net.d").mkdir(parents=True, exist_ok=True)
        conflist = {
            "cniVersion": "1.0.0",
            "name": "modelroute-node",
            "plugins": [
                {
                    # No ipMasq: nothing leaves the namespace, and iptables stays untouched.
                    "type": "bridge",
                    "bridge": "cni0",
                    "isGateway": True,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_SUBNET, "gateway": NODE_IP}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": "/var/lib/cni/networks",
                    },
                }
            ],
        }
        (cni_dir / "net.d" / "10-modelroute.conflist").write_text(json.dumps(conflist, indent=1))
        config = f"""
version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{self.containerd_socket}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # Without CAP_SYS_RESOURCE runc may not lower oom_score_adj below its own.
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{cni_dir / 'net.d'}"
"""
        path = self.work_dir / "containerd.toml"
        path.write_text(config)
        return path

    def _start_containerd(self) -> None:
        containerd = self._launch("containerd", ["containerd", "--config", str(self._containerd_config())])

        def up() -> bool:
            if not containerd.alive():
                raise NodeError(f"containerd exited:\n{containerd.tail(40)}")
            return self.ctr("version", check=False).returncode == 0

        wait_for(up, timeout=self.start_timeout, what="containerd", interval=0.2)

    def import_image(self, archive: Path) -> str:
        """Load an OCI archive into the node's image store; returns the reference."""
        ref = image_reference(archive)
        self.ctr("images", "import", str(archive))
        if ref not in self.ctr("images", "list", "-q").stdout.split():
            raise NodeError(f"importing {archive} did not give {ref}")
        return ref

    # -- kubelet and kube-scheduler

    def _start_kubelet(self) -> None:
        cp = self.control_plane
        kubeconfig = cp.write_kubeconfig(self.work_dir / "kubelet.kubeconfig", "kubelet")
        resolv = self.work_dir / "resolv.conf"
        resolv.write_text("")  # pods need no DNS here; kubelet must not copy the machine's
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "failCgroupV1": False,  # this machine is cgroup v1 (hybrid)
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": self.cgroup_root,
            "protectKernelDefaults": True,  # fail, never write the machine's sysctls
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "address": self.ip,
            "port": 10250,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": 10248,
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(cp.pki_path("ca.crt"))},
            },
            "authorization": {"mode": "AlwaysAllow"},
            "resolvConf": str(resolv),
            "failSwapOn": False,
            "serializeImagePulls": False,
            "registerNode": True,
            "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "nodeStatusUpdateFrequency": "2s",
            "syncFrequency": "5s",
            "fileCheckFrequency": "5s",
            "logging": {"format": "text"},
        }
        path = self.work_dir / "kubelet.yaml"
        path.write_text(yaml.safe_dump(config))
        kubelet = self.assets.node_bin / "kubelet"
        self._launch(
            "kubelet",
            [
                str(kubelet),
                f"--config={path}",
                f"--kubeconfig={kubeconfig}",
                f"--hostname-override={self.name}",
                f"--node-ip={self.ip}",
                "--v=1",
            ],
        )

    def _start_scheduler(self) -> None:
        kubeconfig = self.control_plane.write_kubeconfig(self.work_dir / "scheduler.kubeconfig", "scheduler")
        self._launch(
            "kube-scheduler",
            [
                str(self.assets.node_bin / "kube-scheduler"),
                f"--kubeconfig={kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--profiling=false",
            ],
        )

    def node_object(self) -> dict[str, Any] | None:
        out = self.control_plane.kubectl("get", "node", self.name, "-o", "json", "--ignore-not-found").stdout
        return json.loads(out) if out.strip() else None

    def wait_node_ready(self) -> None:
        def ready() -> bool:
            for c in self.components:
                if not c.alive():
                    raise NodeError(f"{c.name} exited while the node came up:\n{c.tail(40)}")
            node = self.node_object()
            if node is None:
                return False
            conditions = {c["type"]: c["status"] for c in node.get("status", {}).get("conditions", [])}
            taints = [t["key"] for t in node.get("spec", {}).get("taints") or []]
            return conditions.get("Ready") == "True" and not taints

        try:
            wait_for(ready, timeout=self.start_timeout, what=f"node {self.name} Ready and untainted", interval=0.5)
        except TimeoutError as e:
            raise NodeError(f"{e}\n{self.describe_logs(40)}") from None

    # -- logs

    def log_files(self) -> dict[str, Path]:
        files = {c.name: c.log_path for c in self.components}
        files.update(self.control_plane.log_files())
        return files

    def describe_logs(self, lines: int = 30) -> str:
        return "\n".join(
            f"--- {name} ({path}), last {lines} lines ---\n{tail(path, lines)}"
            for name, path in self.log_files().items()
        )

