"""Graceful shutdown: on SIGTERM, close every socket with 1012 and let its hooks finish.

Call :func:`install_graceful_shutdown` once in ``asgi.py`` (like ``tune_gc()``). Then,
when the server process gets SIGTERM (a rolling restart, ``docker stop``, Kubernetes):

1. The process *drains*: it stops listening where it can (daphne: Twisted's listening
   ports; uvicorn: its listening sockets), and a WebSocket handshake that still arrives
   is refused: HTTP 503 where the server lets an application answer a handshake with a
   response (uvicorn); under daphne, whose only refusal (HTTP 403) clients take as final,
   it is accepted and closed at once with 1012.
2. Every open socket is closed with **1012** (service restart) after the frames already
   queued for it. Both Streampod clients reconnect on 1012 with no backoff (within a random
   ``restart_spread``, so that they do not all return in one instant), to
   whichever server the address leads to now.
3. Each socket's teardown runs as on any close: ``stream_closed`` hooks get
   ``CLOSE_GRACE_PERIOD`` seconds. The drain waits at most ``SHUTDOWN_GRACE_PERIOD``
   seconds for every teardown to end.
4. The server's own SIGTERM handler then runs, and the server shuts down as it always
   does (nothing is left for it to close).

A second SIGTERM during the drain goes straight to the server's handler.

What the servers do without it (read in uvicorn 0.54 and daphne 4.2, see
docs/deployment.md): uvicorn closes its listening sockets, closes each WebSocket with
1012 itself at the transport (frames the application had queued are lost), then waits,
without limit unless ``--timeout-graceful-shutdown``, for the application's tasks.
daphne stops the reactor: it cancels every application instance at once and drops the
TCP connections (clients see 1006); daphne's ASGI ``websocket.close`` cannot send 1012
(autobahn's ``sendClose`` allows 1000 and 3000-4999 only), so under daphne the close
frame is sent with autobahn's ``sendCloseFrame``, the method daphne itself uses to send
1011. Neither server's ASGI lifespan helps: daphne does not implement lifespan at all,
and uvicorn sends ``lifespan.shutdown`` only after it has closed the sockets.

The hook into the server is its SIGTERM handler, wrapped only when it is recognised:
uvicorn's ``Server.handle_exit`` or Twisted's ``reactor.sigTerm``. uvicorn installs its
handler after it has imported a single worker's application (before, with ``--workers``
or ``--reload``), daphne's reactor when it starts: so the handler is wrapped at import
if it is there, else when daphne's reactor runs (``reactor.callWhenRunning``), else at
the first WebSocket connect (:func:`admit`). Anything else (another server, gunicorn's
worker classes, a test process) is left alone and the server's own shutdown applies;
the log says which (``graceful shutdown installed (uvicorn)`` or ``... not installed``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

from . import metrics
from .conf import setting_or_default
from .connections import get_connections
from .flow import _daphne_protocol
from .protocol import CloseCode, restart_reason

if TYPE_CHECKING:
    from .consumer import StreamingConsumer

logger = logging.getLogger("streaming.shutdown")

__all__ = [
    "SERVICE_RESTART",
    "admit",
    "close_listeners",
    "drain",
    "install_graceful_shutdown",
    "refuse_handshake",
    "restart",
    "restart_advice_for",
]

#: The close code of a graceful shutdown: "retry now, elsewhere".
SERVICE_RESTART = CloseCode.SERVICE_RESTART

# When the reconnects this process's earlier 1012s asked for are over (time.monotonic()).
_advised_until = 0.0


def restart_advice_for(count: int) -> str:
    """The close reason for ``count`` sockets closed with 1012 now: come back at a random
    moment of the next ``count / RESTART_RATE`` seconds, after the window of any 1012s
    advised before (so that this process's clients return at ``RESTART_RATE`` a second at
    most, however the closes come: one drain, a bus gap, late joins one by one). "" when
    ``RESTART_RATE`` is None (clients keep to their own ``restart_spread``)."""
    global _advised_until
    rate = setting_or_default("RESTART_RATE")
    if rate is None or count <= 0:
        return ""
    now = time.monotonic()
    after = max(0.0, _advised_until - now)
    spread = count / rate
    _advised_until = now + after + spread
    return restart_reason(spread, after)


SignalHandler = Callable[[int, FrameType | None], Any]


def server_of(handler: Any) -> str | None:
    """``"uvicorn"`` or ``"daphne"`` if ``handler`` is that server's SIGTERM handler."""
    owner = getattr(handler, "__self__", None)
    module = type(owner).__module__ if owner is not None else ""
    name = getattr(handler, "__name__", "")
    if module.startswith("uvicorn.") and name == "handle_exit":
        return "uvicorn"
    if module.startswith("twisted.internet.") and name == "sigTerm":
        return "daphne"
    return None


