"""``Lane``: one endpoint's jobs, in order, one at a time, each run as a task's own work."""

from __future__ import annotations

import asyncio

from streaming.consumer import Lane


async def test_a_timeout_inside_a_job_belongs_to_the_job():
    """A hook's ``asyncio.timeout`` cancels the hook, never the task that submitted it."""
    lane, outcome = Lane("t"), []

    async def job():
        try:
            async with asyncio.timeout(0.01):  # the behaviour under test, not a wait
                await asyncio.Event().wait()
        except TimeoutError:
            outcome.append("timed out")

    lane.submit(job)
    await lane.join()
    assert outcome == ["timed out"]
    assert asyncio.current_task().cancelling() == 0


async def test_a_job_that_awaits_a_cancelled_future_ends_alone():
    lane, ran = Lane("t"), []
    cancelled = asyncio.get_running_loop().create_future()
    cancelled.cancel()

    async def doomed():
        await cancelled

    async def after():
        ran.append("after")

    lane.submit(doomed)
    lane.submit(after)
    await lane.join()
    assert ran == ["after"]


async def test_jobs_behind_a_waiting_job_run_after_it_in_order():
    lane, ran, gate = Lane("t"), [], asyncio.Event()

    async def first():
        await gate.wait()
        ran.append("first")

    def later(name):
        async def job():
            ran.append(name)

        return job

    lane.submit(first)
    lane.submit(later("second"))
    lane.submit(later("third"))
    assert ran == []
    gate.set()
    await lane.join()
    assert ran == ["first", "second", "third"]


async def test_a_job_submitted_as_the_lane_goes_idle_still_runs():
    lane, gate, ran = Lane("t"), asyncio.Event(), asyncio.Event()

    async def last_job():
        ran.set()

    async def first():
        await gate.wait()
        # Runs before the finished task's callbacks: the lane must already be idle.
        asyncio.get_running_loop().call_soon(lane.submit, last_job)

    lane.submit(first)
    gate.set()
    async with asyncio.timeout(5):  # a failure guard
        await ran.wait()


async def test_a_failing_job_is_logged_and_the_lane_goes_on(caplog):
    lane, ran, gate = Lane("t"), [], asyncio.Event()

    async def broken():
        await gate.wait()
        raise RuntimeError("boom")

    async def after():
        ran.append("after")

    lane.submit(broken)
    lane.submit(after)
    gate.set()
    await lane.join()
    assert ran == ["after"]
    assert "unexpected error in lane t" in caplog.text


async def test_a_lane_cancelled_before_its_task_started_runs_later_jobs():
    """On Python 3.11 a task starts lazily: a lane cancelled right after a submit has a
    task that never runs a step, so ``_run``'s ``finally`` never frees the lane. Before,
    it stayed busy for ever: later jobs never ran and ``join()`` raised CancelledError."""
    ran: list[str] = []

    async def job(name: str) -> None:
        ran.append(name)

    lane = Lane("cancelled early")
    lane.submit(lambda: job("first"))
    lane.cancel()
    lane.submit(lambda: job("second"))
    async with asyncio.timeout(5):  # a failure guard, not a synchronisation
        await lane.join()
    assert "second" in ran
    assert not lane.busy
    lane.submit(lambda: job("third"))
    async with asyncio.timeout(5):
        await lane.join()
    assert ran[-1] == "third"
