"""Workload identity for the bedrock and vertex kinds, through the real `modelroute serve`:

* bedrock with IRSA: the pod's token exchanged at STS (AssumeRoleWithWebIdentity) for
  credentials that live 4 seconds; every request to the Bedrock fake is SigV4-signed with the
  credentials of the moment, which the fake verifies (and refuses once expired);
* vertex with the GKE metadata server: access tokens that live 3 seconds, checked by the
  Vertex fake against what the metadata server issued.

Many callers at once, streamed and not, while the credentials are renewed several times:
not one request fails, and one renewal is in flight at a time.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

from aiohttp import web

from tests.credentials.load import load_until
from tests.credentials.test_gcp import assert_nothing_exposed
from tests.fakes.aws_sts import STS_AUDIENCE, FakeAwsSts
from tests.fakes.aws_wire import AwsCredential
from tests.fakes.base import Rejected
from tests.fakes.bedrock import FakeBedrock
from tests.fakes.google_auth import FakeGoogleAuth
from tests.fakes.oidc import TestIssuer
from tests.fakes.vertex import FakeVertex
from tests.gateway.harness import FAST, model_route
from tests.gateway.procs import modelroute
from tests.gateway.test_reload import write_yaml

ROLE = "arn:aws:iam::111122223333:role/bedrock-invoke"
SUBJECT = "system:serviceaccount:apps:chatbot"


class IssuedBySts(Mapping[str, AwsCredential]):
    """What the fake STS issued, as the Bedrock fake's credential store (read per request)."""

    def __init__(self, sts: FakeAwsSts) -> None:
        self.sts = sts

    def __getitem__(self, akid: str) -> AwsCredential:
        i = self.sts.issued[akid]
        return AwsCredential(i.secret_access_key, i.session_token, i.expires_at)

    def __iter__(self) -> Iterator[str]:
        return iter(dict(self.sts.issued))

    def __len__(self) -> int:
        return len(self.sts.issued)


def test_bedrock_with_irsa_signs_with_renewed_credentials_under_load(tmp_path: Path) -> None:
    issuer = TestIssuer()
    token_file = tmp_path / "aws-token"
    issuer.write(token_file, STS_AUDIENCE, namespace="apps", service_account="chatbot")
    with FakeAwsSts(issuer.verifier(), {ROLE: [SUBJECT]}, lifetime=4) as sts, \
            FakeBedrock(IssuedBySts(sts), region="eu-west-1") as bedrock:
        pk = {"apiVersion": "modelroute.dev/v1alpha1", "kind": "ProviderKey", "metadata": {"name": "bedrock"},
              "spec": {"provider": "bedrock", "region": "eu-west-1", "baseURL": bedrock.url,
                       "workloadIdentity": {"aws": {"roleArn": ROLE, "region": "eu-west-1"}}}}
        cfg = tmp_path / "routes.yaml"
        write_yaml(cfg, [pk, model_route("chat", ("bedrock", "amazon.nova-lite-v1:0"), **FAST)])
        env = {"AWS_WEB_IDENTITY_TOKEN_FILE": str(token_file), "AWS_ENDPOINT_URL_STS": sts.url,
               "MODELROUTE_NAMESPACE": "apps"}
        with modelroute(tmp_path, "serve", "-f", str(cfg), env=env) as gp:
            sent, failures, _ = load_until(gp, lambda: len(sts.issued) >= 3)
            assert not failures, failures[:5]
            assert sent > 30 and len(sts.issued) >= 3 and sts.max_inflight == 1
            assert bedrock.refused == [] and bedrock.verified == len(bedrock.requests) >= sent
            used = {r.headers["x-amz-security-token"] for r in bedrock.requests}
            assert len(used) >= 2  # signed with renewed credentials, each verified
            assert_nothing_exposed(gp, [*used, *(i.secret_access_key for i in sts.issued.values())])


class VertexOfTheMetadataServer(FakeVertex):
    """Vertex, accepting the live access tokens the fake metadata server issued."""

    def __init__(self, google: FakeGoogleAuth, principal: str) -> None:
        super().__init__(())
        self.google, self.principal = google, principal
        self.refused_tokens = 0

    def authenticate(self, request: web.Request) -> None:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if self.google.valid(token) != self.principal:
            self.refused_tokens += 1
            raise Rejected(self.error(401, "Request had invalid authentication credentials."))


def test_vertex_with_the_gke_metadata_server_under_load(tmp_path: Path) -> None:
    node = "chatbot@proj.iam.gserviceaccount.com"
    with FakeGoogleAuth({}, lifetime=3, node_account=node) as google, \
            VertexOfTheMetadataServer(google, f"serviceAccount:{node}") as vertex:
        pk = {"apiVersion": "modelroute.dev/v1alpha1", "kind": "ProviderKey", "metadata": {"name": "vertex"},
              "spec": {"provider": "vertex", "project": "my-project", "location": "us-east5",
                       "baseURL": vertex.url, "workloadIdentity": {"gcp": {}}}}
        cfg = tmp_path / "routes.yaml"
        write_yaml(cfg, [pk, model_route("chat", ("vertex", "claude-sonnet-4-5@20250929"), **FAST)])
        with modelroute(tmp_path, "serve", "-f", str(cfg),
                        env={"GCE_METADATA_HOST": f"127.0.0.1:{google.port}"}) as gp:
            _, failures, _ = load_until(gp, lambda: google.metadata_tokens >= 3)
            assert not failures, failures[:5]
            assert google.metadata_tokens >= 3 and google.max_inflight == 1 and vertex.refused_tokens == 0
            assert all(":streamRawPredict" in r.path or ":rawPredict" in r.path for r in vertex.requests)
            assert_nothing_exposed(gp, sorted({r.headers["authorization"].removeprefix("Bearer ")
                                               for r in vertex.requests}))
