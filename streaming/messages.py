"""The message bus: Serverpod's ``session.messages``, in one process and across servers.

One :class:`MessageBus` per event loop. Listeners live in process memory; a post is
delivered to this process's listeners directly and, when the channel layer spans
processes (channels-redis), published ONCE to the channel-layer group named after
the channel. Each server joins a channel's group once for all its local listeners
and fans out in process, so a post to N listeners on S servers costs O(S) broker
work, not O(N). A server ignores the echo of its own posts, so each listener gets
each post exactly once while its server and the broker are up.

Contracts:

* ``add_listener`` is sync: local delivery starts at once. It returns a
  :class:`ListenerHandle`; ``await handle`` returns once the server has joined the
  channel's group, i.e. posts from the whole cluster are delivered. A join counts
  only once the bus has received its own probe through the broker, so the
  subscription is known to be live, not merely requested. ``await handle`` raises
  ``MessagingUnavailable`` after ``PUBLISH_TIMEOUT`` if the broker is unreachable;
  the bus keeps retrying in the background and joins when the broker is back.
* The same listener added twice to a channel is called once per post.
* A listener may be any callable, called in post order. An awaitable result runs
  in that listener's own :class:`~streaming.lane.Lane`: one call at a time, in
  order, so a slow listener holds up only itself, never the poster, the bus's
  receiver or other listeners. At most ``LISTEN_QUEUE_LIMIT`` calls wait per
  listener; more are dropped with an error in the log. A listener that raises
  (``CancelledError`` included) is logged; the others still get the message.
* Posts from one sender to one channel arrive in order.
* The bus's receiver and refresher are supervised: one that fails is logged and
  restarted.
* A post lost because this server's subscription was down (Redis restarted, the
  subscriber connection was cut) is never lost without a word: the bus's watch
  (:mod:`streaming.watch`) sees the gap, and :meth:`MessageBus.subscription_lost`
  closes every socket that listens with 1012, so that its client reconnects and reads
  what it missed, and proves every join again.
* Listeners are owned (by a session, or a connection): ``remove_owner`` drops all of
  an owner's listeners and leaves no group membership behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import inspect
import logging
import re
import time
import uuid
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from time import perf_counter
from typing import TYPE_CHECKING, Any

from channels.layers import InMemoryChannelLayer, get_channel_layer

from . import metrics, sparse
from .conf import streaming_settings
from .eager import Done
from .exceptions import (
    InvalidChannelName,
    MessagingNotGlobal,
    MessagingUnavailable,
    RateLimited,
)
from .fairness import turn_due
from .lane import Lane
from .publish import Publisher, publisher_for
from .serialization import SerializableEntity, cache_wire, decode_object_json, encode_object
from .watch import HEARTBEAT_TYPE, ReconnectWatch, Watch, stopping, watch_for

if TYPE_CHECKING:
    from .session import StreamingSession

logger = logging.getLogger("streaming.messages")

Listener = Callable[[SerializableEntity], Any]

#: Event type of the bus's channel-layer messages (one namespaced type, never a client string).
EVENT_TYPE = "streaming.post"
#: Event type of a join probe: a server publishes one to a group it joined and counts
#: the join once it receives it back.
PROBE_TYPE = "streaming.probe"
#: Seconds before a probe that has not come back is published again (doubling, up to
#: ``PROBE_RESEND_MAX``). A probe published before Redis applied the ``SUBSCRIBE`` is
#: lost, which is the race probes detect; it is not a failure of the join.
PROBE_RESEND_FIRST = 0.05
PROBE_RESEND_MAX = 0.4
#: Channels whose join (``group_add``, then a probe until it comes back) is under way at
#: once; the others wait their turn. After a bus gap every channel rejoins together: with
#: 8,000 channels, 8,000 probes resent every 50 to 400 ms took the process's whole core,
#: every join timed out and was tried again, and no socket came back (bench/herd.py).
JOIN_CONCURRENCY = 128
#: Leaves at the broker at once (each waits for its shard's lock; the others wait their
#: turn, the timeout not yet running). Unbounded, 51,000 leaves (two users' storm of
#: typing calls, closed) queued on channels-redis' one lock per shard, whose waiters
#: asyncio scans and removes one by one: each timed out, was tried again, and the process
#: spun at 100% for minutes, handshakes unanswered (helper "attacker13").
LEAVE_CONCURRENCY = 64
#: A leave may take this many times ``PUBLISH_TIMEOUT`` (it waits for the shard's lock
#: behind every join and leave queued there) before it is tried again.
LEAVE_TIMEOUTS = 4
#: Seconds between two log lines about joins and leaves that failed (the ones between are
#: counted in the next): a Redis outage with 50,000 channels wrote a line per channel per
#: retry (974,000 lines, 132 MB in 12 minutes).
FAILURE_LOG_INTERVAL = 10.0
#: Seconds ``aclose`` waits for the bus's tasks to stop.
ACLOSE_TIMEOUT = 5.0

MAX_CHANNEL_LENGTH = 200
_PLAIN_GROUP = re.compile(r"^[A-Za-z0-9_\-]{1,90}$")


def group_name(channel: str) -> str:
    """The channel-layer group that carries ``channel`` between servers.

    Names of ``[A-Za-z0-9_-]`` up to 90 characters are used as they are
    (``user_42`` stays ``user_42``); any other name maps to ``streaming.<sha256>``,
    which cannot collide with a plain name since those have no dot.
    """
    if _PLAIN_GROUP.match(channel):
        return channel
    return "streaming." + hashlib.sha256(channel.encode("utf-8")).hexdigest()[:48]


def check_channel(channel: Any) -> str:
    if not isinstance(channel, str) or not channel:
        raise InvalidChannelName("A channel name must be a non-empty string.")
    if len(channel) > MAX_CHANNEL_LENGTH:
        raise InvalidChannelName(
            f"Channel name too long ({len(channel)} > {MAX_CHANNEL_LENGTH} characters)."
        )
    return channel


class _Channel:
    """One channel's local listeners. Idle memory matters (a channel per user is
    typical): the owners of a listener are one ``id`` until a second owner adds the
    same listener, and the join is a flag; an :class:`asyncio.Event` (whose deque
    costs ~760 bytes) exists only while a coroutine waits for the join."""

    __slots__ = ("_waiter", "is_joined", "lanes", "listeners")

    def __init__(self) -> None:
        # listener -> its owner's id, or a set of ids once several owners added it;
        # a dict keeps the order listeners were added in
        self.listeners: dict[Listener, int | set[int]] = {}
        # listener -> the lane its awaitable results run in (made on first use)
        self.lanes: dict[Listener, Lane] = {}
        self.is_joined = False
        self._waiter: asyncio.Event | None = None

    def set_joined(self) -> None:
        """Joined in the cluster (or in-process only): wake whoever waits."""
        self.is_joined = True
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.set()

    def release(self) -> None:
        """No listeners are left (the entry goes): whoever waits for the join stops
        waiting (``wait_joined`` is about channels that have listeners)."""
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.set()

    def unjoin(self) -> None:
        """No longer known to be joined (the subscription was down): joined again once
        a probe comes back."""
        self.is_joined = False

    async def wait_joined(self) -> None:
        """Return once :meth:`set_joined` has been called."""
        if self.is_joined:
            return
        if self._waiter is None:
            self._waiter = asyncio.Event()
        await self._waiter.wait()


class ListenerHandle:
    """Returned by ``add_listener``. ``await handle``: cluster-wide delivery is assured."""

    __slots__ = ("_bus", "channel", "listener")

    def __init__(self, bus: MessageBus, channel: str, listener: Listener) -> None:
        self._bus = bus
        self.channel = channel
        self.listener = listener

    def __await__(self) -> Generator[Any, None, ListenerHandle]:
        entry = self._bus._channels.get(self.channel)
        if entry is not None and not entry.is_joined:  # else no coroutine: joined already
            yield from self._bus._wait_joined(self.channel).__await__()
        return self


class MessageBus:
    """The process's (event loop's) message bus. Get it with :func:`get_bus`."""

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self.id = uuid.uuid4().hex
        self.cross_process = layer is not None and not isinstance(layer, InMemoryChannelLayer)
        self._channels: dict[str, _Channel] = {}
        # owner id -> its (channel, listener) pair, or a set of pairs once it has several
        self._owned: dict[int, tuple[str, Listener] | set[tuple[str, Listener]]] = {}
        self._joined: set[str] = set()
        self._begun: set[str] = set()  # channels whose join was begun, not confirmed
        self._locks: dict[str, asyncio.Lock] = {}
        self._reconcilers: set[asyncio.Task[None]] = set()
        self._waiting: set[str] = set()  # channels whose reconciler waits for the lock
        self._channel_name: str | None = None
        self._receiver_lock = asyncio.Lock()
        self._join_slots = asyncio.Semaphore(JOIN_CONCURRENCY)
        self._leave_slots = asyncio.Semaphore(LEAVE_CONCURRENCY)
        self._failures = _FailureLog()
        self._receiver: asyncio.Task[None] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._probes: dict[str, asyncio.Future[None]] = {}
        self.restarts = 0  # supervised loops restarted after a failure (tests, metrics)
        self._watch: Watch | None = None  # made with the receiver: it needs the running loop
        self._supervised: set[asyncio.Task[None]] = set()  # receiver, refresher, heartbeat
        self.gaps = 0  # times the subscription was lost (subscription_lost)
        # Batched publishes (one round trip per loop turn) where the layer allows it.
        self._publisher: Publisher | None = publisher_for(layer) if self.cross_process else None
        self.posts_published = 0
        self.posts_received = 0
        self.events_received = 0  # every event off the layer: posts, probes, heartbeats

    # -- listeners --------------------------------------------------------------------------

    def add_listener(self, channel: str, listener: Listener, *, owner: Any) -> ListenerHandle:
        check_channel(channel)
        if not callable(listener):
            raise TypeError(f"listener must be callable, got {listener!r}")
        entry = self._channels.get(channel)
        if entry is None:
            entry = self._channels[channel] = _Channel()
            if self.cross_process:
                self._reconcile_soon(channel)
            else:
                entry.set_joined()
        owner_id = id(owner)
        sparse.add(entry.listeners, listener, owner_id)
        sparse.add(self._owned, owner_id, (channel, listener))
        return ListenerHandle(self, channel, listener)

    def remove_listener(self, channel: str, listener: Listener, *, owner: Any) -> None:
        owner_id = id(owner)
        sparse.discard(self._owned, owner_id, (channel, listener))
        self._drop(channel, listener, owner_id)

    def _pairs(self, owner_id: int) -> tuple[tuple[str, Listener], ...] | set[Any]:
        return sparse.values(self._owned.get(owner_id))

    def remove_owner(self, owner: Any) -> None:
        """Remove every listener ``owner`` added."""
        owner_id = id(owner)
        pairs = self._pairs(owner_id)
        self._owned.pop(owner_id, None)
        for channel, listener in pairs:
            self._drop(channel, listener, owner_id)

    def _drop(self, channel: str, listener: Listener, owner_id: int) -> None:
        entry = self._channels.get(channel)
        if entry is None:
            return
        if listener not in entry.listeners:
            return
        if sparse.discard(entry.listeners, listener, owner_id):  # its last owner went
            entry.lanes.pop(listener, None)  # calls already queued still run
        if not entry.listeners:
            del self._channels[channel]
            entry.release()
            if self.cross_process:
                self._reconcile_soon(channel)

    def listener_count(self, channel: str) -> int:
        entry = self._channels.get(channel)
        return len(entry.listeners) if entry else 0

    def channels(self) -> list[str]:
        return list(self._channels)

    async def drain(self) -> None:
        """Wait until every listener call queued so far has run (tests, shutdown)."""
        for entry in list(self._channels.values()):
            for lane in list(entry.lanes.values()):
                await lane.join()

    def channels_of(self, owner: Any) -> set[str]:
        """The channels ``owner`` listens on."""
        return {channel for channel, _ in self._pairs(id(owner))}

    def listeners_of(self, owner: Any) -> int:
        """How many listeners ``owner`` has added (and not removed)."""
        return len(self._pairs(id(owner)))

    async def wait_joined(self, channels: set[str] | list[str], *, bounded: bool = True) -> None:
        """Return once every one of ``channels`` (that still has listeners) is joined.

        Raises ``MessagingUnavailable`` if that takes longer than ``PUBLISH_TIMEOUT``
        (the broker is unreachable); the bus keeps trying in the background. With
        ``bounded=False`` it waits as long as that takes.
        """
        pending = [
            (channel, entry)
            for channel in channels
            if (entry := self._channels.get(channel)) is not None and not entry.is_joined
        ]
        if not pending:
            return
        if not bounded:
            for _, entry in pending:
                await entry.wait_joined()
            return
        try:
            async with asyncio.timeout(streaming_settings.PUBLISH_TIMEOUT):
                for _, entry in pending:
                    await entry.wait_joined()
        except TimeoutError:
            late = sorted(channel for channel, entry in pending if not entry.is_joined)
            raise MessagingUnavailable(
                f"Could not join channel(s) {late!r} in the cluster yet; retrying."
            ) from None

    # -- posting ----------------------------------------------------------------------------

    def post_message(
        self, channel: str, message: SerializableEntity, *, global_: bool | None = None
    ) -> asyncio.Future[bool]:
        """Deliver ``message`` to every listener of ``channel``; see the module docstring.

        Starts at once, as Serverpod's ``postMessage`` does in Dart: this process's
        listeners are called before it returns, and the cluster publish is on its way.
        The result is a future: awaited, it gives True, or raises
        ``MessagingUnavailable`` if the cluster publish failed or was not sent within
        ``PUBLISH_TIMEOUT`` (then it is withdrawn: it will not arrive), or was sent but
        its round trip took another ``PUBLISH_TIMEOUT`` (then it may still arrive).
        Local listeners have had the message regardless. Not
        awaited, a failure is logged by asyncio ("exception was never retrieved"), as
        Dart logs an unawaited error. Cancelling it before the publish left withdraws it.

        ``global_=None``: through the channel layer when it spans processes, else in
        process. ``False``: this process only. ``True``: cluster-wide, or
        ``MessagingNotGlobal`` (raised at the call) when the layer is in-process.
        """
        check_channel(channel)
        if not isinstance(message, SerializableEntity):
            raise TypeError(f"post_message needs a SerializableEntity, got {message!r}")
        if global_ and not self.cross_process:
            raise MessagingNotGlobal()
        wire = encode_object(message)  # once per post, whatever the number of listeners
        metrics.bus_post()
        entry = self._channels.get(channel)
        if entry is not None:
            self._deliver(channel, entry, message)
        result: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if self.cross_process and global_ is not False:
            self._publish_soon(channel, self._event(channel, wire), result)
        else:
            result.set_result(True)
        return result

    def publish_again(self, channel: str, message: SerializableEntity) -> asyncio.Future[bool]:
        """The cluster publish of a post whose publish failed (``MessagingUnavailable``),
        without this process's listeners, which had it: otherwise as
        :meth:`post_message` with ``global_=True`` (a future, the same failures)."""
        check_channel(channel)
        if not self.cross_process:
            raise MessagingNotGlobal()
        result: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._publish_soon(channel, self._event(channel, encode_object(message)), result)
        return result

    def _event(self, channel: str, wire: str) -> dict[str, Any]:
        """The channel-layer event that carries a post (``wire``: the encoded message)."""
        return {"type": EVENT_TYPE, "origin": self.id, "channel": channel, "object": wire}

    def _publish_soon(
        self, channel: str, event: dict[str, Any], result: asyncio.Future[bool]
    ) -> None:
        """Publish ``event`` and settle ``result`` with its outcome, without a task of
        its own (the batched publisher's future, bounded by a timer)."""
        loop = asyncio.get_running_loop()
        timeout = streaming_settings.PUBLISH_TIMEOUT
        inner: asyncio.Future[Any]
        if self._publisher is not None:
            inner = self._publisher.publish(group_name(channel), event)
        else:
            inner = loop.create_task(self.layer.group_send(group_name(channel), event))
        publisher = self._publisher
        # perf_counter, not loop.time(): uvloop's clock counts whole milliseconds, and
        # a publish to a local Redis takes less than one (it was observed as 0 s).
        posted = perf_counter()
        timer: asyncio.TimerHandle

        def expire() -> None:
            """At ``PUBLISH_TIMEOUT`` a post not yet sent is withdrawn (it fails, certain
            not to arrive). One already on its way to Redis is given one more
            ``PUBLISH_TIMEOUT`` for its round trip: failing it now would tell the poster
            "may not have arrived" of a message Redis delivers (seen under overload)."""
            nonlocal timer
            if publisher is not None and not publisher.withdraw(inner) and not inner.done():
                timer = loop.call_later(timeout, inner.cancel)
            else:
                inner.cancel()

        timer = loop.call_later(timeout, expire)

        def settle(done: asyncio.Future[Any]) -> None:
            timer.cancel()
            if result.done():
                return
            if done.cancelled() or done.exception() is not None:
                metrics.bus_publish_failed()
            else:
                metrics.bus_published(perf_counter() - posted)
            if done.cancelled():
                result.set_exception(
                    MessagingUnavailable(
                        f"Could not publish to channel {channel!r} within {timeout:g}s."
                    )
                )
            elif (exc := done.exception()) is not None:
                result.set_exception(
                    MessagingUnavailable(f"Could not publish to channel {channel!r}: {exc!r}")
                )
            else:
                self.posts_published += 1
                result.set_result(True)

        def withdraw(outcome: asyncio.Future[bool]) -> None:
            if outcome.cancelled() and not inner.done():
                inner.cancel()

        inner.add_done_callback(settle)
        result.add_done_callback(withdraw)

    def _deliver(self, channel: str, entry: _Channel, message: SerializableEntity) -> None:
        """Call each listener; an awaitable result goes to that listener's lane."""
        limit = streaming_settings.LISTEN_QUEUE_LIMIT
        metrics.bus_delivered(len(entry.listeners))
        for listener in list(entry.listeners):
            try:
                result = listener(message)
            except (Exception, asyncio.CancelledError):
                logger.exception("listener %r of channel %r raised", listener, channel)
                continue
            if result is None or type(result) is Done or not inspect.isawaitable(result):
                continue  # done already (send_stream_message queues at once)
            lane = entry.lanes.get(listener)
            if lane is None:
                lane = Lane(f"listener of {channel!r}", isolated=True)
                if listener in entry.listeners:  # else it removed itself while called
                    entry.lanes[listener] = lane
            if len(lane) >= limit:
                logger.error(
                    "listener %r of channel %r is %d posts behind; dropping a post",
                    listener,
                    channel,
                    len(lane),
                )
                _discard(result)
                continue
            lane.submit(functools.partial(_wait, result), "listener")

    # -- the cluster side -------------------------------------------------------------------

    async def _wait_joined(self, channel: str) -> None:
        entry = self._channels.get(channel)
        if entry is None or entry.is_joined:
            return
        try:
            async with asyncio.timeout(streaming_settings.PUBLISH_TIMEOUT):
                await entry.wait_joined()
        except TimeoutError:
            raise MessagingUnavailable(
                f"Could not join channel {channel!r} in the cluster yet; retrying."
            ) from None

    def _reconcile_soon(self, channel: str) -> None:
        # One task per channel waits for its lock at most: it reads the state once it has
        # the lock, so it covers every change made meanwhile (a flapping subscription
        # would otherwise pile up a task per channel per gap: 181,866 in a review).
        if channel in self._waiting:
            return
        self._waiting.add(channel)
        task = asyncio.get_running_loop().create_task(self._reconcile(channel))
        self._reconcilers.add(task)
        task.add_done_callback(self._reconcilers.discard)

    async def _reconcile(self, channel: str) -> None:
        """Make group membership match whether ``channel`` has local listeners."""
        lock = self._locks.setdefault(channel, asyncio.Lock())
        try:
            try:
                await lock.acquire()
            finally:
                self._waiting.discard(channel)
            async with _held(lock):
                delay = 0.05
                repair = False  # a leave of this channel failed or timed out
                while True:
                    want = channel in self._channels
                    have = channel in self._joined
                    if want and have and repair:
                        # Listened to again while its leave failed: channels-redis forgot
                        # the group before the UNSUBSCRIBE that failed, so "joined" is no
                        # longer true (helper "reviewer13": deaf until left again). Joined
                        # again, with its probe.
                        self._joined.discard(channel)
                        self._begun.add(channel)
                        have = repair = False
                    if want and have:
                        self._channels[channel].set_joined()
                        return
                    if not want and not have and channel not in self._begun:
                        return
                    try:
                        await self._ensure_receiver()
                        if want:
                            # A slot first, then the timeout: waiting for a turn is not
                            # the broker being slow.
                            async with self._join_slots:
                                if channel not in self._channels:
                                    continue  # its listeners went meanwhile: read again
                                # From here the layer may hold the group (and Redis the
                                # subscription) whatever becomes of this join: a channel
                                # whose listeners go is left even if it never counted.
                                self._begun.add(channel)
                                async with asyncio.timeout(streaming_settings.PUBLISH_TIMEOUT):
                                    await self.layer.group_add(
                                        group_name(channel), self._channel_name
                                    )
                                    await self._probe(channel)
                                self._joined.add(channel)
                                self._begun.discard(channel)
                                if self._watch is not None:
                                    self._watch.attach()  # the shard may be new
                            continue
                        # channels-redis forgets the group before it waits for the
                        # shard's lock to UNSUBSCRIBE: a leave that timed out or failed
                        # there was never made, and a retry found nothing to leave (a
                        # storm of joins left 39,890 channels subscribed that way; redis-py
                        # subscribes them again when it reconnects). A leave tried again,
                        # or of a join never confirmed (its SUBSCRIBE may have gone out),
                        # first restores the group (no command if the shard still counts
                        # it as subscribed), then leaves it.
                        async with (
                            self._leave_slots,
                            asyncio.timeout(LEAVE_TIMEOUTS * streaming_settings.PUBLISH_TIMEOUT),
                        ):
                            if channel in self._channels:
                                continue  # listened to again meanwhile: read again
                            if repair or channel in self._begun:
                                await self.layer.group_add(group_name(channel), self._channel_name)
                            repair = True  # until it is done
                            await self.layer.group_discard(group_name(channel), self._channel_name)
                        repair = False
                        self._joined.discard(channel)
                        self._begun.discard(channel)
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        self._failures.note(channel, "join" if want else "leave", exc, delay)
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, 5.0)
        finally:
            if not lock.locked() and channel not in self._channels:
                self._locks.pop(channel, None)

    async def _probe(self, channel: str) -> None:
        """Publish a probe to ``channel``'s group and wait to receive it back.

        ``group_add`` may return before the broker has applied the subscription (the
        pub/sub layer writes ``SUBSCRIBE`` without waiting for its reply), and a post
        from another server in between would be lost. The probe travels the same way
        posts do, after the subscription, so its return proves the join. With several
        Redis shards it is published to the group's own shard (the layer picks it by the
        group's name, as for ``group_add``), so it proves the join where posts will go.
        """
        token = uuid.uuid4().hex
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._probes[token] = future
        event = {"type": PROBE_TYPE, "origin": self.id, "token": token}
        try:
            # Redis reads the subscriber's and the publisher's connections in whatever
            # order its event loop finds them ready: a probe sent in the same instant as
            # the SUBSCRIBE can be applied first and is then lost (so are all the probes
            # of that batch). Published again until one comes back (or the caller's
            # timeout): one came back, so the subscription is in place.
            delay = PROBE_RESEND_FIRST
            while True:
                await self._publish(group_name(channel), event)
                done, _ = await asyncio.wait((future,), timeout=delay)
                if done:
                    return
                delay = min(delay * 2, PROBE_RESEND_MAX)
        finally:
            self._probes.pop(token, None)
            future.cancel()

    async def _publish(self, group: str, event: dict[str, Any]) -> None:
        if self._publisher is not None:
            # If the caller times out the future is cancelled: a post not yet sent is withdrawn.
            await self._publisher.publish(group, event)
        else:
            await self.layer.group_send(group, event)

    async def _ensure_receiver(self) -> None:
        # Reconcilers of several channels get here concurrently: one channel name only,
        # or groups would be joined with a name nobody reads.
        async with self._receiver_lock:
            if self._channel_name is None:
                self._channel_name = await self.layer.new_channel("streaming.bus.")
        if self._receiver is None:
            self._receiver = self.supervise("receiver", self._receive_loop)
            self._refresher = self.supervise("refresher", self._refresh_loop)
        if self._watch is None:
            self.use_watch(watch_for(self, self.layer))

    def supervise(self, name: str, body: Callable[[], Any]) -> asyncio.Task[None]:
        """Run ``body`` in a task that restarts it (logged) whenever it ends or fails."""

        async def supervisor() -> None:
            delay = 0.05
            while not stopping():  # a cancel the body swallowed still stops it
                try:
                    await body()
                    logger.error("bus %s ended by itself; restarting it", name)
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise  # aclose(): stop for real
                    logger.error("bus %s got a stray cancellation; restarting it", name)
                except Exception:
                    if stopping():
                        raise asyncio.CancelledError from None  # aclose() met a failure
                    logger.exception("bus %s failed; restarting it in %.2fs", name, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    self.restarts += 1
                    continue
                self.restarts += 1
                delay = 0.05

        task = asyncio.get_running_loop().create_task(supervisor(), name=f"streaming-bus-{name}")
        self._supervised.add(task)
        task.add_done_callback(self._supervised.discard)
        return task

    async def _receive_loop(self) -> None:
        """Hand each event of the bus's channel to :meth:`_received`, giving the event
        loop a turn once the process's fair slice is over (``streaming.fairness``, as the
        frame loop and streams do): a channel layer's ``receive`` returns without
        suspending while events wait, so a backlog (posts coming in faster than the
        listeners take them) would otherwise hold the loop until it was worked off, every
        socket's frames and pings, and the heartbeats that tell a backlog from a stall,
        waiting behind it."""
        delay = 0.05
        loop = asyncio.get_running_loop()
        while True:
            try:
                event = await self.layer.receive(self._channel_name)
                delay = 0.05
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if stopping():
                    raise asyncio.CancelledError from None
                logger.warning("bus receive failed (%r); retrying in %.2fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self.events_received += 1
            self._received(event)
            if turn_due(loop.time()):  # the sockets' turn (FAIR_SLICE)
                await asyncio.sleep(0)

    # -- the subscription's gaps (streaming/watch.py) -----------------------------------------

    def use_watch(self, watch: Watch) -> None:
        """Watch the subscription with ``watch`` from now on (the bus's own choice, or a
        watch's fallback); the watch it replaces stops telling the bus anything."""
        old, self._watch = self._watch, watch
        watch.start()
        if old is not None:
            old.stop()

    def is_watched_by(self, watch: Watch) -> bool:
        return self._watch is watch

    @property
    def channel_name(self) -> str | None:
        """The bus's channel in the layer (None until its first join)."""
        return self._channel_name

    async def try_broker(self, call: Awaitable[Any]) -> bool:
        """Await a channel-layer ``call`` within ``PUBLISH_TIMEOUT``; False if it failed
        (not raised: a heartbeat that failed is lost, which the watch sees later)."""
        try:
            async with asyncio.timeout(streaming_settings.PUBLISH_TIMEOUT):
                await call
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if stopping():  # a cancel the timeout (or the layer) turned into an error
                raise asyncio.CancelledError from None
            logger.debug("bus heartbeat: %r", exc)
            return False
        return True

    def subscription_lost(self, why: str) -> None:
        """The subscription may have been down: posts from other servers may have reached
        no listener here. Every socket that listens is closed with 1012 (its client
        reconnects and reads what it missed), and every join is proven again by a probe
        (``await handle`` and a new socket's handshake wait for it)."""
        from .shutdown import close_listeners

        channels = set(self._channels)
        self.gaps += 1
        metrics.bus_gap()
        for channel in channels:
            self._joined.discard(channel)
            self._channels[channel].unjoin()
            self._reconcile_soon(channel)
        closed = close_listeners(channels)
        logger.warning(
            "bus: %s; posts from other servers may have been lost: %d socket(s) "
            "listening to %d channel(s) closed with 1012",
            why,
            closed,
            len(channels),
        )

    def subscription_stalled(
        self, silent_for: float, group: str, *, unreachable: bool = False
    ) -> None:
        """No heartbeat of ``group`` came back for ``silent_for`` seconds (at least
        ``BUS_STALL_TIMEOUT``): the subscription that carries it is taken for lost (see
        :meth:`subscription_lost`), and :meth:`stalled_for` says so until one comes back.
        ``unreachable``: the heartbeats could not even be sent (Redis is down or refuses),
        which the log says instead of blaming a path that stalls (helper "operator13")."""
        metrics.bus_stall()
        if unreachable:
            why = "Redis is down or unreachable (the heartbeats cannot be sent either)"
        else:
            why = (
                "the subscription is stalled (a path to Redis that acknowledges and does "
                "not answer)"
            )
        self.subscription_lost(f"no heartbeat of {group} came back for {silent_for:.1f}s: {why}")

    def subscription_behind(self, silent_for: float, group: str) -> None:
        """No heartbeat of ``group`` came back for ``silent_for`` seconds (at least
        ``BUS_STALL_TIMEOUT``) while the subscription delivered: the heartbeats wait in a
        backlog of posts this process has not worked off (they come in faster than its
        listeners take them). Nothing is lost yet, but the backlog must not grow without
        bound: the listening sockets are closed with 1012 (see :meth:`subscription_lost`;
        what waits for them is then dropped as it is read), and :meth:`stalled_for` says
        so until a heartbeat comes back."""
        metrics.bus_lag()
        self.subscription_lost(
            f"no heartbeat of {group} came back for {silent_for:.1f}s while the subscription "
            "delivered: the bus is that far behind the posts coming in (its listeners take "
            "them more slowly than they come)"
        )

    def stalled_for(self) -> float | None:
        """Seconds since the bus's heartbeats last came back, while it counts its
        subscription as stalled or behind (:meth:`is_behind` says which); None otherwise
        (``/readyz``'s ``bus`` check)."""
        return self._watch.stalled_for() if self._watch is not None else None

    def is_behind(self) -> bool:
        """Whether what :meth:`stalled_for` counts (the longest silence of a shard's
        heartbeats) is a backlog, not a stall."""
        watch = self._watch
        if watch is None:
            return False
        beats = watch._beats if isinstance(watch, ReconnectWatch) else [watch]
        silent = [(b.stalled_for(), b.behind) for b in beats]
        told = [(seconds, behind) for seconds, behind in silent if seconds is not None]
        return max(told)[1] if told else False

    def _received(self, event: dict[str, Any]) -> None:
        """Handle one event from the channel layer. Never raises, never waits."""
        kind = event.get("type")
        if kind == HEARTBEAT_TYPE:
            if event.get("origin") == self.id and self._watch is not None:
                self._watch.heartbeat(event)
            return
        if kind == PROBE_TYPE:
            if event.get("origin") == self.id:
                future = self._probes.get(event.get("token"))  # type: ignore[arg-type]
                if future is not None and not future.done():
                    future.set_result(None)
            return
        if kind != EVENT_TYPE or event.get("origin") == self.id:
            return
        channel = event.get("channel")
        entry = self._channels.get(channel) if isinstance(channel, str) else None
        if entry is None:
            return
        wire = event.get("object")
        try:
            message = decode_object_json(wire)  # type: ignore[arg-type]
        except Exception:
            logger.exception("dropping an undecodable bus message on channel %r", channel)
            return
        cache_wire(message, wire)  # type: ignore[arg-type]  # already encoded: reuse it
        self.posts_received += 1
        metrics.bus_received()
        self._deliver(channel, entry, message)  # type: ignore[arg-type]

    async def _refresh_loop(self) -> None:
        """Re-join groups now and then: channel-layer memberships expire."""
        while True:
            await asyncio.sleep(streaming_settings.GROUP_REFRESH_INTERVAL)
            for channel in list(self._joined):
                try:
                    await self.layer.group_add(group_name(channel), self._channel_name)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if stopping():
                        raise asyncio.CancelledError from None
                    logger.warning("refreshing group of %r failed: %r", channel, exc)

    async def aclose(self) -> None:
        """Stop the bus's tasks (tests, shutdown)."""
        if self._publisher is not None:
            await self._publisher.aclose()
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.stop()
        tasks = (*self._supervised, *self._reconcilers)
        for task in tasks:
            task.cancel()
        if tasks:
            # Bounded: a channel layer may swallow a cancellation (channels-redis' core
            # layer waiting for a pooled connection); shutdown must not hang on it.
            _, pending = await asyncio.wait(tasks, timeout=ACLOSE_TIMEOUT)
            for task in pending:
                logger.warning(
                    "bus task %s did not stop within %.0fs", task.get_name(), ACLOSE_TIMEOUT
                )
            for task in tasks:
                if task.done() and not task.cancelled():
                    task.exception()  # retrieved: no "never retrieved" warning
        self._receiver = self._refresher = None


@contextlib.asynccontextmanager
async def _held(lock: asyncio.Lock) -> AsyncIterator[None]:
    """Release ``lock``, acquired already, on the way out."""
    try:
        yield
    finally:
        lock.release()


async def _wait(awaitable: Awaitable[Any]) -> None:
    await awaitable


def _discard(awaitable: Awaitable[Any]) -> None:
    close = getattr(awaitable, "close", None)
    if close is not None:  # a coroutine that will never run: no "never awaited" warning
        close()


_buses: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, MessageBus] = (
    weakref.WeakKeyDictionary()
)


# The last loop asked for (a weak reference) and its bus: a server has one loop, and a
# WeakKeyDictionary lookup makes a weak reference per call (every post, every connect).
_last: tuple[weakref.ref[asyncio.AbstractEventLoop], MessageBus] | None = None


def get_bus() -> MessageBus:
    """The running event loop's bus, created on first use."""
    global _last
    loop = asyncio.get_running_loop()
    last = _last
    if last is not None and last[0]() is loop:
        return last[1]
    bus = _buses.get(loop)
    if bus is None:
        layer = get_channel_layer(streaming_settings.CHANNEL_LAYER)
        bus = _buses[loop] = MessageBus(layer)
    _last = (weakref.ref(loop), bus)
    return bus


def reset_bus() -> None:
    """Forget the running loop's bus (tests that change CHANNEL_LAYERS)."""
    global _last
    _last = None
    _buses.pop(asyncio.get_running_loop(), None)


def post_message(
    channel: str, message: SerializableEntity, *, global_: bool | None = None
) -> asyncio.Future[bool]:
    """Post outside a session (async views, signal handlers, management commands); same
    meaning as in a session.

    Call it on a running event loop (from a coroutine), as the session's: it starts at
    once and returns a future; await it for the outcome (see ``MessageBus.post_message``).
    From sync code, wrap the call and its ``await`` in an ``async def`` and run that with
    ``asgiref.sync.async_to_sync`` (docs/guide.md, "Posting from outside a stream"):
    ``asyncio.run(post_message(...))`` fails (no loop is running when the call is made).
    """
    return get_bus().post_message(channel, message, global_=global_)


class _FailureLog:
    """Logs joins and leaves that failed: the first at once, then at most one line every
    :data:`FAILURE_LOG_INTERVAL` seconds, with how many failed since the last line."""

    def __init__(self) -> None:
        self._last = -FAILURE_LOG_INTERVAL
        self._since = 0  # failures not logged since the last line

    def note(self, channel: str, what: str, exc: BaseException, delay: float) -> None:
        now = time.monotonic()
        if now - self._last < FAILURE_LOG_INTERVAL:
            self._since += 1
            return
        more = f" ({self._since} more failed since the last such line)" if self._since else ""
        logger.warning(
            "channel %r: group %s failed (%r); retrying in %.2fs%s",
            channel,
            what,
            exc,
            delay,
            more,
        )
        self._last, self._since = now, 0


#: Seconds between the tries of :func:`publish_until_sent` (the last one repeats).
REPUBLISH_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0)
#: Posts being published again at most, per process; more are logged and dropped.
MAX_REPUBLISHING = 10_000
_republishing: set[asyncio.Task[bool]] = set()


