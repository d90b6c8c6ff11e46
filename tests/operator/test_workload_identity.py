"""Workload identity on the real control plane: the API server's own ServiceAccount tokens.

A ProviderKey with ``workloadIdentity.azure`` needs no Secret (Ready, reason
WorkloadIdentity); the API server refuses the combinations the CRD's rules forbid; an
injected pod gets the token projected into its sidecar only. Then the test plays kubelet:
it asks the TokenRequest API for the token the pod's projected volume names (audience, pod
binding) and runs `modelroute sidecar` with the env the webhook gave the sidecar. The Entra
fake verifies that token against the API server's ``/openid/v1/jwks`` and issuer; access
tokens live 3 seconds and are renewed under traffic, with not one failed request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import pytest

from modelroute_operator import names
from tests.controlplane.cluster import SERVICE_ACCOUNT_ISSUER
from tests.fakes.azure import FakeAzureOpenAI
from tests.fakes.base import wait_until
from tests.fakes.entra import AUDIENCE, FakeEntra
from tests.fakes.oidc import TokenRejected, Verifier
from tests.gateway.harness import FAST
from tests.gateway.procs import modelroute, scrape
from tests.gateway.traffic import Traffic
from tests.operator.conftest import Cluster, OperatorProcess, model_route, provider_key
from tests.operator.test_end_to_end import Kubelet
from tests.operator.test_injection import INJECT, create, env_of, pod, sidecars

pytestmark = pytest.mark.controlplane

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT = "0e1b4c9a-3f55-4c2e-9d7e-6f1a2b3c4d5e"
IDENTITY_DIR = "/var/run/secrets/modelroute-identity"


def azure_key(base_url: str, authority: str = "https://login.microsoftonline.com") -> dict[str, Any]:
    return provider_key("azure", provider="azure-openai", baseURL=base_url, models=[],
                        workloadIdentity={"azure": {"tenantId": TENANT, "clientId": CLIENT,
                                                    "authorityHost": authority}})


def api_server_verifier(cluster: Cluster) -> Verifier:
    """What a cloud does with the cluster's OIDC discovery: the issuer and its JWKS."""
    jwks = json.loads(cluster.kubectl("get", "--raw", "/openid/v1/jwks").stdout)
    config = json.loads(cluster.kubectl("get", "--raw", "/.well-known/openid-configuration").stdout)
    assert config["issuer"] == SERVICE_ACCOUNT_ISSUER
    return Verifier(config["issuer"], jwks)


def token_request(cluster: Cluster, namespace: str, sa: str, audience: str, pod_name: str | None = None) -> str:
    """A token as kubelet gets one for a projected volume (bound to the pod)."""
    bound = ["--bound-object-kind", "Pod", "--bound-object-name", pod_name] if pod_name else []
    return cluster.kubectl("create", "token", sa, "-n", namespace, "--audience", audience, "--duration", "600s",
                           *bound).stdout.strip()


def test_the_api_server_refuses_what_the_crd_rules_forbid(cluster: Cluster, operator: OperatorProcess,
                                                         namespace: str) -> None:
    wi = {"azure": {"tenantId": TENANT, "clientId": CLIENT}}
    for spec, words in [
        ({"provider": "azure-openai", "baseURL": "https://x.openai.azure.com", "workloadIdentity": wi,
          "secretRef": {"name": "s"}}, "secretRef and workloadIdentity are exclusive"),
        ({"provider": "azure-openai", "baseURL": "https://x.openai.azure.com",
          "workloadIdentity": {"aws": {"roleArn": "arn:aws:iam::111122223333:role/x"}}},
         "workloadIdentity.aws is for provider bedrock"),
        ({"provider": "azure-openai", "baseURL": "https://x.openai.azure.com",
          "workloadIdentity": {**wi, "gcp": {}}}, "exactly one of aws, gcp, azure"),
        ({"provider": "openai", "workloadIdentity": {"gcp": {}}}, "workloadIdentity.gcp is for provider"),
    ]:
        doc = {"apiVersion": "modelroute.dev/v1alpha1", "kind": "ProviderKey", "metadata": {"name": "bad"},
               "spec": spec}
        result = cluster.apply(doc, namespace, check=False)
        assert result.returncode != 0 and words in result.stderr, result.stderr


