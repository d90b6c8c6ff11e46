"""ProviderKeys with workloadIdentity compile without a Secret, and bad ones are refused
naming the field, as the CRD's rules refuse them."""

from __future__ import annotations

from typing import Any

import pytest

from modelroute_sidecar.compile import compile_resources
from modelroute_sidecar.credentials.projection import TokenProjection, projections, sidecar_env


def pk(provider: str, wi: dict[str, Any] | None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"provider": provider, "baseURL": "https://example.openai.azure.com", **spec}
    if wi is not None:
        body["workloadIdentity"] = wi
    return {"apiVersion": "modelroute.dev/v1alpha1", "kind": "ProviderKey", "metadata": {"name": "k"}, "spec": body}


AZURE = {"azure": {"tenantId": "t-1", "clientId": "c-1"}}


@pytest.mark.parametrize("env", [None, {}])
def test_workload_identity_needs_no_secret(env: dict[str, str] | None) -> None:
    result = compile_resources([pk("azure-openai", AZURE)], env=env)
    status = result.statuses[("ProviderKey", "k")]
    assert status.ready and status.reason == "WorkloadIdentity", status
    assert "Entra workload identity (client c-1)" in status.message
    assert result.keys["k"] == [] and result.config.provider_keys["k"].workload_identity is not None
    assert not result.config.unready_provider_keys


@pytest.mark.parametrize(("doc", "words"), [
    (pk("azure-openai", AZURE, secretRef={"name": "s"}), "secretRef and workloadIdentity are exclusive"),
    (pk("azure-openai", {"aws": {"roleArn": "arn:aws:iam::111122223333:role/x"}}),
     "workloadIdentity.aws is for provider bedrock, not azure-openai"),
    (pk("openai", {"gcp": {}}), "workloadIdentity.gcp is for provider"),
    (pk("azure-openai", {**AZURE, "gcp": {}}), "exactly one of aws, gcp, azure"),
    (pk("azure-openai", {}), "exactly one of aws, gcp, azure"),
    (pk("azure-openai", {"azure": {"tenantId": "t/../x"}}), "workloadIdentity.azure.tenantId"),
    (pk("openai-compatible", {"gcp": {"serviceAccount": "not-an-email"}}), "workloadIdentity.gcp.serviceAccount"),
])
def test_bad_workload_identity_is_refused_naming_the_field(doc: dict[str, Any], words: str) -> None:
    result = compile_resources([doc], env={})
    assert len(result.errors) == 1 and words in result.errors[0], result.errors


def test_projections_are_one_per_audience_and_none_for_the_metadata_server() -> None:
    from modelroute_sidecar.config import WorkloadIdentity, from_data

    raw: list[dict[str, Any]] = [
        AZURE, {"azure": {"clientId": "other"}}, {"aws": {"roleArn": "arn:aws:iam::111122223333:role/x"}},
        {"aws": {}}, {"gcp": {}}, {"gcp": {"audience": "//iam.googleapis.com/projects/1/locations/global/"
                                                       "workloadIdentityPools/p/providers/k"}}]
    wis = [from_data(w, WorkloadIdentity) for w in raw]
    found = projections(wis)
    assert {p.audience for p in found} == {
        "sts.amazonaws.com", "api://AzureADTokenExchange", "pods.eks.amazonaws.com",
        "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/k"}
    assert len(found) == 4 and found == sorted(found) and all(isinstance(p, TokenProjection) for p in found)
    env = {e["name"]: e["value"] for e in sidecar_env(found)}
    assert env["AWS_WEB_IDENTITY_TOKEN_FILE"].endswith("/aws-sts")
    assert env["AZURE_FEDERATED_TOKEN_FILE"].endswith("/azure")
    assert env["AWS_CONTAINER_CREDENTIALS_FULL_URI"] == "http://169.254.170.23/v1/credentials"


def test_cloud_libraries_load_only_for_the_cloud_that_needs_them() -> None:
    """A config with an Entra key and a key from a Secret loads neither botocore nor google-auth."""
    import subprocess
    import sys

    script = """
import asyncio, sys
from modelroute_sidecar.compile import compile_resources
from modelroute_sidecar.router import Runtime, State
from modelroute_sidecar.metrics import Metrics
docs = [{"apiVersion": "modelroute.dev/v1alpha1", "kind": "ProviderKey", "metadata": {"name": n}, "spec": s}
        for n, s in [("az", {"provider": "azure-openai", "baseURL": "https://r.openai.azure.com",
                             "workloadIdentity": {"azure": {"tenantId": "t", "clientId": "c"}}}),
                     ("oa", {"provider": "openai", "secretRef": {"name": "k"}})]]
docs.append({"kind": "Secret", "metadata": {"name": "k"}, "stringData": {"apiKey": "sk-real-looking-0123456789"}})
r = compile_resources(docs)
Runtime(r.config, r.keys, State(), Metrics())
print(sorted(m for m in sys.modules if m.split(".")[0] in ("botocore", "boto3", "google")))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
