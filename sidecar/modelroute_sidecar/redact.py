"""Keys never leave the process: find them, and recognisable pieces of them, in text.

Upstreams quote keys back: whole (a 401 that repeats the header), in part (the first
16 characters, OpenAI's ``sk-ab****wxyz`` mask), or escaped (``\\u0073k-...`` inside JSON,
``%2B`` in a URL). A :class:`Redactor` is built once per config load from the key
strings and applied to upstream text on its way to a caller or a log line. It replaces

* any run of at least :data:`MIN_FRAGMENT` characters that occurs in a key (so every
  prefix, suffix or middle piece that long, and the whole key),
* a key's last four characters right after a mask (``*``, ``.``, ``…``),
* a key shorter than :data:`MIN_FRAGMENT`, whole,

after undoing JSON (``\\uXXXX``, ``\\/``) and URL (``%XX``) escapes, so an escaped key is
found too and the whole escaped span is replaced. Other text is left as it was.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable

MIN_FRAGMENT = 8  # shorter runs are too common to be told from ordinary text
MIN_KEY = 4  # a "key" shorter than this is no secret (and would match everywhere)
MASKED_TAIL = 4  # OpenAI-style masks keep the last four characters
MARK = "[redacted]"

# Any depth of nesting too: JSON inside a JSON string, a URL encoded twice (%252B).
_ESCAPE = re.compile(r"\\+u([0-9a-fA-F]{4})|\\+([\"/])|%(?:25)*([0-9a-fA-F]{2})")
_MASKS = frozenset("*.\u2026\u2022")


class Redactor:
    """Matchers for one set of keys; ``text()`` and ``body()`` are pure and cheap when nothing matches."""

    __slots__ = ("_alphabet", "_grams", "_run", "_short", "_tails")

    def __init__(self, keys: Iterable[str]) -> None:
        found = {k for k in keys if len(k) >= MIN_KEY}
        self._grams = frozenset(k[i:i + MIN_FRAGMENT] for k in found for i in range(len(k) - MIN_FRAGMENT + 1))
        self._short = tuple(sorted(k for k in found if len(k) < MIN_FRAGMENT))
        self._tails = frozenset(k[-MASKED_TAIL:] for k in found if len(k) > 2 * MASKED_TAIL)
        self._alphabet = frozenset(c for k in found for c in k)
        self._run = _run_pattern(self._alphabet) if self._grams else None

    def __or__(self, other: Redactor) -> Redactor:
        """Both sets of keys (cheap: the matchers are merged, not rebuilt)."""
        both = Redactor(())
        both._grams = self._grams | other._grams
        both._short = tuple(sorted({*self._short, *other._short}))
        both._tails = self._tails | other._tails
        both._alphabet = self._alphabet | other._alphabet
        both._run = _run_pattern(both._alphabet) if both._grams else None
        return both

    def __bool__(self) -> bool:
        return bool(self._grams or self._short)

    def text(self, s: str) -> str:
        if not s or not self:
            return s
        view, starts = _unescape(s)
        spans = self._spans(view)
        if not spans:
            return s
        out: list[str] = []
        pos = 0
        for a, b in spans:
            oa, ob = (a, b) if starts is None else (_orig(starts, view, s, a), _orig(starts, view, s, b))
            out.append(s[pos:oa])
            out.append(MARK if b - a > MASKED_TAIL or oa == 0 or s[oa - 1] not in _MASKS else "*" * (b - a))
            pos = ob
        out.append(s[pos:])
        return "".join(out)

    def body(self, data: bytes) -> bytes:
        """An upstream body (JSON or text) with keys replaced; the same bytes when none is found."""
        if not data or not self:
            return data
        text = data.decode("utf-8", "replace")
        clean = self.text(text)
        return data if clean == text else clean.encode()

    def _spans(self, view: str) -> list[tuple[int, int]]:
        hits: list[tuple[int, int]] = []
        grams = self._grams
        if self._run is not None:
            n = MIN_FRAGMENT
            for m in self._run.finditer(view):
                for i in range(m.start(), m.end() - n + 1):
                    if view[i:i + n] in grams:
                        hits.append((i, i + n))
        for key in self._short:
            start = view.find(key)
            while start >= 0:
                hits.append((start, start + len(key)))
                start = view.find(key, start + 1)
        for tail in self._tails:
            start = view.find(tail)
            while start >= 0:
                if start and view[start - 1] in _MASKS:
                    hits.append((start, start + len(tail)))
                start = view.find(tail, start + 1)
        if not hits:
            return []
        hits.sort()
        merged = [hits[0]]
        for a, b in hits[1:]:
            if a <= merged[-1][1]:
                if b > merged[-1][1]:
                    merged[-1] = (merged[-1][0], b)
            else:
                merged.append((a, b))
        return merged


def _run_pattern(alphabet: frozenset[str]) -> re.Pattern[str]:
    """Candidate runs: only characters that occur in some key, long enough to hold a fragment."""
    return re.compile(f"[{re.escape(''.join(sorted(alphabet)))}]{{{MIN_FRAGMENT},}}")


def _unescape(s: str) -> tuple[str, list[tuple[int, int]] | None]:
    """``s`` with JSON and URL escapes undone, and where each piece of it came from.

    The map is a list of (view offset, original offset) at each piece's start; a piece is
    either a stretch of literal text or one decoded escape.
    """
    if "\\" not in s and "%" not in s:
        return s, None
    parts: list[str] = []
    starts: list[tuple[int, int]] = []
    pos = view_len = 0
    for m in _ESCAPE.finditer(s):
        a, b = m.span()
        if a > pos:
            starts.append((view_len, pos))
            parts.append(s[pos:a])
            view_len += a - pos
        hexa, char, pct = m.groups()
        starts.append((view_len, a))
        decoded = chr(int(hexa, 16)) if hexa else char if char else chr(int(pct, 16))
        parts.append(decoded)
        view_len += 1
        pos = b
    if pos < len(s):
        starts.append((view_len, pos))
        parts.append(s[pos:])
    if pos == 0:
        return s, None  # no escape after all
    return "".join(parts), starts


def _orig(starts: list[tuple[int, int]], view: str, s: str, v: int) -> int:
    """The offset in the original text of view offset ``v`` (a span boundary)."""
    if v >= len(view):
        return len(s)
    i = bisect.bisect_right(starts, (v, len(s) + 1)) - 1
    view_at, orig_at = starts[i]
    nxt = starts[i + 1][1] if i + 1 < len(starts) else len(s)
    nxt_view = starts[i + 1][0] if i + 1 < len(starts) else len(view)
    if nxt_view - view_at == 1 and nxt - orig_at != 1:
        return orig_at  # a decoded escape: its whole source span starts here
    return orig_at + (v - view_at)
