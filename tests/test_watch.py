"""The bus's watch (streaming/watch.py): a lost subscription is seen, on a real Redis.

Two buses on one private redis-server, as two servers: "b" listens, "a" posts. Cutting
b's subscriber connection (``CLIENT KILL TYPE pubsub``) makes it miss posts for about a
second while channels-redis reconnects; the watch must tell b's bus, which proves its
join again. The socket side (closing with 1012) is tests/e2e/test_messaging_faults.py's.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import pytest
import redis
from channels_redis.core import RedisChannelLayer
from channels_redis.pubsub import (
    RedisPubSubChannelLayer,
    RedisPubSubLoopLayer,
    RedisSingleShardConnection,
)
from redis.asyncio.connection import AbstractConnection

from streaming import watch
from streaming.messages import MessageBus
from streaming.watch import HeartbeatWatch, ReconnectWatch, watch_for
from tests.support.servers import RedisServer
from tests.test_bus_cluster import Inbox, Owner, Tick

pytestmark = pytest.mark.redis


@pytest.fixture
def redis_server():
    server = RedisServer().start()
    yield server
    server.stop()


def pubsub_layer(url: str, prefix: str) -> RedisPubSubChannelLayer:
    return RedisPubSubChannelLayer(hosts=[{"address": url, "socket_timeout": None}], prefix=prefix)


@pytest.fixture
async def pair(redis_server):
    prefix = f"w{uuid.uuid4().hex[:8]}"
    layers = [pubsub_layer(redis_server.url, prefix) for _ in range(2)]
    buses = [Watched(layer) for layer in layers]
    yield buses
    for bus in buses:
        await bus.aclose()
    for layer in layers:
        await layer.flush()


class Watched(MessageBus):
    """A bus whose test can wait for its next lost subscription."""

    def __init__(self, layer) -> None:
        super().__init__(layer)
        self.lost: list[str] = []
        self._lost = asyncio.Event()

    def subscription_lost(self, why: str) -> None:
        super().subscription_lost(why)
        self.lost.append(why)
        self._lost.set()

    async def wait_lost(self) -> str:
        async with asyncio.timeout(15):  # a failure guard, not a synchronisation
            await self._lost.wait()
        return self.lost[-1]


async def wait_unsubscribed(url: str, channel: str) -> None:
    """Wait until Redis has no subscriber to ``channel`` (a state, polled)."""
    async with asyncio.timeout(15):  # a failure guard
        while True:
            with redis.Redis.from_url(url) as client:
                if not dict(client.pubsub_numsub(channel))[channel.encode()]:
                    return
            await asyncio.sleep(0.01)


def kill_subscribers(url: str) -> int:
    with redis.Redis.from_url(url) as client:
        return client.client_kill_filter(_type="pubsub")


async def listen_and_cut(pair, url: str) -> tuple[Inbox, str]:
    """b listens to a channel (joined: proven by its probe), then its subscriber
    connection is cut."""
    a, b = pair
    inbox, name = Inbox(), f"user_{uuid.uuid4().hex[:8]}"
    await b.add_listener(name, inbox, owner=Owner())
    await a.post_message(name, Tick(n=1))
    await inbox.wait_for(1)
    assert b.lost == []  # joining is not a gap: the first connect is not a reconnect
    assert kill_subscribers(url) >= 1
    return inbox, name


async def test_a_cut_subscriber_connection_is_seen_and_the_join_proven_again(pair, redis_server):
    a, b = pair
    inbox, name = await listen_and_cut(pair, redis_server.url)
    why = await b.wait_lost()
    assert "reconnected" in why
    assert b.gaps == 1
    assert isinstance(b._watch, ReconnectWatch)
    # The join is proven again (a probe came back), then posts arrive as before.
    await b.wait_joined([name])
    await a.post_message(name, Tick(n=2))
    await inbox.wait_for(2)
    assert b.gaps == 1  # one cut, one gap


class CountedBeats(HeartbeatWatch):
    """The heartbeat watch, with a way to wait for the heartbeats that came back."""

    def __init__(self, bus: MessageBus) -> None:
        super().__init__(bus)
        self.changed = asyncio.Event()

    def heartbeat(self, event: dict) -> None:
        super().heartbeat(event)
        self.changed.set()

    async def wait_seen(self, count: int) -> None:
        async with asyncio.timeout(15):  # a failure guard
            while self._seen < count:
                self.changed.clear()
                await self.changed.wait()


async def test_the_heartbeat_sees_a_subscription_that_was_down(pair, redis_server, settings):
    """The fallback, on the same real Redis: b watches with heartbeats instead, and the
    subscription that carries them is dropped (through channels-redis' own shard). The
    heartbeats stop coming back; the watch joins its group again, the next one arrives
    with a gap in the numbers, and the bus proves its joins again."""
    settings.STREAMING = {"BUS_HEARTBEAT_INTERVAL": 0.05}
    a, b = pair
    inbox, name = Inbox(), f"user_{uuid.uuid4().hex[:8]}"
    await b.add_listener(name, inbox, owner=Owner())
    beats = CountedBeats(b)
    b.use_watch(beats)
    await beats.wait_seen(3)
    assert b.lost == []  # heartbeats that all come back are no gap
    loop_layer = b.layer._get_layer()
    carrier = loop_layer._get_group_channel_name(beats._group)
    await loop_layer._get_shard(carrier).unsubscribe(carrier)
    why = await b.wait_lost()
    assert "heartbeat" in why
    assert b.gaps == 1
    await b.wait_joined([name])
    await a.post_message(name, Tick(n=2))
    assert await inbox.wait_for(1) == [2]


async def test_the_core_layer_sees_redis_forget_its_memberships(redis_server, settings):
    """The core layer keeps group memberships in Redis. A Redis that lost them (restarted
    quickly enough that no heartbeat failed, or failed over to an empty replica; here
    FLUSHALL, with no outage at all) let posts from the other server reach no one for up
    to GROUP_REFRESH_INTERVAL (an hour), unseen: a review of the fix counted 0 of 60 posts
    delivered after a quick restart, 3 runs of 3. The heartbeats, through a group of
    their own, stop coming back; the watch joins again and the bus sees the gap."""
    settings.STREAMING = {"BUS_HEARTBEAT_INTERVAL": 0.05}
    prefix = f"w{uuid.uuid4().hex[:8]}"
    layers = [RedisChannelLayer(hosts=[redis_server.url], prefix=prefix) for _ in range(2)]
    a, b = (Watched(layer) for layer in layers)
    try:
        inbox, name = Inbox(), f"user_{uuid.uuid4().hex[:8]}"
        await b.add_listener(name, inbox, owner=Owner())
        beats = CountedBeats(b)
        b.use_watch(beats)
        await beats.wait_seen(3)
        with redis.Redis.from_url(redis_server.url) as client:
            client.flushall()
        why = await b.wait_lost()
        assert "heartbeat" in why
        await b.wait_joined([name])
        await a.post_message(name, Tick(n=2))
        assert await inbox.wait_for(1) == [2]
    finally:
        for bus in (a, b):
            await bus.aclose()


async def test_the_core_layer_is_watched_with_heartbeats(redis_server):
    bus = MessageBus(RedisChannelLayer(hosts=[redis_server.url]))
    assert isinstance(watch_for(bus, bus.layer), HeartbeatWatch)


async def test_the_pubsub_layer_is_watched_at_its_connections(redis_server):
    bus = MessageBus(pubsub_layer(redis_server.url, "w"))
    assert isinstance(watch_for(bus, bus.layer), ReconnectWatch)


# Where each internal of watch.USES is looked up (deleted from there to simulate a
# release that renamed it).
_FLUSH_NEEDS = {
    ("loop_layer", "_shards"),
    ("shard", "_redis"),
    ("shard", "_lock"),
    ("shard", "_subscribed_to"),
}
_OWNERS = {
    "layer": RedisPubSubChannelLayer,
    "loop_layer": RedisPubSubLoopLayer,
    "shard": RedisSingleShardConnection,
    "connection": AbstractConnection,
}


@pytest.mark.parametrize(
    "role,attribute",
    # (what the layer's own flush needs at the test's end is checked by the same code, not
    # deleted here)
    [use for use in watch.USES if use[0] in _OWNERS and use not in _FLUSH_NEEDS],
    ids="{0[0]}.{0[1]}".format,
)
async def test_a_missing_internal_falls_back_to_heartbeats(
    role, attribute, redis_server, monkeypatch, caplog
):
    """Checked before a watch is handed out: the heartbeat, and one warning naming it."""
    layer = pubsub_layer(redis_server.url, "w")
    layer._get_layer()  # made before the internal goes (a shard sets _pubsub in __init__)
    owner = _OWNERS[role]
    if role == "shard":
        for shard in layer._get_layer()._shards:
            # An attribute of each shard, or a method of their class.
            monkeypatch.delattr(shard if attribute in vars(shard) else type(shard), attribute)
    elif role == "loop_layer" and attribute in vars(layer._get_layer()):
        monkeypatch.delattr(layer._get_layer(), attribute)
    else:
        monkeypatch.delattr(owner, attribute)
    bus = MessageBus(layer)
    with caplog.at_level(logging.WARNING, logger="streaming.watch"):
        chosen = watch_for(bus, layer)
    assert isinstance(chosen, HeartbeatWatch)
    assert attribute in caplog.text


async def test_a_subscriber_connection_without_its_hook_falls_back_at_run_time(
    pair, monkeypatch, caplog
):
    """A shard's PubSub exists only once it subscribed, so its internal is checked when
    the watch attaches (after the bus's first join). One that is missing (a later
    release's name stands in for it here) turns the bus to heartbeats, with one error."""
    _, b = pair
    renamed = tuple(
        (role, "connection_of_a_later_release") if (role, attr) == ("pubsub", "connection")
        else (role, attr)
        for role, attr in watch.USES
    )  # fmt: skip
    monkeypatch.setattr(watch, "USES", renamed)
    with caplog.at_level(logging.ERROR, logger="streaming.watch"):
        await b.add_listener(f"user_{uuid.uuid4().hex[:8]}", Inbox(), owner=Owner())
    assert isinstance(b._watch, HeartbeatWatch)
    assert "connection_of_a_later_release" in caplog.text
    assert "heartbeats instead" in caplog.text


async def test_gaps_in_a_row_leave_one_reconciler_per_channel(pair):
    """A flapping subscription: a review cut the subscriber connection every 20 ms with
    1,000 channels joined and piled up 181,866 reconcile tasks (+306 MB), a task per
    channel per gap. Now at most one waits per channel, and every join is proven again."""
    _, b = pair
    names = [f"user_{uuid.uuid4().hex[:8]}" for _ in range(100)]
    for name in names:
        b.add_listener(name, Inbox(), owner=Owner())
    await b.wait_joined(names)
    for _ in range(50):
        b.subscription_lost("a test's gap")
    assert sum(not task.done() for task in b._reconcilers) <= len(names)  # was 5,000
    await b.wait_joined(names)
    assert b.gaps == 50


async def test_the_heartbeat_group_outlives_the_core_layers_group_expiry(redis_server, settings):
    """The core layer forgets a member after ``group_expiry`` (a day by default): the
    heartbeat's own group must be joined again as the bus's channels are, or after a day
    its heartbeats stop coming back and the bus closes every listening socket for nothing
    (a review, scaled down: 2 false gaps in 10 s with a 3 s expiry)."""
    settings.STREAMING = {"BUS_HEARTBEAT_INTERVAL": 0.05, "GROUP_REFRESH_INTERVAL": 0.5}
    layer = RedisChannelLayer(hosts=[redis_server.url], prefix="wx", group_expiry=2)
    bus = Watched(layer)
    try:
        await bus.add_listener(f"user_{uuid.uuid4().hex[:8]}", Inbox(), owner=Owner())
        beats = CountedBeats(bus)
        bus.use_watch(beats)
        await beats.wait_seen(80)  # 4 s: twice the expiry
        assert bus.lost == []
    finally:
        await bus.aclose()


async def test_a_busy_event_loop_is_not_taken_for_a_stall(pair, settings):
    """The event loop held for longer than ``BUS_STALL_TIMEOUT`` (a long synchronous call,
    a collection of a huge heap) finds the heartbeats that came back meanwhile still
    unread when it wakes: the stall is judged at the next heartbeat as well, after the
    loop has read them, so the listening sockets are not closed for nothing."""
    settings.STREAMING = {"BUS_HEARTBEAT_INTERVAL": 0.05, "BUS_STALL_TIMEOUT": 0.3}
    _, b = pair
    await b.add_listener(f"user_{uuid.uuid4().hex[:8]}", Inbox(), owner=Owner())
    assert isinstance(b._watch, ReconnectWatch)
    (beats,) = b._watch._beats  # one Redis shard, one heartbeat group
    seen = beats._seen
    async with asyncio.timeout(15):  # a failure guard
        while beats._seen < seen + 3:  # noqa: ASYNC110 (a state, polled)
            await asyncio.sleep(0.01)
    for _ in range(3):
        time.sleep(0.6)  # noqa: ASYNC251 (the loop held on purpose: twice the timeout)
        seen = beats._seen
        async with asyncio.timeout(15):
            while beats._seen < seen + 3:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    assert b.lost == []
    assert b.stalled_for() is None


async def test_each_redis_shard_carries_heartbeats_of_its_own(settings):
    """With two shards a stall of either must be seen: the watch beats through one group
    per shard, each group's channel on its shard."""
    settings.STREAMING = {"BUS_HEARTBEAT_INTERVAL": 0.05}
    with RedisServer() as one, RedisServer() as two:
        layer = RedisPubSubChannelLayer(
            hosts=[{"address": s.url, "socket_timeout": None} for s in (one, two)],
            prefix=f"w{uuid.uuid4().hex[:8]}",
        )
        bus = Watched(layer)
        try:
            await bus.add_listener(f"user_{uuid.uuid4().hex[:8]}", Inbox(), owner=Owner())
            assert isinstance(bus._watch, ReconnectWatch)
            loop_layer = layer._get_layer()
            beats = bus._watch._beats
            shards = {
                id(loop_layer._get_shard(loop_layer._get_group_channel_name(b.group)))
                for b in beats
            }
            assert len(beats) == 2 and shards == {id(shard) for shard in loop_layer._shards}
            async with asyncio.timeout(15):  # a failure guard: each shard's come back
                while min(b._seen for b in beats) < 3:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
        finally:
            await bus.aclose()
            await layer.flush()


class SlowInbox(Inbox):
    """A listener that works ``seconds`` of CPU on each message (an application doing
    heavy work per post): the bus falls behind what comes in."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self._seconds = seconds

        self.turns = 0  # turns of the event loop, counted by count_turns()
        self.turns_at: list[int] = []  # the count when each message came

    def __call__(self, message: Tick) -> None:
        until = time.perf_counter() + self._seconds
        while time.perf_counter() < until:
            pass
        self.turns_at.append(self.turns)
        super().__call__(message)

    async def count_turns(self) -> None:
        while True:
            self.turns += 1
            await asyncio.sleep(0)

    def longest_hold(self) -> int:
        """The most messages worked in a row without the event loop taking a turn."""
        runs, run = [], 1
        for before, after in zip(self.turns_at, self.turns_at[1:], strict=False):
            run = run + 1 if after == before else 1
            runs.append(run)
        return max(runs, default=1)


@pytest.mark.parametrize("kind", ["reconnect", "heartbeat"])
async def test_a_bus_behind_its_posts_is_not_taken_for_a_stall(kind, pair, settings):
    """A bus that reads its subscription and works through a backlog older than
    ``BUS_STALL_TIMEOUT`` (posts come in faster than its listeners take them) is behind,
    not stalled: its listeners are closed once (the backlog must not grow without bound)
    and it says why, but its subscriber connection, which works, is not dropped. Before,
    it was taken for a stall: the connection was dropped and made again (a real gap,
    a second round of 1012s, and again while the backlog lasted). The same with the
    fallback's heartbeats, which count what the bus receives instead of what each
    connection reads."""
    settings.STREAMING = {"BUS_HEARTBEAT_INTERVAL": 0.05, "BUS_STALL_TIMEOUT": 0.3}
    a, b = pair
    name = f"user_{uuid.uuid4().hex[:8]}"
    inbox = SlowInbox(0.005)
    await b.add_listener(name, inbox, owner=Owner())
    assert isinstance(b._watch, ReconnectWatch)
    if kind == "heartbeat":
        beats = CountedBeats(b)
        b.use_watch(beats)
        await beats.wait_seen(3)
    turns = asyncio.create_task(inbox.count_turns())
    try:
        await asyncio.gather(*(a.post_message(name, Tick(n=n)) for n in range(400)))  # 2 s
        async with asyncio.timeout(30):  # a failure guard
            while len(inbox.got) < 400 or b.stalled_for() is not None:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    finally:
        turns.cancel()
    assert inbox.got == list(range(400))  # nothing lost, in order
    assert len(b.lost) == 1, b.lost
    assert "behind" in b.lost[0] and "stalled" not in b.lost[0], b.lost


async def test_a_backlog_of_the_bus_does_not_hold_the_event_loop(pair):
    """A channel layer's ``receive`` returns at once while events wait, so the bus worked
    off a backlog in one hold of the event loop: every socket's frames and pings waited
    until the last post was delivered (hundreds of posts in a row here). It gives the
    loop a turn once the fair slice (``FAIR_SLICE``, 5 ms) is over: 5 ms a post, at most a
    few posts in a row."""
    a, b = pair
    name = f"user_{uuid.uuid4().hex[:8]}"
    inbox = SlowInbox(0.005)
    await b.add_listener(name, inbox, owner=Owner())
    turns = asyncio.create_task(inbox.count_turns())
    try:
        await asyncio.gather(*(a.post_message(name, Tick(n=n)) for n in range(200)))  # 1 s
        await inbox.wait_for(200)
    finally:
        turns.cancel()
    assert inbox.got == list(range(200))
    assert inbox.longest_hold() <= 5, inbox.turns_at


async def test_readyz_names_the_longest_silence_of_several_shards_for_what_it_is():
    """Helper "reviewer10": with one shard stalled for 60 s and another behind for 5 s,
    ``/readyz`` said the bus was 60 s *behind*: the longest silence is named with its own
    kind."""
    from streaming.exceptions import MessagingUnavailable
    from streaming.health import _check_bus

    bus = MessageBus(None)
    watch = ReconnectWatch(bus, layer=None)
    stalled, behind = (HeartbeatWatch(bus, group=g, count_gaps=False) for g in "ab")
    now = time.monotonic()
    stalled._back_at, stalled._stalled_at = now - 60, now - 50
    behind._back_at, behind._stalled_at, behind._behind = now - 5, now - 1, True
    watch._beats = [stalled, behind]
    bus._watch = watch
    with pytest.raises(MessagingUnavailable, match="for 60s: its subscription is stalled"):
        await _check_bus(bus)
    stalled._back_at = now - 3  # the backlog is now the longer silence
    with pytest.raises(MessagingUnavailable, match="came back for 5s: it is that far behind"):
        await _check_bus(bus)


class Told(MessageBus):
    """A bus that records what it is told, with no layer (the watch's verdicts alone)."""

    def __init__(self) -> None:
        super().__init__(None)
        self.told: list[str] = []

    def subscription_lost(self, why: str) -> None:
        self.told.append(why)


def test_silence_from_before_a_reconnect_is_not_taken_for_a_backlog(settings):
    """Redis down for about ``BUS_STALL_TIMEOUT`` (a restart): the reconnect is the gap,
    told once. The heartbeats' silence began before it; while the new connection reads
    its own traffic and the first heartbeat is a beat or two away, that silence was taken
    for a bus "that far behind": a second round of 1012s (helper "operator13": 11
    reconnects for 8 sockets, 3 clients sent away twice)."""
    settings.STREAMING = {"BUS_STALL_TIMEOUT": 10.0}

    def after_an_outage(reconnected: bool) -> list[str]:
        bus = Told()
        beats = HeartbeatWatch(bus, group="g", count_gaps=False)
        beats.counts_reads = True
        beats._back_at = time.monotonic() - 10.5  # no heartbeat back for 10.5 s
        if reconnected:
            beats.reconnected()
        for _ in range(2):  # two beats, the new connection reading between them
            beats.reads += 3
            asyncio.run(beats._check_stall())
        return bus.told

    assert after_an_outage(reconnected=True) == []
    [told] = after_an_outage(reconnected=False)  # the mechanism, as it was
    assert "behind" in told


async def test_a_reconnect_restarts_the_silence_of_its_shards_heartbeats(pair, redis_server):
    _a, b = pair
    await listen_and_cut(pair, redis_server.url)
    cut = time.monotonic()
    [beats] = b._watch._beats
    beats._back_at = cut - 60  # as if no heartbeat had come back for a minute
    assert "reconnected" in await b.wait_lost()
    assert beats._back_at >= cut


async def test_redis_down_is_told_as_down_not_as_a_path_that_stalls(pair, redis_server, settings):
    """A stopped Redis (connections refused) was told, and logged, as "a path to Redis
    that acknowledges and does not answer", sending the operator to look for a proxy."""
    settings.STREAMING = {"BUS_HEARTBEAT_INTERVAL": 0.05, "BUS_STALL_TIMEOUT": 0.3}
    _a, b = pair
    inbox, name = Inbox(), f"user_{uuid.uuid4().hex[:8]}"
    await b.add_listener(name, inbox, owner=Owner())
    redis_server.stop()
    why = await b.wait_lost()
    assert "Redis is down or unreachable" in why and "acknowledges" not in why, why
