"""streaming.fairness: one clock for the process, a turn at most once a FAIR_SLICE.

The behaviour it gives (one socket's traffic never holds the others) is tested against real
servers in tests/e2e/test_fairness.py; this is the clock's contract, shared by the frame loop
(streaming.consumer) and the uvicorn protocol's sends (streaming.uvicorn_ws).
"""

from streaming import consumer, fairness, uvicorn_ws
from streaming.fairness import FAIR_SLICE, turn_due


def test_a_turn_is_due_at_most_once_a_slice_for_the_whole_process(monkeypatch):
    monkeypatch.setattr(fairness, "_due", 0.0)  # restored after: the process's real clock
    start = 1.0
    assert turn_due(start)
    assert not turn_due(start)
    assert not turn_due(start + FAIR_SLICE / 2)
    assert turn_due(start + FAIR_SLICE)  # the next slice starts where this turn came
    assert not turn_due(start + FAIR_SLICE * 1.5)


def test_the_frame_loop_and_the_uvicorn_sends_share_the_clock():
    assert consumer.turn_due is uvicorn_ws.turn_due is fairness.turn_due
    assert consumer.FAIR_SLICE == uvicorn_ws.FAIR_SLICE == FAIR_SLICE == 0.005
