"""Test helpers that mirror the wire: send a message object, receive a message object,
assert that nothing arrived.

::

    async with StreamingCommunicator(endpoints=[EchoEndpoint]) as comm:
        await comm.send_message("echo", Ping(n=1))
        assert await comm.receive_message("echo") == Ping(n=1)
        await comm.assert_nothing_received()

        # streaming methods: a result, or a stream's values
        assert await comm.call("chat", "history", with_user=2) == [...]
        async with comm.stream("chat", "watch_updates", user_id=2) as updates:
            async for update in updates:
                break  # leaving the block cancels the call

"Nothing arrived" is proven, never by waiting: first every endpoint's lane must
answer a probe frame (so work still queued for a hook is done), then a ping's pong
must be the next frame, since every frame of a connection leaves through one
ordered queue.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from channels.testing import WebsocketCommunicator

from . import protocol
from .endpoint import Endpoint
from .exceptions import InvalidMessage
from .protocol import CommandFrame, DataFrame
from .serialization import SerializableEntity, _swapped_registry, decode_object, encode_object

if TYPE_CHECKING:
    from .methods import ValueReader

_call_ids = itertools.count(1)
_UNTYPED: Any = object()


def _reader(returns: Any) -> ValueReader | None:
    """The reader of a ``returns=`` type (``TypeError`` at once for no method type)."""
    from .methods import ValueReader

    return None if returns is _UNTYPED else ValueReader(returns)


class CallStream:
    """A streaming-method call of a :class:`StreamingCommunicator` whose result is a
    stream (see :meth:`StreamingCommunicator.stream`)."""

    def __init__(
        self,
        comm: StreamingCommunicator,
        endpoint: str,
        method: str,
        args: dict[str, Any],
        credit: int,
        timeout: float | None,
        reader: ValueReader | None = None,
    ) -> None:
        self._comm = comm
        self._call = (endpoint, method, args)
        self._credit = credit
        self._timeout = timeout
        self._reader = reader
        self._id: str | None = None
        self._ended = False
        self._read = 0

    async def _start(self) -> None:
        if self._id is None:
            endpoint, method, args = self._call
            self._id = await self._comm._start_call(endpoint, method, args, credit=self._credit)

    async def __aenter__(self) -> CallStream:
        await self._start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._id is not None and not self._ended:
            self._ended = True
            self._comm._cancelled.add(self._id)  # its frames already on the way are skipped
            self._comm._end_inputs(self._id)
            await self._comm.send_command("cancel", {"id": self._id})

    def __aiter__(self) -> CallStream:
        return self

    async def __anext__(self) -> Any:
        await self._start()
        assert self._id is not None
        if self._ended:
            raise StopAsyncIteration
        try:
            kind, value = await self._comm._call_frame(self._id, self._timeout, self._reader)
        except BaseException:
            self._ended = True  # failed: nothing to cancel
            raise
        if kind == "end":
            self._ended = True
            raise StopAsyncIteration
        if kind == "done":
            self._ended = True
            endpoint, method, _ = self._call
            raise TypeError(
                f"{endpoint}.{method} returns a value, not a stream: use comm.call() "
                f"(it returned {value!r})"
            )
        self._read += 1
        half = max(1, self._credit // 2)
        if self._credit and self._read % half == 0:
            await self._comm.send_command("credit", {"id": self._id, "n": half})
        return value


class _InputPump:
    """One input stream of a communicator's call: its values sent by a task of its own,
    as the server grants credit (so that a stream that waits for the call's output does
    not hold up the reading of it), then ``stream_end``, or ``stream_error`` when the
    iterator raises. Stopped (the iterator closed) when the call ends."""

    def __init__(self, comm: StreamingCommunicator, call_id: str, name: str, it: Any) -> None:
        self._comm, self._call_id, self._name, self._iterator = comm, call_id, name, it
        self._credit = 0
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def grant(self, n: int) -> None:
        self._credit += n
        self._changed.set()
        if self._task is None:
            self._task = asyncio.ensure_future(self._send())

    def stop(self) -> None:
        if self._task is None:  # never granted credit: its iterator is closed all the same
            self._task = asyncio.ensure_future(self._close())
        else:
            self._task.cancel()

    async def _close(self) -> None:
        aclose = getattr(self._iterator, "aclose", None)
        if aclose is not None:
            await aclose()

    async def _send(self) -> None:
        from .methods import value_json

        fields: dict[str, Any] = {"id": self._call_id, "stream": self._name}
        try:
            while True:
                while self._credit <= 0:
                    self._changed.clear()
                    await self._changed.wait()
                try:
                    value = await anext(self._iterator)
                except StopAsyncIteration:
                    await self._comm.send_command("stream_end", fields)
                    return
                except Exception as exc:
                    message = str(exc) or type(exc).__name__
                    await self._comm.send_command("stream_error", {**fields, "message": message})
                    return
                self._credit -= 1
                value = json.loads(value_json(value))
                await self._comm.send_command("stream_value", {**fields, "value": value})
        finally:
            await self._close()


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
        self._cancelled: set[str] = set()  # calls cancelled by :meth:`stream`
        #: call id -> its input streams' iterators, by name, until each has ended
        self._inputs: dict[str, dict[str, _InputPump]] = {}

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

    # -- streaming methods ------------------------------------------------------------

    async def call(
        self,
        endpoint: str,
        method: str,
        /,
        *,
        timeout: float | None = None,
        returns: Any = _UNTYPED,
        **args: Any,
    ) -> Any:
        """Call the streaming method ``method`` of ``endpoint`` with ``args``; return its
        result as a client gets it (messages as their classes; with ``returns=``, read as
        that type, as the Python client's ``returns=`` does; a stream's values as a list,
        as awaiting the Python client's call gives). A ``fail`` raises: the
        app's exception as itself when its class is defined here, else
        :class:`~streaming.client.errors.CallFailed` (``code``, ``errors``,
        ``exception``); a value not of ``returns``
        :class:`~streaming.client.errors.UndecodableMessage`. The next frames must be this
        call's (see :meth:`sync`)."""
        from .methods import DEFAULT_CREDIT

        reader = _reader(returns)
        call_id = await self._start_call(endpoint, method, args, credit=0)
        values: list[Any] = []  # a stream's, granting credit as the bundled clients do
        half = DEFAULT_CREDIT // 2
        while True:
            kind, value = await self._call_frame(call_id, timeout, reader)
            if kind == "done":
                return value
            if kind == "end":  # a stream: the list of its values, as the Python client's
                return values
            values.append(value)
            if len(values) % half == 0:
                await self.send_command("credit", {"id": call_id, "n": half})

    def stream(
        self,
        endpoint: str,
        method: str,
        /,
        *,
        credit: int = 64,
        timeout: float | None = None,
        returns: Any = _UNTYPED,
        **args: Any,
    ) -> CallStream:
        """Call a method that returns a stream: ``async for value in comm.stream(...)``
        reads its values as they come (as ``returns`` when given, as in :meth:`call`),
        granting ``credit`` as the bundled clients do (half of it again each time half is
        read), to the ``done``. To leave early, use ``async with comm.stream(...) as
        values``: leaving the block cancels the call. A ``fail`` raises as in :meth:`call`."""
        return CallStream(self, endpoint, method, args, credit, timeout, _reader(returns))

    async def _start_call(
        self, endpoint: str, method: str, args: dict[str, Any], *, credit: int
    ) -> str:
        from .methods import value_json

        call_id = f"comm-{next(_call_ids)}"
        streams = {name: aiter(v) for name, v in args.items() if hasattr(v, "__aiter__")}
        wire_args = {
            name: json.loads(value_json(value))
            for name, value in args.items()
            if name not in streams
        }
        fields: dict[str, Any] = {
            "id": call_id, "endpoint": endpoint, "method": method, "args": wire_args
        }  # fmt: skip
        if credit:
            fields["credit"] = credit
        if streams:
            fields["streams"] = list(streams)
            self._inputs[call_id] = {
                name: _InputPump(self, call_id, name, it) for name, it in streams.items()
            }
        await self.send_command("call", fields)
        return call_id

    def _end_inputs(self, call_id: str) -> None:
        """The call ended: its input streams stop (their iterators are closed)."""
        for pump in self._inputs.pop(call_id, {}).values():
            pump.stop()

    async def _call_frame(
        self, call_id: str, timeout: float | None, reader: ValueReader | None = None
    ) -> tuple[str, Any]:
        """The call's next frame: ``("value", v)``, ``("done", result)`` or ``("end",
        None)`` (a stream's ``done``, which has no value), the value read by ``reader``
        when given; raises on ``fail``."""
        from .client.errors import CallFailed, UndecodableMessage
        from .methods import SerializableException, from_wire

        while True:
            frame = await self.receive_frame(timeout)
            if isinstance(frame, protocol.MethodFrame) and frame.args.get("id") in self._cancelled:
                continue  # sent before its cancel arrived
            assert isinstance(frame, protocol.MethodFrame) and frame.args.get("id") == call_id, (
                f"expected a frame of call {call_id!r}, got {frame!r}"
            )
            if frame.command == "credit" and "stream" in frame.args:
                pump = self._inputs.get(call_id, {}).get(frame.args["stream"])
                if pump is not None:  # sent by a task of its own, as the client's are
                    pump.grant(frame.args["n"])
                continue
            break
        args = frame.args
        if frame.command in ("fail", "done"):
            self._end_inputs(call_id)
        if frame.command == "fail":
            exception = args.get("exception")
            if isinstance(exception, dict):
                raised = SerializableException.from_wire(args.get("message", ""), exception)
                if raised is not None:
                    raise raised
            raise CallFailed(
                args.get("code", ""), args.get("message", ""), args.get("endpoint"), call_id,
                args.get("errors"), exception,
            )  # fmt: skip
        assert frame.command in ("value", "done"), f"unexpected frame of the call: {frame!r}"
        if frame.command == "done" and "value" not in args:
            return "end", None
        raw = args.get("value")
        if reader is None:
            return frame.command, from_wire(raw)
        try:
            read = reader.item if frame.command == "value" else reader.value
            return frame.command, read(raw)
        except InvalidMessage as exc:
            raise UndecodableMessage(
                exc.code, exc.detail, args.get("endpoint"), exc.errors
            ) from exc

    async def receive_close(self, timeout: float | None = None) -> int:
        """Wait for the server to close the socket; returns the close code."""
        while True:
            output = await self.receive_output(timeout or self.default_timeout)
            if output["type"] == "websocket.close":
                return int(output.get("code", 1000))
