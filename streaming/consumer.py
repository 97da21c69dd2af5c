"""``StreamingConsumer``: the one consumer that owns a ``/websocket/`` connection.

Flow: socket frame -> ``protocol.decode_frame`` -> per-endpoint lane ->
``serialization.decode_object`` -> endpoint hook. Sends go through the connection's
:class:`~streaming.outbox.Outbox`.

Guarantees:

* One ``Endpoint`` instance per connection per endpoint.
* Frames for one endpoint are handled in order, one at a time (its *lane*); lanes
  of different endpoints run concurrently. ``ping`` and ``auth`` never wait on a
  hook. A lane's task exists only while it has work, so idle sockets cost little.
* On connect ``stream_opened`` runs for each usable endpoint in registration order,
  *before* the handshake is accepted: once a client sees the handshake complete,
  every channel those hooks listened on is joined in the whole cluster (see
  :meth:`StreamingConsumer._until_open`). A hook that waits on a ``listen()``
  iterator counts as opened; one that has not returned after ``OPEN_TIMEOUT`` is
  logged and the socket is accepted anyway. Frames hooks send meanwhile follow
  the accept.
* On disconnect the sessions end first (their ``listen()`` iterators stop), then
  ``stream_closed`` runs for exactly the endpoints that were opened. A hook still
  running ``CLOSE_GRACE_PERIOD`` seconds later is cancelled and logged by name.
* A hook that raises is logged with its traceback; the client gets
  ``internal_error`` and the connection goes on.
* Bad input gets an ``error`` frame and never reaches a hook.
* Fair: the frame loop yields to the event loop once every ``FAIR_SLICE`` (5 ms) of busy
  time in the process (``streaming.fairness``: one clock for the process), so a client
  that keeps frames waiting (its server's ``receive`` then never suspends) cannot hold the
  other sockets of the process waiting.
* Memory is bounded per connection: frames waiting for hooks or for an ``auth``
  (``MAX_PENDING_FRAMES`` per endpoint, ``MAX_PENDING_BYTES`` in all, each frame's
  parsed size bounded by ``MAX_FRAME_VALUES``/``MAX_FRAME_DEPTH``), and frames
  waiting to be sent (``SEND_QUEUE_LIMIT``/``SEND_QUEUE_BYTES``, then 4013).
  A frame too large to send (``MAX_SEND_BYTES``, or daphne's own limit) is not
  sent; the client gets ``message_too_large`` instead.

Channels' ``dispatch()`` runs Django's DB-connection cleanup in a worker thread
before every handler; this consumer skips it on the frame path (hooks that touch
the ORM use ``database_sync_to_async``, which cleans up in its own thread). It has
no channel-layer channel of its own: messages between servers travel through the
process-wide bus (``streaming.messages``), one channel-layer group per channel per
server, not per socket.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.contrib.auth.models import AnonymousUser

from . import db, methods, metrics, protocol
from .auth import (
    AUTH_FAILED_KEY,
    AUTH_VIA_KEY,
    CREDENTIAL_KEY,
    REVOCATION_CLOCK_SKEW,
    RevokedAuthentication,
    credential_digest,
    revocation_channel,
    session_still_valid,
    token_of,
    user_for_key,
)
from .conf import streaming_settings
from .connections import get_connections
from .endpoint import Endpoint
from .exceptions import (
    FrameTooLarge,
    MessagingUnavailable,
    ProtocolError,
    SerializationError,
    StreamingError,
)
from .fairness import FAIR_SLICE, turn_due
from .flow import attach_flow, closes_at_once, plain_send, send_limit
from .lane import Lane
from .outbox import Outbox
from .protocol import CloseCode, CommandFrame, DataFrame, ErrorCode, echo
from .serialization import decode_object
from .session import USER_OBJECTS_KEY, StreamingSession
from .shutdown import admit, refuse_handshake, restart

if TYPE_CHECKING:
    from .messages import MessageBus

logger = logging.getLogger("streaming.consumer")

_WIRE_CODES = frozenset(code.value for code in ErrorCode)
_PONG = protocol.encode_command("pong")  # encoded once: one answers every ping


__all__ = ["FAIR_SLICE", "EndpointStatus", "Lane", "StreamingConsumer"]


class EndpointStatus(enum.Enum):
    PENDING = "pending"  # its open job has not run yet
    OPEN = "open"
    FAILED = "failed"  # stream_opened raised
    NOT_AUTHENTICATED = "not_authenticated"
    FORBIDDEN = "forbidden"
    CLOSED = "closed"


class EndpointSlot:
    """One endpoint's state on one connection."""

    __slots__ = ("cls", "instance", "lane", "session", "status")

    def __init__(self, cls: type[Endpoint]) -> None:
        self.cls = cls
        self.lane = Lane(cls.name)
        self.status = EndpointStatus.PENDING
        self.instance: Endpoint | None = None
        self.session: StreamingSession | None = None


