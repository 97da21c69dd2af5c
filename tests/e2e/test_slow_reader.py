"""A client that reads slowly but steadily keeps its socket under uvicorn with Streampod's
protocol, however far behind it is.

Seen (helper "attacker7", 2026-12-01): a client that asked a streaming method for more
than it could read at once, and read on at about 35 KB/s, was closed by the keepalive after
40-50 s (1006 at the client): while its write buffer is full the server reads nothing from
it (so a client that never reads cannot grow the pongs), so its pong sat unread, and the
server saw no sign of life: the kernel's send buffer had grown to 4 MB and woke the
server's writes only once a third of it was free, a minute at that pace. Here the
keepalive runs every second and the client reads about 30 KB/s for 15 s behind a backlog
of 28 MB: before the fix it was failed at the first ping and saw 1006 12 s later.
"""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
from websockets.asyncio.client import connect

from tests.support.servers import UvicornServer

PING = ["--ws-ping-interval", "1", "--ws-ping-timeout", "1"]


@pytest.fixture(scope="module")
def server(django_db_setup):
    env = {"DJANGO_SETTINGS_MODULE": "tests.e2e_methods_settings"}
    with UvicornServer(env=env, args=PING) as srv:
        yield srv


async def test_a_slow_but_steady_reader_outlives_the_keepalive(server):
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    async with connect(server.ws_url, sock=sock, max_queue=1, ping_interval=None) as ws:
        for i in range(256):  # 256 x 1,024 values (MAX_CREDIT): a backlog of ~28 MB
            call = {"id": f"e{i}", "endpoint": "methods", "method": "endless",
                    "args": {"name": f"slow{i}"}, "credit": 1024}  # fmt: skip
            await ws.send(json.dumps({"command": "call", "args": call}))
        loop = asyncio.get_running_loop()
        until = loop.time() + 15
        values = 0
        while loop.time() < until:
            for _ in range(10):
                frame = json.loads(await ws.recv())  # raises once the socket is closed
                if frame.get("command") == "value":  # (the endpoints' greetings are not)
                    values += 1
            await asyncio.sleep(0.03)  # the reader's pace: ~300 values (~30 KB) a second
        assert values > 3000
    assert "keepalive ping timeout" not in server.logs()
