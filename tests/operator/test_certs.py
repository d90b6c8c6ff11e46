"""The webhook's CA and serving certificate (cryptography), checked by a real TLS handshake."""

from __future__ import annotations

import asyncio
import datetime
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509

from modelroute_operator.certs import (
    CA_FILE,
    CERT_FILE,
    GENERATED_MARKER,
    KEY_FILE,
    CertFiles,
    CertificateError,
    covers,
    ensure_certs,
    make_ca,
    make_serving_cert,
    problems,
    renew_generated_forever,
    service_hosts,
)


def test_serving_cert_names_every_host_and_chains_to_the_ca() -> None:
    ca, ca_key = make_ca()
    cert, _key = make_serving_cert(ca, ca_key, ["127.0.0.1", "localhost", *service_hosts("mr-webhook", "system")])
    parsed = x509.load_pem_x509_certificate(cert)
    sans = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert "mr-webhook.system.svc" in sans.get_values_for_type(x509.DNSName)
    assert parsed.issuer == x509.load_pem_x509_certificate(ca).subject
    parsed.verify_directly_issued_by(x509.load_pem_x509_certificate(ca))
    assert covers(cert, ["127.0.0.1", "mr-webhook.system.svc.cluster.local"])
    assert not covers(cert, ["10.0.0.9"])
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=364)
    assert not covers(cert, ["127.0.0.1"], at=later)  # inside the renewal window


def test_ensure_certs_reuses_good_files_and_replaces_ones_that_do_not_fit(tmp_path: Path) -> None:
    files = ensure_certs(tmp_path, ["127.0.0.1", "localhost"])
    first = files.cert.read_bytes()
    assert (files.key.stat().st_mode & 0o777) == 0o600
    assert ensure_certs(tmp_path, ["localhost"]).cert.read_bytes() == first
    assert ensure_certs(tmp_path, ["webhook.ns.svc"]).cert.read_bytes() != first


def test_a_tls_client_trusting_the_ca_accepts_the_server(tmp_path: Path) -> None:
    files = ensure_certs(tmp_path, ["127.0.0.1", "localhost"])
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(files.cert, files.key)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"ok")

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        client_ctx = ssl.create_default_context(cafile=str(files.ca))
        with socket.create_connection(("127.0.0.1", port)) as raw, \
                client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.recv(2) == b"ok"
        t.join(5)


def test_no_hosts_is_an_error() -> None:
    ca, key = make_ca()
    with pytest.raises(ValueError, match="at least one host"):
        make_serving_cert(ca, key, [])


# --- certificates from elsewhere (a mounted Secret): used as given, never overwritten ---------------


def provided(directory: Path, hosts: list[str], *, key_of_another: bool = False) -> dict[str, bytes]:
    """tls.crt, tls.key, ca.crt as cert-manager would put them; what was written."""
    ca, ca_key = make_ca("someone-elses-ca")
    cert, key = make_serving_cert(ca, ca_key, hosts)
    if key_of_another:
        key = make_serving_cert(ca, ca_key, hosts)[1]
    files = {CERT_FILE: cert, KEY_FILE: key, CA_FILE: ca}
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return files


def contents(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir()}


def test_a_provided_certificate_naming_the_checked_host_is_used_as_given(tmp_path: Path) -> None:
    written = provided(tmp_path, ["wh.ns.svc"])
    hosts = service_hosts("wh", "ns")  # what a generated one would name
    files = ensure_certs(tmp_path, hosts, required=["wh.ns.svc"])
    assert files.cert.read_bytes() == written[CERT_FILE]
    assert contents(tmp_path) == written  # nothing added, nothing replaced


def test_a_provided_certificate_missing_the_checked_host_is_an_error_naming_it(tmp_path: Path) -> None:
    written = provided(tmp_path, ["other.ns.svc", "10.0.0.1"])
    with pytest.raises(CertificateError) as e:
        ensure_certs(tmp_path, service_hosts("wh", "ns"), required=["wh.ns.svc"])
    message = str(e.value)
    assert "does not name wh.ns.svc" in message and "its names: other.ns.svc, 10.0.0.1" in message, message
    assert str(tmp_path / CERT_FILE) in message
    assert contents(tmp_path) == written  # never overwritten: it is not the operator's


@pytest.mark.parametrize(("absent", "words"), [((KEY_FILE,), "tls.key missing"),
                                               ((CA_FILE, KEY_FILE), "tls.key, ca.crt missing")])
def test_an_incomplete_provided_certificate_is_an_error(tmp_path: Path, absent: tuple[str, ...], words: str) -> None:
    provided(tmp_path, ["wh.ns.svc"])
    for name in absent:
        (tmp_path / name).unlink()
    with pytest.raises(CertificateError, match=words):
        ensure_certs(tmp_path, ["wh.ns.svc"])


def test_problems_of_a_certificate(tmp_path: Path) -> None:
    provided(tmp_path, ["wh.ns.svc"])
    files = CertFiles(tmp_path / CERT_FILE, tmp_path / KEY_FILE, tmp_path / CA_FILE)
    assert problems(files, ["wh.ns.svc"]) == []
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=400)
    assert [p for p in problems(files, ["wh.ns.svc"], at=later) if p.startswith("it expired at")]
    assert problems(files, ["wh.ns.svc", "127.0.0.1"]) == ["it does not name 127.0.0.1 (its names: wh.ns.svc)"]
    provided(tmp_path, ["wh.ns.svc"], key_of_another=True)
    assert problems(files, ["wh.ns.svc"]) == ["tls.key is not the private key of tls.crt"]
    (tmp_path / CERT_FILE).write_bytes(b"not a certificate")
    assert problems(files, ["wh.ns.svc"])[0].startswith("cannot read it")


def test_generated_files_are_marked_and_an_unwritable_directory_is_a_clear_error(tmp_path: Path) -> None:
    ensure_certs(tmp_path / "certs", ["127.0.0.1"])
    assert (tmp_path / "certs" / GENERATED_MARKER).is_file()
    (tmp_path / "a-file").write_text("")
    with pytest.raises(CertificateError, match="cannot write the webhook's certificate into"):
        ensure_certs(tmp_path / "a-file" / "certs", ["127.0.0.1"])


async def test_generated_files_are_remade_when_due_and_provided_ones_never(tmp_path: Path) -> None:
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    files = ensure_certs(ours, ["127.0.0.1"])
    ca, ca_key = make_ca()
    soon, _key = make_serving_cert(ca, ca_key, ["127.0.0.1"], days=3)  # inside the renewal window
    files.cert.write_bytes(soon)
    written = provided(theirs, ["127.0.0.1"])
    (theirs / CERT_FILE).write_bytes(soon)
    tasks = [asyncio.create_task(renew_generated_forever(d, ["127.0.0.1"], interval=0.01)) for d in (ours, theirs)]
    try:
        deadline = time.monotonic() + 10
        while files.cert.read_bytes() == soon:
            assert time.monotonic() < deadline, "the generated certificate was not renewed"
            await asyncio.sleep(0.01)
        assert covers(files.cert.read_bytes(), ["127.0.0.1"])
        assert contents(theirs) == {**written, CERT_FILE: soon}  # not the operator's to touch
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
