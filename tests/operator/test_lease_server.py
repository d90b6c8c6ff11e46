"""The lease server's HTTPS without a cluster: a renewed certificate (new files in the directory,
as cert-manager or the operator's own renewal writes them) is served to new connections without a
restart, and what reaches the handler before any API call (no token, a bad path) is refused."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest

from modelroute_operator.budget_store import BudgetStore
from modelroute_operator.certs import ensure_certs
from modelroute_operator.lease_server import LeaseServer
from modelroute_operator.metrics import OperatorMetrics
from modelroute_operator.tokenauth import TokenReviewer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def served_certificate(port: int) -> bytes:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        der: bytes = ssl_object.getpeercert(binary_form=True)
        return der
    finally:
        writer.close()


async def post(port: int, ca: Path, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    import aiohttp

    context = ssl.create_default_context(cafile=str(ca))
    async with aiohttp.ClientSession() as session, session.post(
            f"https://127.0.0.1:{port}{path}", json={}, headers=headers or {}, ssl=context) as r:
        return r.status, await r.json(content_type=None)


async def test_a_renewed_certificate_is_served_without_a_restart(tmp_path: Path) -> None:
    certs = ensure_certs(tmp_path, ["127.0.0.1"])
    metrics = OperatorMetrics()
    server = LeaseServer(BudgetStore(None), TokenReviewer(None), metrics=metrics)  # type: ignore[arg-type]
    port = free_port()
    await server.start("127.0.0.1", port, certs, check_seconds=0.05)
    try:
        first = await served_certificate(port)
        # Refused before any API call: no token (401, with the header a client needs), a wrong path.
        status, body = await post(port, certs.ca, "/budget/v1/leases")
        assert status == 401 and "Bearer" in body["error"]["message"]
        assert await post(port, certs.ca, "/budget/v1/other") == (404, {"error": {"message": "Not Found"}})
        # The files renewed in place (the operator's own renewal: a new CA and certificate).
        renewed = ensure_certs(tmp_path, ["127.0.0.1", "modelroute-webhook.modelroute-system.svc"])

        async def new_one() -> bool:
            return await served_certificate(port) != first

        deadline = asyncio.get_running_loop().time() + 10
        while not await new_one():
            assert asyncio.get_running_loop().time() < deadline, "the renewed certificate was not served"
            await asyncio.sleep(0.05)
        # A client trusting the new CA connects.
        assert (await post(port, renewed.ca, "/budget/v1/leases"))[0] == 401
        counts = {s.labels["code"]: s.value for m in metrics.registry.collect() for s in m.samples
                  if s.name == "modelroute_operator_lease_requests_total"}
        assert counts["401"] == 2 and counts["404"] == 1
    finally:
        await server.close()


@pytest.mark.parametrize("header", ["", "Basic dXNlcjpwYXNz", "Bearer ", "bearer"])
async def test_without_a_bearer_token_nothing_is_asked_of_the_api_server(tmp_path: Path, header: str) -> None:
    certs = ensure_certs(tmp_path, ["127.0.0.1"])
    server = LeaseServer(BudgetStore(None), TokenReviewer(None))  # type: ignore[arg-type]
    port = free_port()
    await server.start("127.0.0.1", port, certs)
    try:
        status, _ = await post(port, certs.ca, "/budget/v1/leases", {"Authorization": header} if header else {})
        assert status == 401
        assert server.reviewer.reviews == 0
    finally:
        await server.close()
