"""Pausing Python's cyclic garbage collector around big bursts of allocation.

A full collection scans every live tracked object with the GIL held, stalling the event loop
for as long as it takes; a reload (hundreds of thousands of config objects) or a big scrape
(as many samples) triggers several. Their allocations hold no cycles, so reference counting
frees them either way; pausing only postpones other code's cycles until the burst is over.
Pauses nest, from any thread: the collector runs again when the last one ends.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_depth = 0
_was_enabled = True


@contextmanager
def paused() -> Iterator[None]:
    global _depth, _was_enabled
    with _lock:
        if _depth == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _was_enabled:
                gc.enable()
