"""Entra workload identity for azure-openai, through the real `modelroute serve` process.

The pod's projected token (here minted by a test issuer and written to a file as kubelet
does) is the client assertion; the Entra fake verifies it against the issuer's JWKS
(signature, issuer, subject, audience api://AzureADTokenExchange, expiry) and issues
access tokens that live 3 seconds; the Azure OpenAI fake accepts only a valid, unexpired
one as ``Authorization: Bearer``. Under load the token is renewed several times with not
one failed request, one token request at a time.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web

from tests.fakes.azure import FakeAzureOpenAI
from tests.fakes.base import wait_until_sync
from tests.fakes.entra import AUDIENCE, FakeEntra
from tests.fakes.oidc import TestIssuer
from tests.gateway.harness import FAST, model_route
from tests.gateway.procs import GatewayProcess, modelroute, scrape
from tests.gateway.test_reload import write_yaml

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT = "0e1b4c9a-3f55-4c2e-9d7e-6f1a2b3c4d5e"
SUBJECT = "system:serviceaccount:apps:chatbot"
LIFETIME = 3  # seconds an Entra access token lives here: renewal every 2 s


def azure_key(entra: FakeEntra, az: FakeAzureOpenAI, **azure: Any) -> dict[str, Any]:
    return {"apiVersion": "modelroute.dev/v1alpha1", "kind": "ProviderKey", "metadata": {"name": "azure"},
            "spec": {"provider": "azure-openai", "baseURL": az.url, "models": [],
                     "workloadIdentity": {"azure": {"tenantId": TENANT, "clientId": CLIENT,
                                                    "authorityHost": entra.authority, **azure}}}}


class QuotingAzure(FakeAzureOpenAI):
    """An upstream that quotes the credential it was sent in its error (some proxies do)."""

    async def azure_chat(self, request: web.Request) -> web.StreamResponse:
        self.authenticate(request)
        return self.gateway_error(400, f"Request rejected for credential {request.headers['Authorization']}")


@contextmanager
def gateway(tmp_path: Path, issuer: TestIssuer, *, assertion_lifetime: float = 3600, subject: str = "chatbot",
            azure: type[FakeAzureOpenAI] = FakeAzureOpenAI, lifetime: int = LIFETIME,
            ) -> Iterator[tuple[GatewayProcess, FakeEntra, FakeAzureOpenAI, Path]]:
    token_file = tmp_path / "identity" / "azure"
    issuer.write(token_file, AUDIENCE, namespace="apps", service_account=subject, lifetime=assertion_lifetime)
    with FakeEntra(TENANT, issuer.verifier(), {CLIENT: [SUBJECT]}, lifetime=lifetime) as entra, \
            azure(keys=()) as az:
        az.entra = entra
        cfg = tmp_path / "routes.yaml"
        write_yaml(cfg, [azure_key(entra, az), model_route("chat", ("azure", "gpt-4o"), **FAST)])
        with modelroute(tmp_path, "serve", "-f", str(cfg), env={"AZURE_FEDERATED_TOKEN_FILE": str(token_file)}) as gp:
            yield gp, entra, az, token_file


async def chat(s: aiohttp.ClientSession, gp: GatewayProcess, stream: bool) -> None:
    body = {"model": "chat", "messages": [{"role": "user", "content": "a b c"}], "stream": stream}
    async with s.post(gp.url + "/chat/completions", json=body) as r:
        raw = await r.read()
        assert r.status == 200, raw[:300]
        if stream:
            assert raw.rstrip().endswith(b"data: [DONE]"), raw[-200:]
        else:
            assert orjson.loads(raw)["choices"][0]["message"]["content"]


def test_renewal_under_load_fails_no_request_and_asks_one_token_at_a_time(tmp_path: Path) -> None:
    issuer = TestIssuer()
    with gateway(tmp_path, issuer) as (gp, entra, az, token_file):
        failures: list[str] = []
        done = 0

        async def load() -> float:
            nonlocal done
            started = time.monotonic()
            deadline = started + 60
            async with aiohttp.ClientSession() as s:

                async def caller(i: int) -> None:
                    nonlocal done
                    # Until the access token has been renewed four times (it lives 3 s).
                    while entra.issued < 5 and time.monotonic() < deadline:
                        try:
                            await chat(s, gp, stream=(done + i) % 2 == 0)
                        except Exception as e:  # every failure is recorded; none may happen
                            failures.append(f"{type(e).__name__}: {e}")
                        done += 1

                await asyncio.gather(*[caller(i) for i in range(24)])
            return time.monotonic() - started

        elapsed = asyncio.run(load())
        assert not failures, failures[:5]
        assert entra.issued >= 5, f"only {entra.issued} tokens in {elapsed:.1f}s"
        assert done > 10 * entra.issued  # the token is cached, not fetched per request
        assert entra.max_inflight == 1  # single flight
        # Renewals follow the token's lifetime (every 2 s), not the request rate: the first, the
        # scheduled ones, and at most one early renewal per 30 s for a token refused in flight.
        assert entra.issued <= 1 + elapsed / 2 + 1 + elapsed / 30 + 1, (entra.issued, elapsed)
        # On a loaded machine a 3-second token can expire in flight: Azure refuses it, the
        # credential is renewed at once and the attempt repeated, so no request fails (above).
        assert az.bearer_accepted >= done
        sent = {r.headers.get("authorization", "") for r in az.requests}
        assert all(h.startswith("Bearer ") for h in sent) and not any("api-key" in r.headers for r in az.requests)
        assert len(sent) >= 3  # renewed tokens were used, not only the first
        # Renewals and the expiry are metrics, per ProviderKey.
        before = entra.issued
        page = scrape(gp)
        after = entra.issued
        renewed = re.search(r'^modelroute_credential_renewals_total\{provider_key="azure",result="success"\} (\S+)$',
                            page, re.M)
        assert renewed is not None and before <= float(renewed.group(1)) <= after, page
        expiry = re.search(r'^modelroute_credential_expiry_timestamp_seconds\{provider_key="azure"\} (\S+)$',
                           page, re.M)
        assert expiry is not None and float(expiry.group(1)) > time.time() - 1
        # No token, neither the access tokens nor the pod's assertion, in logs or metrics.
        exposed = gp.logs() + scrape(gp)
        secrets = [h.removeprefix("Bearer ") for h in sent] + [token_file.read_text()]
        for secret in secrets:
            for piece in (secret, secret[-40:], secret.split(".")[-1][:32]):
                assert piece not in exposed


def test_an_assertion_the_cloud_refuses_is_a_clear_503_and_recovers_when_kubelet_renews_it(tmp_path: Path) -> None:
    issuer = TestIssuer()
    # Expired already: Entra answers AADSTS700024.
    with gateway(tmp_path, issuer, assertion_lifetime=-60) as (gp, entra, az, token_file):
        client = openai.OpenAI(base_url=gp.url, api_key="unused", max_retries=0)
        with pytest.raises(openai.APIStatusError) as e:
            client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
        assert e.value.status_code == 503
        message = str(e.value.body)
        assert "azure" in message and "HTTP 401 (invalid_client)" in message, message
        assert entra.verifier.rejected and set(entra.verifier.rejected) == {"expired"}
        assert 'modelroute_credential_renewals_total{provider_key="azure",result="failure"}' in scrape(gp)
        assert az.requests == []  # nothing went to Azure without a token
        issuer.write(token_file, AUDIENCE, namespace="apps", service_account="chatbot")  # kubelet renews it
        wait_until_sync(lambda: entra.issued >= 1, within=20)  # the retry timer picks it up
        answer = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
        assert answer.choices[0].message.content
        exposed = gp.logs() + scrape(gp)
        assert token_file.read_text() not in exposed


def test_a_token_of_another_service_account_is_refused(tmp_path: Path) -> None:
    issuer = TestIssuer()
    with gateway(tmp_path, issuer, subject="intruder") as (gp, entra, az, _):
        client = openai.OpenAI(base_url=gp.url, api_key="unused", max_retries=0)
        with pytest.raises(openai.APIStatusError) as e:
            client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
        assert e.value.status_code == 503
        assert "subject" in entra.verifier.rejected and entra.issued == 0 and az.requests == []


def test_a_token_the_upstream_quotes_back_is_redacted_for_the_caller_and_the_log(tmp_path: Path) -> None:
    issuer = TestIssuer()
    with gateway(tmp_path, issuer, azure=QuotingAzure) as (gp, entra, az, _):
        client = openai.OpenAI(base_url=gp.url, api_key="unused", max_retries=0)
        for _ in range(2):  # across a renewal: the new token and the one before it
            with pytest.raises(openai.BadRequestError) as e:
                client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
            assert "Request rejected for credential Bearer [redacted]" in str(e.value.body), e.value.body
            issued = entra.issued
            wait_until_sync(lambda: entra.issued > issued, within=20)  # noqa: B023
        tokens = {r.headers["authorization"].removeprefix("Bearer ") for r in az.requests}
        assert len(tokens) == 2
        logs = gp.logs()
        for t in tokens:
            assert t not in logs and t[-24:] not in logs


def test_a_refused_token_is_renewed_at_once_and_the_request_succeeds(tmp_path: Path) -> None:
    issuer = TestIssuer()
    with gateway(tmp_path, issuer, lifetime=3600) as (gp, entra, az, _):  # no renewal on the clock here
        client = openai.OpenAI(base_url=gp.url, api_key="unused", max_retries=0)
        client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
        assert entra.issued == 1
        az.revoked.add(az.requests[-1].headers["authorization"].removeprefix("Bearer "))
        answer = client.chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": "hi"}])
        assert answer.headers["x-modelroute-attempts"] == "2"  # refused, renewed, answered
        assert entra.issued == 2 and az.bearer_refused == 1
        # A refusal a new token does not cure is not answered with a token request per call.
        az.revoked.add(az.requests[-1].headers["authorization"].removeprefix("Bearer "))
        for _ in range(5):
            with pytest.raises(openai.APIStatusError):
                client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
        assert entra.issued == 2