def publish_until_sent(
    channel: str, message: SerializableEntity, *, retry_for: float = 120.0
) -> asyncio.Task[bool] | None:
    """Publish a post whose cluster publish failed (``await post_message(...)`` raised
    ``MessagingUnavailable``) again, after :data:`REPUBLISH_DELAYS`, for up to
    ``retry_for`` seconds, in a task of this process, so that the other servers'
    listeners get it late rather than never (this process's had it at once). The task's
    result: True once published, False if given up (logged). None, and logged, when
    :data:`MAX_REPUBLISHING` posts are being tried already.

    A failed try whose post had reached Redis (its round trip timed out) may still
    arrive, and a later try arrives too: a listener may then get the message twice, and
    late posts arrive after later ones. Give such messages an id, as the chat's
    ``ChatMessage`` has (its page shows each id once, in order). Call it on the event loop.
    """
    if len(_republishing) >= MAX_REPUBLISHING:
        logger.error(
            "a post to %r was not published and is not tried again: %d posts are being "
            "tried already",
            channel,
            len(_republishing),
        )
        return None
    task = asyncio.get_running_loop().create_task(
        _republish(get_bus(), channel, message, retry_for)
    )
    _republishing.add(task)
    task.add_done_callback(_republishing.discard)
    return task


async def _republish(
    bus: MessageBus, channel: str, message: SerializableEntity, retry_for: float
) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + retry_for
    for attempt, delay in enumerate(_delays(REPUBLISH_DELAYS), start=2):
        if loop.time() + delay > deadline:
            logger.error("a post to %r was not published in %.0fs: given up", channel, retry_for)
            return False
        await asyncio.sleep(delay)
        try:
            await bus.publish_again(channel, message)
        except MessagingUnavailable:
            continue
        logger.warning("a post to %r was published at try %d", channel, attempt)
        return True
    raise AssertionError("unreachable")  # _delays never ends


