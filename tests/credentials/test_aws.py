"""AWS credentials from the pod's token: IRSA (STS AssumeRoleWithWebIdentity) and EKS Pod
Identity, against a fake STS / agent that verifies the token against the issuer's JWKS.
Credentials live 4 seconds here, so renewal happens while many callers ask at once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from modelroute_sidecar.config import AwsIdentity, from_data
from modelroute_sidecar.credentials import AwsCredentials, CredentialError, UnavailableSource, source_for
from modelroute_sidecar.credentials.aws import PodIdentity, WebIdentity, aws_source
from tests.fakes.aws_sts import POD_IDENTITY_AUDIENCE, STS_AUDIENCE, FakeAwsSts
from tests.fakes.oidc import TestIssuer

ROLE = "arn:aws:iam::111122223333:role/bedrock-invoke"
SUBJECT = "system:serviceaccount:apps:chatbot"


def irsa(tmp_path: Path, sts: FakeAwsSts, monkeypatch: pytest.MonkeyPatch, **cfg: str) -> WebIdentity:
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", sts.url)  # botocore's own override, as for a VPC endpoint
    src = aws_source("bedrock", from_data({"roleArn": ROLE, **cfg}, AwsIdentity),
                     {"AWS_WEB_IDENTITY_TOKEN_FILE": str(tmp_path / "aws-sts"), "MODELROUTE_NAMESPACE": "apps"})
    assert isinstance(src, WebIdentity)
    return src


async def hammer(src: WebIdentity | PodIdentity, sts: FakeAwsSts, issued: int) -> list[AwsCredentials]:
    """Many callers asking until ``issued`` credentials were issued in all; every answer
    checked to be unexpired when it was given."""
    got: list[AwsCredentials] = []
    stop = issued
    deadline = time.monotonic() + 60

    async def caller() -> None:
        while len(sts.issued) < stop and time.monotonic() < deadline:
            c = await src.get()
            assert c.expires_at is not None and c.expires_at > time.time()
            got.append(c)
            await asyncio.sleep(0.01)

    await asyncio.gather(*[caller() for _ in range(50)])
    return got


async def test_irsa_exchanges_the_token_at_sts_and_renews_before_expiry(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    issuer = TestIssuer()
    issuer.write(tmp_path / "aws-sts", STS_AUDIENCE, namespace="apps", service_account="chatbot")
    async with FakeAwsSts(issuer.verifier(), {ROLE: [SUBJECT]}, lifetime=4) as sts:
        src = irsa(tmp_path, sts, monkeypatch)
        got = await hammer(src, sts, issued=4)
        await src.close()
    assert len(sts.issued) >= 4 and sts.max_inflight == 1
    for c in got:  # exactly what STS issued, session token and all
        issued = sts.issued[c.access_key_id]
        assert (c.secret_access_key, c.session_token) == (issued.secret_access_key, issued.session_token)
    assert len({c.access_key_id for c in got}) >= 3
    calls = sts.requests_to("/")
    assert len(calls) == len(sts.issued)  # one STS call per credential, not per caller
    form = dict(x.split("=", 1) for x in calls[0].raw.decode().split("&"))
    assert form["Action"] == "AssumeRoleWithWebIdentity" and form["Version"] == "2011-06-15"
    assert form["RoleSessionName"] == "modelroute-apps-bedrock"
    assert "authorization" not in calls[0].headers  # unsigned: the token is the proof
    assert sts.verifier.verified == len(calls)


@pytest.mark.parametrize(("audience", "subject", "lifetime", "code"), [
    ("api://AzureADTokenExchange", "chatbot", 3600, "InvalidIdentityToken"),
    (STS_AUDIENCE, "intruder", 3600, "AccessDenied"),
    (STS_AUDIENCE, "chatbot", -30, "ExpiredTokenException"),
])
async def test_sts_refusals_name_the_code_never_the_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         audience: str, subject: str, lifetime: float,
                                                         code: str) -> None:
    issuer = TestIssuer()
    token = issuer.write(tmp_path / "aws-sts", audience, namespace="apps", service_account=subject,
                         lifetime=lifetime)
    async with FakeAwsSts(issuer.verifier(), {ROLE: [SUBJECT]}, lifetime=4) as sts:
        src = irsa(tmp_path, sts, monkeypatch)
        with pytest.raises(CredentialError) as e:
            await src.get()
        await src.close()
    assert f"refused: {code}" in str(e.value) and ROLE in str(e.value)
    assert token not in str(e.value) and token[-20:] not in str(e.value)
    assert sts.issued == {}


async def test_a_token_of_another_issuer_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trusted, other = TestIssuer(), TestIssuer()
    other.write(tmp_path / "aws-sts", STS_AUDIENCE, namespace="apps", service_account="chatbot")
    async with FakeAwsSts(trusted.verifier(), {ROLE: [SUBJECT]}) as sts:
        src = irsa(tmp_path, sts, monkeypatch)
        with pytest.raises(CredentialError, match="InvalidIdentityToken"):
            await src.get()
        await src.close()
    assert sts.verifier.rejected == ["signature"]


async def test_eks_pod_identity_uses_the_agent_with_the_token_as_authorization(tmp_path: Path) -> None:
    issuer = TestIssuer()
    token_file = tmp_path / "eks-pod-identity"
    issuer.write(token_file, POD_IDENTITY_AUDIENCE, namespace="apps", service_account="chatbot")
    async with FakeAwsSts(issuer.verifier(), {}, pod_identity={SUBJECT: ROLE}, lifetime=4) as agent:
        src = aws_source("bedrock", AwsIdentity(), {"AWS_CONTAINER_CREDENTIALS_FULL_URI": f"{agent.url}/v1/credentials",
                                                    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": str(token_file)})
        assert isinstance(src, PodIdentity)
        got = await hammer(src, agent, issued=3)
        await src.close()
    assert agent.requests_to("/v1/credentials")[0].headers["authorization"] == token_file.read_text()
    assert {c.access_key_id for c in got} <= set(agent.issued) and len(agent.issued) >= 3


async def test_missing_settings_make_an_unavailable_source_not_a_failed_load() -> None:
    from modelroute_sidecar.config import ProviderKeyConfig

    pk = from_data({"name": "bedrock", "provider": "openai-compatible", "baseURL": "http://x",
                    "workloadIdentity": {"aws": {"roleArn": ROLE}}}, ProviderKeyConfig)
    src = source_for(pk, env={})
    assert isinstance(src, UnavailableSource)
    with pytest.raises(CredentialError, match="AWS_WEB_IDENTITY_TOKEN_FILE not set"):
        await src.get()


@pytest.mark.parametrize(("cfg", "env", "endpoint"), [
    ({"region": "eu-west-1"}, {}, "https://sts.eu-west-1.amazonaws.com"),
    ({}, {"AWS_REGION": "ap-southeast-2"}, "https://sts.ap-southeast-2.amazonaws.com"),
    ({}, {}, "https://sts.us-east-1.amazonaws.com"),
])
def test_the_regional_sts_endpoint(cfg: dict[str, str], env: dict[str, str], endpoint: str,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("AWS_ENDPOINT_URL_STS", "AWS_ENDPOINT_URL", "AWS_STS_REGIONAL_ENDPOINTS", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    src = aws_source("bedrock", from_data({"roleArn": ROLE, **cfg}, AwsIdentity),
                     {"AWS_WEB_IDENTITY_TOKEN_FILE": "/t", **env})
    assert isinstance(src, WebIdentity)
    assert src._sts().meta.endpoint_url == endpoint
