"""Run inside a pod of the modelroute image (`python3 -c <this file's text>`): what its
Python trusts for TLS. Prints one JSON object. Standard library, plus `cryptography`
(in the image for the operator) to make test certificates.

- The system store: how many CAs `ssl.create_default_context()` loads; and, with a context
  that has only the CA directory (`capath`, OpenSSL's lazy lookup by subject hash), a TLS
  handshake per root of the bundle against a leaf that names that root as its issuer but is
  signed by a key of our own. OpenSSL finds the root by hash (then the signature fails:
  verify code 7, or 10 for a root past its end date) or does not (20, "unable to get local
  issuer certificate"). No private key of a real CA is needed, and no network.
- A private CA given by SSL_CERT_FILE or SSL_CERT_DIR: the sidecar's own upstream TLS
  context, made in a child process with that variable set, accepts a leaf that CA signed.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

SCRATCH = "/scratch"
HOST = "upstream.test"
BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
NOW = datetime.datetime.now(datetime.UTC)
KEY = ec.generate_private_key(ec.SECP256R1())
PEM = serialization.Encoding.PEM


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def certificate(subject: x509.Name, issuer: x509.Name, signer: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
                *, ca: bool = False) -> x509.Certificate:
    key = signer if ca else KEY  # a CA's certificate is self-signed; every leaf has KEY
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(NOW - datetime.timedelta(hours=1)).not_valid_after(NOW + datetime.timedelta(hours=1)))
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    else:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(HOST)]), critical=False)
    return builder.sign(signer, hashes.SHA256())


def write_leaf(cert: x509.Certificate, path: str) -> str:
    with open(path, "wb") as f:
        f.write(cert.public_bytes(PEM) + KEY.private_bytes(PEM, serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
    return path


def handshake(leaf_pem: str, verify: Callable[[socket.socket], int | None]) -> int | None:
    """A server presenting `leaf_pem` on one end of a socket pair, `verify` on the other."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(leaf_pem)
    a, b = socket.socketpair()

    def serve() -> None:
        try:
            server.wrap_socket(a, server_side=True).close()
        except (ssl.SSLError, OSError):
            pass  # the client refused the certificate
        finally:
            a.close()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        return verify(b)
    finally:
        b.close()
        thread.join()


def by(client: ssl.SSLContext) -> Callable[[socket.socket], int | None]:
    """Verify with `client`: None when the certificate is accepted, else OpenSSL's verify code."""
    def verify(sock: socket.socket) -> int | None:
        try:
            client.wrap_socket(sock, server_hostname=HOST).close()
            return None
        except ssl.SSLCertVerificationError as e:
            return e.verify_code
    return verify


# The sidecar's upstream TLS context, made in a process of its own (at import: after the
# environment is set), verifying on the socket it inherits.
SIDECAR = f"""
import json, socket, ssl, sys
from modelroute_sidecar.upstream import LeanClient
sock = socket.socket(fileno=int(sys.argv[1]))
try:
    LeanClient().ssl_context.wrap_socket(sock, server_hostname={HOST!r}).close()
    print("null")
except ssl.SSLCertVerificationError as e:
    print(e.verify_code)
"""


def by_sidecar(env: dict[str, str]) -> Callable[[socket.socket], int | None]:
    def verify(sock: socket.socket) -> int | None:
        child = subprocess.run([sys.executable, "-c", SIDECAR, str(sock.fileno())], env={**os.environ, **env},
                               pass_fds=[sock.fileno()], capture_output=True, text=True, check=True)
        code: int | None = json.loads(child.stdout)
        return code
    return verify


def system_store() -> dict[str, object]:
    paths = ssl.get_default_verify_paths()
    out: dict[str, object] = {"capath": paths.capath,
                              "default_context_cas": ssl.create_default_context().cert_store_stats()["x509_ca"]}
    roots = x509.load_pem_x509_certificates(Path(BUNDLE).read_bytes()) if Path(BUNDLE).exists() else []
    by_dir = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if paths.capath:
        by_dir.load_verify_locations(capath=paths.capath)
    out["bundle"] = len(roots)
    out["capath_cas_before"] = by_dir.cert_store_stats()["x509_ca"]
    signers: dict[bool, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey] = {
        True: rsa.generate_private_key(public_exponent=65537, key_size=2048), False: KEY}
    codes: dict[str, int] = {}
    for root in roots:  # OpenSSL only takes an issuer whose key type matches the signature's
        signer = signers[isinstance(root.public_key(), rsa.RSAPublicKey)]
        code = handshake(write_leaf(certificate(name(HOST), root.subject, signer), f"{SCRATCH}/leaf.pem"), by(by_dir))
        codes[str(code)] = codes.get(str(code), 0) + 1
    out["capath_codes"] = codes
    out["capath_cas_after"] = by_dir.cert_store_stats()["x509_ca"]
    return out


def private_ca() -> dict[str, object]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name("modelroute test corporate CA")
    ca = certificate(ca_name, ca_name, ca_key, ca=True)
    ca_pem = ca.public_bytes(PEM)
    leaf = write_leaf(certificate(name(HOST), ca_name, ca_key), f"{SCRATCH}/corp-leaf.pem")
    with open(f"{SCRATCH}/corp-ca.pem", "wb") as f:
        f.write(ca_pem)
    if shutil.which("openssl") is None:  # ca-certificates brings it (its postinst runs `openssl rehash`)
        return {"error": "no openssl in the image"}
    os.makedirs(f"{SCRATCH}/corp-certs", exist_ok=True)
    with open(f"{SCRATCH}/corp-certs/corp-ca.pem", "wb") as f:
        f.write(ca_pem)
    subprocess.run(["openssl", "rehash", f"{SCRATCH}/corp-certs"], check=True)  # <hash>.0 links
    return {
        "without": handshake(leaf, by_sidecar({})),
        "SSL_CERT_FILE": handshake(leaf, by_sidecar({"SSL_CERT_FILE": f"{SCRATCH}/corp-ca.pem"})),
        "SSL_CERT_DIR": handshake(leaf, by_sidecar({"SSL_CERT_DIR": f"{SCRATCH}/corp-certs"})),
    }


if __name__ == "__main__":
    print(json.dumps({"system": system_store(), "private_ca": private_ca()}))
