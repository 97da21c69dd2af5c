"""Streaming-method calls from the Python client: ``client.<endpoint>.<method>(**args)``.

::

    messages = await client.chat.history(with_user=2)          # one value
    async for event in client.chat.watch_typing(with_user=2):  # a stream
        ...
    count = await client.chat.upload(strokes=my_async_generator())  # an input stream
    when = await client.clock.now(returns=datetime)            # read as a type

Contract:

* A :class:`Call` starts at its first ``await`` or iteration, on the connection open at
  that moment (:class:`NotConnected` if there is none); it does not survive the
  connection: if the connection ends first, the call raises :class:`NotConnected`.
* ``await call`` returns the method's value; for a stream, the list of its values.
  ``async for value in call`` yields a stream's values in order and ends at ``done``
  (``TypeError`` there for a method that returns a value: await it).
* Values: messages arrive as their classes, other values as JSON has them (a
  ``datetime`` as its ISO 8601 string), unless ``returns=`` gives the method's return
  type (``datetime``, ``list[Post]``, ``AsyncIterator[Post]``: a
  :class:`~streaming.methods.ValueReader`), when they are read as the server reads
  arguments of that type. A value that is not of it fails the call (or the stream at
  that value) with :class:`UndecodableMessage` (``invalid_message``, its ``errors``).
* A failed call raises the app's :class:`~streaming.methods.SerializableException`
  subclass when this side defines one of that ``class_name``, else :class:`CallFailed`
  (``code``, ``message``, ``errors``).
* Cancelling: leave the ``async for`` (``break``, an exception: at once with
  ``async with``, or when the iterator is collected), cancel the awaiting task, or call
  :meth:`Call.cancel`. The server then closes its generator.
* Flow control: at most ``credit`` values (64) wait in the client for a stream's
  reader; the client grants the server more as the reader takes them, so a slow reader
  slows the server's generator down instead of filling memory. A value past the credit
  (a server that does not keep to it) fails the call with ``rate_limited`` and cancels
  it. Keyword arguments that are async iterables are input streams: they are read only as
  fast as the server grants credit, and their end (or exception) ends (fails) the stream
  on the server.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
from collections import deque
from collections.abc import AsyncIterator, Generator
from typing import TYPE_CHECKING, Any

from websockets.exceptions import ConnectionClosed

from ..exceptions import StreamingError
from ..methods import DEFAULT_CREDIT, SerializableException, ValueReader, from_wire, value_json
from ..protocol import MethodFrame, encode_method
from .errors import CallFailed, NotConnected, ServerError, UndecodableMessage

if TYPE_CHECKING:
    from .client import Client, _Link
    from .endpoint_ref import EndpointRef

__all__ = ["Call", "MethodRef"]

logger = logging.getLogger("streaming.client")

_ids = itertools.count(1)
_DONE: Any = object()
_UNTYPED: Any = object()


class MethodRef:
    """``client.<endpoint>.<method>``: call it with the method's arguments by name."""

    def __init__(self, endpoint: EndpointRef, name: str) -> None:
        self.endpoint = endpoint
        self.name = name

    def __call__(
        self,
        *positional: Any,
        credit: int = DEFAULT_CREDIT,
        returns: Any = _UNTYPED,
        **arguments: Any,
    ) -> Call:
        """A :class:`Call` (started when first awaited or iterated). ``credit``: how many
        values of a stream may wait in the client. ``returns``: the method's return type,
        to read its values as (see the module's contract); ``TypeError`` here for a type
        no streaming method has. (These two argument names are taken by the client.)"""
        if positional:  # Serverpod's generated client takes them; the wire has names only
            raise TypeError(
                f"{self.endpoint.name}.{self.name}: pass the arguments by name, as the "
                f"method declares them ({self.endpoint.name}.{self.name}(start=3)), not by "
                "position"
            )
        reader = None if returns is _UNTYPED else ValueReader(returns)
        return Call(self.endpoint._client, self.endpoint.name, self.name, arguments, credit, reader)

    def __repr__(self) -> str:
        return f"<MethodRef {self.endpoint.name}.{self.name}>"


