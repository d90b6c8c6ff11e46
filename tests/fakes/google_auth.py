"""`FakeGoogleAuth`: Google's token endpoints for workloads outside and inside Google Cloud.

* Security Token Service, ``POST /v1/token`` (RFC 8693 token exchange, form-encoded):
  ``grant_type=urn:ietf:params:oauth:grant-type:token-exchange``, ``audience`` (the
  workload identity pool provider), ``scope``, ``requested_token_type=
  urn:ietf:params:oauth:token-type:access_token``, ``subject_token`` and
  ``subject_token_type=urn:ietf:params:oauth:token-type:jwt``. The subject token must
  verify against the pool provider's issuer JWKS, name the provider as ``aud`` (its
  default allowed audience) and not be expired. Answer: ``{access_token,
  issued_token_type, token_type: "Bearer", expires_in}``; errors ``{error,
  error_description}`` (400 invalid_grant / invalid_request).
* IAM Credentials, ``POST /v1/projects/-/serviceAccounts/{email}:generateAccessToken`` with
  ``Authorization: Bearer <federated token>`` and ``{"scope": [...], "lifetime"}``: the
  principal must be allowed to impersonate the account. Answer ``{accessToken, expireTime}``;
  errors in Google's ``{"error": {code, message, status}}``.
* The GKE metadata server, ``GET /computeMetadata/v1/instance/service-accounts/default/token``
  (and ``.../default/?recursive=true``), which requires ``Metadata-Flavor: Google`` (else
  403) and answers ``{access_token, expires_in, token_type}`` with ``Metadata-Flavor: Google``.

Every access token it hands out is remembered with its expiry; :meth:`valid` is what a
Google API (the Vertex fake) asks.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from datetime import UTC, datetime

from aiohttp import web

from .base import FakeUpstream, Handler, json_response
from .oidc import TokenRejected, Verifier

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
METADATA_FLAVOR = {"Metadata-Flavor": "Google"}


class FakeGoogleAuth(FakeUpstream):
    """``pools`` maps a pool provider (audience) to the issuer verifier it trusts;
    ``impersonation`` maps a service account email to the subjects (``system:serviceaccount:NS:SA``)
    allowed to act as it; ``node_account`` is what the metadata server answers for."""

    provider = "google-auth"

    def __init__(self, pools: Mapping[str, Verifier], impersonation: Mapping[str, list[str]] | None = None, *,
                 lifetime: int = 3600, node_account: str = "chatbot@proj.iam.gserviceaccount.com") -> None:
        super().__init__(keys=())
        self.pools = dict(pools)
        self.impersonation = {k: list(v) for k, v in (impersonation or {}).items()}
        self.lifetime = lifetime
        self.node_account = node_account
        self.tokens: dict[str, tuple[float, str]] = {}  # access token -> (expiry, principal)
        self.exchanged = self.impersonated = self.metadata_tokens = 0
        self.inflight = 0
        self.max_inflight = 0

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/token", self._counted(self.sts))
        app.router.add_post("/v1/projects/-/serviceAccounts/{name}", self._counted(self.generate_access_token))
        # An account is addressed as `default` or by its email, as on the real server.
        app.router.add_get("/computeMetadata/v1/instance/service-accounts/{account}/token",
                           self._counted(self.metadata_token))
        app.router.add_get("/computeMetadata/v1/instance/service-accounts/{account}/", self.metadata_info)

    def _counted(self, handler: Handler) -> Handler:
        async def counted(request: web.Request) -> web.StreamResponse:
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
            try:
                return await handler(request)
            finally:
                self.inflight -= 1
        return counted

    def error_response(self, status: int, message: str | None = None, *,
                       retry_after: float | None = None) -> web.Response:
        return self._google_error(status, message or f"HTTP {status}")

    @staticmethod
    def _google_error(status: int, message: str) -> web.Response:
        names = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND"}
        return json_response({"error": {"code": status, "message": message,
                                         "status": names.get(status, "UNAVAILABLE")}}, status=status)

    def _mint(self, principal: str) -> str:
        token = "ya29." + secrets.token_urlsafe(96)
        self.tokens[token] = (time.time() + self.lifetime, principal)
        return token

    def valid(self, token: str) -> str | None:
        """The principal of a live access token, None when unknown or expired."""
        found = self.tokens.get(token)
        return found[1] if found is not None and found[0] > time.time() else None

    # ---- STS ---------------------------------------------------------------------------
    async def sts(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}

        def bad(error: str, description: str) -> web.Response:
            return json_response({"error": error, "error_description": description}, status=400)

        if form.get("grant_type") != EXCHANGE:
            return bad("unsupported_grant_type", f"Unsupported grant type: {form.get('grant_type')}")
        if form.get("requested_token_type") != ACCESS_TOKEN_TYPE:
            return bad("invalid_request", "Invalid requested_token_type")
        if form.get("subject_token_type") != JWT_TYPE:
            return bad("invalid_request", "Invalid subject_token_type")
        audience = form.get("audience", "")
        verifier = self.pools.get(audience)
        if verifier is None:
            return bad("invalid_target", "The target service indicated by the \"audience\" parameters is invalid.")
        try:
            claims = verifier.verify(form.get("subject_token", ""), audience)
        except TokenRejected as e:
            return bad("invalid_grant", {"expired": "The token has expired.",
                                         "audience": "The audience in ID Token does not match the expected "
                                                     "audience."}.get(e.reason, "Invalid ID token."))
        self.exchanged += 1
        principal = f"principal://iam.googleapis.com/{audience.removeprefix('//iam.googleapis.com/')}/subject/" \
                    f"{claims['sub']}"
        return json_response({"access_token": self._mint(principal), "issued_token_type": ACCESS_TOKEN_TYPE,
                              "token_type": "Bearer", "expires_in": self.lifetime})

    # ---- IAM Credentials -----------------------------------------------------------------
    async def generate_access_token(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if not name.endswith(":generateAccessToken"):
            return self._google_error(404, "Method not found.")
        email = name.removesuffix(":generateAccessToken")
        principal = self.valid(request.headers.get("Authorization", "").removeprefix("Bearer "))
        if principal is None:
            return self._google_error(401, "Request had invalid authentication credentials. Expected OAuth 2 access "
                                           "token, login cookie or other valid authentication credential.")
        body = await request.json()
        if not isinstance(body, dict) or not isinstance(body.get("scope"), list) or not body["scope"]:
            return self._google_error(400, "Scope required.")
        subject = principal.rsplit("/subject/", 1)[-1]
        if subject not in self.impersonation.get(email, []):
            return self._google_error(403, "Permission 'iam.serviceAccounts.getAccessToken' denied on resource "
                                           "(or it may not exist).")
        self.impersonated += 1
        token = self._mint(f"serviceAccount:{email}")
        expiry = datetime.fromtimestamp(self.tokens[token][0], UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return json_response({"accessToken": token, "expireTime": expiry})

    # ---- the metadata server ---------------------------------------------------------------
    def _flavored(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Metadata-Flavor") != "Google":
            return web.Response(status=403, text="Missing required header \"Metadata-Flavor\": \"Google\"\n",
                                headers=METADATA_FLAVOR)
        if request.match_info["account"] not in ("default", self.node_account):
            return web.Response(status=404, text="Not Found\n", headers=METADATA_FLAVOR)
        return None

    async def metadata_info(self, request: web.Request) -> web.Response:
        refused = self._flavored(request)
        if refused is not None:
            return refused
        return json_response({"aliases": ["default"], "email": self.node_account,
                              "scopes": ["https://www.googleapis.com/auth/cloud-platform"]}, headers=METADATA_FLAVOR)

    async def metadata_token(self, request: web.Request) -> web.Response:
        refused = self._flavored(request)
        if refused is not None:
            return refused
        self.metadata_tokens += 1
        return json_response({"access_token": self._mint(f"serviceAccount:{self.node_account}"),
                              "expires_in": self.lifetime, "token_type": "Bearer"}, headers=METADATA_FLAVOR)