def _delays(delays: tuple[float, ...]) -> Generator[float, None, None]:
    """``delays``, then the last one for ever."""
    yield from delays
    while True:
        yield delays[-1]


class _End:
    pass


_END = _End()


class _Inbox:
    """A ``listen()`` iterator's queue: FIFO, one reader, unbounded (``push`` bounds it).

    Not an :class:`asyncio.Queue`, which holds three deques and an Event (four ~760-byte
    deque blocks) from its creation on: a stream_opened hook that loops on ``listen()``
    keeps one per socket. This one holds a deque only while messages wait, and a future
    only while its reader waits.
    """

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: deque[Any] | None = None
        self._waiter: asyncio.Future[None] | None = None

    def qsize(self) -> int:
        items = self._items
        return len(items) if items is not None else 0

    def empty(self) -> bool:
        return not self._items

    def put_nowait(self, item: Any) -> None:
        items = self._items
        if items is None:
            items = self._items = deque()
        items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> Any:
        while not self._items:
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        items = self._items
        item = items.popleft()
        if not items:
            self._items = None
        return item


def _check_room(session: StreamingSession) -> None:
    """Refuse a listener past ``MAX_LISTENERS_PER_SOCKET`` for ``session``'s socket: what a
    client can make its server listen to (Redis subscriptions, memory) stays bounded."""
    limit = streaming_settings.MAX_LISTENERS_PER_SOCKET
    connection = session._connection
    if limit is None or connection is None:
        return
    if connection.listener_count() >= limit:
        raise RateLimited(
            f"This connection already has {limit} listeners (MAX_LISTENERS_PER_SOCKET)."
        )