class _GracefulHandler:
    """The SIGTERM handler: drain on the loop, then hand over to the server's handler."""

    def __init__(self, previous: SignalHandler, loop: asyncio.AbstractEventLoop) -> None:
        self.previous = previous
        self.loop = loop
        self.signalled = False
        self.task: asyncio.Task[int] | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        # Runs between two bytecodes of the main thread: only hand the work to the loop.
        if self.signalled:  # a second SIGTERM: no more waiting
            self.previous(signum, frame)
            return
        self.signalled = True
        self.loop.call_soon_threadsafe(self._start, signum)

    def _start(self, signum: int) -> None:
        logger.info("SIGTERM: draining (closing sockets with 1012)")
        server = server_of(self.previous)
        self.task = self.loop.create_task(drain(listeners=_listeners(self.previous), server=server))
        self.task.add_done_callback(functools.partial(self._hand_over, signum))

    def _hand_over(self, signum: int, task: asyncio.Task[int]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("the drain failed", exc_info=task.exception())
        self.previous(signum, None)  # the server's own shutdown, with nothing left to close


_pending = False  # install_graceful_shutdown() was called and the hook is not in yet


def install_graceful_shutdown() -> None:
    """Drain on SIGTERM under uvicorn and daphne (see the module docstring). Idempotent.

    Call it from ``asgi.py``, at import. The server's own handler may not exist yet
    then (uvicorn imports a single worker's application before it installs its handler;
    daphne's reactor installs Twisted's when it starts), so the hook goes in as soon as
    it does: when daphne's reactor runs, or at the first WebSocket connect.
    """
    global _pending
    if _install_now():
        return
    _pending = True
    reactor = _twisted_reactor()
    if reactor is not None and not getattr(reactor, "running", False):
        reactor.callWhenRunning(_install_pending)


def admit(consumer: StreamingConsumer) -> bool:
    """Register a connecting socket (``Connections.track``); False while draining.

    Also puts the SIGTERM hook in, if :func:`install_graceful_shutdown` is still waiting
    for the server's handler (checked once).
    """
    if _pending:
        _install_pending()
    return get_connections().track(consumer)


def _install_pending() -> None:
    global _pending
    if _pending:
        _pending = False
        _install_or_log()


def _install_now() -> bool:
    current = signal.getsignal(signal.SIGTERM)
    if isinstance(current, _GracefulHandler):
        return True
    kind = server_of(current)
    if kind is None or threading.current_thread() is not threading.main_thread():
        return False  # (signal handlers can only be set from the main thread)
    try:
        loop = asyncio.get_running_loop()  # uvicorn imports the application in its loop
    except RuntimeError:
        if kind != "daphne":
            return False
        # Twisted runs its startup triggers before its asyncio loop runs; daphne has set
        # that loop as the thread's event loop.
        loop = asyncio.get_event_loop_policy().get_event_loop()
    signal.signal(signal.SIGTERM, _GracefulHandler(current, loop))  # type: ignore[arg-type]
    logger.info("graceful shutdown installed (%s)", kind)
    return True


def _install_or_log() -> None:
    if not _install_now():
        _log_not_installed()


def _log_not_installed() -> None:
    logger.info(
        "graceful shutdown not installed: SIGTERM is handled by %r, not by uvicorn or "
        "daphne; the server's own shutdown applies",
        signal.getsignal(signal.SIGTERM),
    )


def _twisted_reactor() -> Any | None:
    """daphne's reactor if this process runs daphne (never imports Twisted itself)."""
    if "daphne.server" not in sys.modules:
        return None
    return getattr(sys.modules.get("twisted.internet"), "reactor", None)


def _listeners(previous: SignalHandler) -> Callable[[], None]:
    """A function that stops the server listening, as far as that can be done."""
    kind = server_of(previous)
    if kind == "uvicorn":
        return lambda: _close_uvicorn_listeners(getattr(previous, "__self__", None))
    if kind == "daphne":
        return _stop_twisted_ports
    return lambda: None


def _close_uvicorn_listeners(server: Any) -> None:
    # uvicorn keeps its listening servers (asyncio's, or uvloop's, which does not derive
    # from asyncio.AbstractServer) in ``Server.servers``: not a documented attribute, so
    # checked here. Without it, new handshakes still get 503.
    servers = getattr(server, "servers", None)
    if not isinstance(servers, list) or not all(
        callable(getattr(s, "close", None)) for s in servers
    ):
        logger.warning("uvicorn's listening sockets not found; handshakes get 503 instead")
        return
    for listener in servers:
        listener.close()  # closes the listening socket only; connections stay


def _stop_twisted_ports() -> None:
    reactor = _twisted_reactor()
    if reactor is None:
        return
    from twisted.internet.tcp import Port

    for reader in reactor.getReaders():  # IReactorFDSet: public
        if isinstance(reader, Port):
            reader.stopListening()


async def drain(
    grace: float | None = None,
    *,
    listeners: Callable[[], None] | None = None,
    server: str | None = None,
) -> int:
    """Refuse new sockets, close every open one with 1012, wait for their teardown.

    ``listeners`` stops the server listening, ``server`` names it (``"daphne"``,
    ``"uvicorn"``); the SIGTERM handler passes both. Waits at most ``grace`` seconds
    (``SHUTDOWN_GRACE_PERIOD``); returns the number of sockets whose teardown had not
    finished by then.
    """
    if grace is None:
        grace = setting_or_default("SHUTDOWN_GRACE_PERIOD")
    registry = get_connections()
    registry.start_draining()
    if listeners is not None:
        try:
            listeners()
        except Exception:
            logger.exception("could not stop listening; handshakes are refused instead")
    sockets = registry.live()
    reason = restart_advice_for(len(sockets))
    closing = [close_for_restart(consumer, server, reason) for consumer in sockets]
    waits = [task for task in closing if task is not None]
    if not await registry.wait_empty(grace):
        left = len(registry.live())
        logger.warning("%d sockets still closing after %.1fs; the server closes them", left, grace)
        for task in waits:
            task.cancel()
        return left
    logger.info("drained: %d sockets closed with 1012", len(sockets))
    return 0


def close_for_restart(
    consumer: StreamingConsumer, server: str | None = None, reason: str = ""
) -> asyncio.Task[None] | None:
    """Close ``consumer``'s socket with 1012 after its queued frames, with ``reason``
    (:func:`restart_advice_for`).

    Under daphne a task does it (it waits for the queue, then sends the close frame
    itself); it is returned. Elsewhere ``consumer.close_with(1012)`` does it. Under
    daphne (``server="daphne"``) with a ``send`` that hides daphne's protocol (a
    middleware that wraps it), 1012 cannot be sent: the socket is closed with 1000.
    """
    protocol = _daphne_protocol(consumer.base_send)
    if protocol is None or not hasattr(protocol, "sendCloseFrame"):
        # daphne's ASGI close refuses 1012: it would fail and leave the socket open.
        if server == "daphne":
            consumer.close_with(CloseCode.NORMAL)
        else:
            consumer.close_with(SERVICE_RESTART, reason=reason)
        return None
    return asyncio.get_running_loop().create_task(_daphne_close(consumer, protocol, reason))


# Closes under way (daphne's), referenced until done.
_closing: set[asyncio.Task[None]] = set()


def close_listeners(channels: set[str]) -> int:
    """Close with 1012, after their queued frames, the open sockets that listen to any of
    ``channels`` on the bus (the bus's subscription was down: they may have missed posts,
    and their clients reconnect and read what they missed). Returns how many."""
    if not channels:
        return 0
    listening = [
        consumer
        for consumer in get_connections().live()
        if consumer.listens_to(channels) and _open(consumer)
    ]
    reason = restart_advice_for(len(listening))
    return sum(restart(consumer, reason) for consumer in listening)


def _open(consumer: StreamingConsumer) -> bool:
    outbox = consumer.outbox
    return outbox is not None and not outbox.closed


def restart(consumer: StreamingConsumer, reason: str | None = None) -> bool:
    """Close ``consumer``'s socket with 1012 after its queued frames (its client
    reconnects and reads what it may have missed), unless it is closing already (an
    earlier 1012, a 4013...). ``reason``: the close reason; by default the advice for one
    socket (:func:`restart_advice_for`). Returns whether it was closed now."""
    if not _open(consumer):
        return False
    if reason is None:
        reason = restart_advice_for(1)
    task = close_for_restart(consumer, reason=reason)
    if task is not None:
        _closing.add(task)
        task.add_done_callback(_closing.discard)
    return True


async def _daphne_close(consumer: StreamingConsumer, protocol: Any, reason: str = "") -> None:
    outbox = consumer.outbox
    if outbox is None or outbox.closed:
        return  # closing already
    # Nothing put from now on goes out before the 1012: a client that reconnects on it
    # and reads what it missed "after the last message it got" must not have been sent
    # newer ones first. A client that does not read gets the close anyway, after
    # SHUTDOWN_GRACE_PERIOD, without what was still queued.
    outbox.seal()
    try:
        await asyncio.wait_for(outbox.wait_sent(), setting_or_default("SHUTDOWN_GRACE_PERIOD"))
    except TimeoutError:
        pass
    if consumer.outbox is not outbox or protocol.state != protocol.STATE_OPEN:
        # Torn down meanwhile, or still in its handshake (stream_opened running): a
        # refused close code would fail there, so the ASGI close (1000) goes instead.
        consumer.close_with(CloseCode.NORMAL)
        return
    outbox.discard()  # nothing more goes out after the close frame
    metrics.socket_close(int(SERVICE_RESTART))  # as Outbox.close counts the others
    protocol.sendCloseFrame(code=int(SERVICE_RESTART), reasonUtf8=reason.encode() or None)


async def refuse_handshake(scope: dict[str, Any], send: Any) -> None:
    """Refuse a WebSocket handshake because the process is draining.

    HTTP 503 (``Retry-After: 0``) where the server offers ASGI's
    ``websocket.http.response`` extension (uvicorn). Otherwise (daphne) the handshake is
    accepted and the socket closed at once with 1012, so that the client reconnects at
    once, elsewhere: daphne's only refusal is HTTP 403, which clients (Streampod's
    included) take as final (a foreign Origin, revoked credentials), and which left a
    client that reconnected into a draining daphne behind a proxy offline for good.
    Where daphne's protocol is hidden (a middleware wraps ``send``), 1012 cannot be sent:
    the close is 1000, after which clients reconnect with their backoff.
    """
    if "websocket.http.response" in scope.get("extensions", {}):
        await send(
            {
                "type": "websocket.http.response.start",
                "status": 503,
                "headers": [(b"content-type", b"text/plain"), (b"retry-after", b"0")],
            }
        )
        await send({"type": "websocket.http.response.body", "body": b"Server restarting.\n"})
    else:
        await send({"type": "websocket.accept"})
        protocol = _daphne_protocol(send)
        if (
            protocol is not None
            and hasattr(protocol, "sendCloseFrame")
            and getattr(protocol, "state", None) == getattr(protocol, "STATE_OPEN", object())
        ):
            protocol.sendCloseFrame(code=int(SERVICE_RESTART))
        else:
            await send({"type": "websocket.close", "code": int(CloseCode.NORMAL)})
