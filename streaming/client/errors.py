"""Errors of the Python client. Imports no Django.

The client's errors hang under Streampod's one exception tree
(:class:`streaming.exceptions.StreamingError`), so ``except StreamingError`` catches
both sides; each has a stable ``code``::

    StreamingError
    └── ClientError                 anything the client raises or reports
        ├── NotConnected            not_connected: a send with no open connection
        ├── ClientClosed            client_closed: the Client was closed for good
        ├── SignInFailed            sign_in_failed: bad credentials (``status_code``)
        ├── ConnectionFailed        connection_failed: one attempt did not connect (``reason``)
        ├── StreamOverflow          stream_overflow: a full buffer dropped messages
        ├── ServerError             the server's ``error`` frame: ``code`` is the server's
        │   └── CallFailed          a streaming-method call's ``fail`` frame
        └── UndecodableMessage      a frame from the server this client could not decode

:class:`ServerError` and :class:`UndecodableMessage` are *reported* (on
``client.errors`` and to ``on_error``), not raised by the client itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..exceptions import StreamingError

if TYPE_CHECKING:
    from .status import DisconnectReason

__all__ = [
    "CallFailed",
    "ClientClosed",
    "ClientError",
    "ConnectionFailed",
    "NotConnected",
    "ServerError",
    "SignInFailed",
    "StreamOverflow",
    "UndecodableMessage",
]


class ClientError(StreamingError):
    """Base class of the client's errors."""

    code = "client_error"
    default_detail = "Streaming client error."


class NotConnected(ClientError):
    """The streaming connection is not open: the frame was not sent (nothing is queued)."""

    code = "not_connected"
    default_detail = "The streaming connection is not open."


class ClientClosed(ClientError):
    """:meth:`Client.close` was called: the client cannot connect again."""

    code = "client_closed"
    default_detail = "This client is closed."


class SignInFailed(ClientError):
    """``POST api/auth/token/`` refused the credentials (or answered unexpectedly)."""

    code = "sign_in_failed"
    default_detail = "Unable to sign in with these credentials."

    def __init__(self, detail: str | None = None, *, status_code: int | None = None) -> None:
        super().__init__(detail)
        self.status_code = status_code


class ConnectionFailed(ClientError):
    """One connection attempt ended before the first pong; ``reason`` says why."""

    code = "connection_failed"
    default_detail = "Could not open the streaming connection."

    def __init__(self, reason: DisconnectReason) -> None:
        super().__init__(reason.message)
        self.reason = reason


class StreamOverflow(ClientError):
    """A stream's buffer was full: its ``dropped`` oldest messages were discarded.

    Raised by the stream's iterator exactly where the gap is (before the first
    message that was kept), once per gap; iterating again goes on with the rest.
    """

    code = "stream_overflow"
    default_detail = "Messages were dropped: the stream's buffer was full."

    def __init__(self, stream: str, dropped: int) -> None:
        super().__init__(f"{stream}: {dropped} message(s) dropped, the buffer was full.")
        self.stream = stream
        self.dropped = dropped


class ServerError(ClientError):
    """An ``error`` frame from the server; the connection stays open.

    ``code`` is the server's (``invalid_message``, ``unknown_endpoint``...),
    ``endpoint`` and ``id`` are set when the server knows them, and ``errors`` lists
    ``{"path", "reason"}`` per field for ``invalid_message``.
    """

    def __init__(
        self,
        code: str,
        message: str,
        endpoint: str | None = None,
        id: str | None = None,
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.endpoint = endpoint
        self.id = id
        self.errors: list[dict[str, Any]] = list(errors or [])

    def __str__(self) -> str:
        return _described(self.message, self.errors)

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> ServerError:
        """Build from an error frame's ``args``, tolerating missing or odd values."""

        def text(key: str) -> str | None:
            value = args.get(key)
            return value if isinstance(value, str) else None

        errors = args.get("errors")
        return cls(
            text("code") or "unknown",
            text("message") or "",
            endpoint=text("endpoint"),
            id=text("id"),
            errors=errors if isinstance(errors, list) else None,
        )

    def __repr__(self) -> str:
        return (
            f"ServerError(code={self.code!r}, message={self.message!r}, "
            f"endpoint={self.endpoint!r}, id={self.id!r})"
        )


def _described(message: str, errors: list[dict[str, Any]]) -> str:
    """``message`` with the first failing paths and reasons, as a traceback shows it
    (helper "serverpod12": "1 field(s) failed validation" alone named no field)."""
    errors = [e for e in errors if isinstance(e, dict)]  # a server's odd values ignored
    if not errors:
        return message
    shown = "; ".join(f"{e.get('path')}: {e.get('reason')}" for e in errors[:3])
    more = f"; and {len(errors) - 3} more" if len(errors) > 3 else ""
    return f"{message} ({shown}{more})"


class CallFailed(ServerError):
    """A streaming-method call ended with ``fail`` (raised by the call, not reported).

    ``code`` is the server's (``invalid_message``, ``unknown_method``, ``forbidden``...;
    docs/protocol.md), ``errors`` lists failing arguments, ``exception`` holds an app
    exception (``{"className", "data"}``) whose class this side does not define.
    """

    def __init__(
        self,
        code: str,
        message: str,
        endpoint: str | None = None,
        id: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        exception: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(code, message, endpoint=endpoint, id=id, errors=errors)
        self.exception = exception

    def __repr__(self) -> str:
        return f"CallFailed(code={self.code!r}, message={self.message!r}, id={self.id!r})"


class UndecodableMessage(ClientError):
    """A frame from the server that this client could not turn into a message.

    ``code`` is ``unknown_class`` (no local class has that ``className``),
    ``invalid_message`` (the data does not fit the local class) or
    ``malformed_frame``; ``endpoint`` is set when known. The frame is not put on any
    endpoint stream.
    """

    def __init__(
        self,
        code: str,
        message: str,
        endpoint: str | None = None,
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.endpoint = endpoint
        self.errors: list[dict[str, Any]] = list(errors or [])

    def __str__(self) -> str:
        return _described(self.message, self.errors)

    def __repr__(self) -> str:
        return (
            f"UndecodableMessage(code={self.code!r}, message={self.message!r}, "
            f"endpoint={self.endpoint!r})"
        )