class SessionMessages:
    """``session.messages``: the bus, with listeners owned by one session."""

    __slots__ = ("__weakref__", "_queues", "_session")

    def __init__(self, session: StreamingSession) -> None:
        self._session = weakref.ref(session)
        self._queues: set[_Inbox] | None = None  # the listen() iterators' (made on first)

    def _owner(self) -> StreamingSession:
        session = self._session()
        if session is None or session.closed or session.ending:
            raise RuntimeError("this session is closed")
        return session

    def add_listener(self, channel: str, listener: Listener) -> ListenerHandle:
        """Call ``listener(message)`` for each post to ``channel`` until the session closes.

        Raises :class:`~streaming.exceptions.RateLimited` when the socket already holds
        ``MAX_LISTENERS_PER_SOCKET`` listeners (its endpoints' sessions and its calls')."""
        session = self._owner()
        _check_room(session)
        return get_bus().add_listener(channel, listener, owner=session)

    def remove_listener(self, channel: str, listener: Listener) -> None:
        session = self._session()
        if session is not None:
            get_bus().remove_listener(channel, listener, owner=session)

    def post_message(
        self, channel: str, message: SerializableEntity, *, global_: bool | None = None
    ) -> asyncio.Future[bool]:
        """Post ``message`` to every listener of ``channel``, starting at once; await the
        result for the outcome (see ``MessageBus.post_message``)."""
        return get_bus().post_message(channel, message, global_=global_)

    def listen(self, channel: str) -> AsyncIterator[SerializableEntity]:
        """An async iterator of ``channel``'s messages, ended when the session closes.

        Listening starts at the call, not at the first iteration. At most
        ``LISTEN_QUEUE_LIMIT`` messages wait; a reader that falls further behind gets
        ``MessagingUnavailable`` from the iterator instead of silent loss.
        """
        session = self._owner()
        _check_room(session)
        queue = _Inbox()
        limit = streaming_settings.LISTEN_QUEUE_LIMIT
        if self._queues is None:
            self._queues = set()
        self._queues.add(queue)

        def push(message: SerializableEntity) -> None:
            if queue.qsize() >= limit:
                queue.put_nowait(MessagingUnavailable(f"listen({channel!r}) fell behind"))
                get_bus().remove_listener(channel, push, owner=session)
            else:
                queue.put_nowait(message)

        get_bus().add_listener(channel, push, owner=session)
        return self._iterate(channel, push, queue)

    async def _iterate(
        self, channel: str, push: Listener, queue: _Inbox
    ) -> AsyncIterator[SerializableEntity]:
        try:
            while True:
                if queue.empty():
                    session = self._session()
                    if session is not None:
                        session._parked()  # a stream_opened that loops here has opened
                item = await queue.get()
                if item is _END:
                    return
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            if self._queues is not None:
                self._queues.discard(queue)
            self.remove_listener(channel, push)

    def _close(self) -> None:
        """Remove the session's listeners and end its ``listen()`` iterators. Idempotent."""
        session = self._session()
        if session is not None:
            try:
                get_bus().remove_owner(session)
            except RuntimeError:  # no running loop (interpreter shutdown)
                pass
        queues, self._queues = self._queues, None
        for queue in queues or ():
            queue.put_nowait(_END)
