"""A real Kubernetes control plane as local processes: etcd, kube-apiserver and
kube-controller-manager, the way controller-runtime's envtest runs one (no kubelet:
pods are stored and admitted, never run).

Pure library, no pytest in here; `plugin.py` wraps it in a session fixture.

    bin_dir = find_binaries()
    with ControlPlane(bin_dir, work_dir) as cp:
        cp.kubectl("get", "namespaces")
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import yaml

from tests.controlplane import pki

BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl", "helm")
BUILD_SCRIPT = Path(__file__).resolve().parent / "build.sh"

# What the tests need from kube-controller-manager: garbage collection, namespace
# deletion, a `default` ServiceAccount per namespace, the aggregated admin/edit/view
# ClusterRoles and kube-root-ca.crt, the token controller (it fills Secrets of type
# kubernetes.io/service-account-token: the operator's least-privilege tests attack through
# it), and ResourceQuota usage (quota admission refuses while a quota's usage is unknown).
# Nothing that wants nodes or a cloud, and no workload controllers (a Deployment stays
# a Deployment: no pods appear behind the tests' backs).
DEFAULT_CONTROLLERS = (
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "resourcequota-controller",
    "clusterrole-aggregation-controller",
    "root-ca-certificate-publisher-controller",
)

SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
KUBERNETES_SERVICE_IP = "10.0.0.1"

T = TypeVar("T")


class ControlPlaneError(RuntimeError):
    """The control plane could not be found, built, started or used."""


class CommandError(subprocess.CalledProcessError):
    """A kubectl/helm call failed; unlike CalledProcessError, its message shows stderr."""

    def __str__(self) -> str:
        cmd = " ".join(str(c) for c in self.cmd)
        return f"`{cmd}` exited {self.returncode}:\n{self.stderr or ''}{self.stdout or ''}".rstrip()


# --- finding the binaries -------------------------------------------------------------


def missing_binaries(bin_dir: Path) -> list[str]:
    return [b for b in BINARIES if not os.access(bin_dir / b, os.X_OK)]


def find_binaries(build_log: IO[str] | None = None, build_script: Path = BUILD_SCRIPT) -> Path:
    """The directory holding all of BINARIES.

    $KUBEBUILDER_ASSETS wins when set; otherwise the build script finds its cache, or
    builds it (long, the first time). Raises ControlPlaneError, never returns a partial dir.
    """
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets:
        missing = missing_binaries(Path(assets))
        if missing:
            raise ControlPlaneError(
                f"KUBEBUILDER_ASSETS={assets} lacks {', '.join(missing)}; "
                "unset it to use `make controlplane`'s cache, or put all of "
                f"{', '.join(BINARIES)} there."
            )
        return Path(assets)
    bin_dir = run_build_script(build_script, "controlplane", ControlPlaneError, build_log)
    missing = missing_binaries(bin_dir)
    if missing:
        raise ControlPlaneError(f"{build_script} printed {bin_dir}, which lacks {', '.join(missing)}")
    return bin_dir


# --- small helpers ------------------------------------------------------------------


def run_build_script(build_script: Path, make_target: str, error: type[Exception],
                     build_log: IO[str] | None = None) -> Path:
    """Run a build script of the tests' (its progress to ``build_log``) and return the path
    its last line names: what it built or found in its cache."""
    result = subprocess.run(
        ["bash", str(build_script)],
        stdout=subprocess.PIPE,
        stderr=build_log if build_log is not None else subprocess.PIPE,
        text=True,
        check=False,
    )
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise error(
            f"{build_script} failed (exit {result.returncode}); run `make {make_target}` to see why.\n"
            f"{result.stderr or ''}"
        )
    return Path(lines[-1])


# Below the kernel's ephemeral range (32768-60999 by default): a port the kernel hands out
# to an outgoing connection can be taken again by the next one, so a port picked there and
# released is often gone by the time a server binds it on a busy machine.
_PORTS = range(20000, 32768)


def free_port() -> int:
    """A port free on every interface right now, outside the ephemeral range (a race with
    another test picking the same port is still possible, but rare)."""
    for _ in range(200):
        port = random.choice(_PORTS)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise OSError("no free port below the ephemeral range")


def wait_for(
    condition: Callable[[], T],
    *,
    timeout: float,
    what: str,
    interval: float = 0.1,
    on_timeout: Callable[[], str] | None = None,
) -> T:
    """Poll `condition` until it returns something truthy, and return that.

    Raises TimeoutError naming `what` (and whatever `on_timeout` adds) at the deadline.
    Exceptions from `condition` propagate: catch inside it what means "not yet".
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            extra = on_timeout() if on_timeout else ""
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}{extra}")
        time.sleep(interval)


