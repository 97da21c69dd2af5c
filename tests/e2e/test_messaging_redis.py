"""Messaging across two real daphne processes sharing a real Redis (private redis-server)."""

import asyncio
import uuid

import pytest
import redis

from tests.e2e.redis_support import (
    assert_quiet,
    connect,
    join,
    numsub,
    recv_endpoint,
    room_post,
    wait_numsub,
)

pytestmark = pytest.mark.redis


def room():
    return f"r{uuid.uuid4().hex[:8]}"


async def test_listener_on_a_poster_on_b(cluster):
    _, a, b = cluster
    name = room()
    async with connect(a.ws_url) as listener, connect(b.ws_url) as poster:
        await join(listener, name)
        await poster.send(room_post(name, "hello from b"))
        frame = await recv_endpoint(listener, "room")
        assert frame["object"]["className"] == "RoomPost"
        assert frame["object"]["data"]["text"] == "hello from b"
        await assert_quiet(poster)  # the poster did not join: nothing for it


async def test_listeners_on_both_servers_get_each_post_once_in_order(cluster):
    _, a, b = cluster
    name = room()
    async with connect(a.ws_url) as a1, connect(a.ws_url) as a2, connect(b.ws_url) as b1:
        for ws in (a1, a2, b1):
            await join(ws, name)
        for i in range(50):
            await b1.send(room_post(name, str(i)))
        for ws in (a1, a2, b1):
            texts = [(await recv_endpoint(ws, "room"))["object"]["data"]["text"] for _ in range(50)]
            assert texts == [str(i) for i in range(50)]
            await assert_quiet(ws)  # no duplicates behind them


async def test_no_group_membership_left_after_the_last_listener(cluster):
    rs, a, b = cluster
    name = room()
    async with connect(a.ws_url) as a1, connect(b.ws_url) as b1:
        await join(a1, name)
        await join(b1, name)
        assert numsub(rs.url, f"room:{name}") == 2
    await wait_numsub(rs.url, f"room:{name}", 0)


async def test_redis_commands_do_not_grow_with_listeners(cluster):
    """One post to 200 listeners on 2 servers costs what one post to 2 listeners costs."""
    rs, a, b = cluster
    client = redis.Redis.from_url(rs.url)

    async def commands_for_one_post(listeners_per_server):
        name = room()
        sockets = []
        try:
            for server in (a, b):
                for _ in range(listeners_per_server):
                    ws = await connect(server.ws_url).__aenter__()
                    sockets.append(ws)
            await asyncio.gather(*(join(ws, name) for ws in sockets))
            poster = sockets[0]
            client.config_resetstat()
            await poster.send(room_post(name, "fan-out"))
            for ws in sockets:
                frame = await recv_endpoint(ws, "room")
                assert frame["object"]["data"]["text"] == "fan-out"
            stats = client.info("commandstats")
            return {name: value["calls"] for name, value in stats.items()}
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets))

    small = await commands_for_one_post(1)
    large = await commands_for_one_post(100)
    client.close()
    assert large.get("cmdstat_publish") == small.get("cmdstat_publish") == 1
    # INFO/CONFIG are this test's own; whatever else ran must not scale with listeners.
    def total(stats):
        own = ("cmdstat_info", "cmdstat_config|resetstat")
        return sum(v for k, v in stats.items() if k not in own)

    print("redis commands for one post:", small, large)
    assert total(large) <= total(small) + 2, (small, large)


async def test_idle_socket_on_a_redis_backed_server_stays_open(cluster):
    """redis-py 8's default 5 s socket_timeout killed idle subscribers (channels_redis#422)."""
    _, a, b = cluster
    name = room()
    async with connect(a.ws_url) as idle, connect(b.ws_url) as poster:
        await join(idle, name)
        await asyncio.sleep(30)  # the scenario itself: 30 s of silence, not a synchronisation
        await poster.send(room_post(name, "still there?"))
        frame = await recv_endpoint(idle, "room")
        assert frame["object"]["data"]["text"] == "still there?"
        await assert_quiet(idle)
