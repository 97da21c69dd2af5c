"""Test helpers that mirror the wire: send a message object, receive a message object,
assert that nothing arrived.

::

    async with StreamingCommunicator(endpoints=[EchoEndpoint]) as comm:
        await comm.send_message("echo", Ping(n=1))
        assert await comm.receive_message("echo") == Ping(n=1)
        await comm.assert_nothing_received()

"Nothing arrived" is proven, never by waiting: first every endpoint's lane must
answer a probe frame (so work still queued for a hook is done), then a ping's pong
must be the next frame, since every frame of a connection leaves through one
ordered queue.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from channels.testing import WebsocketCommunicator

from . import protocol
from .endpoint import Endpoint
from .protocol import CommandFrame, DataFrame
from .serialization import SerializableEntity, _swapped_registry, decode_object, encode_object


@contextmanager
def isolated_registry() -> Iterator[None]:
    """Message classes defined inside the block are forgotten when it ends."""
    with _swapped_registry():
        yield


class _WithUser:
    def __init__(self, app: Any, user: Any, extra_scope: dict[str, Any]) -> None:
        self.app, self.user, self.extra_scope = app, user, extra_scope

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        scope = {**scope, **self.extra_scope}
        if self.user is not None:
            scope["user"] = self.user
        return await self.app(scope, receive, send)


SYNC_ID = "streaming.testing.sync"


class StreamingCommunicator(WebsocketCommunicator):
    """A ``WebsocketCommunicator`` that speaks Streampod frames.

    Pass ``endpoints=[...]`` to serve inline endpoints (and ``user=`` to skip the auth
    middleware), or ``application=`` to test a full ASGI stack.
    """

    def __init__(
        self,
        application: Any = None,
        path: str = "/websocket/",
        *,
        endpoints: Sequence[type[Endpoint]] | None = None,
        user: Any = None,
        headers: list[tuple[bytes, bytes]] | None = None,
        scope: dict[str, Any] | None = None,
        timeout: float = 3,
    ) -> None:
        if application is None:
            from .consumer import StreamingConsumer

            application = StreamingConsumer.as_asgi(endpoints=endpoints)
        if user is not None or scope:
            application = _WithUser(application, user, scope or {})
        super().__init__(application, path, headers=headers)
        self.default_timeout = timeout
        self._endpoints = [cls.name for cls in endpoints] if endpoints is not None else None

    async def __aenter__(self) -> StreamingCommunicator:
        connected, _ = await self.connect(timeout=self.default_timeout)
        assert connected, "the server refused the WebSocket handshake"
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.disconnect(timeout=self.default_timeout)

    async def send_message(
        self, endpoint: str, message: SerializableEntity, *, frame_id: str | None = None
    ) -> None:
        text = protocol.encode_data(endpoint, encode_object(message), frame_id)
        await self.send_to(text_data=text)

    async def send_command(self, command: str, args: dict[str, Any] | None = None) -> None:
        await self.send_to(text_data=protocol.encode_command(command, args))

    async def receive_frame(self, timeout: float | None = None) -> protocol.Frame:
        text = await self.receive_from(timeout or self.default_timeout)
        return protocol.decode_frame(text)

    async def receive_message(
        self, endpoint: str | None = None, timeout: float | None = None
    ) -> SerializableEntity:
        """The next frame, which must be a data frame (for ``endpoint`` if given)."""
        frame = await self.receive_frame(timeout)
        assert isinstance(frame, DataFrame), f"expected a data frame, got {frame!r}"
        if endpoint is not None:
            assert frame.endpoint == endpoint, f"expected endpoint {endpoint!r}, got {frame!r}"
        return decode_object(frame.class_name, frame.data)

    async def receive_command(self, command: str, timeout: float | None = None) -> dict[str, Any]:
        frame = await self.receive_frame(timeout)
        assert isinstance(frame, CommandFrame) and frame.command == command, (
            f"expected command {command!r}, got {frame!r}"
        )
        return frame.args

    async def receive_error(
        self, code: str | None = None, timeout: float | None = None
    ) -> dict[str, Any]:
        """The next frame, which must be an ``error`` (with ``code`` if given); its args."""
        args = await self.receive_command("error", timeout)
        if code is not None:
            assert args.get("code") == code, f"expected error {code!r}, got {args!r}"
        return args

    async def ping(self) -> None:
        await self.send_command("ping")
        await self.receive_command("pong")

    def _probe(self, endpoint: str) -> str:
        return protocol.encode_data(endpoint, '{"className":"streaming.Probe","data":{}}', SYNC_ID)

    def _endpoint_names(self) -> list[str]:
        if self._endpoints is not None:
            return self._endpoints
        from .registry import endpoints

        return [cls.name for cls in endpoints.all()]

    async def sync(self, endpoint: str) -> str:
        """Wait until ``endpoint`` has handled everything sent to it so far, its
        ``stream_opened`` included; returns how it answered a probe frame.

        The probe is a frame of an unregistered class. It queues behind earlier frames
        in the endpoint's lane and is answered from there: ``"unknown_class"`` when the
        endpoint is open, else ``"not_authenticated"``, ``"forbidden"`` or
        ``"internal_error"``. Any other frame arriving first fails the call, so use it
        while the endpoint is quiet.
        """
        await self.send_to(text_data=self._probe(endpoint))
        args = await self.receive_error()
        assert args.get("id") == SYNC_ID, f"unexpected error frame {args!r}"
        return str(args["code"])

    async def assert_nothing_received(self) -> None:
        """Fails if any frame is waiting, or still due from work queued for an endpoint.

        Each endpoint's lane answers a probe (see :meth:`sync`) after everything sent
        to it before; then a ping's pong must be the next frame. Any other frame on
        the way fails the assertion.
        """
        names = self._endpoint_names()
        for name in names:
            await self.send_to(text_data=self._probe(name))
        for _ in names:
            text = await self.receive_from(self.default_timeout)
            frame = json.loads(text)
            args = frame.get("args") if isinstance(frame, dict) else None
            assert (
                frame.get("command") == "error"
                and isinstance(args, dict)
                and args.get("id") == SYNC_ID
            ), f"unexpected frame: {text}"
        await self.send_command("ping")
        text = await self.receive_from(self.default_timeout)
        assert json.loads(text) == {"command": "pong", "args": {}}, f"unexpected frame: {text}"

    async def receive_close(self, timeout: float | None = None) -> int:
        """Wait for the server to close the socket; returns the close code."""
        while True:
            output = await self.receive_output(timeout or self.default_timeout)
            if output["type"] == "websocket.close":
                return int(output.get("code", 1000))
