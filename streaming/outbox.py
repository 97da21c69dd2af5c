"""``Outbox``: a connection's bounded send queue.

Every frame a connection sends (data, pongs, errors and the close) goes through one
``Outbox``, so they leave in the order they were queued.

Sending is *eager* when ``send`` is a server's own (daphne's or uvicorn's, see
:func:`streaming.flow.plain_send`): when nothing is waiting and the server has room,
``put`` runs the server's ``send`` coroutine at once. A send that completes without suspending
(daphne's always does; uvicorn's does unless the socket's write buffer is full)
costs no task and no trip through the event loop.

Frames are queued only while the server pushes back: while a ``send`` is suspended
(uvicorn, hypercorn) or while the connection's :class:`~streaming.flow.SendFlow`
is paused (daphne, whose ``send`` never suspends). At most ``limit`` frames wait;
one more calls ``on_overflow`` (the consumer closes with 4013). A drain task exists
only while frames are waiting.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from .eager import NOT_STARTED, finish, start
from .flow import SendFlow

logger = logging.getLogger("streaming.outbox")

Send = Callable[[dict[str, Any]], Awaitable[None]]


class Outbox:
    __slots__ = (
        "_closed",
        "_eager",
        "_flow",
        "_on_overflow",
        "_queue",
        "_send",
        "_task",
        "limit",
        "sent",
    )

    def __init__(
        self,
        send: Send,
        limit: int,
        on_overflow: Callable[[], None],
        flow: SendFlow | None = None,
        *,
        eager: bool = False,
    ) -> None:
        self._send = send
        self._flow = flow
        self._eager = eager  # only for a server's own send: see streaming.flow.plain_send
        self.limit = limit
        self._on_overflow = on_overflow
        self._queue: deque[str | int] = deque()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.sent = 0

    def __len__(self) -> int:
        """Frames waiting (not counting one whose send is in progress)."""
        return len(self._queue)

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, text: str) -> bool:
        """Queue a text frame. False when closed, or when full (``on_overflow`` is called)."""
        if self._closed:
            return False
        flow = self._flow
        if self._task is None and self._eager and (flow is None or not flow.paused):
            self._start({"type": "websocket.send", "text": text})
            return True
        if len(self._queue) >= self.limit:
            self._on_overflow()
            return False
        self._queue.append(text)
        if self._task is None:
            self._spawn(None, None, None)
        return True

    def close(self, code: int, *, discard_pending: bool = False) -> None:
        """Send the close frame after what is queued (or instead of it). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if discard_pending:
            self._queue.clear()
        if self._task is None and self._eager:
            self._start({"type": "websocket.close", "code": int(code)})
        elif self._task is None:
            self._queue.append(code)
            self._spawn(None, None, None)
        else:
            self._queue.append(code)
            if discard_pending and self._flow is not None:
                self._flow.kick()  # the close goes out even while the server pushes back

    def discard(self) -> None:
        """Drop everything: the socket is gone (or closed)."""
        self._closed = True
        self._queue.clear()
        if self._flow is not None:
            self._flow.detach()
            self._flow = None

    async def wait_sent(self) -> None:
        """Wait until the queue is empty (tests and graceful shutdown)."""
        while self._task is not None:
            await asyncio.shield(self._task)

    # -- the send path ----------------------------------------------------------------

    def _start(self, message: dict[str, Any]) -> None:
        """Run ``send(message)`` now, up to its first suspension (nothing is queued)."""
        coro = self._send(message)
        try:
            done, yielded = start(coro)  # type: ignore[arg-type]
        except Exception:
            self._failed(message)
            return
        if done:
            self._count(message)
            return
        # Suspended (the transport pushes back): a task finishes it, then drains.
        self._spawn(coro, yielded, message)  # type: ignore[arg-type]

    def _spawn(
        self,
        coro: Coroutine[Any, Any, None] | None,
        yielded: Any,
        message: dict[str, Any] | None,
    ) -> None:
        task = asyncio.get_running_loop().create_task(self._drain(coro, yielded, message))
        task.add_done_callback(lambda task: self._drained(task, coro))
        self._task = task

    def _drained(self, task: asyncio.Task[None], coro: Coroutine[Any, Any, None] | None) -> None:
        if self._task is task:
            self._task = None
        if task.cancelled():
            # Cancelled, maybe before it ever ran: abandon the server's send too.
            if coro is not None:
                coro.close()
            self.discard()

    def _count(self, message: dict[str, Any]) -> None:
        if message["type"] == "websocket.send":
            self.sent += 1
        else:
            self.discard()  # closed: nothing more goes out

    def _failed(self, message: dict[str, Any]) -> None:
        # The transport is gone: nothing more can be delivered.
        logger.debug(
            "send of %s failed; discarding %d queued frames",
            message["type"],
            len(self._queue),
            exc_info=True,
        )
        self.discard()

    async def _drain(
        self,
        coro: Coroutine[Any, Any, None] | None,
        yielded: Any,
        message: dict[str, Any] | None,
    ) -> None:
        """Finish the suspended send (if any), then send what is queued, in order."""
        queue = self._queue
        try:
            while True:
                if coro is not None and message is not None:
                    try:
                        await finish(coro, yielded)
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        self._failed(message)
                        return
                    self._count(message)
                    coro = None
                if not queue:
                    return
                flow = self._flow
                if flow is not None and flow.paused and isinstance(queue[0], str):
                    await flow.wait()
                    continue
                item = queue.popleft()
                if isinstance(item, str):
                    message = {"type": "websocket.send", "text": item}
                else:
                    queue.clear()
                    message = {"type": "websocket.close", "code": int(item)}
                coro, yielded = self._send(message), NOT_STARTED  # type: ignore[assignment]
        finally:
            if self._task is asyncio.current_task():
                self._task = None
