"""Google Cloud credentials through the real `modelroute serve` process, to Vertex AI's
OpenAI-compatible endpoint (provider openai-compatible, which takes a Google access token
as ``Authorization: Bearer``):

* workload identity federation: the pod's token (audience = the pool provider) exchanged
  at Google's STS, then for a service account's token at IAM Credentials;
* the GKE metadata server (``Metadata-Flavor: Google``, host from GCE_METADATA_HOST).

Access tokens live 3 seconds; under load they are renewed several times, one exchange at a
time, and not one request fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp import web

from modelroute_sidecar.credentials.projection import gcp_file
from tests.credentials.load import load_until
from tests.fakes.gemini import FakeGemini
from tests.fakes.google_auth import FakeGoogleAuth
from tests.fakes.oidc import TestIssuer
from tests.fakes.openai import FakeOpenAI
from tests.fakes.openai_wire import OpenAIError
from tests.gateway.harness import FAST, model_route
from tests.gateway.procs import GatewayProcess, modelroute, scrape
from tests.gateway.test_reload import write_yaml

POOL = "//iam.googleapis.com/projects/123456789/locations/global/workloadIdentityPools/k8s/providers/cluster"
SA = "llm-caller@proj.iam.gserviceaccount.com"
SUBJECT = "system:serviceaccount:apps:chatbot"


class FakeVertexOpenAI(FakeOpenAI):
    """Vertex AI's OpenAI-compatible endpoint: a live Google access token of ``principal``."""

    def __init__(self, google: FakeGoogleAuth, principal: str) -> None:
        super().__init__(keys=())
        self.google, self.principal = google, principal
        self.refused = 0

    def authenticate(self, request: web.Request) -> None:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if self.google.valid(token) != self.principal:
            self.refused += 1
            raise OpenAIError("Request had invalid authentication credentials. Expected OAuth 2 access token, "
                              "login cookie or other valid authentication credential.", status=401)


@contextmanager
def gateway(tmp_path: Path, gcp: dict[str, Any], google: FakeGoogleAuth, vertex: FakeVertexOpenAI,
            env: dict[str, str]) -> Iterator[GatewayProcess]:
    pk = {"apiVersion": "modelroute.dev/v1alpha1", "kind": "ProviderKey", "metadata": {"name": "vertex"},
          "spec": {"provider": "openai-compatible", "baseURL": vertex.url + "/v1", "workloadIdentity": {"gcp": gcp}}}
    cfg = tmp_path / "routes.yaml"
    write_yaml(cfg, [pk, model_route("chat", ("vertex", "google/gemini-2.5-flash"), **FAST)])
    with modelroute(tmp_path, "serve", "-f", str(cfg), env=env) as gp:
        yield gp


def assert_nothing_exposed(gp: GatewayProcess, secrets: list[str]) -> None:
    exposed = gp.logs() + scrape(gp)
    for s in secrets:
        assert s not in exposed and s[-24:] not in exposed


def test_federation_with_impersonation_renews_under_load(tmp_path: Path) -> None:
    issuer = TestIssuer()
    token_dir = tmp_path / "identity"
    assertion = issuer.write(token_dir / gcp_file(POOL), POOL, namespace="apps", service_account="chatbot")
    with FakeGoogleAuth({POOL: issuer.verifier()}, {SA: [SUBJECT]}, lifetime=3) as google, \
            FakeVertexOpenAI(google, f"serviceAccount:{SA}") as vertex, \
            gateway(tmp_path, {"audience": POOL, "serviceAccount": SA, "tokenURL": google.url + "/v1/token",
                               "iamCredentialsURL": google.url}, google, vertex,
                    {"MODELROUTE_IDENTITY_TOKEN_DIR": str(token_dir)}) as gp:
        sent, failures, elapsed = load_until(gp, lambda: google.impersonated >= 5)
        assert not failures, failures[:5]
        assert google.impersonated >= 5 and sent > 10 * google.impersonated
        assert google.exchanged == google.impersonated  # each renewal: one exchange, one impersonation
        # (a 3-second token may expire in flight on a loaded machine: renewed and retried, no failure)
        assert google.max_inflight == 1
        # The first, one every 2 s, and at most one early renewal per 30 s for a refused token.
        assert google.impersonated <= 1 + elapsed / 2 + 1 + elapsed / 30 + 1, (google.impersonated, elapsed)
        exchange = google.requests_to("/v1/token")[0]
        form = dict(x.split("=", 1) for x in exchange.raw.decode().split("&"))
        assert form["grant_type"] == "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange"
        used = sorted({r.headers["authorization"].removeprefix("Bearer ") for r in vertex.requests})
        assert len(used) >= 3  # renewed tokens were used, not only the first
        assert_nothing_exposed(gp, [*used, assertion])


