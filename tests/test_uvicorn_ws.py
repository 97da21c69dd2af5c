"""streaming.uvicorn_ws in one process: its fallbacks. The protocol itself is held to RFC 6455
over real sockets by tests/e2e/test_ws_conformance.py, and serves every uvicorn test of the
end-to-end suite (tests/support/servers.py)."""

from __future__ import annotations

import logging
import os
import re

import pytest
from uvicorn.config import Config
from uvicorn.protocols.websockets.auto import AutoWebSocketsProtocol
from uvicorn.server import ServerState

from streaming import uvicorn_ws
from streaming.uvicorn_ws import WebSocketProtocol


async def app(scope, receive, send):  # pragma: no cover - never called here
    pass


@pytest.fixture
def fresh_check():
    WebSocketProtocol._checked = None
    yield
    WebSocketProtocol._checked = None


def loaded_config() -> Config:
    config = Config(app, ws="streaming.uvicorn_ws:WebSocketProtocol")
    config.load()
    return config


async def test_uvicorn_builds_this_protocol_from_its_import_path(fresh_check):
    config = loaded_config()
    assert config.ws_protocol_class is WebSocketProtocol
    protocol = config.ws_protocol_class(config=config, server_state=ServerState(), app_state={})
    assert type(protocol) is WebSocketProtocol


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


async def test_a_uvicorn_without_what_it_reads_gets_its_own_protocol(fresh_check):
    config = loaded_config()
    del config.ws_max_queue  # as if a future uvicorn had renamed it
    records = Records()  # uvicorn's logging config does not propagate to caplog
    uvicorn_ws.logger.addHandler(records)
    try:
        protocol = WebSocketProtocol(config=config, server_state=ServerState(), app_state={})
    finally:
        uvicorn_ws.logger.removeHandler(records)
    assert type(protocol) is AutoWebSocketsProtocol
    assert any("lacks Config.ws_max_queue" in line for line in records.lines), records.lines


def test_every_attribute_it_reads_is_checked():
    """What the protocol reads of uvicorn is what ``_missing`` checks, no more, no less."""
    with open(uvicorn_ws.__file__) as f:
        source = f.read()
    read_config = set(re.findall(r"config\.(\w+)", source)) - {"load"}
    read_state = set(re.findall(r"_server_state\.(\w+)", source))
    assert read_config == set(uvicorn_ws.CONFIG_ATTRS)
    assert read_state == set(uvicorn_ws.SERVER_STATE_ATTRS)


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 7, 8, 125, 126, 65535, 65536, 1 << 20])
def test_the_pure_python_mask_matches_websockets_c_one(size):
    assert uvicorn_ws._c_apply_mask is not None, "websockets' C extension is a dependency"
    data, mask = os.urandom(size), os.urandom(4)
    assert uvicorn_ws._py_apply_mask(data, mask) == bytes(uvicorn_ws._c_apply_mask(data, mask))
    assert uvicorn_ws._py_apply_mask(uvicorn_ws._py_apply_mask(data, mask), mask) == data


def test_a_close_reason_is_cut_at_a_character_within_125_bytes():
    payload = uvicorn_ws._close_payload(4002, "é" * 100)
    assert len(payload) <= 125
    assert payload[:2] == (4002).to_bytes(2, "big")
    assert payload[2:].decode() == "é" * 61


async def test_cancelling_one_receive_leaves_another_waiting(fresh_check):
    """Two tasks await ``receive``; one is cancelled; the other still gets the next message.
    A real socket pair carries a real handshake and frame to the protocol."""
    import asyncio
    import socket

    from streaming.uvicorn_ws import BINARY, _frame

    received: asyncio.Future = asyncio.get_running_loop().create_future()
    accepted = asyncio.Event()
    waiting: list[asyncio.Task] = []

    async def two_receivers(scope, receive, send):
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        waiting.extend([asyncio.create_task(receive()), asyncio.create_task(receive())])
        accepted.set()
        received.set_result(await waiting[1])

    config = Config(two_receivers, ws="streaming.uvicorn_ws:WebSocketProtocol")
    config.load()
    server_side, client_side = socket.socketpair()
    loop = asyncio.get_running_loop()
    await loop.connect_accepted_socket(
        lambda: WebSocketProtocol(config=config, server_state=ServerState(), app_state={}),
        server_side,
    )
    reader, writer = await asyncio.open_connection(sock=client_side)
    try:
        writer.write(
            b"GET / HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\n"
            b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
        )
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(
            b"HTTP/1.1 101"
        )
        await asyncio.wait_for(accepted.wait(), 5)
        # Both receive tasks ran before the event's waiter (FIFO): both wait on the protocol.
        assert all(t.get_coro().cr_await is not None for t in waiting)
        waiting[0].cancel()
        masked = bytearray(_frame(BINARY, b"hi"))
        masked[1] |= 0x80
        writer.write(bytes(masked[:2]) + b"\0\0\0\0" + bytes(masked[2:]))  # zero mask
        message = await asyncio.wait_for(received, 5)
        assert message == {"type": "websocket.receive", "bytes": b"hi"}
        assert waiting[0].cancelled()
    finally:
        writer.close()
