"""Batched publishes on a real Redis: fewer round trips, same PUBLISHes, same order.

The subscriber is a plain redis-py pub/sub connection on the channel channels-redis
uses for the group, so what it sees is what every other server's bus would read.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis
from channels_redis.pubsub import RedisPubSubChannelLayer

from streaming.messages import EVENT_TYPE, MessageBus
from streaming.publish import Publisher, publisher_for
from streaming.serialization import SerializableEntity
from tests.support.servers import require_redis

pytestmark = pytest.mark.redis


class Tick(SerializableEntity):
    class_name = "tests.publish.Tick"
    n: int


@pytest.fixture
async def layer():
    url = require_redis()
    layer = RedisPubSubChannelLayer(hosts=[{"address": url, "socket_timeout": None}])
    yield layer
    await layer.flush()


@pytest.fixture
async def subscribe(layer):
    """``await subscribe(group)``: an async reader of what is published to ``group``."""
    url = require_redis()
    client = aioredis.Redis.from_url(url)
    pubsubs = []

    async def open_reader(group):
        pubsub = client.pubsub()
        await pubsub.subscribe(f"asgi__group__{group}")
        pubsubs.append(pubsub)

        async def next_message():
            async with asyncio.timeout(10):  # a failure guard, not a synchronisation
                while True:
                    raw = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
                    if raw is not None:
                        return layer.deserialize(raw["data"])

        return next_message

    yield open_reader
    for pubsub in pubsubs:
        await pubsub.aclose()
    await client.aclose()


async def test_the_pubsub_layer_gets_a_batching_publisher(layer):
    assert isinstance(publisher_for(layer), Publisher)
    bus = MessageBus(layer)
    assert bus._publisher is not None


async def test_concurrent_posts_share_round_trips_and_keep_their_order(layer, subscribe):
    group = f"batch-{uuid.uuid4().hex[:8]}"
    read = await subscribe(group)
    bus = MessageBus(layer)
    try:
        # 200 posts from one event-loop turn, as 200 lanes posting at once would.
        await asyncio.gather(*(bus.post_message(group, Tick(n=n)) for n in range(200)))
        assert bus.posts_published == 200
        assert bus._publisher is not None and bus._publisher.batches <= 2
        for n in range(200):
            event = await read()
            assert event["type"] == EVENT_TYPE and event["channel"] == group
            assert f'"n":{n}' in event["object"], (n, event)
    finally:
        await bus.aclose()


async def test_a_post_withdrawn_before_its_batch_leaves_is_never_published(layer, subscribe):
    group = f"withdraw-{uuid.uuid4().hex[:8]}"
    read = await subscribe(group)
    publisher = Publisher(layer)
    first = publisher.publish(group, {"type": "t", "n": 1})
    withdrawn = publisher.publish(group, {"type": "t", "n": 2})
    withdrawn.cancel()  # what a post that timed out does
    await first
    await publisher.publish(group, {"type": "t", "n": 3})
    assert (await read())["n"] == 1
    assert (await read())["n"] == 3  # 2 never went out
    await publisher.aclose()


async def test_a_failed_round_trip_fails_each_post_of_its_batch():
    # Nothing listens on this port: the connection is refused at once.
    from tests.support.servers import free_port

    dead = RedisPubSubChannelLayer(
        hosts=[{"address": f"redis://127.0.0.1:{free_port()}", "socket_connect_timeout": 2}]
    )
    publisher = publisher_for(dead)
    assert publisher is not None
    futures = [publisher.publish("g", {"type": "t", "n": n}) for n in range(3)]
    for future in futures:
        with pytest.raises(Exception, match=r"(?i)connect"):
            await future
    await publisher.aclose()


async def test_a_message_the_layer_cannot_serialize_fails_its_post_not_the_publisher(layer):
    publisher = Publisher(layer)
    bad = publisher.publish("g", {"type": "t", "value": object()})  # msgpack refuses it
    with pytest.raises(TypeError):
        await bad
    group = f"after-{uuid.uuid4().hex[:8]}"
    await publisher.publish(group, {"type": "t", "n": 1})  # the publisher still works
    assert publisher.batches == 2
    await publisher.aclose()
