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

This uses the pub/sub layer's shards directly (channels-redis 4.x). For any other
layer (the core Redis layer, a third-party one) :func:`publisher_for` returns None
and the bus calls ``group_send`` per post, as before.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

logger = logging.getLogger("streaming.publish")

#: Most posts in one pipeline; more wait for the next round trip.
MAX_BATCH = 512

Item = tuple[str, dict[str, Any], "asyncio.Future[None]"]


class Publisher:
    """Publishes ``(group, message)`` pairs for one event loop, in batches."""

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self._pending: list[Item] = []
        self._task: asyncio.Task[None] | None = None
        self.batches = 0  # round trips made (tests, metrics)

    def publish(self, group: str, message: dict[str, Any]) -> asyncio.Future[None]:
        """Queue a publish; the future resolves once it is written to Redis.

        Cancelling the future before its batch leaves withdraws the post.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._pending.append((group, message, future))
        if self._task is None:
            self._task = loop.create_task(self._run())
        return future

    async def _run(self) -> None:
        try:
            while self._pending:
                batch = [item for item in self._pending[:MAX_BATCH] if not item[2].done()]
                del self._pending[:MAX_BATCH]
                if batch:
                    self.batches += 1
                    try:
                        await self._send(batch)
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:  # before any round trip (layer, serializer)
                        for _, _, future in batch:
                            if not future.done():
                                future.set_exception(exc)
        finally:
            if self._task is asyncio.current_task():
                self._task = None

    async def _send(self, batch: list[Item]) -> None:
        loop_layer = self.layer._get_layer()
        by_shard: dict[Any, list[tuple[str, bytes, asyncio.Future[None]]]] = {}
        for group, message, future in batch:
            channel = loop_layer._get_group_channel_name(group)
            shard = loop_layer._get_shard(channel)
            by_shard.setdefault(shard, []).append((channel, self.layer.serialize(message), future))
        await asyncio.gather(*(_send_shard(shard, items) for shard, items in by_shard.items()))

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


async def _send_shard(shard: Any, items: list[tuple[str, bytes, asyncio.Future[None]]]) -> None:
    try:
        async with shard._lock:  # the shard's own lock: its subscribe/publish calls use it too
            shard._ensure_redis()
            pipe = shard._redis.pipeline(transaction=False)
            for channel, payload, _ in items:
                pipe.publish(channel, payload)
            await pipe.execute()
    except asyncio.CancelledError:
        for _, _, future in items:
            future.cancel()
        raise
    except Exception as exc:
        for _, _, future in items:
            if not future.done():
                future.set_exception(exc)
    else:
        for _, _, future in items:
            if not future.done():
                future.set_result(None)


def publisher_for(layer: Any) -> Publisher | None:
    """A :class:`Publisher` for channels-redis' pub/sub layer, else None."""
    if type(layer).__module__ != "channels_redis.pubsub" or not hasattr(layer, "_get_layer"):
        return None
    try:
        loop_layer = layer._get_layer()
        shards = loop_layer._shards
        usable = all(
            hasattr(shard, "_lock") and hasattr(shard, "_ensure_redis") for shard in shards
        ) and hasattr(loop_layer, "_get_group_channel_name")
    except Exception:  # pragma: no cover - a channels-redis whose internals moved
        logger.debug("channels-redis pub/sub internals not as expected", exc_info=True)
        return None
    return Publisher(layer) if usable and shards else None
