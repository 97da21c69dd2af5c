"""A limiter whose cache does not answer lets events through without holding anyone up
(streaming.throttling.CacheOutage; chat/ratelimit.py, chat/throttling.py).

Helper "operator10" stopped Redis (SIGSTOP) under chat traffic: every chat message asked
the rate limit's cache and waited for its socket timeout (2 s), in the one thread that
Django's sync views and ``database_sync_to_async`` share, so that the token lookups of new
handshakes waited behind them until their clients gave up, and messages whose socket
closed meanwhile were dropped unanswered. Here the cache is a real Redis behind a proxy
that stalls (tests/support/stall_proxy.py).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import pytest
from asgiref.sync import sync_to_async
from django.core.cache.backends.locmem import LocMemCache
from django.test import RequestFactory

from chat.ratelimit import SharedRateLimit
from chat.throttling import ScopedRateThrottleFailOpen
from tests.support.servers import RedisServer
from tests.support.stall_proxy import StallProxy

pytestmark = pytest.mark.redis


def _cache_behind(proxy: StallProxy, settings, alias: str) -> None:
    """Make ``alias`` a Redis cache reached through ``proxy``."""
    settings.CACHES = {
        **settings.CACHES,
        alias: {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{proxy.port}/0",
            "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
        },
    }


@pytest.fixture
def stalled(settings):
    """A cache alias ``stalled``: a Redis behind a proxy that stalled before any use."""
    with RedisServer() as redis_server, StallProxy(redis_server.port) as proxy:
        proxy.stall()
        _cache_behind(proxy, settings, "stalled")
        yield proxy


@pytest.fixture
def proxied(settings):
    """A cache alias ``proxied``: a Redis behind a proxy that counts connections."""
    with RedisServer() as redis_server, StallProxy(redis_server.port) as proxy:
        _cache_behind(proxy, settings, "proxied")
        yield proxy


def _tracebacks(caplog) -> int:
    return sum(1 for r in caplog.records if r.exc_info and r.name == "streaming.throttling")


async def test_a_cache_that_does_not_answer_is_asked_once_a_pause(stalled, caplog):
    """20 messages: the first asks the cache (and waits its timeout), the other 19 are let
    through unasked (before: each asked, on a new connection, and waited 1 s), with one
    traceback in the log."""
    limit = SharedRateLimit(3, 60, cache="stalled", prefix="t:outage")
    with caplog.at_level(logging.WARNING, logger="streaming.throttling"):
        allowed = [await limit.allow("alice") for _ in range(20)]
    assert allowed == [True] * 20  # fails open: past the limit of 3, all let through
    assert stalled.connections == 1
    assert _tracebacks(caplog) == 1


async def test_the_cache_is_not_asked_in_the_thread_database_queries_wait_for(stalled):
    """While the limiter waits for the stalled cache, thread-sensitive work (a handshake's
    token lookup through ``database_sync_to_async``) runs at once. Before, the
    limiter held the one thread those share: the query waited for the cache's timeout."""
    limit = SharedRateLimit(3, 60, cache="stalled", prefix="t:thread")
    asking = asyncio.create_task(limit.allow("bob"))
    async with asyncio.timeout(10):  # a failure guard: the limiter has reached the cache
        while stalled.connections == 0:  # noqa: ASYNC110 (a state, polled)
            await asyncio.sleep(0.005)
    # database_sync_to_async is this, thread-sensitive, plus closing old connections.
    assert await sync_to_async(lambda: "answered")() == "answered"
    assert not asking.done()  # the query did not wait for the cache's timeout
    assert await asking is True


