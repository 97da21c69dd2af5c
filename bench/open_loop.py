"""``python -m bench.open_loop`` (part of ``make bench-scale``): relay latency at a steady
offered rate, at 25/50/75/90% of each contender's saturation, on one server.

For each contender, on a fresh server: ``--clients`` load-client processes
(:mod:`bench.swarm`) hold 200 relay clients between them, 20 senders each. The
contender's closed-loop relay (:func:`bench.workloads.relay`, ``make bench``'s, from one
more load-client process) gives a first rate; the swarms then offer twice that for
``--saturation-seconds``, and the rate at which they get the messages, until the last
one, is the contender's *saturation* on this setup (servers and load clients share the
2 cores: a contender whose frames cost the clients more saturates lower). Then they
send at each fraction of it for ``--seconds``: open loop, every message stamped with
its *scheduled* send time, so a message that waited (for the client's loop or a
socket's push-back) counts its wait. Figures per level: the offered and delivered
rates, p50/p99/p99.9 latency, losses, server CPU per message.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
import time
from pathlib import Path
from typing import Any

from . import scale
from .run import RESULTS
from .scale import COLOURS, loadavg, pyplot, stop_all
from .servers import ALL, ServerProcess
from .swarm import SwarmProcess
from .workloads import FULL, RELAY_UID, Target, clock, percentile_ms, quiesce, relay, warm_up

CONTENDERS = ["streampod_uvicorn", "socketio", "channels", "ceiling"]
LEVELS = (25, 50, 75, 90)
CLIENTS_PER_SWARM = 100
SENDERS_PER_SWARM = 20


async def level(
    target: Target,
    swarms: list[SwarmProcess],
    rate: float,
    args: argparse.Namespace,
    seconds: float | None = None,
    drain_timeout: float | None = None,
) -> dict[str, Any]:
    """Send at ``rate`` for ``seconds`` (``--seconds``), wait for the stragglers (at most
    ``drain_timeout``): the level's figures. Delivered/s runs to the last delivery."""
    seconds = seconds or args.seconds
    uids = [RELAY_UID + i for i in range(len(swarms) * CLIENTS_PER_SWARM)]
    await asyncio.gather(*(s.request(cmd="track", mode="relay") for s in swarms))
    cpu0 = target.cpu_s()
    start = clock() + 0.1
    sends = await asyncio.gather(
        *(
            s.request(
                cmd="send",
                senders=SENDERS_PER_SWARM,
                src0=i * SENDERS_PER_SWARM,
                rate=rate / len(swarms),
                seconds=seconds,
                start=start,
                targets=uids,
                timeout=seconds * 10 + 60,
            )
            for i, s in enumerate(swarms)
        )
    )
    sent = sum(r["sent"] for r in sends)
    deadline = clock() + (drain_timeout or args.drain_timeout)
    delivered = 0
    while clock() < deadline:  # poll the counts until every message is in (bounded)
        counts = await asyncio.gather(*(s.request(cmd="count") for s in swarms))
        delivered = sum(c["delivered"] for c in counts)
        if delivered >= sent:
            break
        await asyncio.sleep(0.1)
    cpu = target.cpu_s() - cpu0
    latencies: list[float] = []
    dups = errors = closed = 0
    last = start
    for swarm in swarms:
        stats = await swarm.request(cmd="stats")
        last = max(last, stats["last"] or start)
        latencies += [x / 1000 for x in stats["latencies_ms"]]
        dups += stats["duplicates"]
        errors += stats["errors"]
        closed += stats["closed"]
    return {
        "offered_per_s": round(rate),
        "sent": sent,
        "delivered": len(latencies),
        "lost": sent - len(latencies),
        "duplicates": dups,
        "errors": errors,  # error frames the senders got back
        "closed": closed,  # sockets closed by the server so far
        "delivered_per_s": round(len(latencies) / max(last - start, seconds)),
        "p50_ms": percentile_ms(latencies, 0.50),
        "p99_ms": percentile_ms(latencies, 0.99),
        "p999_ms": percentile_ms(latencies, 0.999),
        "max_ms": round(max(latencies) * 1000, 1) if latencies else None,
        "send_late_max_ms": max(r["late_max_ms"] for r in sends),
        "server_cpu_us_per_msg": round(cpu * 1e6 / len(latencies), 1) if latencies else None,
        "loadavg": loadavg(),
    }


async def open_relay_clients(swarms: list[SwarmProcess], dialect: str, base: str) -> None:
    """``CLIENTS_PER_SWARM`` relay clients in each load-client process (uids from
    ``RELAY_UID``); raises if any connect fails."""
    replies = await asyncio.gather(
        *(
            s.request(
                cmd="open",
                dialect=dialect,
                conns=[
                    [base, RELAY_UID + j * CLIENTS_PER_SWARM + i] for i in range(CLIENTS_PER_SWARM)
                ],
            )
            for j, s in enumerate(swarms)
        )
    )
    if any(r.get("failed") for r in replies):
        raise RuntimeError(f"connects failed: {replies}")


