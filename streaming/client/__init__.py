"""The Python client of Streampod: ``from streaming.client import Client``.

Imports no Django and no channels (a test proves it): it runs anywhere Python,
``websockets``, ``httpx`` and ``pydantic`` do. It speaks the wire format of
``streaming.protocol`` with the message classes of ``streaming.serialization``.

::

    client = Client("http://127.0.0.1:8000/")
    await client.sign_in("alice", "secret")
    await client.open_streaming_connection()
    await client.chat.send_stream_message(ChatMessage(recipient_id=2, text="Hello"))
    async for message in client.chat.stream:
        ...
    await client.close()

See docs/clients.md.
"""

from .calls import Call, MethodRef
from .client import Client
from .endpoint_ref import EndpointRef
from .errors import (
    CallFailed,
    ClientClosed,
    ClientError,
    ConnectionFailed,
    NotConnected,
    ServerError,
    SignInFailed,
    StreamOverflow,
    UndecodableMessage,
)
from .handler import StreamingConnectionHandler, StreamingConnectionHandlerState
from .raw import RawObject
from .status import DisconnectReason, StreamingConnectionStatus
from .stream import MessageStream

__all__ = [
    "Call",
    "CallFailed",
    "Client",
    "ClientClosed",
    "ClientError",
    "ConnectionFailed",
    "DisconnectReason",
    "EndpointRef",
    "MessageStream",
    "MethodRef",
    "NotConnected",
    "RawObject",
    "ServerError",
    "SignInFailed",
    "StreamOverflow",
    "StreamingConnectionHandler",
    "StreamingConnectionHandlerState",
    "StreamingConnectionStatus",
    "UndecodableMessage",
]
