"""``Client``: one Streampod server, one WebSocket, every endpoint on it.

Imports no Django and no channels. The wire format is ``streaming.protocol``'s and
the message classes are ``streaming.serialization``'s, used as they are.

Lifecycle of one connection (a "link")::

    open_streaming_connection()
      -> status connecting: WebSocket handshake (``Authorization: Token <key>``)
      -> send ping; frames are buffered from now on
      -> first pong: status connected; heartbeat starts
      -> socket ends (server close, network, heartbeat, close_streaming_connection())
      -> status disconnected, or waiting_to_retry when a handler will retry

Everything runs on the event loop that calls the client; listeners and callbacks
are called synchronously on it and must not block.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    ConnectionClosedError,
    InvalidStatus,
    WebSocketException,
)

from .. import __version__
from ..exceptions import ProtocolError, SerializationError
from ..protocol import DataFrame, MethodFrame, decode_frame, encode_command, encode_data
from ..serialization import SerializableEntity, decode_object, encode_object
from .calls import deliver, link_lost, refused, undecodable
from .endpoint_ref import EndpointRef
from .errors import (
    ClientClosed,
    ConnectionFailed,
    NotConnected,
    ServerError,
    SignInFailed,
    UndecodableMessage,
)
from .raw import RawObject
from .status import DisconnectReason, StreamingConnectionStatus
from .stream import MessageStream

if TYPE_CHECKING:
    from .handler import StreamingConnectionHandler

__all__ = ["Client"]

logger = logging.getLogger("streaming.client")

Status = StreamingConnectionStatus
StatusListener = Callable[[StreamingConnectionStatus], object]
ReportedError = ServerError | UndecodableMessage
ErrorCallback = Callable[[ReportedError], object]

_PING = encode_command("ping")
_CLOSED_BY_CLIENT = DisconnectReason(1000, "closed by the client", by_client=True)
#: How long a closing handshake may take before the socket is simply dropped.
_CLOSE_TIMEOUT = 5.0

#: Endpoint streams a client holds (the app's own included) past which a message for a new
#: endpoint name is dropped and reported (``unknown_endpoint`` on ``errors``): else a server
#: could fill the process with a stream per name.
MAX_ENDPOINTS = 256


class _Connection(ClientConnection):
    """websockets' client connection, which ends once a close frame came and the TCP
    connection did not follow within the close timeout.

    websockets waits for the server to close TCP after its close frame and enforces the
    close timeout only on the next send or ping: against a server (or a middlebox) that
    never closes, the link stayed ``connected`` until the next heartbeat (20 s at the
    defaults), and a send meanwhile blocked. Built on public parts only: asyncio's
    ``data_received`` and ``connection_lost``, and the sans-I/O protocol's
    ``close_expected()``.
    """

    _drop: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._drop is None and self.protocol.close_expected():
            self._drop = self.loop.call_later(
                self.close_timeout or _CLOSE_TIMEOUT, self.transport.abort
            )

    def connection_lost(self, exc: Exception | None) -> None:
        if self._drop is not None:
            self._drop.cancel()
        super().connection_lost(exc)


class _Aborted(Exception):
    """close_streaming_connection() interrupted an opening handshake."""


@dataclass(eq=False)
class _Link:
    """One WebSocket and the tasks that serve it."""

    ws: ClientConnection
    first_pong: asyncio.Future[None]
    last_seen: float  # loop time of the last frame received: the heartbeat's clock
    write_timeout: float = 40.0  # the client's silence_timeout: see send()
    reader: asyncio.Task[None] | None = None
    heartbeat: asyncio.Task[None] | None = None
    connected: bool = False
    reason: DisconnectReason | None = None  # set when this side ends the link
    auth_waiters: deque[asyncio.Future[int | None]] = field(default_factory=deque)
    calls: dict[str, Any] = field(default_factory=dict)  # streaming-method calls (calls.py)

    async def send(self, text: str) -> None:
        """``ws.send``, bounded: a frame the server has not let through for
        ``write_timeout`` (it stopped reading, so the TCP buffers are full) drops the link
        and raises ``ConnectionClosed``, as a lost link does. Frames arriving do not prove
        a link whose other direction is stuck; a slow one drains and never waits that long."""
        try:
            # Not wait_for: on 3.11 it runs the send in a task of its own, which starts a
            # loop turn later, so frames sent one after the other could go out of order.
            async with asyncio.timeout(self.write_timeout):
                await self.ws.send(text)
        except TimeoutError:
            self.reason = self.reason or DisconnectReason(
                1006, f"the server read nothing for {self.write_timeout:g} s (a send was stuck)"
            )
            self.ws.transport.abort()
            raise ConnectionClosedError(None, None) from None


#: Close codes with which the client itself fails a connection (websockets does), and
#: what they mean then: the server's fault, not the 1006 of a close it never answered.
_CLIENT_FAILURES = {
    1002: "the server broke the WebSocket protocol",
    1007: "the server sent text that is not UTF-8",
    1009: "the server sent a frame larger than the client accepts (max_size)",
}


def _close_reason(ws: ClientConnection) -> DisconnectReason:
    """Why ``ws`` closed: the server's close code, or the client's own when the client
    failed the connection first (a frame too large, not UTF-8, a protocol error)."""
    protocol = ws.protocol
    sent, rcvd = protocol.close_sent, protocol.close_rcvd
    client_first = sent is not None and (rcvd is None or not protocol.close_rcvd_then_sent)
    if client_first and sent is not None and sent.code in _CLIENT_FAILURES:
        return DisconnectReason(
            sent.code, f"{_CLIENT_FAILURES[sent.code]} (close code {sent.code})"
        )
    return DisconnectReason.from_close(ws.close_code, ws.close_reason or "")


def _derive_urls(url: str) -> tuple[str, str]:
    """``http(s)://host[/prefix]/`` -> (that base with a trailing slash, ``ws(s)://.../websocket/``)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"url must be http://host[:port][/path] or https://..., not {url!r}")
    if parts.query or parts.fragment:
        # Credentials never travel in a URL (they end up in logs): refuse the habit.
        raise ValueError(f"url must not have a query string or fragment: {url!r}")
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    base = urlunsplit((parts.scheme, parts.netloc, path, "", ""))
    ws_scheme = "wss" if parts.scheme == "https" else "ws"
    return base, urlunsplit((ws_scheme, parts.netloc, path + "websocket/", "", ""))


