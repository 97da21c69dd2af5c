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

import math
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
    "SlidingWindow",
]


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
    (``self.cache``, Django's default) instead of a history read and written back."""

    _wait_for: float | None = None

    def allow_request(self, request: Any, view: Any) -> bool:
        if self.rate is None:
            return True
        self.key = self.get_cache_key(request, view)
        if self.key is None:
            return True
        window = SlidingWindow(self.num_requests, self.duration, self.cache, clock=self.timer)
        self._wait_for = window.hit(self.key)
        return self._wait_for is None

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
