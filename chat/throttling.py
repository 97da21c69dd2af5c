"""The REST API's throttle: DRF's ``ScopedRateThrottle`` counted exactly under concurrency
(``streaming.throttling.AtomicScopedRateThrottle``), open while its cache is down.

The counts live in Django's cache (Redis in a cluster). If Redis is unreachable, DRF's
throttle raises and every throttled view answers 500: nobody could sign in, and a client
back from an outage could not fetch the history it missed. Like the chat's own rate
limit (chat/ratelimit.py), the throttle then lets requests through and logs it.
"""

from __future__ import annotations

import logging
from typing import Any

from streaming.throttling import AtomicScopedRateThrottle

logger = logging.getLogger("chat.throttling")


class ScopedRateThrottleFailOpen(AtomicScopedRateThrottle):
    def allow_request(self, request: Any, view: Any) -> bool:
        try:
            return super().allow_request(request, view)
        except Exception:
            logger.warning("throttle cache unavailable; letting %s through", request.path)
            return True
