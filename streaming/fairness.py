"""Fair turns: one clock by which the busy paths of a process give the event loop a turn.

A coroutine that never suspends holds every other socket of its process. Two paths do
that while their peer keeps them busy: a server's ``receive`` returns without suspending
while frames wait (a client flooding frames: the consumer's frame loop), and a ``send``
with room in the buffer returns without suspending (an app sending in a loop to a client
that reads as fast: Streampod's uvicorn protocol). Each asks :func:`turn_due` after its
work and, when it answers True, awaits ``asyncio.sleep(0)``.

The clock is the process's, not a path's or a socket's: any yield lets the event loop run
everything that is ready, so one yield per :data:`FAIR_SLICE` of busy time, by whichever
path reaches the deadline first, is enough, and a quiet process never yields for it.

Imports nothing (``streaming.uvicorn_ws`` imports no Django; this module neither).
"""

from __future__ import annotations

#: Seconds of busy time (event-loop clock) after which the next path to ask yields.
FAIR_SLICE = 0.005

_due = 0.0  # the loop time from which the next caller yields


def turn_due(now: float) -> bool:
    """Whether the caller should yield now (``now``: the running loop's ``time()``).

    True at most once a :data:`FAIR_SLICE`, for the process: the caller that gets True
    yields (``await asyncio.sleep(0)``) and starts the next slice.
    """
    global _due
    if now >= _due:
        _due = now + FAIR_SLICE
        return True
    return False


__all__ = ["FAIR_SLICE", "turn_due"]
