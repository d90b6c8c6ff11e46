"""A lease server speaking the lease protocol (docs/budgets.md, "Lease protocol"), for testing
sidecar processes without a control plane: HTTPS with its own CA, bearer tokens from a set,
the grant rule and ledger of ``modelroute_sidecar.budget.ledger`` (the operator's own), in memory.

It can be stopped and started again on the same port with its ledger kept (an operator that
was unreachable for a while), and records the tokens and holders it saw.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from modelroute_operator.certs import make_ca, make_serving_cert
from modelroute_sidecar.budget.ledger import Amount, Limit, WindowLedger
from modelroute_sidecar.budget.windows import parse_rfc3339, parse_window, rfc3339
from tests.controlplane.cluster import free_port

PATH = "/budget/v1/leases"


class FakeLeaseServer:
    def __init__(self, tmp: Path, budgets: dict[str, dict[str, Limit]], tokens: set[str], ttl: float = 2.0) -> None:
        self.budgets = budgets  # name -> window -> limit
        self.tokens = set(tokens)
        self.ttl = ttl
        self.port = free_port()
        self.ledgers: dict[tuple[str, str, float], WindowLedger] = {}
        self.tokens_seen: list[str] = []
        self.holders_seen: set[str] = set()
        self.calls = 0
        self.lock = threading.Lock()
        ca, ca_key = make_ca("fake-lease-ca")
        cert, key = make_serving_cert(ca, ca_key, ["127.0.0.1", "localhost"])
        self.ca_file = tmp / "lease-ca.crt"
        self.ca_file.write_bytes(ca)
        (tmp / "lease.crt").write_bytes(cert)
        (tmp / "lease.key").write_bytes(key)
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(tmp / "lease.crt", tmp / "lease.key")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def spent(self, budget: str, window: str) -> Amount:
        total = Amount()
        with self.lock:
            for (b, w, _), led in self.ledgers.items():
                if (b, w) == (budget, window):
                    total.add(led.spent())
        return total

    def spent_in(self, budget: str, window: str, start: float) -> Amount:
        with self.lock:
            led = self.ledgers.get((budget, window, start))
            return led.spent() if led is not None else Amount()

    def granted(self, budget: str, window: str) -> float:
        with self.lock:
            return sum(h.granted.requests for (b, w, _), led in self.ledgers.items() if (b, w) == (budget, window)
                       for h in led.holders.values())

    async def leases(self, request: web.Request) -> web.Response:
        auth = request.headers.get("authorization", "")
        token = auth[7:] if auth.lower().startswith("bearer ") else ""
        self.tokens_seen.append(token)
        if token not in self.tokens:
            return web.json_response({"error": {"message": "not a valid token"}}, status=401)
        body = await request.json()
        holder = body["holder"]
        self.holders_seen.add(holder)
        now = time.time()
        out = []
        with self.lock:
            self.calls += 1
            for e in body["leases"]:
                answer: dict[str, Any] = {"budget": e["budget"], "window": e["window"], "windowStart": e["windowStart"]}
                limit = self.budgets.get(e["budget"], {}).get(e["window"])
                if limit is None:
                    out.append({**answer, "error": "not found"})
                    continue
                w = parse_window(e["window"])
                start = parse_rfc3339(e["windowStart"])
                current = w.start(now)
                if start == w.start(current - 1):  # the previous window: late settles count there
                    led = self.ledgers.setdefault((e["budget"], e["window"], start), WindowLedger(start))
                    entry = led.report(holder, Amount.from_json(e.get("used")), now)
                    out.append({**answer, "granted": entry.granted.to_json(limit.units), "exhausted": True,
                                "resetAt": rfc3339(w.end(start))})
                    continue
                if start != current:
                    out.append({**answer, "error": "not the current or the previous window",
                                "currentWindowStart": rfc3339(current)})
                    continue
                led = self.ledgers.setdefault((e["budget"], e["window"], start), WindowLedger(start))
                g = led.grant(holder, Amount.from_json(e.get("used")), Amount.from_json(e.get("want")), limit, now,
                              self.ttl)
                out.append({**answer, "granted": g.granted.to_json(limit.units), "exhausted": g.exhausted,
                            "resetAt": rfc3339(w.end(now))})
        return web.json_response({"leases": out, "ttlSeconds": self.ttl})

    # --- lifecycle (a thread with its own loop) ---------------------------------------------

    def start(self) -> FakeLeaseServer:
        ready = threading.Event()

        def serve() -> None:
            loop = self._loop = asyncio.new_event_loop()
            app = web.Application()
            app.router.add_post(PATH, self.leases)
            self._runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(self._runner.setup())
            loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port,
                                                ssl_context=self.context).start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        """Stop listening; the ledger stays for a later start()."""
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = self._thread = None

    def __enter__(self) -> FakeLeaseServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
