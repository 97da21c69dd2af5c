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
