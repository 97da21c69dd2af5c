"""``python -m bench.idle_streams``: what clients that keep many streams in credit and
never read cost the other sockets of a server.

One Streampod server (uvicorn, the shipped command) with one endpoint whose streaming
method yields values for ever. ``--sockets`` attackers each start ``MAX_CALLS`` (256)
calls of it with a credit of 1,024, top the credit up every second, and never read
(their client stops reading once 16 frames wait: TCP pushes back). Meanwhile one honest
socket sends an application-level ``ping`` every 0.1 s, and a new socket connects and
pings every second. Reported: the honest pongs' p50 and max, the new sockets' handshake
plus pong, and the server's CPU (share of a core).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import AsyncIterator

import websockets

from streaming.endpoint import Endpoint, streaming_method

from .servers import STREAMPOD_UVICORN, ServerProcess

PING = json.dumps({"command": "ping", "args": {}})


class StreamsEndpoint(Endpoint):
    name = "streams"

    @streaming_method
    async def endless(self, session) -> AsyncIterator[int]:
        n = 0
        while True:
            n += 1
            yield n


async def attacker(url: str, until: float) -> None:
    async with websockets.connect(url, max_queue=16, close_timeout=1) as ws:
        for i in range(256):
            call = {"id": f"s{i}", "endpoint": "streams", "method": "endless", "credit": 1024}
            await ws.send(json.dumps({"command": "call", "args": call}))
        while time.monotonic() < until:
            await asyncio.sleep(1)  # pacing the attacker, not synchronising
            for i in range(0, 256, 8):
                credit = {"command": "credit", "args": {"id": f"s{i}", "n": 1024}}
                await asyncio.wait_for(ws.send(json.dumps(credit)), 5)


async def pong_after(ws: websockets.ClientConnection) -> float:
    start = time.monotonic()
    await ws.send(PING)
    while '"pong"' not in await ws.recv():
        pass
    return time.monotonic() - start


async def honest(url: str, until: float) -> tuple[list[float], list[float]]:
    pongs: list[float] = []
    handshakes: list[float] = []

    async def newcomers() -> None:
        while time.monotonic() < until:
            start = time.monotonic()
            async with websockets.connect(url, open_timeout=60) as ws:
                await pong_after(ws)
            handshakes.append(time.monotonic() - start)
            await asyncio.sleep(1)  # pacing

    async with websockets.connect(url) as ws:
        task = asyncio.ensure_future(newcomers())
        while time.monotonic() < until:
            pongs.append(await pong_after(ws))
            await asyncio.sleep(0.1)  # pacing
        await task
    return pongs, handshakes


async def drive(url: str, sockets: int, seconds: float) -> tuple[list[float], list[float]]:
    until = time.monotonic() + seconds
    attackers = [asyncio.ensure_future(attacker(url, until + 2)) for _ in range(sockets)]
    await asyncio.sleep(2)  # let the attack build up before measuring
    pongs, handshakes = await honest(url, until + 2)
    await asyncio.gather(*attackers, return_exceptions=True)
    return pongs, handshakes


def _ms(values: list[float]) -> str:
    values = sorted(values)
    return f"p50 {values[len(values) // 2] * 1000:.0f} ms, max {values[-1] * 1000:.0f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    env = {"DJANGO_SETTINGS_MODULE": "bench.streams_settings"}
    server = ServerProcess(STREAMPOD_UVICORN, env).start()
    try:
        cpu0, t0 = server.cpu_s(), time.monotonic()
        url = f"{server.base}/websocket/"
        pongs, handshakes = asyncio.run(drive(url, args.sockets, args.seconds))
        core = (server.cpu_s() - cpu0) / (time.monotonic() - t0)
    finally:
        server.stop()
    print(f"{args.sockets} sockets x 256 streams in credit, never reading, {args.seconds:g} s:")
    print(f"- an honest socket's pongs ({len(pongs)}): {_ms(pongs)}")
    print(f"- a new socket's handshake and pong ({len(handshakes)}): {_ms(handshakes)}")
    print(f"- the server's CPU: {core:.0%} of a core")


if __name__ == "__main__":
    main()
