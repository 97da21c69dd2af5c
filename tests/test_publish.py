"""Batched publishes on a real Redis: fewer round trips, same PUBLISHes, same order.

The subscriber is a plain redis-py pub/sub connection on the channel channels-redis
uses for the group, so what it sees is what every other server's bus would read.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import logging
import re
import types
import uuid

import channels_redis.pubsub
import pytest
import redis.asyncio as aioredis
import redis.asyncio.client
from channels_redis.pubsub import RedisPubSubChannelLayer

from streaming.exceptions import MessagingUnavailable
from streaming.messages import EVENT_TYPE, MessageBus, group_name
from streaming.publish import USES, Publisher, publisher_for
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


async def test_a_round_trip_that_never_answers_is_given_up_and_the_shard_freed(settings):
    """A path to Redis that stalls (acknowledges, never answers: tests/support/stall_proxy)
    held a batch's round trip for good: it kept the shard's lock and the publisher's only
    task, so that no later post, join or leave of that server went out again, even once
    new connections got through. The round trip is now bounded (twice PUBLISH_TIMEOUT, as
    the posts' own outcome is): its posts fail, its connection is dropped, and the next
    batch goes out on a new one."""
    from tests.support.servers import RedisServer
    from tests.support.stall_proxy import StallProxy

    settings.STREAMING = {"PUBLISH_TIMEOUT": 0.5}
    with RedisServer() as rs, StallProxy(rs.port) as proxy:
        via_proxy = f"redis://127.0.0.1:{proxy.port}/0"
        stalled = RedisPubSubChannelLayer(hosts=[{"address": via_proxy, "socket_timeout": None}])
        publisher = publisher_for(stalled)
        assert publisher is not None
        try:
            await publisher.publish("g", {"type": "t", "n": 0})  # connected, answered
            proxy.stall()
            lost = publisher.publish("g", {"type": "t", "n": 1})
            done, _ = await asyncio.wait({lost}, timeout=10)  # a failure guard
            assert done, "the round trip was never given up"
            assert isinstance(lost.exception(), TimeoutError)
            proxy.heal()
            async with asyncio.timeout(10):  # before: never (the lock stayed held)
                await publisher.publish("g", {"type": "t", "n": 2})
                await stalled.group_add("g", await stalled.new_channel())  # the lock is free
        finally:
            await publisher.aclose()
            await stalled.flush()


async def test_a_message_the_layer_cannot_serialize_fails_its_post_not_the_publisher(layer):
    publisher = Publisher(layer)
    bad = publisher.publish("g", {"type": "t", "value": object()})  # msgpack refuses it
    with pytest.raises(TypeError):
        await bad
    group = f"after-{uuid.uuid4().hex[:8]}"
    await publisher.publish(group, {"type": "t", "n": 1})  # the publisher still works
    assert publisher.batches == 2
    await publisher.aclose()


# -- the layer's internals: checked at start-up, and failing safe at run time ----------------


class _Hidden:
    """An attribute that is not there for whoever looks it up on this class or below.

    For an inherited method that ``monkeypatch.delattr`` cannot remove without removing
    it from the base class too (``Pipeline.publish`` is ``Redis.publish``).
    """

    def __get__(self, obj, cls=None):
        raise AttributeError("hidden by the test")


def _pubsub_renaming(name):
    """``channels_redis.pubsub`` as a release that renamed ``name`` would be: the same
    code, with every use of ``name`` spelled ``<name>_renamed``. The layer still works
    (its own ``group_send`` uses the new name); only the old name is gone.
    """
    source = inspect.getsource(channels_redis.pubsub)
    # The serializer's own ``serialize`` is another object's method: not renamed.
    pattern = rf"(?<!_serializer\.)\b{re.escape(name)}\b"
    renamed, count = re.subn(pattern, f"{name}_renamed", source)
    assert count >= 2, f"channels_redis.pubsub does not use {name!r} any more"
    module = types.ModuleType("channels_redis.pubsub")  # what publisher_for recognises
    module.__package__ = "channels_redis"
    module.__file__ = channels_redis.pubsub.__file__
    exec(compile(renamed, module.__file__, "exec"), module.__dict__)
    return module


def _layer_without(role, name, monkeypatch):
    """A pub/sub layer (and redis-py) that lacks ``name`` where ``role`` says, and works."""
    hosts = [{"address": require_redis(), "socket_timeout": None}]
    if role == "client":
        monkeypatch.delattr(redis.asyncio.client.Redis, name)
    elif role == "pipe":
        if name in vars(redis.asyncio.client.Pipeline):
            monkeypatch.delattr(redis.asyncio.client.Pipeline, name)
        else:  # inherited from Redis, which the layer's group_send uses
            monkeypatch.setattr(redis.asyncio.client.Pipeline, name, _Hidden(), raising=False)
    else:
        layer = _pubsub_renaming(name).RedisPubSubChannelLayer(hosts=hosts)
        owner = layer
        if role != "layer":
            owner = layer._get_layer()
        if role == "shard":
            owner = owner._shards[0]
        assert not hasattr(owner, name) and hasattr(owner, f"{name}_renamed")
        return layer
    return RedisPubSubChannelLayer(hosts=hosts)


@pytest.fixture
async def member():
    """``await member(channel)``: joins ``channel``'s group from another pub/sub layer, as
    another server's bus does, and returns an async reader of the events it receives."""
    url = require_redis()
    receiver = RedisPubSubChannelLayer(hosts=[{"address": url, "socket_timeout": None}])
    client = aioredis.Redis.from_url(url)

    async def join(channel):
        inbox = await receiver.new_channel()
        await receiver.group_add(group_name(channel), inbox)
        # SUBSCRIBE went out before this command: Redis has processed it.
        subscribed = dict(await client.pubsub_numsub(f"asgi__group__{group_name(channel)}"))
        assert list(subscribed.values()) == [1]

        async def read():
            async with asyncio.timeout(10):  # a failure guard, not a synchronisation
                return await receiver.receive(inbox)

        return read

    yield join
    await receiver.flush()
    await client.aclose()


@pytest.fixture
def publish_log(caplog):
    """The records ``streaming.publish`` logs."""
    caplog.set_level(logging.DEBUG, logger="streaming.publish")
    caplog.clear()
    return lambda: [r for r in caplog.records if r.name == "streaming.publish"]


@pytest.mark.parametrize(
    ("role", "name"), [(role, name) for role, name, _ in USES], ids=lambda value: value
)
async def test_without_any_internal_it_uses_the_bus_falls_back_to_group_send(
    role, name, monkeypatch, member, publish_log
):
    layer = _layer_without(role, name, monkeypatch)
    bus = None
    try:
        assert publisher_for(layer) is None
        warnings = [r for r in publish_log() if r.levelno >= logging.WARNING]
        assert len(warnings) == 1, warnings
        assert warnings[0].levelno == logging.WARNING
        assert f".{name}" in warnings[0].getMessage()

        bus = MessageBus(layer)
        assert bus._publisher is None
        channel = f"fallback-{uuid.uuid4().hex[:8]}"
        read = await member(channel)
        await bus.post_message(channel, Tick(n=7))
        event = await read()
        assert event["type"] == EVENT_TYPE and event["channel"] == channel
        assert '"n":7' in event["object"]
        assert bus.posts_published == 1
    finally:
        if bus is not None:
            await bus.aclose()
        await layer.flush()


@pytest.mark.parametrize(
    ("cls", "name", "error"),
    [
        (redis.asyncio.client.Redis, "pipeline", AttributeError("'Redis' has no 'pipeline'")),
        (redis.asyncio.client.Pipeline, "publish", TypeError("publish() takes 2 arguments")),
    ],
    ids=["pipeline-raises-AttributeError", "pipe.publish-raises-TypeError"],
)
async def test_internals_failing_at_run_time_turn_batching_off_and_lose_nothing(
    cls, name, error, layer, member, monkeypatch, publish_log
):
    channel = f"runtime-{uuid.uuid4().hex[:8]}"
    read = await member(channel)
    bus = MessageBus(layer)
    publisher = bus._publisher
    assert publisher is not None and publisher.batching
    behind = []

    def moved(*args, **kwargs):
        # While the first batch is being sent, 30 more posts come and queue behind it.
        if not behind:  # post_message starts at once: no task needed
            behind.extend(bus.post_message(channel, Tick(n=n)) for n in range(50, 80))
        raise error

    monkeypatch.setattr(cls, name, moved)  # after start-up, where no check sees it
    try:
        await asyncio.gather(*(bus.post_message(channel, Tick(n=n)) for n in range(50)))
        await asyncio.gather(*behind)
        await bus.post_message(channel, Tick(n=80))  # after it all: group_send straight away
        assert len(behind) == 30 and bus.posts_published == 81
        for n in range(81):
            assert f'"n":{n}' in (await read())["object"]
        assert not publisher.batching and publisher.batches == 1
        errors = [r for r in publish_log() if r.levelno >= logging.WARNING]
        assert len(errors) == 1 and errors[0].levelno == logging.ERROR, errors
        assert "group_send" in errors[0].getMessage() and errors[0].exc_info[1] is error
    finally:
        await bus.aclose()


async def test_a_connection_error_fails_the_batch_and_keeps_batching():
    from tests.support.servers import free_port

    dead = RedisPubSubChannelLayer(
        hosts=[{"address": f"redis://127.0.0.1:{free_port()}", "socket_connect_timeout": 2}]
    )
    bus = MessageBus(dead)
    publisher = bus._publisher
    assert publisher is not None
    with pytest.raises(MessagingUnavailable, match=r"(?i)connect"):
        await bus.post_message("g", Tick(n=1))
    assert publisher.batching  # Redis being down is not the internals moving
    await bus.aclose()
    await dead.flush()


def test_the_publisher_uses_no_internal_it_does_not_check():
    """Every private attribute streaming/publish.py touches, and every attribute of the
    layer's objects (reached through locals named after their role), is in USES."""
    import streaming.publish

    checked = {(role, name) for role, name, _ in USES}
    roles = {role for role, _ in checked}
    public = {("layer", "group_send")}  # the channel-layer API: the fallback itself
    tree = ast.parse(inspect.getsource(streaming.publish))
    unchecked = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        base = node.value
        if isinstance(base, ast.Name) and base.id in roles:
            if (base.id, node.attr) not in checked | public:
                unchecked.append(f"{base.id}.{node.attr} (line {node.lineno})")
        elif (
            isinstance(base, ast.Attribute)
            and isinstance(base.value, ast.Name)
            and base.value.id == "self"
            and base.attr == "layer"
        ):
            unchecked.append(f"self.layer.{node.attr} (line {node.lineno}): use a `layer` local")
        elif node.attr.startswith("_") and not node.attr.startswith("__"):
            if not (isinstance(base, ast.Name) and base.id == "self"):
                if node.attr not in {name for _, name in checked}:
                    unchecked.append(f"{ast.unparse(node)} (line {node.lineno})")
    assert not unchecked
