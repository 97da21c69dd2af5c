"""streaming.fairness: one clock for the process; once a slice is over, every busy path
yields until the event loop's next iteration starts the next slice.

The behaviour it gives (one socket's traffic never holds the others) is tested against real
servers in tests/e2e/test_fairness.py and in tests/test_methods.py (many streams of one
socket); this is the clock's contract, shared by the frame loop (streaming.consumer), the
uvicorn protocol's sends (streaming.uvicorn_ws) and the streams of streaming methods.
"""

import asyncio

from streaming import consumer, fairness, methods, uvicorn_ws
from streaming.fairness import FAIR_SLICE, turn_due


async def test_once_a_slice_is_over_everyone_yields_until_the_loops_next_iteration(
    monkeypatch,
):
    monkeypatch.setattr(fairness, "_due", 0.0)  # restored after: the process's real clock
    monkeypatch.setattr(fairness, "_yielding_until", 0.0)
    loop = asyncio.get_running_loop()
    now = loop.time()
    assert turn_due(now)  # the slice is over
    assert turn_due(now)  # and for every other caller in this iteration of the loop
    await asyncio.sleep(0)  # the loop's next iteration: the next slice starts
    due = fairness._due
    assert due > now
    assert not turn_due(due - FAIR_SLICE / 2)
    assert turn_due(due)


async def test_the_busy_paths_share_the_clock():
    assert consumer.turn_due is uvicorn_ws.turn_due is methods.turn_due is fairness.turn_due
    assert consumer.FAIR_SLICE == uvicorn_ws.FAIR_SLICE == FAIR_SLICE == 0.005
