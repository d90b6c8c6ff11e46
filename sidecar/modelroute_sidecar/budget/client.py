"""The lease client: a sidecar's leases from the operator's lease server (docs/budgets.md,
"Lease protocol").

``POST {MODELROUTE_BUDGET_URL}/budget/v1/leases`` over HTTPS, the server checked against
``MODELROUTE_BUDGET_CA`` (a PEM file of the mounted ConfigMap), authenticated with the pod's
projected ServiceAccount token, read from its file on every call (kubelet rotates it).
Every figure sent is cumulative, so a lost reply or a retry changes nothing.

Requests never wait for this in the common case: a background task reports spend at least
every ttl/2 while there is unreported spend, and renews a lease when its free part falls
under half the last slice. Only a request whose reservation does not fit waits, at most
:data:`~.holder.TOP_UP_DEADLINE`, for one shared call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from .holder import EXHAUSTED_RECHECK, Ticket, WindowLease
from .ledger import Amount
from .windows import parse_rfc3339, rfc3339

log = logging.getLogger("modelroute.budget")

LEASES_PATH = "/budget/v1/leases"
DEFAULT_TOKEN_FILE = "/var/run/secrets/modelroute/token"
DEFAULT_TTL = 30.0
CALL_TIMEOUT = 5.0  # a background call; requests wait TOP_UP_DEADLINE at most
RENEW_FACTOR = 4  # a renewal asks for this many of the last reservation
MAX_ENTRIES = 64  # leases per call, as the server takes them
BATCH_SECONDS = 0.05  # at most one background call this often


class RemoteGranter:
    def __init__(self, url: str, holder: str, token_file: str | Path, ca_file: str | Path | None) -> None:
        self.url = url.rstrip("/") + LEASES_PATH
        self.holder = holder
        self.token_file = Path(token_file)
        self.ca_file = Path(ca_file) if ca_file else None
        self.reachable = True
        self.checked = 0.0
        self.ttl = DEFAULT_TTL
        self.leases: list[WindowLease] = []
        self.session: aiohttp.ClientSession | None = None
        self.ssl: ssl.SSLContext | None = None
        self.task: asyncio.Task[None] | None = None
        self.kick = asyncio.Event()
        self.inflight: asyncio.Future[None] | None = None

    @classmethod
    def from_env(cls, url: str, env: Mapping[str, str]) -> RemoteGranter:
        """holder = ``<namespace>/<pod>/<nonce>``: one per process, so a restarted sidecar is a new
        holder. The pod name is MODELROUTE_POD_NAME (downward API), else HOSTNAME (the pod's name
        unless its spec sets a hostname)."""
        pod = env.get("MODELROUTE_POD_NAME") or env.get("HOSTNAME", "")
        holder = f"{env.get('MODELROUTE_NAMESPACE', '')}/{pod}/{os.urandom(6).hex()}"
        return cls(url, holder, env.get("MODELROUTE_BUDGET_TOKEN_FILE", DEFAULT_TOKEN_FILE),
                   env.get("MODELROUTE_BUDGET_CA"))

    # --- Granter -------------------------------------------------------------------------

    def load(self, leases: Iterable[WindowLease], now: float) -> None:
        self.leases = list(leases)
        self.wake()  # ask for leases of new budgets now, not on their first request

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._loop())

    def reserved(self, ticket: Ticket) -> None:
        pass

    def settled(self, ticket: Ticket, actual: Amount) -> None:
        pass  # reported by the loop, at least every ttl/2

    def wake(self) -> None:
        self.kick.set()

    async def top_up(self, leases: list[WindowLease]) -> None:
        """One call for every request short at the same moment."""
        if self.inflight is None or self.inflight.done():
            self.inflight = asyncio.ensure_future(self._call(self.leases, short=leases))
        await asyncio.shield(self.inflight)

    async def close(self) -> None:
        """Report what was spent, once more (SIGTERM): nothing is lost, the operator can
        retire this holder's lease at once rather than after its TTL."""
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                await self._call(self.leases, short=[], final=True)
        if self.session is not None:
            await self.session.close()

    # --- the background loop ---------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.ttl / 2):
                    await self.kick.wait()
            self.kick.clear()
            now = time.time()
            due = [lease for lease in self.leases if _unreported(lease) or not lease.slice_given
                   or lease.previous is not None or (
                lease.low() and not (lease.exhausted and now - lease.answered < EXHAUSTED_RECHECK))]
            if due or not self.reachable:
                try:
                    await self._call(self.leases, short=[])
                except Exception:  # the loop must outlive any one failure
                    log.exception("budget lease call failed")
                # not in a busy loop: settles arriving meanwhile go in the next call together
                await asyncio.sleep(1.0 if not self.reachable else BATCH_SECONDS)

    # --- one call -------------------------------------------------------------------------

    def _entries(self, leases: list[WindowLease], short: list[WindowLease], final: bool) -> list[dict[str, Any]]:
        entries = []
        now_short = {id(lease) for lease in short}
        for lease in leases:
            want = Amount()
            if not final:
                for u in lease.units:
                    # free (granted - used) on the operator's books must cover what is reserved here
                    # and the next reservation(s)
                    ask = lease.want.get(u) if id(lease) in now_short else lease.last.get(u) * RENEW_FACTOR
                    setattr(want, u, lease.reserved.get(u) + ask)
            entries.append({"budget": lease.budget, "window": lease.window.name, "windowStart": lease.start_text,
                            "used": lease.used.to_json(lease.units), "want": want.to_json(lease.units)})
            if lease.previous is not None:
                entries.append({"budget": lease.budget, "window": lease.window.name,
                                "windowStart": lease.previous[0], "used": lease.previous[1].to_json(lease.units)})
        return entries

    async def _call(self, leases: list[WindowLease], short: list[WindowLease], final: bool = False) -> None:
        per_call = MAX_ENTRIES // 2  # a lease may add an entry for its previous window
        for i in range(0, len(leases), per_call):  # the server takes at most MAX_ENTRIES a call
            await self._call_batch(leases[i:i + per_call], short, final)

    async def _call_batch(self, leases: list[WindowLease], short: list[WindowLease], final: bool) -> None:
        if not leases:
            return
        sent = [(lease, lease.start, lease.used.copy(), lease.previous) for lease in leases]
        body = orjson.dumps({"holder": self.holder, "leases": self._entries(leases, short, final)})
        try:
            answer = await self._post(body)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError, ssl.SSLError) as e:
            if self.reachable:
                log.warning(f"budget operator unreachable ({type(e).__name__}: {e}); spending the leases held")
            self.reachable = False
            self.checked = time.time()
            return
        self.reachable = True
        self.checked = time.time()
        ttl = answer.get("ttlSeconds")
        if isinstance(ttl, int | float) and 1 <= ttl <= 3600:
            self.ttl = float(ttl)
        by_key = {(e.get("budget"), e.get("window"), e.get("windowStart")): e
                  for e in answer.get("leases") or () if isinstance(e, dict)}
        for lease, start, used, previous in sent:
            if previous is not None and lease.previous is previous and (
                    lease.budget, lease.window.name, previous[0]) in by_key:
                lease.previous = None  # counted (or refused as too old: nothing more to do)
            entry = by_key.get((lease.budget, lease.window.name, rfc3339(start)))
            if entry is None or lease.start != start:
                continue  # the window rolled meanwhile: its next call asks afresh
            if entry.get("error"):
                refusal = str(entry["error"])[:200]
                if refusal != lease.refusal:
                    log.warning(f"budget {lease.budget} window {lease.window.name}: the operator says {refusal}")
                lease.refusal = refusal
                continue
            lease.refusal = None
            try:
                granted = Amount.from_json(entry.get("granted"))
            except ValueError:
                continue
            for u in lease.units:
                before = lease.granted.get(u)
                now = max(before, granted.get(u))  # cumulative: never goes back
                setattr(lease.granted, u, now)
                setattr(lease.slice, u, max(lease.slice.get(u), now - before) if now > before else lease.slice.get(u))
            lease.slice_given = True
            lease.reported = used
            lease.exhausted = bool(entry.get("exhausted"))
            lease.answered = time.time()

    async def _post(self, body: bytes) -> dict[str, Any]:
        if self.session is None:
            self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT),
                                                 skip_auto_headers=("User-Agent",))
        if self.ssl is None and self.url.startswith("https://"):
            self.ssl = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        token = (await asyncio.to_thread(self.token_file.read_text)).strip()
        headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
        try:
            resp = await self.session.post(self.url, data=body, headers=headers, ssl=self.ssl or True)
        except aiohttp.ClientConnectorCertificateError:
            # The operator renewed its CA: the ConfigMap volume brings the new file; read it again, once.
            self.ssl = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
            resp = await self.session.post(self.url, data=body, headers=headers, ssl=self.ssl)
        async with resp:
            data = await resp.read()
            if resp.status != 200:
                # 401/403: a token or holder the server refuses; 503: it cannot store the ledger now.
                # Either way no lease: as unreachable (said once), failurePolicy applies once spent.
                raise ValueError(f"HTTP {resp.status} from the lease server: {_message(data)}")
        answer = orjson.loads(data)
        if not isinstance(answer, dict):
            raise ValueError("the lease server's answer is not an object")
        return answer


def _message(data: bytes) -> str:
    try:
        return str(orjson.loads(data)["error"]["message"])[:300]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return "(no message)"


def _unreported(lease: WindowLease) -> bool:
    return lease.used != lease.reported


__all__ = ["RemoteGranter", "parse_rfc3339"]
