"""``python -m bench.workers`` (part of ``make bench-scale``): Streampod on two uvicorn
workers (``--workers 2``, one port, sharing Redis) against one, on this machine's cores.

Three servers, one after the other: one uvicorn worker with the in-memory layer, one
worker with Redis, two workers with Redis (uvicorn's ``WEB_CONCURRENCY``; the kernel
spreads the connections over the workers, and messages between sockets of different
workers go through Redis). Each is measured with the load-client processes of the
other curves (:mod:`bench.swarm`):

* relay throughput: 200 clients, all of them senders (``--senders`` per load-client
  process, 100), offering ``--offered`` msgs/s (beyond what any of them delivers here)
  for ``--seconds``; the rate at which the messages come in, to the last one
  (:func:`bench.open_loop.level`). Every client sends: a socket's messages are handled
  one after another, each ``await``-ing its post, so with Redis a sender waits a round
  trip per message, and 40 senders (the open-loop curves' number) left one worker with
  Redis a quarter of a core idle: a measure of the round trip, not of throughput;
* fan-out throughput: ``--listeners`` listeners of one channel, broadcasts one at a
  time, each awaited by all (:func:`bench.fanout_curve.broadcast_point`).

Server CPU is summed over uvicorn's processes (the supervisor and its workers).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from . import scale
from .client import Conn, open_conn
from .fanout_curve import broadcast_point
from .open_loop import CLIENTS_PER_SWARM, level, open_relay_clients
from .run import RESULTS
from .scale import loadavg, stop_all
from .servers import _TICKS, ROOT, STREAMPOD_UVICORN, ServerProcess
from .swarm import SwarmProcess
from .workloads import FANOUT_UID, WARMUP_UID, Target, quiesce, warm_up

#: (name, uvicorn workers, with Redis)
CONFIGS = [("1 worker, in-memory", 1, False), ("1 worker + Redis", 1, True),
           ("2 workers + Redis", 2, True)]  # fmt: skip


def load_client(args: argparse.Namespace) -> SwarmProcess:
    """A load-client process: the C client (:mod:`bench.cswarm`) or :mod:`bench.swarm`."""
    if args.client == "c":
        from .cswarm import swarm_process

        return swarm_process()
    return SwarmProcess()


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and its children (uvicorn's workers), from /proc."""
    total = 0.0
    pids = [pid]
    while pids:
        current = pids.pop()
        try:
            with open(f"/proc/{current}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / _TICKS
            with open(f"/proc/{current}/task/{current}/children") as children:
                pids += [int(p) for p in children.read().split()]
        except OSError:  # a worker that just exited
            continue
    return total


async def measure(
    name: str,
    workers: int,
    redis_url: str | None,
    args: argparse.Namespace,
    profiler: Any = None,
) -> dict[str, Any]:
    """One configuration's relay and fan-out; with ``profiler`` (one worker only), py-spy
    samples the server during the relay."""
    env = {"WEB_CONCURRENCY": str(workers), **({"REDIS_URL": redis_url} if redis_url else {})}
    if profiler is not None:
        env.update(profiler.env)
    proc = ServerProcess(STREAMPOD_UVICORN, env)
    swarms: list[SwarmProcess] = []
    broadcaster: Conn | None = None
    out: dict[str, Any] = {"name": name, "workers": workers}
    try:
        await asyncio.to_thread(proc.start)
        target = Target(
            STREAMPOD_UVICORN.dialect(), [proc.base], proc.rss_kb, lambda: tree_cpu_s(proc.pid)
        )
        for _ in range(4 * workers):  # each worker imports lazily on its first sockets
            await warm_up(target)
        swarms = list(await asyncio.gather(*(load_client(args).start() for _ in range(2))))
        await open_relay_clients(swarms, "streampod", proc.base)
        await quiesce(target, timeout=5)
        if profiler is not None:
            profiler.start(proc.pid, f"relay, {name}")
        try:
            out["relay"] = await level(target, swarms, args.offered, args, args.seconds, 60.0)
        finally:
            if profiler is not None:
                profiler.stop()
        print(f"{name:<22} relay: {out['relay']['delivered_per_s']} msgs/s", flush=True)
        await asyncio.gather(*(s.stop() for s in swarms))
        swarms = list(await asyncio.gather(*(load_client(args).start() for _ in range(2))))
        half = args.listeners // 2
        for s in swarms:
            reply = await s.request(
                cmd="open", dialect="streampod", conns=[[proc.base, FANOUT_UID]] * half
            )
            if reply.get("failed"):
                raise RuntimeError(f"connects failed: {reply}")
        broadcaster = await open_conn(target.dialect, proc.base, WARMUP_UID + 99, 0)
        await quiesce(target, timeout=5)
        out["fanout"] = await broadcast_point(target, broadcaster, swarms, [half, half], args)
        print(f"{name:<22} fan-out: {out['fanout']['deliveries_per_s']} /s", flush=True)
    except Exception as exc:  # a configuration that fails is a result
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if broadcaster is not None:
            await broadcaster.close()
        await stop_all(out, [proc], swarms)
    return out


def medians(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per configuration: the median of its runs' relay and fan-out figures."""
    out = []
    for name, _, _ in CONFIGS:
        mine = [r for r in rows if r["name"] == name and "error" not in r]
        if not mine:
            continue
        row: dict[str, Any] = {"name": f"{name} (median of {len(mine)})"}
        for workload in ("relay", "fanout"):
            row[workload] = {
                key: statistics.median(r[workload][key] for r in mine)
                for key in mine[0][workload]
                if all(isinstance(r[workload][key], int | float) for r in mine)
            }
            row[workload]["loadavg"] = mine[-1][workload]["loadavg"]
        out.append(row)
    return out


def cores(figures: dict[str, Any], cpu: str, rate: str) -> str:
    """Cores the server processes used: CPU per message times messages per second."""
    if not isinstance(figures.get(cpu), int | float) or not figures.get(rate):
        return "-"
    return f"{figures[cpu] * figures[rate] / 1e6:.2f}"


def table(data: dict[str, Any]) -> list[str]:
    rows = data["results"] + medians(data["results"])
    lines = [
        "| server | relay msgs/s | relay p99 ms | relay lost | relay server / client cores "
        "| fan-out deliveries/s | fan-out p99 ms | fan-out lost "
        "| fan-out server / client cores | load avg |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['name']} | failed: {r['error'][:200]} | | | | | | | | |")
            continue
        relay, fan = r["relay"], r["fanout"]
        run = f", run {r['run']}" if "run" in r else ""
        lines.append(
            f"| {r['name']}{run} "
            f"| {relay['delivered_per_s']:,.0f} | {relay['p99_ms']:,.0f} | {relay['lost']} "
            f"| {cores(relay, 'server_cpu_us_per_msg', 'delivered_per_s')} / "
            f"{cores(relay, 'client_cpu_us_per_msg', 'delivered_per_s')} "
            f"| {fan['deliveries_per_s']:,.0f} | {fan['p99_ms']:,.1f} | {fan['lost']} "
            f"| {cores(fan, 'server_cpu_us_per_delivery', 'deliveries_per_s')} / "
            f"{cores(fan, 'client_cpu_us_per_delivery', 'deliveries_per_s')} "
            f"| {fan['loadavg'][0]} |"
        )
    ok = {r["name"].partition(" (median")[0]: r for r in medians(data["results"])}
    two = ok.get("2 workers + Redis")
    for base in ("1 worker, in-memory", "1 worker + Redis"):
        one = ok.get(base)
        if two and one:
            lines.append(
                f"\n*2 workers ÷ {base}, medians*: relay "
                f"{two['relay']['delivered_per_s'] / one['relay']['delivered_per_s']:.2f}x, "
                f"fan-out "
                f"{two['fanout']['deliveries_per_s'] / one['fanout']['deliveries_per_s']:.2f}x"
            )
    lines.append("")
    return lines


def render(data: dict[str, Any], png: str | None) -> list[str]:
    from .markdown import _profile_lines

    meta = data["meta"]
    return [
        f"# Two uvicorn workers against one {meta['date'][:10]}\n",
        f"Command: `{meta['command']}`, {meta['total_seconds']} s; load average at the start "
        f"{meta.get('loadavg_at_start')}, at the end "
        f"{meta['loadavg_at_end']}; commit {meta.get('revision')}.\n",
        (__doc__ or "").split("\n", 2)[2].strip() + "\n",
        *table(data),
        *_profile_lines(meta.get("profile"), "uvicorn"),
    ]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    rev0 = scale.revision()  # the code measured; another commit may land during the run
    at_start = loadavg()
    sys.path.insert(0, str(ROOT))
    from tests.support.servers import RedisServer

    redis = await asyncio.to_thread(RedisServer().start)
    results = []
    try:
        for run_index in range(args.runs):  # interleaved: background load spreads over all
            for name, workers, with_redis in CONFIGS:
                url = redis.url if with_redis else None
                results.append({"run": run_index + 1, **await measure(name, workers, url, args)})
        profile = None
        if args.profile:
            from .profile import Profiler

            profiler = Profiler(workloads=())
            for name, workers, with_redis in CONFIGS[:2]:  # one worker: one process to sample
                url = redis.url if with_redis else None
                await measure(name, workers, url, args, profiler=profiler)
            profile = profiler.summary()
    finally:
        await asyncio.to_thread(redis.stop)
        shutil.rmtree(redis.dir, ignore_errors=True)
    return {
        "meta": {
            "date": dt.datetime.now().isoformat(timespec="seconds"),
            "command": "python -m bench.workers " + " ".join(sys.argv[1:]),
            "loadavg_at_start": at_start,
            "loadavg_at_end": loadavg(),
            "revision": rev0 if scale.revision() == rev0 else f"{rev0} -> {scale.revision()}",
            "total_seconds": round(time.monotonic() - started, 1),
            "profile": profile,
        },
        "results": results,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.workers", description=__doc__)
    parser.add_argument("--offered", type=float, default=40_000.0, help="relay msgs/s offered")
    parser.add_argument("--seconds", type=float, default=2.0, help="relay sending time (2)")
    parser.add_argument(
        "--senders", type=int, default=CLIENTS_PER_SWARM,
        help=f"relay senders per load-client process (all {CLIENTS_PER_SWARM})",
    )  # fmt: skip
    parser.add_argument("--drain-timeout", type=float, default=60.0)
    parser.add_argument("--listeners", type=int, default=2000, help="fan-out listeners (2,000)")
    parser.add_argument(
        "--client", choices=("c", "python"), default="c",
        help="the load clients: bench/cswarm.c (c, the default) or bench.swarm (python)",
    )  # fmt: skip
    parser.add_argument("--deliveries", type=int, default=40000)
    parser.add_argument("--max-broadcasts", type=int, default=100)
    parser.add_argument("--max-point-seconds", type=float, default=45.0)
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs (3)")
    parser.add_argument(
        "--profile", action="store_true",
        help="py-spy on one worker's relay, without and with Redis (extra runs)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    return scale.execute("workers", args, run, lambda data, path: False, render, table)


if __name__ == "__main__":
    sys.exit(main())
