"""A per-user rate limit shared by every socket of the user, on every server.

The counts live in Django's cache. With ``REDIS_URL`` set the project's cache is Redis,
so all servers of a cluster count the same user together: 25 sockets of one user get
one allowance between them, not 25. Without Redis the cache is per process.

The window slides (:class:`streaming.throttling.SlidingWindow`): the count of the
previous fixed window is weighted by how much of it still overlaps the last ``period``
seconds, which costs two cache operations per event and no list of timestamps.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from asgiref.sync import sync_to_async
from django.core.cache import caches
from django.core.signals import setting_changed

from streaming.throttling import CacheOutage, SlidingWindow

#: Every limiter, so that a change of ``CACHES`` (tests' ``override_settings``) drops their
#: cache objects.
_limits: weakref.WeakSet[SharedRateLimit] = weakref.WeakSet()


def _caches_changed(*, setting: str, **kwargs: Any) -> None:
    if setting == "CACHES":
        for limit in list(_limits):
            limit._cache = None


setting_changed.connect(_caches_changed)


def _shareable(cache: Any) -> bool:
    """Whether one object of ``cache``'s backend may serve every thread at once: Django's
    Redis cache (redis-py's connection pool is thread-safe), locmem (a lock), the database
    cache (a connection per thread) and the file and dummy caches. Not the Memcached
    backends (pymemcache's default client and pylibmc's hold one socket, and corrupt each
    other's replies between threads: helper "reviewer11", 150 errors in 200 calls) nor
    any backend this does not know."""
    from django.core.cache.backends.db import DatabaseCache
    from django.core.cache.backends.dummy import DummyCache
    from django.core.cache.backends.filebased import FileBasedCache
    from django.core.cache.backends.locmem import LocMemCache
    from django.core.cache.backends.redis import RedisCache

    return type(cache) in (RedisCache, LocMemCache, DatabaseCache, FileBasedCache, DummyCache)


class SharedRateLimit:
    """At most about ``limit`` events per ``period`` seconds per key, across processes.

    ``await allow(key)`` is True and counts the event while the estimate is under
    ``limit``; otherwise False, and the refused event is not counted. If the cache
    cannot be reached the event is allowed (and logged): the limit protects the
    service, and a cache outage should not stop every user from chatting. Nor should it
    hold each message for the cache's socket timeout: after a failure the cache is not
    asked for a few seconds (:class:`streaming.throttling.CacheOutage`), and the cache is
    asked from the thread pool (``thread_sensitive=False``), not from the one thread that
    database queries, handshakes' included, wait for.

    The counting is :class:`streaming.throttling.SlidingWindow`'s, in one thread hop per
    event, with the cache's atomic ``add`` and ``incr`` (not Django's ``aincr``, a get
    and a set: concurrent sockets of one user lost increments through it, and a burst
    from ten of them passed the limit; seen: 30 counted as 21).
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
        SlidingWindow(limit, period, None)  # checks the arguments
        self.limit = limit
        self.period = period
        self.prefix = prefix
        self._cache_alias = cache
        # Made at first use, and again after CACHES changes: the cache object, or a
        # threading.local holding one per thread for a backend that is not _shareable.
        self._cache: Any = None
        self._made = threading.Lock()
        self._clock = clock
        _limits.add(self)
        self._outage = CacheOutage(f"rate limit {prefix}")

    def _counter(self) -> SlidingWindow:
        """A counter on this limiter's own cache object. Django's ``caches[alias]`` is one
        per thread and per task context: each socket that asked made its own, with Redis
        connections of its own (helper "reviewer10": 20 sockets, 20 connections). One
        object, made once, shares its connection pool between the threads that ask, where
        the backend allows that (:func:`_shareable`); else each thread of the pool has
        one object of its own."""
        cache = self._cache
        if cache is None:
            with self._made:  # one object, not one per thread that came first at once
                cache = self._cache
                if cache is None:
                    made = caches.create_connection(self._cache_alias)
                    cache = made if _shareable(made) else threading.local()
                    if isinstance(cache, threading.local):
                        cache.cache = made
                    self._cache = cache
        if isinstance(cache, threading.local):
            mine = getattr(cache, "cache", None)
            if mine is None:
                mine = cache.cache = caches.create_connection(self._cache_alias)
            cache = mine
        return SlidingWindow(self.limit, self.period, cache, clock=self._clock)

    async def allow(self, key: Any) -> bool:
        outage = self._outage
        if outage.paused():
            return True
        try:
            refused = await sync_to_async(self._hit, thread_sensitive=False)(f"{self.prefix}:{key}")
        except Exception as exc:
            outage.failed(exc)
            return True
        outage.answered()
        return refused is None

    def _hit(self, key: str) -> float | None:
        return self._counter().hit(key)

    async def retry_after(self, key: Any) -> float:
        """Seconds until ``allow(key)`` can next succeed, at most ``period``."""
        if self._outage.paused():
            return 0.0
        try:
            return await sync_to_async(self._retry_after, thread_sensitive=False)(
                f"{self.prefix}:{key}"
            )
        except Exception as exc:
            self._outage.failed(exc)
            return 0.0

    def _retry_after(self, key: str) -> float:
        return self._counter().retry_after(key)
