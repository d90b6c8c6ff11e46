"""The webhook's serving certificate: a private CA and a certificate it signs.

Made with ``cryptography`` (kopf's own self-signed path goes through oscrypto, which
fails on OpenSSL 3). The files can also come from elsewhere, e.g. a mounted Secret
(``tls.crt``, ``tls.key``, ``ca.crt``, the cert-manager layout). Who made them decides
what happens to them:

* files the operator made (a marker file says so) are its own: remade when they no
  longer cover the webhook's names or are about to expire, at start-up and while it runs;
* anyone else's are used as they are, and never overwritten: if they cannot work (the
  name the API server checks is missing, expired, a key that does not match), start-up
  fails with a :class:`CertificateError` that says what is wrong.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CERT_FILE, KEY_FILE, CA_FILE = "tls.crt", "tls.key", "ca.crt"
# Present next to the files the operator generated (and only those).
GENERATED_MARKER = ".modelroute-generated"
RENEW_BEFORE = datetime.timedelta(days=7)
CLOCK_SKEW = datetime.timedelta(minutes=5)

logger = logging.getLogger("modelroute.operator")


class CertificateError(Exception):
    """The webhook's certificate files cannot be used (and are not the operator's to replace)."""


@dataclass(frozen=True, slots=True)
class CertFiles:
    cert: Path
    key: Path
    ca: Path


def service_hosts(name: str, namespace: str) -> list[str]:
    return [name, f"{name}.{namespace}", f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.cluster.local"]


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_ca(common_name: str = "modelroute-webhook-ca", days: int = 3650) -> tuple[bytes, bytes]:
    """A self-signed CA: (certificate PEM, private key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def make_serving_cert(
    ca_cert_pem: bytes, ca_key_pem: bytes, hosts: Sequence[str], days: int = 365
) -> tuple[bytes, bytes]:
    """A server certificate for ``hosts`` (DNS names or IPs, all as SANs), signed by the CA."""
    if not hosts:
        raise ValueError("a serving certificate needs at least one host")
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key must be an EC key")
    key = ec.generate_private_key(ec.SECP256R1())
    cn = next((h for h in hosts if not _is_ip(h)), hosts[0])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn[:64])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in dict.fromkeys(hosts)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, content_commitment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def covers(cert_pem: bytes, hosts: Iterable[str], *, at: datetime.datetime | None = None) -> bool:
    """True when the certificate names every host and stays valid for a while yet."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    when = at or _now()
    if not cert.not_valid_before_utc <= when <= cert.not_valid_after_utc - RENEW_BEFORE:
        return False
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    dns = set(sans.get_values_for_type(x509.DNSName))
    ips = {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    return all((str(ipaddress.ip_address(h)) in ips) if _is_ip(h) else (h in dns) for h in hosts)


def names_of(cert_pem: bytes) -> list[str]:
    """The certificate's subject alternative names (DNS names and IP addresses)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*sans.get_values_for_type(x509.DNSName), *(str(ip) for ip in sans.get_values_for_type(x509.IPAddress))]


def not_after(cert_pem: bytes) -> datetime.datetime:
    return x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc


def missing_names(cert_pem: bytes, hosts: Iterable[str]) -> list[str]:
    """The hosts the certificate does not name."""
    named = set(names_of(cert_pem))
    return [h for h in hosts if (str(ipaddress.ip_address(h)) if _is_ip(h) else h) not in named]


def problems(files: CertFiles, hosts: Sequence[str], *, at: datetime.datetime | None = None) -> list[str]:
    """What keeps these files from serving ``hosts`` (empty: nothing), in words for a user."""
    try:
        cert_pem = files.cert.read_bytes()
        cert = x509.load_pem_x509_certificate(cert_pem)
        x509.load_pem_x509_certificates(files.ca.read_bytes())
        key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        return [f"cannot read it: {type(e).__name__}: {e}"]
    found = []
    when = at or _now()
    if when + CLOCK_SKEW < cert.not_valid_before_utc:
        found.append(f"it is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC")
    if when > cert.not_valid_after_utc:
        found.append(f"it expired at {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC")
    if missing := missing_names(cert_pem, hosts):
        found.append(f"it does not name {', '.join(missing)} (its names: {', '.join(names_of(cert_pem)) or 'none'})")
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        found.append(f"{files.key.name} is not the private key of {files.cert.name}")
    return found


