"""Eager execution: run a coroutine now, up to its first suspension, without a task.

Handing a daphne or uvicorn ``send`` to a task costs a task object, a trip through
the event loop and one loop turn of latency, for a coroutine that almost never
waits. :func:`start` runs it in the caller's stack until it completes or suspends;
only one that suspends is handed to a task, which continues it with :func:`finish`
exactly where it stopped.

The first step runs as part of the *caller's* task: code that binds to the current
task (``asyncio.timeout``, task groups, anyio cancel scopes) must not run there.
So only a server's own ``send`` is started this way (``streaming.flow.plain_send``),
never user code: endpoint hooks run in their lane's task (eagerly started on Python
3.12+, where ``asyncio.Task(eager_start=True)`` makes that task current).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

#: ``finish(coro, NOT_STARTED)`` runs ``coro`` from its start.
NOT_STARTED: Any = object()


def start(coro: Coroutine[Any, Any, Any]) -> tuple[bool, Any]:
    """Run ``coro`` until it suspends: ``(True, None)`` if it completed, else
    ``(False, what it yielded)`` for :func:`finish`. Its exceptions propagate."""
    try:
        return False, coro.send(None)
    except StopIteration:
        return True, None


async def finish(coro: Coroutine[Any, Any, Any], yielded: Any) -> None:
    """Continue ``coro``, which suspended yielding ``yielded``, to its end.

    What a Task does for the coroutine it runs: a bare ``yield`` (``sleep(0)``)
    gives the loop one turn; a yielded future is waited for, then the coroutine
    resumes and reads the future's result (or exception) itself. If the task
    running this is cancelled, the cancellation goes into the coroutine. The
    coroutine's result is discarded; its exception propagates.
    """
    if yielded is NOT_STARTED:
        done, yielded = start(coro)
        if done:
            return
    while True:
        cancelled = False
        try:
            if yielded is None:
                await asyncio.sleep(0)
            else:
                yielded._asyncio_future_blocking = False  # as Task does
                await asyncio.wait((yielded,))
        except asyncio.CancelledError:
            cancelled = True
            if yielded is not None:
                yielded.cancel()
        try:
            if cancelled:
                yielded = coro.throw(asyncio.CancelledError())
            else:
                yielded = coro.send(None)
        except StopIteration:
            return


class Done:
    """An awaitable whose work is already done: ``await Done(x)`` is ``x``, at once.

    What a call that starts its work at once returns (Serverpod's Dart futures start
    eagerly, so code ported from it often does not await): called bare, the work has
    happened; awaited, the caller gets the result without a trip through the loop.
    """

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __await__(self) -> Any:
        return self.value
        yield  # a generator: ``await`` takes it, and it returns at once

    def __repr__(self) -> str:
        return f"<Done {self.value!r}>"
