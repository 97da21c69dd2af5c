"""The REST API's throttle: DRF's ``ScopedRateThrottle`` counted exactly under concurrency
(``streaming.throttling.AtomicScopedRateThrottle``), open while its cache is down, except
the sign-in's, which counts in the process's memory then.

The counts live in Django's cache (Redis in a cluster). If Redis is unreachable, DRF's
throttle raises and every throttled view answers 500: nobody could sign in, and a client
back from an outage could not fetch the history it missed. Like the chat's own rate
limit (chat/ratelimit.py), the throttle then lets requests through and logs it, and
does not ask the cache again for a few seconds: a Redis that does not answer cost each
request its socket timeout (2 s), in the one thread that sync views and database queries
share, so handshakes waited behind them.
"""

from __future__ import annotations

import math
from typing import Any

from streaming.throttling import AtomicScopedRateThrottle


class ScopedRateThrottleFailOpen(AtomicScopedRateThrottle):
    fail_open = True  # streaming.throttling.CacheOutage: unasked for 5 s after each failure


class ScopedRateThrottleFailLocal(AtomicScopedRateThrottle):
    """The sign-in's throttle: while the cache is down, counted in this process's memory
    (the limit holds per server) rather than let through: passwords must not be guessed
    at full speed because Redis is (helper "operator13": 30 guesses of 30 were checked
    with Redis unreachable)."""

    fail_local = True


class _SignInView:
    throttle_scope = "sign_in"


def sign_in_wait(request: Any) -> int | None:
    """None if a sign-in from this request may be tried, else the whole seconds to wait
    (``Retry-After``): the
    ``sign_in`` scope (10 a minute per client address, ``STREAMPOD_THROTTLE_SIGN_IN``),
    shared by the chat's sign-in form and the admin's, counted as the token view's is
    (helper "reviewer13": 50 of 50 wrong guesses were checked on each)."""
    throttle = ScopedRateThrottleFailLocal()
    if throttle.allow_request(request, _SignInView()):
        return None
    return math.ceil(throttle.wait() or 1.0)
