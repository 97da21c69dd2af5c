"""The load client's connections: one WebSocket client for every contender.

Each contender speaks its own envelope around the same fields (:mod:`bench.protocol`);
a :class:`Dialect` builds and parses it, so the workloads (:mod:`bench.workloads`) are
written once. Socket.IO is spoken directly (Engine.IO v4 over a WebSocket: ``0`` open,
``40`` connect, ``42[event, data]``, ``2``/``3`` ping/pong) so that every contender is
driven by the same client code at the same cost per frame.

The socket is :class:`bench.rawws.RawWebSocket`: frames parsed in the protocol's
``data_received`` and handed to the reader's callback synchronously, no task per
connection (the load client shares the machine's cores with the servers, so its cost
per frame is taken from them). ``BENCH_CLIENT=websockets`` in the environment selects
the ``websockets`` library's asyncio client instead (a reader task per connection), the
client of the results before 2026-11-30, for comparing the two.

Connections offer no compression (every server then sends plain frames) and send no
client pings.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from . import rawws
from .protocol import PAD
from .rawws import RawWebSocket

#: "raw" (bench/rawws.py) or "websockets" (the library's asyncio client).
CLIENT = os.environ.get("BENCH_CLIENT", "raw")
WebSocket = RawWebSocket | ClientConnection

# Kinds of parsed frames.
RELAY = "relay"
ECHO = "echo"
READY = "ready"
ERROR = "error"
PING = "ping"
PONG = "pong"  # the answer to an app-level ping (Dialect.app_ping)
OTHER = "other"

Parsed = tuple[str, Any]
OnMessage = Callable[["Conn", str, Any, float], None]

_dumps = json.dumps
_loads = json.loads


class Dialect:
    """How one contender frames the bench messages. Subclasses fill the methods."""

    path = "/"

    def url(self, base: str, uid: int) -> str:
        return f"{base}{self.path}?uid={uid}"

    async def handshake(self, ws: WebSocket) -> None:
        """Return once the server says the connection listens on ``user_<uid>``."""
        await self.wait_for(ws, READY)

    async def wait_for(self, ws: WebSocket, wanted: str) -> None:
        """Read frames until one of kind ``wanted``; an error frame raises."""
        while True:
            kind, _ = self.parse(await ws.recv())
            if kind == wanted:
                return
            if kind == ERROR:
                raise ConnectionError("the server refused the connection")

    def relay(self, to: int, src: int, seq: int, t: float) -> str:
        raise NotImplementedError

    def echo(self, src: int, seq: int, t: float) -> str:
        raise NotImplementedError

    def app_ping(self, src: int) -> tuple[str, str]:
        """An application-level ping and the kind of frame that answers it: an echo
        (the contender's own message loop) unless the protocol has a ping of its own."""
        return self.echo(src, -1, 0.0), ECHO

    def parse(self, raw: str | bytes) -> Parsed:
        raise NotImplementedError


class StreampodDialect(Dialect):
    """Streampod's data frames (``streaming.protocol``) on ``/websocket/``."""

    path = "/websocket/"
    _relay = '{"endpoint":"relay","object":{"className":"BenchRelay","data":'
    _echo = '{"endpoint":"relay","object":{"className":"BenchEcho","data":'

    def relay(self, to: int, src: int, seq: int, t: float) -> str:
        data = {"to": to, "src": src, "seq": seq, "t": t, "pad": PAD}
        return self._relay + _dumps(data) + "}}"

    def echo(self, src: int, seq: int, t: float) -> str:
        return self._echo + _dumps({"src": src, "seq": seq, "t": t, "pad": PAD}) + "}}"

    def app_ping(self, src: int) -> tuple[str, str]:
        """Streampod's protocol ping (docs/protocol.md): answered by the consumer itself."""
        return '{"command":"ping","args":{}}', PONG

    def parse(self, raw: str | bytes) -> Parsed:
        frame = _loads(raw)
        obj = frame.get("object")
        if obj is not None:
            name = obj["className"]
            if name == "BenchRelay":
                return RELAY, obj["data"]
            if name == "BenchEcho":
                return ECHO, obj["data"]
            if name == "BenchReady":
                return READY, obj["data"]
            return OTHER, obj
        command = frame.get("command")
        if command == "error":
            return ERROR, frame.get("args")
        if command == "pong":
            return PONG, None
        return OTHER, frame


class StreampodDemoDialect(StreampodDialect):
    """Streampod serving the demo's own endpoints (``streampod_project.asgi``): they send
    no "ready", and the handshake completes only once every endpoint's channels are
    joined (docs/protocol.md), so one ``ping`` answered is the proof of a usable socket."""

    async def handshake(self, ws: WebSocket) -> None:
        text, wanted = self.app_ping(0)
        await ws.send(text)
        await self.wait_for(ws, wanted)


class JsonDialect(Dialect):
    """``{"type": ..., fields}``: the Channels baseline (``/channels/``) and the ceiling."""

    def __init__(self, path: str) -> None:
        self.path = path

    def relay(self, to: int, src: int, seq: int, t: float) -> str:
        return _dumps({"type": "relay", "to": to, "src": src, "seq": seq, "t": t, "pad": PAD})

    def echo(self, src: int, seq: int, t: float) -> str:
        return _dumps({"type": "echo", "src": src, "seq": seq, "t": t, "pad": PAD})

    def parse(self, raw: str | bytes) -> Parsed:
        frame = _loads(raw)
        return frame.get("type", OTHER), frame


class SocketIODialect(Dialect):
    """Socket.IO v5 over Engine.IO v4, WebSocket transport only."""

    path = "/socket.io/"

    def url(self, base: str, uid: int) -> str:
        return f"{base}{self.path}?EIO=4&transport=websocket&uid={uid}"

    async def handshake(self, ws: WebSocket) -> None:
        opened = await ws.recv()
        if not str(opened).startswith("0"):
            raise ConnectionError(f"expected an Engine.IO open packet, got {opened!r}")
        await ws.send("40")
        while True:
            raw = str(await ws.recv())
            if raw.startswith("40"):
                return  # the connect handler (room entered) ran before this ack
            if raw.startswith("44"):
                raise ConnectionError(f"Socket.IO connect refused: {raw}")
            if raw == "2":
                await ws.send("3")

    def relay(self, to: int, src: int, seq: int, t: float) -> str:
        data = {"to": to, "src": src, "seq": seq, "t": t, "pad": PAD}
        return '42["relay",' + _dumps(data) + "]"

    def echo(self, src: int, seq: int, t: float) -> str:
        return '42["echo",' + _dumps({"src": src, "seq": seq, "t": t, "pad": PAD}) + "]"

    def parse(self, raw: str | bytes) -> Parsed:
        text = raw if isinstance(raw, str) else raw.decode()
        if text.startswith("42"):
            event, data = _loads(text[2:])
            return event, data
        if text == "2":
            return PING, None
        if text.startswith("44") or text.startswith("41") or text == "1":
            return ERROR, text
        return OTHER, text


class Conn:
    """One client connection: its socket, its user id and the index of its server."""

    __slots__ = ("dialect", "reader", "server", "uid", "ws")

    def __init__(self, ws: WebSocket, dialect: Dialect, uid: int, server: int) -> None:
        self.ws = ws
        self.dialect = dialect
        self.uid = uid
        self.server = server
        self.reader: asyncio.Task[None] | None = None

    def start_reader(self, on_message: OnMessage, on_closed: Callable[[Conn], None]) -> None:
        """Hand every frame to ``on_message(conn, kind, data, perf_counter())`` (and
        answer Engine.IO's pings); ``on_closed(conn)`` once the socket is closed."""
        ws = self.ws
        if not isinstance(ws, RawWebSocket):
            self.reader = asyncio.get_running_loop().create_task(self._read(on_message, on_closed))
            return
        parse = self.dialect.parse
        clock = time.perf_counter

        def on_text(raw: Any) -> None:  # called in data_received: one call per frame
            kind, data = parse(raw)
            if kind == PING:
                ws.write("3")
            else:
                on_message(self, kind, data, clock())

        ws.set_receiver(on_text, lambda: on_closed(self))

    async def _read(self, on_message: OnMessage, on_closed: Callable[[Conn], None]) -> None:
        """The ``websockets`` client's reader task."""
        parse = self.dialect.parse
        clock = time.perf_counter
        ws = self.ws
        assert isinstance(ws, ClientConnection)
        try:
            async for raw in ws:
                kind, data = parse(raw)
                if kind == PING:
                    await ws.send("3")
                else:
                    on_message(self, kind, data, clock())
        except Exception:  # a broken socket ends reading; counted below
            pass
        on_closed(self)

    async def close(self) -> None:
        try:
            await self.ws.close()
        except Exception:  # closing a broken socket is not a bench result
            pass
        if self.reader is not None:
            self.reader.cancel()


async def _connect(url: str, headers: dict[str, str] | None) -> WebSocket:
    if CLIENT == "websockets":
        return await connect(
            url,
            additional_headers=headers,
            compression=None,
            ping_interval=None,
            open_timeout=None,
            close_timeout=2,
            max_queue=256,
            max_size=2**20,
            user_agent_header=None,
        )
    return await rawws.connect(url, headers)


async def open_conn(
    dialect: Dialect,
    base: str,
    uid: int,
    server: int,
    timeout: float = 30.0,
    headers: dict[str, str] | None = None,
) -> Conn:
    """Connect and wait for the server's "ready": the socket listens on ``user_<uid>``.

    ``headers``: extra handshake headers (credentials: bench/churn.py).
    """
    async with asyncio.timeout(timeout):
        ws = await _connect(dialect.url(base, uid), headers)
        try:
            await dialect.handshake(ws)
        except BaseException:
            await ws.close()
            raise
    return Conn(ws, dialect, uid, server)


async def open_many(
    dialect: Dialect, bases: list[str], specs: list[tuple[int, int]], concurrency: int = 64
) -> list[Conn]:
    """Open ``(server index, uid)`` connections, ``concurrency`` at a time; raise on a failure."""
    gate = asyncio.Semaphore(concurrency)

    async def one(server: int, uid: int) -> Conn:
        async with gate:
            return await open_conn(dialect, bases[server], uid, server)

    results = await asyncio.gather(*(one(s, u) for s, u in specs), return_exceptions=True)
    conns = [r for r in results if isinstance(r, Conn)]
    failures = [r for r in results if not isinstance(r, Conn)]
    if failures:
        await close_all(conns)
        raise ConnectionError(f"{len(failures)} of {len(specs)} connects failed: {failures[0]!r}")
    return conns


async def close_all(conns: list[Conn], timeout: float = 10.0) -> None:
    """Close every connection (bounded in time; whatever is left is aborted)."""
    try:
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(conn.close() for conn in conns))
    except TimeoutError:
        for conn in conns:
            if conn.ws.transport is not None:
                conn.ws.transport.abort()
            if conn.reader is not None:
                conn.reader.cancel()
