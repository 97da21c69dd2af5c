"""streaming.uvicorn_ws in one process: its fallbacks. The protocol itself is held to RFC 6455
over real sockets by tests/e2e/test_ws_conformance.py, and serves every uvicorn test of the
end-to-end suite (tests/support/servers.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket

import pytest
from uvicorn.config import Config
from uvicorn.protocols.websockets.auto import AutoWebSocketsProtocol
from uvicorn.server import ServerState

from streaming import uvicorn_ws
from streaming.uvicorn_ws import BINARY, WebSocketProtocol


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


@pytest.mark.parametrize("impl", ["h11_impl", "httptools_impl"])
def test_the_http_protocols_pause_flag_it_reads_is_there(impl):
    """What the protocol reads of the HTTP protocol it is upgraded from (a socket that
    starts behind an unread response must start with writing paused): both of uvicorn's
    HTTP protocols keep a ``FlowControl`` as ``flow``, which has ``write_paused``. If uvicorn
    renames either, the protocol starts writable (as uvicorn's own do) and this fails."""
    import importlib.util

    from uvicorn.protocols.http.flow_control import FlowControl

    flow_attr, paused_attr = uvicorn_ws.HTTP_FLOW_ATTRS
    spec = importlib.util.find_spec(f"uvicorn.protocols.http.{impl}")  # httptools: optional
    assert spec is not None and spec.origin is not None
    with open(spec.origin) as f:
        assert f"self.{flow_attr} = FlowControl(transport)" in f.read()

    class Transport:  # FlowControl only keeps it
        pass

    assert getattr(FlowControl(Transport()), paused_attr) is False


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


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A client's frame: FIN, masked with a zero mask (the payload goes as is)."""
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


@contextlib.asynccontextmanager
async def upgraded(app_):
    """``app_`` served by this protocol over a real socket pair, upgraded: ``(protocol,
    reader, writer)``, the client's side a stream."""
    config = Config(app_, ws="streaming.uvicorn_ws:WebSocketProtocol")
    config.load()
    server_side, client_side = socket.socketpair()
    protocols: list[WebSocketProtocol] = []

    def factory() -> WebSocketProtocol:
        protocols.append(WebSocketProtocol(config=config, server_state=ServerState(), app_state={}))
        return protocols[-1]

    await asyncio.get_running_loop().connect_accepted_socket(factory, server_side)
    reader, writer = await asyncio.open_connection(sock=client_side)
    try:
        writer.write(
            b"GET / HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\n"
            b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
        )
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(
            b"HTTP/1.1 101"
        )
        yield protocols[0], reader, writer
    finally:
        writer.close()


async def test_cancelling_one_receive_leaves_another_waiting(fresh_check):
    """Two tasks await ``receive``; one is cancelled; the other still gets the next message.
    A real socket pair carries a real handshake and frame to the protocol."""
    received: asyncio.Future = asyncio.get_running_loop().create_future()
    accepted = asyncio.Event()
    waiting: list[asyncio.Task] = []

    async def two_receivers(scope, receive, send):
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        waiting.extend([asyncio.create_task(receive()), asyncio.create_task(receive())])
        accepted.set()
        received.set_result(await waiting[1])

    async with upgraded(two_receivers) as (_, _reader, writer):
        await asyncio.wait_for(accepted.wait(), 5)
        # Both receive tasks ran before the event's waiter (FIFO): both wait on the protocol.
        assert all(t.get_coro().cr_await is not None for t in waiting)
        waiting[0].cancel()
        writer.write(client_frame(BINARY, b"hi"))
        message = await asyncio.wait_for(received, 5)
        assert message == {"type": "websocket.receive", "bytes": b"hi"}
        assert waiting[0].cancelled()


async def test_a_full_inbox_keeps_only_the_unparsed_rest_of_a_large_read(fresh_check):
    """A 4 MiB message fills the inbox; a small frame came in the same read behind it and
    must wait, unparsed, until the app reads. What waits is that frame's bytes, not the
    4 MiB buffer it came in (which the inbox holds a copy of already): a socket holds one
    large message, not two. The message is then delivered whole, the frame after it."""
    big = os.urandom(4 * 1024 * 1024)
    go: asyncio.Future = asyncio.get_running_loop().create_future()
    done = asyncio.Event()
    got: list[dict] = []

    async def slow_reader(scope, receive, send):
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        await go  # reads nothing until told
        got.extend([await receive(), await receive()])
        done.set()

    async with upgraded(slow_reader) as (protocol, _reader, _writer):
        after = client_frame(BINARY, b"after")
        # One read holding the large frame and the small one (as a transport delivers a
        # frame assembled over several reads, with what followed it in the last).
        protocol.data_received(client_frame(BINARY, big) + after)
        assert protocol._rest is not None, "the small frame was parsed into a full inbox"
        data, pos = protocol._rest
        assert bytes(data[pos:]) == after
        assert len(data) < 64 * 1024, f"the deferred rest keeps a {len(data)}-byte buffer"
        go.set_result(None)
        await asyncio.wait_for(done.wait(), 10)
        assert got == [
            {"type": "websocket.receive", "bytes": big},
            {"type": "websocket.receive", "bytes": b"after"},
        ]


async def test_the_pings_of_one_read_get_one_pong_for_the_last(fresh_check):
    """RFC 6455 5.5.3: pings not yet answered may get one pong, for the most recent. One
    read of three pings and a text frame: one pong (the third ping's payload), the text
    delivered; a flood of pings costs one write a read, not one a ping."""
    from streaming.uvicorn_ws import PING, PONG, TEXT

    got: asyncio.Future = asyncio.get_running_loop().create_future()

    async def reader(scope, receive, send):
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        got.set_result(await receive())
        await receive()  # open until the test ends

    async with upgraded(reader) as (protocol, reader_, _writer):
        protocol.data_received(
            client_frame(PING, b"one") + client_frame(PING, b"two") + client_frame(PING, b"three")
            + client_frame(TEXT, b"hi")
        )  # fmt: skip
        assert await asyncio.wait_for(got, 5) == {"type": "websocket.receive", "text": "hi"}
        head = await asyncio.wait_for(reader_.readexactly(2), 5)
        assert head == bytes([0x80 | PONG, 5])
        assert await asyncio.wait_for(reader_.readexactly(5), 5) == b"three"
        protocol.data_received(client_frame(PING, b"four"))  # the next read: its own pong
        pong = await asyncio.wait_for(reader_.readexactly(6), 5)
        assert pong == bytes([0x80 | PONG, 4]) + b"four"


async def test_a_read_of_many_frames_is_parsed_over_several_loop_turns(fresh_check):
    """FRAMES_PER_TURN frames are parsed at a turn of the event loop; the rest of the read
    waits, reading paused, for the next turn (a ping flood cannot hold the process). A read
    of 3 turns' worth of pings and then a text frame: a pong a turn, the last for the last
    ping, and the text delivered after them."""
    from streaming.uvicorn_ws import _PAUSED_TURN, FRAMES_PER_TURN, PING, PONG, TEXT

    count = FRAMES_PER_TURN * 3 + 7
    got: asyncio.Future = asyncio.get_running_loop().create_future()

    async def reader(scope, receive, send):
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        got.set_result(await receive())

    async with upgraded(reader) as (protocol, reader_, _writer):
        pings = b"".join(client_frame(PING, b"%04d" % i) for i in range(count))
        protocol.data_received(pings + client_frame(TEXT, b"end"))
        assert protocol._paused & _PAUSED_TURN and protocol._rest is not None
        assert await asyncio.wait_for(got, 5) == {"type": "websocket.receive", "text": "end"}
        pongs = [await asyncio.wait_for(reader_.readexactly(6), 5) for _ in range(4)]
    assert all(p[:2] == bytes([0x80 | PONG, 4]) for p in pongs), pongs
    assert [p[2:] for p in pongs] == [
        b"%04d" % (FRAMES_PER_TURN * k - 1) for k in (1, 2, 3)
    ] + [b"%04d" % (count - 1)]


async def test_an_app_receiving_in_a_loop_gets_a_reads_frames_over_several_turns(fresh_check):
    """An app that calls ``receive`` in a loop (each returns without suspending while frames
    wait) and a read of many small frames: the frames still reach it at most
    FRAMES_PER_TURN a turn of the event loop, so the other sockets get theirs.

    Seen: ``receive`` parsed the rest of the read each time the inbox drained to half, with
    a fresh budget each time: all 2,048 frames reached the app in one turn (43,690 for a
    256 KiB read of empty frames; another client's pings waited 20 to 50 ms a flood).
    Expected: at most FRAMES_PER_TURN before a callback scheduled after the read; all
    delivered, in order."""
    from streaming.uvicorn_ws import FRAMES_PER_TURN, TEXT

    count = FRAMES_PER_TURN * 8
    got: list[str] = []
    accepted = asyncio.Event()
    done = asyncio.Event()

    async def loop_reader(scope, receive, send):
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        accepted.set()
        while len(got) < count:
            got.append((await receive())["text"])
        done.set()
        await receive()  # open until the test ends

    async with upgraded(loop_reader) as (protocol, _reader, _writer):
        await asyncio.wait_for(accepted.wait(), 5)
        seen: asyncio.Future = asyncio.get_running_loop().create_future()
        protocol.data_received(b"".join(client_frame(TEXT, b"%d" % i) for i in range(count)))
        asyncio.get_running_loop().call_soon(lambda: seen.set_result(len(got)))
        assert await asyncio.wait_for(seen, 5) <= FRAMES_PER_TURN
        await asyncio.wait_for(done.wait(), 5)
    assert got == [str(i) for i in range(count)]


async def test_reading_resumed_behind_its_back_is_paused_again(fresh_check):
    """uvicorn's HTTP protocol resumes the transport at the end of a response to a request
    pipelined before the upgrade (its ``FlowControl`` was paused by the request after it),
    while the socket has paused reading for an app that does not read.

    Seen (uvicorn --http httptools, a client flooding 60 KB frames): reading stayed on, the
    unparsed rest grew 10 MB/s (74 MiB in 6.6 s) and was copied whole at every read.
    Expected: the next read pauses reading again; what it brought waits unparsed."""
    from streaming.uvicorn_ws import _PAUSED_INBOX, BINARY

    accepted = asyncio.Event()

    async def deaf(scope, receive, send):
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        accepted.set()
        await asyncio.Event().wait()  # reads nothing more

    async with upgraded(deaf) as (protocol, _reader, _writer):
        await asyncio.wait_for(accepted.wait(), 5)
        frame = client_frame(BINARY, b"x" * 60_000)
        while not protocol._paused & _PAUSED_INBOX:
            protocol.data_received(frame)
        transport = protocol._transport
        assert not transport.is_reading()
        transport.resume_reading()  # what uvicorn's FlowControl.resume_reading() does
        protocol.data_received(frame)
        assert not transport.is_reading(), "reading stays on for a client the app does not read"
        data, pos = protocol._rest
        assert len(data) - pos <= 2 * len(frame)


def test_it_knows_the_outboxs_mark():
    """The protocol does not import Streampod's outbox (it imports nothing of Django's):
    the key the outbox marks its sends with is spelt twice, and must agree."""
    from streaming import outbox

    assert uvicorn_ws._OUTBOX_KEY == outbox.OUTBOX_KEY
