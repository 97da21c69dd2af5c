"""Measure the message bus across two daphne servers on each channels-redis layer.

    .venv/bin/python scripts/compare_layers.py [--seconds 8]

100 listener sockets on server A, each in its own room; 20 sender sockets on
server B posting to random rooms with at most 10 posts in flight each. Prints
delivered posts/s, p50/p99 latency and losses per layer. Bounded: a few seconds a
layer. Used for docs/architecture.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.e2e_settings")
os.environ.setdefault("DATABASE_URL", "sqlite:////tmp/streampod-compare.sqlite3")

import django  # noqa: E402

django.setup()

import websockets  # noqa: E402

from tests.support.servers import DaphneServer, RedisServer  # noqa: E402

LISTENERS, SENDERS, WINDOW = 100, 20, 10


def post(room: str, text: str) -> str:
    return json.dumps(
        {
            "endpoint": "room",
            "object": {"className": "RoomPost", "data": {"room": room, "text": text}},
        }
    )


async def run(layer: str, seconds: float) -> dict:
    with RedisServer() as rs:
        env = {"REDIS_URL": rs.url, "STREAMPOD_REDIS_LAYER": layer}
        with DaphneServer(env=env) as a, DaphneServer(env=env) as b:
            latencies: list[float] = []
            received = 0
            listeners = [
                await websockets.connect(a.ws_url, max_queue=None) for _ in range(LISTENERS)
            ]
            for i, ws in enumerate(listeners):
                await ws.send(post(f"L{i}", "/join"))
            for ws in listeners:
                while "joined" not in await ws.recv():
                    pass

            async def listen(ws):
                nonlocal received
                async for raw in ws:
                    frame = json.loads(raw)
                    if (
                        frame.get("endpoint") == "room"
                        and frame["object"]["className"] == "RoomPost"
                    ):
                        received += 1
                        latencies.append(
                            time.perf_counter() - float(frame["object"]["data"]["text"])
                        )

            tasks = [asyncio.create_task(listen(ws)) for ws in listeners]
            sent = 0
            stop_at = time.perf_counter() + seconds

            async def sender():
                nonlocal sent
                async with websockets.connect(b.ws_url) as ws:
                    while time.perf_counter() < stop_at:
                        # window: at most WINDOW posts in flight from this sender
                        while sent - received > WINDOW * SENDERS:
                            await asyncio.sleep(0.001)
                        await ws.send(
                            post(f"L{random.randrange(LISTENERS)}", repr(time.perf_counter()))
                        )
                        sent += 1

            started = time.perf_counter()
            await asyncio.gather(*(sender() for _ in range(SENDERS)))
            deadline = time.perf_counter() + 10
            while received < sent and time.perf_counter() < deadline:
                await asyncio.sleep(0.01)
            elapsed = time.perf_counter() - started
            for t in tasks:
                t.cancel()
            for ws in listeners:
                await ws.close()
            lat = sorted(latencies) or [0.0]
            return {
                "layer": layer,
                "sent": sent,
                "delivered": received,
                "lost": sent - received,
                "delivered/s": round(received / elapsed),
                "p50 ms": round(statistics.median(lat) * 1000, 1),
                "p99 ms": round(lat[int(len(lat) * 0.99) - 1] * 1000, 1),
            }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8)
    args = parser.parse_args()
    from django.core.management import call_command

    await asyncio.to_thread(call_command, "migrate", verbosity=0)
    for layer in ("pubsub", "core"):
        print(await run(layer, args.seconds), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
