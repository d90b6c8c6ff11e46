"""Resident memory against an https upstream, as real providers are: the sidecar and the floor.

``sidecar_bench`` measures against a plain-http upstream. A pod calls https upstreams, and TLS
costs memory on first use: a context, and the CA roots it reads. This runs the benchmark's
upstream (``bench.fast_upstream``) behind TLS with a certificate from a throwaway CA, puts that
CA in a hashed CA directory holding the system's roots too (``SSL_CERT_DIR``, as
``/etc/ssl/certs`` is laid out), and for the bare aiohttp proxy and ``modelroute sidecar`` (as
a pod runs it) prints VmRSS idle, 2.5 s after ready, and again 2.5 s after N requests.

Run: ``python -m bench.tls_footprint`` (~15 s).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import ipaddress
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.sidecar_bench import REPO, compile_bytecode, gateway_yaml, sidecar_config_dir

SETTLE = 2.5  # seconds, as the benchmark's idle reading


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def wait(port: int, path: str | None = None, deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            if path is None:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            else:
                urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=0.5).read()
            return
        except OSError:
            time.sleep(0.01)
    raise RuntimeError(f"nothing answered on port {port} within {deadline:g}s")


def subject_hash(common_name: str) -> str:
    """OpenSSL's X509_NAME_hash of a name holding one short ASCII CN (the ``<hash>.0`` file name)."""
    value = common_name.lower().encode()
    atv = b"\x30" + bytes([7 + len(value)]) + b"\x06\x03\x55\x04\x03\x0c" + bytes([len(value)]) + value
    digest = hashlib.sha1(b"\x31" + bytes([len(atv)]) + atv).digest()
    return f"{int.from_bytes(digest[:4], 'little'):08x}"


def certificate(tmp: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost (its own CA)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def ca_directory(tmp: Path, cert: Path) -> Path:
    """The system's hashed roots (linked) plus the throwaway CA."""
    d = tmp / "cas"
    d.mkdir()
    system = ssl.get_default_verify_paths().capath
    for entry in os.scandir(system) if system and os.path.isdir(system) else ():
        if entry.name[:8].isalnum() and entry.name[8:9] == ".":
            os.symlink(entry.path, d / entry.name)
    shutil.copy(cert, d / f"{subject_hash('localhost')}.0")
    return d


UPSTREAM = """
import ssl, sys
from aiohttp import web
from bench.fast_upstream import make_app
ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(sys.argv[2], sys.argv[3])
web.run_app(make_app(), host="127.0.0.1", port=int(sys.argv[1]), ssl_context=ctx, print=None, access_log=None)
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--requests", type=int, default=20)
    args = p.parse_args(argv)
    compile_bytecode()
    tmp = Path(tempfile.mkdtemp(prefix="modelroute-tls-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        cert, key = certificate(tmp)
        env = {**os.environ, "SSL_CERT_DIR": str(ca_directory(tmp, cert)), "PYTHONPATH": str(REPO)}
        env.pop("SSL_CERT_FILE", None)
        up = free_port()
        procs.append(subprocess.Popen([sys.executable, "-c", UPSTREAM, str(up), str(cert), str(key)], env=env,
                                      cwd=REPO))
        wait(up)
        cfg = sidecar_config_dir(tmp / "pod", gateway_yaml(up).replace(f"http://127.0.0.1:{up}",
                                                                      f"https://localhost:{up}"))
        body = b'{"model":"bench","messages":[{"role":"user","content":"Say hello."}],"max_tokens":32}'
        print(f"VmRSS, MiB, against an https upstream ({args.requests} requests):")
        for name in ("bare aiohttp proxy", "modelroute sidecar"):
            port, mport = free_port(), free_port()
            argv_ = ([sys.executable, "-m", "bench.bare_proxy", "--port", str(port), "--upstream",
                      f"https://localhost:{up}"] if name.startswith("bare") else
                     [sys.executable, "-m", "modelroute_sidecar", "sidecar", "--config-dir", str(cfg),
                      "--port", str(port), "--metrics-port", str(mport)])
            proc = subprocess.Popen(argv_, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(proc)
            wait(port) if name.startswith("bare") else wait(mport, "/readyz")
            time.sleep(SETTLE)
            idle = rss_mib(proc.pid)
            for _ in range(args.requests):
                req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", body,
                                             {"content-type": "application/json", "authorization": "Bearer x"})
                with urllib.request.urlopen(req, timeout=10) as resp:
                    assert resp.status == 200, resp.status
                    resp.read()
            time.sleep(SETTLE)
            print(f"  {name:20s} idle {idle:5.1f}   after the requests {rss_mib(proc.pid):5.1f}")
            proc.terminate()
            proc.wait()
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
