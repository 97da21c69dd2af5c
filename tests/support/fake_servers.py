"""Fake servers for client tests: what a Streampod server does not do on demand."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

PONG = json.dumps({"command": "pong", "args": {}})


def credit_ignoring(
    cancelled: asyncio.Future[str], values: int = 1000
) -> Callable[[Any], Awaitable[None]]:
    """A ``websockets`` handler that answers pings and sends every call ``values`` values
    at once, whatever credit the client granted; the id of the first ``cancel`` it gets
    goes to ``cancelled``."""

    async def handler(ws: Any) -> None:
        async for text in ws:
            frame = json.loads(text)
            if frame["command"] == "ping":
                await ws.send(PONG)
            elif frame["command"] == "call":
                call_id = frame["args"]["id"]
                for i in range(values):
                    value = {"command": "value", "args": {"id": call_id, "value": i}}
                    await ws.send(json.dumps(value))
            elif frame["command"] == "cancel" and not cancelled.done():
                cancelled.set_result(frame["args"]["id"])

    return handler


def many_endpoints(count: int) -> Callable[[Any], Awaitable[None]]:
    """A ``websockets`` handler that answers pings and, after the first, sends a data frame
    for each of ``count`` endpoint names (``e0``, ``e1``...: ``{"n": i}``), then one more on
    ``e0`` (``{"n": -1}``): once a client has that, it has handled every frame before it."""

    async def handler(ws: Any) -> None:
        first = True
        async for text in ws:
            if json.loads(text)["command"] != "ping":
                continue
            await ws.send(PONG)
            if first:
                first = False
                for i, n in [*((i, i) for i in range(count)), (0, -1)]:
                    data = {"endpoint": f"e{i}", "object": {"className": "Nx", "data": {"n": n}}}
                    await ws.send(json.dumps(data))

    return handler
