"""Helpers for end-to-end tests of two daphne servers sharing a real Redis."""

from __future__ import annotations

import asyncio
import json
import time

import redis
import websockets

from streaming.messages import group_name
from streampod_project.settings import _redis_prefix

PUBSUB_PREFIX = "asgi"  # channels_redis' default prefix (the project's on database 0)


def pubsub_prefix(url: str) -> str:
    """The channel-layer prefix of servers started with ``REDIS_URL=url``: the project's own
    rule (``asgi`` on database 0, ``asgi_db<n>`` on database ``n``, or
    ``STREAMPOD_REDIS_PREFIX``), since Redis pub/sub ignores database numbers."""
    return _redis_prefix(url)


def redis_channel(channel: str, url: str | None = None) -> str:
    """The Redis pub/sub channel carrying a bus channel (channels_redis naming), for servers
    on ``url`` (channels_redis' default prefix when None)."""
    prefix = pubsub_prefix(url) if url else PUBSUB_PREFIX
    return f"{prefix}__group__{group_name(channel)}"


def numsub(url: str, channel: str) -> int:
    """How many servers on ``url`` subscribe to bus channel ``channel``."""
    name = redis_channel(channel, url)
    client = redis.Redis.from_url(url)
    try:
        return int(dict(client.pubsub_numsub(name))[name.encode()])
    finally:
        client.close()


async def wait_numsub(url: str, channel: str, expected: int, timeout: float = 10) -> None:
    """Wait until ``expected`` servers subscribe to ``channel`` (a state, polled)."""
    deadline = time.monotonic() + timeout
    while True:
        count = await asyncio.to_thread(numsub, url, channel)
        if count == expected:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{channel}: {count} subscribers, expected {expected}")
        await asyncio.sleep(0.05)


def room_post(room: str, text: str) -> str:
    return json.dumps(
        {
            "endpoint": "room",
            "object": {"className": "RoomPost", "data": {"room": room, "text": text}},
        }
    )


async def recv_json(ws, timeout: float = 10) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def recv_endpoint(ws, endpoint: str, timeout: float = 10) -> dict:
    """The next frame for ``endpoint``, skipping the others (whoami's greeting...)."""
    while True:
        frame = await recv_json(ws, timeout)
        if frame.get("endpoint") == endpoint or frame.get("command") == "error":
            return frame


async def join(ws, room: str) -> None:
    """Join a room through the `room` test endpoint; returns once cluster-wide."""
    await ws.send(room_post(room, "/join"))
    frame = await recv_endpoint(ws, "room")
    assert frame["object"]["data"]["text"] == f"joined {room}", frame


async def assert_quiet(ws) -> None:
    """Nothing is waiting for this socket: the pong must be the next frame."""
    await ws.send(json.dumps({"command": "ping", "args": {}}))
    while True:
        frame = await recv_json(ws)
        if frame.get("object", {}).get("className") == "WhoAmI":
            continue  # greetings of whoami/private on open
        assert frame == {"command": "pong", "args": {}}, frame
        return


def connect(url: str, **kwargs):
    return websockets.connect(url, open_timeout=10, **kwargs)


# --- Several Redis servers as shards ---------------------------------------------------


def shard_urls(shards: list) -> str:
    """``REDIS_URL`` for servers sharding over ``shards`` (RedisServer objects): their
    URLs, comma-separated, in this order (every server must list them in the same one)."""
    return ",".join(shard.url for shard in shards)


def shard_index(channel: str, url: str) -> int:
    """Which of the comma-separated Redis servers of ``url`` carries bus channel
    ``channel``: channels-redis' own consistent hash of its Redis channel name."""
    from channels_redis.utils import _consistent_hash

    urls = [part for part in url.split(",") if part]
    return _consistent_hash(redis_channel(channel, url), len(urls))


def publishes(url: str) -> int:
    """``PUBLISH`` commands this Redis has run since it started (``INFO commandstats``)."""
    client = redis.Redis.from_url(url)
    try:
        return int(client.info("commandstats").get("cmdstat_publish", {}).get("calls", 0))
    finally:
        client.close()


def subscribed_channels(url: str) -> set[str]:
    """The pub/sub channels someone subscribes to on this Redis (``PUBSUB CHANNELS``)."""
    client = redis.Redis.from_url(url)
    try:
        return {name.decode() for name in client.pubsub_channels()}
    finally:
        client.close()


def key_count(url: str) -> int:
    """Keys in this Redis' database of ``url`` (``DBSIZE``): the cache's, not pub/sub's."""
    client = redis.Redis.from_url(url)
    try:
        return int(client.dbsize())
    finally:
        client.close()


async def join_once_served(url: str, room: str, within: float) -> websockets.ClientConnection:
    """A socket on ``url`` that joined ``room``, as a client gets one: tried again after
    an error frame (the join timed out: ``PUBLISH_TIMEOUT``) or a 1012 (a gap while it
    joined) until one is served."""
    deadline = time.monotonic() + within
    while True:
        ws = await connect(url)
        try:
            await ws.send(room_post(room, "/join"))
            frame = await recv_endpoint(ws, "room", timeout=30)
        except websockets.ConnectionClosed as closed:
            assert closed.rcvd is not None and closed.rcvd.code == 1012, closed
            frame = {"closed": 1012}
        if "object" in frame:
            assert frame["object"]["data"]["text"] == f"joined {room}", frame
            return ws
        await ws.close()
        assert time.monotonic() < deadline, f"not served within {within}s: {json.dumps(frame)}"
