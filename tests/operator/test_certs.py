"""The webhook's CA and serving certificate (cryptography), checked by a real TLS handshake."""

from __future__ import annotations

import datetime
import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509
from modelroute_operator.certs import covers, ensure_certs, make_ca, make_serving_cert, service_hosts


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