def tail(path: Path, lines: int = 40) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 256 * lines))
            text = f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL this child if the process that started it dies, even by SIGKILL.

    A safety net under atexit and the fixture's teardown, which a killed pytest never runs.
    """
    PR_SET_PDEATHSIG = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


# --- one process ----------------------------------------------------------------------


@dataclass
class Component:
    """One control-plane program, in its own process group, logging to a file."""

    name: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self, env: Mapping[str, str]) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"$ {' '.join(self.argv)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env),
                start_new_session=True,  # its own process group: killpg reaches everything
                # PDEATHSIG follows the *thread* that forked; only safe from the main thread.
                preexec_fn=_die_with_parent if threading.current_thread() is threading.main_thread() else None,
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        proc = self.process
        if proc is None:
            return
        if proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                proc.wait(timeout=grace)
        # Anything the program itself left in its group goes too.
        self._signal_group(signal.SIGKILL)

    def _signal_group(self, sig: signal.Signals) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)

    def tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)


# --- helm without a cluster ------------------------------------------------------------


def tool_env(bin_dir: Path, work_dir: Path) -> dict[str, str]:
    """os.environ with bin_dir first on PATH and helm's and kubectl's caches under work_dir."""
    helm_home = work_dir / "helm"
    env = dict(os.environ)
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        # Keep helm off the user's own ~/.config, ~/.cache and repositories.
        HELM_CACHE_HOME=str(helm_home / "cache"),
        HELM_CONFIG_HOME=str(helm_home / "config"),
        HELM_DATA_HOME=str(helm_home / "data"),
        # kubectl's discovery cache, per work dir rather than in ~/.kube.
        KUBECACHEDIR=str(work_dir / "kube-cache"),
    )
    env.pop("KUBECONFIG", None)  # no cluster unless the caller says which
    return env


def run_tool(
    bin_dir: Path, binary: str, args: Sequence[str | os.PathLike[str]], *, env: Mapping[str, str], check: bool,
    input: str | None,
) -> subprocess.CompletedProcess[str]:
    argv = [str(bin_dir / binary), *[str(a) for a in args]]
    result = subprocess.run(argv, input=input, capture_output=True, text=True, env=dict(env), check=False)
    if check and result.returncode != 0:
        raise CommandError(result.returncode, argv, result.stdout, result.stderr)
    return result


class Helm:
    """The tests' helm for what needs no cluster (template, lint, package, show): no control
    plane is started. Call it, or use `.helm(...)` like ControlPlane.helm."""

    def __init__(self, bin_dir: Path, work_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.env = tool_env(bin_dir, work_dir)

    def helm(
        self, *args: str | os.PathLike[str], check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return run_tool(self.bin_dir, "helm", args, env=self.env, check=check, input=input)

    __call__ = helm


# --- the control plane ----------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _kubeconfig(server: str, ca_pem: bytes, user: Mapping[str, str], name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "modelroute-test",
                "cluster": {"server": server, "certificate-authority-data": _b64(ca_pem)},
            }
        ],
        "users": [{"name": name, "user": dict(user)}],
        "contexts": [{"name": name, "context": {"cluster": "modelroute-test", "user": name}}],
        "current-context": name,
    }


def _write(path: Path, data: bytes | str, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    path.chmod(mode)
    return path


@dataclass
class _Ports:
    etcd_client: int = field(default_factory=free_port)
    etcd_peer: int = field(default_factory=free_port)
    apiserver: int = field(default_factory=free_port)
    controller_manager: int = field(default_factory=free_port)


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager on free loopback ports.

    Attributes once started: `server` (URL), `kubeconfig` (admin, group system:masters),
    `env` (os.environ plus KUBECONFIG, helm's dirs and bin_dir first on PATH), `log_dir`.
    """

    def __init__(
        self,
        bin_dir: Path,
        work_dir: Path,
        *,
        controllers: Sequence[str] = DEFAULT_CONTROLLERS,
        start_timeout: float = 120.0,
        apiserver_args: Sequence[str] = (),
        service_account_admission: bool = False,
        authorization_modes: Sequence[str] = ("RBAC",),
        client_certs: Mapping[str, tuple[str, Sequence[str]]] | None = None,
    ) -> None:
        """`apiserver_args` are appended (a repeated flag: the last one wins, but list flags add up);
        `service_account_admission` gives pods their ServiceAccount token volumes (a node runs
        them); `authorization_modes`: a node needs Node before RBAC; `client_certs` are more
        client identities, {name: (CN, groups)}, written as `pki/<name>.crt|key` before anything
        starts (see `write_kubeconfig`)."""
        missing = missing_binaries(bin_dir)
        if missing:
            raise ControlPlaneError(f"{bin_dir} lacks {', '.join(missing)}: run `make controlplane`")
        self.bin_dir = bin_dir
        self.work_dir = work_dir
        self.controllers = tuple(controllers)
        self.start_timeout = start_timeout
        self.apiserver_args = tuple(apiserver_args)
        self.service_account_admission = service_account_admission
        self.authorization_modes = tuple(authorization_modes)
        self.client_certs = dict(client_certs or {})
        self.log_dir = work_dir / "logs"
        self.pki_dir = work_dir / "pki"
        self.kubeconfig = work_dir / "admin.kubeconfig"
        self.server = ""
        self.components: list[Component] = []
        self.env: dict[str, str] = {}
        self._ports = _Ports()
        self._sa_kubeconfigs = 0

    # -- lifecycle

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, attempts: int = 3) -> ControlPlane:
        """Start all three and wait until they are ready; on failure nothing is left running."""
        self._write_pki()
        for attempt in range(1, attempts + 1):
            atexit.register(self.stop)  # stop() unregisters it
            try:
                self._start_once()
                return self
            except BaseException as e:  # interrupted or timed out too: leave nothing running
                self.stop()
                # Another process took a port between free_port() and the bind: new ports.
                port_taken = isinstance(e, ControlPlaneError) and "address already in use" in str(e)
                if attempt == attempts or not port_taken:
                    raise
                self._ports = _Ports()
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Stop everything, newest first (the controller-manager before its apiserver)."""
        for component in reversed(self.components):
            component.stop()
        self.components = []
        atexit.unregister(self.stop)

    def _start_once(self) -> None:
        self.server = f"https://127.0.0.1:{self._ports.apiserver}"
        self._write_kubeconfigs()
        self.env = self._make_env()
        shutil.rmtree(self.work_dir / "etcd", ignore_errors=True)  # a failed attempt's member
        self._launch(self._etcd())
        self._wait_ready("etcd", self._etcd_healthy)
        self._launch(self._apiserver())
        self._wait_ready("kube-apiserver /readyz", self._apiserver_ready)
        self._launch(self._controller_manager())
        self._wait_ready("kube-controller-manager /healthz", self._controller_manager_healthy)

    def _launch(self, component: Component) -> None:
        self.components.append(component)
        component.start(self.env)

    def _wait_ready(self, what: str, probe: Callable[[], bool]) -> None:
        def ready_or_dead() -> bool:
            for c in self.components:
                if not c.alive():
                    code = c.process.returncode if c.process else None
                    raise ControlPlaneError(
                        f"{c.name} exited ({code}) while waiting for {what}; logs in {self.log_dir}\n"
                        f"--- {c.log_path}, last 40 lines ---\n{c.tail(40)}"
                    )
            return probe()

        try:
            wait_for(ready_or_dead, timeout=self.start_timeout, what=what, interval=0.1)
        except TimeoutError as e:
            raise ControlPlaneError(f"{e}\n{self.describe_logs(60)}") from None

    # -- files

    def _pki(self, name: str) -> Path:
        return self.pki_dir / name

    def _write_pki(self) -> None:
        ca = pki.new_ca()
        _write(self._pki("ca.crt"), ca.cert_pem, 0o644)
        serving = pki.issue(
            ca,
            "kube-apiserver",
            dns_names=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"),
            ip_addresses=("127.0.0.1", KUBERNETES_SERVICE_IP),
            server=True,
        )
        clients = {
            # CN is the user, O the groups: system:masters bypasses RBAC for the admin.
            "admin": pki.issue(ca, "modelroute-test-admin", organizations=("system:masters",), client=True),
            # The identity kubeadm gives it; the bootstrap RBAC policy knows this user.
            "controller-manager": pki.issue(ca, "system:kube-controller-manager", client=True),
            **{
                name: pki.issue(ca, cn, organizations=tuple(groups), client=True)
                for name, (cn, groups) in self.client_certs.items()
            },
        }
        for name, pair in {"apiserver": serving, **clients}.items():
            _write(self._pki(f"{name}.crt"), pair.cert_pem, 0o644)
            _write(self._pki(f"{name}.key"), pair.key_pem)
        signing = pki.new_signing_key()
        _write(self._pki("sa.pub"), signing.public_pem, 0o644)
        _write(self._pki("sa.key"), signing.private_pem)

    def _client_cert_user(self, name: str) -> dict[str, str]:
        return {
            "client-certificate-data": _b64(self._pki(f"{name}.crt").read_bytes()),
            "client-key-data": _b64(self._pki(f"{name}.key").read_bytes()),
        }

    def _write_kubeconfigs(self) -> None:
        self.write_kubeconfig(self.kubeconfig, "admin")
        self.write_kubeconfig(self._kcm_kubeconfig, "controller-manager")

    def write_kubeconfig(self, path: Path, client: str) -> Path:
        """A kubeconfig for this server with client certificate `pki/<client>.crt`."""
        config = _kubeconfig(self.server, self._pki("ca.crt").read_bytes(), self._client_cert_user(client), client)
        return _write(path, yaml.safe_dump(config))

    def pki_path(self, name: str) -> Path:
        """`pki/<name>`: ca.crt, <client>.crt, <client>.key, ..."""
        return self._pki(name)

    @property
    def _kcm_kubeconfig(self) -> Path:
        return self.work_dir / "controller-manager.kubeconfig"

    def _make_env(self) -> dict[str, str]:
        return {**tool_env(self.bin_dir, self.work_dir), "KUBECONFIG": str(self.kubeconfig)}

    # -- the three programs

    def _component(self, name: str, args: Iterable[str]) -> Component:
        return Component(name, [str(self.bin_dir / name), *args], self.log_dir / f"{name}.log")

    def _etcd(self) -> Component:
        client = f"http://127.0.0.1:{self._ports.etcd_client}"
        peer = f"http://127.0.0.1:{self._ports.etcd_peer}"
        return self._component(
            "etcd",
            [
                f"--data-dir={self.work_dir / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=default={peer}",
                "--unsafe-no-fsync",  # throw-away data: durability buys nothing, fsync costs
                "--log-level=warn",
            ],
        )

    def _apiserver(self) -> Component:
        return self._component(
            "kube-apiserver",
            [
                f"--etcd-servers=http://127.0.0.1:{self._ports.etcd_client}",
                f"--cert-dir={self.work_dir / 'apiserver-certs'}",
                f"--tls-cert-file={self._pki('apiserver.crt')}",
                f"--tls-private-key-file={self._pki('apiserver.key')}",
                f"--client-ca-file={self._pki('ca.crt')}",
                f"--secure-port={self._ports.apiserver}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                # Loopback may not back the `kubernetes` Service's endpoints; nothing runs in
                # pods here, so no reconciler is needed.
                "--endpoint-reconciler-type=none",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                "--allow-privileged=true",
                f"--authorization-mode={','.join(self.authorization_modes)}",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={self._pki('sa.pub')}",
                f"--service-account-signing-key-file={self._pki('sa.key')}",
                # Without a node, pods never run; the plugin would add token volumes to them.
                *([] if self.service_account_admission else ["--disable-admission-plugins=ServiceAccount"]),
                "--profiling=false",
                *self.apiserver_args,
            ],
        )

    def _controller_manager(self) -> Component:
        kubeconfig = str(self._kcm_kubeconfig)
        return self._component(
            "kube-controller-manager",
            [
                # No authentication/authorization kubeconfig: only its /healthz is used, which
                # is always allowed, and delegated auth would spam the log about request-header CAs.
                f"--kubeconfig={kubeconfig}",
                f"--controllers={','.join(self.controllers)}",
                # Each controller acts as its own ServiceAccount, with the bootstrap RBAC roles.
                "--use-service-account-credentials=true",
                f"--root-ca-file={self._pki('ca.crt')}",
                # The token controller signs with the key the API server verifies with.
                f"--service-account-private-key-file={self._pki('sa.key')}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self._ports.controller_manager}",
                f"--cert-dir={self.work_dir / 'controller-manager-certs'}",
                "--leader-elect=false",
                "--profiling=false",
            ],
        )

    # -- readiness probes

    def _ssl_context(self, verify: bool = True) -> ssl.SSLContext:
        if not verify:
            return ssl._create_unverified_context()
        ctx = ssl.create_default_context(cafile=str(self._pki("ca.crt")))
        ctx.load_cert_chain(str(self._pki("admin.crt")), str(self._pki("admin.key")))
        return ctx

    @staticmethod
    def _get_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=5, context=context) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError, ssl.SSLError):
            return False

    def _etcd_healthy(self) -> bool:
        return self._get_ok(f"http://127.0.0.1:{self._ports.etcd_client}/health")

    def _apiserver_ready(self) -> bool:
        return self._get_ok(f"{self.server}/readyz", self._ssl_context())

    def _controller_manager_healthy(self) -> bool:
        # Its serving certificate is self-signed, made at start-up: nothing to verify against.
        url = f"https://127.0.0.1:{self._ports.controller_manager}/healthz"
        return self._get_ok(url, self._ssl_context(verify=False))

    # -- logs

    def log_files(self) -> dict[str, Path]:
        return {c.name: c.log_path for c in self.components} or {p.stem: p for p in sorted(self.log_dir.glob("*.log"))}

    def describe_logs(self, lines: int = 40) -> str:
        parts = []
        for name, path in self.log_files().items():
            parts.append(f"--- {name} ({path}), last {lines} lines ---\n{tail(path, lines)}")
        return "\n".join(parts)

    # -- clients

    def _run(
        self, binary: str, args: Sequence[str], check: bool, input: str | None
    ) -> subprocess.CompletedProcess[str]:
        return run_tool(self.bin_dir, binary, args, env=self.env, check=check, input=input)

    def kubectl(
        self, *args: str | os.PathLike[str], check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run the matching kubectl as the admin; stdout and stderr are captured as text."""
        return self._run("kubectl", ["--kubeconfig", str(self.kubeconfig), *map(str, args)], check, input)

    def helm(
        self, *args: str | os.PathLike[str], check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run helm as the admin (KUBECONFIG is set), with its own config and cache dirs."""
        return self._run("helm", [*map(str, args)], check, input)

    def api_client(self, kubeconfig: Path | None = None) -> Any:
        """A fresh `kubernetes.client.ApiClient` (admin unless `kubeconfig` says otherwise).

        The caller owns it: close it, or use it as a context manager.
        """
        from kubernetes import config  # only the tests that want it pay for the import

        return config.new_client_from_config(config_file=str(kubeconfig or self.kubeconfig))

    def service_account_kubeconfig(self, namespace: str, name: str, expiration_seconds: int = 3600) -> Path:
        """A kubeconfig authenticating as ServiceAccount `namespace/name` (which must exist),
        with a token from the TokenRequest API: exactly what that account's RBAC grants."""
        from kubernetes import client

        spec = client.V1TokenRequestSpec(audiences=[SERVICE_ACCOUNT_ISSUER], expiration_seconds=expiration_seconds)
        with self.api_client() as api:
            response = client.CoreV1Api(api).create_namespaced_service_account_token(
                name, namespace, client.AuthenticationV1TokenRequest(spec=spec)
            )
        token = response.status.token if response.status else None
        if not token:
            raise ControlPlaneError(f"TokenRequest for {namespace}/{name} returned no token: {response}")
        self._sa_kubeconfigs += 1
        path = self.work_dir / "kubeconfigs" / f"{namespace}.{name}.{self._sa_kubeconfigs}.kubeconfig"
        user = f"system:serviceaccount:{namespace}:{name}"
        config = _kubeconfig(self.server, self._pki("ca.crt").read_bytes(), {"token": token}, user)
        return _write(path, yaml.safe_dump(config))
