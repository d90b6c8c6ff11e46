"""``serve``'s budgets: the limit is the lease, and the spend lives in a journal.

``--state-dir DIR`` holds ``budgets.journal``, one JSON line per event, appended with a
single ``write(2)`` on an ``O_APPEND`` descriptor:

- ``{"r": id, "l": [[budget, window, start], ...], "a": [usd, tokens, requests]}`` when a
  request reserves, before its upstream call;
- ``{"s": id, "l": [...], "a": [...]}`` when it settles, with what it really used.

A line is in the kernel once ``write`` returns, so a killed process (SIGKILL, OOM) loses
nothing; the file is fsync'd every second for a machine that loses power. On start the
journal is replayed: a settled request counts what it used, a request that was reserved
and never settled (the process died while it ran) counts its whole reservation, which is
an upper bound. The replayed totals of the current windows are then written to a new
journal that atomically replaces the old one (compaction), so the file stays small.
Without ``--state-dir`` the spend is kept in memory only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from .holder import Ticket, WindowLease
from .ledger import Amount
from .windows import parse_window, rfc3339

log = logging.getLogger("modelroute.budget")

JOURNAL = "budgets.journal"
Key = tuple[str, str, str]  # (budget, window, window start as RFC 3339)


def _key(lease: WindowLease) -> list[str]:
    return [lease.budget, lease.window.name, lease.start_text]


def replay(lines: Iterable[bytes]) -> dict[Key, Amount]:
    """What a journal says each window spent (pure; a torn or foreign line is skipped)."""
    reserved: dict[int, tuple[list[Any], list[float]]] = {}
    totals: dict[Key, Amount] = {}

    def charge(keys: list[Any], a: list[float]) -> None:
        for k in keys:
            total = totals.setdefault((str(k[0]), str(k[1]), str(k[2])), Amount())
            total.add(Amount(float(a[0]), float(a[1]), float(a[2])))

    for line in lines:
        try:
            rec = orjson.loads(line)
            if "t" in rec:  # a compacted total
                charge([rec["t"]], rec["a"])
            elif "r" in rec:
                reserved[int(rec["r"])] = (rec["l"], rec["a"])
            elif "s" in rec:
                reserved.pop(int(rec["s"]), None)
                charge(rec["l"], rec["a"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError):
            continue  # a line torn by a crash mid-write: at most one, the last
    for keys, a in reserved.values():
        charge(keys, a)
    return totals


class LocalGranter:
    """Grants each window its whole limit (one holder: this process); spend persisted."""

    reachable = True
    checked = 0.0

    def __init__(self, state_dir: str | Path | None) -> None:
        self.path = Path(state_dir) / JOURNAL if state_dir is not None else None
        self.fd: int | None = None
        self.totals: dict[Key, Amount] = {}
        self.dirty = False
        self.task: asyncio.Task[None] | None = None
        if self.path is not None:
            self._open()

    def _open(self) -> None:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.totals = replay(self.path.read_bytes().splitlines())
        except FileNotFoundError:
            self.totals = {}
        self._compact()
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def _compact(self, keep: set[Key] | None = None) -> None:
        """Rewrite the journal as one total per window (atomically: a new file renamed over it)."""
        assert self.path is not None
        tmp = self.path.with_suffix(".tmp")
        lines = [orjson.dumps({"t": list(k), "a": [a.usd, a.tokens, a.requests]}) + b"\n"
                 for k, a in self.totals.items() if keep is None or k in keep]
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, b"".join(lines))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)

    def load(self, leases: Iterable[WindowLease], now: float) -> None:
        leases = list(leases)
        for lease in leases:
            self._grant(lease)
            if not (lease.used.usd or lease.used.tokens or lease.used.requests):
                found = self.totals.get((lease.budget, lease.window.name, lease.start_text))
                if found is not None:
                    lease.used = found.copy()
        if self.path is not None and self.fd is not None:
            # Windows of budgets that are gone or over need no history.
            current = {(lease.budget, lease.window.name, rfc3339(parse_window(lease.window.name).start(now)))
                       for lease in leases}
            stale = set(self.totals) - current
            if stale:
                for k in stale:
                    del self.totals[k]

    @staticmethod
    def _grant(lease: WindowLease) -> None:
        for u in lease.units:
            setattr(lease.granted, u, lease.limit.get(u))
        lease.exhausted = False

    async def top_up(self, leases: list[WindowLease]) -> None:
        for lease in leases:
            self._grant(lease)  # a new window (or a raised limit): the limit again

    def start(self) -> None:
        if self.fd is not None and self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._sync())

    async def _sync(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self.dirty and self.fd is not None:
                self.dirty = False
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(os.fsync, self.fd)

    def _append(self, rec: dict[str, Any]) -> None:
        if self.fd is None:
            return
        try:
            os.write(self.fd, orjson.dumps(rec) + b"\n")
            self.dirty = True
        except OSError as e:  # a full disk must not fail requests; it is logged
            log.error(f"budget journal {self.path}: {e.strerror}; spend is kept in memory only")

    def reserved(self, ticket: Ticket) -> None:
        if self.fd is None:
            return  # no --state-dir: nothing to write
        a = ticket.amount
        self._append({"r": ticket.rid, "l": [_key(lease) for lease in ticket.leases],
                      "a": [a.usd, a.tokens, a.requests]})

    def settled(self, ticket: Ticket, actual: Amount) -> None:
        if self.fd is None:
            return
        self._append({"s": ticket.rid, "l": [_key(lease) for lease in ticket.leases],
                      "a": [actual.usd, actual.tokens, actual.requests]})

    def wake(self) -> None:
        pass

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.fsync(self.fd)
            os.close(self.fd)
            self.fd = None
