"""Azure: Entra ID workload identity (the pod's projected token as a client assertion).

Microsoft documents the exchange as the OAuth 2.0 client credentials grant with a
federated credential: ``POST {authority}/{tenant}/oauth2/v2.0/token`` with
``client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer``, the
token file's content as ``client_assertion``, and ``scope``. The answer is JSON with
``access_token`` and ``expires_in``. One form POST: written here with aiohttp rather than
pulling azure-identity (msal, azure-core, requests) into the sidecar.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

import aiohttp

from ..config import AZURE_AUTHORITY, AzureIdentity
from .base import BearerToken, CredentialError, RefreshingSource
from .files import read_token

TOKEN_FILE_ENV = "AZURE_FEDERATED_TOKEN_FILE"
FETCH_TIMEOUT = aiohttp.ClientTimeout(total=30, connect=10)


class EntraWorkloadIdentity(RefreshingSource[BearerToken]):
    def __init__(self, pk_name: str, tenant_id: str, client_id: str, authority: str, scope: str,
                 token_file: Path) -> None:
        super().__init__(f"ProviderKey {pk_name} (azure workload identity, client {client_id})")
        self.url = f"{authority.rstrip('/')}/{quote(tenant_id, safe='')}/oauth2/v2.0/token"
        self.client_id = client_id
        self.scope = scope
        self.token_file = token_file

    async def fetch(self) -> BearerToken:
        assertion = read_token(self.token_file, self.label)
        form = {
            "grant_type": "client_credentials",
            "client_id": self.client_id,
            "scope": self.scope,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion,
        }
        started = time.time()
        try:
            async with aiohttp.ClientSession(timeout=FETCH_TIMEOUT) as session, \
                    session.post(self.url, data=form, headers={"accept": "application/json"}) as resp:
                body = await resp.json(content_type=None)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            raise CredentialError(f"{self.label}: token endpoint {self.url} unreachable or unreadable: "
                                  f"{type(e).__name__}") from None
        if status != 200 or not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
            code = body.get("error") if isinstance(body, dict) else None
            raise CredentialError(f"{self.label}: token endpoint {self.url} answered HTTP {status}"
                                  + (f" ({code})" if isinstance(code, str) else ""))
        try:
            expires_in = float(body.get("expires_in", 3600))
        except (TypeError, ValueError):
            expires_in = 3600.0
        return BearerToken(body["access_token"], started + expires_in)


def azure_source(pk_name: str, cfg: AzureIdentity, env: Mapping[str, str]) -> EntraWorkloadIdentity:
    tenant = cfg.tenant_id or env.get("AZURE_TENANT_ID", "")
    client = cfg.client_id or env.get("AZURE_CLIENT_ID", "")
    authority = cfg.authority_host or env.get("AZURE_AUTHORITY_HOST") or AZURE_AUTHORITY
    token_file = env.get(TOKEN_FILE_ENV, "")
    needed = (("tenantId (or AZURE_TENANT_ID)", tenant), ("clientId (or AZURE_CLIENT_ID)", client),
              (TOKEN_FILE_ENV, token_file))
    missing = [what for what, v in needed if not v]
    if missing:
        raise CredentialError(f"ProviderKey {pk_name} (azure workload identity): {', '.join(missing)} not set")
    return EntraWorkloadIdentity(pk_name, tenant, client, authority, cfg.scope, Path(token_file))
