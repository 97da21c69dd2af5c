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
is paused (daphne, whose ``send`` never suspends), and before the handshake is
accepted (``gated=True``: the accept goes first, see :meth:`Outbox.open`). The queue
(a deque) exists only while frames wait: an idle socket's outbox holds none. At most
``limit`` frames and ``byte_limit`` bytes (``sys.getsizeof`` of the queued strings)
wait; one more calls ``on_overflow`` (the consumer closes with 4013). A drain task
exists only while frames are waiting.

A ``send`` that raises (the server refused the frame, or the transport is gone)
never leaves the socket open and mute: the outbox tries to close it with 1011
and drops what is queued.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from . import metrics
from .eager import NOT_STARTED, finish, start
from .flow import SendFlow

logger = logging.getLogger("streaming.outbox")

Send = Callable[[dict[str, Any]], Awaitable[None]]

#: Marks the ASGI messages an outbox sends (servers ignore keys they do not know).
#: Streampod's uvicorn protocol does not make them yield for fairness (its FAIR_SLICE):
#: an outbox's bursts are bounded by its queue already, and a yield would turn a frame put
#: eagerly into a queued one, so that a hook's burst of more than ``SEND_QUEUE_LIMIT``
#: frames to a client reading fast would overflow the queue (4013).
OUTBOX_KEY = "streaming.outbox"

#: Close code after a send the server refused (WebSocket "internal error").
SEND_FAILED_CLOSE = 1011


class _Accept:
    """Queue marker: the handshake's accept goes out here."""


_ACCEPT = _Accept()
_ACCEPT_MESSAGE = {"type": "websocket.accept"}


