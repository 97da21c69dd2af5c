"""Fair turns: one clock by which the busy paths of a process give the event loop a turn.

A coroutine that never suspends holds every other socket of its process. Three paths do
that while their peer keeps them busy: a server's ``receive`` returns without suspending
while frames wait (a client flooding frames: the consumer's frame loop); a ``send`` with
room in the buffer returns without suspending (an app sending in a loop to a client that
reads as fast: Streampod's uvicorn protocol); a streaming method's generator with credit
(``streaming.methods``: values that need no wait, to a client that reads and grants as
fast). Each asks :func:`turn_due` after its work and, when it answers True, awaits
``asyncio.sleep(0)``.

The clock is the process's, not a path's or a socket's. A slice is a stretch of one turn
of the event loop (an iteration: the ready callbacks, then a poll for I/O): once a slice
is over, *every* path that asks yields, until the loop's next iteration starts the next
slice. Were only the first to yield (and the slice restarted there), the other busy tasks
already queued in that iteration would each run a slice of their own before the loop
polled again: 16 streams of one socket held another socket's ping for their 16 slices.
A quiet process never yields for it.

Imports only asyncio (``streaming.uvicorn_ws`` imports no Django; this module neither).
"""

from __future__ import annotations

import asyncio

#: Seconds of busy time (event-loop clock) in one turn of the loop after which the busy
#: paths yield.
FAIR_SLICE = 0.005

_due = 0.0  # the loop time at which the current slice is over
_yielding_until = 0.0  # while the slice is over: every caller yields (a backstop, see below)


def turn_due(now: float) -> bool:
    """Whether the caller should yield now (``now``: the running loop's ``time()``).

    True once the current slice is over, and for every caller after it until the event
    loop's next iteration, which starts the next slice: the caller awaits
    ``asyncio.sleep(0)``. Must be called with the event loop running.
    """
    global _yielding_until
    if now < _yielding_until:
        return True  # the slice is over: everyone's turn waits for the loop's next one
    if now >= _due:
        # Should the callback never run (its loop closed), yielding stops a slice later.
        _yielding_until = now + FAIR_SLICE
        asyncio.get_running_loop().call_soon(_next_slice)
        return True
    return False


def _next_slice() -> None:
    """The loop's next iteration: the next slice starts."""
    global _due, _yielding_until
    _yielding_until = 0.0
    _due = asyncio.get_running_loop().time() + FAIR_SLICE


__all__ = ["FAIR_SLICE", "turn_due"]
