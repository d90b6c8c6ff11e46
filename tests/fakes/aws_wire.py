"""AWS wire pieces for the fakes, written from AWS's documentation, independent of botocore.

* :func:`verify_sigv4`: checks a request's Signature Version 4 the way AWS documents it
  ("Create a signed AWS API request", IAM User Guide): canonical request, string to sign,
  signing key derivation, ``x-amz-date`` freshness (5 minutes), credential scope,
  ``x-amz-security-token`` for temporary credentials, ``x-amz-content-sha256`` when sent.
  It is checked against AWS's published test vectors (get-vanilla, post-vanilla) in
  tests/fakes/test_bedrock_fake.py. The sidecar signs with botocore; nothing here
  imports it.
* :func:`encode_message`: one ``application/vnd.amazon.eventstream`` message (prelude
  with total and header lengths, prelude CRC32, string headers, payload, message CRC32),
  as documented for the event stream encoding (Transcribe/S3 Select/Bedrock streaming).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl

ALGORITHM = "AWS4-HMAC-SHA256"
SIGNATURE_MISMATCH = ("The request signature we calculated does not match the signature you provided. Check your "
                      "AWS Secret Access Key and signing method. Consult the service documentation for details.")
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")
_AUTH = re.compile(r"^AWS4-HMAC-SHA256 Credential=([^,\s]+),\s*SignedHeaders=([^,\s]+),\s*Signature=([0-9a-f]{64})$")


def uri_encode(value: str, encode_slash: bool = True) -> str:
    """AWS's UriEncode: every byte but the unreserved characters as %XX (upper-case hex)."""
    out = []
    for byte in value.encode("utf-8"):
        if byte in _UNRESERVED or (byte == 0x2F and not encode_slash):
            out.append(chr(byte))
        else:
            out.append(f"%{byte:02X}")
    return "".join(out)


def canonical_uri(raw_path: str) -> str:
    """The path as it arrived, dot segments removed, URI-encoded once more: the double
    encoding AWS prescribes for every service but S3 (the client encoded it once)."""
    segments: list[str] = []
    for seg in raw_path.split("/")[1:]:
        if seg == ".":
            continue
        if seg == "..":
            if segments:
                segments.pop()
            continue
        segments.append(seg)
    return "/" + "/".join(uri_encode(s) for s in segments)


def canonical_query(raw_query: str) -> str:
    pairs = [(uri_encode(k), uri_encode(v)) for k, v in parse_qsl(raw_query, keep_blank_values=True)]
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))


def _trim(value: str) -> str:
    return " ".join(value.split())


def canonical_request(method: str, raw_path: str, raw_query: str, headers: Mapping[str, list[str]],
                      signed: list[str], payload_hash: str) -> str:
    lines = "".join(f"{name}:{','.join(_trim(v) for v in headers.get(name, []))}\n" for name in signed)
    return "\n".join([method, canonical_uri(raw_path), canonical_query(raw_query), lines, ";".join(signed),
                      payload_hash])


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    def mac(key: bytes, msg: str) -> bytes:
        return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()

    return mac(mac(mac(mac(("AWS4" + secret).encode("utf-8"), date), region), service), "aws4_request")


def string_to_sign(amz_date: str, scope: str, canonical: str) -> str:
    return "\n".join([ALGORITHM, amz_date, scope, hashlib.sha256(canonical.encode("utf-8")).hexdigest()])


