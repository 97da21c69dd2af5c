"""Messaging across two real daphne processes sharing a real Redis (private redis-server)."""

import asyncio
import uuid

import msgpack
import pytest
import redis.asyncio as aioredis

from streaming.watch import HEARTBEAT_TYPE
from tests.e2e.redis_support import (
    assert_quiet,
    connect,
    join,
    numsub,
    recv_endpoint,
    redis_channel,
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
    """One post to 200 listeners on 2 servers costs what one post to 2 listeners costs.

    Redis counts every command of every client, and each server also publishes a
    heartbeat a second (``BUS_HEARTBEAT_INTERVAL``) that may fall inside the post's
    window: the window is bracketed by marker publishes in the same transactions as
    ``CONFIG RESETSTAT`` and ``INFO``, and a pattern subscriber sees, in Redis' own
    order, which channel each counted publish went to.
    """
    rs, a, b = cluster
    marker = f"streampod-test-marker-{uuid.uuid4().hex}"
    post_channel = None

    async with aioredis.Redis.from_url(rs.url) as client, client.pubsub() as watcher:
        await watcher.psubscribe("*")

        async def publishes_until(end):
            """(channel, event type) of each publish the watcher reads up to ``end``."""
            seen = []
            while True:
                message = await watcher.get_message(timeout=10)
                assert message is not None, "the marker publish never came back"
                if message["type"] != "pmessage":
                    continue  # the psubscribe's confirmation
                channel = message["channel"].decode()
                if channel == marker:
                    if message["data"] == end:
                        return seen
                    seen = []  # the start marker: what came before is not counted
                    continue
                seen.append((channel, msgpack.unpackb(message["data"]).get("type")))

        async def commands_for_one_post(listeners_per_server):
            nonlocal post_channel
            name = room()
            post_channel = redis_channel(f"room:{name}", rs.url)
            sockets = []
            try:
                for server in (a, b):
                    for _ in range(listeners_per_server):
                        ws = await connect(server.ws_url).__aenter__()
                        sockets.append(ws)
                await asyncio.gather(*(join(ws, name) for ws in sockets))
                poster = sockets[0]
                async with client.pipeline(transaction=True) as start:
                    await start.config_resetstat().publish(marker, b"start").execute()
                await poster.send(room_post(name, "fan-out"))
                for ws in sockets:
                    frame = await recv_endpoint(ws, "room")
                    assert frame["object"]["data"]["text"] == "fan-out"
                async with client.pipeline(transaction=True) as stop:
                    stats, _ = await stop.info("commandstats").publish(marker, b"end").execute()
                published = await publishes_until(b"end")
                calls = {name: value["calls"] for name, value in stats.items()}
                # The start marker is counted; every other counted publish was watched.
                assert calls.get("cmdstat_publish") == len(published) + 1, (calls, published)
                return calls, published
            finally:
                await asyncio.gather(*(ws.close() for ws in sockets))

        others = {}
        for listeners in (1, 100):
            calls, published = await commands_for_one_post(listeners)
            print("redis commands for one post:", listeners, calls, published)
            # One publish of the post, whatever the listeners; any other is a heartbeat.
            posts = [channel for channel, kind in published if kind != HEARTBEAT_TYPE]
            assert posts == [post_channel], (listeners, published)
            # Our own commands and the publishes aside, what ran must not scale.
            own = {"cmdstat_info", "cmdstat_config|resetstat", "cmdstat_multi",
                   "cmdstat_exec", "cmdstat_publish"}  # fmt: skip
            others[listeners] = {k: v for k, v in calls.items() if k not in own}
        assert sum(others[100].values()) <= sum(others[1].values()) + 2, others


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