class Call:
    """One call of a streaming method: awaitable, async-iterable, an async context manager."""

    def __init__(
        self,
        client: Client,
        endpoint: str,
        method: str,
        arguments: dict[str, Any],
        credit: int = DEFAULT_CREDIT,
        reader: ValueReader | None = None,
    ) -> None:
        if credit < 1:
            raise ValueError("credit must be at least 1")
        self._client = client
        self._reader = reader
        self.endpoint = endpoint
        self.method = method
        self.credit = credit
        self._args: dict[str, Any] = {}
        self._streams: dict[str, Any] = {}
        for name, value in arguments.items():
            if hasattr(value, "__aiter__"):
                self._streams[name] = value
            else:
                self._args[name] = value
        self.id: str | None = None
        self._link: _Link | None = None
        self._values: deque[Any] = deque()
        self._changed = asyncio.Event()
        self._outcome: tuple[str, Any] | None = None  # ("done", frame args) | ("error", exc)
        self._taken = 0  # values read since the last grant
        self._pumps: list[asyncio.Task[None]] = []
        self._stream_credit: dict[str, int] = dict.fromkeys(self._streams, 0)
        self._stream_changed: dict[str, asyncio.Event] = {
            name: asyncio.Event() for name in self._streams
        }

    def __repr__(self) -> str:
        return f"<Call {self.endpoint}.{self.method} id={self.id}>"

    # -- what a program uses ----------------------------------------------------------

    def __await__(self) -> Generator[Any, None, Any]:
        return self.result().__await__()

    async def result(self) -> Any:
        """The method's value (for a stream: the list of its values)."""
        await self._start()
        try:
            values = []
            while (item := await self._next()) is not _DONE:
                values.append(item)
            assert self._outcome is not None
            args = self._outcome[1]
            return args["value"] if "value" in args else values  # decoded by _receive
        finally:
            self.cancel()  # if it has not ended: the awaiting task was cancelled

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        await self._start()
        try:
            while (item := await self._next()) is not _DONE:
                yield item
        finally:
            self.cancel()
        if self._outcome is not None and "value" in self._outcome[1]:
            # Its value would be dropped without a word (helper "serverpod12").
            raise TypeError(
                f"{self.endpoint}.{self.method} returns a value, not a stream: await it "
                "instead of iterating it"
            )

    async def __aenter__(self) -> Call:
        await self._start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cancel()

    def cancel(self) -> None:
        """Stop the call (does nothing once it has ended): the server closes its generator.
        A reader still iterating sees the end of the stream."""
        if self.id is None or self._outcome is not None:
            return
        self._end(("done", {}))
        link = self._link
        if link is not None:
            self._client._send_soon(link, encode_method("cancel", self.id))

    # -- the machinery ----------------------------------------------------------------

    async def _start(self) -> None:
        if self.id is not None:
            return
        link = self._client._link
        if link is None or not link.connected:
            raise NotConnected(
                f"Cannot call {self.endpoint}.{self.method}: the streaming connection is "
                f"{self._client.streaming_connection_status}."
            )
        self.id = f"c{next(_ids)}"
        self._link = link
        arguments = {name: json.loads(value_json(v)) for name, v in self._args.items()}
        link.calls[self.id] = self
        text = encode_method(
            "call",
            self.id,
            endpoint=self.endpoint,
            method=self.method,
            args=arguments,
            credit=self.credit,
            streams=list(self._streams),
        )
        try:
            await link.send(text)
        except ConnectionClosed as exc:
            self._end(("error", NotConnected(f"The connection closed ({exc}).")))
            return
        for name, iterable in self._streams.items():
            task = asyncio.ensure_future(self._pump(link, name, iterable))
            self._pumps.append(task)

    async def _next(self) -> Any:
        while True:
            if self._values:
                value = self._values.popleft()
                self._taken += 1
                if self._taken >= max(1, self.credit // 2) and self._outcome is None:
                    taken, self._taken = self._taken, 0
                    await self._send(encode_method("credit", self.id or "", n=taken))
                if isinstance(value, _Undecodable):
                    raise value.error
                return value
            if self._outcome is not None:
                kind, payload = self._outcome
                if kind == "error":
                    raise payload
                return _DONE
            self._changed.clear()
            await self._changed.wait()

    async def _send(self, text: str) -> None:
        link = self._link
        if link is None:
            return
        try:
            await link.send(text)
        except ConnectionClosed:
            pass  # the reader fails the call

    async def _pump(self, link: _Link, name: str, iterable: Any) -> None:
        """Send ``iterable``'s values as the input stream ``name``, within the credit."""
        call_id = self.id or ""
        iterator = aiter(iterable)
        try:
            while True:
                while self._stream_credit[name] <= 0:
                    self._stream_changed[name].clear()
                    await self._stream_changed[name].wait()
                try:
                    value = await anext(iterator)
                except StopAsyncIteration:
                    await self._send(encode_method("stream_end", call_id, stream=name))
                    return
                except Exception as exc:
                    message = str(exc) or type(exc).__name__
                    await self._send(
                        encode_method("stream_error", call_id, stream=name, message=message)
                    )
                    return
                self._stream_credit[name] -= 1
                await self._send(
                    encode_method("stream_value", call_id, value_json(value), stream=name)
                )
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                await aclose()

    def _receive(self, frame: MethodFrame) -> None:
        """A frame of this call from the server (the client's reader calls this)."""
        if self._outcome is not None:
            return
        command, args = frame.command, frame.args
        if command == "value":
            if len(self._values) >= self.credit:
                # Past the credit granted (what waits here is at most the credit when the
                # server keeps to it): a server that does not must not fill this process.
                self._end(
                    (
                        "error",
                        CallFailed(
                            "rate_limited",
                            f"The server sent more than the {self.credit} values of credit "
                            "granted; the call was cancelled.",
                            endpoint=self.endpoint,
                            id=frame.id,
                        ),
                    )
                )
                link = self._link
                if link is not None:
                    self._client._send_soon(link, encode_method("cancel", frame.id))
                return
            try:
                reader = self._reader
                item = from_wire(args["value"]) if reader is None else reader.item(args["value"])
            except (StreamingError, RecursionError) as exc:
                self._values.append(_Undecodable(self._undecodable(exc)))
            else:
                self._values.append(item)
        elif command == "done":
            if "value" in args:
                try:
                    reader = self._reader
                    raw = args["value"]
                    value = from_wire(raw) if reader is None else reader.value(raw)
                except (StreamingError, RecursionError) as exc:
                    self._end(("error", self._undecodable(exc)))
                    return
                args = {**args, "value": value}
            self._end(("done", args))
        elif command == "fail":
            self._end(("error", _failure(self.endpoint, frame.id, args)))
        elif command == "credit":
            name = args.get("stream")
            if name in self._stream_credit:
                self._stream_credit[name] += args["n"]
                self._stream_changed[name].set()
        self._changed.set()

    def _undecodable(self, exc: StreamingError | RecursionError) -> UndecodableMessage:
        if isinstance(exc, RecursionError):  # a hostile server's 950 levels (attacker12)
            return UndecodableMessage(
                "invalid_message", "The value is nested too deeply.", endpoint=self.endpoint
            )
        return UndecodableMessage(
            exc.code, exc.detail, endpoint=self.endpoint, errors=getattr(exc, "errors", None)
        )

    def _lost(self) -> None:
        """The connection ended before the call did."""
        self._end(("error", NotConnected("The connection closed before the call ended.")))

    def _end(self, outcome: tuple[str, Any]) -> None:
        if self._outcome is not None:
            return
        self._outcome = outcome
        self._changed.set()
        link = self._link
        if link is not None and self.id is not None and link.calls.get(self.id) is self:
            del link.calls[self.id]
        for task in self._pumps:
            if task is not asyncio.current_task():
                task.cancel()


class _Undecodable:
    __slots__ = ("error",)

    def __init__(self, error: UndecodableMessage) -> None:
        self.error = error


def _failure(endpoint: str, call_id: str, args: dict[str, Any]) -> Exception:
    message = args["message"]
    exception = args.get("exception")
    if args["code"] == "exception" and isinstance(exception, dict):
        exc = SerializableException.from_wire(message, exception)
        if exc is not None:
            return exc
    errors = args.get("errors")
    return CallFailed(
        args["code"],
        message,
        endpoint=endpoint,
        id=call_id,
        errors=errors if isinstance(errors, list) else None,
        exception=exception if isinstance(exception, dict) else None,
    )


def deliver(link: _Link, frame: MethodFrame) -> None:
    """Hand a call frame from the server to its call (frames of ended calls are ignored)."""
    call = link.calls.get(frame.id)
    if call is not None:
        call._receive(frame)


#: The call id of a server's method frame, read off its start when the frame as a whole
#: cannot be decoded (the server writes ``command``, then ``args`` with ``id`` first).
_CALL_FRAME = re.compile(
    r'\{"command": ?"(?:value|done|fail)", ?"args": ?\{"id": ?"([^"\\]{1,128})"'
)


def undecodable(link: _Link, text: str, error: UndecodableMessage) -> None:
    """A frame from the server that could not be decoded at all: if it is a call's (by
    its start), the call fails with ``error`` instead of waiting for ever for a frame
    that came (helper "attacker12": a value nested 950 levels deep)."""
    found = _CALL_FRAME.match(text[:256])
    call = link.calls.get(found.group(1)) if found else None
    if call is not None:
        call._end(("error", error))


def refused(link: _Link, error: ServerError) -> None:
    """The server refused a frame of a call at the edge (``error`` with the call's id, such
    as ``rate_limited``): the call, or a credit it needed, was lost. It ends with
    :class:`CallFailed` of that code, and is cancelled on the server (if it started there)."""
    call_id = error.id
    call = link.calls.get(call_id) if call_id is not None else None
    if call is None or call_id is None:
        return
    call._end(("error", CallFailed(error.code, error.message, call.endpoint, call_id)))
    call._client._send_soon(link, encode_method("cancel", call_id))


def link_lost(link: _Link) -> None:
    """The connection ended: every call in progress on it raises :class:`NotConnected`."""
    for call in list(link.calls.values()):
        call._lost()
