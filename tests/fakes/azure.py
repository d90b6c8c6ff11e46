"""`FakeAzureOpenAI`: Azure OpenAI's deployment-addressed variant of the OpenAI API.

Differences from OpenAI that a gateway must handle, all reproduced here:
* URL `/openai/deployments/{deployment}/chat/completions?api-version=...`
  (and `/embeddings`); a missing `api-version` is a 404 "Resource not found";
* auth by the `api-key` header (Entra `Authorization: Bearer` also accepted);
* gateway-level errors are `{"error": {"code": "<status as string>", "message"}}`,
  while request validation errors keep the OpenAI shape;
* responses carry content-filter annotations, and a stream starts with a chunk
  that has `choices: []`, blank `id`/`model`, and `prompt_filter_results`;
* the `model` in responses is the deployment's model, not the deployment name.
The newer `/openai/v1/...` routes (no api-version, deployment name in `model`) work too.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import web

from .base import Rejected, json_response
from .openai import FakeOpenAI
from .openai_wire import require_object

API_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}(-preview)?$|^(preview|latest|v1)$")


class FakeAzureOpenAI(FakeOpenAI):
    """Azure OpenAI upstream.

    `deployments` maps deployment name -> model name reported in responses; when
    None every deployment name exists and reports itself as the model.
    `api_versions`, when given, is the set of versions accepted (others get 404).
    """

    provider = "azure-openai"
    azure_dialect = True

    def __init__(
        self,
        keys: Iterable[str] = ("azure-key",),
        *,
        deployments: Mapping[str, str] | None = None,
        api_versions: Iterable[str] | None = None,
        embedding_dimensions: int = 8,
        strict_params: bool = True,
    ) -> None:
        super().__init__(keys, embedding_dimensions=embedding_dimensions, strict_params=strict_params)
        self.deployments: dict[str, str] | None = dict(deployments) if deployments is not None else None
        self.api_versions: set[str] | None = set(api_versions) if api_versions is not None else None
        # Entra ID: when set, `Authorization: Bearer` must be an access token it issued for
        # Cognitive Services, still valid (Azure checks signature, audience and expiry).
        self.entra: Any = None
        self.bearer_accepted = 0
        self.bearer_refused = 0
        self.revoked: set[str] = set()  # bearer tokens refused although valid (a revoked grant)

    @property
    def base_url(self) -> str:
        """What `openai.AzureOpenAI(azure_endpoint=...)` takes."""
        return self.url

    def add_routes(self, app: web.Application) -> None:
        dep = "/openai/deployments/{deployment}"
        app.router.add_post(f"{dep}/chat/completions", self._guard(self.azure_chat))
        app.router.add_post(f"{dep}/embeddings", self._guard(self.azure_embeddings))
        # The v1 routes name the deployment in `model`; check_model/served map it.
        app.router.add_post("/openai/v1/chat/completions", self._guard(self.chat_completions))
        app.router.add_post("/openai/v1/embeddings", self._guard(self.embeddings))
        app.router.add_post("/openai/v1/responses", self._guard(self.responses))
        app.router.add_get("/openai/v1/models", self._guard(self.list_models))
        self.add_model_routes(app, dep)
        self.add_model_routes(app, "/openai/v1")
        self.add_account_routes(app, "/openai")
        self.add_account_routes(app, "/openai/v1")

    def surface_check(self, request: web.Request) -> None:
        if not request.path.startswith("/openai/v1/"):
            self.check_version(request)

    def model_for(self, request: web.Request, body_model: str | None) -> str:
        """A deployment route serves its deployment's model, whatever the body says."""
        if "deployment" in request.match_info:
            return self.deployment_model(request.match_info["deployment"])
        return super().model_for(request, body_model)

    def response_headers(self) -> dict[str, str]:
        return {"apim-request-id": secrets.token_hex(16), "x-ms-region": "East US"}

    # ---- errors ------------------------------------------------------------------
    @staticmethod
    def gateway_error(status: int, message: str, code: str | None = None) -> web.Response:
        return json_response({"error": {"code": code or str(status), "message": message}}, status=status)

    def error_response(
        self, status: int, message: str | None = None, *, retry_after: float | None = None
    ) -> web.Response:
        if status == 400:
            return super().error_response(status, message)
        if status >= 500 and status != 503:
            body = {
                "error": {
                    "message": message
                    or "The server had an error processing your request. Sorry about that! You can retry "
                    "your request, or contact us through an Azure support request at: "
                    "https://go.microsoft.com/fwlink/?linkid=2213926 if you keep seeing this error.",
                    "type": "server_error",
                    "param": None,
                    "code": None,
                }
            }
            return json_response(body, status=status, headers=self.response_headers())
        defaults = {
            401: "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide "
            "a valid key for an active subscription and use a correct regional API endpoint for your resource.",
            403: "Public access is disabled. Please configure private endpoint.",
            404: "Resource not found",
            429: "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 "
            f"have exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after "
            f"{int(retry_after or 1)} seconds. Please go here: https://aka.ms/oai/quotaincrease if you "
            "would like to further increase the default rate limit.",
            503: "The service is temporarily unable to process your request. Please try again later.",
        }
        return self.gateway_error(status, message or defaults.get(status, f"HTTP {status}"))

    def not_found_response(self, request: web.Request) -> web.Response:
        return self.gateway_error(404, "Resource not found")

    # ---- checks ---------------------------------------------------------------------
    def authenticate(self, request: web.Request) -> None:
        key = request.headers.get("api-key")
        if key is None and self.entra is not None and request.headers.get("Authorization", "").startswith("Bearer "):
            token = request.headers["Authorization"].removeprefix("Bearer ").strip()
            try:
                if token in self.revoked:
                    raise PermissionError("revoked")
                self.entra.check_access_token(token, "https://cognitiveservices.azure.com")
            except Exception:
                self.bearer_refused += 1
                raise Rejected(self.gateway_error(
                    401, "Unauthorized. Access token is missing, invalid, audience is incorrect "
                         "(https://cognitiveservices.azure.com), or have expired.")) from None
            self.bearer_accepted += 1
            return
        if key is None and request.headers.get("Authorization", "").startswith("Bearer "):
            key = request.headers["Authorization"].removeprefix("Bearer ").strip()
        if key is None:
            raise Rejected(
                self.gateway_error(
                    401,
                    "Access denied due to missing subscription key. Make sure to include subscription "
                    "key when making requests to an API.",
                )
            )
        if key not in self.keys:
            raise Rejected(self.error_response(401))

    def check_version(self, request: web.Request) -> None:
        version = request.query.get("api-version")
        if version is None or not API_VERSION.match(version):
            raise Rejected(self.gateway_error(404, "Resource not found"))
        if self.api_versions is not None and version not in self.api_versions:
            raise Rejected(self.gateway_error(404, "Resource not found"))

    def deployment_model(self, deployment: str) -> str:
        if self.deployments is None:
            return deployment
        if deployment not in self.deployments:
            raise Rejected(
                self.gateway_error(
                    404,
                    "The API deployment for this resource does not exist. If you created the deployment "
                    "within the last 5 minutes, please wait a moment and try again.",
                    code="DeploymentNotFound",
                )
            )
        return self.deployments[deployment]

    def check_model(self, model: str) -> None:
        self.deployment_model(model)

    def served(self, model: str) -> str:
        return self.deployment_model(model)

    def _body(self, request: web.Request) -> dict[str, Any]:
        return require_object(self.body_of(request))

    # ---- routes -----------------------------------------------------------------------
    async def azure_chat(self, request: web.Request) -> web.StreamResponse:
        self.check_version(request)
        self.authenticate(request)
        model = self.deployment_model(request.match_info["deployment"])
        return await self.render_chat(request, self._body(request), model, azure=True)

    async def azure_embeddings(self, request: web.Request) -> web.StreamResponse:
        self.check_version(request)
        self.authenticate(request)
        model = self.deployment_model(request.match_info["deployment"])
        result = self.embedding_result(self._body(request), model)
        return json_response(result, headers=self.response_headers())