class TokenBucket:
    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens (at most the whole bucket) if there are that many."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        cost = min(cost, self.burst)
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False


class StreamingConsumer(AsyncJsonWebsocketConsumer):
    """Serves every registered endpoint (or ``endpoints=[...]``) over one socket."""

    def __init__(self, endpoints: Sequence[type[Endpoint]] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._endpoint_classes = list(endpoints) if endpoints is not None else None
        self._slots: dict[str, EndpointSlot] = {}
        self.user: Any = AnonymousUser()
        self.outbox: Outbox | None = None
        # Data and method frames waiting for the answer to an auth command.
        self._held: list[DataFrame | protocol.MethodFrame] | None = None
        self._auth_task: asyncio.Task[None] | None = None
        self._pending_bytes = 0  # estimated memory of the frames held or waiting in lanes
        self._bucket: TokenBucket | None = None
        self._byte_bucket: TokenBucket | None = None
        self._refusals: TokenBucket | None = None  # made on the first refusal
        self._revocation: Any = None
        self._torn_down = False
        self._late_join: asyncio.Task[None] | None = None  # see _until_open
        self._anonymous_timer: asyncio.TimerHandle | None = None  # ANONYMOUS_TIMEOUT
        self._anonymous_over = False  # its time ran out while an auth command was answered
        self._max_bytes = 0
        self._max_values = 0
        self._max_depth = 0
        self._max_pending = 0
        self._max_pending_bytes = 0
        self._max_send = 0
        self._refusing = False  # answering a frame too large to send (send_text)
        self._calls: methods.Calls | None = None  # streaming-method calls (streaming.methods)
        self._db_owner = db.Owner()  # whose turn its database work takes (streaming.db)

    # -- ASGI plumbing ------------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.scope = scope
        self.channel_layer = None  # the bus carries messages; no channel per socket
        self.channel_name = None
        self.base_send = send
        loop = asyncio.get_running_loop()
        db.set_owner(self._db_owner)  # hooks, calls and lanes start from this task
        try:
            while True:
                message = await receive()
                kind = message["type"]
                if kind == "websocket.receive":
                    self.websocket_receive_frame(message)
                    # A server's receive returns without suspending while frames wait
                    # (uvicorn's, daphne's): a client flooding frames held every other
                    # socket of the process (tests/e2e/test_fairness.py).
                    if turn_due(loop.time()):  # the other sockets' turn (FAIR_SLICE)
                        await asyncio.sleep(0)
                elif kind == "websocket.connect":
                    await self.websocket_connect(message)
                elif kind == "websocket.disconnect":
                    await self.websocket_disconnect(message)
        except StopConsumer:
            pass
        finally:
            await self._teardown()

    async def websocket_connect(self, message: dict[str, Any]) -> None:
        if not admit(self):
            await refuse_handshake(self.scope, self.base_send)  # draining: streaming.shutdown
            return
        settings = streaming_settings
        send = self.base_send
        self._max_bytes = settings.MAX_MESSAGE_BYTES
        self._max_values = settings.MAX_FRAME_VALUES
        self._max_depth = settings.MAX_FRAME_DEPTH
        self._max_pending = settings.MAX_PENDING_FRAMES
        self._max_pending_bytes = settings.MAX_PENDING_BYTES
        server_limit = send_limit(send)  # daphne refuses frames above its own limit
        self._max_send = min(settings.MAX_SEND_BYTES, server_limit or settings.MAX_SEND_BYTES)
        if settings.RATE_LIMIT_PER_SECOND:
            self._bucket = TokenBucket(settings.RATE_LIMIT_PER_SECOND, settings.RATE_LIMIT_BURST)
        if settings.RATE_LIMIT_BYTES_PER_SECOND:
            self._byte_bucket = TokenBucket(
                settings.RATE_LIMIT_BYTES_PER_SECOND, settings.RATE_LIMIT_BYTES_BURST
            )
        self.scope[USER_OBJECTS_KEY] = {}
        metrics.socket_opened(self)
        # Gated: frames queue until the accept, which waits for the endpoints to open.
        self.outbox = Outbox(
            send,
            settings.SEND_QUEUE_LIMIT,
            self._overloaded,
            eager=plain_send(send),
            byte_limit=settings.SEND_QUEUE_BYTES,
            gated=True,
            urgent_close=closes_at_once(send),
        )
        if self.scope.get(AUTH_FAILED_KEY):
            self._accept()
            self.close_with(CloseCode.UNAUTHORIZED)
            return
        classes = self._endpoint_classes
        if classes is None:
            from .registry import endpoints

            classes = endpoints.all()
        self._slots = {cls.name: EndpointSlot(cls) for cls in classes}
        await self._set_identity(self.scope.get("user") or AnonymousUser(), reopen=False)
        self._accept()
        self._time_anonymous()

    def _time_anonymous(self) -> None:
        """While the socket signs in no user, close it with 4401 after
        ``ANONYMOUS_TIMEOUT`` seconds (None: never). An app whose every socket is a user's
        sets it, so that nobody holds anonymous sockets open: an attacker's 5,000 from one
        address, each with a message begun and never finished, held 390 MB (helper
        "attacker13"). One deadline from the moment the socket opens, or its user signs
        out: failed ``auth`` commands do not extend it (helper "reviewer13"); one under
        way at the deadline gets its answer first."""
        timeout = streaming_settings.ANONYMOUS_TIMEOUT
        if self._anonymous_timer is not None:
            self._anonymous_timer.cancel()
            self._anonymous_timer = None
        if timeout is None or getattr(self.user, "is_authenticated", False) or self._torn_down:
            return
        self._anonymous_timer = asyncio.get_running_loop().call_later(
            timeout, self._anonymous_expired
        )

    def _anonymous_expired(self) -> None:
        self._anonymous_timer = None
        if self._torn_down or getattr(self.user, "is_authenticated", False):
            return
        if self._auth_task is not None:  # its answer decides (_authenticate)
            self._anonymous_over = True
            return
        self._close_anonymous()

    def _close_anonymous(self) -> None:
        logger.info(
            "closing %s: no user signed in within ANONYMOUS_TIMEOUT", self.scope.get("client")
        )
        self.close_with(CloseCode.UNAUTHORIZED)

    def _accept(self) -> None:
        outbox = self.outbox
        if outbox is not None and not self._torn_down:
            outbox.open(attach_flow(self.base_send))  # daphne: Twisted's buffer pushes back

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        outbox = self.outbox
        if outbox is not None and (not outbox.closed or outbox.sealed):
            # The client closed first (or while a sealed queue waited for its 1012).
            metrics.socket_close(message.get("code") or 1005)
        await self._teardown()
        raise StopConsumer()

    # -- sending --------------------------------------------------------------------------

    def send_text(self, text: str, endpoint: str | None = None) -> bool:
        """Queue a frame; False if the connection is closing, its queue is full, or the
        frame is larger than the server may send (the client then gets
        ``message_too_large`` for ``endpoint``)."""
        outbox = self.outbox
        if outbox is None:
            return False
        size = self.oversize(text)
        if size:
            if self._refusing:  # the answer below is itself too large: not answered again
                logger.error(
                    "%s: even the message_too_large answer (%d bytes) is larger than the "
                    "server may send (%d bytes); raise daphne's --websocket-max-message-size",
                    self.scope.get("client"),
                    size,
                    self._max_send,
                )
                return False
            logger.warning(
                "%s: not sending a %d-byte frame of endpoint %s (limit %d bytes)",
                self.scope.get("client"),
                size,
                endpoint,
                self._max_send,
            )
            self._refusing = True
            try:
                self.send_error(
                    ErrorCode.MESSAGE_TOO_LARGE,
                    f"A message of {size} bytes is larger than the server may send "
                    f"({self._max_send} bytes); it was not sent.",
                    endpoint=endpoint,
                )
            finally:
                self._refusing = False
            return False
        return self.queue_text(text, endpoint)

    def queue_text(self, text: str, endpoint: str | None = None) -> bool:
        """:meth:`send_text` for a frame whose size is checked already (:meth:`oversize`)."""
        outbox = self.outbox
        if outbox is None or not outbox.put(text):
            return False
        if endpoint is not None:
            metrics.frame_sent(endpoint)
        return True

    def _listener_owners(self) -> Iterator[Any]:
        """Whoever adds bus listeners for this socket: the socket itself (its revocation
        listener), its endpoints' and its calls' sessions."""
        yield self
        for slot in self._slots.values():
            if slot.session is not None:
                yield slot.session
        if self._calls is not None:
            for call in self._calls.live:
                if call.session is not None:
                    yield call.session

    def listener_count(self) -> int:
        """The bus listeners of this socket: its own, its endpoints' sessions', its calls'
        sessions' (bounded by ``MAX_LISTENERS_PER_SOCKET``)."""
        from .messages import get_bus

        bus = get_bus()
        return sum(bus.listeners_of(owner) for owner in self._listener_owners())

    def listens_to(self, channels: set[str]) -> bool:
        """Whether this socket has a bus listener on one of ``channels``."""
        from .messages import get_bus

        bus = get_bus()
        # Not the scope's listener (streaming.ops, on every socket while METRICS is on): a
        # missed metrics request only times out at its requester.
        return any(
            not channels.isdisjoint(bus.channels_of(owner)) for owner in self._listener_owners()
        )

    def oversize(self, text: str) -> int:
        """The size in bytes of frame ``text`` if it is larger than the server may send
        (``MAX_SEND_BYTES``, or the server's own limit), else 0."""
        if len(text) * 4 > self._max_send:  # only then can it be over the limit
            size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
            if size > self._max_send:
                return size
        return 0

    def send_error(
        self,
        code: str,
        message: str,
        *,
        endpoint: str | None = None,
        frame_id: str | None = None,
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        metrics.error_sent(code)
        self.send_text(
            protocol.encode_error(
                code, message, endpoint=endpoint, frame_id=frame_id, errors=errors
            )
        )

    def close_with(self, code: int, *, discard_pending: bool = False, reason: str = "") -> None:
        """Close the socket with ``code`` (and ``reason``) after the frames already queued."""
        if self.outbox is not None:
            self.outbox.close(code, discard_pending=discard_pending, reason=reason)

    def _overloaded(self) -> None:
        outbox = self.outbox
        logger.warning(
            "closing %s: send queue full (%d of %d frames, %d of %d bytes); the client is "
            "not reading",
            self.scope.get("client"),
            len(outbox) if outbox else 0,
            outbox.limit if outbox else 0,
            outbox.queued_bytes if outbox else 0,
            outbox.byte_limit if outbox else 0,
        )
        self.close_with(CloseCode.OVERLOADED, discard_pending=True)

    # -- receiving ------------------------------------------------------------------------

    def websocket_receive_frame(self, message: dict[str, Any]) -> None:
        outbox = self.outbox
        if outbox is None or outbox.closed:
            return
        text = message.get("text")
        if self._bucket is not None and not self._bucket.take():
            frame_id = protocol.peek_id(text)
            self._refuse(ErrorCode.RATE_LIMITED, "Too many frames; slow down.", frame_id)
            return
        bytes_bucket = self._byte_bucket
        if bytes_bucket is not None and text is not None:
            # What a frame costs to parse and validate grows with its size (8 to 32 ns a
            # byte, docs/performance.md): the byte rate keeps one socket off a core.
            size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
            if not bytes_bucket.take(size):
                frame_id = protocol.peek_id(text)
                self._refuse(ErrorCode.RATE_LIMITED, "Too much data; slow down.", frame_id)
                return
        try:
            frame = protocol.decode_frame(
                text,
                message.get("bytes"),
                max_bytes=self._max_bytes,
                max_values=self._max_values,
                max_depth=self._max_depth,
            )
        except FrameTooLarge as exc:
            self.send_error(exc.code, exc.detail)
            self.close_with(CloseCode.TOO_BIG)
            return
        except ProtocolError as exc:
            self._refuse(exc.code, exc.detail, protocol.peek_id(text))
            return
        if type(frame) is DataFrame:
            if self._held is not None:
                self._hold(frame)  # type: ignore[arg-type]
            else:
                self._route(frame)  # type: ignore[arg-type]
        elif type(frame) is protocol.MethodFrame:
            if self._held is not None:  # after an auth: run under its answer's identity
                self._hold(frame)  # type: ignore[arg-type]
            else:
                methods.receive(self, frame)  # type: ignore[arg-type]
        else:
            self._command(frame)  # type: ignore[arg-type]

    def _refuse(self, code: str, message: str, frame_id: str | None, **extra: Any) -> None:
        """Answer a refused frame; close with 4008 past ``FLOOD_CLOSE_AFTER`` refusals
        within ``FLOOD_WINDOW`` seconds, however many good frames come in between."""
        self.send_error(code, message, frame_id=frame_id, **extra)
        refusals = self._refusals
        if refusals is None:
            settings = streaming_settings
            burst = settings.FLOOD_CLOSE_AFTER
            refusals = self._refusals = TokenBucket(burst / settings.FLOOD_WINDOW, burst)
        if not refusals.take() or refusals.tokens < 1.0:
            logger.warning("closing %s: flooding", self.scope.get("client"))
            self.close_with(CloseCode.POLICY)

    def _command(self, frame: CommandFrame) -> None:
        command = frame.command
        if command == "ping":
            outbox = self.outbox
            if outbox is not None:
                outbox.put(_PONG)  # (send_text's size check: a pong is tiny)
        elif command == "auth":
            if self._auth_task is not None:
                # One at a time: each auth holds the frames after it until answered.
                self._refuse(
                    ErrorCode.RATE_LIMITED,
                    "An auth command is already being handled; wait for its answer.",
                    None,
                )
                return
            self._held = []
            self._auth_task = asyncio.get_running_loop().create_task(
                self._authenticate(frame.args.get("key"))
            )
        elif command == "pong":
            pass  # a reply to nothing we asked; harmless
        else:
            self._refuse(ErrorCode.UNKNOWN_COMMAND, f"Unknown command {echo(command)!r}.", None)

    def _over_budget(self, frame: DataFrame | protocol.MethodFrame) -> bool:
        return self._pending_bytes + frame.size > self._max_pending_bytes

    def _hold(self, frame: DataFrame | protocol.MethodFrame) -> None:
        """Keep ``frame`` until the pending ``auth`` is answered (bounded like a lane)."""
        held = self._held
        assert held is not None
        if len(held) >= self._max_pending or self._over_budget(frame):
            self._refuse(
                ErrorCode.RATE_LIMITED,
                "Too many messages waiting for an auth command; slow down.",
                frame.id,
            )
            return
        held.append(frame)
        self._pending_bytes += frame.size

    def _route(self, frame: DataFrame, *, counted: bool = False) -> None:
        """Queue ``frame`` in its endpoint's lane. ``counted``: already in the budget."""
        slot = self._slots.get(frame.endpoint)
        if (
            slot is None
            or len(slot.lane) >= self._max_pending
            or (not counted and self._over_budget(frame))
        ):
            if counted:
                self._pending_bytes -= frame.size
            if slot is None:
                name = echo(frame.endpoint)
                self.send_error(
                    ErrorCode.UNKNOWN_ENDPOINT,
                    f"Unknown endpoint {name!r}.",
                    endpoint=name,
                    frame_id=frame.id,
                )
            else:
                self._refuse(
                    ErrorCode.RATE_LIMITED,
                    "Too many messages waiting for this endpoint; slow down.",
                    frame.id,
                    endpoint=frame.endpoint,
                )
            return
        if not counted:
            self._pending_bytes += frame.size
        metrics.frame_received(slot.cls.name)
        slot.lane.submit(functools.partial(self._deliver, slot, frame), "handle_stream_message")

    async def _deliver(self, slot: EndpointSlot, frame: DataFrame) -> None:
        self._pending_bytes -= frame.size
        status = slot.status
        name = slot.cls.name
        if status is EndpointStatus.OPEN:
            try:
                message = decode_object(frame.class_name, frame.data)
            except SerializationError as exc:
                self.send_error(
                    exc.code,
                    exc.detail,
                    endpoint=name,
                    frame_id=frame.id,
                    errors=getattr(exc, "errors", None),
                )
                return
            except Exception:
                # A validator of the app's (or a bug) raised something else: the frame
                # still gets an answer, and the server log the traceback.
                logger.exception("decoding a %s frame raised", name)
                self.send_error(
                    ErrorCode.INVALID_MESSAGE,
                    "The message could not be decoded.",
                    endpoint=name,
                    frame_id=frame.id,
                )
                return
            instance, session = slot.instance, slot.session
            assert instance is not None and session is not None  # OPEN implies both
            try:
                await instance.handle_stream_message(session, message)
            except MessagingUnavailable as exc:
                logger.warning("%s: %s", slot.cls.__qualname__, exc.detail)
                self.send_error(
                    ErrorCode.INTERNAL_ERROR,
                    "Messaging between servers is unavailable; "
                    "this message may not have reached every recipient.",
                    endpoint=name,
                    frame_id=frame.id,
                )
            except StreamingError as exc:
                # A hook may answer with a protocol error on purpose (InvalidMessage,
                # RateLimited, ...): the client gets that code, if it is a protocol one.
                if exc.code not in _WIRE_CODES:
                    logger.exception("%s.handle_stream_message raised", slot.cls.__qualname__)
                    self.send_error(
                        ErrorCode.INTERNAL_ERROR,
                        "The server failed to handle this message.",
                        endpoint=name,
                        frame_id=frame.id,
                    )
                    return
                self.send_error(
                    exc.code,
                    exc.detail,
                    endpoint=name,
                    frame_id=frame.id,
                    errors=getattr(exc, "errors", None),
                )
            except Exception:
                logger.exception("%s.handle_stream_message raised", slot.cls.__qualname__)
                self.send_error(
                    ErrorCode.INTERNAL_ERROR,
                    "The server failed to handle this message.",
                    endpoint=name,
                    frame_id=frame.id,
                )
        elif status is EndpointStatus.NOT_AUTHENTICATED:
            self.send_error(
                ErrorCode.NOT_AUTHENTICATED,
                f"Endpoint {name!r} requires a signed-in user.",
                endpoint=name,
                frame_id=frame.id,
            )
        elif status is EndpointStatus.FORBIDDEN:
            self.send_error(
                ErrorCode.FORBIDDEN,
                f"You may not use endpoint {name!r}.",
                endpoint=name,
                frame_id=frame.id,
            )
        else:  # FAILED or CLOSED
            self.send_error(
                ErrorCode.INTERNAL_ERROR,
                f"Endpoint {name!r} is not available on this connection.",
                endpoint=name,
                frame_id=frame.id,
            )

    # -- identity and the endpoints' lifecycle ----------------------------------------------

    async def _set_identity(self, user: Any, *, reopen: bool) -> None:
        """Adopt ``user``: close open endpoints (if ``reopen``), open the usable ones,
        and return once they are open (see :meth:`_until_open`).

        A user already holding ``MAX_SOCKETS_PER_USER`` sockets on this process gets
        none: the socket is closed with 4029.
        """
        registry = get_connections()
        if getattr(self.user, "is_authenticated", False):
            registry.discard(self.user.pk, self)
        self.user = user
        self.scope["user"] = user
        # One turn at the database for all of a user's sockets (streaming.db).
        self._db_owner.key = ("user", user.pk) if getattr(user, "is_authenticated", False) else None
        slots = list(self._slots.values())
        if reopen:
            for slot in slots:
                if slot.session is not None:
                    slot.session._end()  # a stream_opened looping on listen() returns
                slot.lane.submit(functools.partial(self._close_endpoint, slot), "stream_closed")
        if getattr(user, "is_authenticated", False) and not registry.add(user.pk, self):
            logger.warning(
                "closing %s: user %s already has %d sockets on this server",
                self.scope.get("client"),
                user.pk,
                registry.count(user.pk),
            )
            self.user = AnonymousUser()
            self.close_with(CloseCode.TOO_MANY_CONNECTIONS)
            return
        readies: list[tuple[EndpointSlot, asyncio.Event]] = []
        previous: asyncio.Event | None = None
        for slot in slots:
            ready = asyncio.Event()
            slot.lane.submit(
                functools.partial(self._open_endpoint, slot, user, previous, ready),
                "stream_opened",
            )
            readies.append((slot, ready))
            previous = ready
        self._watch_revocation(user)
        await self._until_open(readies)

    async def _until_open(self, readies: list[tuple[EndpointSlot, asyncio.Event]]) -> None:
        """Wait for the endpoints' ``stream_opened`` hooks, then for their channels' joins.

        A hook is done when it returns, fails, or waits on one of its session's
        ``listen()`` iterators. One still running after ``OPEN_TIMEOUT`` is logged and
        no longer waited for (the endpoints after it open regardless). Then every
        channel the sessions (and the revocation watch) listen on must be joined in
        the cluster, within ``PUBLISH_TIMEOUT``; if the broker is unreachable that is
        logged and the socket goes on (local delivery works; the bus keeps joining).
        """
        if readies and not readies[-1][1].is_set():
            # A timer, not asyncio.timeout: no Timeout and no cancellation per connect,
            # and the hooks' lanes are woken the same way (docs/performance.md,
            # "Per connect and per ping").
            timer = asyncio.get_running_loop().call_later(
                streaming_settings.OPEN_TIMEOUT, self._open_timed_out, readies
            )
            try:
                await readies[-1][1].wait()
            finally:
                timer.cancel()
        if self._torn_down:
            return
        from .messages import get_bus

        bus = get_bus()
        if not bus.cross_process:
            return
        channels = bus.channels_of(self)
        for slot, _ in readies:
            if slot.session is not None:
                channels |= bus.channels_of(slot.session)
        if self._late_join is not None:
            # Waiting for the joins of the channels before an auth command changed them:
            # those no longer matter (an attacker's reading: the task was left behind).
            self._late_join.cancel()
            self._late_join = None
        try:
            await bus.wait_joined(channels)
        except MessagingUnavailable as exc:
            logger.warning("%s: %s", self.scope.get("client"), exc.detail)
            # Until they are joined, posts from other servers to these channels reach no
            # one here (an operator's review saw joins take 9 s on a loaded server): once
            # they are, the socket is closed with 1012, as after a bus gap, so that its
            # client reconnects and reads what it may have missed.
            self._late_join = asyncio.get_running_loop().create_task(
                self._restart_once_joined(bus, channels)
            )

    async def _restart_once_joined(self, bus: MessageBus, channels: set[str]) -> None:
        await bus.wait_joined(channels, bounded=False)
        if not self._torn_down and restart(self):
            logger.warning(
                "%s: its channels were joined late; closed with 1012 (posts from other "
                "servers until then may have been lost)",
                self.scope.get("client"),
            )

    def _open_timed_out(self, readies: list[tuple[EndpointSlot, asyncio.Event]]) -> None:
        """``OPEN_TIMEOUT`` passed: log the hook that holds the handshake up, stop waiting."""
        if readies[-1][1].is_set():
            return  # the last finished while the timer fired
        # The first one not done holds up the ones after it (registration order).
        stuck = next((slot for slot, ready in readies if not ready.is_set()), readies[-1][0])
        logger.warning(
            "%s: stream_opened of %s has not returned after %.1fs; not waiting for it",
            self.scope.get("client"),
            stuck.cls.__qualname__,
            streaming_settings.OPEN_TIMEOUT,
        )
        for _, ready in readies:
            ready.set()

    async def _open_endpoint(
        self,
        slot: EndpointSlot,
        user: Any,
        previous: asyncio.Event | None,
        ready: asyncio.Event,
    ) -> None:
        try:
            if previous is not None:
                await previous.wait()  # registration order
            if self._torn_down:
                return
            required = slot.cls.required_permissions
            signed_in = getattr(user, "is_authenticated", False)
            if (slot.cls.login_required or required) and not signed_in:
                slot.status = EndpointStatus.NOT_AUTHENTICATED
                return
            if required and not await user.ahas_perms(required):
                slot.status = EndpointStatus.FORBIDDEN
                return
            session = StreamingSession(self, slot.cls.name, user)
            instance = slot.cls()
            instance.scope = self.scope
            try:
                allowed = await instance.has_permission(session)
            except Exception:
                logger.exception("%s.has_permission raised", slot.cls.__qualname__)
                session._close()
                slot.status = EndpointStatus.FAILED
                return
            if not allowed:
                session._close()
                slot.status = EndpointStatus.FORBIDDEN
                return
            slot.instance, slot.session = instance, session
            instance._session = session  # type: ignore[attr-defined]  # Endpoint.session
            session._on_parked = ready.set  # waiting on listen(): opened, for the handshake
            try:
                await instance.stream_opened(session)
            except Exception:
                logger.exception("%s.stream_opened raised", slot.cls.__qualname__)
                session._close()
                slot.instance = slot.session = None
                slot.status = EndpointStatus.FAILED
                return
            finally:
                session._on_parked = None
            slot.status = EndpointStatus.OPEN
        finally:
            ready.set()

    async def _close_endpoint(
        self, slot: EndpointSlot, status: EndpointStatus = EndpointStatus.CLOSED
    ) -> None:
        instance, session = slot.instance, slot.session
        was_open = slot.status is EndpointStatus.OPEN
        slot.status = status
        slot.instance = slot.session = None
        await methods.end_calls(self, slot.cls.name, status is EndpointStatus.FORBIDDEN)
        if session is None:
            return
        session._end()
        try:
            if was_open and instance is not None:
                await instance.stream_closed(session)
        except Exception:
            logger.exception("%s.stream_closed raised", slot.cls.__qualname__)
        finally:
            session._close()

    async def _authenticate(self, key: Any) -> None:
        """Answer an ``auth`` command once the socket's new identity is in place.

        The frames that arrived meanwhile are released in ``finally``, whatever happens.
        """
        try:
            try:
                user = await user_for_key(key)
            except Exception:
                logger.exception("authentication lookup failed")
                user = None
            if self._torn_down:
                return
            new_user = user if user is not None else AnonymousUser()
            new_id = new_user.pk if user is not None else None
            old_id = self.user.pk if getattr(self.user, "is_authenticated", False) else None
            if user is not None:
                self.scope[AUTH_VIA_KEY] = "token"
                self.scope[CREDENTIAL_KEY] = credential_digest(token_of(key))
            else:
                self.scope.pop(AUTH_VIA_KEY, None)
                self.scope.pop(CREDENTIAL_KEY, None)
            if new_id != old_id:
                await self._set_identity(new_user, reopen=True)
            self.send_text(protocol.encode_command("auth", {"user_id": new_id}))
            if new_id is None and old_id is not None:  # signed out: timed from now
                self._anonymous_over = False
                self._time_anonymous()
            elif new_id is None and self._anonymous_over:  # its time ran out meanwhile
                self._close_anonymous()
            elif new_id is not None:
                self._anonymous_over = False
        except Exception:
            logger.exception("re-authenticating %s failed", self.scope.get("client"))
            self.send_error(ErrorCode.INTERNAL_ERROR, "The server failed to authenticate.")
        finally:
            if self._auth_task is asyncio.current_task():
                self._auth_task = None
            held, self._held = self._held or [], None
            if self._torn_down:
                self._pending_bytes = 0
            else:
                for frame in held:
                    if type(frame) is DataFrame:
                        self._route(frame, counted=True)
                    else:
                        self._pending_bytes -= frame.size
                        methods.receive(self, frame)  # type: ignore[arg-type]

    def _watch_revocation(self, user: Any) -> None:
        from .messages import get_bus

        bus = get_bus()
        if self._revocation is not None:
            bus.remove_owner(self)
            self._revocation = None
        if getattr(user, "is_authenticated", False):
            # With the moment it signed in (wall clock, as revocations are stamped): a
            # revocation of the whole user issued before then is not for this socket.
            self._revocation = bus.add_listener(
                revocation_channel(user.pk),
                functools.partial(self._on_revoked, time.time()),
                owner=self,
            )

    def _on_revoked(self, signed_in_at: float, message: Any) -> Any:
        if not isinstance(message, RevokedAuthentication):
            return None
        if message.credential is not None:
            if message.credential == self.scope.get(CREDENTIAL_KEY):
                self.revoked(f"a credential of user {message.user_id} was revoked")
            return None
        if message.permissions:
            return self._recheck_permissions(message.user_id, message.permission)
        if message.sessions_only:
            if self.scope.get(AUTH_VIA_KEY) != "session":
                return None  # a token still works after a password change
            return self._check_session(message.user_id)
        issued = message.issued_at
        if issued is not None and issued < signed_in_at - REVOCATION_CLOCK_SKEW:
            # Issued before this socket signed in (a revocation tried again while Redis was
            # unreachable, delivered late): the user may have been made active again since.
            return None
        self.revoked(f"credentials of user {message.user_id} revoked")
        return None

    async def _recheck_permissions(self, user_id: Any, permission: str | None) -> None:
        """Close the open endpoints whose ``required_permissions`` the user lost."""
        from django.contrib.auth import get_user_model

        slots = [
            slot
            for slot in self._slots.values()
            if slot.cls.required_permissions
            and slot.status is EndpointStatus.OPEN
            and (permission is None or permission in slot.cls.required_permissions)
        ]
        if not slots:
            return
        fresh: Any = await get_user_model()._default_manager.filter(pk=user_id).afirst()
        for slot in slots:
            required = slot.cls.required_permissions
            if fresh is not None and fresh.is_active and await fresh.ahas_perms(required):
                continue
            logger.info(
                "%s: closing endpoint %s: user %s lost a required permission",
                self.scope.get("client"),
                slot.cls.name,
                user_id,
            )
            slot.lane.submit(
                functools.partial(self._close_endpoint, slot, EndpointStatus.FORBIDDEN),
                "stream_closed",
            )

    async def _check_session(self, user_id: Any) -> None:
        session = self.scope.get("session")
        key = getattr(session, "session_key", None)
        if not await session_still_valid(key, user_id):
            self.revoked(f"the password of user {user_id} changed")

    def revoked(self, reason: str) -> None:
        """Close this socket with 4401: its credentials no longer hold (``reason`` is logged)."""
        logger.info("closing %s: %s", self.scope.get("client"), reason)
        methods.cancel_calls(self)  # at once: not when the client has gone
        self.close_with(CloseCode.UNAUTHORIZED)

    async def _teardown(self) -> None:
        """Close everything the connection holds; see the module docstring's guarantees."""
        if self._torn_down:
            return
        self._torn_down = True
        metrics.socket_closed(self)
        if self._late_join is not None:
            self._late_join.cancel()
            self._late_join = None
        if self._anonymous_timer is not None:
            self._anonymous_timer.cancel()
            self._anonymous_timer = None
        if self._auth_task is not None:
            self._auth_task.cancel()
        if self._revocation is not None:
            from .messages import get_bus

            get_bus().remove_owner(self)
            self._revocation = None
        if getattr(self.user, "is_authenticated", False):
            get_connections().discard(self.user.pk, self)
        if self.outbox is not None:
            self.outbox.discard()  # the socket is gone: hooks' sends go nowhere
        methods.cancel_calls(self)
        slots = list(self._slots.values())
        for slot in slots:
            if slot.session is not None:
                slot.session._end()  # hooks looping on listen() return
            slot.lane.submit(functools.partial(self._close_endpoint, slot), "stream_closed")
        await self._grace(slots)
        for slot in slots:
            if slot.session is not None:
                slot.session._close()
            slot.instance = slot.session = None
        self.outbox = None  # breaks the consumer <-> outbox cycle (_on_overflow)
        self._slots = {}
        self.scope.pop(USER_OBJECTS_KEY, None)
        get_connections().untrack(self)  # last: a graceful shutdown waits for the hooks

    async def _grace(self, slots: list[EndpointSlot]) -> None:
        """Let the lanes finish within ``CLOSE_GRACE_PERIOD``; cancel (and name) the rest."""
        grace = streaming_settings.CLOSE_GRACE_PERIOD
        try:
            async with asyncio.timeout(grace):
                for slot in slots:
                    await slot.lane.join()
            return
        except TimeoutError:
            pass
        for slot in slots:
            if slot.lane.busy:
                logger.warning(
                    "%s: cancelling %s.%s, still running %.1fs after the socket closed",
                    self.scope.get("client"),
                    slot.cls.__qualname__,
                    slot.lane.current or "a hook",
                    grace,
                )
                slot.lane.cancel()
        try:
            async with asyncio.timeout(grace):
                for slot in slots:
                    await slot.lane.join()
        except TimeoutError:
            stuck = [slot.cls.__qualname__ for slot in slots if slot.lane.busy]
            logger.error("%s: hooks of %s ignored cancellation", self.scope.get("client"), stuck)
