"""``Lane``: jobs run one at a time, in order, in a task that exists only while busy.

The one start-on-demand worker of Streampod. A connection gives each endpoint a
lane (its hooks run in order, lanes of different endpoints run concurrently), and
the message bus gives each async listener one (its calls run in post order, and a
slow listener holds up only itself).

Guarantees:

* Jobs run in submission order, never two at once.
* The lane's task exists only while it has work; a job submitted at any moment,
  even just as the task is finishing, runs. An idle lane holds three attributes and
  no queue: a job submitted to it goes straight to its task; a deque for waiting
  jobs exists only while jobs wait behind another.
* On Python 3.12+ the task starts eagerly (``eager_start``): a job that never waits
  runs to its end inside :meth:`Lane.submit`, yet as its own current task, so
  ``asyncio.timeout``, task groups and anyio scopes in it behave as in any task.
* A job that raises is logged; a job whose await was cancelled (a cancelled
  future inside it) ends, and the lane goes on. Only :meth:`Lane.cancel` stops the
  lane's current job on purpose.
* ``isolated=True``: the lane's task runs in a fresh ``contextvars`` context, not
  the submitter's. The bus's listener lanes are: a post may come from code running
  inside asgiref's ``async_to_sync`` (a signal handler), whose thread executor is
  gone by the time the listener runs ``database_sync_to_async``.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import sys
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

logger = logging.getLogger("streaming.lane")

Job = Callable[[], Coroutine[Any, Any, Any]]


class Lane:
    """Runs jobs one at a time, in submission order, in a task of their own."""

    __slots__ = ("_current", "_isolated", "_jobs", "_task", "name")

    def __init__(self, name: str, *, isolated: bool = False) -> None:
        self.name = name
        self._isolated = isolated
        # Jobs waiting behind the one in progress, made when a job first has to wait:
        # an idle lane holds no deque (an empty one costs ~760 bytes).
        self._jobs: deque[tuple[Job, str]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._current: str | None = None

    def __len__(self) -> int:
        """Jobs waiting (not counting one in progress)."""
        jobs = self._jobs
        return len(jobs) if jobs is not None else 0

    @property
    def busy(self) -> bool:
        """Whether a job is running or waiting."""
        return self._task is not None

    @property
    def current(self) -> str | None:
        """The label of the job in progress (for logs), if any."""
        return self._current if self._task is not None else None

    def submit(self, job: Job, label: str = "") -> None:
        """Queue ``job`` (a no-argument coroutine function); ``label`` names it in logs."""
        jobs = self._jobs
        if self._task is None and not jobs:
            # Idle: the job goes straight to a new task, never through the deque.
            task = _new_task(
                self._run(job, label), contextvars.Context() if self._isolated else None
            )
            if not task.done():
                self._task = task
            return
        if jobs is None:
            jobs = self._jobs = deque()
        jobs.append((job, label))
        if self._task is None:  # jobs left by a task cancelled from outside: run them
            task = _new_task(self._run(), contextvars.Context() if self._isolated else None)
            if not task.done():
                self._task = task

    async def join(self) -> None:
        """Wait until the lane is idle (every job submitted so far has ended)."""
        while (task := self._task) is not None:
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if not task.cancelled() or (current is not None and current.cancelling()):
                    raise  # the joiner is cancelled, not (only) the lane's task
                if self._task is task:
                    self._forget(task)  # its done callback has not run yet

    def cancel(self) -> None:
        """Cancel the job in progress and drop the ones waiting. The lane is usable
        afterwards: a job submitted later runs once the cancelled one has ended."""
        if self._jobs is not None:
            self._jobs.clear()
        task = self._task
        if task is not None:
            task.cancel()
            # A task cancelled before its first step never runs _run's ``finally``
            # (Python 3.11 starts tasks lazily): forget it when it is done either way.
            task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        if self._task is not task:
            return  # its own ``finally`` has let go already
        self._task = None
        if self._jobs:  # submitted after the cancel: they run now
            new = _new_task(self._run(), contextvars.Context() if self._isolated else None)
            if not new.done():
                self._task = new
        else:
            self._jobs = None

    async def _run(self, job: Job | None = None, label: str = "") -> None:
        try:
            while True:
                if job is None:
                    jobs = self._jobs
                    if not jobs:
                        break
                    job, label = jobs.popleft()
                self._current = label
                try:
                    await job()
                except asyncio.CancelledError:
                    current = asyncio.current_task()
                    if current is not None and current.cancelling():
                        raise  # the lane itself is cancelled
                    # A job awaited something that was cancelled: that job ends, not the lane.
                    logger.warning("a job of lane %s was cancelled", self.name)
                except Exception:
                    logger.exception("unexpected error in lane %s", self.name)
                job = None
        finally:
            self._current = None
            # Idle from this instant: a job submitted before a done callback would
            # run must start a new task, not wait behind a finished one.
            if self._task is asyncio.current_task():
                self._task = None
                if not self._jobs:
                    self._jobs = None  # an idle lane holds no deque


if sys.version_info >= (3, 12):

    def _new_task(
        coro: Coroutine[Any, Any, None], context: contextvars.Context | None
    ) -> asyncio.Task[None]:
        return asyncio.Task(
            coro, loop=asyncio.get_running_loop(), eager_start=True, context=context
        )

else:

    def _new_task(
        coro: Coroutine[Any, Any, None], context: contextvars.Context | None
    ) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(coro, context=context)
