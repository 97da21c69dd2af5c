"""``python -m bench.herd``: the reconnect herd after a bus gap, with and without the
1012's advice (``RESTART_RATE``, docs/protocol.md "When to come back after a 1012").

One uvicorn process (the bench app, its relay endpoint: every socket listens on
``user_<uid>``) on a private ``redis-server``; ``--sockets`` clients of Streampod's own
Python client (``Client`` + ``StreamingConnectionHandler`` with their defaults:
``connect_timeout`` 10 s, ``restart_spread`` 1 s), spread over ``--clients`` processes
(``python -m bench.herd --worker``). Once every client is connected, the coordinator cuts
the server's Redis subscriber connection (``CLIENT KILL TYPE pubsub``): channels-redis
reconnects, the bus sees the gap, and the server closes every socket with 1012 at once.
Each client records when its 1012 came, when it was connected again and how many
attempts failed in between (a ``connect_timeout``, a refusal). Per ``--rates`` value
(``BENCH_RESTART_RATE``: ``none`` sends no advice, a number is the server's
``RESTART_RATE``), on a fresh server and Redis, ``--runs`` times, interleaved.

Figures, from the cut (``perf_counter()``, one clock for every process): when the last
1012 arrived; when 50%, 99% and all of the clients were connected again; failed attempts;
the server's CPU from the cut until the last was back. The clients share the machine's 2
cores with the server: compare the rows of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .markdown import _profile_lines
from .run import RESULTS, raise_fd_limit
from .scale import loadavg, revision
from .servers import ALL, ServerProcess
from .swarm import SwarmProcess
from .workloads import percentile_ms

UID0 = 500_000


# -- the client processes ---------------------------------------------------------------


async def worker(base: str, uid0: int, count: int) -> None:
    """Hold ``count`` clients; print ``{"up": n}`` once all are connected, ``{"back": n}``
    once each has had its 1012 and is connected again; ``{"cmd": "report"}`` on stdin
    answers the records, ``{"cmd": "close"}`` closes them all."""
    from streaming.client import Client, StreamingConnectionHandler, StreamingConnectionStatus

    status_type = StreamingConnectionStatus
    records: list[dict[str, Any]] = []
    handlers: list[Any] = []
    up = asyncio.Event()
    back = asyncio.Event()
    counts = {"up": 0, "back": 0}
    opening = asyncio.Semaphore(100)  # no herd of our own at the start

    def watch(client: Any, rec: dict[str, Any]) -> Any:
        def listener(status: Any) -> None:
            now = time.perf_counter()
            if status is status_type.connected:
                if rec["first"] is None:
                    rec["first"] = now
                    opening.release()
                    counts["up"] += 1
                    if counts["up"] == count:
                        up.set()
                elif rec["lost"] is not None and rec["back"] is None:
                    rec["back"] = now
                    counts["back"] += 1
                    if counts["back"] == count:
                        back.set()
            elif status is status_type.waiting_to_retry and rec["first"] is not None:
                reason = client.disconnect_reason
                if rec["lost"] is None and reason is not None and reason.code == 1012:
                    rec["lost"] = now
                    rec["wait"] = client.retry_in_seconds
                    rec["reason"] = reason.close_reason
                elif rec["lost"] is not None and rec["back"] is None:
                    rec["failures"] += 1

        return listener

    for i in range(count):
        await opening.acquire()
        client = Client(base)
        client.websocket_url += f"?uid={uid0 + i}"  # the bench's identity (bench/identity.py)
        rec: dict[str, Any] = {"first": None, "lost": None, "back": None, "failures": 0}
        records.append(rec)
        client.add_streaming_connection_status_listener(watch(client, rec))
        handler = StreamingConnectionHandler(client)
        handlers.append(handler)
        handler.start()
    await up.wait()
    print(json.dumps({"up": count}), flush=True)
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    waiting_back = asyncio.ensure_future(back.wait())
    while line := await reader.readline():
        cmd = json.loads(line)["cmd"]
        if cmd == "wait_back":
            try:
                await asyncio.wait_for(asyncio.shield(waiting_back), json.loads(line)["wait"])
            except TimeoutError:
                pass
            print(json.dumps({"back": counts["back"]}), flush=True)
        elif cmd == "report":
            print(json.dumps({"records": records}), flush=True)
        elif cmd == "close":
            await asyncio.gather(*(h.close() for h in handlers), return_exceptions=True)
            await asyncio.gather(*(h.client.close() for h in handlers), return_exceptions=True)
            print(json.dumps({"closed": count}), flush=True)
            return


# -- the coordinator -------------------------------------------------------------------


def start_redis() -> tuple[subprocess.Popen[bytes], int]:
    from .ports import free_port

    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--maxclients", "20000"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    import socket

    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, port
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.02)  # polling the port: the signal is the accepted connect


def seconds(ms: float | None) -> float | None:
    return None if ms is None else round(ms / 1000, 2)


async def one_run(rate: str, args: argparse.Namespace, freeze: str = "on") -> dict[str, Any]:
    import redis.asyncio as aioredis

    redis_proc, redis_port = start_redis()
    url = f"redis://127.0.0.1:{redis_port}/0"
    profiler = None
    if args.profile:
        from .profile import Profiler

        profiler = Profiler(workloads=())
    server = ServerProcess(
        ALL["streampod_uvicorn"],
        {"REDIS_URL": url, "STREAMPOD_REDIS_LAYER": "pubsub", "BENCH_RESTART_RATE": rate,
         "BENCH_FREEZE_SOCKETS": "1" if freeze == "on" else "0",
         **(profiler.env if profiler is not None else {})},
    )  # fmt: skip
    workers: list[SwarmProcess] = []
    out: dict[str, Any] = {
        "rate": rate, "freeze": freeze, "sockets": args.sockets, "loadavg": loadavg()
    }  # fmt: skip
    try:
        await asyncio.to_thread(server.start)
        per = args.sockets // args.clients
        workers = [
            await SwarmProcess(
                "bench.herd",
                "--worker",
                server.base.replace("ws://", "http://") + "/",
                str(UID0 + k * per),
                str(per),
            ).start()
            for k in range(args.clients)
        ]
        await asyncio.gather(*(w.reply(300) for w in workers))  # {"up": n}
        cpu0 = server.cpu_s()
        if profiler is not None:
            off = "" if freeze == "on" else ", socket freezer off"
            profiler.start(
                server.pid, f"the first {args.profile:g} s after the cut, rate {rate}{off}"
            )
        cut = time.perf_counter()
        async with aioredis.from_url(url) as r:
            out["subscriber_connections_cut"] = await r.execute_command(
                "CLIENT", "KILL", "TYPE", "pubsub"
            )
        if profiler is not None:
            window = asyncio.get_running_loop().time() + args.profile
            sampled = asyncio.create_task(_stop_at(profiler, window))
        backs = await asyncio.gather(
            *(
                w.request(cmd="wait_back", wait=args.timeout, timeout=args.timeout + 30)
                for w in workers
            )
        )
        out["server_cpu_s"] = round(server.cpu_s() - cpu0, 2)
        if profiler is not None:
            await sampled
            if server.tail is not None:
                profiler.record_gc(server.tail.gc_pauses)
            out["profile"] = profiler.summary()
        records = [rec for w in workers for rec in (await w.request(cmd="report"))["records"]]
        out["back"] = sum(b["back"] for b in backs)
        lost = [r["lost"] - cut for r in records if r["lost"] is not None]
        returned = [r["back"] - cut for r in records if r["back"] is not None]
        out["closed_1012"] = len(lost)
        out["last_1012_s"] = round(max(lost), 2) if lost else None
        out["back_p50_s"] = seconds(percentile_ms(returned, 0.50))
        out["back_p99_s"] = seconds(percentile_ms(returned, 0.99))
        out["back_all_s"] = round(max(returned), 2) if len(returned) == len(records) else None
        out["failed_attempts"] = sum(r["failures"] for r in records)
        out["clients_with_failures"] = sum(1 for r in records if r["failures"])
        reasons = {r.get("reason") for r in records if r["lost"] is not None}
        out["close_reasons"] = sorted(x or "" for x in reasons)[:3]
        waits = [r["wait"] for r in records if r.get("wait") is not None]
        out["advised_wait_max_s"] = round(max(waits), 2) if waits else None
        out["server_cpu_per_reconnect_ms"] = (
            round(1000 * out["server_cpu_s"] / len(returned), 2) if returned else None
        )
    except Exception as exc:  # a failed run is a result
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        await asyncio.gather(*(w.stop() for w in workers), return_exceptions=True)
        await asyncio.to_thread(server.stop)
        out["server_errors"] = server.tail.errors if server.tail else 0
        if out["server_errors"] or "error" in out:
            out["server_log_tail"] = server.output().splitlines()[-40:]
            out["server_first_errors"] = server.tail.first_errors if server.tail else []
        redis_proc.terminate()
        redis_proc.wait(10)
    print(json.dumps(out), flush=True)
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    for repeat in range(args.runs):
        for rate in args.rates.split(","):
            for freeze in args.freeze_sockets.split(","):
                row = await one_run(rate, args, freeze)
                row["run"] = repeat + 1
                rows.append(row)
    return {
        "meta": {
            "date": dt.datetime.now().isoformat(timespec="seconds"),
            "command": "python -m bench.herd " + " ".join(sys.argv[1:]),
            "revision": revision(),
            "total_seconds": round(time.monotonic() - started, 1),
            "loadavg_at_end": loadavg(),
        },
        "rows": rows,
    }


async def _stop_at(profiler: Any, when: float) -> None:
    """Stop sampling at loop time ``when`` (the profiled window: the closes and the first
    reconnects, not the whole return)."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, when - loop.time()))
    await asyncio.to_thread(profiler.stop)


