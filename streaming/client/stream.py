"""A bounded, async-iterable buffer: what ``client.<endpoint>.stream`` and
``client.errors`` are."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

from .errors import StreamOverflow

__all__ = ["MessageStream"]

T = TypeVar("T")


class MessageStream(Generic[T]):
    """Items in arrival order, held until read; at most ``maxsize`` of them.

    Contract:

    * Items are buffered from the moment the client receives them, whether or not
      anyone iterates yet, and the same stream lives as long as the client (across
      reconnects): iterate it again after a ``break`` and it goes on where it stopped.
    * When the buffer is full, the *oldest* item is dropped to make room (the newest
      state wins) and the gap is reported in band: the next read raises
      :class:`StreamOverflow` (``dropped`` = how many), once, then reading goes on
      with the items that were kept. A gap is never silent.
    * Cancelling a pending read loses nothing.
    * After :meth:`Client.close`, reads return what is left, then the iteration ends.
    * Meant for one reader; concurrent readers share the items between them.
    """

    def __init__(self, name: str, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.name = name
        self.maxsize = maxsize
        #: Items dropped since the stream was created (for metrics).
        self.dropped_total = 0
        self._items: deque[T] = deque()
        self._dropped = 0  # dropped since the last StreamOverflow was raised
        self._ended = False
        self._changed = asyncio.Event()
        #: Whether anyone has read (or begun to read) the stream.
        self.read = False

    def __len__(self) -> int:
        """Items waiting to be read."""
        return len(self._items)

    def __repr__(self) -> str:
        return f"<MessageStream {self.name}: {len(self._items)}/{self.maxsize} waiting>"

    def __aiter__(self) -> MessageStream[T]:
        return self

    async def __anext__(self) -> T:
        self.read = True
        while True:
            if self._dropped:
                dropped, self._dropped = self._dropped, 0
                raise StreamOverflow(self.name, dropped)
            if self._items:
                return self._items.popleft()
            if self._ended:
                raise StopAsyncIteration
            self._changed.clear()
            await self._changed.wait()

    # -- the client's side ------------------------------------------------------------

    def _put(self, item: T) -> None:
        if len(self._items) >= self.maxsize:
            self._items.popleft()
            self._dropped += 1
            self.dropped_total += 1
        self._items.append(item)
        self._changed.set()

    def _end(self) -> None:
        self._ended = True
        self._changed.set()
