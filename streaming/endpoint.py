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

import json
import re
from typing import TYPE_CHECKING, Any, ClassVar

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from .eager import Done
from .methods import MethodSpec, collect_methods, streaming_method
from .protocol import encode_data
from .serialization import SerializableEntity, encode_object
from .session import USER_OBJECTS_KEY, StreamingSession

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Endpoint", "derive_name", "streaming_method"]

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")

#: channels' consumer methods an endpoint must not override, with what to write instead.
#: Streampod's consumer owns the socket: these would never be called.
_NOT_HOOKS = {
    "connect": "stream_opened(self, session)",
    "websocket_connect": "stream_opened(self, session)",
    "accept": "nothing: the socket is accepted once every stream_opened has run",
    "receive": "handle_stream_message(self, session, message)",
    "receive_json": "handle_stream_message(self, session, message)",
    "websocket_receive": "handle_stream_message(self, session, message)",
    "disconnect": "stream_closed(self, session)",
    "websocket_disconnect": "stream_closed(self, session)",
    "dispatch": "the hooks stream_opened, handle_stream_message and stream_closed",
}


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
    * ``required_permissions``: Django permission names (``"app_label.codename"``),
      Serverpod's ``requiredScopes``. Checked with the user's ``has_perms`` when the
      stream opens: a user without them gets ``forbidden`` for this endpoint's frames
      and the stream is not opened (anonymous users: ``not_authenticated``). Removing
      one from the user later closes the stream (``streaming.signals``).
    * ``abstract``: a base class that is not registered.
    """

    name: ClassVar[str] = ""
    login_required: ClassVar[bool] = False
    required_permissions: ClassVar[tuple[str, ...]] = ()
    abstract: ClassVar[bool] = True
    #: The ``@streaming_method`` methods by name, read from their type hints when the
    #: class is created (``streaming.methods``).
    _streaming_methods: ClassVar[dict[str, MethodSpec]] = {}

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
        permissions = cls.required_permissions
        if isinstance(permissions, str) or not all(
            isinstance(p, str) and p.count(".") == 1 and all(p.split(".")) for p in permissions
        ):
            raise TypeError(
                f"{cls.__qualname__}.required_permissions must list permission names "
                f'such as "chat.add_message", got {permissions!r}.'
            )
        cls.required_permissions = tuple(permissions)
        for attribute, instead in _NOT_HOOKS.items():
            if attribute in cls.__dict__:
                raise TypeError(
                    f"{cls.__qualname__}.{attribute}: an Endpoint is not a channels consumer "
                    f"of its own and {attribute}() is never called; write {instead} instead."
                )
        if cls.__dict__.get("groups"):
            raise TypeError(
                f"{cls.__qualname__}.groups: channel-layer groups are not joined for endpoints; "
                "listen in stream_opened with session.messages.add_listener(channel, listener) "
                "(or session.messages.listen(channel))."
            )
        if "channel_layer_alias" in cls.__dict__:
            raise TypeError(
                f"{cls.__qualname__}.channel_layer_alias: the message bus uses the layer named "
                'by STREAMING["CHANNEL_LAYER"]; set that instead.'
            )
        cls._streaming_methods = collect_methods(cls)

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

    def send_stream_message(self, session: StreamingSession, message: SerializableEntity) -> Done:
        """Queue ``message`` for ``session``'s client, at once; awaited, says whether it was
        queued (False: the connection is closing, or the message is too large to send).

        Works with or without ``await``, as Serverpod's ``sendStreamMessage`` does in
        Dart: the frame is queued before this returns. Never waits for the client: the
        frame goes to the connection's bounded send queue (``SEND_QUEUE_LIMIT``,
        ``SEND_QUEUE_BYTES``); a client that lets it fill is closed with 4013.
        Sending on a closed session does nothing.
        """
        if not isinstance(message, SerializableEntity):
            raise TypeError(f"send_stream_message needs a SerializableEntity, got {message!r}.")
        return Done(session._send_text(encode_data(session.endpoint, encode_object(message))))

    # -- channels' consumer API, where it makes sense for an endpoint ------------------
    #
    # One endpoint instance serves one connection, with one session at a time, so the
    # consumer methods that take no session act on that one.

    @property
    def session(self) -> StreamingSession:
        """This endpoint's session on its connection (while its stream is open)."""
        session: StreamingSession | None = self.__dict__.get("_session")
        if session is None:
            raise RuntimeError(f"{type(self).__qualname__} has no open stream.")
        return session

    async def send_json(self, content: Any, close: bool = False) -> None:
        """Send ``content`` on this endpoint's stream: a ``SerializableEntity``, or a
        ``{"className": ..., "data": {...}}`` dict already in wire form. ``close``:
        then close the socket (1000)."""
        session = self.session
        if isinstance(content, SerializableEntity):
            self.send_stream_message(session, content)
        elif (
            isinstance(content, dict)
            and isinstance(content.get("className"), str)
            and isinstance(content.get("data"), dict)
        ):
            session._send_text(encode_data(session.endpoint, json.dumps(content)))
        else:
            raise TypeError(
                "An endpoint's stream carries typed messages: send_json takes a "
                "SerializableEntity (or its {'className', 'data'} form); use "
                "self.send_stream_message(session, message)."
            )
        if close:
            await self.close()

    async def send(
        self, text_data: str | None = None, bytes_data: bytes | None = None, close: bool = False
    ) -> None:
        raise TypeError(
            "An endpoint's stream carries typed messages, not raw frames: use "
            "self.send_stream_message(session, message) (or self.send_json(message))."
        )

    async def close(self, code: int | None = None, reason: str | None = None) -> None:
        """Close the whole socket (every endpoint's stream) with ``code`` (1000)."""
        connection = self.session._connection
        if connection is not None:
            connection.close_with(1000 if code is None else int(code))

    @property
    def channel_layer(self) -> Any:
        raise AttributeError(
            "Endpoints have no channel layer of their own: post with "
            "session.messages.post_message(channel, message) and listen with "
            "session.messages.add_listener(channel, listener)."
        )

    @channel_layer.setter
    def channel_layer(self, value: Any) -> None:
        pass  # channels' consumer machinery may assign it; an endpoint ignores it

    # -- user objects ---------------------------------------------------------------

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
