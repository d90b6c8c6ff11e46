"""Fixed budget windows, aligned in UTC.

``Nm``/``Nh``/``Nd`` windows are aligned to multiples of their length since the Unix
epoch (so ``1d`` starts at UTC midnight and ``7d`` on a Thursday, the epoch's weekday);
``month`` is the calendar month in UTC. Every window is half-open: [start, end).
Times are float POSIX seconds on the hot path; the datetime helpers are for the edges
(status, the lease protocol's RFC 3339 strings).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Final

from ..config import WINDOW_PATTERN

_WINDOW = re.compile(WINDOW_PATTERN)
_UNIT_SECONDS: Final = {"m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True, slots=True)
class Window:
    name: str
    seconds: int  # the fixed length; 0 for ``month``

    def start(self, now: float) -> float:
        if self.seconds:
            return now - now % self.seconds
        t = datetime.fromtimestamp(now, UTC)
        return datetime(t.year, t.month, 1, tzinfo=UTC).timestamp()

    def end(self, now: float) -> float:
        """The first instant after the window holding ``now`` (the next window's start)."""
        if self.seconds:
            return now - now % self.seconds + self.seconds
        t = datetime.fromtimestamp(now, UTC)
        year, month = (t.year + 1, 1) if t.month == 12 else (t.year, t.month + 1)
        return datetime(year, month, 1, tzinfo=UTC).timestamp()

    def retry_after(self, now: float) -> int:
        """Whole seconds until the window resets, rounded up (at least 1): ``Retry-After``."""
        return max(1, math.ceil(self.end(now) - now))


@lru_cache(maxsize=256)
def parse_window(name: str) -> Window:
    """The window named ``name`` (``1m``, ``15m``, ``1h``, ``1d``, ``7d``, ``month``)."""
    if not _WINDOW.match(name):
        raise ValueError(f"window {name!r} is not Nm, Nh, Nd or month")
    if name == "month":
        return Window(name, 0)
    return Window(name, int(name[:-1]) * _UNIT_SECONDS[name[-1]])


def _ts(now: datetime | float) -> float:
    if isinstance(now, datetime):
        if now.tzinfo is None:
            raise ValueError("a naive datetime has no UTC instant")
        return now.timestamp()
    return float(now)


def window_start(window: str, now: datetime | float) -> datetime:
    return datetime.fromtimestamp(parse_window(window).start(_ts(now)), UTC)


def window_end(window: str, now: datetime | float) -> datetime:
    return datetime.fromtimestamp(parse_window(window).end(_ts(now)), UTC)


def retry_after(window: str, now: datetime | float) -> int:
    return parse_window(window).retry_after(_ts(now))


def rfc3339(ts: float) -> str:
    """``2026-11-01T00:00:00Z``: window starts are whole seconds, so no fraction is written."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> float:
    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if t.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset")
    return t.timestamp()
