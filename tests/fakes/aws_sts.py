"""`FakeAwsSts`: AWS STS ``AssumeRoleWithWebIdentity`` (IRSA) and the EKS Pod Identity agent.

STS (Query API, version 2011-06-15): ``POST /`` form-encoded (or ``GET /?...``) with
``Action=AssumeRoleWithWebIdentity``, ``Version``, ``RoleArn``, ``RoleSessionName``,
``WebIdentityToken`` and optional ``DurationSeconds``; unsigned. As AWS does for a role
whose trust policy names the cluster's OIDC provider, the token must verify against the
issuer's JWKS, carry ``aud: sts.amazonaws.com`` and a trusted ``sub``, and not be expired.
Answers are the documented XML (``AssumeRoleWithWebIdentityResponse`` with
``Credentials/{AccessKeyId,SecretAccessKey,SessionToken,Expiration}``; errors
``ErrorResponse/Error/{Type,Code,Message}``: InvalidIdentityToken, ExpiredTokenException,
AccessDenied, ValidationError).

Pod Identity agent: ``GET /v1/credentials`` with the projected token (audience
``pods.eks.amazonaws.com``) as the bare ``Authorization`` header; JSON
``{AccessKeyId, SecretAccessKey, Token, AccountId, Expiration}``.

Issued credentials are remembered (:attr:`issued`), so a fake AWS service (Bedrock) can
check what it is signed with.
"""

from __future__ import annotations

import re
import secrets
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from xml.sax.saxutils import escape

from aiohttp import web

from .base import FakeUpstream, json_response
from .oidc import TokenRejected, Verifier

NS = "https://sts.amazonaws.com/doc/2011-06-15/"
STS_AUDIENCE = "sts.amazonaws.com"
POD_IDENTITY_AUDIENCE = "pods.eks.amazonaws.com"
ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::(\d{12}):role/(.+)$")
SESSION_NAME = re.compile(r"^[\w+=,.@-]{2,64}$")


