"""``StreamingConsumer``: the one consumer that owns a ``/websocket/`` connection.

Flow: socket frame -> ``protocol.decode_frame`` -> per-endpoint lane ->
``serialization.decode_object`` -> endpoint hook. Sends go through the connection's
:class:`~streaming.outbox.Outbox`.

Guarantees:

* One ``Endpoint`` instance per connection per endpoint.
* Frames for one endpoint are handled in order, one at a time (its *lane*); lanes
  of different endpoints run concurrently. ``ping`` and ``auth`` never wait on a
  hook. A lane's task exists only while it has work, so idle sockets cost little.
* On connect ``stream_opened`` runs for each usable endpoint in registration order;
  on disconnect ``stream_closed`` runs for exactly those that were opened.
* A hook that raises is logged with its traceback; the client gets
  ``internal_error`` and the connection goes on.
* Bad input gets an ``error`` frame and never reaches a hook.

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
import logging
import sys
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.contrib.auth.models import AnonymousUser

from . import protocol
from .auth import AUTH_FAILED_KEY, RevokedAuthentication, revocation_channel, user_for_key
from .conf import streaming_settings
from .endpoint import Endpoint
from .exceptions import (
    FrameTooLarge,
    MessagingUnavailable,
    ProtocolError,
    SerializationError,
    StreamingError,
)
from .flow import attach_flow, plain_send
from .outbox import Outbox
from .protocol import CloseCode, CommandFrame, DataFrame, ErrorCode
from .serialization import decode_object
from .session import USER_OBJECTS_KEY, StreamingSession

logger = logging.getLogger("streaming.consumer")

Job = Callable[[], Coroutine[Any, Any, None]]
_WIRE_CODES = frozenset(code.value for code in ErrorCode)


class EndpointStatus(enum.Enum):
    PENDING = "pending"  # its open job has not run yet
    OPEN = "open"
    FAILED = "failed"  # stream_opened raised
    NOT_AUTHENTICATED = "not_authenticated"
    FORBIDDEN = "forbidden"
    CLOSED = "closed"


class Lane:
    """Runs jobs one at a time, in submission order, in a task of their own.

    The task exists only while the lane has work. On Python 3.12+ it starts eagerly
    (``eager_start``): a hook that never waits runs to its end inside ``submit``,
    yet as its own current task, so ``asyncio.timeout``, task groups and anyio
    scopes in hooks behave as in any task.
    """

    __slots__ = ("_jobs", "_task", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: deque[Job] = deque()
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        """Jobs waiting (not counting one in progress)."""
        return len(self._jobs)

    def submit(self, job: Job) -> None:
        self._jobs.append(job)
        if self._task is None:
            task = _new_task(self._run())
            if not task.done():
                self._task = task

    async def join(self) -> None:
        while self._task is not None:
            await asyncio.shield(self._task)

    async def _run(self) -> None:
        jobs = self._jobs
        try:
            while jobs:
                job = jobs.popleft()
                try:
                    await job()
                except asyncio.CancelledError:
                    current = asyncio.current_task()
                    if current is not None and current.cancelling():
                        raise  # the lane itself is cancelled
                    # A hook awaited something that was cancelled: its job ends, not the lane.
                    logger.warning("a job of lane %s was cancelled", self.name)
                except Exception:
                    logger.exception("unexpected error in lane %s", self.name)
        finally:
            # Idle from this instant: a job submitted before a done callback would
            # run must start a new task, not wait behind a finished one.
            if self._task is asyncio.current_task():
                self._task = None


if sys.version_info >= (3, 12):

    def _new_task(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        return asyncio.Task(coro, loop=asyncio.get_running_loop(), eager_start=True)

else:

    def _new_task(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(coro)


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

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
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
        self._held: list[DataFrame] | None = None  # frames waiting for an auth command
        self._auth_task: asyncio.Task[None] | None = None
        self._bucket: TokenBucket | None = None
        self._refused_in_a_row = 0
        self._revocation: Any = None
        self._torn_down = False
        self._max_bytes = 0
        self._max_pending = 0

    # -- ASGI plumbing ------------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.scope = scope
        self.channel_layer = None  # the bus carries messages; no channel per socket
        self.channel_name = None
        self.base_send = send
        try:
            while True:
                message = await receive()
                kind = message["type"]
                if kind == "websocket.receive":
                    self.websocket_receive_frame(message)
                elif kind == "websocket.connect":
                    await self.websocket_connect(message)
                elif kind == "websocket.disconnect":
                    await self.websocket_disconnect(message)
        except StopConsumer:
            pass
        finally:
            await self._teardown()

    async def websocket_connect(self, message: dict[str, Any]) -> None:
        settings = streaming_settings
        self._max_bytes = settings.MAX_MESSAGE_BYTES
        self._max_pending = settings.MAX_PENDING_FRAMES
        if settings.RATE_LIMIT_PER_SECOND:
            self._bucket = TokenBucket(settings.RATE_LIMIT_PER_SECOND, settings.RATE_LIMIT_BURST)
        self.scope[USER_OBJECTS_KEY] = {}
        await self.base_send({"type": "websocket.accept"})
        self.outbox = Outbox(
            self.base_send,
            settings.SEND_QUEUE_LIMIT,
            self._overloaded,
            attach_flow(self.base_send),  # daphne: Twisted's buffer pushes back
            eager=plain_send(self.base_send),
        )
        if self.scope.get(AUTH_FAILED_KEY):
            self.close_with(CloseCode.UNAUTHORIZED)
            return
        classes = self._endpoint_classes
        if classes is None:
            from .registry import endpoints

            classes = endpoints.all()
        self._slots = {cls.name: EndpointSlot(cls) for cls in classes}
        self._set_identity(self.scope.get("user") or AnonymousUser(), reopen=False)

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        await self._teardown()
        raise StopConsumer()

    # -- sending --------------------------------------------------------------------------

    def send_text(self, text: str) -> bool:
        """Queue a frame; False if the connection is closing or its queue is full."""
        outbox = self.outbox
        return outbox.put(text) if outbox is not None else False

    def send_error(
        self,
        code: str,
        message: str,
        *,
        endpoint: str | None = None,
        frame_id: str | None = None,
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        self.send_text(
            protocol.encode_error(
                code, message, endpoint=endpoint, frame_id=frame_id, errors=errors
            )
        )

    def close_with(self, code: int, *, discard_pending: bool = False) -> None:
        """Close the socket with ``code`` after the frames already queued."""
        if self.outbox is not None:
            self.outbox.close(code, discard_pending=discard_pending)

    def _overloaded(self) -> None:
        logger.warning(
            "closing %s: send queue full (%d frames); the client is not reading",
            self.scope.get("client"),
            self.outbox.limit if self.outbox else 0,
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
        try:
            frame = protocol.decode_frame(text, message.get("bytes"), max_bytes=self._max_bytes)
        except FrameTooLarge as exc:
            self.send_error(exc.code, exc.detail)
            self.close_with(CloseCode.TOO_BIG)
            return
        except ProtocolError as exc:
            self._refuse(exc.code, exc.detail, protocol.peek_id(text))
            return
        if type(frame) is DataFrame:
            if self._held is not None:
                self._held.append(frame)
            else:
                self._route(frame)
        else:
            self._command(frame)  # type: ignore[arg-type]

    def _refuse(self, code: str, message: str, frame_id: str | None, **extra: Any) -> None:
        self.send_error(code, message, frame_id=frame_id, **extra)
        self._refused_in_a_row += 1
        if self._refused_in_a_row >= streaming_settings.FLOOD_CLOSE_AFTER:
            logger.warning("closing %s: flooding", self.scope.get("client"))
            self.close_with(CloseCode.POLICY)

    def _command(self, frame: CommandFrame) -> None:
        command = frame.command
        if command in ("ping", "auth", "pong"):
            self._refused_in_a_row = 0
        if command == "ping":
            self.send_text(protocol.encode_command("pong"))
        elif command == "auth":
            if self._auth_task is not None:
                # One at a time: a second auth waits behind the first, in order.
                previous = self._auth_task
                self._auth_task = asyncio.get_running_loop().create_task(
                    self._authenticate(frame.args.get("key"), previous)
                )
            else:
                self._held = []
                self._auth_task = asyncio.get_running_loop().create_task(
                    self._authenticate(frame.args.get("key"), None)
                )
        elif command == "pong":
            pass  # a reply to nothing we asked; harmless
        else:
            self._refuse(ErrorCode.UNKNOWN_COMMAND, f"Unknown command {command!r}.", None)

    def _route(self, frame: DataFrame) -> None:
        slot = self._slots.get(frame.endpoint)
        if slot is None:
            self.send_error(
                ErrorCode.UNKNOWN_ENDPOINT,
                f"Unknown endpoint {frame.endpoint!r}.",
                endpoint=frame.endpoint,
                frame_id=frame.id,
            )
            return
        if len(slot.lane) >= self._max_pending:
            self._refuse(
                ErrorCode.RATE_LIMITED,
                "Too many messages waiting for this endpoint; slow down.",
                frame.id,
                endpoint=frame.endpoint,
            )
            return
        self._refused_in_a_row = 0
        slot.lane.submit(lambda: self._deliver(slot, frame))

    async def _deliver(self, slot: EndpointSlot, frame: DataFrame) -> None:
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

    def _set_identity(self, user: Any, *, reopen: bool) -> None:
        """Adopt ``user``: close open endpoints (if ``reopen``) and open usable ones."""
        self.user = user
        self.scope["user"] = user
        if reopen:
            for slot in self._slots.values():
                slot.lane.submit(lambda slot=slot: self._close_endpoint(slot))  # type: ignore[misc]
        previous: asyncio.Event | None = None
        for slot in self._slots.values():
            done = asyncio.Event()
            slot.lane.submit(
                lambda slot=slot, previous=previous, done=done, user=user: self._open_endpoint(  # type: ignore[misc]
                    slot, user, previous, done
                )
            )
            previous = done
        self._watch_revocation(user)

    async def _open_endpoint(
        self,
        slot: EndpointSlot,
        user: Any,
        previous: asyncio.Event | None,
        done: asyncio.Event,
    ) -> None:
        try:
            if previous is not None:
                await previous.wait()  # registration order
            if self._torn_down:
                return
            if slot.cls.login_required and not getattr(user, "is_authenticated", False):
                slot.status = EndpointStatus.NOT_AUTHENTICATED
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
            try:
                await instance.stream_opened(session)
            except Exception:
                logger.exception("%s.stream_opened raised", slot.cls.__qualname__)
                session._close()
                slot.instance = slot.session = None
                slot.status = EndpointStatus.FAILED
                return
            slot.status = EndpointStatus.OPEN
        finally:
            done.set()

    async def _close_endpoint(self, slot: EndpointSlot) -> None:
        instance, session = slot.instance, slot.session
        was_open = slot.status is EndpointStatus.OPEN
        slot.status = EndpointStatus.CLOSED
        slot.instance = slot.session = None
        if session is None:
            return
        try:
            if was_open and instance is not None:
                await instance.stream_closed(session)
        except Exception:
            logger.exception("%s.stream_closed raised", slot.cls.__qualname__)
        finally:
            session._close()

    async def _authenticate(self, key: Any, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await asyncio.shield(previous)
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
        self.send_text(protocol.encode_command("auth", {"user_id": new_id}))
        if new_id != old_id:
            self._set_identity(new_user, reopen=True)
        if self._auth_task is asyncio.current_task():
            self._auth_task = None
            held, self._held = self._held or [], None
            for frame in held:
                self._route(frame)

    def _watch_revocation(self, user: Any) -> None:
        from .messages import get_bus

        bus = get_bus()
        if self._revocation is not None:
            bus.remove_owner(self)
            self._revocation = None
        if getattr(user, "is_authenticated", False):
            self._revocation = bus.add_listener(
                revocation_channel(user.pk), self._on_revoked, owner=self
            )

    def _on_revoked(self, message: Any) -> None:
        if isinstance(message, RevokedAuthentication):
            logger.info(
                "closing %s: credentials of user %s revoked",
                self.scope.get("client"),
                message.user_id,
            )
            self.close_with(CloseCode.UNAUTHORIZED)

    async def _teardown(self) -> None:
        if self._torn_down:
            return
        self._torn_down = True
        if self._auth_task is not None:
            self._auth_task.cancel()
        if self._revocation is not None:
            from .messages import get_bus

            get_bus().remove_owner(self)
            self._revocation = None
        for slot in self._slots.values():
            slot.lane.submit(lambda slot=slot: self._close_endpoint(slot))  # type: ignore[misc]
        for slot in self._slots.values():
            await slot.lane.join()
        if self.outbox is not None:
            self.outbox.discard()
            self.outbox = None  # breaks the consumer <-> outbox cycle (_on_overflow)
        self._slots = {}
        self.scope.pop(USER_OBJECTS_KEY, None)
