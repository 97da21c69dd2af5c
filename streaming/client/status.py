"""Connection status of the Python client, and why a connection ended."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from ..protocol import CloseCode

__all__ = ["DisconnectReason", "StreamingConnectionStatus"]


class StreamingConnectionStatus(StrEnum):
    """What the client's streaming connection is doing.

    ``connecting``: a socket is being opened, or it is open and the first pong has
    not come back yet. ``connected``: the server answered the first ping.
    ``waiting_to_retry``: a :class:`StreamingConnectionHandler` will try again in
    ``client.retry_in_seconds``. ``disconnected``: nothing is going on;
    ``client.disconnect_reason`` says why.
    """

    connecting = "connecting"
    connected = "connected"
    waiting_to_retry = "waiting_to_retry"
    disconnected = "disconnected"


_CLOSE_MEANINGS = {
    1000: "closed normally",
    1001: "the server is going away",
    1006: "the connection was lost",
    1011: "the server hit an internal error",
    CloseCode.SERVICE_RESTART: "the server is restarting",
    CloseCode.POLICY: "closed for flooding (policy)",
    CloseCode.TOO_BIG: "a frame was too large",
    CloseCode.OVERLOADED: "the client did not read fast enough (overloaded)",
    CloseCode.UNAUTHORIZED: "credentials invalid or revoked",
    CloseCode.FORBIDDEN: "forbidden",
}


@dataclass(frozen=True, slots=True)
class DisconnectReason:
    """Why the last connection (or connection attempt) ended.

    ``code`` is the WebSocket close code (4401, 1006...) or None when no socket was
    opened; ``http_status`` is set when the server refused the handshake over HTTP;
    ``by_client`` is True when this client closed it on purpose; ``close_reason`` is the
    close frame's reason as sent (a 1012's may advise when to come back:
    :func:`streaming.protocol.restart_advice`).
    """

    code: int | None
    message: str
    http_status: int | None = None
    by_client: bool = False
    close_reason: str = ""

    @property
    def is_auth_failure(self) -> bool:
        """True for 4401/4403 (or an HTTP 401/403 handshake): retrying will not help."""
        return self.code in (CloseCode.UNAUTHORIZED, CloseCode.FORBIDDEN) or self.http_status in (
            401,
            403,
        )

    @property
    def is_service_restart(self) -> bool:
        """True for 1012: the server shut down gracefully; reconnect soon, elsewhere."""
        return self.code == CloseCode.SERVICE_RESTART

    @classmethod
    def from_close(cls, code: int | None, reason: str = "") -> DisconnectReason:
        """From a received close frame (daphne drops reasons: the code is described)."""
        if code is None:
            code = 1006
        meaning = _CLOSE_MEANINGS.get(code, "closed")
        text = f"{meaning} (close code {code})"
        if reason:
            text += f": {reason}"
        return cls(code, text, close_reason=reason)
