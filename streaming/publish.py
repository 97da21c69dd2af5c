"""The bus's cluster publishes, batched: one Redis round trip per event-loop turn.

channels-redis' pub/sub layer sends each ``group_send`` as its own ``PUBLISH`` and
holds a per-shard lock across the round trip, so a process publishes one message per
round trip at most, and a round trip lasts until the busy event loop comes back to
read the reply. Under load that, not Redis, caps the messages a server can post.

:class:`Publisher` queues the posts of one event-loop turn and sends them as one
pipeline per Redis shard (still one ``PUBLISH`` each, so subscribers see nothing
different), while the next turn's posts queue behind it. Each post still gets its
own outcome: its future resolves when its batch is written, or fails with the
batch's error. Batches go out one after another, so posts keep their order.

This uses the pub/sub layer's private internals and redis-py's pipeline (channels-redis
4.x), all listed in :data:`USES`. :func:`publisher_for` checks every one of them before
it hands out a publisher; if one is missing (a channels-redis release renamed it) it logs
one warning naming it and returns None, and the bus calls ``group_send`` per post, as it
does for any other layer (the core Redis layer, a third-party one). If an internal turns
out wrong only at run time (an ``AttributeError`` or ``TypeError`` before anything
reached Redis), the publisher logs one error, stops batching and sends that batch, and
every later post, with ``group_send``, in order. Errors of the round trip itself (Redis
unreachable, a timeout) fail that batch's posts, as ``group_send`` would.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from redis.asyncio.client import Pipeline, Redis

from . import metrics
from .conf import streaming_settings

logger = logging.getLogger("streaming.publish")

#: Most posts in one pipeline; more wait for the next round trip.
MAX_BATCH = 512

#: Everything the publisher uses beyond the channel-layer API (``group_send``), as
#: ``(role, attribute, kind)``. :func:`publisher_for` checks each on the object of that
#: role, and the code below reaches them only through locals named after the role
#: (``layer``, ``loop_layer``, ``shard``, ``client``, ``pipe``); tests/test_publish.py
#: fails if it uses an attribute not listed here, and removes each listed one in turn.
#: ``client`` and ``pipe`` are checked on their classes, so nothing connects.
USES: tuple[tuple[str, str, str], ...] = (
    ("layer", "_get_layer", "method"),  # RedisPubSubChannelLayer: its loop's layer
    ("layer", "serialize", "method"),
    ("loop_layer", "_shards", "shards"),  # RedisPubSubLoopLayer
    ("loop_layer", "_get_group_channel_name", "method"),
    ("loop_layer", "_get_shard", "method"),
    ("shard", "_lock", "lock"),  # RedisSingleShardConnection
    ("shard", "_ensure_redis", "method"),
    ("shard", "_redis", "value"),  # None until the shard's first use
    ("client", "pipeline", "method"),  # redis.asyncio.Redis
    ("pipe", "publish", "method"),  # redis.asyncio.client.Pipeline
    ("pipe", "execute", "method"),
)

#: What a moved or renamed internal raises (lookup, call signature, ``async with``).
_MOVED = (AttributeError, TypeError)

Item = tuple[str, dict[str, Any], "asyncio.Future[None]"]
Route = tuple[str, bytes, Item]  # (Redis channel, payload, the post)


class Publisher:
    """Publishes ``(group, message)`` pairs for one event loop, in batches."""

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self._pending: list[Item] = []
        # The futures of posts written to Redis whose round trip is not over (withdraw).
        self._writing: set[asyncio.Future[None]] = set()
        self._withdrawn = 0  # withdrawn posts possibly still in _pending
        self._task: asyncio.Task[None] | None = None
        self.batches = 0  # round trips made (tests, metrics)
        self.batching = True  # False once the layer's internals failed: group_send per post

    def publish(self, group: str, message: dict[str, Any]) -> asyncio.Future[None]:
        """Queue a publish; the future resolves once it is written to Redis.

        Cancelling the future before its batch leaves withdraws the post; see
        :meth:`withdraw` for a withdrawal that leaves a post already on its way alone.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._pending.append((group, message, future))
        if self._task is None:
            self._task = loop.create_task(self._run())
        return future

    def withdraw(self, future: asyncio.Future[None]) -> bool:
        """Cancel the post of ``future`` unless it is being written to Redis; True if
        cancelled.

        A post whose pipeline is being written (or awaits its reply) is not withdrawn
        (False): Redis may have it already, so only the round trip can tell its outcome.
        A post still queued, or in a batch waiting for the shard's lock, is cancelled and
        will not be published. O(1): a timeout per post under a stalled Redis must not
        scan the queue.
        """
        if future.done() or future in self._writing:
            return False
        future.cancel()
        self._withdrawn += 1
        if self._withdrawn > 64 and self._withdrawn * 2 > len(self._pending):
            # Mostly withdrawn posts (Redis stalls, posters time out): drop them now, so
            # the queue holds at most twice the live posts, not every post since the stall.
            self._pending = [item for item in self._pending if not item[2].done()]
            self._withdrawn = 0
        return True

    async def _run(self) -> None:
        try:
            while self._pending:
                batch = [item for item in self._pending[:MAX_BATCH] if not item[2].done()]
                del self._pending[:MAX_BATCH]
                if not batch:
                    continue
                try:
                    if self.batching:
                        self.batches += 1
                        metrics.bus_publish_batch()
                        await self._send(batch)
                    else:
                        await self._send_each(batch)
                except asyncio.CancelledError:
                    for _, _, future in batch:
                        future.cancel()  # no-op for those already settled
                    raise
                except Exception as exc:  # before any round trip (layer, serializer)
                    _fail(batch, exc)
        finally:
            if self._task is asyncio.current_task():
                self._task = None

    async def _send(self, batch: list[Item]) -> None:
        try:
            by_shard = self._route(batch)
        except _MOVED as exc:
            await self._fall_back(batch, exc)
            return
        shards = list(by_shard)
        writing = self._writing
        errors = await asyncio.gather(
            *(_send_shard(shard, by_shard[shard], writing) for shard in shards)
        )
        moved = {
            route[2][2]
            for shard, error in zip(shards, errors, strict=True)
            if error is not None
            for route in by_shard[shard]
        }
        if moved:
            error = next(error for error in errors if error is not None)
            await self._fall_back([item for item in batch if item[2] in moved], error)

    def _route(self, batch: list[Item]) -> dict[Any, list[Route]]:
        """Each post's Redis channel and payload, by shard. No I/O."""
        layer = self.layer
        loop_layer = layer._get_layer()
        serialize = layer.serialize
        by_shard: dict[Any, list[Route]] = {}
        for item in batch:
            group, message, future = item
            channel = loop_layer._get_group_channel_name(group)
            shard = loop_layer._get_shard(channel)
            try:
                payload = serialize(message)
            except Exception as exc:  # this message's fault (msgpack refuses it): its post fails
                future.set_exception(exc)
                continue
            by_shard.setdefault(shard, []).append((channel, payload, item))
        return by_shard

    async def _fall_back(self, items: list[Item], exc: BaseException) -> None:
        """Stop batching (the internals are not what this module uses); send with group_send."""
        if self.batching:
            self.batching = False
            logger.error(
                "batched publishing failed before reaching Redis (%r): channels-redis' or "
                "redis-py's internals are not what streaming.publish uses; posting with "
                "group_send from now on (one round trip per post)",
                exc,
                exc_info=exc,
            )
        await self._send_each(items)

    async def _send_each(self, items: list[Item]) -> None:
        """``group_send`` each post in turn (in order), each with its own outcome."""
        layer = self.layer
        writing = self._writing
        for group, message, future in items:
            if future.done():  # withdrawn meanwhile
                continue
            writing.add(future)
            try:
                await layer.group_send(group, message)
            except Exception as exc:
                if not future.done():
                    future.set_exception(exc)
            else:
                if not future.done():
                    future.set_result(None)
            finally:
                writing.discard(future)

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        for _, _, future in self._pending:
            future.cancel()
        self._pending.clear()


