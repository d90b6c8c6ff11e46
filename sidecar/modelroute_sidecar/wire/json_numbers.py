"""Numbers JSON cannot carry: ``NaN``, ``Infinity``, and literals beyond a double (``1e999``).

pydantic-core's JSON parser accepts them (as ``nan``/``inf``) wherever a field is not
declared as a finite float, and orjson would then forward them as ``null``: a silent
change of the caller's request. Integers beyond 64 bits it keeps, and every serializer
on the way upstream then fails on them. orjson refuses both kinds (its parser the first,
its serializer the second), at about a gigabyte a second, so it is the check; the walk
that finds where the number sits runs only for a request that is refused anyway.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

NON_FINITE = "numbers must be finite (NaN, Infinity and values beyond 1.8e308 are not JSON numbers)"
TOO_BIG = "integers must fit in 64-bit range"


def bad_number(body: bytes, parsed: Any) -> tuple[tuple[int | str, ...], str] | None:
    """Where the first number in ``parsed`` (parsed from ``body``) that no upstream takes
    sits, and why (NON_FINITE or TOO_BIG); None when there is none."""
    try:
        orjson.loads(body)  # refuses NaN, Infinity and 1e999, which pydantic-core takes
        orjson.dumps(parsed)  # refuses integers beyond 64 bits, which orjson.loads makes floats of
        return None
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):
        pass
    stack: list[tuple[tuple[int | str, ...], Any]] = [((), parsed)]
    while stack:
        loc, value = stack.pop()
        if isinstance(value, float):
            if not math.isfinite(value):
                return loc, NON_FINITE
        elif isinstance(value, int) and not isinstance(value, bool):
            if not -(2**63) <= value < 2**64:
                return loc, TOO_BIG
        elif isinstance(value, dict):
            stack.extend(((*loc, k), v) for k, v in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend(((*loc, i), v) for i, v in reversed(list(enumerate(value))))
    return (), NON_FINITE  # orjson refused for a reason of its own: report it at the top
