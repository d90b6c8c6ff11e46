"""Workload identity tokens in mutate_pod (pure): projected for the audiences the
namespace's ProviderKeys need, into the sidecar only; app containers get no token
volume and no credential variable, whatever they are."""

from __future__ import annotations

from typing import Any

import pytest

from modelroute_operator import names
from modelroute_operator.webhook import identity_tokens, mutate_pod
from modelroute_sidecar.credentials.projection import gcp_file
from tests.operator.test_webhook import REGULAR, S, env_of, pod, sidecar_of

POOL = "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/k8s/providers/cluster"
IDENTITIES: list[dict[str, Any]] = [
    {"aws": {"roleArn": "arn:aws:iam::111122223333:role/llm"}},
    {"azure": {"tenantId": "t", "clientId": "c"}},
    {"gcp": {"audience": POOL, "serviceAccount": "llm@p.iam.gserviceaccount.com"}},
    {"gcp": {}},  # the GKE metadata server: no token
    {"aws": {}},  # EKS Pod Identity
    {"azure": {"tenantId": "t", "clientId": "other"}},  # same audience as the first: one token
    {"aws": {"roleArn": "not an arn"}},  # refused by compile: no token
]
CREDENTIAL_ENV = {"AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                  "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "AZURE_FEDERATED_TOKEN_FILE",
                  "MODELROUTE_IDENTITY_TOKEN_DIR", "AWS_ROLE_ARN", "AZURE_CLIENT_ID", "AZURE_TENANT_ID"}


def app_pod() -> dict[str, Any]:
    return pod(initContainers=[{"name": "migrate", "image": "app:1"}],
               containers=[{"name": "app", "image": "app:1", "volumeMounts": [{"name": "data", "mountPath": "/d"}]},
                           {"name": "worker", "image": "app:1"}],
               volumes=[{"name": "data", "emptyDir": {}}])


@pytest.mark.parametrize("s", [S, REGULAR], ids=["native", "regular"])
def test_tokens_reach_the_sidecar_only(s: Any) -> None:
    tokens = identity_tokens(IDENTITIES)
    out = mutate_pod(app_pod(), s, tokens)
    volume = {v["name"]: v for v in out["spec"]["volumes"]}[names.IDENTITY_VOLUME]
    sources = [x["serviceAccountToken"] for x in volume["projected"]["sources"]]
    assert {(x["audience"], x["path"]) for x in sources} == {
        ("sts.amazonaws.com", "aws-sts"), ("api://AzureADTokenExchange", "azure"),
        ("pods.eks.amazonaws.com", "eks-pod-identity"), (POOL, gcp_file(POOL))}
    assert all(x["expirationSeconds"] == 3600 for x in sources)
    side = sidecar_of(out)
    assert {"name": names.IDENTITY_VOLUME, "mountPath": "/var/run/secrets/modelroute-identity", "readOnly": True} \
        in side["volumeMounts"]
    env = env_of(side)
    assert env["AWS_WEB_IDENTITY_TOKEN_FILE"] == "/var/run/secrets/modelroute-identity/aws-sts"
    assert env["AZURE_FEDERATED_TOKEN_FILE"] == "/var/run/secrets/modelroute-identity/azure"
    assert env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"] == "/var/run/secrets/modelroute-identity/eks-pod-identity"
    assert env["AWS_CONTAINER_CREDENTIALS_FULL_URI"] == "http://169.254.170.23/v1/credentials"
    others = [c for c in out["spec"]["containers"] + out["spec"].get("initContainers", [])
              if c["name"] != names.SIDECAR_CONTAINER]
    assert {c["name"] for c in others} == {"app", "worker", "migrate"}
    for c in others:
        assert not any(m["name"] == names.IDENTITY_VOLUME for m in c.get("volumeMounts", [])), c
        assert not CREDENTIAL_ENV & set(env_of(c)), c
        assert "/var/run/secrets/modelroute-identity" not in str(c)
    assert mutate_pod(out, s, tokens) == out  # idempotent


def test_no_workload_identity_no_token_volume() -> None:
    cases: list[list[dict[str, Any]]] = [[], [{"gcp": {}}], [{"bogus": 1}]]
    for identities in cases:
        out = mutate_pod(app_pod(), S, identity_tokens(identities))
        assert names.IDENTITY_VOLUME not in {v["name"] for v in out["spec"]["volumes"]}
        side = sidecar_of(out)
        assert names.IDENTITY_VOLUME not in {m["name"] for m in side["volumeMounts"]}
        assert not CREDENTIAL_ENV & set(env_of(side))


def test_identities_gone_take_the_token_away_on_the_next_injection() -> None:
    injected = mutate_pod(app_pod(), S, identity_tokens(IDENTITIES))
    again = mutate_pod(injected, S, [])
    assert again == mutate_pod(app_pod(), S, [])
