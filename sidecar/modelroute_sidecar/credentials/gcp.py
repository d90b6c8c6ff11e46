"""Google Cloud: the GKE metadata server, or workload identity federation from the pod's
projected token (Google STS token exchange, then optionally the service account's token
from the IAM Credentials API).

google-auth does the protocol work (``compute_engine.Credentials`` for the metadata
server, honouring GCE_METADATA_HOST; ``identity_pool.Credentials`` for the RFC 8693
exchange and the impersonation). It is imported only when a ProviderKey uses Google's
workload identity; its calls block, so they run in a thread, once per renewal.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from datetime import UTC
from pathlib import Path
from typing import Any

from ..config import GcpIdentity
from .base import BearerToken, CredentialError, RefreshingSource
from .files import read_token

JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"


def gcp_token_file(audience: str, env: Mapping[str, str]) -> Path:
    from .projection import TOKEN_DIR_ENV, gcp_token_path

    return gcp_token_path(env.get(TOKEN_DIR_ENV), audience)


def _safe(e: Exception) -> str:
    """google-auth's error text quotes the endpoint's answer; keep only the OAuth error code."""
    m = re.search(r"Error code (\w+)", str(e)) or re.search(r'"error"\s*:\s*"(\w+)"', str(e))
    return f"{type(e).__name__}" + (f" ({m.group(1)})" if m else "")


class _GoogleSource(RefreshingSource[BearerToken]):
    def __init__(self, label: str) -> None:
        super().__init__(label)
        self._credentials: Any = None
        self._request: Any = None

    def _build(self) -> Any:
        raise NotImplementedError

    def _refresh_sync(self) -> BearerToken:
        import google.auth.exceptions
        from google.auth.transport.requests import Request

        self._check()
        if self._credentials is None:
            self._credentials = self._build()
            self._request = Request()
        creds = self._credentials
        try:
            creds.refresh(self._request)
        except (google.auth.exceptions.GoogleAuthError, OSError, ValueError) as e:
            raise CredentialError(f"{self.label}: {_safe(e)}") from None
        expiry = creds.expiry  # naive UTC
        return BearerToken(creds.token, expiry.replace(tzinfo=UTC).timestamp() if expiry else None)

    def _check(self) -> None:
        """Raise a clear CredentialError before the library would raise an unclear one."""

    async def fetch(self) -> BearerToken:
        return await asyncio.to_thread(self._refresh_sync)


class MetadataServer(_GoogleSource):
    """GKE: the metadata server answers for the pod's ServiceAccount (Workload Identity
    Federation for GKE), ``GET /computeMetadata/v1/instance/service-accounts/default/token``."""

    def __init__(self, pk_name: str, scopes: tuple[str, ...]) -> None:
        super().__init__(f"ProviderKey {pk_name} (GKE metadata server)")
        self.scopes = scopes

    def _build(self) -> Any:
        from google.auth import compute_engine

        return compute_engine.Credentials(scopes=list(self.scopes))


class Federation(_GoogleSource):
    """Workload identity federation: the projected token (audience = the pool provider)
    exchanged at Google's STS; with ``service_account``, for that account's token."""

    def __init__(self, pk_name: str, cfg: GcpIdentity, token_file: Path) -> None:
        via = f" as {cfg.service_account}" if cfg.service_account else ""
        super().__init__(f"ProviderKey {pk_name} (Google workload identity federation{via})")
        assert cfg.audience is not None
        self.cfg = cfg
        self.token_file = token_file

    def _check(self) -> None:
        read_token(self.token_file, self.label)

    def _build(self) -> Any:
        from google.auth import identity_pool

        cfg = self.cfg
        impersonation = None
        if cfg.service_account:
            impersonation = (f"{cfg.iam_credentials_url.rstrip('/')}/v1/projects/-/serviceAccounts/"
                             f"{cfg.service_account}:generateAccessToken")
        return identity_pool.Credentials(
            audience=cfg.audience, subject_token_type=JWT_TOKEN_TYPE, token_url=cfg.token_url,
            credential_source={"file": str(self.token_file)}, service_account_impersonation_url=impersonation,
            scopes=list(cfg.scopes))


def gcp_source(pk_name: str, cfg: GcpIdentity, env: Mapping[str, str]) -> MetadataServer | Federation:
    if cfg.audience is None:
        return MetadataServer(pk_name, cfg.scopes)
    return Federation(pk_name, cfg, gcp_token_file(cfg.audience, env))
