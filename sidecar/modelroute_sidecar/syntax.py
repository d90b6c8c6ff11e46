"""What a model name and an HTTP header may hold: one definition for every place that checks.

Callers choose model names, and a name can end up in an upstream URL (Gemini's
``models/<name>:generateContent``, Azure's ``deployments/<name>/...``), in response
headers (``x-modelroute-backend``) and in logs. So a name is data with a fixed
alphabet, never URL syntax: ASCII letters and digits and ``. _ - : / @ + ~``, at most
256 characters, in ``/``-separated segments none of which is empty or starts with a
dot (so no ``.`` or ``..`` segment). That admits every real model id (``gpt-4.1``,
``Qwen/Qwen2.5-7B-Instruct``, ``qwen2.5:7b``, ``@cf/meta/llama-3-8b-instruct``) and
nothing that could change which path or query an upstream receives.

The patterns are RE2-compatible so that the CRDs (``crds/*.yaml``) carry the very same
text; tests compare them.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from .errors import bad_request

MODEL_NAME_MAX = 256
_SEGMENT = r"[A-Za-z0-9_:@+~-][A-Za-z0-9._:@+~-]*"
MODEL_NAME_PATTERN = rf"^{_SEGMENT}(/{_SEGMENT})*$"
MODEL_NAME_RULE = (f"a model name is 1-{MODEL_NAME_MAX} characters: ASCII letters, digits and . _ - : / @ + ~, "
                   "in /-separated segments that are not empty and do not start with a dot")
_MODEL_NAME = re.compile(MODEL_NAME_PATTERN)

# RFC 9110 token characters (less ' and `, which no real header name uses and which
# would need escaping in the CRD's CEL rule).
HEADER_NAME_PATTERN = r"^[!#$%&*+.^_|~0-9A-Za-z-]+$"
# Visible ASCII, space and tab: no CR, LF, NUL or other control, no bytes beyond ASCII.
HEADER_VALUE_PATTERN = r"^[\t\x20-\x7e]*$"
_HEADER_NAME = re.compile(HEADER_NAME_PATTERN)

# Who may use a route: a ServiceAccount name in a cluster, a caller-key name (a Secret data
# key) in `serve`. The alphabet of Secret data keys, which holds every ServiceAccount name.
CALLER_NAME_MAX = 253
CALLER_NAME_PATTERN = r"^[-._a-zA-Z0-9]+$"
_HEADER_VALUE = re.compile(HEADER_VALUE_PATTERN)


# fullmatch, not match: re's $ also matches before a final newline.
def valid_model_name(name: str) -> bool:
    return len(name) <= MODEL_NAME_MAX and _MODEL_NAME.fullmatch(name) is not None


def valid_header_name(name: str) -> bool:
    return _HEADER_NAME.fullmatch(name) is not None


def valid_header_value(value: str) -> bool:
    return _HEADER_VALUE.fullmatch(value) is not None


def path_segment(name: str, safe: str = "") -> str:
    """``name`` as exactly one URL path segment (defence in depth behind the ingress check).

    Everything but unreserved characters (and ``safe``, a subset of ``: @ + ~``) is
    percent-encoded, so ``/ ? # %`` cannot split or end the path; ``.`` and ``..`` (which
    encoding cannot neutralise: clients and servers normalise them away) are refused.
    A signed URL (AWS SigV4) keeps ``: @ +`` as they are: HTTP clients send them
    unencoded whatever they were given, and the signature covers the path as sent.
    """
    if name in ("", ".", ".."):
        raise bad_request(f"Invalid 'model': {name!r} cannot name an upstream path segment", "model",
                          "invalid_model_name")
    return quote(name, safe=safe)
