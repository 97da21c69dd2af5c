"""Fake servers for client tests: what a Streampod server does not do on demand."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

PONG = json.dumps({"command": "pong", "args": {}})


def _serving(
    on_frame: Callable[[Any, dict[str, Any]], Awaitable[None]],
) -> Callable[[Any], Awaitable[None]]:
    """A ``websockets`` handler that answers pings and hands every other frame to
    ``on_frame(ws, frame)``."""

    async def handler(ws: Any) -> None:
        async for text in ws:
            frame = json.loads(text)
            if frame["command"] == "ping":
                await ws.send(PONG)
            else:
                await on_frame(ws, frame)

    return handler


def credit_ignoring(
    cancelled: asyncio.Future[str], values: int = 1000
) -> Callable[[Any], Awaitable[None]]:
    """A ``websockets`` handler that answers pings and sends every call ``values`` values
    at once, whatever credit the client granted; the id of the first ``cancel`` it gets
    goes to ``cancelled``."""

    async def on_frame(ws: Any, frame: dict[str, Any]) -> None:
        if frame["command"] == "call":
            call_id = frame["args"]["id"]
            for i in range(values):
                value = {"command": "value", "args": {"id": call_id, "value": i}}
                await ws.send(json.dumps(value))
        elif frame["command"] == "cancel" and not cancelled.done():
            cancelled.set_result(frame["args"]["id"])

    return _serving(on_frame)


def advising_restarts(reasons: list[str]) -> Callable[[Any], Awaitable[None]]:
    """A ``websockets`` handler that answers the first ping, then closes with 1012 and the
    next of ``reasons`` (a restart's advice, docs/protocol.md); once they are used up,
    it keeps the connection open."""
    left = iter(reasons)

    async def handler(ws: Any) -> None:
        await ws.recv()
        await ws.send(PONG)
        reason = next(left, None)
        if reason is None:
            await ws.wait_closed()
            return
        await ws.close(1012, reason)

    return handler


def many_endpoints(count: int) -> Callable[[Any], Awaitable[None]]:
    """A ``websockets`` handler that answers pings and, after the first, sends a data frame
    for each of ``count`` endpoint names (``e0``, ``e1``...: ``{"n": i}``), then one more on
    ``e0`` (``{"n": -1}``): once a client has that, it has handled every frame before it."""

    async def handler(ws: Any) -> None:
        first = True
        async for text in ws:
            if json.loads(text)["command"] != "ping":
                continue
            await ws.send(PONG)
            if first:
                first = False
                for i, n in [*((i, i) for i in range(count)), (0, -1)]:
                    data = {"endpoint": f"e{i}", "object": {"className": "Nx", "data": {"n": n}}}
                    await ws.send(json.dumps(data))

    return handler


def _text_frame(text: str) -> bytes:
    payload = text.encode()
    n = len(payload)
    head = bytes([0x81, n]) if n < 126 else bytes([0x81, 126]) + n.to_bytes(2, "big")
    return head + payload


async def _handshake_and_pong(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Complete a client's WebSocket handshake by hand, read its first frame (the ping:
    short, masked) and answer it with a pong."""
    request = await reader.readuntil(b"\r\n\r\n")
    key = next(
        line.split(b":", 1)[1].strip()
        for line in request.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key:")
    )
    accept = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest()).decode()
    writer.write(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept.encode() + b"\r\n\r\n"
    )
    head = await reader.readexactly(2)
    await reader.readexactly(4 + (head[1] & 0x7F))
    writer.write(_text_frame(PONG))


async def lingering_closer(connections: list[asyncio.StreamWriter]) -> asyncio.Server:
    """A raw TCP server that answers the client's ping, sends a close frame (1012) and then
    never closes the TCP connection, reading and ignoring what comes: a server or a
    middlebox that loses the end of the closing handshake. Each connection's writer is
    appended to ``connections``."""

    async def linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        await _handshake_and_pong(reader, writer)
        writer.write(bytes([0x88, 2]) + (1012).to_bytes(2, "big"))
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass

    return await asyncio.start_server(linger, "127.0.0.1", 0)


async def deaf_chatter(every: float = 0.02) -> asyncio.Server:
    """A raw TCP server that completes the WebSocket handshake, answers the first frame
    (the client's ping) with a pong, then never reads again while it sends a data frame
    (endpoint ``chat``, ``{"n": i}``) every ``every`` seconds: a server whose loop is stuck
    on reading, or a proxy that stopped forwarding one way. Once its StreamReader's
    buffer is full (64 KiB), asyncio stops reading the socket: the client's frames fill
    the TCP buffers and its sends wait. (``websockets`` servers keep reading.)"""

    async def chat(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _handshake_and_pong(reader, writer)
        i = 0
        try:
            while True:
                data = {"endpoint": "chat", "object": {"className": "Nx", "data": {"n": i}}}
                writer.write(_text_frame(json.dumps(data)))
                await writer.drain()
                i += 1
                await asyncio.sleep(every)  # the chatter's pace, not a synchronisation
        except ConnectionError:
            writer.close()

    return await asyncio.start_server(chat, "127.0.0.1", 0)


_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def oversize_frame(size: int) -> Callable[[Any], Awaitable[None]]:
    """A ``websockets`` handler that answers the first ping, then sends one text frame of
    ``size`` bytes (past a client's ``max_size``) and waits for the close."""

    async def handler(ws: Any) -> None:
        async for text in ws:
            if json.loads(text)["command"] == "ping":
                await ws.send(PONG)
                await ws.send("x" * size)
                break
        await ws.wait_closed()

    return handler


def late_ponger(every: float = 0.02) -> Callable[[Any], Awaitable[None]]:
    """A ``websockets`` handler that reads everything, answers only the first ping, and
    sends a data frame (endpoint ``chat``, ``{"n": i}``) every ``every`` seconds: a busy
    server whose pongs wait behind a backlog of frames on a slow link."""

    async def handler(ws: Any) -> None:
        async def chatter() -> None:
            i = 0
            while True:
                data = {"endpoint": "chat", "object": {"className": "Nx", "data": {"n": i}}}
                await ws.send(json.dumps(data))
                i += 1
                await asyncio.sleep(every)  # the chatter's pace, not a synchronisation

        task = None
        async for text in ws:
            if json.loads(text)["command"] == "ping" and task is None:
                await ws.send(PONG)
                task = asyncio.ensure_future(chatter())
        if task is not None:
            task.cancel()

    return handler


def answering(value_text: str) -> Callable[[Any], Awaitable[None]]:
    """A ``websockets`` handler that answers pings and every call with ``done`` whose
    value is the JSON text ``value_text`` (written as it is: a hostile server's)."""

    async def on_frame(ws: Any, frame: dict[str, Any]) -> None:
        if frame["command"] == "call":
            call_id = json.dumps(frame["args"]["id"])
            await ws.send(f'{{"command": "done", "args": {{"id": {call_id}, '
                          f'"value": {value_text}}}}}')  # fmt: skip

    return _serving(on_frame)