def table(data: dict[str, Any]) -> list[str]:
    lines = [
        "| RESTART_RATE | socket freezer | sockets | run | last 1012 (s) | back: 50% | 99% "
        "| all (s) | failed attempts (clients) | server CPU (ms per reconnect) "
        "| GC paused, longest (ms) | close reason | load |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---|---|---|---:|",
    ]
    for r in data["rows"]:
        if "error" in r:
            lines.append(
                f"| {r['rate']} | {r.get('freeze', 'on')} | {r['sockets']} | {r['run']} "
                f"| {r['error']} |"
            )
            continue
        all_back = r["back_all_s"] if r["back_all_s"] is not None else f"{r['back']} back"
        gc_ms = "-"
        for window in (r.get("profile") or {}).values():
            if window.get("gc"):
                gc_ms = f"{window['gc']['total_ms']:,.0f}, {window['gc']['max_ms']:,.0f}"
        lines.append(
            f"| {r['rate']} | {r.get('freeze', 'on')} | {r['sockets']:,} | {r['run']} "
            f"| {r['last_1012_s']} | {r['back_p50_s']} | {r['back_p99_s']} | {all_back} "
            f"| {r['failed_attempts']} ({r['clients_with_failures']}) "
            f"| {r['server_cpu_s']} ({r['server_cpu_per_reconnect_ms']}) | {gc_ms} "
            f"| `{(r['close_reasons'] or [''])[0]}` | {r['loadavg'][0]} |"
        )
    medians = {}
    variants = dict.fromkeys((r["rate"], r.get("freeze", "on")) for r in data["rows"])
    for rate, freeze in variants:
        alls = [
            r["back_all_s"]
            for r in data["rows"]
            if (r["rate"], r.get("freeze", "on")) == (rate, freeze) and r.get("back_all_s")
        ]
        if alls:
            label = rate if len({f for _, f in variants}) == 1 else f"{rate}, freezer {freeze}"
            medians[label] = statistics.median(alls)
    if medians:
        lines += [
            "",
            "Median time until every client was back: "
            + ", ".join(f"{rate}: {m} s" for rate, m in medians.items()),
        ]
    return lines


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:2] == ["--worker"]:
        base, uid0, count = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        raise_fd_limit()
        try:
            import uvloop
        except ImportError:
            asyncio.run(worker(base, uid0, count))
        else:
            uvloop.run(worker(base, uid0, count))
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.herd", description=__doc__)
    parser.add_argument("--sockets", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=4, help="client processes (4)")
    parser.add_argument("--rates", default="none,200",
                        help="RESTART_RATE values, comma-separated; none: no advice")  # fmt: skip
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds to wait for every client to be back")  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--freeze-sockets", default="on",
                        help="on, off or on,off: tune_gc()'s socket freezer")  # fmt: skip
    parser.add_argument("--profile", type=float, default=0.0, metavar="SECONDS",
                        help="py-spy samples the server for this long after the cut")  # fmt: skip
    args = parser.parse_args(argv)
    raise_fd_limit()
    from .scale import run as run_loop

    data = run_loop(lambda: run(args))
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = data["meta"]["date"][:10]
    (args.out / f"{stamp}-herd.json").write_text(json.dumps(data, indent=1) + "\n")
    md = [f"# Reconnect herd after a bus gap ({data['meta']['date']})", "",
          f"`{data['meta']['command']}`, revision {data['meta']['revision']}, "
          f"{data['meta']['total_seconds']} s", "", *table(data)]  # fmt: skip
    for row in data["rows"]:
        md += _profile_lines(row.get("profile"), server="uvicorn")
    (args.out / f"{stamp}-herd.md").write_text("\n".join(md) + "\n")
    print("\n".join(table(data)))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
