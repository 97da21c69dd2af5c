"""A path to Redis that stalls (acknowledged, never answered) is given up on, and said.

A proxy between a server and its Redis that stops forwarding but keeps both connections
open and keeps reading (a wedged load balancer, a sidecar, a NAT that lost the
connections' state) satisfies TCP keepalive and ``TCP_USER_TIMEOUT``: the kernel never
gives up (tests/e2e/test_redis_partition.py covers the path that goes silent). Before the
bus watched its own heartbeats, the server behind it went on forever as if subscribed:
posts from other servers reached none of its listeners, nobody was told, and ``/readyz``
said nothing of the bus.

Now the bus sends itself a heartbeat every ``BUS_HEARTBEAT_INTERVAL`` and, when none has
come back for ``BUS_STALL_TIMEOUT``, counts the subscription as stalled: the sockets that
listen are closed with 1012 (their clients reconnect and read what they missed),
``/readyz`` fails its ``bus`` check, and the subscriber connection is dropped and made
again while it lasts, so that the bus recovers once the path
works for new connections, with nothing restarted.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest
import websockets

from tests.e2e.redis_support import connect, join, join_once_served, recv_endpoint, room_post
from tests.support.servers import RedisServer, UvicornServer
from tests.support.stall_proxy import StallProxy

pytestmark = pytest.mark.redis

SETTINGS = "tests.e2e_stall_settings"  # BUS_STALL_TIMEOUT 3 s, heartbeats every 0.5 s


async def _readyz(srv: UvicornServer) -> tuple[int, dict]:
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.get(srv.http_url + "/readyz")
    return response.status_code, response.json()


async def test_a_stalled_path_to_redis_is_given_up_on_told_and_recovered(django_db_setup):
    with (
        RedisServer() as rs,
        StallProxy(rs.port) as proxy,
        UvicornServer(
            env={
                "REDIS_URL": f"redis://127.0.0.1:{proxy.port}/0",
                "DJANGO_SETTINGS_MODULE": SETTINGS,
            }
        ) as a,
        UvicornServer(env={"REDIS_URL": rs.url, "DJANGO_SETTINGS_MODULE": SETTINGS}) as b,
    ):
        room = f"s{uuid.uuid4().hex[:8]}"
        async with connect(b.ws_url) as poster:
            async with connect(a.ws_url) as listener:
                await join(listener, room)
                await poster.send(room_post(room, "before"))
                frame = await recv_endpoint(listener, "room")
                assert frame["object"]["data"]["text"] == "before"

                proxy.stall()
                await poster.send(room_post(room, "during"))  # reaches no one on a
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    while True:  # before: silence, for as long as the proxy holds
                        frame = await recv_endpoint(listener, "room", timeout=30)
                        assert frame["object"]["data"]["text"] != "during", frame
                assert closed.value.rcvd is not None, closed.value
                assert closed.value.rcvd.code == 1012, closed.value

            status, body = await _readyz(a)
            assert status == 503, body
            assert "bus" in body["failed"], body
            assert "heartbeat" in body["checks"]["bus"], body

            proxy.heal()  # new connections go through; the stalled ones stay dead
            again = await join_once_served(a.ws_url, room, within=60)
            try:
                await poster.send(room_post(room, "after"))
                frame = await recv_endpoint(again, "room")
                assert frame["object"]["data"]["text"] == "after"
            finally:
                await again.close()

        deadline = time.monotonic() + 30
        while (ready := await _readyz(a))[0] != 200:
            assert time.monotonic() < deadline, ready
            await asyncio.sleep(0.2)
        assert ready[1]["checks"]["bus"] == "ok"
        assert "stalled" in a.logs(), a.logs()[-3000:]
