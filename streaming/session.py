"""``StreamingSession``: one connection's stream for one endpoint.

A session is created when an endpoint is opened for a connection and closed when
that endpoint's stream closes (socket closed, or the socket's identity changed).
Its user never changes: re-authenticating a socket as somebody else closes every
open session and opens new ones, so a listener on ``user_<id>`` can never leak to
another user.

Closing happens in two steps. First the session *ends*: its message-bus listeners
go and its ``listen()`` iterators end, so a hook looping over one returns; nothing
new may listen. Then, after ``stream_closed``, it *closes*: its user object is
dropped and it lets go of the connection, leaving no reference behind.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from .consumer import StreamingConsumer
    from .messages import SessionMessages

USER_OBJECTS_KEY = "streaming.user_objects"


class SessionAuth:
    """Who is on the other end: ``authenticated_user_id`` (int or None)."""

    __slots__ = ("authenticated_user_id",)

    def __init__(self, user: Any) -> None:
        self.authenticated_user_id: int | None = (
            user.pk if getattr(user, "is_authenticated", False) else None
        )

    @property
    def is_authenticated(self) -> bool:
        return self.authenticated_user_id is not None

    def __repr__(self) -> str:
        return f"<SessionAuth user_id={self.authenticated_user_id}>"


class StreamingSession:
    """The streaming session of one connection for one endpoint."""

    __slots__ = (
        "__weakref__",
        "_connection",
        "_messages",
        "_on_parked",
        "auth",
        "closed",
        "ending",
        "endpoint",
        "user",
    )

    def __init__(self, connection: StreamingConsumer, endpoint: str, user: Any) -> None:
        self._connection: StreamingConsumer | None = connection
        self.endpoint = endpoint
        self.user = user
        self.auth = SessionAuth(user)
        self.closed = False
        self.ending = False  # listeners gone, listen() ended; stream_closed may still run
        self._messages: SessionMessages | None = None
        self._on_parked: Callable[[], None] | None = None

    @property
    def scope(self) -> dict[str, Any]:
        """The connection's ASGI scope (empty once the session is closed)."""
        return self._connection.scope if self._connection is not None else {}

    @property
    def max_send_bytes(self) -> int:
        """The largest frame this socket may be sent, in UTF-8 bytes: ``MAX_SEND_BYTES``,
        or less under a server with a lower limit of its own (daphne). A message, or a
        streaming method's answer, above it fails with ``message_too_large``: size pages
        of results to fit (0 once the session is closed)."""
        return self._connection._max_send if self._connection is not None else 0

    @property
    def messages(self) -> SessionMessages:
        """The message bus, with listeners owned by this session."""
        if self._messages is None:
            from .messages import SessionMessages

            self._messages = SessionMessages(self)
        return self._messages

    def _send_text(self, text: str) -> bool:
        if self.closed or self._connection is None:
            return False
        return self._connection.send_text(text, self.endpoint)

    def _parked(self) -> None:
        """A hook of this session waits on a ``listen()`` iterator (see the consumer)."""
        callback, self._on_parked = self._on_parked, None
        if callback is not None:
            callback()

    def _end(self) -> None:
        """Drop the bus listeners and end ``listen()`` iterators; keep the rest. Idempotent."""
        self.ending = True
        self._on_parked = None
        if self._messages is not None:
            self._messages._close()

    def _close(self) -> None:
        """Release everything this session holds. Idempotent."""
        if self.closed:
            return
        self.closed = True
        self._end()
        if self._connection is not None:
            objects = self._connection.scope.get(USER_OBJECTS_KEY)
            if objects is not None:
                objects.pop(self.endpoint, None)
        self._connection = None

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        user_id = self.auth.authenticated_user_id
        return f"<StreamingSession {self.endpoint} user_id={user_id} {state}>"
