"""The webhook's certificate from a mounted Secret (``--webhook-cert-dir`` in kubelet's volume
layout, as cert-manager's Secret is mounted): a certificate that cannot serve the webhook
stops the operator with words that say why, touching nothing; a renewed one is served, and
its CA registered, without a restart."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from modelroute_operator import names
from modelroute_operator.certs import CA_FILE, CERT_FILE, KEY_FILE, make_ca, make_serving_cert
from tests.controlplane.cluster import wait_for
from tests.operator import kubelet_volume
from tests.operator.conftest import WEBHOOK_CONFIG, Cluster, OperatorProcess

pytestmark = [pytest.mark.controlplane, pytest.mark.usefixtures("webhook_config_restored")]


def issue(hosts: list[str], ca_name: str) -> dict[str, bytes]:
    """A Secret's worth of files, as cert-manager's CA issuer writes them."""
    ca, ca_key = make_ca(ca_name)
    cert, key = make_serving_cert(ca, ca_key, hosts)
    return {CERT_FILE: cert, KEY_FILE: key, CA_FILE: ca}


def ca_bundle(config: dict[str, Any] | None) -> set[bytes]:
    return {base64.b64decode(w["clientConfig"]["caBundle"]) for w in (config or {}).get("webhooks") or []}


def served_certificate(port: int) -> bytes:
    """The certificate a TLS client is shown now (DER)."""
    pem = ssl.get_server_certificate(("127.0.0.1", port), timeout=5)
    return x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)


def der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def annotated_pod(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "annotations": {names.INJECT_ANNOTATION: "true"}},
            "spec": {"containers": [{"name": "app", "image": "app:1"}]}}


def injected(cluster: Cluster, namespace: str, name: str) -> bool:
    stored = cluster.get("pod", name, namespace)
    assert stored is not None
    return (stored["metadata"].get("annotations") or {}).get(names.INJECTED_ANNOTATION) == "true"


def test_a_certificate_that_does_not_name_the_webhook_stops_the_operator_with_the_reason(
        cluster: Cluster, operator_kubeconfig: Path, tmp_path: Path) -> None:
    volume = tmp_path / "webhook-certs"
    files = issue(["modelroute-webhook.elsewhere.svc", "10.1.2.3"], "someone-elses-ca")
    kubelet_volume.write(volume, files)
    volume.chmod(0o555)  # read-only, as a Secret volume is (root may write anyway: not relied on)
    prior = cluster.get(*WEBHOOK_CONFIG)
    op = OperatorProcess(operator_kubeconfig, tmp_path / "operator.log", cluster, "--webhook-cert-dir", str(volume))
    with pytest.raises(RuntimeError, match="exited with 1"):
        op.start()
    logs = op.logs()
    assert "CertificateError" in logs and "does not name 127.0.0.1" in logs, logs[-3000:]
    assert "its names: modelroute-webhook.elsewhere.svc, 10.1.2.3" in logs, logs[-3000:]
    assert "OSError" not in logs and "Read-only file system" not in logs, logs[-3000:]
    assert kubelet_volume.current(volume) == files  # not overwritten
    # It never registered, so it removed nothing either: another operator's configuration stays.
    after = cluster.get(*WEBHOOK_CONFIG)
    assert (after or {}).get("metadata", {}).get("uid") == (prior or {}).get("metadata", {}).get("uid")


def test_a_renewed_certificate_is_served_and_registered_without_a_restart(
        cluster: Cluster, operator_kubeconfig: Path, namespace: str, tmp_path: Path) -> None:
    volume = tmp_path / "webhook-certs"
    first = issue(["127.0.0.1"], "ca-one")
    kubelet_volume.write(volume, first)
    op = OperatorProcess(operator_kubeconfig, tmp_path / "operator.log", cluster,
                         "--webhook-cert-dir", str(volume), "--webhook-cert-check-seconds", "0.2")
    op.start()
    try:
        assert op.proc is not None
        pid = op.proc.pid
        assert ca_bundle(cluster.get(*WEBHOOK_CONFIG)) == {first[CA_FILE]}
        assert served_certificate(op.webhook_port) == der(first[CERT_FILE])
        cluster.apply(annotated_pod("before"), namespace)
        assert injected(cluster, namespace, "before")
        assert kubelet_volume.current(volume) == first  # used as given

        # cert-manager renews into the Secret (here even with a new CA); kubelet swaps the volume.
        second = issue(["127.0.0.1"], "ca-two")
        kubelet_volume.write(volume, second)
        wait_for(lambda: ca_bundle(cluster.get(*WEBHOOK_CONFIG)) == {second[CA_FILE]}, timeout=30,
                 what="the new CA registered", on_timeout=lambda: "\n" + op.logs()[-3000:])
        assert served_certificate(op.webhook_port) == der(second[CERT_FILE])
        # The API server, trusting only the new CA now, reaches the webhook.
        cluster.apply(annotated_pod("after"), namespace)
        assert injected(cluster, namespace, "after")
        assert op.proc is not None and op.proc.pid == pid and op.proc.poll() is None  # the same process
        assert "serving the renewed webhook certificate" in op.logs()
    finally:
        code = op.stop()
    assert code == 0, op.logs()[-3000:]
