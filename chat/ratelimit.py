"""A sliding-window rate limit: at most ``limit`` events in any ``period`` seconds.

Pure Python, per connection (it lives in the chat endpoint's user object), so it
needs no lock and no broker.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class SlidingWindowLimit:
    """``allow()`` is True and counts the event while fewer than ``limit`` events
    happened in the last ``period`` seconds; otherwise False, and nothing is counted
    (a refused event does not push the window further)."""

    __slots__ = ("_clock", "_stamps", "limit", "period")

    def __init__(
        self, limit: int, period: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if limit < 1 or period <= 0:
            raise ValueError("limit must be >= 1 and period > 0")
        self.limit = limit
        self.period = period
        self._clock = clock
        self._stamps: deque[float] = deque()

    def allow(self) -> bool:
        now = self._clock()
        stamps = self._stamps
        while stamps and now - stamps[0] >= self.period:
            stamps.popleft()
        if len(stamps) >= self.limit:
            return False
        stamps.append(now)
        return True

    def retry_after(self) -> float:
        """Seconds until ``allow()`` can next succeed (0 when it can now)."""
        if len(self._stamps) < self.limit:
            return 0.0
        return max(0.0, self.period - (self._clock() - self._stamps[0]))
