"""Helpers of the browser tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from websockets.asyncio.server import ServerConnection, serve


@asynccontextmanager
async def ws_server(
    handler: Callable[[ServerConnection], Awaitable[None]],
) -> AsyncIterator[str]:
    """A bare WebSocket server on 127.0.0.1, for server behaviour a Streampod server
    does not show on demand (never answering, closing with 4403); yields its base URL."""
    async with serve(handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"http://127.0.0.1:{port}"


async def states(page: Any) -> list[str]:
    """The states the page's status listener saw, in order."""
    return await page.evaluate("window.statusLog.map((s) => s.state)")


async def wait_states(page: Any, state: str, count: int = 1, timeout: float = 20_000) -> None:
    """Wait until the page's status listener has seen ``state`` ``count`` times."""
    await page.wait_for_function(
        "([state, count]) => window.statusLog.filter((s) => s.state === state).length >= count",
        arg=[state, count],
        timeout=timeout,
    )


async def wait_received(page: Any, endpoint: str, count: int, timeout: float = 20_000) -> list:
    """Wait until ``count`` messages of ``endpoint`` were read; return them all."""
    await page.wait_for_function(
        "([e, n]) => (window.received[e] || []).length >= n", arg=[endpoint, count], timeout=timeout
    )
    return await page.evaluate("(e) => window.received[e]", endpoint)
