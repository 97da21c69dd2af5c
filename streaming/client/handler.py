"""``StreamingConnectionHandler``: keeps a client's connection up."""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..protocol import restart_advice
from .client import Client
from .errors import ClientClosed, ConnectionFailed
from .status import DisconnectReason, StreamingConnectionStatus

__all__ = ["StreamingConnectionHandler", "StreamingConnectionHandlerState"]


@dataclass(frozen=True, slots=True)
class StreamingConnectionHandlerState:
    """What Serverpod's handler reports to its listener: the client's status and, while
    ``waiting_to_retry``, the whole seconds left before the next attempt (else None)."""

    status: StreamingConnectionStatus
    retry_in_seconds: int | None = None


HandlerListener = Callable[[StreamingConnectionHandlerState], Any]

logger = logging.getLogger("streaming.client")


class StreamingConnectionHandler:
    """Opens ``client``'s connection and opens it again whenever it ends.

    Retries wait ``min(max_delay, min_delay * factor ** (n - 1))`` seconds after the
    n-th failure in a row, shortened by a random fraction up to ``jitter`` (0: none,
    1: anywhere between 0 and the full delay) so that many clients do not return in
    step; ``rng`` draws that fraction (pass a fixed one in tests). A connection that
    held for ``stable_after`` seconds resets the count; one that ended sooner counts as a
    failure (a server that closes every connection once it is up is backed off from,
    whatever its close code). While waiting the client's status is
    ``waiting_to_retry`` and ``client.retry_in_seconds`` counts down.

    A close with 1012 on a connection that was up (the server is restarting: a graceful
    shutdown, see docs/deployment.md; or its message-bus subscription was lost) is not
    counted as a failure: other servers are up. It is retried after a random wait of up
    to ``restart_spread`` seconds (uniform; 0: at once), so that the thousands of clients
    one server closes together do not all connect again in the same instant; or later
    when the server's close reason advises it (``after`` seconds, then a random moment of
    its ``spread`` if larger than ``restart_spread``: docs/protocol.md). If that
    attempt fails, the backoff applies as usual. Only the first 1012 is free: another
    before a connection has held for ``stable_after`` seconds (a server that keeps
    restarting, a Redis link that keeps dropping) is backed off like failures, the
    n-th such one in a row as the (n-1)-th failure.

    It stops, leaving the client ``disconnected``, when the server closes with 4401
    or 4403 (or refuses the handshake with HTTP 401/403): the same credentials would
    be refused again. ``client.disconnect_reason`` then says why, and
    :meth:`wait_closed` returns. It also stops when the client is closed on purpose
    (:meth:`close`, ``client.close_streaming_connection()``, ``client.close()``).

    Endpoint streams belong to the client, so the same iterators go on across
    reconnects. A handler is started once; use ``async with`` or :meth:`start` and
    :meth:`close`.

    Serverpod's shape works too: ``StreamingConnectionHandler(client, listener=...)``,
    then :meth:`connect` and :meth:`dispose`. ``listener(state)`` is called on every
    change of status, and once a second while waiting to retry, with a
    :class:`StreamingConnectionHandlerState` whose ``retry_in_seconds`` counts down.
    """

    def __init__(
        self,
        client: Client,
        *,
        min_delay: float = 0.5,
        max_delay: float = 30.0,
        factor: float = 2.0,
        jitter: float = 0.5,
        restart_spread: float = 1.0,
        stable_after: float = 10.0,
        rng: Callable[[], float] = random.random,
        listener: HandlerListener | None = None,
    ) -> None:
        if not 0 < min_delay <= max_delay:
            raise ValueError("need 0 < min_delay <= max_delay")
        if factor < 1:
            raise ValueError("factor must be at least 1")
        if not 0 <= jitter <= 1:
            raise ValueError("jitter must be between 0 and 1")
        if not (0 <= restart_spread and math.isfinite(restart_spread)):
            raise ValueError("restart_spread must be a finite number of seconds, at least 0")
        if not (0 <= stable_after and math.isfinite(stable_after)):
            raise ValueError("stable_after must be a finite number of seconds, at least 0")
        self.client = client
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.factor = factor
        self.jitter = jitter
        self.restart_spread = restart_spread
        self.stable_after = stable_after
        self._restarts = 0  # 1012s in a row on connections that did not hold
        self._up_since: float | None = None  # when the current connection came up
        self._rng = rng
        self._failures = 0
        self._next_delay: float | None = None
        self._stopping = False
        self._sleeping = False
        self._task: asyncio.Task[None] | None = None
        self.listener = listener
        self._closing: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<StreamingConnectionHandler running={self.running} client={self.client!r}>"

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def delay_for(self, failures: int) -> float:
        """The wait before the next attempt after ``failures`` failures in a row."""
        try:
            base = min(self.max_delay, self.min_delay * self.factor ** max(0, failures - 1))
        except OverflowError:
            base = self.max_delay
        return base * (1.0 - self.jitter * self._rng())

    @property
    def state(self) -> StreamingConnectionHandlerState:
        """The client's status now, with the whole seconds left while waiting to retry."""
        left = self.client.retry_in_seconds
        return StreamingConnectionHandlerState(
            self.client.streaming_connection_status,
            math.ceil(left) if left is not None else None,
        )

    def start(self) -> None:
        """Start keeping the connection up (in a task of the running loop)."""
        if self._task is not None:
            raise RuntimeError("a StreamingConnectionHandler is started only once")
        if self.client._handler is not None:
            raise RuntimeError("this client already has a StreamingConnectionHandler")
        self.client._handler = self
        self.client.add_streaming_connection_status_listener(self._status_changed)
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name="streampod-connection-handler"
        )

    def connect(self) -> None:
        """Serverpod's name for :meth:`start`."""
        self.start()

    def dispose(self) -> asyncio.Task[None]:
        """Serverpod's ``dispose``: stop retrying and close the connection, starting at
        once; await the result to know it is done (the same as :meth:`close`)."""
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self.close())
        return self._closing

    def _status_changed(self, status: StreamingConnectionStatus) -> None:
        if status is StreamingConnectionStatus.connected:
            self._up_since = asyncio.get_running_loop().time()
        self._notify()

    def _notify(self) -> None:
        listener = self.listener
        if listener is None:
            return
        try:
            listener(self.state)
        except Exception:
            logger.exception("StreamingConnectionHandler listener %r raised", listener)

    async def close(self) -> None:
        """Stop retrying and close the connection; status ends ``disconnected``."""
        self._stopping = True
        if self.client._handler is self:
            await self.client.close_streaming_connection()
        await self.wait_closed()

    async def wait_closed(self) -> None:
        """Return once the handler has stopped (closed, or refused credentials)."""
        if self._task is not None:
            await asyncio.wait({self._task})

    async def __aenter__(self) -> StreamingConnectionHandler:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- called by the client ---------------------------------------------------------------

    def _after_loss(self, reason: DisconnectReason, *, connected: bool = False) -> float | None:
        """The delay before the next attempt, or None to stop (set when a link ends;
        ``connected``: the link was up)."""
        if self._stopping or reason.by_client or reason.is_auth_failure:
            self._next_delay = None
            return None
        up_since = self._up_since
        held = (
            connected
            and up_since is not None
            and asyncio.get_running_loop().time() - up_since >= self.stable_after
        )
        if held:
            # The backoff starts over after a connection that held, not after any that
            # came up: a server that closes each one once it is up (4013, 4008, 1011...)
            # had every client back 3 times a second, for ever (helper "chaos10").
            self._restarts = 0
            self._failures = 0
        if reason.is_service_restart and connected:
            # Not a failure: the server is restarting, others are up. Spread at random
            # over restart_spread, or every client of that server would connect again in
            # the same instant. A 1012 before the link was up is a failed attempt (a
            # draining server refusing it): backed off, or the client would retry at
            # once for as long as the drain lasts. Only the first in a row is free: a
            # server that 1012s every connection had clients back 562 times a second
            # (restart_spread=0), 2.8 at the default, for ever.
            # The server may advise a later moment (the close reason, RESTART_RATE): the
            # thousands of sockets it closed would not all be admitted within a second.
            after, spread = restart_advice(reason.close_reason)
            advised = after + max(self.restart_spread, spread) * self._rng()
            self._restarts += 1
            if self._restarts == 1:
                self._next_delay = advised
            else:
                self._next_delay = max(advised, self.delay_for(self._restarts - 1))
            return self._next_delay
        self._failures += 1
        self._next_delay = self.delay_for(self._failures)
        return self._next_delay

    def _stop_retrying(self) -> None:
        self._stopping = True
        if self._sleeping and self._task is not None:
            self._task.cancel()

    # -- the loop -----------------------------------------------------------------------------

    async def _run(self) -> None:
        client = self.client
        try:
            while not self._stopping:
                self._next_delay = None
                try:
                    await client.open_streaming_connection()
                except ConnectionFailed:
                    pass
                else:
                    await client._wait_link_closed()
                delay = self._next_delay
                if delay is None or self._stopping:
                    return
                self._sleeping = True
                try:
                    await self._count_down(delay)
                finally:
                    self._sleeping = False
        except ClientClosed:
            pass
        except asyncio.CancelledError:
            if not self._stopping:
                raise
            # Cancelled by _stop_retrying() while waiting: a normal stop.
        except Exception:
            logger.exception("StreamingConnectionHandler stopped on an unexpected error")
            self._stopping = True  # the client settles disconnected: nothing retries now
            client._settle(DisconnectReason(None, "the connection handler failed (see the log)"))
        finally:
            if client._handler is self:
                client._handler = None
            client.remove_streaming_connection_status_listener(self._status_changed)

    async def _count_down(self, delay: float) -> None:
        """The backoff itself: wait ``delay`` seconds, telling the listener the whole
        seconds left each time that number changes (once a second)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + delay
        shown = math.ceil(delay)
        while (left := end - loop.time()) > 0:
            if math.ceil(left) != shown:
                shown = math.ceil(left)
                self._notify()
            # until the count changes: the remainder of this second
            await asyncio.sleep(left - (math.ceil(left) - 1) if left > 1 else left)