@dataclass(frozen=True)
class Issued:
    secret_access_key: str
    session_token: str
    expires_at: float
    role_arn: str


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeAwsSts(FakeUpstream):
    """STS for roles whose trust policies are ``trust`` (role ARN -> trusted subjects), and
    the pod identity agent for ``pod_identity`` (subject -> role ARN)."""

    provider = "aws-sts"

    def __init__(self, verifier: Verifier, trust: Mapping[str, list[str]], *, lifetime: float = 3600,
                 pod_identity: Mapping[str, str] | None = None) -> None:
        super().__init__(keys=())
        self.verifier = verifier
        self.trust = {k: list(v) for k, v in trust.items()}
        self.pod_identity = dict(pod_identity or {})
        self.lifetime = lifetime  # seconds the credentials live (short in tests: renewal happens)
        self.issued: dict[str, Issued] = {}  # access key id -> what goes with it
        self.inflight = 0
        self.max_inflight = 0

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/", self.sts)
        app.router.add_get("/v1/credentials", self.credentials_endpoint)

    def error_response(self, status: int, message: str | None = None, *,
                       retry_after: float | None = None) -> web.Response:
        return self._error(status, "Receiver" if status >= 500 else "Sender",
                           "ServiceUnavailable" if status >= 500 else "InvalidAction", message or f"HTTP {status}")

    @staticmethod
    def _error(status: int, kind: str, code: str, message: str) -> web.Response:
        body = (f'<ErrorResponse xmlns="{NS}">\n  <Error>\n    <Type>{kind}</Type>\n    <Code>{code}</Code>\n'
                f'    <Message>{escape(message)}</Message>\n  </Error>\n  <RequestId>{uuid.uuid4()}</RequestId>\n'
                '</ErrorResponse>\n')
        return web.Response(status=status, body=body.encode(), content_type="text/xml")

    def _credentials(self, role_arn: str) -> tuple[str, Issued]:
        key_id = "ASIA" + secrets.token_hex(8).upper()
        issued = Issued(secrets.token_urlsafe(30), "IQoJb3JpZ2luX2VjE" + secrets.token_urlsafe(120),
                        time.time() + self.lifetime, role_arn)
        self.issued[key_id] = issued
        return key_id, issued

    async def sts(self, request: web.Request) -> web.Response:
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            return await self._sts(request)
        finally:
            self.inflight -= 1

    async def _sts(self, request: web.Request) -> web.Response:
        params: dict[str, str] = dict(request.query)
        if request.method == "POST":
            params.update({k: str(v) for k, v in (await request.post()).items()})
        if params.get("Action") != "AssumeRoleWithWebIdentity":
            return self._error(400, "Sender", "InvalidAction", f"Could not find operation {params.get('Action')} "
                                                               "for version 2011-06-15")
        if params.get("Version") != "2011-06-15":
            return self._error(400, "Sender", "InvalidAction", "Unsupported version")
        for field in ("RoleArn", "RoleSessionName", "WebIdentityToken"):
            if not params.get(field):
                return self._error(400, "Sender", "ValidationError", f"1 validation error detected: Value null at "
                                   f"'{field[0].lower() + field[1:]}' failed to satisfy constraint: Member must "
                                   "not be null")
        role, session = params["RoleArn"], params["RoleSessionName"]
        if not SESSION_NAME.match(session):
            return self._error(400, "Sender", "ValidationError", "1 validation error detected: Value at "
                               "'roleSessionName' failed to satisfy constraint: Member must satisfy regular "
                               "expression pattern: [\\w+=,.@-]*")
        m = ROLE_ARN.match(role)
        if m is None:
            return self._error(400, "Sender", "ValidationError", f"{role} is invalid")
        duration = int(params.get("DurationSeconds", "3600"))
        if not 900 <= duration <= 43200:
            return self._error(400, "Sender", "ValidationError", "DurationSeconds out of range")
        try:
            claims = self.verifier.verify(params["WebIdentityToken"], STS_AUDIENCE)
        except TokenRejected as e:
            if e.reason == "expired":
                return self._error(400, "Sender", "ExpiredTokenException", "Token expired: current date/time "
                                   f"{_iso(time.time())} must be before the expiration date/time")
            if e.reason in ("audience", "issuer"):
                return self._error(400, "Sender", "InvalidIdentityToken", "Incorrect token audience")
            return self._error(400, "Sender", "InvalidIdentityToken", "Couldn't retrieve verification key from "
                               "your identity provider" if e.reason == "signature" else "Invalid token")
        if claims["sub"] not in self.trust.get(role, []):
            return self._error(403, "Sender", "AccessDenied", "Not authorized to perform sts:AssumeRoleWithWebIdentity")
        key_id, c = self._credentials(role)
        account, name = m.group(1), m.group(2).split("/")[-1]
        role_id = "AROA" + secrets.token_hex(8).upper()
        body = f"""<AssumeRoleWithWebIdentityResponse xmlns="{NS}">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>{escape(claims["sub"])}</SubjectFromWebIdentityToken>
    <Audience>{STS_AUDIENCE}</Audience>
    <AssumedRoleUser>
      <Arn>arn:aws:sts::{account}:assumed-role/{escape(name)}/{escape(session)}</Arn>
      <AssumedRoleId>{role_id}:{escape(session)}</AssumedRoleId>
    </AssumedRoleUser>
    <Credentials>
      <SessionToken>{c.session_token}</SessionToken>
      <SecretAccessKey>{c.secret_access_key}</SecretAccessKey>
      <Expiration>{_iso(c.expires_at)}</Expiration>
      <AccessKeyId>{key_id}</AccessKeyId>
    </Credentials>
    <Provider>{escape(claims["iss"].removeprefix("https://"))}</Provider>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata>
    <RequestId>{uuid.uuid4()}</RequestId>
  </ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>
"""
        return web.Response(body=body.encode(), content_type="text/xml")

    async def credentials_endpoint(self, request: web.Request) -> web.Response:
        token = request.headers.get("Authorization", "")
        try:
            claims = self.verifier.verify(token, POD_IDENTITY_AUDIENCE)
        except TokenRejected as e:
            return json_response({"code": "InvalidTokenException" if e.reason != "expired" else
                                  "ExpiredTokenException", "message": e.detail}, status=400)
        role = self.pod_identity.get(claims["sub"])
        if role is None:
            return json_response({"code": "AccessDeniedException",
                                  "message": "no Pod Identity association for the service account"}, status=403)
        key_id, c = self._credentials(role)
        m = ROLE_ARN.match(role)
        return json_response({"AccessKeyId": key_id, "SecretAccessKey": c.secret_access_key, "Token": c.session_token,
                              "AccountId": m.group(1) if m else "", "Expiration": _iso(c.expires_at)})
