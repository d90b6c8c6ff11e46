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
ANCHOR = 4  # 2 * ANCHOR - 1 <= MIN_FRAGMENT: every fragment holds an aligned anchor (see _fragments)
MIN_KEY = 4  # a "key" shorter than this is no secret (and would match everywhere)
MASKED_TAIL = 4  # OpenAI-style masks keep the last four characters
MARK = "[redacted]"

# Escapes of printable ASCII only (keys are ASCII; escaped text in other scripts is left alone,
# which keeps the work small), at any depth of nesting: JSON in a JSON string, %252B.
_ESCAPE = re.compile(r"\\+u00([2-7][0-9a-fA-F])|\\+([\"/])|%(?:25)*([2-7][0-9a-fA-F])")
_MASKS = frozenset("*.\u2026\u2022")


class Redactor:
    """Matchers for one set of keys; ``text()`` and ``body()`` are pure and cheap when nothing matches."""

    __slots__ = ("_anchors", "_keys", "_short", "_tails")

    def __init__(self, keys: Iterable[str]) -> None:
        found = {k for k in keys if len(k) >= MIN_KEY}
        self._keys = frozenset(found)
        anchors: dict[str, list[tuple[str, int]]] = {}
        for k in found:
            if len(k) >= MIN_FRAGMENT:
                for o in range(len(k) - ANCHOR + 1):
                    anchors.setdefault(k[o:o + ANCHOR], []).append((k, o))
        self._anchors = {piece: tuple(at) for piece, at in anchors.items()}
        self._short = tuple(sorted(k for k in found if len(k) < MIN_FRAGMENT))
        self._tails = frozenset(k[-MASKED_TAIL:] for k in found if len(k) > 2 * MASKED_TAIL)

    def __or__(self, other: Redactor) -> Redactor:
        """Both sets of keys."""
        return Redactor(self._keys | other._keys)

    def __bool__(self) -> bool:
        return bool(self._keys)

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

    def _fragments(self, view: str) -> list[tuple[int, int]]:
        """Runs of MIN_FRAGMENT or more characters that occur in a key.

        Such a run holds a whole ANCHOR-long piece of the text at an offset divisible by
        ANCHOR, so the text's aligned pieces are intersected with the keys' pieces (both
        sets, built in C); only the few pieces that meet are looked at, and extended both
        ways along the key they came from.
        """
        anchors = self._anchors
        n = len(view)
        pieces = set(map(view.__getitem__, map(slice, range(0, n, ANCHOR), range(ANCHOR, n + ANCHOR, ANCHOR))))
        hits: list[tuple[int, int]] = []
        covered = bytearray(n)  # an echo repeated many times is extended once per copy, not once per piece
        for piece in anchors.keys() & pieces:
            q = view.find(piece)
            while q >= 0:
                if not covered[q]:
                    for key, o in anchors[piece]:
                        a = 0
                        while a < o and a < q and view[q - a - 1] == key[o - a - 1]:
                            a += 1
                        b = ANCHOR
                        while o + b < len(key) and q + b < n and view[q + b] == key[o + b]:
                            b += 1
                        if a + b >= MIN_FRAGMENT:
                            hits.append((q - a, q + b))
                            covered[q - a:q + b] = b"\1" * (a + b)
                q = view.find(piece, q + 1)
        return hits

    def _spans(self, view: str) -> list[tuple[int, int]]:
        hits = self._fragments(view) if self._anchors else []
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