async def measure(key: str, args: argparse.Namespace) -> dict[str, Any]:
    contender = ALL[key]
    proc = ServerProcess(contender, {})
    swarms: list[SwarmProcess] = []
    out: dict[str, Any] = {"levels": []}
    try:
        await asyncio.to_thread(proc.start)
        target = Target(contender.dialect(), [proc.base], proc.rss_kb, proc.cpu_s)
        await warm_up(target)
        from dataclasses import replace

        closed = await relay(target, replace(FULL, relay_seconds=args.saturation_seconds))
        out["saturation"] = closed
        swarms = list(await asyncio.gather(*(SwarmProcess().start() for _ in range(args.clients))))
        await open_relay_clients(swarms, contender.dialect_name, proc.base)
        await quiesce(target, timeout=5)
        probe = await level(
            target, swarms, 2 * closed["msgs_per_s"], args, args.saturation_seconds, 60.0
        )
        out["overload"] = probe
        saturation = probe["delivered_per_s"]
        print(
            f"{contender.label:<28} closed-loop relay {closed['msgs_per_s']} msgs/s; offered "
            f"{probe['offered_per_s']}/s: saturation {saturation} msgs/s",
            flush=True,
        )
        for pct in args.levels:
            await quiesce(target, timeout=5)
            entry = await level(target, swarms, saturation * pct / 100, args)
            entry["percent"] = pct
            out["levels"].append(entry)
            print(
                f"{contender.label:<28} {pct}% ({entry['offered_per_s']}/s): delivered "
                f"{entry['delivered_per_s']}/s, p50 {entry['p50_ms']} p99 {entry['p99_ms']} "
                f"p99.9 {entry['p999_ms']} ms, lost {entry['lost']} "
                f"(load {entry['loadavg'][0]})",
                flush=True,
            )
    except Exception as exc:  # a contender that fails is a result
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        await stop_all(out, [proc], swarms)
    return out


def table(data: dict[str, Any]) -> list[str]:
    results = data["results"]
    lines = [
        "| contender | saturation msgs/s | level | offered/s | delivered/s | p50 ms | p99 ms "
        "| p99.9 ms | lost | refused / closed | srv CPU µs/msg | load avg |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, entry in results.items():
        label = ALL[key].label
        sat = (entry.get("overload") or {}).get("delivered_per_s")
        for e in entry["levels"]:
            lines.append(
                f"| {label} | {sat:,} | {e['percent']}% | {e['offered_per_s']:,} "
                f"| {e['delivered_per_s']:,} | {e['p50_ms']} | {e['p99_ms']} | {e['p999_ms']} "
                f"| {e['lost']} | {e.get('errors', 0)} / {e.get('closed', 0)} "
                f"| {e['server_cpu_us_per_msg']} | {e['loadavg'][0]} |"
            )
        if "error" in entry:
            lines.append(f"| {label} | failed: {entry['error'][:200]} | | | | | | | | | | |")
    mine = results.get("streampod_uvicorn")
    if mine:
        at = {e["percent"]: e for e in mine["levels"]}
        for key, entry in results.items():
            if key == "streampod_uvicorn":
                continue
            cells = [
                f"{e['percent']}%: {at[e['percent']]['p99_ms'] / e['p99_ms']:.2f}x"
                for e in entry["levels"]
                if e["percent"] in at and e["p99_ms"] and at[e["percent"]]["p99_ms"]
            ]
            lines.append(f"\n*Streampod (uvicorn) ÷ {ALL[key].label}, p99*: " + ", ".join(cells))
    lines.append("")
    return lines


def plot(data: dict[str, Any], path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    for ax, (metric, title) in zip(
        axes, [("p50_ms", "p50"), ("p99_ms", "p99"), ("p999_ms", "p99.9")], strict=True
    ):
        for key, entry in data["results"].items():
            xs = [e["percent"] for e in entry["levels"] if e.get(metric)]
            ys = [e[metric] for e in entry["levels"] if e.get(metric)]
            if xs:
                ax.plot(xs, ys, "o-", color=COLOURS.get(key, "black"), label=ALL[key].label)
        ax.set_yscale("log")
        ax.set_xlabel("offered rate, % of the contender's own saturation")
        ax.set_title(f"relay latency {title}, ms (open loop; lower is better)", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    return scale.save(plt, fig, path)


def render(data: dict[str, Any], png: str | None) -> list[str]:
    meta = data["meta"]
    return [
        f"# Open-loop relay latency {meta['date'][:10]}\n",
        f"Command: `{meta['command']}`, {meta['total_seconds']} s; {meta['clients']} "
        f"load-client processes, {meta['seconds']} s per level; load average at the "
        f"end {meta['loadavg_at_end']}.\n",
        (__doc__ or "").split("\n", 2)[2].strip() + "\n",
        f"![open-loop latency]({png})\n" if png else "",
        *table(data),
    ]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    results = {}
    for key in args.only.split(","):
        results[key] = await measure(key, args)
    return {
        "meta": {
            "date": dt.datetime.now().isoformat(timespec="seconds"),
            "command": "python -m bench.open_loop " + " ".join(sys.argv[1:]),
            "clients": args.clients,
            "seconds": args.seconds,
            "levels": args.levels,
            "loadavg_at_end": loadavg(),
            "total_seconds": round(time.monotonic() - started, 1),
        },
        "results": results,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.open_loop", description=__doc__)
    parser.add_argument("--only", default=",".join(CONTENDERS))
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)))
    parser.add_argument("--seconds", type=float, default=4.0, help="per level (4)")
    parser.add_argument("--saturation-seconds", type=float, default=3.0)
    parser.add_argument("--drain-timeout", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=2, help="load-client processes (2)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.levels = [int(x) for x in args.levels.split(",")]
    return scale.execute("open-loop", args, run, plot, render, table)


if __name__ == "__main__":
    sys.exit(main())
