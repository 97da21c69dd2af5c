"""``Outbox``: a connection's bounded send queue, counted in the application.

daphne's own ``send`` never blocks and buffers without limit, so Streampod counts
what it has queued itself. Every frame a connection sends (data, pongs, errors and
the close) goes through one ``Outbox``, so they leave in the order they were queued.
A drain task exists only while frames are waiting.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

logger = logging.getLogger("streaming.outbox")

Send = Callable[[dict[str, Any]], Awaitable[None]]


class Outbox:
    __slots__ = ("_closed", "_on_overflow", "_queue", "_send", "_task", "limit", "sent")

    def __init__(self, send: Send, limit: int, on_overflow: Callable[[], None]) -> None:
        self._send = send
        self.limit = limit
        self._on_overflow = on_overflow
        self._queue: deque[str | int] = deque()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.sent = 0

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, text: str) -> bool:
        """Queue a text frame. False when closed, or when full (``on_overflow`` is called)."""
        if self._closed:
            return False
        if len(self._queue) >= self.limit:
            self._on_overflow()
            return False
        self._queue.append(text)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._drain())
        return True

    def close(self, code: int, *, discard_pending: bool = False) -> None:
        """Queue the close frame after what is queued (or instead of it). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if discard_pending:
            self._queue.clear()
        self._queue.append(code)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._drain())

    def discard(self) -> None:
        """Drop everything: the socket is gone."""
        self._closed = True
        self._queue.clear()

    async def wait_sent(self) -> None:
        """Wait until the queue is empty (tests and graceful shutdown)."""
        while self._task is not None:
            await asyncio.shield(self._task)

    async def _drain(self) -> None:
        queue = self._queue
        send = self._send
        try:
            while queue:
                item = queue.popleft()
                if isinstance(item, str):
                    await send({"type": "websocket.send", "text": item})
                    self.sent += 1
                else:
                    queue.clear()
                    await send({"type": "websocket.close", "code": int(item)})
        except asyncio.CancelledError:
            raise
        except Exception:  # the transport is gone: nothing more can be delivered
            logger.debug("send failed; discarding %d queued frames", len(queue), exc_info=True)
            self.discard()
        finally:
            self._task = None
