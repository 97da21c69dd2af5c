"""A per-user rate limit shared by every socket of the user, on every server.

The counts live in Django's cache. With ``REDIS_URL`` set the project's cache is Redis,
so all servers of a cluster count the same user together: 25 sockets of one user get
one allowance between them, not 25. Without Redis the cache is per process.

The window slides: the count of the previous fixed window is weighted by how much of
it still overlaps the last ``period`` seconds (the estimate Cloudflare and nginx use),
which costs two cache operations per event and no list of timestamps.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

from asgiref.sync import sync_to_async
from django.core.cache import caches

logger = logging.getLogger("chat.ratelimit")


class SharedRateLimit:
    """At most about ``limit`` events per ``period`` seconds per key, across processes.

    ``await allow(key)`` is True and counts the event while the estimate is under
    ``limit``; otherwise False, and the refused event is not counted. If the cache
    cannot be reached the event is allowed (and logged): the limit protects the
    service, and a cache outage should not stop every user from chatting.
    """

    def __init__(
        self,
        limit: int,
        period: float,
        *,
        prefix: str = "chat:rate",
        cache: str = "default",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if limit < 1 or period <= 0:
            raise ValueError("limit must be >= 1 and period > 0")
        self.limit = limit
        self.period = period
        self.prefix = prefix
        self._cache_alias = cache
        self._clock = clock

    @property
    def _cache(self) -> Any:
        return caches[self._cache_alias]

    def _estimate(self, now: float, previous: int, current: int) -> float:
        into_window = (now % self.period) / self.period
        return previous * (1.0 - into_window) + current

    async def allow(self, key: Any) -> bool:
        now = self._clock()
        window = math.floor(now / self.period)
        current_key = f"{self.prefix}:{key}:{window}"
        cache = self._cache
        try:
            previous, current = await sync_to_async(self._count)(
                cache, current_key, f"{self.prefix}:{key}:{window - 1}"
            )
            if self._estimate(now, previous, current) > self.limit:
                await sync_to_async(cache.decr)(current_key)  # a refused event does not count
                return False
            return True
        except Exception:
            logger.warning("rate limit cache unavailable; allowing %s", key, exc_info=True)
            return True

    def _count(self, cache: Any, current_key: str, previous_key: str) -> tuple[int, int]:
        """The previous window's count and this one's, this event counted: in one thread
        hop, with the cache's own atomic ``add`` and ``incr`` (LocMemCache's lock, Redis'
        INCR). Not Django's ``aincr``, which is a get and a set: concurrent sockets of one
        user lost increments through it, and a burst from ten of them passed the limit
        (seen: 30 counted as 21)."""
        previous = cache.get(previous_key, 0)
        if cache.add(current_key, 1, timeout=math.ceil(self.period * 2)):
            return previous, 1
        return previous, cache.incr(current_key)

    async def retry_after(self, key: Any) -> float:
        """Seconds until ``allow(key)`` can next succeed, at most ``period``."""
        now = self._clock()
        window = math.floor(now / self.period)
        cache = self._cache
        try:
            previous = await cache.aget(f"{self.prefix}:{key}:{window - 1}", 0)
            current = await cache.aget(f"{self.prefix}:{key}:{window}", 0)
        except Exception:
            return 0.0
        if current + 1 > self.limit:
            return self.period - (now % self.period)  # the next window
        if previous == 0:
            return 0.0
        # previous * (1 - t/period) + current + 1 <= limit  =>  t >= ...
        needed = 1.0 - (self.limit - current - 1) / previous
        wait = needed * self.period - (now % self.period)
        return max(0.0, min(self.period, wait))
