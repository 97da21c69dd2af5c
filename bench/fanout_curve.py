"""``python -m bench.fanout_curve`` (part of ``make bench-scale``): what one post to N
listeners costs, N from 10 to 10,000, on one server and on two sharing Redis.

For each contender, on fresh servers: one broadcaster socket and listeners on one
channel (``user_<FANOUT_UID>``), added step by step up to each N (the earlier ones stay
open), spread over the servers and over ``--clients`` load-client processes
(:mod:`bench.swarm`: one process cannot read 10,000 frames a broadcast fast enough, nor
hold the sockets). At each N: broadcasts one at a time, each awaited by every listener,
until ``--deliveries`` deliveries or ``--seconds`` have passed (at least 3 broadcasts).
Figures per N: deliveries/s, p50/p99 latency (from the sender's stamp), the servers'
CPU per delivery (``/proc``), losses. With ``--profile``, py-spy samples the Streampod
server during the largest N on one server (an extra point, not counted).

    python -m bench.fanout_curve                       # 10..10,000, every contender
    python -m bench.fanout_curve --points 2,4 --clients 1 --out /tmp/f   # the smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from . import scale
from .client import Conn, open_conn
from .run import RESULTS
from .scale import COLOURS, loadavg, pyplot, stop_all
from .servers import ALL, ROOT, ServerProcess
from .swarm import SwarmProcess
from .workloads import FANOUT_UID, WARMUP_UID, Target, clock, percentile_ms, quiesce, warm_up

POINTS = (10, 100, 1000, 5000, 10000)
ONE_SERVER = ["streampod_uvicorn", "socketio", "channels", "ceiling"]
TWO_SERVERS = ["streampod_uvicorn", "socketio", "channels"]


async def broadcast_point(
    target: Target,
    broadcaster: Conn,
    swarms: list[SwarmProcess],
    listening: list[int],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Broadcasts to the ``sum(listening)`` open listeners; the figures of this N."""
    n = sum(listening)
    busy = [s for s, k in zip(swarms, listening, strict=True) if k]
    done_by: dict[int, int] = {}
    events: dict[int, asyncio.Event] = {}

    def on_done(seq: int) -> None:
        done_by[seq] = done_by.get(seq, 0) + 1
        if done_by[seq] == len(busy) and seq in events:
            events[seq].set()

    for swarm in busy:
        swarm.on_done = on_done
        await swarm.request(cmd="track")
    wanted = max(3, min(args.max_broadcasts, args.deliveries // n))
    timeout = 10 + n / 500 + args.max_point_seconds / 3
    cpu0 = target.cpu_s()
    started = clock()
    done = 0
    finished = started
    timed_out = False
    for seq in range(wanted):
        if seq >= 3 and clock() - started > args.seconds:
            break
        events[seq] = asyncio.Event()
        await broadcaster.ws.send(target.dialect.relay(FANOUT_UID, 0, seq, clock()))
        done += 1
        try:
            async with asyncio.timeout(timeout):
                await events[seq].wait()
        except TimeoutError:
            timed_out = True  # some listener did not get it in time: counted as lost below
            break
        finished = clock()
    cpu = target.cpu_s() - cpu0
    latencies: list[float] = []
    delivered = dups = errors = 0
    client_cpu = 0.0
    for swarm in busy:
        stats = await swarm.request(cmd="stats")
        client_cpu += stats["cpu_s"]
        latencies += stats["latencies_ms"]
        delivered += stats["delivered"]
        dups += stats["duplicates"]
        errors += stats["errors"]
    elapsed = finished - started
    seconds = [x / 1000 for x in latencies]
    return {
        "listeners": n,
        "broadcasts": done,
        "delivered": delivered,
        "lost": done * n - delivered,
        "timed_out_after_s": round(timeout) if timed_out else None,
        "duplicates": dups,
        "errors": errors,
        "deliveries_per_s": round(delivered / elapsed) if elapsed > 0 else None,
        "p50_ms": percentile_ms(seconds, 0.50),
        "p99_ms": percentile_ms(seconds, 0.99),
        "server_cpu_us_per_delivery": round(cpu * 1e6 / delivered, 2) if delivered else None,
        # the listeners' processes (the broadcaster's is the coordinator's)
        "client_cpu_us_per_delivery": (
            round(client_cpu * 1e6 / delivered, 2) if delivered else None
        ),
        "loadavg": loadavg(),
    }


async def curve(
    key: str, servers: int, redis_url: str | None, args: argparse.Namespace, profiler: Any = None
) -> dict[str, Any]:
    contender = ALL[key]
    env = {"REDIS_URL": redis_url} if servers == 2 and redis_url else {}
    if profiler is not None:
        env.update(profiler.env)
    procs = [ServerProcess(contender, env) for _ in range(servers)]
    swarms: list[SwarmProcess] = []
    broadcaster: Conn | None = None
    out: dict[str, Any] = {"points": []}
    try:
        await asyncio.gather(*(asyncio.to_thread(p.start) for p in procs))
        target = Target(
            dialect=contender.dialect(),
            bases=[p.base for p in procs],
            rss_kb=lambda: sum(p.rss_kb() for p in procs),
            cpu_s=lambda: sum(p.cpu_s() for p in procs),
        )
        await warm_up(target)
        swarms = list(await asyncio.gather(*(SwarmProcess().start() for _ in range(args.clients))))
        broadcaster = await open_conn(target.dialect, target.bases[0], WARMUP_UID + 99, 0)
        listening = [0] * len(swarms)
        total = 0
        points = args.points if profiler is None else args.points[-1:]
        for n in points:
            last = out["points"][-1] if out["points"] else None
            if last and last["deliveries_per_s"]:
                predicted = 3 * n / last["deliveries_per_s"]
                if predicted > args.max_point_seconds:
                    out["skipped"] = (
                        f"N={n:,} and up: 3 broadcasts would take about {predicted:.0f} s at "
                        f"N={last['listeners']:,}'s rate (--max-point-seconds "
                        f"{args.max_point_seconds:.0f})"
                    )
                    break
            # Listener i: server i % servers, client process i % clients.
            batches: list[list[list[Any]]] = [[] for _ in swarms]
            for i in range(total, n):
                batches[i % len(swarms)].append([target.bases[i % servers], FANOUT_UID])
            replies = await asyncio.gather(
                *(
                    s.request(cmd="open", dialect=contender.dialect_name, conns=b)
                    for s, b in zip(swarms, batches, strict=True)
                    if b
                )
            )
            failed = sum(r.get("failed", 0) for r in replies)
            if failed or any("error" in r for r in replies):
                out["error"] = f"{failed} of {n - total} connects failed at N={n}: {replies}"
                break
            for i, b in enumerate(batches):
                listening[i] += len(b)
            total = n
            await quiesce(target, timeout=10)
            if profiler is not None:
                profiler.start(procs[0].pid, f"fan-out to {n:,}")
            try:
                point = await broadcast_point(target, broadcaster, swarms, listening, args)
            finally:
                if profiler is not None:
                    profiler.stop()
            point["server_rss_mb"] = round(target.rss_kb() / 1024, 1)
            out["points"].append(point)
            print(
                f"{contender.label:<28} {servers}srv N={n:>6,}: "
                f"{point['deliveries_per_s']} deliveries/s, p99 {point['p99_ms']} ms, "
                f"{point['server_cpu_us_per_delivery']} µs CPU/delivery, lost {point['lost']}"
                f"  (load {point['loadavg'][0]})",
                flush=True,
            )
            if point["lost"]:
                break  # the next N would only lose more
    except Exception as exc:  # a contender that cannot start or connect is a result
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if broadcaster is not None:
            await broadcaster.close()
        await stop_all(out, procs, swarms)
        if profiler is not None and procs[0].tail is not None:
            profiler.record_gc(procs[0].tail.gc_pauses)
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    only = set(args.only.split(",")) if args.only else None
    configs = [
        (key, servers)
        for servers, keys in ((1, ONE_SERVER), (2, TWO_SERVERS))
        if servers in args.servers
        for key in keys
        if only is None or key in only
    ]
    results: dict[str, Any] = {}
    redis = None
    started = time.monotonic()
    try:
        if any(servers == 2 for _, servers in configs):
            sys.path.insert(0, str(ROOT))
            from tests.support.servers import RedisServer

            redis = await asyncio.to_thread(RedisServer().start)
        for key, servers in configs:
            results[f"{key}@{servers}"] = await curve(
                key, servers, redis.url if redis else None, args
            )
        profile = None
        if args.profile:
            from .profile import Profiler

            if Profiler.available():
                profiler = Profiler(workloads=())
                await curve("streampod_uvicorn", 1, None, args, profiler=profiler)
                profile = profiler.summary()
    finally:
        if redis is not None:
            await asyncio.to_thread(redis.stop)
            shutil.rmtree(redis.dir, ignore_errors=True)
    return {
        "meta": {
            "date": dt.datetime.now().isoformat(timespec="seconds"),
            "command": "python -m bench.fanout_curve " + " ".join(sys.argv[1:]),
            "points": args.points,
            "clients": args.clients,
            "deliveries": args.deliveries,
            "seconds": args.seconds,
            "cores": os.cpu_count(),
            "loadavg_at_end": loadavg(),
            "total_seconds": round(time.monotonic() - started, 1),
            "profile": profile,
        },
        "results": results,
    }


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}" if value < 100 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def table(data: dict[str, Any]) -> list[str]:
    """One markdown table per server count; ratio rows: Streampod ÷ each peer, per N."""
    lines: list[str] = []
    results = data["results"]
    for servers in (1, 2):
        keys = [k for k in results if k.endswith(f"@{servers}")]
        if not keys:
            continue
        where = "one server" if servers == 1 else "two servers sharing Redis"
        lines += [
            f"#### fan-out to N listeners of one channel ({where})\n",
            "| contender | N | deliveries/s | p50 ms | p99 ms | srv CPU µs/delivery | lost "
            "| broadcasts | load avg |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for key in keys:
            label = ALL[key.partition("@")[0]].label
            entry = results[key]
            for p in entry["points"]:
                waited = p.get("timed_out_after_s")
                late = f" (not in after {waited} s)" if waited else ""
                lines.append(
                    f"| {label} | {p['listeners']:,} | {_fmt(p['deliveries_per_s'])} "
                    f"| {_fmt(p['p50_ms'])} | {_fmt(p['p99_ms'])} "
                    f"| {_fmt(p['server_cpu_us_per_delivery'])} | {p['lost']}{late} "
                    f"| {p['broadcasts']} | {p['loadavg'][0]} |"
                )
            if "error" in entry:
                lines.append(f"| {label} | failed: {entry['error'][:200]} | | | | | | | |")
            if "skipped" in entry:
                lines.append(f"| {label} | skipped {entry['skipped']} | | | | | | | |")
        mine = results.get(f"streampod_uvicorn@{servers}")
        if mine:
            by_n = {p["listeners"]: p for p in mine["points"]}
            for key in keys:
                if key.startswith("streampod_uvicorn@"):
                    continue
                other = {p["listeners"]: p for p in results[key]["points"]}
                cells = []
                for n in sorted(by_n):
                    a, b = by_n[n], other.get(n)
                    if b and a["deliveries_per_s"] and b["deliveries_per_s"]:
                        cells.append(
                            f"N={n:,}: {a['deliveries_per_s'] / b['deliveries_per_s']:.2f}x"
                        )
                label = ALL[key.partition("@")[0]].label
                lines.append(
                    f"\n*Streampod (uvicorn) ÷ {label}, deliveries/s*: " + ", ".join(cells)
                )
        lines.append("")
    return lines


def plot(data: dict[str, Any], path: Path) -> bool:
    """Deliveries/s, p99 and server CPU per delivery against N (log scale)."""
    plt = pyplot()
    if plt is None:
        return False
    panels = [
        ("deliveries_per_s", "deliveries/s (higher is better)"),
        ("p99_ms", "p99 latency ms (lower is better)"),
        ("server_cpu_us_per_delivery", "server CPU µs per delivery (lower is better)"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    for ax, (metric, title) in zip(axes, panels, strict=True):
        for key, entry in data["results"].items():
            name, _, servers = key.partition("@")
            xs = [p["listeners"] for p in entry["points"] if p.get(metric) is not None]
            ys = [p[metric] for p in entry["points"] if p.get(metric) is not None]
            if xs:
                ax.plot(
                    xs, ys, marker="o", color=COLOURS.get(name, "black"),
                    linestyle="-" if servers == "1" else "--",
                    label=f"{ALL[name].label}, {'1 server' if servers == '1' else '2 + Redis'}",
                )  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("listeners N")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("fan-out: one post to N listeners of one channel (bench/fanout_curve.py)")
    return scale.save(plt, fig, path)


def render(data: dict[str, Any], png: str | None) -> list[str]:
    from .markdown import _profile_lines

    meta = data["meta"]
    return [
        f"# Fan-out curve {meta['date'][:10]}\n",
        f"Command: `{meta['command']}`, {meta['total_seconds']} s; {meta['cores']} cores, "
        f"{meta['clients']} load-client processes; load average at the end "
        f"{meta['loadavg_at_end']}. Each N: broadcasts one at a time, each awaited by every "
        f"listener, until {meta['deliveries']:,} deliveries or {meta['seconds']} s (at least "
        "3). Server CPU from /proc, summed over the servers.\n",
        f"![fan-out curve]({png})\n" if png else "",
        *table(data),
        *_profile_lines(meta.get("profile"), "uvicorn"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fanout_curve", description=__doc__)
    parser.add_argument("--points", default=",".join(map(str, POINTS)))
    parser.add_argument("--servers", default="1,2")
    parser.add_argument("--only", default="", help="comma-separated contender keys")
    parser.add_argument("--clients", type=int, default=2, help="load-client processes (2)")
    parser.add_argument("--deliveries", type=int, default=30000, help="per N (30,000)")
    parser.add_argument("--max-broadcasts", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=3.0, help="per N, at most (3)")
    parser.add_argument(
        "--max-point-seconds", type=float, default=45.0,
        help="skip the larger N once 3 broadcasts would take longer (45)",
    )  # fmt: skip
    parser.add_argument("--profile", action="store_true", help="py-spy at the largest N")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.points = [int(x) for x in args.points.split(",")]
    args.servers = [int(x) for x in args.servers.split(",")]
    return scale.execute("fanout", args, run, plot, render, table)


if __name__ == "__main__":
    sys.exit(main())
