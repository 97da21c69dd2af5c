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
GEN0_THRESHOLD = 10_000
#: Young collections per middle one, middle ones per full one (CPython: 10 and 10).
#:
#: Every closed socket leaves reference cycles (under daphne, daphne's, Twisted's and
#: autobahn's per-connection objects; whatever an endpoint's hooks tie together) and a
#: young collection moves what is alive at that instant, the sockets open then, to the
#: middle generation, where their garbage waits for the next middle collection. At
#: (50,000, 20, 20) that was about 9,000 short-lived sockets later: RSS grew 5 MB per
#: 1,000 authenticated sockets and did not level off (issue 10). Here garbage waits for
#: at most two young collections. Full collections stay rare: CPython runs one only
#: once what was promoted since the last one exceeds a quarter of what survived it.
OLDER_THRESHOLDS = (1, 1)


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
        # CPython runs a full collection only once the objects promoted since the last
        # one exceed a quarter of what that one left. The collection above counted every
        # start-up object; the frozen ones are out of sight now, and this (cheap: nothing
        # else is left to scan) one counts what remains. Without it the first full
        # collection waited for a quarter of start-up's objects to pile up as garbage.
        gc.collect()
    gc.set_threshold(gen0, *older)
    return previous
