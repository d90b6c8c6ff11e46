"""AWS: IRSA (STS AssumeRoleWithWebIdentity with the pod's projected token) and EKS Pod
Identity (the pod identity agent's container credentials endpoint).

botocore does the protocol work: the STS call (the documented Query API and its XML
answer, the regional endpoint, retries) and the container credentials fetch (the allowed
hosts, the Authorization header). It is the library the Bedrock adapter signs with, so a
sidecar that talks to AWS loads it anyway, and one that does not never imports this
module. Its calls block, so they run in a thread; they happen once per renewal, not per
request.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from ..config import AwsIdentity
from .base import AwsCredentials, CredentialError, RefreshingSource
from .files import read_token

TOKEN_FILE_ENV = "AWS_WEB_IDENTITY_TOKEN_FILE"
POD_IDENTITY_URI_ENV = "AWS_CONTAINER_CREDENTIALS_FULL_URI"
POD_IDENTITY_TOKEN_ENV = "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"
DEFAULT_REGION = "us-east-1"


def _timestamp(value: Any) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def session_name(pk_name: str, env: Mapping[str, str]) -> str:
    """modelroute-NAMESPACE-PROVIDERKEY, in RoleSessionName's alphabet and length."""
    ns = env.get("MODELROUTE_NAMESPACE", "")
    raw = "-".join(p for p in ("modelroute", ns, pk_name) if p)
    return re.sub(r"[^\w+=,.@-]", "-", raw)[:64]


class WebIdentity(RefreshingSource[AwsCredentials]):
    """IRSA: AssumeRoleWithWebIdentity at the regional STS endpoint (unsigned: the token is
    the proof). ``AWS_ENDPOINT_URL_STS`` points botocore elsewhere (tests, VPC endpoints)."""

    def __init__(self, pk_name: str, role_arn: str, region: str, session: str, token_file: Path) -> None:
        super().__init__(f"ProviderKey {pk_name} (AWS role {role_arn})")
        self.role_arn = role_arn
        self.region = region
        self.session_name = session
        self.token_file = token_file
        self._client: Any = None

    def _sts(self) -> Any:
        if self._client is None:
            import botocore.session
            from botocore import UNSIGNED
            from botocore.config import Config

            self._client = botocore.session.Session().create_client(
                "sts", region_name=self.region,
                config=Config(signature_version=UNSIGNED, retries={"mode": "standard", "max_attempts": 3},
                              connect_timeout=10, read_timeout=30))
        return self._client

    def _assume(self) -> AwsCredentials:
        from botocore.exceptions import BotoCoreError, ClientError

        token = read_token(self.token_file, self.label)
        try:
            answer = self._sts().assume_role_with_web_identity(
                RoleArn=self.role_arn, RoleSessionName=self.session_name, WebIdentityToken=token)
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "error")
            raise CredentialError(f"{self.label}: STS AssumeRoleWithWebIdentity refused: {code}") from None
        except BotoCoreError as e:
            raise CredentialError(f"{self.label}: STS unreachable: {type(e).__name__}") from None
        c = answer["Credentials"]
        return AwsCredentials(c["AccessKeyId"], c["SecretAccessKey"], c.get("SessionToken"),
                              _timestamp(c["Expiration"]))

    async def fetch(self) -> AwsCredentials:
        return await asyncio.to_thread(self._assume)


class PodIdentity(RefreshingSource[AwsCredentials]):
    """EKS Pod Identity: GET the agent's endpoint with the projected token as Authorization."""

    def __init__(self, pk_name: str, uri: str, token_file: Path) -> None:
        super().__init__(f"ProviderKey {pk_name} (EKS Pod Identity)")
        self.uri = uri
        self.token_file = token_file

    def _retrieve(self) -> AwsCredentials:
        from botocore.exceptions import MetadataRetrievalError
        from botocore.utils import ContainerMetadataFetcher

        token = read_token(self.token_file, self.label)
        try:
            c = ContainerMetadataFetcher().retrieve_full_uri(self.uri, headers={"Authorization": token})
        except MetadataRetrievalError:
            raise CredentialError(f"{self.label}: the credentials endpoint {self.uri} gave no credentials") from None
        except ValueError as e:  # botocore refuses hosts that are not the agent's or loopback
            raise CredentialError(f"{self.label}: {e}") from None
        try:
            return AwsCredentials(c["AccessKeyId"], c["SecretAccessKey"], c.get("Token"), _timestamp(c["Expiration"]))
        except (KeyError, ValueError):
            raise CredentialError(f"{self.label}: the credentials endpoint's answer lacks credentials") from None

    async def fetch(self) -> AwsCredentials:
        return await asyncio.to_thread(self._retrieve)


def aws_source(pk_name: str, cfg: AwsIdentity, env: Mapping[str, str]) -> WebIdentity | PodIdentity:
    if cfg.role_arn is not None:
        token_file = env.get(TOKEN_FILE_ENV)
        if not token_file:
            raise CredentialError(f"ProviderKey {pk_name} (AWS role {cfg.role_arn}): {TOKEN_FILE_ENV} not set "
                                  "(the modelroute webhook sets it; restart pods started before the ProviderKey)")
        region = cfg.region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or DEFAULT_REGION
        return WebIdentity(pk_name, cfg.role_arn, region, cfg.session_name or session_name(pk_name, env),
                           Path(token_file))
    uri, token_file = env.get(POD_IDENTITY_URI_ENV), env.get(POD_IDENTITY_TOKEN_ENV)
    if not uri or not token_file:
        raise CredentialError(f"ProviderKey {pk_name} (EKS Pod Identity): {POD_IDENTITY_URI_ENV} and "
                              f"{POD_IDENTITY_TOKEN_ENV} must be set")
    return PodIdentity(pk_name, uri, Path(token_file))
