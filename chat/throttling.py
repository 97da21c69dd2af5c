"""The REST API's throttle: DRF's ``ScopedRateThrottle`` counted exactly under concurrency
(``streaming.throttling.AtomicScopedRateThrottle``), open while its cache is down.

The counts live in Django's cache (Redis in a cluster). If Redis is unreachable, DRF's
throttle raises and every throttled view answers 500: nobody could sign in, and a client
back from an outage could not fetch the history it missed. Like the chat's own rate
limit (chat/ratelimit.py), the throttle then lets requests through and logs it, and
does not ask the cache again for a few seconds: a Redis that does not answer cost each
request its socket timeout (2 s), in the one thread that sync views and database queries
share, so handshakes waited behind them.
"""

from __future__ import annotations

from streaming.throttling import AtomicScopedRateThrottle


class ScopedRateThrottleFailOpen(AtomicScopedRateThrottle):
    fail_open = True  # streaming.throttling.CacheOutage: unasked for 5 s after each failure
