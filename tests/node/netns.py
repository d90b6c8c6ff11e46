"""A private network + mount namespace for a test node, and ways into it.

    ns = Namespace.create(setup_script)       # `unshare --net --mount` running a holder
    ns.call(fn, *args)                        # fn runs on a thread inside the network namespace;
                                              # sockets it opens and processes it starts live there
    ns.argv(["containerd", ...])              # nsenter prefix: net + mount namespaces
    ns.publish(port)                          # host 127.0.0.1:port -> the namespace's 127.0.0.1:port
    ns.forward(listen, target)                # inside: listen (ip, port) -> target (ip, port)
    ns.destroy()                              # kill everything in it; the namespaces go with it

Nothing here touches the machine's own network, mounts or sysctls: mounts made inside stay
inside (propagation private), links and routes live in the new network namespace.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(path: str, nstype: int) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, nstype) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def ns_inode(pid: int | str, kind: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
    except OSError:  # gone, or a kernel thread
        return None


class Namespace:
    """A holder process in its own network and mount namespaces.

    The holder runs `setup` (shell) first, then sleeps until destroyed; `ready` is printed
    by the setup script's caller once it succeeded.
    """

    def __init__(self, holder: subprocess.Popen[bytes], log_path: Path) -> None:
        self.holder = holder
        self.pid = holder.pid
        self.log_path = log_path
        self.net_path = f"/proc/{self.pid}/ns/net"
        self.mnt_path = f"/proc/{self.pid}/ns/mnt"
        self.net_inode = ns_inode(self.pid, "net")
        self.mnt_inode = ns_inode(self.pid, "mnt")
        # Every worker thread enters the network namespace once, at start; threads and
        # processes started from them inherit it.
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=8, thread_name_prefix="node-netns", initializer=_setns, initargs=(self.net_path, CLONE_NEWNET)
        )
        self._forwarders: list[_Forwarder] = []

    @classmethod
    def create(cls, setup: str, log_path: Path, timeout: float = 60.0) -> Namespace:
        """Start the holder; `setup` runs inside before it reports ready (on stdout)."""
        script = f"set -eu\n{setup}\necho ready\nexec sleep infinity\n"
        log = log_path.open("ab")
        holder = subprocess.Popen(
            ["unshare", "--net", "--mount", "--propagation", "private", "--", "sh", "-c", script],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        assert holder.stdout is not None
        line = holder.stdout.readline()  # "ready", or EOF when the setup failed
        if line.strip() != b"ready":
            holder.kill()
            holder.wait(timeout)
            raise RuntimeError(f"node namespace setup failed; see {log_path}:\n{log_path.read_text()[-3000:]}")
        holder.stdout.close()
        return cls(holder, log_path)

    # -- entering

    def argv(self, argv: Sequence[str | os.PathLike[str]]) -> list[str]:
        """`argv` prefixed to run inside both namespaces."""
        return ["nsenter", f"--net={self.net_path}", f"--mount={self.mnt_path}", "--", *map(str, argv)]

    def call(self, fn: Callable[..., T], *args: Any, timeout: float | None = None, **kwargs: Any) -> T:
        """Run fn on a thread inside the network namespace and return its result."""
        return self._pool.submit(fn, *args, **kwargs).result(timeout)

    def publish(self, port: int) -> None:
        """Forward host 127.0.0.1:port to 127.0.0.1:port in the namespace (same URL both sides)."""
        self._forwarders.append(_Forwarder(self, socket.create_server(("127.0.0.1", port)), ("127.0.0.1", port)))

    def forward(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        """Inside the namespace, connections to `listen` go to `target`: what kube-proxy does
        for one Service port, in user space."""
        listener = self.call(socket.create_server, listen)
        self._forwarders.append(_Forwarder(self, listener, target))

    # -- teardown

    def member_pids(self) -> list[int]:
        """Processes in this namespace pair (not this test process)."""
        me = os.getpid()
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == me:
                continue
            if ns_inode(entry, "mnt") == self.mnt_inode or ns_inode(entry, "net") == self.net_inode:
                found.append(int(entry))
        return found

    def destroy(self, extra_pids: Callable[[], Sequence[int]] = lambda: ()) -> None:
        """SIGKILL every process in the namespaces (and `extra_pids()`), until none is left."""
        for fwd in self._forwarders:
            fwd.close()
        self._forwarders = []
        deadline = time.monotonic() + 30
        while True:
            pids = set(self.member_pids()) | set(extra_pids())
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                raise RuntimeError(f"processes survive SIGKILL in the node namespace: {sorted(pids)}")
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            self.holder.kill()
        self.holder.wait(10)
        # The worker threads hold the network namespace: let them go.
        self._pool.shutdown(wait=True, cancel_futures=True)


class _Forwarder:
    """A listening socket (on the host, or inside the namespace) -> `target` inside the
    namespace, a byte pump per connection."""

    def __init__(self, ns: Namespace, listener: socket.socket, target: tuple[str, int]) -> None:
        self.ns = ns
        self.target = target
        self.listener = listener
        self._closed = False
        threading.Thread(target=self._accept, name=f"node-forward-{target[1]}", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = self.ns.call(socket.create_connection, self.target, 10)
            except OSError:
                client.close()
                continue
            done = threading.Barrier(2, action=_closer(client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(a, b, done), daemon=True).start()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()


def _closer(*socks: socket.socket) -> Callable[[], None]:
    def close() -> None:
        for s in socks:
            s.close()

    return close


def _pump(src: socket.socket, dst: socket.socket, done: threading.Barrier) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        # Half-close so the other direction can finish, then let both go.
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
        done.wait()  # the second direction to finish closes both sockets
