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
"""

from __future__ import annotations

import asyncio
import logging
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
    ("shard", "_pubsub"),  # RedisSingleShardConnection: its PubSub, None until first used
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

    def start(self) -> None:
        self.attach()

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
            if not self._bus.is_watched_by(self) or not self._subscribes(connection):
                # Replaced, or no longer a subscriber's (a flushed layer's PubSub gives its
                # connection back to the pool, where a publish may reconnect it).
                connection.deregister_connect_callback(self._connected)
                return
            self._bus.subscription_lost("a Redis subscriber connection reconnected")
        except Exception:
            logger.exception("handling a Redis reconnect failed")

    def _subscribes(self, connection: Any) -> bool:
        """Whether ``connection`` is a shard's subscriber connection now."""
        loop_layer = self._layer._get_layer()
        return any(
            shard._pubsub is not None and shard._pubsub.connection is connection
            for shard in loop_layer._shards
        )

    def heartbeat(self, event: dict[str, Any]) -> None:
        pass

    def stop(self) -> None:
        pass  # its callbacks ask the bus first (is_watched_by)


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
    sockets. A heartbeat that is only late (a busy event loop) costs one extra join."""

    def __init__(self, bus: MessageBus) -> None:
        self._bus = bus
        self._group = f"streaming.heartbeat.{bus.id}"
        self._sent = 0  # the last number sent (or tried)
        self._seen = 0  # the highest number received
        self._unanswered = REJOIN_AFTER  # sent since the last one came back: join first
        self._task: asyncio.Task[None] | None = None

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
            self._sent += 1
            event = {"type": HEARTBEAT_TYPE, "origin": bus.id, "seq": self._sent}
            if await bus.try_broker(bus.layer.group_send(self._group, event)):
                self._unanswered += 1

    def heartbeat(self, event: dict[str, Any]) -> None:
        """A heartbeat of this bus came back."""
        seq = event.get("seq")
        if type(seq) is not int or seq <= self._seen:
            return
        self._unanswered = 0
        lost = seq - self._seen - 1
        self._seen = seq
        if lost:
            self._bus.subscription_lost(f"{lost} heartbeat(s) of the bus did not come back")

    def stop(self) -> None:
        """Stop sending (the bus's ``aclose`` also cancels the task it supervises)."""
        if self._task is not None:
            self._task.cancel()


Watch = ReconnectWatch | HeartbeatWatch


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
