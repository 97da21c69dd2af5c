"""``Endpoint``: the class an app subclasses to serve a stream, like Serverpod's.

::

    class ChatEndpoint(Endpoint):
        login_required = True

        async def stream_opened(self, session): ...
        async def handle_stream_message(self, session, message): ...
        async def stream_closed(self, session): ...

One instance is created per connection per endpoint, so state on ``self`` never
leaks between users. The framework (``streaming.consumer.StreamingConsumer``) owns
the socket, the receive loop and the hooks' order; an endpoint only implements
hooks and calls :meth:`send_stream_message`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, ClassVar

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from .protocol import encode_data
from .serialization import SerializableEntity, encode_object
from .session import USER_OBJECTS_KEY, StreamingSession

if TYPE_CHECKING:
    from collections.abc import Callable

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def derive_name(class_name: str) -> str:
    """``ChatRoomEndpoint`` -> ``chat_room``."""
    base = class_name[: -len("Endpoint")] if class_name.endswith("Endpoint") else class_name
    return _CAMEL.sub("_", base or class_name).lower()


class Endpoint(AsyncJsonWebsocketConsumer):
    """A streaming endpoint. Subclass it in your app's ``endpoints.py``.

    Class attributes (overridable):

    * ``name``: the endpoint's name on the wire; by default the class name without
      a trailing ``Endpoint``, in snake_case. Must be a Python identifier.
    * ``login_required``: anonymous sessions are never opened and their frames are
      answered ``not_authenticated``.
    * ``abstract``: a base class that is not registered.
    """

    name: ClassVar[str] = ""
    login_required: ClassVar[bool] = False
    abstract: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "abstract" not in cls.__dict__:
            cls.abstract = False
        if "name" not in cls.__dict__:
            cls.name = derive_name(cls.__name__)
        if not cls.abstract and not (isinstance(cls.name, str) and cls.name.isidentifier()):
            raise TypeError(
                f"{cls.__qualname__}.name must be a valid Python identifier, got {cls.name!r}."
            )

    # -- hooks: empty by default ------------------------------------------------------

    async def has_permission(self, session: StreamingSession) -> bool:
        """Whether ``session`` may use this endpoint.

        False: the endpoint is not opened for the session and its frames get ``forbidden``.
        """
        return True

    async def stream_opened(self, session: StreamingSession) -> None:
        """Called once when the stream opens for ``session``. Set up listeners and user objects."""

    async def handle_stream_message(
        self, session: StreamingSession, message: SerializableEntity
    ) -> None:
        """Called for each message the client sends to this endpoint, in order, one at a time."""

    async def stream_closed(self, session: StreamingSession) -> None:
        """Called once when an opened stream closes. Listeners and the user object go after it."""

    # -- what hooks call -------------------------------------------------------------

    async def send_stream_message(
        self, session: StreamingSession, message: SerializableEntity
    ) -> bool:
        """Queue ``message`` for ``session``'s client; returns False if it was not queued.

        Never waits for the client: the frame goes to the connection's bounded send
        queue (``STREAMING["SEND_QUEUE_LIMIT"]``). A client that lets the queue fill is
        closed with 4013 (overloaded). Sending on a closed session does nothing.
        """
        if not isinstance(message, SerializableEntity):
            raise TypeError(f"send_stream_message needs a SerializableEntity, got {message!r}.")
        return session._send_text(encode_data(session.endpoint, encode_object(message)))

    def set_user_object(self, session: StreamingSession, obj: Any) -> None:
        """Keep ``obj`` for this connection and endpoint until the stream closes."""
        if session.closed:
            raise RuntimeError(f"{session!r} is closed; its user object is gone.")
        session.scope.setdefault(USER_OBJECTS_KEY, {})[session.endpoint] = obj

    def get_user_object(self, session: StreamingSession) -> Any:
        """The object set by :meth:`set_user_object`, or None."""
        return session.scope.get(USER_OBJECTS_KEY, {}).get(session.endpoint)

    @classmethod
    def as_asgi(cls, **initkwargs: Any) -> Callable[..., Any]:
        """Serve this endpoint alone, at a path of its own, with the full protocol."""
        from .consumer import StreamingConsumer

        app = StreamingConsumer.as_asgi(endpoints=[cls], **initkwargs)
        app.consumer_class = cls  # type: ignore[attr-defined]
        return app
