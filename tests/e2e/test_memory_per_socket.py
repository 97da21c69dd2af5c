"""Idle memory per socket (issue 16, "Connections"), against a real uvicorn process.

The demo project as shipped (its endpoints, its ``StreamingAuthMiddlewareStack``) serves
``SOCKETS`` sockets, each authenticated with its own user's DRF token and left idle
once its handshake is complete (which waits for the endpoints' ``stream_opened``,
docs/protocol.md) and a ping has been answered. The server's Python heap growth over
those sockets (tracemalloc, by the file of each allocation, read through the
test-only memory view of tests/e2e_app/views.py) must stay under:

* ``STREAMING_LIMIT`` bytes per socket allocated by Streampod's own code (``streaming/``
  but its WebSocket protocol):
  before issue 16's work an idle socket's lane, outbox, bus tables and auth scope copy
  held 9.5 KB (an eager deque in each lane and outbox, an ``asyncio.Event`` per bus
  channel, a set per listener and per owner, four scope copies);
* ``PROTOCOL_LIMIT`` bytes per socket for the WebSocket protocol the production command
  runs (``--ws streaming.uvicorn_ws:WebSocketProtocol``, with what uvicorn and websockets
  allocate): uvicorn's own protocol, on websockets, held 18.5 KB;
* ``TOTAL_LIMIT`` bytes per socket in all (uvicorn, websockets, channels and Django
  included): 35 KB before issue 16, 27.8 KB under uvicorn's own protocol.

``python -m bench.connections --memprobe`` measures the same at 2,000 sockets.
"""

from __future__ import annotations

import asyncio
import json
import textwrap

import httpx
import pytest
import websockets

from tests.e2e.test_memory_churn import memory, settled
from tests.support.servers import ROOT, SERVERS

SOCKETS = 300
WARM_UP = 40
STREAMING_LIMIT = 7 * 1024
PROTOCOL_LIMIT = 6 * 1024
TOTAL_LIMIT = 20 * 1024
PROTOCOL = "streaming/uvicorn_ws.py"


async def open_idle(url: str, key: str) -> websockets.ClientConnection:
    """A socket whose handshake is complete (its endpoints are open) and whose ping
    was answered."""
    ws = await websockets.connect(
        url,
        additional_headers={"Authorization": key},
        compression=None,
        ping_interval=None,
        open_timeout=120,
    )
    await ws.send(json.dumps({"command": "ping"}))
    reply = json.loads(await asyncio.wait_for(ws.recv(), 120))
    assert reply.get("command") == "pong", reply
    return ws


@pytest.mark.e2e
@pytest.mark.timeout(600)
async def test_idle_socket_memory_stays_small(tmp_path, transactional_db):
    from asgiref.sync import sync_to_async
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    def make_users() -> list[str]:
        User = get_user_model()
        users = User.objects.bulk_create(
            [User(username=f"idle-{n}", password="!") for n in range(SOCKETS + WARM_UP)]
        )
        tokens = Token.objects.bulk_create([Token(user=u, key=Token.generate_key()) for u in users])
        return [f"Token {t.key}" for t in tokens]

    keys = await sync_to_async(make_users)()
    # The demo project (its endpoints only), plus the test-only memory view's URL.
    (tmp_path / "idle_settings.py").write_text(
        textwrap.dedent(
            """\
            from streampod_project.settings import *  # noqa: F403

            ROOT_URLCONF = "tests.e2e_app.urls"
            STREAMING = {**STREAMING, "OPEN_TIMEOUT": 120.0}  # noqa: F405
            """
        )
    )
    env = {"PYTHONPATH": f"{tmp_path}:{ROOT}", "DJANGO_SETTINGS_MODULE": "idle_settings"}
    server = await asyncio.to_thread(SERVERS["uvicorn"](env=env).start)
    sockets: list[websockets.ClientConnection] = []
    try:
        async with httpx.AsyncClient(base_url=server.http_url) as http:
            await memory(http)  # the first HTTP request's one-time cost (test_memory_churn)
            warm = await asyncio.gather(*(open_idle(server.ws_url, k) for k in keys[:WARM_UP]))
            await asyncio.gather(*(ws.close() for ws in warm))
            await settled(http)
            await memory(http, trace="start", frames="1")
            for first in range(WARM_UP, WARM_UP + SOCKETS, 50):
                sockets += await asyncio.gather(
                    *(open_idle(server.ws_url, k) for k in keys[first : first + 50])
                )
            traced = (await memory(http, trace="diff", top="1000"))["trace"]
            await memory(http, trace="stop")
    except BaseException:
        print("uvicorn output:\n" + "\n".join(server.logs().splitlines()[-80:]))
        raise
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
        await asyncio.to_thread(server.stop)

    def where(f: dict) -> str:
        w = f["where"]
        if w == PROTOCOL or "/uvicorn/protocols/websockets/" in w or "/websockets/" in w:
            return "protocol"
        return "streaming" if w.startswith("streaming/") else "other"

    sums = {"streaming": 0, "protocol": 0, "other": 0}
    for f in traced["files"]:
        sums[where(f)] += f["size_diff"]
    per_socket = {
        "streaming": sums["streaming"] / SOCKETS,
        "protocol": sums["protocol"] / SOCKETS,
        "total": traced["total_diff"] / SOCKETS,
    }
    print(json.dumps({"per_socket": per_socket, "files": traced["files"][:25]}, indent=1))
    assert per_socket["streaming"] < STREAMING_LIMIT, per_socket
    assert per_socket["protocol"] < PROTOCOL_LIMIT, per_socket
    assert per_socket["total"] < TOTAL_LIMIT, per_socket
