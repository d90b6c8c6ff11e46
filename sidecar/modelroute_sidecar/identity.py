"""Who is calling: the pod's ServiceAccount in a cluster, a caller key's name in ``serve``.

In a pod the API binds 127.0.0.1, so every caller is a container of the pod and has the
pod's identity, which the webhook hands the sidecar (``MODELROUTE_SERVICE_ACCOUNT``).
In ``serve`` callers present a caller key (``--caller-keys``, a Secret document whose data
keys are caller names and values their keys, one per line). Keys are kept only as SHA-256
digests, computed at load: a request costs one hash and one dict lookup. Looking a digest
up in a dict leaks, through timing, at most how much of a *digest* matched, which tells an
attacker nothing about a key, so no constant-time compare is needed on top.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from .config import split_keys
from .errors import GatewayError
from .syntax import CALLER_NAME_MAX, CALLER_NAME_PATTERN

# What an OpenAI SDK sends (Authorization: Bearer), what an Anthropic one does (x-api-key),
# and what a Gemini one does (x-goog-api-key, or ?key= in the URL).
_BEARER = "bearer "
_KEY_HEADERS = ("x-api-key", "x-goog-api-key")


class Request(Protocol):
    """What identifying a caller reads of a request (aiohttp's ``web.Request``)."""

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def query(self) -> Mapping[str, str]: ...


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def unauthenticated(why: str) -> GatewayError:
    # Never quotes what the caller sent: a wrong key may be a real key of something else.
    return GatewayError(401, f"{why}: send a caller key as 'Authorization: Bearer <key>', 'x-api-key: <key>' "
                        "or (Gemini clients) 'x-goog-api-key: <key>'", type="authentication_error",
                        code="invalid_api_key")


class Callers:
    """Maps a request's headers to the caller's name (``None``: anonymous)."""

    __slots__ = ("by_digest", "fixed", "names")

    def __init__(self, fixed: str | None = None, keys: Mapping[str, list[str]] | None = None) -> None:
        self.fixed = fixed
        # None: no caller keys, every caller is `fixed`. Otherwise digest -> caller name.
        self.by_digest: dict[bytes, str] | None = None
        self.names: tuple[str | None, ...] = (fixed,)
        if keys is not None:
            self.by_digest = {_digest(k): name for name, ks in keys.items() for k in ks}
            self.names = tuple(sorted(keys))

    def identify(self, request: Request) -> str | None:
        """The caller's name; a 401 when caller keys are required and none of those sent matches."""
        table = self.by_digest
        if table is None:
            return self.fixed
        headers = request.headers
        sent: list[str] = []
        auth = headers.get("authorization")
        if auth is not None and auth[:7].lower() == _BEARER:
            sent.append(auth[7:])
        sent.extend(v for h in _KEY_HEADERS if (v := headers.get(h)) is not None)
        if not sent and "key" in request.query:  # only then: most requests have no query to parse
            sent.append(request.query["key"])
        for key in sent:
            name = table.get(_digest(key.strip()))
            if name is not None:
                return name
        raise unauthenticated("Invalid caller key" if sent else "Missing caller key")


class CallerKeysError(ValueError):
    """The caller-keys file is unusable; the message names the file and caller, never a key."""


def load_caller_keys(path: str | Path) -> Callers:
    """A Secret document (``data`` base64, or ``stringData``): caller name -> keys, one per line."""
    import yaml

    from .loader import _yaml_loader, _yaml_problem

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise CallerKeysError(f"{p}: unreadable ({e.strerror})") from None
    except UnicodeDecodeError:
        raise CallerKeysError(f"{p}: not UTF-8 text") from None
    try:
        docs = [d for d in yaml.load_all(text, Loader=_yaml_loader()) if d is not None]
    except yaml.YAMLError as e:
        raise CallerKeysError(f"{p}: invalid YAML: {_yaml_problem(e)}") from None
    if len(docs) != 1 or not isinstance(docs[0], dict) or docs[0].get("kind") != "Secret":
        raise CallerKeysError(f"{p}: expected exactly one Secret document (data or stringData: caller name -> key)")
    doc = docs[0]
    keys: dict[str, list[str]] = {}
    for field, encoded in (("data", True), ("stringData", False)):
        values = doc.get(field) or {}
        if not isinstance(values, dict):
            raise CallerKeysError(f"{p}: {field} is not a mapping")
        for name, value in values.items():
            where = f"{p}: {field}.{name}"
            if not isinstance(name, str) or not name or len(name) > CALLER_NAME_MAX \
                    or not _name_ok(name):
                raise CallerKeysError(f"{p}: {field}: caller names are 1-{CALLER_NAME_MAX} letters, digits, "
                                      f"'-', '_' or '.' (pattern {CALLER_NAME_PATTERN})")
            if not isinstance(value, str):
                raise CallerKeysError(f"{where}: not a string")
            if encoded:
                try:
                    value = base64.b64decode(value, validate=True).decode("utf-8")
                except (binascii.Error, UnicodeDecodeError):
                    raise CallerKeysError(f"{where}: not valid base64 (put a plain key under stringData)") from None
            found = split_keys(value)
            if not found:
                raise CallerKeysError(f"{where}: holds no key")
            keys[name] = found  # stringData wins over data, as the API server merges them
    if not keys:
        raise CallerKeysError(f"{p}: no caller keys (data or stringData: caller name -> key)")
    owner: dict[str, str] = {}
    for name, ks in keys.items():
        for k in ks:
            if k in owner and owner[k] != name:
                raise CallerKeysError(f"{p}: callers {owner[k]} and {name} share a key: each key names one caller")
            owner[k] = name
    return Callers(keys=keys)


_CALLER_NAME = re.compile(CALLER_NAME_PATTERN)


def _name_ok(name: str) -> bool:
    return _CALLER_NAME.fullmatch(name) is not None
