"""The exception tree of Streampod. Imports no Django.

::

    StreamingError                      base; ``code`` is what a client sees
    ├── ProtocolError                   a frame the server cannot accept
    │   ├── MalformedFrame              malformed_frame
    │   ├── FrameTooLarge               malformed_frame, closes with 4009
    │   ├── UnknownCommand              unknown_command
    │   └── UnknownEndpoint             unknown_endpoint
    ├── SerializationError
    │   ├── UnknownClass                unknown_class
    │   └── InvalidMessage              invalid_message (``errors`` lists each field)
    ├── NotAuthenticated                not_authenticated
    ├── Forbidden                       forbidden
    ├── RateLimited                     rate_limited
    ├── InternalError                   internal_error
    ├── InvalidChannelName              a message-bus channel name that cannot be used
    └── MessagingUnavailable            a cross-server post could not be published
        └── MessagingNotGlobal          global_=True without a cross-process layer

Each class sets only ``code`` and ``default_detail`` (the DRF pattern); an instance
may carry a more specific ``detail``.
"""

from __future__ import annotations

from typing import Any


class StreamingError(Exception):
    """Base class of every error Streampod raises on purpose."""

    code: str = "internal_error"
    default_detail: str = "Internal error."

    def __init__(self, detail: str | None = None) -> None:
        self.detail = detail if detail is not None else self.default_detail
        super().__init__(self.detail)


class ProtocolError(StreamingError):
    """A frame that does not follow the wire protocol."""

    code = "malformed_frame"
    default_detail = "Malformed frame."


class MalformedFrame(ProtocolError):
    code = "malformed_frame"
    default_detail = "Malformed frame."


class FrameTooLarge(ProtocolError):
    """The frame is larger than ``STREAMING["MAX_MESSAGE_BYTES"]``; the socket is closed."""

    code = "malformed_frame"
    default_detail = "Frame too large."


class UnknownCommand(ProtocolError):
    code = "unknown_command"
    default_detail = "Unknown command."


class UnknownEndpoint(ProtocolError):
    code = "unknown_endpoint"
    default_detail = "Unknown endpoint."


class SerializationError(StreamingError):
    code = "invalid_message"
    default_detail = "Invalid message."


class UnknownClass(SerializationError):
    code = "unknown_class"
    default_detail = "Unknown class."


class InvalidMessage(SerializationError):
    """Validation failed. ``errors`` is a list of ``{"path": str, "reason": str}``."""

    code = "invalid_message"
    default_detail = "Invalid message."

    def __init__(self, detail: str | None = None, errors: list[dict[str, Any]] | None = None):
        super().__init__(detail)
        self.errors: list[dict[str, Any]] = list(errors or [])


class NotAuthenticated(StreamingError):
    code = "not_authenticated"
    default_detail = "This endpoint requires a signed-in user."


class Forbidden(StreamingError):
    code = "forbidden"
    default_detail = "You may not use this endpoint."


class RateLimited(StreamingError):
    code = "rate_limited"
    default_detail = "Too many messages; slow down."


class InternalError(StreamingError):
    code = "internal_error"
    default_detail = "The server failed to handle this message."


class InvalidChannelName(StreamingError, ValueError):
    code = "invalid_channel"
    default_detail = "Invalid channel name."


class MessagingUnavailable(StreamingError):
    """A cross-server post could not be published in time (the broker is unreachable)."""

    code = "messaging_unavailable"
    default_detail = "Cross-server messaging is unavailable."


class MessagingNotGlobal(MessagingUnavailable):
    """``global_=True`` was asked for, but the channel layer does not span processes."""

    code = "messaging_not_global"
    default_detail = (
        "global_=True needs a channel layer that spans processes (channels-redis); "
        "the configured layer is in-process."
    )
