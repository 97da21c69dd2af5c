"""Two buses on one real Redis, as two servers of a cluster would have: joins are
confirmed, listeners cannot hurt the receiver or each other, the receiver is
supervised.

Each bus has a layer of its own (its own Redis connections), exactly as two server
processes do; posts cross Redis between them.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest
from channels_redis.pubsub import RedisPubSubChannelLayer

from streaming.messages import MessageBus
from streaming.serialization import SerializableEntity
from tests.support.servers import require_redis

pytestmark = pytest.mark.redis


class Tick(SerializableEntity):
    class_name = "tests.bus_cluster.Tick"
    n: int


class Owner:
    pass


@pytest.fixture
async def pair():
    """Two buses ("servers") sharing Redis under a prefix of their own."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    url = require_redis()
    layers = [
        RedisPubSubChannelLayer(
            hosts=[{"address": url, "socket_timeout": None}], prefix=prefix
        )
        for _ in range(2)
    ]
    buses = [MessageBus(layer) for layer in layers]
    yield buses
    for bus in buses:
        await bus.aclose()
    for layer in layers:
        await layer.flush()


class Inbox:
    """A listener that collects what it gets and lets a test wait for a count."""

    def __init__(self) -> None:
        self.got: list[int] = []
        self._changed = asyncio.Event()

    def __call__(self, message: Tick) -> None:
        self.got.append(message.n)
        self._changed.set()

    async def wait_for(self, count: int) -> list[int]:
        async with asyncio.timeout(10):  # a failure guard, not a synchronisation
            while len(self.got) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.got


def channel() -> str:
    return f"user_{uuid.uuid4().hex[:8]}"


async def test_a_post_right_after_the_join_is_confirmed_always_arrives(pair):
    a, b = pair
    # Fifty fresh channels: each joined on b, then posted to from a at once.
    for n in range(50):
        name, inbox = channel(), Inbox()
        await b.add_listener(name, inbox, owner=Owner())  # returns once the probe came back
        await a.post_message(name, Tick(n=n))
        assert await inbox.wait_for(1) == [n]


async def test_a_listener_raising_cancelled_error_does_not_stop_the_receiver(pair, caplog):
    a, b = pair
    name, good = channel(), Inbox()

    def cancelled_sync(message):
        raise asyncio.CancelledError()

    async def cancelled_async(message):
        future = asyncio.get_running_loop().create_future()
        future.cancel()
        await future  # a cancelled await inside a listener

    owner = Owner()
    b.add_listener(name, cancelled_sync, owner=owner)
    b.add_listener(name, cancelled_async, owner=owner)
    await b.add_listener(name, good, owner=owner)
    with caplog.at_level(logging.WARNING):
        for n in range(3):
            await a.post_message(name, Tick(n=n))
        assert await good.wait_for(3) == [0, 1, 2]
    await b.drain()
    assert b._receiver is not None and not b._receiver.done()
    assert b.restarts == 0  # isolated, not merely restarted


async def test_a_slow_listener_holds_up_no_other_listener_or_channel(pair):
    a, b = pair
    slow_channel, fast_channel = channel(), channel()
    gate = asyncio.Event()
    slow_got: list[int] = []

    async def slow(message):
        await gate.wait()
        slow_got.append(message.n)

    fast_same, fast_other = Inbox(), Inbox()
    owner = Owner()
    b.add_listener(slow_channel, slow, owner=owner)
    await b.add_listener(slow_channel, fast_same, owner=owner)
    await b.add_listener(fast_channel, fast_other, owner=owner)
    for n in range(5):
        await a.post_message(slow_channel, Tick(n=n))
        await a.post_message(fast_channel, Tick(n=n))
    # The slow listener has not finished its first call; everyone else has all five.
    assert await fast_same.wait_for(5) == [0, 1, 2, 3, 4]
    assert await fast_other.wait_for(5) == [0, 1, 2, 3, 4]
    assert slow_got == []
    gate.set()
    await b.drain()
    assert slow_got == [0, 1, 2, 3, 4]  # in order, one at a time


async def test_a_receiver_that_dies_is_restarted_and_logged(pair, caplog):
    a, b = pair
    name, inbox = channel(), Inbox()
    await b.add_listener(name, inbox, owner=Owner())
    original = b._received
    failures = 0

    def failing_once(event):
        nonlocal failures
        if failures == 0:
            failures += 1
            raise RuntimeError("boom")
        original(event)

    b._received = failing_once  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="streaming.messages"):
        await a.post_message(name, Tick(n=1))  # kills the receive loop
        await a.post_message(name, Tick(n=2))
        # The supervisor restarts it; what Redis delivered meanwhile waits in the
        # layer's queue, so the second post still arrives.
        assert await inbox.wait_for(1) == [2]
    assert b.restarts == 1
    assert "bus receiver failed; restarting it" in caplog.text


async def test_listeners_async_results_run_in_post_order_per_listener(pair):
    a, b = pair
    name = channel()
    seen: list[int] = []
    all_seen = asyncio.Event()

    async def listener(message):
        for _ in range(message.n % 3):
            await asyncio.sleep(0)  # some calls wait, some do not
        seen.append(message.n)
        if len(seen) == 30:
            all_seen.set()

    await b.add_listener(name, listener, owner=Owner())
    for n in range(30):
        await a.post_message(name, Tick(n=n))
    async with asyncio.timeout(10):  # a failure guard, not a synchronisation
        await all_seen.wait()
    assert seen == list(range(30))


async def test_a_post_without_await_is_published_at_once(pair):
    a, b = pair
    name, inbox = channel(), Inbox()
    await b.add_listener(name, inbox, owner=Owner())
    a.post_message(name, Tick(n=7))  # as Dart code calls postMessage: no await
    assert await inbox.wait_for(1) == [7]


async def test_an_unawaited_failed_post_is_logged_an_awaited_one_raises(caplog):
    import gc

    from streaming.exceptions import MessagingUnavailable
    from tests.support.servers import free_port

    dead = RedisPubSubChannelLayer(
        hosts=[{"address": f"redis://127.0.0.1:{free_port()}", "socket_connect_timeout": 2}]
    )
    bus = MessageBus(dead)
    try:
        with pytest.raises(MessagingUnavailable):
            await bus.post_message("user_1", Tick(n=1))
        with caplog.at_level(logging.ERROR):
            unawaited = bus.post_message("user_1", Tick(n=2))
            async with asyncio.timeout(10):  # a failure guard, not a synchronisation
                await asyncio.wait([unawaited])
            del unawaited
            gc.collect()
        assert "exception was never retrieved" in caplog.text
        assert "MessagingUnavailable" in caplog.text
    finally:
        await bus.aclose()
