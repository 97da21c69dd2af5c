"""Contender (c), the ceiling: the same relay on the bare ``websockets`` library.

One process, no framework: a dict ``uid -> sockets``; a relay frame is parsed once
and forwarded as received text. Runs on uvloop when it is installed.

    python -m bench.ceiling --port 8765
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections import defaultdict

from websockets.asyncio.server import ServerConnection, serve

from .identity import uid_from_query

_listeners: defaultdict[int, set[ServerConnection]] = defaultdict(set)
READY = '{"type":"ready","uid":%d}'


async def handler(ws: ServerConnection) -> None:
    path = ws.request.path if ws.request is not None else ""
    uid = uid_from_query(path.partition("?")[2])
    group = _listeners[uid]
    group.add(ws)
    try:
        await ws.send(READY % uid)
        async for raw in ws:
            frame = json.loads(raw)
            kind = frame.get("type")
            if kind == "relay":
                for peer in list(_listeners.get(frame["to"], ())):
                    try:
                        await peer.send(raw)
                    except Exception:  # that peer is gone; the others go on
                        pass
            elif kind == "echo":
                await ws.send(raw)
    finally:
        group.discard(ws)
        if not group:
            _listeners.pop(uid, None)


async def main(port: int) -> None:
    async with serve(
        handler, "127.0.0.1", port, compression=None, ping_interval=20, backlog=2048,
        max_queue=64,
    ):
        print(f"ceiling ready on port {port}", flush=True)
        await asyncio.get_running_loop().create_future()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(args.port))
    else:
        uvloop.run(main(args.port))
