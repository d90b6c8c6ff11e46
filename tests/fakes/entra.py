"""`FakeEntra`: Microsoft Entra ID's v2.0 token endpoint for workload identity federation.

``POST /{tenant}/oauth2/v2.0/token`` (form-encoded) with ``grant_type=client_credentials``,
``client_id``, ``scope``, ``client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer``
and ``client_assertion`` (the pod's projected ServiceAccount token). As Entra does for an
app with a federated identity credential, the assertion must verify against the issuer's
JWKS and carry the credential's issuer, subject and audience (``api://AzureADTokenExchange``)
and not be expired. The answer is ``{"token_type": "Bearer", "expires_in", "ext_expires_in",
"access_token"}``; errors are ``{"error", "error_description": "AADSTS...", "error_codes", ...}``
with 400/401. Access tokens are RS256 JWTs for the scope's resource, signed by the fake's
own key: :meth:`check_access_token` is what a resource (the Azure OpenAI fake) calls.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from .base import FakeUpstream, json_response
from .oidc import TokenRejected, Verifier, sign_access_token

AUDIENCE = "api://AzureADTokenExchange"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

# AADSTS codes Entra answers for the failures a federated assertion can have.
_AADSTS = {
    "expired": (700024, "invalid_client", "Client assertion is not within its valid time range."),
    "audience": (700212, "invalid_client", "No matching federated identity record found for presented "
                                           "assertion audience."),
    "subject": (700213, "invalid_client", "No matching federated identity record found for presented "
                                          "assertion subject."),
    "issuer": (700211, "invalid_client", "No matching federated identity record found for presented "
                                         "assertion issuer."),
    "signature": (5002738, "invalid_client", "Error validating credentials. Invalid JWT token. "
                                              "Signature validation failed."),
    "malformed": (50027, "invalid_request", "JWT token is invalid or malformed."),
}


class FakeEntra(FakeUpstream):
    """Entra ID for one tenant. ``federated`` maps client_id -> trusted subjects
    (``system:serviceaccount:NS:SA``) of the issuer ``verifier`` checks."""

    provider = "entra"

    def __init__(self, tenant: str, verifier: Verifier, federated: Mapping[str, list[str]], *,
                 lifetime: float = 3600) -> None:
        super().__init__(keys=())
        self.tenant = tenant
        self.verifier = verifier
        self.federated = {k: list(v) for k, v in federated.items()}
        self.lifetime = lifetime  # seconds an access token lives (short in tests: refresh happens)
        self.issued = 0
        self.inflight = 0
        self.max_inflight = 0  # token requests at once: a single-flight client never exceeds 1
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._kid = uuid.uuid4().hex
        self._public = {self._kid: self._key.public_key()}

    @property
    def authority(self) -> str:
        return self.url

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self.token)

    def error_response(self, status: int, message: str | None = None, *,
                       retry_after: float | None = None) -> web.Response:
        return self._error(status, "temporarily_unavailable" if status >= 500 else "invalid_request", 0,
                           message or f"HTTP {status}")

    def _error(self, status: int, error: str, code: int, description: str) -> web.Response:
        now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        trace = str(uuid.uuid4())
        return json_response({
            "error": error,
            "error_description": f"AADSTS{code}: {description} Trace ID: {trace} Correlation ID: {uuid.uuid4()} "
                                 f"Timestamp: {now}",
            "error_codes": [code], "timestamp": now, "trace_id": trace, "correlation_id": str(uuid.uuid4()),
        }, status=status)

    async def token(self, request: web.Request) -> web.Response:
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            return await self._token(request)
        finally:
            self.inflight -= 1

    async def _token(self, request: web.Request) -> web.Response:
        if request.match_info["tenant"] != self.tenant:
            return self._error(400, "invalid_request", 90002, f"Tenant '{request.match_info['tenant']}' not found.")
        if request.content_type != "application/x-www-form-urlencoded":
            return self._error(400, "invalid_request", 900144, "The request body must contain the following "
                                                               "parameter: 'grant_type'.")
        form = await request.post()
        for field in ("grant_type", "client_id", "scope", "client_assertion_type", "client_assertion"):
            if not isinstance(form.get(field), str) or not form[field]:
                return self._error(400, "invalid_request", 900144,
                                   f"The request body must contain the following parameter: '{field}'.")
        if form["grant_type"] != "client_credentials":
            return self._error(400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type.")
        if form["client_assertion_type"] != ASSERTION_TYPE:
            return self._error(400, "invalid_request", 50027, "Invalid client_assertion_type.")
        client = str(form["client_id"])
        if client not in self.federated:
            return self._error(400, "unauthorized_client", 700016, f"Application with identifier '{client}' was "
                                                                   "not found in the directory.")
        scope = str(form["scope"])
        if not scope.endswith("/.default"):
            return self._error(400, "invalid_scope", 1002012, "The provided value for scope is not valid. Client "
                                                              "credential flows must have a scope value with "
                                                              "/.default suffixed to the resource identifier.")
        try:
            claims = self.verifier.verify(str(form["client_assertion"]), AUDIENCE, self.federated[client])
        except TokenRejected as e:
            code, error, description = _AADSTS[e.reason]
            return self._error(401 if error == "invalid_client" else 400, error, code, description)
        now = time.time()
        access = sign_access_token(self._key, self._kid, {
            "aud": scope.removesuffix("/.default"), "iss": f"https://sts.windows.net/{self.tenant}/",
            "iat": int(now), "nbf": int(now), "exp": now + self.lifetime, "appid": client, "tid": self.tenant,
            "sub": claims["sub"], "oid": str(uuid.uuid5(uuid.NAMESPACE_URL, client)), "jti": uuid.uuid4().hex})
        self.issued += 1
        return json_response({"token_type": "Bearer", "expires_in": int(self.lifetime) or 1,
                              "ext_expires_in": int(self.lifetime) or 1, "access_token": access})

    def check_access_token(self, token: str, resource: str) -> dict[str, Any]:
        """A resource's check of a bearer token: our signature, its audience, not expired."""
        header = jwt.get_unverified_header(token)
        key = self._public.get(header.get("kid", ""))
        if key is None:
            raise jwt.InvalidSignatureError("unknown key")
        claims: dict[str, Any] = jwt.decode(token, key, algorithms=["RS256"], audience=resource,
                                            issuer=f"https://sts.windows.net/{self.tenant}/", leeway=0)
        return claims