def test_a_fail_open_throttle_asks_a_stalled_cache_once_a_pause(stalled, settings, caplog):
    """The REST API's throttle: the same, per throttle class (a sync view's thread)."""
    from django.core.cache import caches

    settings.REST_FRAMEWORK = {
        **getattr(settings, "REST_FRAMEWORK", {}),
        "DEFAULT_THROTTLE_RATES": {"outage": "2/min"},
    }

    class Throttle(ScopedRateThrottleFailOpen):
        cache = caches["stalled"]

        def get_rate(self):
            return "2/min"

    class View:
        throttle_scope = "outage"

    request = RequestFactory().get("/api/x")
    request.user = None
    with caplog.at_level(logging.WARNING, logger="streaming.throttling"):
        allowed = [Throttle().allow_request(request, View()) for _ in range(10)]
    assert allowed == [True] * 10
    assert stalled.connections == 1
    assert _tracebacks(caplog) == 1


def test_after_a_pause_one_caller_asks_while_the_others_pass():
    """Helper "reviewer10": when a pause ended, every event in flight asked the still
    stalled cache at once (each waiting its timeout, each logging). One asks (the probe);
    the others pass unasked until it reports, or a pause has gone by."""
    from streaming.throttling import CacheOutage

    now = [0.0]
    outage = CacheOutage("t", pause=5, clock=lambda: now[0])
    assert not outage.paused() and not outage.paused()  # healthy: everyone asks
    outage.failed(ConnectionError("down"))
    assert [outage.paused() for _ in range(3)] == [True] * 3
    now[0] = 5.0
    assert [outage.paused() for _ in range(3)] == [False, True, True]  # one probe
    outage.failed(ConnectionError("still down"))
    assert outage.paused()
    now[0] = 10.0
    assert [outage.paused() for _ in range(2)] == [False, True]
    now[0] = 15.0  # the probe never reported: another may ask
    assert not outage.paused()
    outage.answered()
    assert not outage.paused() and not outage.paused()


async def test_sockets_share_the_limiters_redis_connections(proxied):
    """Helper "reviewer10": Django keeps a cache object per task context, so each socket
    that asked the rate limit opened Redis connections of its own (20 sockets, 20
    connections; 10,000 sockets would reach Redis' default ``maxclients``). The limiter
    keeps one cache object: its connections are the thread pool's, reused."""
    limit = SharedRateLimit(1000, 60, cache="proxied", prefix="t:conns")

    async def socket_task(n: int) -> None:
        for _ in range(5):
            assert await limit.allow(f"user{n}")

    # The thread pool's size is the bound (the default's grows with the cores: helper
    # "reviewer11"), plus one for Django's unlocked first connection pool of a thread race.
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(4) as pool:
        loop.set_default_executor(pool)
        await asyncio.gather(*(asyncio.create_task(socket_task(n)) for n in range(40)))
    assert proxied.connections <= 4 + 1, proxied.connections


class OneThreadCache(LocMemCache):
    """A backend the limiter does not know (a Memcached client, say): it records which
    threads used each of its objects."""

    users: ClassVar[dict[int, set[int]]] = {}

    def incr(self, *args: Any, **kwargs: Any) -> int:
        self.users.setdefault(id(self), set()).add(threading.get_ident())
        return super().incr(*args, **kwargs)

    def add(self, *args: Any, **kwargs: Any) -> bool:
        self.users.setdefault(id(self), set()).add(threading.get_ident())
        return super().add(*args, **kwargs)


async def test_a_backend_not_known_to_be_thread_safe_gets_an_object_per_thread(settings):
    """Helper "reviewer11": the one shared object served every thread of the pool; Django's
    Memcached backends hold one socket an object, and threads sharing it read each
    other's replies (150 errors in 200 calls: the limit failed open). Only backends known
    to be thread-safe are shared."""
    settings.CACHES = {
        **settings.CACHES,
        "unknown": {"BACKEND": "tests.test_cache_outage.OneThreadCache", "LOCATION": "t1"},
    }
    OneThreadCache.users.clear()
    limit = SharedRateLimit(1000, 60, cache="unknown", prefix="t:threads")
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(4) as pool:
        loop.set_default_executor(pool)
        assert all(await asyncio.gather(*(limit.allow(f"u{n % 5}") for n in range(200))))
    threads = [users for users in OneThreadCache.users.values()]
    assert len(set().union(*threads)) > 1  # the pool's threads did share the work
    assert all(len(users) == 1 for users in threads), threads
