"""A status listener for Python-client tests: records every status, waits for one."""

from __future__ import annotations

import asyncio
from typing import Any


class StatusRecorder:
    """A status listener that keeps every status and lets a test wait for one."""

    def __init__(self, client: Any, wait: float = 15) -> None:
        self.seen: list[Any] = []
        self.wait = wait
        self._changed = asyncio.Event()
        client.add_streaming_connection_status_listener(self)

    def __call__(self, status: Any) -> None:
        self.seen.append(status)
        self._changed.set()

    async def wait_for(self, status: Any, count: int = 1) -> None:
        async def reached() -> None:
            while self.seen.count(status) < count:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(reached(), self.wait)
