"""Write-side flow control: whether the server can take more of a socket's frames.

ASGI's only backpressure is a ``send`` that suspends. uvicorn's (and hypercorn's)
does when the socket's write buffer is full, so the :class:`~streaming.outbox.Outbox`
queues behind it and closes a client that stops reading with 4013. daphne's ``send``
never suspends: Twisted would buffer without limit for a client that has stopped
reading, and a server would run out of memory on one stalled phone.

For daphne, :func:`attach_flow` registers a :class:`SendFlow` as the Twisted
transport's streaming producer (Twisted's public ``IConsumer.registerProducer``).
Twisted calls ``pauseProducing`` when its buffer passes ``bufferSize`` (64 KiB) and
``resumeProducing`` when the buffer is empty again; while paused the outbox queues
instead of sending. A connection's memory is then bounded by Twisted's buffer, one
frame, and ``SEND_QUEUE_LIMIT`` queued frames.

The transport is found through daphne's ``send`` (``functools.partial(
Server.handle_reply, protocol)``). A middleware that wraps ``send`` hides it: the
connection then has no flow (:func:`attach_flow` returns None) and runs unbounded
under daphne, as before. Under other servers there is nothing to attach: their
``send`` suspends.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

logger = logging.getLogger("streaming.flow")


class SendFlow:
    """A Twisted ``IPushProducer`` that records whether the transport wants a pause."""

    __slots__ = ("_transport", "_waiter", "paused", "stopped")

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._waiter: asyncio.Future[None] | None = None
        self.paused = False
        self.stopped = False

    # -- IPushProducer: called by Twisted, on the event loop's thread ----------------

    def pauseProducing(self) -> None:
        if not self.stopped:
            self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.kick()

    def stopProducing(self) -> None:
        self.stopped = True
        self.paused = False
        self.kick()

    # -- what the outbox uses ----------------------------------------------------------

    async def wait(self) -> None:
        """Return when the transport resumes, the connection stops, or :meth:`kick`."""
        if not self.paused:
            return
        if self._waiter is None or self._waiter.done():
            self._waiter = asyncio.get_running_loop().create_future()
        await self._waiter

    def kick(self) -> None:
        """Wake :meth:`wait` (a close frame must go out even while paused)."""
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def detach(self) -> None:
        """Unregister from the consumer (Twisted will not close a socket that has one)."""
        consumer, self._transport = self._transport, None
        self.paused = False
        self.kick()
        if consumer is not None:  # set only once registered: the slot is ours
            try:
                consumer.unregisterProducer()
            except Exception:  # pragma: no cover - a transport already torn down
                logger.debug("unregisterProducer failed", exc_info=True)


def _daphne_protocol(send: Any) -> Any | None:
    if not isinstance(send, functools.partial) or not send.args:
        return None
    func = send.func
    if getattr(func, "__name__", None) != "handle_reply":
        return None
    owner = getattr(func, "__self__", None)
    if not type(owner).__module__.startswith("daphne."):
        return None
    return send.args[0]


def attach_flow(send: Any) -> SendFlow | None:
    """A :class:`SendFlow` on the Twisted transport behind daphne's ``send``, else None.

    daphne upgrades WebSocket connections from HTTP, and Twisted's ``HTTPChannel``
    stays the TCP transport's producer: it relays the transport's pause and resume
    to the producer registered with it (``HTTPChannel.registerProducer``), which is
    where the flow goes. A transport with no producer takes the flow directly.
    """
    protocol = _daphne_protocol(send)
    transport = getattr(protocol, "transport", None) if protocol is not None else None
    if transport is None:
        return None
    consumer = transport
    existing = getattr(transport, "producer", None)
    if existing is not None:
        consumer = existing  # the HTTPChannel
    register = getattr(consumer, "registerProducer", None)
    if register is None:
        return None
    flow = SendFlow(consumer)
    try:
        register(flow, True)
    except Exception:  # a producer is registered already, or the consumer refuses
        logger.debug("could not register a producer on %r", consumer, exc_info=True)
        return None
    return flow


def plain_send(send: Any) -> bool:
    """Whether ``send`` is a server's own ``send``, safe to start in the caller's task.

    daphne's and uvicorn's WebSocket ``send`` (uvicorn's own protocols, and
    :mod:`streaming.uvicorn_ws`) hold no timeout or cancel scope, so the
    outbox may run them eagerly (a suspended one is finished in a task of its own).
    An unknown ``send``, such as a middleware's wrapper, may bind to the task it runs
    in, so it always runs in the outbox's own task.
    """
    if _daphne_protocol(send) is not None:
        return True
    owner = getattr(send, "__self__", None)
    module = type(owner).__module__
    return module.startswith("uvicorn.protocols.websockets.") or module == "streaming.uvicorn_ws"


def closes_at_once(send: Any) -> bool:
    """Whether ``send`` is a server's own whose ``websocket.close`` never waits for room,
    even while a data send waits for it (:mod:`streaming.uvicorn_ws`): the outbox may then
    close a socket whose client stopped reading at once. uvicorn's own protocols make
    every send wait while the transport pushes back; daphne's never suspends (its
    :class:`SendFlow` is kicked instead)."""
    owner = getattr(send, "__self__", None)
    return type(owner).__module__ == "streaming.uvicorn_ws"


def send_limit(send: Any) -> int | None:
    """The largest frame, in bytes, the server behind ``send`` will send, if it has one.

    daphne hands every outgoing frame to autobahn, which refuses one above its
    ``maxMessagePayloadSize`` (daphne's ``--websocket_max_message_size``, 1 MiB by
    default) by raising inside ``send``. uvicorn's ``ws_max_size`` bounds only what
    it receives.
    """
    protocol = _daphne_protocol(send)
    if protocol is None:
        return None
    limit = getattr(protocol, "maxMessagePayloadSize", 0)
    return limit if isinstance(limit, int) and limit > 0 else None
