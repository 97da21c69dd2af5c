"""A client that stops reading costs the server bounded memory, under daphne and uvicorn.

The client opens a socket with a small receive buffer and a one-frame read queue,
asks ``FloodEndpoint`` for 2,000 frames of 16 KB (32 MB), and stops reading. The
kernel's buffers fill, then the server's write buffer, then the connection's send
queue (16 frames, tests/e2e_backpressure_settings.py): the server must refuse
further frames and close with 4013. A second socket, listening on a room, gets the
endpoint's report of how many frames the server accepted; only then does the
stalled client read again: what was buffered, then the 4013 close.

Without flow control daphne would take all 2,000 frames into Twisted's buffer
(``accepted == 2000``) and deliver them all.
"""

from __future__ import annotations

import asyncio
import json
import socket
import uuid

import pytest
import websockets
from websockets.asyncio.client import connect

from tests.support.servers import DaphneServer, UvicornServer

COUNT = 2000
SIZE = 16_000


def frame(endpoint, class_name, **data):
    return json.dumps({"endpoint": endpoint, "object": {"className": class_name, "data": data}})


@pytest.fixture(params=["daphne", "uvicorn"], scope="module")
def flood_server(request, django_db_setup, django_db_blocker):
    cls = DaphneServer if request.param == "daphne" else UvicornServer
    with cls(env={"DJANGO_SETTINGS_MODULE": "tests.e2e_backpressure_settings"}) as srv:
        yield srv


def small_buffer_socket(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16_384)
    sock.connect(("127.0.0.1", port))
    return sock


async def stalling_client(server):
    """A client with a small receive buffer that reads nothing unless asked to."""
    return await connect(
        server.ws_url,
        sock=small_buffer_socket(server.port),
        max_queue=1,  # the library stops reading the socket after one frame
        ping_interval=None,
        compression=None,  # uvicorn would deflate 16 KB of "x" to a few bytes
    )


async def flood_a_stalled_client(server, observer):
    """``observer`` joins a room; a :func:`stalling_client` asks for the flood, reported
    to that room. Returns the stalled client and the report once the flood stopped."""
    room = f"flood-{uuid.uuid4().hex[:8]}"
    await observer.send(frame("room", "RoomPost", room=room, text="/join"))
    await until(observer, lambda m: m.get("object", {}).get("className") == "Echo")
    stalled = await stalling_client(server)
    await stalled.send(frame("flood", "Flood", count=COUNT, size=SIZE, report_to=f"room:{room}"))
    report = await until(observer, lambda m: m.get("object", {}).get("className") == "FloodReport")
    return stalled, report


async def until(ws, predicate, limit=50):
    for _ in range(limit):
        message = json.loads(await ws.recv())
        if predicate(message):
            return message
    raise AssertionError("not received")


async def test_client_that_stops_reading_is_closed_with_4013(flood_server):
    async with connect(flood_server.ws_url) as observer:
        stalled, report = await flood_a_stalled_client(flood_server, observer)
        try:
            accepted = report["object"]["data"]["accepted"]
            # The server stopped taking frames long before 2,000 (32 MB).
            assert accepted < COUNT // 2, report

            received = 0
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    message = json.loads(await stalled.recv())
                    if message.get("endpoint") != "flood":
                        continue  # what other endpoints sent on open (whoami...)
                    assert message["object"]["data"]["n"] == received  # in order, no gap
                    received += 1
            if closed.value.rcvd is None:
                # daphne (autobahn) drops the connection 1 s after its close frame if the
                # client has not answered it (closeHandshakeTimeout): a client that takes
                # longer to read what was buffered before it (a loaded machine) sees the
                # connection dropped, without the 4013 (1 run in 30 here). uvicorn with
                # Streampod's protocol waits CLOSE_TIMEOUT (10 s).
                assert flood_server.name == "daphne", "closed without a close frame"
            else:
                assert closed.value.rcvd.code == 4013
            # Nothing beyond what the server accepted; the queued tail was dropped.
            assert received <= accepted
        finally:
            await stalled.close()

        # The server and the other socket are unharmed.
        await observer.send(frame("echo", "Echo", text="still here"))
        echoed = await until(observer, lambda m: m.get("endpoint") == "echo")
        assert echoed["object"]["data"]["text"] == "still here"


async def test_a_client_that_never_reads_again_is_let_go_at_once(flood_server):
    """Seen (an attacker's try, uvicorn with Streampod's protocol): the 4013 was queued
    behind a frame waiting for room in the server's write buffer, so it went out only once
    the client read again. A client that never does held the socket, its endpoint state and
    its queued results until the keepalive gave up, 40 s later, with 1011 (100 such
    sockets: 411 MB). Expected: the socket is closed (its ``stream_closed`` runs) as soon
    as the queue overflows, whether or not the client ever reads. (daphne's flow control
    lets its close through already.)"""
    async with connect(flood_server.ws_url) as observer:
        stalled, _ = await flood_a_stalled_client(flood_server, observer)
        try:
            # The stalled client reads nothing from here on.
            closed = await asyncio.wait_for(
                until(observer, lambda m: m.get("object", {}).get("data", {}).get("n") == -1),
                10,  # the keepalive would take 40 s (20 s ping interval + 20 s timeout)
            )
            assert closed["object"]["data"]["text"] == "flood socket closed"
        finally:
            stalled.transport.abort()


def tcp_state(local_port: int) -> str | None:
    """The kernel's state (hex, ``/proc/net/tcp``) of this machine's TCP socket bound to
    ``local_port`` on 127.0.0.1: "01" established, "07" closed (reset)..."""
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if int(fields[1].rpartition(":")[2], 16) == local_port:
                return fields[3]
    return None


async def test_a_client_that_never_reads_is_reset_once_its_close_times_out(flood_server):
    """Seen (an attacker's try, uvicorn with Streampod's protocol, clients reading a byte a
    second): after the close timed out, the server closed its socket without a reset, so
    the kernel kept it as an orphan in FIN-WAIT-1 with its send buffer (50 clients: 137 MB,
    60 s later) for as long as the client acknowledged without reading. Expected: the
    connection is reset once the close times out (twice CLOSE_TIMEOUT), its buffers
    freed; the client, which never read, sees its connection gone."""
    from streaming.uvicorn_ws import CLOSE_TIMEOUT

    async with connect(flood_server.ws_url) as observer:
        stalled, _ = await flood_a_stalled_client(flood_server, observer)
        port = stalled.transport.get_extra_info("sockname")[1]
        try:
            await asyncio.wait_for(
                until(observer, lambda m: m.get("object", {}).get("data", {}).get("n") == -1),
                10,
            )  # the socket is closed (4013) and its teardown ran; the client read nothing
            if flood_server.name == "uvicorn":
                # Still established: the close frame is unread. (daphne's autobahn drops the
                # connection, with a reset, 1 s after its close frame: closeHandshakeTimeout.)
                assert tcp_state(port) == "01"
            # CLOSE_TIMEOUT for the client's close reply, CLOSE_TIMEOUT for its side of TCP.
            async with asyncio.timeout(2 * CLOSE_TIMEOUT + 10):
                while tcp_state(port) == "01":  # noqa: ASYNC110 - a kernel state, polled
                    await asyncio.sleep(0.2)
        finally:
            stalled.transport.abort()