def signature(secret: str, amz_date: str, region: str, service: str, canonical: str) -> str:
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    key = signing_key(secret, amz_date[:8], region, service)
    return hmac.new(key, string_to_sign(amz_date, scope, canonical).encode("utf-8"), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class AwsCredential:
    secret_access_key: str
    session_token: str | None = None
    expires_at: float | None = None  # seconds since the epoch (temporary credentials)


class SigV4Error(Exception):
    """A refused request: AWS's exception name and message (always HTTP 403)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name
        self.message = message


def verify_sigv4(*, method: str, raw_path: str, raw_query: str, headers: Mapping[str, list[str]], body: bytes,
                 credentials: Mapping[str, AwsCredential], region: str, service: str,
                 now: datetime | None = None) -> str:
    """The access key id of a correctly signed request; raises :class:`SigV4Error` otherwise.

    ``headers``: lower-case names to every value received.
    """
    auth = headers.get("authorization", [])
    if not auth:
        raise SigV4Error("MissingAuthenticationTokenException", "Missing Authentication Token")
    m = _AUTH.match(auth[0].strip())
    if m is None:
        raise SigV4Error("IncompleteSignatureException",
                         f"Authorization header requires 'Credential', 'Signature' and 'SignedHeaders' parameters "
                         f"for {ALGORITHM}.")
    credential, signed_text, sig = m.groups()
    parts = credential.split("/")
    if len(parts) != 5 or parts[4] != "aws4_request":
        raise SigV4Error("IncompleteSignatureException", "Credential should be scoped to a valid region.")
    akid, date, scope_region, scope_service, _ = parts
    if akid not in credentials:
        raise SigV4Error("UnrecognizedClientException", "The security token included in the request is invalid.")
    cred = credentials[akid]
    amz_dates = headers.get("x-amz-date", [])
    if not amz_dates:
        raise SigV4Error("IncompleteSignatureException", "Authorization header requires existence of either a "
                         "'X-Amz-Date' or a 'Date' header.")
    amz_date = amz_dates[0]
    try:
        when = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise SigV4Error("IncompleteSignatureException", f"Date must be in ISO-8601 'basic format'. Got "
                         f"'{amz_date}'.") from None
    now = now or datetime.now(UTC)
    if abs(now - when) > timedelta(minutes=5):
        stamp = now.strftime("%Y%m%dT%H%M%SZ")
        raise SigV4Error("InvalidSignatureException", f"Signature expired: {amz_date} is now earlier than "
                         f"{stamp} ({stamp} - 5 min.)" if when < now else
                         f"Signature not yet current: {amz_date} is still later than {stamp} ({stamp} + 5 min.)")
    if date != amz_date[:8]:
        raise SigV4Error("InvalidSignatureException", f"Date in Credential scope does not match YYYYMMDD from "
                         f"ISO-8601 version of date from HTTP: '{date}' != '{amz_date[:8]}', from '{amz_date}'.")
    if scope_region != region:
        raise SigV4Error("InvalidSignatureException", f"Credential should be scoped to a valid region, not "
                         f"'{scope_region}'. ")
    if scope_service != service:
        raise SigV4Error("InvalidSignatureException", f"Credential should be scoped to correct service: "
                         f"'{service}'. ")
    signed = signed_text.split(";")
    if signed != sorted(signed) or "host" not in signed or any(n != n.lower() for n in signed):
        raise SigV4Error("InvalidSignatureException", SIGNATURE_MISMATCH)
    tokens = headers.get("x-amz-security-token", [])
    if cred.session_token is not None and tokens != [cred.session_token]:
        raise SigV4Error("UnrecognizedClientException", "The security token included in the request is invalid.")
    if cred.session_token is None and tokens:
        raise SigV4Error("UnrecognizedClientException", "The security token included in the request is invalid.")
    if cred.expires_at is not None and now.timestamp() >= cred.expires_at:
        raise SigV4Error("ExpiredTokenException", "The security token included in the request is expired")
    payload_hash = hashlib.sha256(body).hexdigest()
    claimed = headers.get("x-amz-content-sha256", [])
    if claimed and claimed[0] != payload_hash:
        raise SigV4Error("InvalidSignatureException", "The provided 'x-amz-content-sha256' header does not match "
                         "what was computed.")
    canonical = canonical_request(method, raw_path, raw_query, headers, signed, payload_hash)
    expected = signature(cred.secret_access_key, amz_date, region, service, canonical)
    if not hmac.compare_digest(expected, sig):
        raise SigV4Error("InvalidSignatureException", SIGNATURE_MISMATCH)
    return akid


# --------------------------------------------------------------------- event stream

_STRING = 7  # header value type: UTF-8 string with a 2-byte length


def encode_message(headers: Mapping[str, str], payload: bytes) -> bytes:
    head = b""
    for name, value in headers.items():
        n, v = name.encode("utf-8"), value.encode("utf-8")
        head += struct.pack(">B", len(n)) + n + struct.pack(">BH", _STRING, len(v)) + v
    total = 12 + len(head) + len(payload) + 4
    prelude = struct.pack(">II", total, len(head))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    message = prelude + head + payload
    return message + struct.pack(">I", zlib.crc32(message))


def event(event_type: str, payload: bytes) -> bytes:
    return encode_message({":event-type": event_type, ":content-type": "application/json",
                           ":message-type": "event"}, payload)


def exception(exception_type: str, payload: bytes) -> bytes:
    return encode_message({":exception-type": exception_type, ":content-type": "application/json",
                           ":message-type": "exception"}, payload)
