"""``EndpointRef``: one server endpoint as the client sees it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..serialization import SerializableEntity
from .calls import Call, MethodRef
from .raw import RawObject
from .stream import MessageStream

if TYPE_CHECKING:
    from .client import Client

__all__ = ["EndpointRef"]


class EndpointRef:
    """``client.<name>`` or ``client.endpoint("<name>")``: one per name and client.

    ``stream`` yields the messages the server sends on this endpoint (decoded
    :class:`SerializableEntity` objects, or :class:`RawObject` for a raw client),
    buffered from the moment the connection opens and kept across reconnects; see
    :class:`MessageStream` for what happens when the buffer is full.
    """

    def __init__(self, client: Client, name: str, buffer_size: int) -> None:
        self.name = name
        self._client = client
        self.stream: MessageStream[Any] = MessageStream(f"endpoint {name!r}", buffer_size)

    def __repr__(self) -> str:
        return f"<EndpointRef {self.name!r}>"

    async def send_stream_message(
        self, message: SerializableEntity | RawObject, *, id: str | None = None
    ) -> None:
        """Send ``message`` to this endpoint.

        Raises :class:`NotConnected` when the client is not ``connected`` (nothing is
        queued for later). ``id`` (any string up to 128 characters) is echoed in the
        :class:`ServerError` the server may answer this frame with. Returning means
        the frame was handed to the socket, not that the server handled it.
        """
        await self._client._send_data(self.name, message, id)

    def call(self, method: str, **arguments: Any) -> Call:
        """Call the streaming method ``method`` (``client.chat.call("history", with_user=2)``
        is ``client.chat.history(with_user=2)``); see :class:`~streaming.client.calls.Call`."""
        return MethodRef(self, method)(**arguments)

    def __getattr__(self, name: str) -> MethodRef:
        # Only reached for names that are not attributes: a streaming method of the endpoint.
        if name.startswith("_"):
            raise AttributeError(name)
        return MethodRef(self, name)