class Outbox:
    __slots__ = (
        "_bytes",
        "_closed",
        "_eager",
        "_flow",
        "_gated",
        "_on_overflow",
        "_queue",
        "_room",
        "_sealed",
        "_send",
        "_task",
        "_urgent",
        "byte_limit",
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
        byte_limit: int | None = None,
        gated: bool = False,
        urgent_close: bool = False,
    ) -> None:
        self._send = send
        # The server's close does not wait behind a data send stuck for room
        # (streaming.flow.closes_at_once): a 4013 goes out at once, see close().
        self._urgent = urgent_close
        self._flow = flow
        self._eager = eager  # only for a server's own send: see streaming.flow.plain_send
        self.limit = limit
        self.byte_limit = byte_limit if byte_limit is not None else sys.maxsize
        self._on_overflow = on_overflow
        # Frames waiting; made when one has to wait, dropped once drained (an empty
        # deque costs ~760 bytes, and most sockets are idle). While gated, the accept
        # is pending without being queued: open() sends it before what is queued.
        self._queue: deque[str | tuple[int, str] | _Accept] | None = None
        self._bytes = 0  # sys.getsizeof of the queued strings
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._sealed = False  # closed by seal(): a close may still be queued
        self._gated = gated
        self.sent = 0
        self._room: asyncio.Event | None = None  # see wait_room

    def crowded(self) -> bool:
        """Whether frames wait for at least half the queue's room (in frames or bytes)."""
        queue = self._queue
        return (
            queue is not None and len(queue) * 2 >= self.limit
        ) or self._bytes * 2 >= self.byte_limit

    async def wait_room(self) -> None:
        """Wait while the queue is :meth:`crowded`: a producer that can wait (a streaming
        method's generator) calls this before making its next frame, so that it keeps
        pace with the client's network instead of filling the queue up to its limit
        (which would close the socket with 4013). Returns at once when not crowded, or
        once the socket is closed."""
        while not self._closed and self.crowded():
            if self._room is None:
                self._room = asyncio.Event()
            await self._room.wait()

    def _wake(self) -> None:
        room, self._room = self._room, None
        if room is not None:
            room.set()

    def __len__(self) -> int:
        """Data frames waiting (not counting one whose send is in progress, nor a queued
        accept or close: the ``streampod_send_queue_frames`` gauge reads this)."""
        queue = self._queue
        if not queue:
            return 0
        n = len(queue)
        if type(queue[-1]) is tuple:  # the close, queued last
            n -= 1
        if queue[0] is _ACCEPT:  # the accept, queued first
            n -= 1
        return max(n, 0)

    @property
    def queued_bytes(self) -> int:
        """Memory held by the queued frames (``sys.getsizeof`` of each string)."""
        return self._bytes

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def sealed(self) -> bool:
        """Closed by :meth:`seal`: no close frame counted or sent yet (the caller's
        comes once the queue is out)."""
        return self._sealed

    def put(self, text: str) -> bool:
        """Queue a text frame. False when closed, or when full (``on_overflow`` is called)."""
        if self._closed:
            return False
        flow = self._flow
        if (
            self._task is None
            and self._eager
            and not self._gated
            and (flow is None or not flow.paused)
        ):
            # _start inlined for the common case (nothing waits behind no task): every
            # frame sent takes this path, a pong or a delivery alike.
            message = {"type": "websocket.send", "text": text, OUTBOX_KEY: True}
            coro: Coroutine[Any, Any, None] = self._send(message)  # type: ignore[assignment]
            try:
                yielded = coro.send(None)
            except StopIteration:
                self.sent += 1
                return True
            except Exception:
                self._failed(message)
                return True
            self._spawn(coro, yielded, message)  # the transport pushes back
            return True
        size = sys.getsizeof(text)
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        if len(queue) >= self.limit or self._bytes + size > self.byte_limit:
            self._on_overflow()
            return False
        queue.append(text)
        self._bytes += size
        if self._task is None and not self._gated:
            self._spawn(None, None, None)
        return True

    def open(self, flow: SendFlow | None = None) -> None:
        """Accept the handshake, then send what was queued before it (``gated=True``).

        ``flow`` (daphne's pushback, see :func:`streaming.flow.attach_flow`) applies
        from the first frame after the accept.
        """
        if not self._gated:
            return
        self._gated = False
        if flow is not None:
            self._flow = flow
        if self._eager:
            self._start(_ACCEPT_MESSAGE)  # then what was queued, if anything
        else:
            self._queued().appendleft(_ACCEPT)
            self._spawn(None, None, None)

    def _queued(self) -> deque[str | tuple[int, str] | _Accept]:
        """The queue, made if there is none."""
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        return queue

    def close(self, code: int, *, discard_pending: bool = False, reason: str = "") -> None:
        """Send the close frame (``code``, and ``reason`` when not empty) after what is
        queued (or instead of it). Idempotent.

        Before :meth:`open`, the close still follows the accept: a client always sees
        the handshake complete, then the close code.
        """
        if self._closed and not self._sealed:
            return
        self._closed = True
        self._sealed = False
        self._wake()
        metrics.socket_close(int(code))
        if discard_pending:
            self._drop_frames()
        item = (int(code), reason)
        if self._task is None and self._eager and not self._gated and not self._queue:
            self._start(_close_message(item))
        elif discard_pending and self._urgent and self._task is not None and not self._queue:
            # A send is stuck waiting for room: the client stopped reading. Queued behind
            # it, the close would go out only once the client reads again (seen, an
            # attacker's try under uvicorn: the socket, its calls and their results held
            # until the keepalive gave up 40 s later, then 1011). The server sends it now
            # (the stuck frame is dropped) and ends the connection CLOSE_TIMEOUT later.
            self._close_now(_close_message(item))
        elif self._task is None and not self._gated:
            self._queued().append(item)
            self._spawn(None, None, None)
        else:
            self._queued().append(item)
            if discard_pending and self._flow is not None:
                self._flow.kick()  # the close goes out even while the server pushes back

    def _close_now(self, message: dict[str, Any]) -> None:
        """Send the close while another send is in progress (only for a server whose
        close does not wait for room: ``urgent_close``), then take nothing more."""
        try:
            self._send_aside(message)
        except Exception:
            logger.debug("the close failed: the connection is gone", exc_info=True)
        self.discard()

    def _send_aside(self, message: dict[str, Any]) -> None:
        """Send ``message`` outside the queue's order: started here, and finished in a
        task of its own when the server suspends it (whose failure is only logged: the
        connection is gone). Raises what starting the send raises."""
        coro = self._send(message)
        done, yielded = start(coro)  # type: ignore[arg-type]
        if not done:
            task = asyncio.get_running_loop().create_task(
                finish(coro, yielded)  # type: ignore[arg-type]
            )
            task.add_done_callback(_quiet)

    def _drop_frames(self) -> None:
        """Drop the queued data frames (an accept not yet sent stays first)."""
        queue = self._queue
        if queue is not None:
            head = queue[0] if queue else None
            queue.clear()
            if head is _ACCEPT:
                queue.append(_ACCEPT)
        self._bytes = 0

    def seal(self) -> None:
        """Take no more frames; what is queued still goes out. For a close frame the
        caller sends itself once :meth:`wait_sent` returns (daphne's 1012): a frame put
        after the decision to close never goes before it. :meth:`close` still works."""
        if not self._closed:
            self._closed = self._sealed = True
            self._wake()

    def discard(self) -> None:
        """Drop everything: the socket is gone (or closed). A later :meth:`close` does
        nothing, even after a :meth:`seal`."""
        self._closed = True
        self._sealed = False
        self._gated = False
        if self._queue is not None:
            self._queue.clear()
        self._bytes = 0
        self._wake()
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
        if self._send_now(message) and self._queue and self._task is None:
            self._flush()  # frames queued before the accept

    def _send_now(self, message: dict[str, Any]) -> bool:
        """Run ``send(message)`` up to its first suspension. True if it completed; False
        if it failed (the socket is closing) or suspended (the transport pushes back: a
        task finishes it, then drains the queue)."""
        coro = self._send(message)
        try:
            done, yielded = start(coro)  # type: ignore[arg-type]
        except Exception:
            self._failed(message)
            return False
        if not done:
            self._spawn(coro, yielded, message)  # type: ignore[arg-type]
            return False
        self._count(message)
        return True

    def _flush(self) -> None:
        """Send what is queued eagerly, in order, as :meth:`_drain` would; the first send
        that suspends (or a paused flow) hands the rest to a drain task.

        After an eager accept, the frames the endpoints' ``stream_opened`` hooks queued
        go out without a task per connect (docs/performance.md, "Per connect").
        """
        queue = self._queue
        while queue:
            flow = self._flow
            if flow is not None and flow.paused and isinstance(queue[0], str):
                self._spawn(None, None, None)
                return
            if not self._send_now(self._next(queue)):
                return
        if self._queue is queue and not queue:
            self._queue = None  # drained: an idle outbox holds no deque

    def _next(self, queue: deque[str | tuple[int, str] | _Accept]) -> dict[str, Any]:
        """Take the first queued item (the queue is not empty) as the ASGI message to
        send: a text frame, the accept, or the close (which drops what is behind it)."""
        item = queue.popleft()
        if self._room is not None and not self.crowded():
            self._wake()
        if isinstance(item, str):
            self._bytes -= sys.getsizeof(item)
            return {"type": "websocket.send", "text": item, OUTBOX_KEY: True}
        if item is _ACCEPT:
            return _ACCEPT_MESSAGE
        queue.clear()
        self._bytes = 0
        return _close_message(item)  # type: ignore[arg-type]

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
        kind = message["type"]
        if kind == "websocket.send":
            self.sent += 1
        elif kind == "websocket.close":
            self.discard()  # closed: nothing more goes out

    def _failed(self, message: dict[str, Any]) -> None:
        """The server refused ``message``: close the socket (1011), never leave it mute.

        Called while the server's exception is handled. An ``OSError`` (uvicorn's
        ``ClientDisconnected``, a reset) means the client is gone: an everyday event,
        logged quietly and counted as the dropped connection it is (1006), nothing sent."""
        closing = not self._closed  # else the close code is counted already
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            logger.info("send of %s failed: the client is gone (%r)", message["type"], error)
            self.discard()
            if closing:
                metrics.socket_close(1006)
            return
        logger.warning(
            "send of %s failed; closing with %d and discarding %d queued frames",
            message["type"],
            SEND_FAILED_CLOSE,
            len(self),
            exc_info=True,
        )
        self.discard()
        if message["type"] != "websocket.send":
            return  # the accept or the close itself failed: the transport is gone
        if closing:
            metrics.socket_close(SEND_FAILED_CLOSE)
        try:
            self._send_aside({"type": "websocket.close", "code": SEND_FAILED_CLOSE})
        except Exception:
            logger.debug("closing after a failed send failed too", exc_info=True)

    async def _drain(
        self,
        coro: Coroutine[Any, Any, None] | None,
        yielded: Any,
        message: dict[str, Any] | None,
    ) -> None:
        """Finish the suspended send (if any), then send what is queued, in order."""
        queue = self._queued()
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
                message = self._next(queue)
                coro, yielded = self._send(message), NOT_STARTED  # type: ignore[assignment]
        finally:
            if self._task is asyncio.current_task():
                self._task = None
                if not queue and self._queue is queue:
                    self._queue = None  # drained: an idle outbox holds no deque


def _close_message(item: tuple[int, str]) -> dict[str, Any]:
    code, reason = item
    if reason:
        return {"type": "websocket.close", "code": code, "reason": reason}
    return {"type": "websocket.close", "code": code}


def _quiet(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.debug("a close sent aside failed: the connection is gone", exc_info=task.exception())
