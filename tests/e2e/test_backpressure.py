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


async def until(ws, predicate, limit=50):
    for _ in range(limit):
        message = json.loads(await ws.recv())
        if predicate(message):
            return message
    raise AssertionError("not received")


async def test_client_that_stops_reading_is_closed_with_4013(flood_server):
    room = f"flood-{uuid.uuid4().hex[:8]}"
    async with connect(flood_server.ws_url) as observer:
        await observer.send(frame("room", "RoomPost", room=room, text="/join"))
        await until(observer, lambda m: m.get("object", {}).get("className") == "Echo")

        stalled = await connect(
            flood_server.ws_url,
            sock=small_buffer_socket(flood_server.port),
            max_queue=1,  # the library stops reading the socket after one frame
            ping_interval=None,
            compression=None,  # uvicorn would deflate 16 KB of "x" to a few bytes
        )
        try:
            await stalled.send(
                frame("flood", "Flood", count=COUNT, size=SIZE, report_to=f"room:{room}")
            )
            report = await until(
                observer, lambda m: m.get("object", {}).get("className") == "FloodReport"
            )
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
            assert closed.value.rcvd is not None, "closed without a close frame"
            assert closed.value.rcvd.code == 4013
            # Nothing beyond what the server accepted; the queued tail was dropped.
            assert received <= accepted
        finally:
            await stalled.close()

        # The server and the other socket are unharmed.
        await observer.send(frame("echo", "Echo", text="still here"))
        echoed = await until(observer, lambda m: m.get("endpoint") == "echo")
        assert echoed["object"]["data"]["text"] == "still here"