class Client:
    """A connection to one Streampod server.

    ``url`` is the server's HTTP base URL (``http://127.0.0.1:8000/``); the socket is
    ``ws(s)://<same host and path>/websocket/``. ``auth_key`` is the full
    ``Authorization`` header value, ``"Token <key>"`` (or use :meth:`sign_in`).

    Options: ``buffer_size`` bounds each endpoint stream and ``errors`` (see
    :class:`MessageStream`: the oldest item is dropped and the gap reported);
    ``ping_interval`` is how often the client pings, ``silence_timeout`` how long
    without any frame from the server, or with a send the server does not let through
    (it stopped reading), before the connection counts as dead;
    ``connect_timeout`` bounds one attempt, handshake and first pong together;
    ``on_error`` is called with each :class:`ServerError` or
    :class:`UndecodableMessage` (they also go on ``errors``); ``raw=True`` makes
    streams yield :class:`RawObject` instead of decoded message objects (no classes
    needed).

    ``client.<name>`` is ``client.endpoint("<name>")`` for any name that is not an
    attribute of the client (use ``endpoint()`` for names like ``errors``).
    """

    def __init__(
        self,
        url: str,
        auth_key: str | None = None,
        *,
        buffer_size: int = 1000,
        ping_interval: float = 20.0,
        silence_timeout: float = 40.0,
        connect_timeout: float = 10.0,
        on_error: ErrorCallback | None = None,
        raw: bool = False,
    ) -> None:
        if buffer_size < 1:
            raise ValueError("buffer_size must be at least 1")
        if ping_interval <= 0 or connect_timeout <= 0:
            raise ValueError("ping_interval and connect_timeout must be positive")
        if silence_timeout <= ping_interval:
            # A healthy server answers each ping: silence shorter than the ping
            # period would declare it dead between two pings.
            raise ValueError("silence_timeout must be longer than ping_interval")
        self.url, self.websocket_url = _derive_urls(url)
        self.auth_url = self.url + "api/auth/token/"
        self.auth_key = auth_key
        self.buffer_size = buffer_size
        self.ping_interval = ping_interval
        self.silence_timeout = silence_timeout
        self.connect_timeout = connect_timeout
        self.on_error = on_error
        self._unheard: set[str] = set()  # kinds of error logged while nobody looked
        self.raw = raw
        #: :class:`ServerError` and :class:`UndecodableMessage`, in arrival order.
        self.errors: MessageStream[ReportedError] = MessageStream("errors", buffer_size)
        self._refs: dict[str, EndpointRef] = {}
        self._listeners: list[StatusListener] = []
        self._status = Status.disconnected
        self._link: _Link | None = None
        self._open_lock = asyncio.Lock()
        self._auth_lock = asyncio.Lock()  # the server takes one auth command at a time
        self._abort_connect = asyncio.Event()
        self._handler: StreamingConnectionHandler | None = None
        self._retry_at: float | None = None
        self._disconnect_reason: DisconnectReason | None = None
        self._closed = False
        self._background: set[asyncio.Task[None]] = set()  # see _send_soon

    def __repr__(self) -> str:
        return f"<Client {self.url} {self._status}>"

    # -- endpoints ------------------------------------------------------------------------

    def endpoint(self, name: str) -> EndpointRef:
        """The :class:`EndpointRef` for ``name`` (the same object every time)."""
        ref = self._refs.get(name)
        if ref is None:
            if not isinstance(name, str) or not name:
                raise ValueError("an endpoint name is a non-empty string")
            ref = self._refs[name] = EndpointRef(self, name, self.buffer_size)
            if self._closed:
                ref.stream._end()
        return ref

    def __getattr__(self, name: str) -> EndpointRef:
        # Only reached for names that are not real attributes.
        if name.startswith("_"):
            raise AttributeError(name)
        return self.endpoint(name)

    # -- state ------------------------------------------------------------------------------

    @property
    def streaming_connection_status(self) -> StreamingConnectionStatus:
        return self._status

    @property
    def is_connected(self) -> bool:
        return self._status is Status.connected

    @property
    def retry_in_seconds(self) -> float | None:
        """Seconds until the handler's next attempt while ``waiting_to_retry``, else None."""
        if self._status is not Status.waiting_to_retry or self._retry_at is None:
            return None
        return max(0.0, self._retry_at - asyncio.get_running_loop().time())

    @property
    def disconnect_reason(self) -> DisconnectReason | None:
        """Why the last connection or attempt ended; None while connected or before any."""
        return self._disconnect_reason

    def add_streaming_connection_status_listener(self, listener: StatusListener) -> None:
        """Call ``listener(status)`` on each *change* of status (never twice in a row
        with the same status). An exception from a listener is logged."""
        self._listeners.append(listener)

    def remove_streaming_connection_status_listener(self, listener: StatusListener) -> None:
        """Forget ``listener``; does nothing if it was not added."""
        with suppress(ValueError):
            self._listeners.remove(listener)

    def _set_status(self, status: StreamingConnectionStatus) -> None:
        if status is self._status:
            return
        self._status = status
        for listener in list(self._listeners):
            try:
                listener(status)
            except Exception:
                logger.exception("status listener %r raised", listener)

    def _settle(self, reason: DisconnectReason, *, connected: bool = False) -> None:
        """A link or an attempt ended (``connected``: a link that was up): disconnected, or
        waiting_to_retry if a handler retries."""
        self._disconnect_reason = reason
        handler = self._handler
        delay = (
            handler._after_loss(reason, connected=connected)
            if handler is not None and not self._closed
            else None
        )
        if delay is None:
            self._retry_at = None
            self._set_status(Status.disconnected)
        else:
            self._retry_at = asyncio.get_running_loop().time() + delay
            self._set_status(Status.waiting_to_retry)

    # -- authentication ---------------------------------------------------------------------

    async def sign_in(self, username: str, password: str) -> None:
        """Get a token with ``POST {url}api/auth/token/`` and use it from now on.

        Raises :class:`SignInFailed` (``status_code`` 400 for wrong credentials, None
        when the server could not be reached). When connected, the socket is
        re-authenticated at once (see :meth:`authenticate`).
        """
        try:
            async with httpx.AsyncClient(timeout=self.connect_timeout) as http:
                response = await http.post(
                    self.auth_url, json={"username": username, "password": password}
                )
        except httpx.HTTPError as exc:
            raise SignInFailed(f"Could not reach {self.auth_url}: {exc}") from exc
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code == 400:
            detail = "Unable to sign in with these credentials."
            if isinstance(body, dict):
                messages = [m for value in body.values() if isinstance(value, list) for m in value]
                if messages:
                    detail = " ".join(str(m) for m in messages)
            raise SignInFailed(detail, status_code=400)
        token = body.get("token") if isinstance(body, dict) else None
        if response.status_code != 200 or not isinstance(token, str) or not token:
            raise SignInFailed(
                f"{self.auth_url} answered HTTP {response.status_code} without a token.",
                status_code=response.status_code,
            )
        await self.authenticate(f"Token {token}")

    async def authenticate(self, auth_key: str | None) -> int | None:
        """Use ``auth_key`` (``"Token <key>"``, or None for anonymous) from now on.

        When connected, the open socket is re-authenticated with the ``auth``
        command and the server's answer is returned: the user id, or None when the
        key was refused (the socket is then anonymous). Endpoints re-open for the new
        identity on the server. When not connected, returns None: the key is sent
        with the next handshake. Concurrent calls take turns (the server handles one
        ``auth`` command at a time).
        """
        self.auth_key = auth_key
        async with self._auth_lock:
            link = self._link
            if link is None or not link.connected:
                return None
            waiter: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
            link.auth_waiters.append(waiter)
            try:
                await link.send(encode_command("auth", {"key": auth_key}))
            except ConnectionClosed as exc:
                waiter.cancel()
                raise NotConnected(
                    "The connection closed before the auth command was sent."
                ) from exc
            return await waiter

    # -- opening and closing ----------------------------------------------------------------

    async def open_streaming_connection(self) -> None:
        """Connect, ping, and return once the first pong arrived (status ``connected``).

        Does nothing when already connected. Raises :class:`ConnectionFailed` (its
        ``reason`` is also ``client.disconnect_reason``) or :class:`ClientClosed`.
        Frames that arrive from the handshake on are buffered on their endpoints.
        """
        if self._closed:
            raise ClientClosed()
        async with self._open_lock:
            if self._link is not None and self._link.connected:
                return
            if self._closed:
                raise ClientClosed()
            await self._connect()

    async def close_streaming_connection(self) -> None:
        """Close the socket (code 1000) and stop an attached handler's retries.

        Status ends ``disconnected`` with ``disconnect_reason.by_client``. Endpoint
        streams stay: open again and the same iterators go on.
        """
        handler = self._handler
        if handler is not None:
            handler._stop_retrying()
        self._abort_connect.set()  # interrupts a handshake in progress
        if self._link is not None:
            await self._close_link(self._link)
        async with self._open_lock:  # an attempt in progress has ended
            if self._link is not None:
                await self._close_link(self._link)
            elif self._status is Status.waiting_to_retry:
                self._settle(_CLOSED_BY_CLIENT)

    async def close(self) -> None:
        """Close for good: the connection, an attached handler, and every stream
        (iterations end once they have read what was buffered)."""
        if self._closed:
            return
        self._closed = True
        handler = self._handler
        await self.close_streaming_connection()
        if handler is not None:
            await handler.close()
        for ref in self._refs.values():
            ref.stream._end()
        self.errors._end()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _close_link(self, link: _Link) -> None:
        if link.reason is None:
            link.reason = _CLOSED_BY_CLIENT
        await link.ws.close()
        if link.reader is not None:
            await asyncio.wait({link.reader})

    async def _wait_link_closed(self) -> None:
        """Return when the current link (if any) has ended and been settled."""
        link = self._link
        if link is not None and link.reader is not None:
            await asyncio.wait({link.reader})

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        self._retry_at = None
        self._set_status(Status.connecting)
        started = loop.time()
        try:
            ws = await self._open_socket()
        except _Aborted:
            reason = _CLOSED_BY_CLIENT
        except InvalidStatus as exc:
            status = exc.response.status_code
            reason = DisconnectReason(
                None, f"the server refused the WebSocket handshake (HTTP {status})", status
            )
        except (OSError, WebSocketException) as exc:  # TimeoutError is an OSError
            reason = DisconnectReason(
                None, f"could not connect to {self.websocket_url}: {exc or type(exc).__name__}"
            )
        except asyncio.CancelledError:
            self._settle(DisconnectReason(None, "connection attempt cancelled", by_client=True))
            raise
        else:
            await self._start_link(ws, started)
            return
        self._settle(reason)
        raise ConnectionFailed(reason)

    async def _open_socket(self) -> ClientConnection:
        """The WebSocket handshake, interruptible by close_streaming_connection()."""
        self._abort_connect.clear()
        headers = {"Authorization": self.auth_key} if self.auth_key else None

        async def handshake() -> ClientConnection:
            return await connect(
                self.websocket_url,
                additional_headers=headers,
                user_agent_header=f"streampod-client/{__version__}",
                # The application-level ping below is the heartbeat: it proves the
                # server's Streampod loop answers, not only its WebSocket library.
                ping_interval=None,
                open_timeout=self.connect_timeout,
                close_timeout=_CLOSE_TIMEOUT,
                create_connection=_Connection,
            )

        attempt = asyncio.ensure_future(handshake())
        abort = asyncio.ensure_future(self._abort_connect.wait())
        try:
            await asyncio.wait({attempt, abort}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            abort.cancel()
            if not attempt.done():
                attempt.cancel()
                await asyncio.wait({attempt})
        if self._abort_connect.is_set():
            if not attempt.cancelled() and attempt.exception() is None:
                attempt.result().transport.abort()
            raise _Aborted()
        return attempt.result()

    async def _start_link(self, ws: ClientConnection, started: float) -> None:
        loop = asyncio.get_running_loop()
        link = _Link(ws, loop.create_future(), loop.time(), write_timeout=self.silence_timeout)
        self._link = link
        reader = link.reader = loop.create_task(self._read(link), name="streampod-client-reader")
        try:
            with suppress(ConnectionClosed):  # the reader reports why
                await ws.send(_PING)
            remaining = max(0.0, started + self.connect_timeout - loop.time())
            await asyncio.wait(
                {link.first_pong, reader}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:
            link.reason = link.reason or DisconnectReason(
                None, "connection attempt cancelled", by_client=True
            )
            ws.transport.abort()
            await asyncio.wait({reader})
            raise
        if reader.done() or not link.first_pong.done():
            if not reader.done():
                link.reason = DisconnectReason(
                    None, f"no pong within {self.connect_timeout:g} s of connecting"
                )
                ws.transport.abort()
                await asyncio.wait({reader})
            reason = self._disconnect_reason or DisconnectReason(None, "connection failed")
            raise ConnectionFailed(reason)
        link.connected = True
        self._disconnect_reason = None
        self._set_status(Status.connected)
        link.heartbeat = loop.create_task(self._heartbeat(link), name="streampod-client-heartbeat")

    # -- receiving --------------------------------------------------------------------------

    async def _read(self, link: _Link) -> None:
        loop = asyncio.get_running_loop()
        try:
            async for message in link.ws:
                link.last_seen = loop.time()
                self._on_frame(link, message)
        except ConnectionClosed:
            pass
        except Exception:
            # A bug here must not leave a half-dead link behind: log it, drop the socket.
            logger.exception("streaming client: the reader failed")
            link.reason = link.reason or DisconnectReason(1006, "client error (see the log)")
            link.ws.transport.abort()
        finally:
            self._on_link_closed(link)

    def _on_frame(self, link: _Link, message: str | bytes) -> None:
        if isinstance(message, bytes):
            self._report(UndecodableMessage("malformed_frame", "Binary frame from the server."))
            return
        try:
            frame = decode_frame(message)
        except ProtocolError as exc:
            undecodable_error = UndecodableMessage(exc.code, exc.detail)
            self._report(undecodable_error)
            undecodable(link, message, undecodable_error)
            return
        if isinstance(frame, DataFrame):
            self._on_data(frame)
            return
        if isinstance(frame, MethodFrame):
            deliver(link, frame)
            return
        command = frame.command
        if command == "pong":
            if not link.first_pong.done():
                link.first_pong.set_result(None)
        elif command == "error":
            error = ServerError.from_args(frame.args)
            self._report(error)
            refused(link, error)  # a call's frame refused at the edge (rate_limited)
        elif command == "auth":
            if link.auth_waiters:
                waiter = link.auth_waiters.popleft()
                if not waiter.done():  # else its caller gave up waiting
                    user_id = frame.args.get("user_id")
                    waiter.set_result(user_id if isinstance(user_id, int) else None)
        else:
            # Later protocol versions may add commands: ignore what we do not know.
            logger.debug("ignoring command %r from the server", command)

    def _on_data(self, frame: DataFrame) -> None:
        obj: Any
        if self.raw:
            obj = RawObject(frame.class_name, frame.data)
        else:
            try:
                obj = decode_object(frame.class_name, frame.data)
            except SerializationError as exc:
                self._report(
                    UndecodableMessage(
                        exc.code,
                        exc.detail,
                        endpoint=frame.endpoint,
                        errors=getattr(exc, "errors", None),
                    )
                )
                return
        if frame.endpoint not in self._refs and len(self._refs) >= MAX_ENDPOINTS:
            # A stream for each name the server sends would let a server fill this process.
            self._report(
                UndecodableMessage(
                    "unknown_endpoint",
                    f"A message for a new endpoint past the first {MAX_ENDPOINTS}; it was dropped.",
                    endpoint=frame.endpoint[:64],
                )
            )
            return
        self.endpoint(frame.endpoint).stream._put(obj)

    def _report(self, error: ReportedError) -> None:
        logger.debug("reported: %r", error)
        self.errors._put(error)
        if self.on_error is None and not self.errors.read:
            # Nobody looks: say it once a kind, or a message whose class the program did
            # not import vanishes without a word (helper "serverpod10" took it for a lost
            # delivery).
            kind = f"{type(error).__name__}:{error.code}"
            if kind not in self._unheard and len(self._unheard) < 100:
                self._unheard.add(kind)
                logger.warning(
                    "%s (%s); further ones go to client.errors only (pass on_error, or "
                    "read client.errors, to see each)",
                    error,
                    error.code,
                )
        if self.on_error is not None:
            try:
                self.on_error(error)
            except Exception:
                logger.exception("on_error callback %r raised", self.on_error)

    def _on_link_closed(self, link: _Link) -> None:
        was_connected = link.first_pong.done() and not link.first_pong.cancelled()
        if self._link is link:
            self._link = None
        if link.heartbeat is not None:
            link.heartbeat.cancel()
        if not link.first_pong.done():
            link.first_pong.cancel()
        link_lost(link)
        while link.auth_waiters:
            waiter = link.auth_waiters.popleft()
            if not waiter.done():
                waiter.set_exception(
                    NotConnected("The connection closed before the server answered 'auth'.")
                )
        reason = link.reason or _close_reason(link.ws)
        logger.info("streaming connection to %s ended: %s", self.websocket_url, reason.message)
        self._settle(reason, connected=was_connected)

    # -- sending and the heartbeat ----------------------------------------------------------

    async def _send_data(
        self, endpoint: str, message: SerializableEntity | RawObject, frame_id: str | None
    ) -> None:
        link = self._link
        if link is None or not link.connected:
            raise NotConnected(
                f"Cannot send to {endpoint!r}: the streaming connection is {self._status}."
            )
        if isinstance(message, SerializableEntity):
            object_json = encode_object(message)
        elif isinstance(message, RawObject):
            object_json = message.to_json()
        else:
            raise TypeError(
                f"send_stream_message() takes a SerializableEntity or RawObject, "
                f"not {type(message).__name__}"
            )
        try:
            await link.send(encode_data(endpoint, object_json, frame_id))
        except ConnectionClosed as exc:
            raise NotConnected(
                f"Cannot send to {endpoint!r}: the connection closed ({exc})."
            ) from exc

    def _send_soon(self, link: _Link, text: str) -> None:
        """Send ``text`` on ``link`` from code that cannot wait (a cancellation)."""

        async def send() -> None:
            with suppress(ConnectionClosed):
                await link.send(text)

        task = asyncio.ensure_future(send())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _heartbeat(self, link: _Link) -> None:
        """Ping every ``ping_interval``; no frame for ``silence_timeout`` -> drop the link."""
        loop = asyncio.get_running_loop()
        next_ping = loop.time() + self.ping_interval
        while True:
            now = loop.time()
            deadline = link.last_seen + self.silence_timeout
            if now >= deadline:
                link.reason = DisconnectReason(
                    1006,
                    f"no frame from the server for {self.silence_timeout:g} s (heartbeat)",
                )
                logger.warning("streaming connection to %s is dead", self.websocket_url)
                # No closing handshake: the peer is not answering anyway.
                link.ws.transport.abort()
                return
            if now >= next_ping:
                next_ping = now + self.ping_interval
                try:
                    # A send may wait on a full socket buffer; never past the deadline.
                    await asyncio.wait_for(link.ws.send(_PING), deadline - now)
                except ConnectionClosed:
                    return
                except TimeoutError:
                    continue  # the deadline check above drops the link
                continue
            await asyncio.sleep(min(next_ping, deadline) - now)
