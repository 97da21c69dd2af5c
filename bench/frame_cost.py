"""``python -m bench.frame_cost``: what one connection sending heavy, valid frames costs
the server, with the shipped limits and without the byte rate.

One Streampod server (uvicorn) with the project's shipped ``STREAMING`` limits and one
endpoint whose message holds a list of ints. One client sends ~52 KB frames (9,000
ints each: valid, just under ``MAX_FRAME_VALUES``) on a fixed schedule of ``--rate``
frames per second for ``--seconds``, never waiting for answers. Reported: the server's
CPU time over the run as a share of one core (from ``/proc/<pid>/stat``), what the
server answered, and its RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter

import websockets

from streaming.endpoint import Endpoint
from streaming.serialization import SerializableEntity

from .servers import STREAMPOD_UVICORN, ServerProcess


class Heavy(SerializableEntity):
    class_name = "bench.Heavy"
    items: list[int]


class HeavyEndpoint(Endpoint):
    name = "heavy"

    async def handle_stream_message(self, session, message):
        pass  # parsing and validating is the cost measured


HEAVY = {"className": "bench.Heavy", "data": {"items": list(range(9000))}}
FRAME = json.dumps({"endpoint": "heavy", "object": HEAVY})


async def drive(url: str, rate: float, seconds: float) -> Counter[str]:
    answers: Counter[str] = Counter()
    async with websockets.connect(url, max_size=None, close_timeout=1) as ws:

        async def read() -> None:
            try:
                async for text in ws:
                    frame = json.loads(text)
                    code = frame.get("args", {}).get("code", frame.get("command", "data"))
                    answers[str(code)] += 1
            except websockets.ConnectionClosed:
                pass

        reader = asyncio.create_task(read())
        start = time.monotonic()
        n = 0
        try:
            while (now := time.monotonic()) - start < seconds:
                due = start + n / rate
                if due > now:
                    await asyncio.sleep(due - now)  # pacing the sender, not synchronising
                await ws.send(FRAME)
                n += 1
        except websockets.ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
            answers[f"closed {code} after {time.monotonic() - start:.1f} s"] += 1
        answers["sent"] = n
        reader.cancel()
    return answers


def measure(no_byte_limit: bool, rate: float, seconds: float) -> dict[str, object]:
    env = {"DJANGO_SETTINGS_MODULE": "bench.cost_settings"}
    if no_byte_limit:
        env["STREAMPOD_BENCH_NO_BYTE_LIMIT"] = "1"
    server = ServerProcess(STREAMPOD_UVICORN, env).start()
    try:
        cpu0, t0 = server.cpu_s(), time.monotonic()
        answers = asyncio.run(drive(f"{server.base}/websocket/", rate, seconds))
        cpu = (server.cpu_s() - cpu0) / (time.monotonic() - t0)
        return {"answers": dict(answers), "core": cpu, "rss_mb": server.rss_kb() / 1024}
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=150.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    print(f"one connection, {len(FRAME) / 1024:.0f} KB frames at {args.rate:g}/s for "
          f"{args.seconds:g} s, Streampod on uvicorn\n")
    print("| limits | server CPU (share of a core) | answers | RSS MB |")
    print("|---|---|---|---|")
    for label, off in (("shipped (bytes/s on)", False), ("frames/s only", True)):
        result = measure(off, args.rate, args.seconds)
        print(f"| {label} | {result['core']:.0%} | {result['answers']} | {result['rss_mb']:.0f} |")


if __name__ == "__main__":
    main()
