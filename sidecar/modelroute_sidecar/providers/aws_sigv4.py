"""AWS Signature Version 4 for upstream requests, by botocore's ``SigV4Auth``.

botocore is the AWS SDK's own signer, kept by AWS; importing ``botocore.auth`` costs
about 20 MB of resident memory and a third of a second, so this module is imported only
by the Bedrock adapter, which loads when a config first holds a ``bedrock`` ProviderKey
(see ``providers/__init__.py``). A sidecar without one never pays for it.

The signature covers the method, the path exactly as sent, the sorted headers given
here (``host`` included, derived from the URL as the HTTP client writes it), the
SHA-256 of the body, ``x-amz-date`` and, with temporary credentials,
``x-amz-security-token``. Headers the HTTP client adds afterwards (content-length,
accept-encoding) are not signed, which AWS allows.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials

from ..credentials import AwsCredentials

# botocore logs the canonical request (with x-amz-security-token) at DEBUG: never let a
# debug-level root logger write a credential.
logging.getLogger("botocore.auth").setLevel(logging.INFO)

_ACCESS_KEY_ID = re.compile(r"^[A-Z0-9]{16,128}$")


def parse_key_line(line: str) -> AwsCredentials | None:
    """A Secret key line ``ACCESS_KEY_ID:SECRET_ACCESS_KEY[:SESSION_TOKEN]``; None when the
    line has no ``:`` (a Bedrock API key, sent as a bearer token). Raises ValueError for a
    line that is neither (the message never holds the line)."""
    if ":" not in line:
        return None
    parts = line.split(":")
    if len(parts) not in (2, 3) or not all(parts) or not _ACCESS_KEY_ID.match(parts[0]):
        raise ValueError("a Bedrock key line is ACCESS_KEY_ID:SECRET_ACCESS_KEY[:SESSION_TOKEN] "
                         "(or a Bedrock API key without ':')")
    return AwsCredentials(parts[0], parts[1], parts[2] if len(parts) == 3 else None)


def sign(creds: AwsCredentials, region: str, service: str, url: str, headers: Mapping[str, str],
         body: bytes) -> dict[str, str]:
    """``headers`` plus ``Authorization``, ``X-Amz-Date`` (and ``X-Amz-Security-Token``)
    for a POST of ``body`` to ``url``, signed now."""
    request = AWSRequest(method="POST", url=url, headers=dict(headers), data=body)
    signer = SigV4Auth(ReadOnlyCredentials(creds.access_key_id, creds.secret_access_key, creds.session_token),
                       service, region)
    signer.add_auth(request)
    return dict(request.headers.items())