def test_a_projected_token_for_another_audience_is_refused_by_sts(tmp_path: Path) -> None:
    issuer = TestIssuer()
    token_dir = tmp_path / "identity"
    issuer.write(token_dir / gcp_file(POOL), "sts.amazonaws.com", namespace="apps", service_account="chatbot")
    with FakeGoogleAuth({POOL: issuer.verifier()}, {SA: [SUBJECT]}) as google, \
            FakeVertexOpenAI(google, f"serviceAccount:{SA}") as vertex, \
            gateway(tmp_path, {"audience": POOL, "serviceAccount": SA, "tokenURL": google.url + "/v1/token",
                               "iamCredentialsURL": google.url}, google, vertex,
                    {"MODELROUTE_IDENTITY_TOKEN_DIR": str(token_dir)}) as gp:
        client = openai.OpenAI(base_url=gp.url, api_key="unused", max_retries=0)
        with pytest.raises(openai.APIStatusError) as e:
            client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
        assert e.value.status_code == 503 and "invalid_grant" in str(e.value.body), e.value.body
        assert google.pools[POOL].rejected[-1] == "audience" and vertex.requests == []


def test_gke_metadata_server(tmp_path: Path) -> None:
    node = "chatbot@proj.iam.gserviceaccount.com"
    with FakeGoogleAuth({}, lifetime=3, node_account=node) as google, \
            FakeVertexOpenAI(google, f"serviceAccount:{node}") as vertex, \
            gateway(tmp_path, {}, google, vertex, {"GCE_METADATA_HOST": f"127.0.0.1:{google.port}"}) as gp:
        _, failures, _ = load_until(gp, lambda: google.metadata_tokens >= 3)
        assert not failures, failures[:5]
        assert google.metadata_tokens >= 3 and google.max_inflight == 1
        asks = google.requests_to("/token")
        assert all(r.headers.get("metadata-flavor") == "Google" for r in asks)
        assert "cloud-platform" in asks[0].query.get("scopes", "")
        assert_nothing_exposed(gp, sorted({r.headers["authorization"].removeprefix("Bearer ")
                                           for r in vertex.requests}))


class FakeGeminiOAuth(FakeGemini):
    """The Gemini API called with an OAuth access token of ``principal`` (as Google accepts)."""

    def __init__(self, google: FakeGoogleAuth, principal: str) -> None:
        super().__init__(keys=())
        self.google, self.principal = google, principal

    def authenticate(self, request: web.Request) -> None:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if not token or self.google.valid(token) != self.principal:
            super().authenticate(request)  # the API's own refusal


def test_gemini_with_the_gke_metadata_server(tmp_path: Path) -> None:
    node = "chatbot@proj.iam.gserviceaccount.com"
    with FakeGoogleAuth({}, node_account=node) as google, FakeGeminiOAuth(google, f"serviceAccount:{node}") as gem:
        pk = {"apiVersion": "modelroute.dev/v1alpha1", "kind": "ProviderKey", "metadata": {"name": "gemini"},
              "spec": {"provider": "gemini", "baseURL": gem.url, "workloadIdentity": {"gcp": {}}}}
        cfg = tmp_path / "routes.yaml"
        write_yaml(cfg, [pk])
        with modelroute(tmp_path, "serve", "-f", str(cfg), env={"GCE_METADATA_HOST": f"127.0.0.1:{google.port}"}) \
                as gp:
            client = openai.OpenAI(base_url=gp.url, api_key="unused", max_retries=0)
            answer = client.chat.completions.create(model="gemini-2.5-flash",
                                                    messages=[{"role": "user", "content": "hi"}])
            assert answer.choices[0].message.content
        sent = gem.requests[-1].headers
        assert sent["authorization"].startswith("Bearer ya29.") and "x-goog-api-key" not in sent
