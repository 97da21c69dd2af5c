"""Contender (d): python-socketio (ASGI, served by uvicorn), rooms ``user_<uid>``.

``REDIS_URL`` set: ``AsyncRedisManager`` shares emits between servers (with
``socket_timeout=None``, as for every Redis-backed contender: redis-py's 5 s default
drops idle subscribers). Otherwise the default in-process manager.
"""

from __future__ import annotations

import os
from typing import Any

import socketio

from .identity import uid_from_query

_redis_url = os.environ.get("REDIS_URL", "")
_manager = (
    socketio.AsyncRedisManager(_redis_url, redis_options={"socket_timeout": None})
    if _redis_url
    else None
)
sio = socketio.AsyncServer(
    async_mode="asgi", client_manager=_manager, logger=False, engineio_logger=False
)
app = socketio.ASGIApp(sio)


@sio.event
async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
    # The room is entered before the CONNECT ack: the ack is the client's "ready".
    uid = uid_from_query(environ.get("QUERY_STRING", ""))
    await sio.enter_room(sid, f"user_{uid}")


@sio.event
async def relay(sid: str, data: dict[str, Any]) -> None:
    await sio.emit("relay", data, room=f"user_{data['to']}")


@sio.event
async def echo(sid: str, data: dict[str, Any]) -> None:
    await sio.emit("echo", data, to=sid)