async def test_real_projected_tokens_through_an_injected_sidecar(cluster: Cluster, operator: OperatorProcess,
                                                                 namespace: str, tmp_path: Path) -> None:
    cluster.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "chatbot"}}, namespace)
    verifier = await asyncio.to_thread(api_server_verifier, cluster)
    subject = f"system:serviceaccount:{namespace}:chatbot"
    async with FakeEntra(TENANT, verifier, {CLIENT: [subject]}, lifetime=3) as entra, \
            FakeAzureOpenAI(keys=()) as az:
        az.entra = entra
        await asyncio.to_thread(cluster.apply, [azure_key(az.url, entra.authority),
                                                model_route("chat", "chat", ("azure", "gpt-4o"), **FAST)], namespace)
        ready = await asyncio.to_thread(cluster.wait_ready, "providerkey", "azure", namespace,
                                        reason="WorkloadIdentity")
        assert ready["status"]["keys"] == 0
        await asyncio.to_thread(cluster.wait_ready, "modelroute", "chat", namespace)

        # The webhook: the token for Entra, in the sidecar only.
        stored = await asyncio.to_thread(create, cluster, namespace, pod(
            "app", INJECT, serviceAccountName="chatbot",
            initContainers=[{"name": "migrate", "image": "app:1"}],
            containers=[{"name": "app", "image": "app:1"}, {"name": "worker", "image": "app:1"}]))
        volume = {v["name"]: v for v in stored["spec"]["volumes"]}[names.IDENTITY_VOLUME]
        [source] = volume["projected"]["sources"]
        assert source["serviceAccountToken"]["audience"] == AUDIENCE
        [side] = sidecars(stored)
        env = env_of(side)
        assert env["AZURE_FEDERATED_TOKEN_FILE"] == f"{IDENTITY_DIR}/azure"
        assert {"name": names.IDENTITY_VOLUME, "mountPath": IDENTITY_DIR, "readOnly": True} in side["volumeMounts"]
        for c in stored["spec"]["containers"] + stored["spec"]["initContainers"]:
            if c["name"] != names.SIDECAR_CONTAINER:
                assert names.IDENTITY_VOLUME not in {m["name"] for m in c.get("volumeMounts", [])}, c
                assert not {"AZURE_FEDERATED_TOKEN_FILE", "MODELROUTE_IDENTITY_TOKEN_DIR"} & set(env_of(c)), c

        # Kubelet's part: the projected token (TokenRequest, bound to the pod) and the volumes.
        identity = tmp_path / "identity"
        identity.mkdir()
        token = await asyncio.to_thread(token_request, cluster, namespace, "chatbot", AUDIENCE, "app")
        (identity / source["serviceAccountToken"]["path"]).write_text(token)
        claims = Verifier(verifier.issuer, verifier.jwks).verify(token, AUDIENCE, [subject])
        assert claims["kubernetes.io"]["pod"]["name"] == "app"  # bound to the pod, as kubelet's are
        kubelet = Kubelet(cluster, namespace, tmp_path / "etc-modelroute")
        syncing = asyncio.create_task(kubelet.run())
        try:
            await wait_until(lambda: '"chat"' in kubelet.config(), within=30)
            sidecar_env = {k: v.replace(IDENTITY_DIR, str(identity)) for k, v in env.items()
                           if k in ("AZURE_FEDERATED_TOKEN_FILE", "MODELROUTE_IDENTITY_TOKEN_DIR")}
            with modelroute(tmp_path, "sidecar", "--config-dir", str(kubelet.root), env=sidecar_env) as sidecar:
                app = Traffic(sidecar.url, "chat", clients=8)
                try:
                    await wait_until(lambda: entra.issued >= 4 and len(app.ok) >= 40, within=60)
                except TimeoutError:
                    raise AssertionError(f"{entra.issued} tokens, {len(app.ok)} answers, failures "
                                         f"{app.failed[:2]}, rejected {verifier.rejected[:3]}:\n"
                                         f"{sidecar.logs()[-3000:]}") from None
                await app.stop()
                assert app.failed == [], app.failed[:3]
                assert set(app.ok) == {"azure/gpt-4o"}
                assert entra.max_inflight == 1  # (a token expiring in flight is renewed and retried)
                assert verifier.verified == entra.issued  # each exchange verified the API server's token
                logs = sidecar.logs() + scrape(sidecar)
                assert token not in logs and token.split(".")[2][:32] not in logs
        finally:
            syncing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await syncing

    # The same API server's tokens for other audiences or accounts are not Entra's to accept.
    other_audience = await asyncio.to_thread(token_request, cluster, namespace, "chatbot", "sts.amazonaws.com")
    with pytest.raises(TokenRejected) as e:
        verifier.verify(other_audience, AUDIENCE, [subject])
    assert e.value.reason == "audience"
    cluster.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "intruder"}}, namespace)
    intruder = await asyncio.to_thread(token_request, cluster, namespace, "intruder", AUDIENCE)
    with pytest.raises(TokenRejected) as e:
        verifier.verify(intruder, AUDIENCE, [subject])
    assert e.value.reason == "subject"
    forged = token.rsplit(".", 1)[0] + "." + token.rsplit(".", 1)[1][::-1]
    with pytest.raises(TokenRejected) as e:
        verifier.verify(forged, AUDIENCE, [subject])
    assert e.value.reason in ("signature", "malformed")
