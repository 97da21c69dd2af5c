"""streaming.throttling: counts that hold under concurrency, on a real Redis and in memory.

DRF's throttles read a client's history from the cache and write it back: requests that
arrive together (each in a thread of its own under ASGI) all read the same history and
all pass (tests/test_rest_limits.py shows it through a real server). The counter here
uses the cache's atomic ``add`` and ``incr``."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.core.cache.backends.locmem import LocMemCache
from django.core.cache.backends.redis import RedisCache

from streaming.throttling import AtomicSimpleRateThrottle, SlidingWindow
from tests.support.servers import require_redis

CACHES = [
    pytest.param(lambda: LocMemCache(f"t{uuid.uuid4().hex}", {}), id="locmem"),
    pytest.param(lambda: RedisCache(require_redis(), {"KEY_PREFIX": uuid.uuid4().hex}), id="redis"),
]


def _at_once(count: int, call):
    """``call()`` from ``count`` threads released together; their results."""
    start = threading.Barrier(count)

    def each(_):
        start.wait()
        return call()

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(each, range(count)))


@pytest.mark.parametrize("make_cache", CACHES)
def test_concurrent_hits_allow_exactly_the_limit(make_cache):
    window = SlidingWindow(10, 3600, make_cache(), clock=lambda: 1_000_000.0)
    results = _at_once(50, lambda: window.hit("client"))
    assert sum(result is None for result in results) == 10
    assert all(0 < result <= 3600 for result in results if result is not None)
    assert window.hit("client") is not None  # the refused ones were not counted...
    assert window.cache.get(f"client:{1_000_000 // 3600}") == 10  # ... exactly


class _Atomic(AtomicSimpleRateThrottle):
    rate = "10/hour"

    def get_cache_key(self, request, view):
        return "throttle_atomic_client"


def test_the_atomic_throttle_lets_through_no_more_than_its_rate():
    cache = LocMemCache(f"t{uuid.uuid4().hex}", {})

    def request():
        each = _Atomic()
        each.cache = cache
        return each.allow_request(None, None), each.wait()

    results = _at_once(50, request)
    assert sum(allowed for allowed, _ in results) == 10
    assert all(wait >= 1 for allowed, wait in results if not allowed)
