"""The projected ServiceAccount token, read from its file at each exchange (kubelet
renews the file in place; a cached copy would expire)."""

from __future__ import annotations

from pathlib import Path

from .base import CredentialError


def read_token(path: Path, label: str) -> str:
    try:
        token = path.read_text("utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise CredentialError(f"{label}: cannot read the projected token {path}: {type(e).__name__} (is the pod "
                              "injected by a webhook that knew this ProviderKey? restart it to project the token)") \
            from None
    if not token:
        raise CredentialError(f"{label}: the projected token {path} is empty")
    return token