def ensure_certs(directory: Path, hosts: Sequence[str], *, required: Sequence[str] | None = None) -> CertFiles:
    """The certificate files in ``directory``.

    No files, or files the operator generated earlier that no longer cover ``hosts`` (or
    are about to expire): a new CA and serving certificate for ``hosts`` are written there
    (key files mode 0600). Anyone else's files are used as they are if they serve
    ``required`` (default: ``hosts``; the names clients check), else :class:`CertificateError`.
    """
    files = CertFiles(directory / CERT_FILE, directory / KEY_FILE, directory / CA_FILE)
    present = [p for p in (files.cert, files.key, files.ca) if p.exists()]
    if present and not (directory / GENERATED_MARKER).is_file():
        return _provided(directory, files, present, list(required if required is not None else hosts))
    if len(present) == 3 and covers(files.cert.read_bytes(), hosts):
        return files
    try:
        directory.mkdir(parents=True, exist_ok=True)
        ca_cert, ca_key = make_ca()
        cert, key = make_serving_cert(ca_cert, ca_key, hosts)
        _write(directory / GENERATED_MARKER, b"modelroute operator: the files here are generated, and remade\n", 0o644)
        _write(files.ca, ca_cert, 0o644)
        _write(files.key, key, 0o600)
        _write(files.cert, cert, 0o644)
    except OSError as e:
        raise CertificateError(f"cannot write the webhook's certificate into {directory}: {e.strerror or e}; "
                               f"give the operator a writable directory, or put {CERT_FILE}, {KEY_FILE} and "
                               f"{CA_FILE} there (e.g. a cert-manager Secret)") from None
    return files


async def renew_generated_forever(directory: Path, hosts: Sequence[str], interval: float = 3600.0) -> None:
    """Remake the operator's own files when they come due (``RENEW_BEFORE`` their expiry); the
    webhook server notices the new files and serves them, the new CA is registered. Files
    from elsewhere are left to whoever provides them (cert-manager renews its own)."""
    while True:
        await asyncio.sleep(interval)
        if not (directory / GENERATED_MARKER).is_file():
            continue
        try:
            before = (directory / CERT_FILE).read_bytes() if (directory / CERT_FILE).exists() else b""
            if ensure_certs(directory, hosts).cert.read_bytes() != before:
                logger.info("the webhook's generated certificate was due: made a new one in %s", directory)
        except (CertificateError, OSError, ValueError) as e:
            logger.error("could not renew the webhook's generated certificate in %s: %s", directory, e)


def _provided(directory: Path, files: CertFiles, present: list[Path], required: list[str]) -> CertFiles:
    absent = [p.name for p in (files.cert, files.key, files.ca) if p not in present]
    if absent:
        raise CertificateError(f"the webhook's certificate in {directory} is incomplete: "
                               f"{', '.join(absent)} missing (needs {CERT_FILE}, {KEY_FILE} and {CA_FILE})")
    found = problems(files, required)
    if found:
        raise CertificateError(
            f"the webhook's certificate {files.cert} cannot serve the webhook: {'; '.join(found)}. The API server "
            f"checks it for {', '.join(required)}: issue one that names {'it' if len(required) == 1 else 'them'} "
            f"(cert-manager: the Certificate's dnsNames), or let the operator make its own (an empty, writable "
            f"--webhook-cert-dir)")
    expires = not_after(files.cert.read_bytes())
    if expires - _now() < RENEW_BEFORE:
        logger.warning("the webhook's certificate %s expires at %s; the webhook picks up a renewed one from the same "
                       "files without a restart", files.cert, expires.isoformat())
    return files


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
