"""Knowing when the bus's subscription was down, so that no post is lost without a word.

Redis pub/sub hands a message to the subscriptions in place when it is published, and to
no one else. A post published while a server's subscriber connection is down or coming
back (Redis restarted, the connection was cut; channels-redis' receive task waits 1 s
after its connection fails before it reads again) reaches none of that server's
listeners, and nobody is told: a ``PUBLISH`` to no subscriber is not an error. A watch
tells the bus when that may have happened (:meth:`MessageBus.subscription_lost`); the bus
then proves its joins again and closes the sockets that listen with 1012, so that their
clients reconnect and read what they missed (docs/reliability.md, "Redis restarted").

:func:`watch_for` picks one of two ways, once per bus:

* :class:`ReconnectWatch`, for channels-redis' pub/sub layer: a connect callback on each
  shard's subscriber connection (redis-py's ``register_connect_callback``, the hook
  redis-py itself subscribes again with). Every connect after the first is a gap. Exact:
  a subscriber connection does not come back without connecting, and the callback runs
  before any message of the new connection is read. It uses the layer's private
  internals, all listed in :data:`USES`; :func:`watch_for` checks them before it hands one
  out. If one is missing (a channels-redis or redis-py release renamed it) it logs one
  warning naming it and uses the heartbeat instead; so does a watch that meets a missing
  one later, when it attaches to a shard.
* :class:`HeartbeatWatch`, for any other layer (the core Redis layer, a third-party one)
  and as that fallback: the bus sends itself a numbered heartbeat every
  ``BUS_HEARTBEAT_INTERVAL`` seconds through a group of its own, with the layer's public
  API (``group_add``, ``group_send``), so that it goes the way posts go. A number that
  never arrives (published to no subscription, or not at all) is a gap, seen when a
  later one arrives. Coarser: it sees a gap only if a heartbeat falls into it, and
  redis-py's retries hold a heartbeat back during a short outage (a restart, a cut
  connection) until the subscriber may be back, so such an outage often goes unseen.

Both also see a subscription that **stalls**: a path to Redis that acknowledges every byte
and answers nothing (a wedged proxy, load balancer or sidecar, a NAT that lost the
connection's state) satisfies TCP keepalive and ``TCP_USER_TIMEOUT``, so the kernel never
gives up, and nothing reconnects. Heartbeats go on under :class:`ReconnectWatch` too (one
group per Redis shard, each on its shard), and when none of a group has come back for
``BUS_STALL_TIMEOUT`` seconds (seen at two heartbeats in a row, so that a busy event loop
reads what came back before it is judged), the bus is told
(:meth:`MessageBus.subscription_stalled`): its listening sockets are closed with 1012 and
``/readyz`` fails its ``bus`` check until a heartbeat comes back. Under
:class:`ReconnectWatch` the shard's subscriber connection is also dropped, and dropped
again while the stall lasts (backing off from ``BUS_STALL_TIMEOUT``), so that redis-py
connects again and the bus recovers as soon as a new connection gets through.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from redis.asyncio.connection import AbstractConnection

from .conf import streaming_settings

if TYPE_CHECKING:
    from .messages import MessageBus

logger = logging.getLogger("streaming.watch")

#: Event type of a heartbeat: the bus's message to itself, ``{"origin", "seq"}``.
HEARTBEAT_TYPE = "streaming.heartbeat"

#: Everything :class:`ReconnectWatch` uses beyond the channel-layer API, as
#: ``(role, attribute)``: checked by :func:`watch_for` (``connection`` on redis-py's
#: connection class, ``pubsub`` when a shard first has one), reached in the code below
#: only through locals named after the role. tests/test_watch.py removes each in turn.
USES: tuple[tuple[str, str], ...] = (
    ("layer", "_get_layer"),  # RedisPubSubChannelLayer: its event loop's layer
    ("loop_layer", "_shards"),  # RedisPubSubLoopLayer
    ("loop_layer", "_get_shard"),  # the shard of a channel (heartbeat groups per shard)
    ("loop_layer", "_get_group_channel_name"),  # a group's Redis channel
    ("shard", "_pubsub"),  # RedisSingleShardConnection: its PubSub, None until first used
    ("shard", "_redis"),  # ... and its client (publishes), None until first used
    ("shard", "_lock"),  # its subscribe/unsubscribe/publish lock
    ("shard", "_subscribed_to"),  # the Redis channels it counts as subscribed
    ("shard", "_receive_message"),  # its reader's hand-off of each message read (counted)
    ("loop_layer", "groups"),  # group Redis channel -> the layer's channels in it
    ("loop_layer", "channels"),  # the layer's own (specific) channels
    ("pubsub", "channels"),  # redis-py: what it subscribes again on reconnecting
    ("pubsub", "connection"),  # redis.asyncio.client.PubSub: None until it subscribes
    ("connection", "register_connect_callback"),  # redis.asyncio.connection
)


def stopping() -> bool:
    """Whether the current task was asked to stop: ``Task.cancel`` was called, even if a
    channel layer swallowed the ``CancelledError`` (channels-redis' core layer can)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _missing(role: str, target: Any) -> str | None:
    for used_role, attribute in USES:
        if used_role == role and not hasattr(target, attribute):
            kind = target if isinstance(target, type) else type(target)
            return f"{kind.__qualname__}.{attribute}"
    return None


class ReconnectWatch:
    """Tells ``bus`` of every reconnect of a shard's subscriber connection."""

    def __init__(self, bus: MessageBus, layer: Any) -> None:
        self._bus = bus
        self._layer = layer
        self._beats: list[HeartbeatWatch] = []  # one per shard: stalls only
        self._beats_of: dict[int, HeartbeatWatch] = {}  # by id(shard)
        self._pruning: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self.attach()
        if self._bus.is_watched_by(self) and not self._beats:  # attach may have fallen back
            loop_layer = self._layer._get_layer()
            for shard, group in _groups_per_shard(self._bus, loop_layer):
                beats = HeartbeatWatch(
                    self._bus, group=group, count_gaps=False, reset=self._resetter(shard)
                )
                _count_reads(shard, beats)
                self._beats.append(beats)
                self._beats_of[id(shard)] = beats
                beats.start()

    def _resetter(self, shard: Any) -> Callable[[], Awaitable[None]]:
        async def reset() -> None:
            """Drop ``shard``'s subscriber connection: redis-py connects it again (and
            subscribes again) when channels-redis next reads, and :meth:`_connected`
            tells the bus of the gap. The idle connections of its pool (publishes) go
            too: made before the stall, they may be as dead, and each would cost a post
            (or a join's probe) its whole timeout before redis-py dropped it."""
            pubsub = shard._pubsub
            connection = pubsub.connection if pubsub is not None else None
            if connection is not None:
                await connection.disconnect(nowait=True)
            client = shard._redis
            if client is not None:
                await client.connection_pool.disconnect(inuse_connections=False)

        return reset

    def attach(self) -> None:
        """Register on every shard's subscriber connection that exists (called once the
        bus has a channel, and after each join: a shard connects on its first use).
        redis-py registers a callback once however often it is asked, and keeps only a
        weak reference to it: this watch lives as long as its bus."""
        layer = self._layer
        try:
            loop_layer = layer._get_layer()
            for shard in loop_layer._shards:
                pubsub = shard._pubsub
                if pubsub is None:
                    continue
                missing = _missing("pubsub", pubsub)
                if missing is not None:
                    raise AttributeError(missing)
                connection = pubsub.connection
                if connection is not None:
                    connection.register_connect_callback(self._connected)
        except (AttributeError, TypeError) as exc:
            logger.error(
                "the bus cannot watch its Redis subscriber connections (%r); "
                "it sends itself heartbeats instead",
                exc,
            )
            self._bus.use_watch(HeartbeatWatch(self._bus))

    def _connected(self, connection: Any) -> None:
        """redis-py's connect callback: ``connection`` has just (re)connected. Never raises
        (an exception would fail redis-py's connect)."""
        try:
            shard = self._shard_of(connection)
            if not self._bus.is_watched_by(self) or shard is None:
                # Replaced, or no longer a subscriber's (a flushed layer's PubSub gives its
                # connection back to the pool, where a publish may reconnect it).
                connection.deregister_connect_callback(self._connected)
                return
            self._bus.subscription_lost("a Redis subscriber connection reconnected")
            beats = self._beats_of.get(id(shard))
            if beats is not None:
                beats.reconnected()
            task = asyncio.get_running_loop().create_task(self._prune(shard))
            self._pruning.add(task)
            task.add_done_callback(self._pruning.discard)
        except Exception:
            logger.exception("handling a Redis reconnect failed")

    async def _prune(self, shard: Any) -> None:
        """Unsubscribe what redis-py subscribed again on reconnecting that the layer no
        longer has: an UNSUBSCRIBE sent on a connection that died before Redis confirmed
        it is undone by redis-py, which subscribes a reconnected connection to every
        channel not confirmed left; the layer had forgotten the group, so the channel
        stayed subscribed for good, every post to it read and dropped. In a task of its
        own, under the shard's lock (redis-py awaits connect callbacks inside the call
        that reconnected, which may hold that lock)."""
        try:
            loop_layer = self._layer._get_layer()
            async with shard._lock:
                pubsub = shard._pubsub
                if pubsub is None:
                    return
                wanted = set(loop_layer.groups) | set(loop_layer.channels)
                names = (n.decode() if isinstance(n, bytes) else n for n in pubsub.channels)
                stale = [name for name in names if name not in wanted]
                if not stale:
                    return
                await pubsub.unsubscribe(*stale)
                shard._subscribed_to.difference_update(stale)
            logger.warning(
                "bus: left %d Redis channel(s) a reconnect had subscribed again", len(stale)
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("bus: leaving what a reconnect subscribed again failed")

    def _shard_of(self, connection: Any) -> Any:
        """The shard whose subscriber connection ``connection`` is now, or None."""
        loop_layer = self._layer._get_layer()
        return next(
            (
                shard
                for shard in loop_layer._shards
                if shard._pubsub is not None and shard._pubsub.connection is connection
            ),
            None,
        )

    def heartbeat(self, event: dict[str, Any]) -> None:
        for beats in self._beats:
            if beats.group == event.get("group"):
                beats.heartbeat(event)

    def stalled_for(self) -> float | None:
        return max((s for b in self._beats if (s := b.stalled_for()) is not None), default=None)

    def stop(self) -> None:
        # Its connect callbacks ask the bus first (is_watched_by).
        for beats in self._beats:
            beats.stop()


def _count_reads(shard: Any, beats: HeartbeatWatch) -> None:
    """Count, on ``beats``, every message ``shard``'s reader reads off its subscriber
    connection (channels-redis' reader hands each to the shard's ``_receive_message``;
    an instance attribute wraps it). Whether the connection delivers is then known apart
    from whether the bus has worked through what it delivered."""
    handoff = shard._receive_message
    deliver = getattr(handoff, "__wrapped__", handoff)  # an earlier bus's counter: replaced

    def counted(message: Any) -> None:
        if message is not None:
            beats.reads += 1
        deliver(message)

    counted.__wrapped__ = deliver  # type: ignore[attr-defined]
    shard._receive_message = counted
    beats.counts_reads = True


#: While a stall lasts, the connection is dropped again after BUS_STALL_TIMEOUT, then after
#: twice that, and so on up to this many times it.
MAX_RESET_INTERVAL = 8

#: Heartbeats sent and not come back before the watch joins its group again (a Redis
#: restarted with no heartbeat failing has forgotten the core layer's memberships).
REJOIN_AFTER = 3


class HeartbeatWatch:
    """Sends ``bus`` a numbered heartbeat every ``BUS_HEARTBEAT_INTERVAL`` seconds and
    tells it of a number that did not arrive.

    Heartbeats travel through a group of their own (``streaming.heartbeat.<bus id>``), as
    posts do, not to the bus's own channel: the core layer keeps group memberships in
    Redis, and a Redis restarted between two heartbeats has forgotten them, so posts and
    heartbeats alike reach no one. After ``REJOIN_AFTER`` heartbeats in a row that did
    not come back, the watch joins its group again; the next heartbeat then arrives with
    a gap in the numbers, and the bus joins every channel again and closes its listening
    sockets. A heartbeat that is only late (a busy event loop) costs one extra join.

    It also sees a stall (the module's docstring): no heartbeat back for
    ``BUS_STALL_TIMEOUT``. ``count_gaps=False`` watches for stalls only (under
    :class:`ReconnectWatch`, which sees gaps exactly); ``reset`` is awaited at each stall
    told, to drop the connection that stalled."""

    def __init__(
        self,
        bus: MessageBus,
        *,
        group: str | None = None,
        count_gaps: bool = True,
        reset: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._bus = bus
        self._group = group or f"streaming.heartbeat.{bus.id}"
        self._count_gaps = count_gaps
        self._reset = reset
        self._sent = 0  # the last number sent (or tried)
        self._seen = 0  # the highest number received
        self._unanswered = REJOIN_AFTER  # sent since the last one came back: join first
        self._task: asyncio.Task[None] | None = None
        self._back_at = time.monotonic()  # when the last heartbeat came back (or the start)
        self._suspect = False  # silent for BUS_STALL_TIMEOUT at the last beat
        self._stalled_at: float | None = None  # when the stall was last told; None: none
        self._reset_after = 0.0  # seconds from that to the next reset, while it lasts
        #: Messages read off this group's subscriber connection, where ReconnectWatch
        #: counts them (``counts_reads``); else the bus's events received stand for them.
        self.reads = 0
        self.counts_reads = False
        self._reads_seen = -1  # reads (or events) at the last check
        self._behind = False  # told: the bus is behind what it reads, not stalled
        self._sends_fail = False  # the last heartbeat could not be sent: Redis is unreachable

    @property
    def group(self) -> str:
        return self._group

    def stalled_for(self) -> float | None:
        """Seconds since a heartbeat last came back, while stalled or behind (told);
        None: neither."""
        if self._stalled_at is None:
            return None
        return time.monotonic() - self._back_at

    @property
    def behind(self) -> bool:
        """Whether what :meth:`stalled_for` counts is a backlog, not a stall."""
        return self._behind

    def start(self) -> None:
        if self._task is None:
            self._task = self._bus.supervise("heartbeat", self._beat)

    def attach(self) -> None:
        pass

    async def _beat(self) -> None:
        bus = self._bus
        loop = asyncio.get_running_loop()
        rejoin_at = loop.time()
        while not stopping():
            # Joined again as the bus's channels are (GROUP_REFRESH_INTERVAL: the core
            # layer expires memberships), and when heartbeats stop coming back.
            due = self._unanswered >= REJOIN_AFTER or loop.time() >= rejoin_at
            if due and await bus.try_broker(bus.layer.group_add(self._group, bus.channel_name)):
                self._unanswered = 0
                rejoin_at = loop.time() + streaming_settings.GROUP_REFRESH_INTERVAL
            await asyncio.sleep(streaming_settings.BUS_HEARTBEAT_INTERVAL)
            await self._check_stall()
            self._sent += 1
            event = {"type": HEARTBEAT_TYPE, "origin": bus.id, "group": self._group,
                     "seq": self._sent}  # fmt: skip
            self._sends_fail = not await bus.try_broker(bus.layer.group_send(self._group, event))
            if not self._sends_fail:
                self._unanswered += 1

    async def _check_stall(self) -> None:
        """Tell the bus of a stall: no heartbeat back for ``BUS_STALL_TIMEOUT``, seen at
        two beats in a row (between them the event loop has read whatever came back
        while it was busy), and nothing read off the subscription between them. Told
        once a stall; the connection is reset (``reset``) then, and again while the stall
        lasts: after ``BUS_STALL_TIMEOUT``, then twice that, and so on up to
        :data:`MAX_RESET_INTERVAL` times it, so that a new connection that takes longer
        than the timeout to come back (a loaded server) is not dropped again and again
        before its first heartbeat returns.

        A subscription that delivered something between the two beats works: the
        heartbeats wait in a backlog the bus has not worked off (posts come in faster
        than its listeners take them). The bus is told it is behind
        (:meth:`MessageBus.subscription_behind`), once while it lasts, and nothing is
        reset: a new connection would lose what the backlog's connection delivers."""
        limit = streaming_settings.BUS_STALL_TIMEOUT
        now = time.monotonic()
        silent = now - self._back_at
        reads = self.reads if self.counts_reads else self._bus.events_received
        delivered, self._reads_seen = reads != self._reads_seen, reads
        if silent < limit:
            self._suspect = False
            return
        if not self._suspect:
            self._suspect = True
            return
        if delivered:
            if self._stalled_at is None:
                self._stalled_at = now
                self._behind = True
                self._bus.subscription_behind(silent, self._group)
            return
        if self._behind:  # what was a backlog stopped delivering: a stall from now
            self._stalled_at = None
            self._behind = False
        if self._stalled_at is not None and now - self._stalled_at < self._reset_after:
            return
        first = self._stalled_at is None
        self._reset_after = (
            limit if first else min(2 * self._reset_after, MAX_RESET_INTERVAL * limit)
        )
        self._stalled_at = now
        if first:
            self._bus.subscription_stalled(silent, self._group, unreachable=self._sends_fail)
        if self._reset is not None:
            try:
                async with asyncio.timeout(streaming_settings.PUBLISH_TIMEOUT):
                    await self._reset()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if stopping():
                    raise asyncio.CancelledError from None
                logger.warning("bus: dropping the stalled connection failed: %r", exc)

    def reconnected(self) -> None:
        """The subscriber connection that carries this group's heartbeats has connected
        again, and the gap was told: silence is counted from now. Before, a Redis down for
        about ``BUS_STALL_TIMEOUT`` (a restart) was told twice: as the gap, and, when the
        first heartbeats after the reconnect took a beat or two while the new connection
        read its own traffic, as a bus "that far behind" (a second round of 1012s; helper
        "operator13"). A new connection that stalls is still seen, ``BUS_STALL_TIMEOUT``
        after it connected. A stall already told stays told until a heartbeat comes back."""
        self._back_at = time.monotonic()
        self._suspect = False

    def heartbeat(self, event: dict[str, Any]) -> None:
        """A heartbeat of this bus came back."""
        seq = event.get("seq")
        if type(seq) is not int or seq <= self._seen:
            return
        self._unanswered = 0
        self._back_at = time.monotonic()
        self._suspect = False
        if self._stalled_at is not None:
            self._stalled_at = None
            logger.warning(
                "bus: heartbeats of %s come back again: the %s is over",
                self._group,
                "backlog" if self._behind else "stall",
            )
            self._behind = False
        lost = seq - self._seen - 1
        self._seen = seq
        if lost and self._count_gaps:
            self._bus.subscription_lost(f"{lost} heartbeat(s) of the bus did not come back")

    def stop(self) -> None:
        """Stop sending (the bus's ``aclose`` also cancels the task it supervises)."""
        if self._task is not None:
            self._task.cancel()


Watch = ReconnectWatch | HeartbeatWatch

#: Names tried per shard when picking heartbeat groups that land on every shard.
_GROUP_TRIES = 64


def _groups_per_shard(bus: MessageBus, loop_layer: Any) -> list[tuple[Any, str]]:
    """``(shard, heartbeat group)`` for each Redis shard of ``loop_layer``: a group whose
    channel channels-redis puts on that shard (by the hash it spreads channels with)."""
    shards = list(loop_layer._shards)
    found: dict[int, tuple[Any, str]] = {}
    for n in range(_GROUP_TRIES * len(shards)):
        group = f"streaming.heartbeat.{bus.id}.{n}"
        shard = loop_layer._get_shard(loop_layer._get_group_channel_name(group))
        found.setdefault(id(shard), (shard, group))
        if len(found) == len(shards):
            break
    return list(found.values())


def watch_for(bus: MessageBus, layer: Any) -> Watch:
    """The watch for ``bus`` on ``layer`` (see the module's docstring)."""
    if type(layer).__module__ != "channels_redis.pubsub":
        return HeartbeatWatch(bus)
    missing = _lacks(layer)
    if missing is not None:
        logger.warning(
            "channels-redis' pub/sub layer lacks %s: the bus sends itself heartbeats to "
            "see a lost subscription instead of watching its Redis connections",
            missing,
        )
        return HeartbeatWatch(bus)
    return ReconnectWatch(bus, layer)


def _lacks(layer: Any) -> str | None:
    """The first internal of :data:`USES` that ``layer`` lacks (before any shard has a
    PubSub), or None."""
    # On the class: the layer's __getattr__ would recurse for a missing _get_layer.
    missing = _missing("layer", type(layer)) or _missing("connection", AbstractConnection)
    if missing is not None:
        return missing
    try:
        loop_layer = layer._get_layer()
        checks = [("loop_layer", loop_layer)] + [("shard", shard) for shard in loop_layer._shards]
    except (AttributeError, TypeError) as exc:
        return repr(exc)
    return next((found for role, target in checks if (found := _missing(role, target))), None)
