"""Rate limits that count exactly under concurrency, in Django's cache.

DRF's throttles (``AnonRateThrottle``, ``ScopedRateThrottle``...) keep each client's
request history as a list in the cache: they read it, decide, and write it back. Under
ASGI every sync request runs in a thread of its own, so requests that arrive together all
read the same history and all pass: an attacker's try sent 200 wrong passwords at once to
a token view throttled at 10 a minute, and 188 were checked. The same holds for any
cache, Redis or local memory.

:class:`SlidingWindow` counts with the cache's own atomic operations (``add`` and
``incr``: Redis' ``SET NX`` and ``INCR``, a lock in ``LocMemCache``), so that concurrent
requests each get their own count (the file and database caches do not: use Redis,
Memcached or, for one process, local memory). The window slides: the previous fixed
window's count is weighted by how much of it still overlaps the last ``period`` seconds
(the estimate nginx and Cloudflare use), two keys per client and no timestamps. The
throttles below are DRF's with that counter in place of the history (same settings,
scopes, cache keys' prefixes and ``Retry-After``): use them where you would use DRF's.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from rest_framework.throttling import (
    AnonRateThrottle,
    ScopedRateThrottle,
    SimpleRateThrottle,
    UserRateThrottle,
)

__all__ = [
    "AtomicAnonRateThrottle",
    "AtomicScopedRateThrottle",
    "AtomicSimpleRateThrottle",
    "AtomicUserRateThrottle",
    "CacheOutage",
    "SlidingWindow",
]

logger = logging.getLogger("streaming.throttling")

#: Seconds a limiter lets everything through without asking its cache, once the cache failed.
OUTAGE_PAUSE = 5.0


class CacheOutage:
    """A limiter's memory that its cache failed, so that it fails open **without asking**
    for ``pause`` seconds, then asks again.

    A cache that does not answer (Redis stopped, stalled, unreachable) costs every call
    its socket timeout (2 s in the project's settings): a limiter that asked it for each
    event held each request, and each chat message, that long, and in a thread that
    others wait for (Django runs sync views, and ``database_sync_to_async`` its queries,
    in one shared thread), so that handshakes waited behind them until their clients gave
    up (helper "operator10"). Logging: the first failure with its traceback, then one
    line per pause with the count let through, then one line when the cache answers
    again. Thread-safe: limiters run in threads.

    The shape of its use::

        if outage.paused():
            return True  # let through, unasked
        try:
            allowed = window.hit(key) is None
        except Exception as exc:
            outage.failed(exc)
            return True
        outage.answered()
        return allowed
    """

    def __init__(
        self,
        name: str,
        *,
        pause: float = OUTAGE_PAUSE,
        clock: Callable[[], float] = time.monotonic,
        meanwhile: str = "letting events through unchecked",
    ) -> None:
        self.name = name
        self.pause = pause
        self.meanwhile = meanwhile  # what the limiter does while the cache fails (the log)
        self._clock = clock
        self._lock = threading.Lock()
        self._until = 0.0  # paused until then (clock time)
        self._down = False  # failed, and not answered since
        self._probe_since: float | None = None  # a caller asks the cache (down) since then
        self.let_through = 0  # events let through unasked, this outage

    def paused(self) -> bool:
        """Whether to let an event through without asking the cache (counted). Once a
        pause is over, one caller asks (the probe) while the others still pass unasked,
        until it reports (:meth:`failed` or :meth:`answered`) or a pause has gone by."""
        if not self._down:
            return False
        now = self._clock()
        with self._lock:
            probing = self._probe_since is not None and now - self._probe_since < self.pause
            if now >= self._until and not probing:
                self._probe_since = now
                return False
            self.let_through += 1
        return True

    def failed(self, exc: BaseException) -> None:
        """The cache failed with ``exc``: pause asking it."""
        with self._lock:
            first, self._down = not self._down, True
            self._until = self._clock() + self.pause
            self._probe_since = None
            count = self.let_through
        if first:
            logger.warning(
                "%s: the cache failed; %s for %gs at a time until it answers",
                self.name,
                self.meanwhile,
                self.pause,
                exc_info=exc,
            )
        else:
            logger.warning(
                "%s: the cache still fails (%r); %d event(s) not asked about so far (%s)",
                self.name,
                exc,
                count,
                self.meanwhile,
            )

    def answered(self) -> None:
        """The cache answered: the outage, if any, is over."""
        if not self._down:
            return
        with self._lock:
            was_down, self._down = self._down, False
            self._probe_since = None
            count, self.let_through = self.let_through, 0
        if was_down:
            logger.warning(
                "%s: the cache answers again; %d event(s) were not asked about (%s)",
                self.name,
                count,
                self.meanwhile,
            )


class SlidingWindow:
    """At most about ``limit`` events per ``period`` seconds per key, counted in ``cache``:
    a Django cache whose ``add`` and ``incr`` are atomic (Redis, Memcached, local memory;
    not the file or database caches), shared by every process when it is Redis.

    :meth:`hit` counts an event and says whether it is allowed; a refused event is not
    counted. Synchronous (Django's cache API): call it from a thread in async code.
    Errors of the cache propagate: the caller decides whether to fail open.
    """

    def __init__(
        self, limit: int, period: float, cache: Any, *, clock: Callable[[], float] = time.time
    ) -> None:
        if limit < 1 or period <= 0:
            raise ValueError("limit must be >= 1 and period > 0")
        self.limit = limit
        self.period = period
        self.cache = cache
        self.clock = clock

    def hit(self, key: str) -> float | None:
        """Count one event of ``key``: None if allowed, else the seconds to wait before
        the next one can be (the refused event is not counted)."""
        now = self.clock()
        window = math.floor(now / self.period)
        current_key = f"{key}:{window}"
        previous = self.cache.get(f"{key}:{window - 1}", 0)
        current = self._increment(current_key)
        if self._estimate(now, previous, current) <= self.limit:
            return None
        try:
            self.cache.decr(current_key)  # a refused event does not count
        except ValueError:
            pass  # expired meanwhile: nothing to take back
        return self._wait(now, previous, current - 1)

    def _increment(self, key: str) -> int:
        if self.cache.add(key, 1, timeout=math.ceil(self.period * 2)):
            return 1
        try:
            return int(self.cache.incr(key))
        except ValueError:  # expired between add and incr
            self.cache.add(key, 1, timeout=math.ceil(self.period * 2))
            return 1

    def _estimate(self, now: float, previous: int, current: int) -> float:
        into_window = (now % self.period) / self.period
        return previous * (1.0 - into_window) + current

    def retry_after(self, key: str) -> float:
        """Seconds until the next event of ``key`` can be allowed (nothing counted)."""
        now = self.clock()
        window = math.floor(now / self.period)
        previous = self.cache.get(f"{key}:{window - 1}", 0)
        current = self.cache.get(f"{key}:{window}", 0)
        return self._wait(now, previous, current)

    def _wait(self, now: float, previous: int, current: int) -> float:
        """Seconds until ``previous``'s weight has fallen enough for one more event."""
        elapsed = now % self.period
        if current + 1 > self.limit:
            return self.period - elapsed  # not before the next window
        if previous == 0:
            return 0.0
        # previous * (1 - t / period) + current + 1 <= limit  =>  t >= ...
        needed = 1.0 - (self.limit - current - 1) / previous
        return max(0.0, min(self.period, needed * self.period - elapsed))


class AtomicSimpleRateThrottle(SimpleRateThrottle):
    """DRF's ``SimpleRateThrottle`` counting with a :class:`SlidingWindow` in its cache
    (``self.cache``, Django's default) instead of a history read and written back.

    While the cache fails (a class attribute decides; the cache is then asked again only
    every :data:`OUTAGE_PAUSE` seconds, :class:`CacheOutage`, one per throttle class):

    * ``fail_local = True``: requests are counted in this process's memory instead, so the
      limit still holds, per process rather than per cluster: for a limit that must not
      lapse when Redis does (a sign-in's: guesses at passwords);
    * ``fail_open = True``: requests are let through (an API that should stay available);
    * neither (the default): the cache's error propagates, as DRF's does (the view answers
      500, each request after the cache's timeout).
    """

    fail_open = False
    fail_local = False
    #: Most clients a process counts in memory during an outage (then the oldest go).
    LOCAL_ENTRIES = 100_000
    _wait_for: float | None = None
    _outages: dict[type, CacheOutage] = {}
    _local: dict[type, Any] = {}

    def allow_request(self, request: Any, view: Any) -> bool:
        if self.rate is None:
            return True
        self.key = self.get_cache_key(request, view)
        if self.key is None:
            return True
        window = SlidingWindow(self.num_requests, self.duration, self.cache, clock=self.timer)
        if not (self.fail_open or self.fail_local):
            self._wait_for = window.hit(self.key)
            return self._wait_for is None
        outage = self._outage()
        if outage.paused():
            return self._meanwhile()
        try:
            self._wait_for = window.hit(self.key)
        except Exception as exc:
            outage.failed(exc)
            return self._meanwhile()
        outage.answered()
        return self._wait_for is None

    def _meanwhile(self) -> bool:
        """The answer while the cache fails: counted in this process, or let through."""
        if not self.fail_local:
            return True
        local = SlidingWindow(
            self.num_requests, self.duration, self._local_cache(), clock=self.timer
        )
        self._wait_for = local.hit(self.key)
        return self._wait_for is None

    @classmethod
    def _local_cache(cls) -> Any:
        from django.core.cache.backends.locmem import LocMemCache  # atomic add and incr

        cache = AtomicSimpleRateThrottle._local.get(cls)
        if cache is None:
            made = LocMemCache(
                f"streaming-throttle-{cls.__module__}.{cls.__qualname__}",
                {"OPTIONS": {"MAX_ENTRIES": cls.LOCAL_ENTRIES}},
            )
            cache = AtomicSimpleRateThrottle._local.setdefault(cls, made)
        return cache

    @classmethod
    def _outage(cls) -> CacheOutage:
        outage = AtomicSimpleRateThrottle._outages.get(cls)
        if outage is None:
            meanwhile = (
                "counting in this process's memory"
                if cls.fail_local
                else "letting events through unchecked"
            )
            outage = AtomicSimpleRateThrottle._outages.setdefault(
                cls, CacheOutage(f"throttle {cls.__qualname__}", meanwhile=meanwhile)
            )
        return outage

    def wait(self) -> float | None:
        """Seconds until the refused client may try again (``Retry-After``)."""
        if self._wait_for is None:
            return None
        return max(1.0, self._wait_for)


class AtomicAnonRateThrottle(AnonRateThrottle, AtomicSimpleRateThrottle):
    """DRF's ``AnonRateThrottle`` (scope ``anon``, per client address), counted exactly."""


class AtomicUserRateThrottle(UserRateThrottle, AtomicSimpleRateThrottle):
    """DRF's ``UserRateThrottle`` (scope ``user``), counted exactly."""


class AtomicScopedRateThrottle(ScopedRateThrottle, AtomicSimpleRateThrottle):
    """DRF's ``ScopedRateThrottle`` (the view's ``throttle_scope``), counted exactly."""
