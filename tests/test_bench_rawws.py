"""The benchmarks' load client (bench/rawws.py) against real servers.

Every contender's server (the bench ceiling on ``websockets``, Streampod and python-socketio
on uvicorn, Channels on daphne) accepts its handshake and its masked frames and relays a
message between two of its sockets; the ceiling echoes frames across the 7-, 16- and 64-bit
length encodings and pushes back on a client that writes faster than it reads. A
``websockets`` server in the test's own loop sends what none of the contenders does:
fragmented messages, pings, a refused upgrade and a close of its own.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Response

from bench.client import RELAY, Conn, open_conn
from bench.rawws import ConnectionClosed, HandshakeError, RawWebSocket, connect
from bench.servers import ALL, CEILING, ServerProcess

pytestmark = [pytest.mark.e2e]


@pytest.fixture(scope="module")
def ceiling() -> Iterator[ServerProcess]:
    proc = ServerProcess(CEILING, {}).start()
    try:
        yield proc
    finally:
        proc.stop()


def echo_text(size: int) -> str:
    """A ceiling echo frame of exactly ``size`` bytes."""
    head = json.dumps({"type": "echo", "src": 0, "seq": 0, "t": 0.0, "pad": ""})
    return head[:-2] + "x" * (size - len(head)) + '"}'


@pytest.mark.parametrize("key", ["ceiling", "streampod_uvicorn", "socketio", "channels"])
async def test_every_contender_relays_between_two_raw_sockets_and_closes_cleanly(
    key: str,
) -> None:
    proc = await asyncio.to_thread(ServerProcess(ALL[key], {}).start)
    try:
        dialect = ALL[key].dialect()
        sender = await open_conn(dialect, proc.base, 1001, 0)
        receiver = await open_conn(dialect, proc.base, 1002, 0)
        got: asyncio.Future[dict] = asyncio.get_running_loop().create_future()
        closed: list[Conn] = []

        def on_message(conn: Conn, kind: str, data: dict, now: float) -> None:
            if kind == RELAY and not got.done():
                got.set_result(data)

        receiver.start_reader(on_message, closed.append)
        await sender.ws.send(dialect.relay(1002, 7, 3, time.perf_counter()))
        async with asyncio.timeout(10):
            data = await got
        assert (data["src"], data["seq"]) == (7, 3)
        for conn in (sender, receiver):
            await conn.close()
            assert isinstance(conn.ws, RawWebSocket)
            assert conn.ws.close_code == 1000  # the server answered our close frame
        assert closed == [receiver]
    finally:
        await asyncio.to_thread(proc.stop)


async def test_frames_of_every_length_encoding_echo_unchanged(ceiling: ServerProcess) -> None:
    ws = await connect(f"{ceiling.base}/?uid=5", timeout=10)
    assert json.loads(await ws.recv()) == {"type": "ready", "uid": 5}
    for size in (60, 125, 126, 200, 65535, 65536, 70_000, 900_000):
        text = echo_text(size)
        await ws.send(text)
        async with asyncio.timeout(10):
            assert await ws.recv() == text, size
    await ws.close()
    assert ws.close_code == 1000


async def test_a_sender_that_outruns_the_socket_waits_until_it_drains(
    ceiling: ServerProcess,
) -> None:
    """Frames written without waiting until the transport pushes back (``pause_writing``:
    how many depends on how much the kernel's socket buffers take while the server reads),
    then ``send`` returns only once the buffer is below the low-water mark; every echo
    still arrives."""
    ws = await connect(f"{ceiling.base}/?uid=6", timeout=10)
    await ws.recv()  # ready
    text = echo_text(900_000)
    written = 0
    while not ws.paused:
        ws.write(text)
        written += 1
        assert written < 400, "360 MB written and the transport never pushed back"
    assert ws.pauses == 1
    assert ws.transport is not None
    low, high = ws.transport.get_write_buffer_limits()
    assert ws.transport.get_write_buffer_size() > high
    received = 0

    async def read() -> None:
        nonlocal received
        for _ in range(written + 1):
            await ws.recv()
            received += 1

    reader = asyncio.create_task(read())
    async with asyncio.timeout(30):
        await ws.send(echo_text(200))
        assert not ws.paused and ws.transport.get_write_buffer_size() <= low
        await reader
    assert received == written + 1
    await ws.close()


@pytest.fixture
async def odd_server() -> AsyncIterator[str]:
    """A ``websockets`` server that sends what the contenders do not."""

    def refuse(conn: ServerConnection, request: object) -> Response | None:
        if getattr(request, "path", "").startswith("/refuse"):
            return conn.respond(403, "no\n")
        return None

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        await ws.send(ws.request.headers.get("Authorization", "none"))
        await ws.send(["frag", "men", "ted"])  # one text message in three frames
        await ws.send([b"\x00\x01", b"\x02"])  # one binary message in two frames
        pong = await ws.ping(b"are you there")
        await asyncio.wait_for(pong, 5)  # answered by the client's pong
        await ws.send("pong received")
        await ws.close(4001, "bye")

    async with serve(handler, "127.0.0.1", 0, process_request=refuse, compression=None) as srv:
        port = next(iter(srv.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}"


async def test_fragments_pings_headers_and_a_server_close(odd_server: str) -> None:
    ws = await connect(odd_server + "/x?y=1", {"Authorization": "Token abc"}, timeout=10)
    async with asyncio.timeout(10):
        assert await ws.recv() == "Token abc"
        assert await ws.recv() == "fragmented"
        assert await ws.recv() == b"\x00\x01\x02"
        assert await ws.recv() == "pong received"
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.code == 4001
        await ws.close()  # the server ends the TCP connection after our answer
    assert ws.state == "closed" and ws.close_code == 4001
    with pytest.raises(ConnectionClosed):
        await ws.send("too late")


async def test_a_refused_upgrade_raises(odd_server: str) -> None:
    with pytest.raises(HandshakeError, match="403"):
        await connect(odd_server + "/refuse", timeout=10)