def _fail(items: list[Item], exc: BaseException) -> None:
    for _, _, future in items:
        if not future.done():
            future.set_exception(exc)


async def _send_shard(
    shard: Any, routes: list[Route], writing: set[asyncio.Future[None]]
) -> BaseException | None:
    """Publish ``routes`` as one pipeline on ``shard`` and settle their futures.

    Posts withdrawn while the batch waited for the shard's lock are left out. The futures
    of the posts written are in ``writing`` until their round trip is over (they can no
    longer be withdrawn). Returns the error instead if an internal failed before anything
    was written, so the caller can resend those posts: they cannot have reached Redis.
    """
    items: list[Item] = []
    written = False
    try:
        async with shard._lock:  # the shard's own lock: its subscribe/publish calls use it too
            routes = [route for route in routes if not route[2][2].done()]
            if not routes:
                return None
            items = [item for _, _, item in routes]
            shard._ensure_redis()
            client = shard._redis
            pipe = client.pipeline(transaction=False)
            for channel, payload, _ in routes:
                pipe.publish(channel, payload)
            round_trip = pipe.execute()
            written = True  # from here Redis may have them: fail, never resend
            writing.update(item[2] for item in items)
            # Bounded: a path that acknowledges and never answers (a stalled proxy) held
            # the round trip, the shard's lock and this publisher for good. Cancelled,
            # redis-py drops the connection; the posts fail as their own timer fails
            # them ("may not have arrived"), and the next batch takes a new connection.
            async with asyncio.timeout(2 * streaming_settings.PUBLISH_TIMEOUT):
                await round_trip
    except _MOVED as exc:
        if not written:
            return exc
        _fail(items, exc)
    except Exception as exc:
        _fail(items, exc)
    else:
        for future in (item[2] for item in items):
            if not future.done():
                future.set_result(None)
    finally:
        if written:
            writing.difference_update(item[2] for item in items)
    return None


