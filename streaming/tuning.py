"""Process tuning for a streaming server: call :func:`tune_gc` from ``asgi.py``.

CPython's cyclic garbage collector stops the whole process while it runs. A
streaming server holds many long-lived objects (every connection's protocol,
consumer, scope, tasks), so a full collection scans all of them: on 2,000 sockets
that was a 150-350 ms pause, which every message in flight waited for (the relay
benchmark's p99 was a GC pause). Most garbage a message path makes is freed by
reference counting at once; only cycles need the collector.

:func:`tune_gc` moves everything alive at start-up (Django, the app registry,
modules) out of the collector's sight with :func:`gc.freeze`, and makes
collections rarer, so that young collections scan a few milliseconds' worth of
objects and full ones come seldom. It changes the whole process: call it once,
from the ASGI module, after ``get_asgi_application()``.
"""

from __future__ import annotations

import gc

#: Allocations (net of frees) between young collections; CPython's default is 700.
GEN0_THRESHOLD = 50_000
#: Young collections per middle one, middle ones per full one (CPython: 10 and 10).
OLDER_THRESHOLDS = (20, 20)


def tune_gc(
    gen0: int = GEN0_THRESHOLD, older: tuple[int, int] = OLDER_THRESHOLDS, *, freeze: bool = True
) -> tuple[int, int, int]:
    """Set the collector's thresholds (and freeze start-up objects); returns the old ones.

    Idempotent. ``gen0=0`` would disable collection: refused, since a server that
    never collects cycles grows without bound.
    """
    if gen0 < 1 or min(older) < 1:
        raise ValueError("GC thresholds must be positive; disabling the collector leaks cycles.")
    previous = gc.get_threshold()
    if freeze:
        gc.collect()  # what start-up left as garbage goes now, not into the frozen set
        gc.freeze()
    gc.set_threshold(gen0, *older)
    return previous
