"""Workload: streaming methods. Calls/s and stream values/s, Streampod's Python client
against python-socketio's ``AsyncClient.call`` with acks, each on its own uvicorn.

::

    python -m bench.methods                      # the default sizes (make bench)
    python -m bench.methods --calls 200 --values 200 --runs 1 --json /tmp/m.json

Two measurements, one client connection each, after a warm-up:

* **calls/s**: ``--concurrency`` callers each awaiting one call after another until
  ``--calls`` calls have returned. Streampod: ``await client.bench.echo(n=, text=)`` (a
  ``call`` frame, a ``done`` frame with an ``Item``). Socket.IO: ``await sio.call("echo_call",
  {n, text})`` (an event with an ack id, the ack). Also the median and p99 latency.
* **stream values/s**: ``--streams`` concurrent streams of ``--values`` values each.
  Streampod: ``async for item in client.bench.count(upto=, text=)`` (credit flow control:
  the generator waits for the reader). Socket.IO has no streams: ``sio.call("count", ...)``
  makes the server emit ``upto`` ``item`` events to the caller, then ack (no flow control).

Both servers are uvicorn processes (:class:`bench.servers.ServerProcess`), started here
from the ASGI apps this module exposes: ``streampod_app`` (bench settings,
``StreamingAuthMiddlewareStack`` around :class:`BenchEndpoint` alone on ``/websocket/``)
and ``sio_app`` (:mod:`bench.sio_app` plus the two handlers above). The payload text is
``--text-bytes`` long (100). Each value is the median of ``--runs`` runs; the report has
the load average before and after, and the CPU microseconds per call and per value of the
server and of the load client (this process): on a shared machine these move less than the
rates do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from streaming.serialization import SerializableEntity

from .servers import Contender, ServerProcess

__all__ = ["Item", "Result", "main", "measure"]


class Item(SerializableEntity):
    """What the bench methods send back."""

    class_name = "bench.methods.Item"
    n: int
    text: str


STREAMPOD = Contender(
    "streampod_methods", "Streampod methods (uvicorn)", "streampod", "uvicorn",
    "bench.methods:streampod_app", "streampod",
    "@streaming_method echo / count (bench/methods.py), Python client",
)  # fmt: skip
SOCKETIO = Contender(
    "socketio_calls", "python-socketio call + ack (uvicorn)", "peer", "uvicorn",
    "bench.methods:sio_app", "socketio",
    "events with acks (bench/methods.py on bench/sio_app.py), python-socketio AsyncClient",
)  # fmt: skip


# -- the servers' apps (built when uvicorn asks for them) ----------------------------------

_apps: dict[str, Any] = {}


def _build_streampod_app() -> Any:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
    from django.core.asgi import get_asgi_application

    http = get_asgi_application()  # Django is set up before the endpoint module is imported
    from channels.routing import ProtocolTypeRouter, URLRouter
    from django.urls import path

    from streaming.auth import StreamingAuthMiddlewareStack
    from streaming.endpoint import Endpoint, streaming_method
    from streaming.tuning import tune_gc

    class BenchEndpoint(Endpoint):
        name = "bench"

        @streaming_method
        async def echo(self, session: Any, n: int, text: str) -> Item:
            return Item(n=n, text=text)

        @streaming_method
        async def count(self, session: Any, upto: int, text: str) -> AsyncIterator[Item]:
            for n in range(upto):
                yield Item(n=n, text=text)

    tune_gc()  # as bench/asgi.py and streampod_project/asgi.py do
    websocket = StreamingAuthMiddlewareStack(BenchEndpoint.as_asgi())
    return ProtocolTypeRouter(
        {"http": http, "websocket": URLRouter([path("websocket/", websocket)])}
    )


def _build_sio_app() -> Any:
    from .sio_app import app, sio

    @sio.on("echo_call")  # type: ignore[untyped-decorator]
    async def echo_call(sid: str, data: dict[str, Any]) -> dict[str, Any]:
        return data  # the ack

    @sio.on("count")  # type: ignore[untyped-decorator]
    async def count(sid: str, data: dict[str, Any]) -> int:
        for n in range(data["upto"]):
            await sio.emit("item", {"n": n, "text": data["text"], "s": data["s"]}, to=sid)
        return int(data["upto"])  # acked after the last item: same connection, in order

    return app


def __getattr__(name: str) -> Any:
    """``streampod_app`` and ``sio_app``, built on first use (uvicorn's import string), so
    that the load client importing this module sets up neither Django nor Socket.IO."""
    builders = {"streampod_app": _build_streampod_app, "sio_app": _build_sio_app}
    if name not in builders:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name not in _apps:
        _apps[name] = builders[name]()
    return _apps[name]


# -- the clients ---------------------------------------------------------------------------


class _Caller:
    """One connection of a contender, with the two operations the workload times."""

    async def open(self, port: int) -> None:
        raise NotImplementedError

    async def call(self, n: int, text: str) -> None:
        raise NotImplementedError

    async def stream(self, s: int, upto: int, text: str) -> int:
        """Read a stream of ``upto`` values; how many arrived."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class _StreampodCaller(_Caller):
    async def open(self, port: int) -> None:
        from streaming.client import Client

        self.client = Client(f"http://127.0.0.1:{port}/")
        await self.client.open_streaming_connection()

    async def call(self, n: int, text: str) -> None:
        item = await self.client.bench.echo(n=n, text=text)
        assert item.n == n, item

    async def stream(self, s: int, upto: int, text: str) -> int:
        got = 0
        async for _ in self.client.bench.count(upto=upto, text=text):
            got += 1
        return got

    async def close(self) -> None:
        await self.client.close()


class _SocketIOCaller(_Caller):
    async def open(self, port: int) -> None:
        import socketio

        self.sio = socketio.AsyncClient(reconnection=False)
        self.items: dict[int, int] = {}

        @self.sio.on("item")  # type: ignore[untyped-decorator]
        async def item(data: dict[str, Any]) -> None:
            self.items[data["s"]] = self.items.get(data["s"], 0) + 1

        await self.sio.connect(f"http://127.0.0.1:{port}/?uid=1", transports=["websocket"])

    async def call(self, n: int, text: str) -> None:
        answer = await self.sio.call("echo_call", {"n": n, "text": text}, timeout=120)
        assert answer["n"] == n, answer

    async def stream(self, s: int, upto: int, text: str) -> int:
        self.items[s] = 0
        await self.sio.call("count", {"upto": upto, "text": text, "s": s}, timeout=600)
        return self.items.pop(s)

    async def close(self) -> None:
        await self.sio.disconnect()


_CALLERS: dict[str, Callable[[], _Caller]] = {
    STREAMPOD.key: _StreampodCaller,
    SOCKETIO.key: _SocketIOCaller,
}


# -- the measurements ----------------------------------------------------------------------


@dataclass
class Result:
    """One contender's figures (medians over the runs)."""

    contender: str
    label: str
    calls_per_s: float
    call_p50_ms: float
    call_p99_ms: float
    values_per_s: float
    #: CPU microseconds per call / per stream value, of the server and of the load client.
    call_server_us: float
    call_client_us: float
    value_server_us: float
    value_client_us: float
    server_rss_kb: int
    runs: list[dict[str, float]] = field(default_factory=list)


async def _timed_calls(
    caller: _Caller, calls: int, concurrency: int, text: str
) -> dict[str, float]:
    latencies: list[float] = []
    counter = iter(range(calls))

    async def worker() -> None:
        for n in counter:  # shared: the workers take the calls between them
            started = time.perf_counter()
            await caller.call(n, text)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "calls_per_s": calls / elapsed,
        "call_p50_ms": latencies[len(latencies) // 2] * 1000,
        "call_p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
    }


async def _timed_streams(caller: _Caller, streams: int, values: int, text: str) -> float:
    started = time.perf_counter()
    got = await asyncio.gather(*(caller.stream(s, values, text) for s in range(streams)))
    elapsed = time.perf_counter() - started
    if got != [values] * streams:
        raise AssertionError(f"streams delivered {got}, expected {values} each")
    return streams * values / elapsed


async def _run_once(
    caller: _Caller,
    server_cpu: Callable[[], float],
    *,
    calls: int,
    concurrency: int,
    streams: int,
    values: int,
    text: str,
) -> dict[str, float]:
    """One run of both phases; with each phase's CPU per operation, which varies less than
    rates on a shared machine (another job's load slows both processes, not their cost)."""
    server0, client0 = server_cpu(), time.process_time()
    figures = await _timed_calls(caller, calls, concurrency, text)
    server1, client1 = server_cpu(), time.process_time()
    figures["values_per_s"] = await _timed_streams(caller, streams, values, text)
    server2, client2 = server_cpu(), time.process_time()
    figures["call_server_us"] = (server1 - server0) / calls * 1e6
    figures["call_client_us"] = (client1 - client0) / calls * 1e6
    figures["value_server_us"] = (server2 - server1) / (streams * values) * 1e6
    figures["value_client_us"] = (client2 - client1) / (streams * values) * 1e6
    return figures


async def _measure_one(
    contender: Contender,
    *,
    calls: int,
    concurrency: int,
    streams: int,
    values: int,
    text_bytes: int,
    runs: int,
) -> Result:
    server = ServerProcess(contender, env={}).start()
    text = "x" * text_bytes
    try:
        caller = _CALLERS[contender.key]()
        await caller.open(server.port)
        try:
            # Warm-up: imports, code paths and allocator pools, not measured.
            await _run_once(
                caller,
                server.cpu_s,
                calls=max(1, calls // 10),
                concurrency=concurrency,
                streams=1,
                values=max(1, values // 10),
                text=text,
            )
            measured = [
                await _run_once(
                    caller,
                    server.cpu_s,
                    calls=calls,
                    concurrency=concurrency,
                    streams=streams,
                    values=values,
                    text=text,
                )
                for _ in range(runs)
            ]
        finally:
            await caller.close()
        rss = server.rss_kb()
    finally:
        server.stop()

    def median(key: str) -> float:
        return statistics.median(run[key] for run in measured)

    return Result(
        contender=contender.key,
        label=contender.label,
        calls_per_s=median("calls_per_s"),
        call_p50_ms=median("call_p50_ms"),
        call_p99_ms=median("call_p99_ms"),
        values_per_s=median("values_per_s"),
        call_server_us=median("call_server_us"),
        call_client_us=median("call_client_us"),
        value_server_us=median("value_server_us"),
        value_client_us=median("value_client_us"),
        server_rss_kb=rss,
        runs=measured,
    )


async def measure(
    *,
    calls: int = 20_000,
    concurrency: int = 50,
    streams: int = 10,
    values: int = 20_000,
    text_bytes: int = 100,
    runs: int = 3,
    contenders: tuple[Contender, ...] = (STREAMPOD, SOCKETIO),
) -> dict[str, Any]:
    """Run the workload against each contender, one after the other; a JSON-ready report."""
    load_before = os.getloadavg()
    results = [
        await _measure_one(
            contender,
            calls=calls,
            concurrency=concurrency,
            streams=streams,
            values=values,
            text_bytes=text_bytes,
            runs=runs,
        )
        for contender in contenders
    ]
    return {
        "workload": "methods",
        "command": " ".join(["python -m bench.methods", *sys.argv[1:]]),
        "params": {
            "calls": calls,
            "concurrency": concurrency,
            "streams": streams,
            "values": values,
            "text_bytes": text_bytes,
            "runs": runs,
        },
        "cpus": os.cpu_count(),
        "loadavg_before": list(load_before),
        "loadavg_after": list(os.getloadavg()),
        "results": [asdict(result) for result in results],
    }


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown table (what docs/performance.md quotes)."""
    p = report["params"]
    lines = [
        f"`{report['command']}`: {p['calls']:,} calls ({p['concurrency']} in flight), "
        f"{p['streams']} streams x {p['values']:,} values, {p['text_bytes']}-byte text, "
        f"median of {p['runs']} run(s); load average "
        f"{report['loadavg_before'][0]:.2f} before, {report['loadavg_after'][0]:.2f} after "
        f"({report['cpus']} CPUs).",
        "",
        "| Contender | calls/s | call p50 ms | call p99 ms | CPU µs per call (server + client) "
        "| stream values/s | CPU µs per value (server + client) | server RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['label']} | {r['calls_per_s']:,.0f} | {r['call_p50_ms']:.1f} | "
            f"{r['call_p99_ms']:.1f} | {r['call_server_us']:.0f} + {r['call_client_us']:.0f} | "
            f"{r['values_per_s']:,.0f} | "
            f"{r['value_server_us']:.1f} + {r['value_client_us']:.1f} | "
            f"{r['server_rss_kb'] / 1024:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.methods", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--streams", type=int, default=10)
    parser.add_argument("--values", type=int, default=20_000, help="values per stream")
    parser.add_argument("--text-bytes", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", help="also write the report as JSON to this path")
    args = parser.parse_args(argv)
    report = asyncio.run(
        measure(
            calls=args.calls,
            concurrency=args.concurrency,
            streams=args.streams,
            values=args.values,
            text_bytes=args.text_bytes,
            runs=args.runs,
        )
    )
    print(markdown(report))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