def publisher_for(layer: Any) -> Publisher | None:
    """A :class:`Publisher` for channels-redis' pub/sub layer, else None.

    None, with one warning naming what is missing, when the layer lacks anything in
    :data:`USES`: the bus then posts with ``group_send``.
    """
    if type(layer).__module__ != "channels_redis.pubsub":
        return None
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # the layer's per-loop half needs one, and so does a Publisher
        logger.debug("no running event loop: not batching publishes")
        return None
    missing = missing_internals(layer)
    if missing:
        logger.warning(
            "not batching publishes: streaming.publish uses %s, which is missing (a "
            "channels-redis or redis-py release renamed it?); posting with group_send "
            "instead, one round trip per post",
            ", ".join(missing),
        )
        return None
    return Publisher(layer)


def missing_internals(layer: Any) -> list[str]:
    """What of :data:`USES` the pub/sub ``layer`` (in the running loop) lacks, as
    ``Class.attribute``; empty if it has everything. Nothing connects to Redis."""
    missing: dict[str, None] = {}  # ordered, without repeats (one entry for N shards)

    def check(role: str, obj: Any, owner: str) -> bool:
        ok = True
        for used_role, name, kind in USES:
            if used_role == role and not _has(obj, name, kind):
                missing[f"{owner}.{name}"] = None
                ok = False
        return ok

    check("layer", layer, _name(type(layer)))
    if _has(layer, "_get_layer", "method"):
        try:
            loop_layer = layer._get_layer()
        except Exception as exc:
            missing[f"{_name(type(layer))}._get_layer() (it raised {exc!r})"] = None
        else:
            if check("loop_layer", loop_layer, _name(type(loop_layer))):
                for shard in loop_layer._shards:
                    if check("shard", shard, _name(type(shard))):
                        client = shard._redis  # None until the shard's first use
                        cls = Redis if client is None else type(client)
                        check("client", cls, _name(cls))
    check("pipe", Pipeline, _name(Pipeline))
    return list(missing)


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _has(obj: Any, name: str, kind: str) -> bool:
    try:
        value = getattr(obj, name)
    except Exception:  # AttributeError, or a __getattr__ that recursed or raised
        return False
    if kind == "method":
        return callable(value)
    if kind == "lock":
        return hasattr(value, "__aenter__") and hasattr(value, "__aexit__")
    if kind == "shards":
        return isinstance(value, list | tuple) and len(value) > 0
    return True
