"""``python -m bench.connections`` (part of ``make bench-scale``): how many idle,
authenticated sockets one uvicorn process holds, and what each costs in memory.

* Streampod: the demo project as shipped (``streampod_project.asgi`` under uvicorn,
  the project's settings, in-memory layer), so every socket has the demo's endpoints
  open: ``chat`` (each user listens on its own channel; ``streampod_metrics`` is for
  staff only and is not opened). Each socket authenticates with its own user's DRF
  token (``Authorization: Token``): one database lookup per connect, on a SQLite file
  made here with ``--users`` users. The handshake completes once the endpoints are
  open (docs/protocol.md); the client then pings and waits for the pong.
* The bare-websockets ceiling (:mod:`bench.ceiling`): a dict of sockets, no auth.

Sockets are opened step by step (``--steps``, the earlier ones stay open) over
``--clients`` load-client processes (:mod:`bench.swarm`; 20,000 open files per process
here), then held idle until the server's CPU settles; at each step the server's RSS is
read from ``/proc`` (nothing forced). Memory per socket = (RSS - RSS before the first
step) / sockets. At the end every socket sends an application-level ping (Streampod's
``ping`` command, the ceiling's echo), all at once, then again spread evenly over
``--ping-spread`` seconds; each answer is timed from its own ping.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import shutil
import signal
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from . import scale
from .churn import make_database
from .run import RESULTS, raise_fd_limit
from .scale import loadavg, pyplot, stop_all
from .servers import CEILING, Contender, ServerProcess
from .swarm import SwarmProcess
from .workloads import STORM_UID, Target, quiesce

STEPS = (1000, 2000, 5000, 10000, 15000, 19000)
STREAMPOD_DEMO = Contender(
    "streampod_demo", "Streampod, the demo's endpoints (uvicorn)", "streampod", "uvicorn",
    "streampod_project.asgi:application", "streampod_demo",
    "streampod_project.asgi as shipped, token-authenticated sockets, chat endpoint open",
)  # fmt: skip
CONTENDERS = {c.key: c for c in (STREAMPOD_DEMO, CEILING)}


async def measure(
    contender: Contender, tokens: list[str], db_url: str, args: argparse.Namespace
) -> dict[str, Any]:
    env = {"DJANGO_SETTINGS_MODULE": "streampod_project.settings", "DATABASE_URL": db_url}
    env = {**env, **args.server_env} if contender is STREAMPOD_DEMO else {}
    probe = Path(tempfile.mkdtemp(prefix="streampod-memprobe-")) / "snapshot"
    if args.memprobe:
        env = {**env, "PYTHONPATH": str(Path(__file__).parent / "memprobe"),
               "BENCH_MEMPROBE": str(probe)}  # fmt: skip
    proc = ServerProcess(contender, env)
    swarms: list[SwarmProcess] = []
    out: dict[str, Any] = {"steps": []}
    try:
        await asyncio.to_thread(proc.start)
        target = Target(contender.dialect(), [proc.base], proc.rss_kb, proc.cpu_s)
        swarms = list(await asyncio.gather(*(SwarmProcess().start() for _ in range(args.clients))))
        # Warm-up: a few sockets opened and closed, so lazy imports are not counted.
        warm = await swarms[0].request(
            cmd="open", dialect=contender.dialect_name,
            conns=[[proc.base, STORM_UID + i] for i in range(10)],
            headers=[tokens[i % len(tokens)] for i in range(10)]
            if contender is STREAMPOD_DEMO
            else None,
        )  # fmt: skip
        if warm.get("failed"):
            raise RuntimeError(f"warm-up failed: {warm}")
        await swarms[0].stop()
        swarms[0] = await SwarmProcess().start()
        await quiesce(target, timeout=10)
        rss0 = proc.rss_kb()
        out["rss_before_mb"] = round(rss0 / 1024, 1)
        before = await snapshot(proc) if args.memprobe else None
        total = 0
        for step in args.steps:
            batches: list[list[list[Any]]] = [[] for _ in swarms]
            heads: list[list[str]] = [[] for _ in swarms]
            for i in range(total, step):
                batches[i % len(swarms)].append([proc.base, STORM_UID + i])
                heads[i % len(swarms)].append(tokens[i % len(tokens)])
            started = time.monotonic()
            replies = await asyncio.gather(
                *(
                    s.request(
                        cmd="open",
                        dialect=contender.dialect_name,
                        conns=b,
                        headers=h if contender is STREAMPOD_DEMO else None,
                        timeout=900,
                    )
                    for s, b, h in zip(swarms, batches, heads, strict=True)
                )
            )
            seconds = time.monotonic() - started
            failed = sum(r.get("failed", 0) for r in replies)
            total += sum(r.get("opened", 0) for r in replies)
            await quiesce(target, timeout=20)
            rss = proc.rss_kb()
            clients_kb = [(await s.request(cmd="rss"))["rss_kb"] for s in swarms]
            entry = {
                "sockets": total,
                "failed": failed,
                "errors": sorted({e for r in replies for e in r.get("errors", [])})[:3],
                "connect_s": round(seconds, 1),
                "server_rss_mb": round(rss / 1024, 1),
                "kb_per_socket": round((rss - rss0) / total, 1) if total else None,
                "client_rss_mb": round(sum(clients_kb) / 1024, 1),
                "loadavg": loadavg(),
            }
            out["steps"].append(entry)
            print(
                f"{contender.label:<42} {total:>6,} sockets: {entry['server_rss_mb']} MB, "
                f"{entry['kb_per_socket']} KB/socket, {failed} failed, "
                f"{entry['connect_s']} s to connect (load {entry['loadavg'][0]})",
                flush=True,
            )
            if failed or not proc.alive():
                break
        if before is not None:
            after = await snapshot(proc)
            out["memory_by_package"] = by_package(before, after, total)
            out["memory_top_lines"] = top_lines(before, after, total)
            out["memory_streaming_lines"] = top_lines(
                before, after, total, top=15, packages=("streaming", "channels")
            )
        for key, spread in (("ping", 0.0), ("ping_spread", args.ping_spread)):
            out[key] = await ping_all(swarms, args.ping_timeout, spread)
            print(f"{contender.label:<42} {key}: {out[key]}", flush=True)
    except Exception as exc:  # a server that cannot start or hold the sockets is a result
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        await stop_all(out, [proc], swarms)
        shutil.rmtree(probe.parent, ignore_errors=True)
    return out


async def ping_all(swarms: list[SwarmProcess], timeout: float, spread: float) -> dict[str, Any]:
    """Every socket of every load client pings (all at once, or evenly over ``spread``
    seconds); each answer timed from its own ping."""
    pings = await asyncio.gather(
        *(
            s.request(
                cmd="ping", ping_timeout=timeout, spread=spread, timeout=timeout + spread + 60
            )
            for s in swarms
        )
    )
    times = [p["max_ms"] for p in pings if p["max_ms"] is not None]
    return {
        "spread_s": spread,
        "sockets": sum(p["answered"] + p["failed"] for p in pings),
        "answered": sum(p["answered"] for p in pings),
        "failed": sum(p["failed"] for p in pings),
        "max_ms": max(times) if times else None,
        "p99_ms_per_client": [p["p99_ms"] for p in pings],
        "loadavg": loadavg(),
    }


async def snapshot(proc: ServerProcess) -> tracemalloc.Snapshot:
    """The server's Python heap now (bench/memprobe: SIGUSR1, then its snapshot file)."""
    assert proc.tail is not None
    os.kill(proc.pid, signal.SIGUSR1)
    path = await asyncio.to_thread(proc.tail.memprobes.get, True, 300)
    return tracemalloc.Snapshot.load(path)


def package_of(filename: str) -> str:
    """Who allocated: the installed package, Streampod's ``streaming``/``chat``, or the
    standard library module."""
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1].split("/", 1)[0]
    for ours in ("/streaming/", "/chat/", "/streampod_project/", "/bench/"):
        if ours in filename:
            return ours.strip("/")
    if "/lib/python3" in filename:
        return "stdlib " + filename.rsplit("/lib/python3", 1)[1].split("/", 1)[1]
    return filename


def by_package(
    before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, sockets: int
) -> list[tuple[str, float]]:
    """Python heap growth per socket (bytes), by package, largest first."""
    grown: dict[str, int] = {}
    for stat in after.compare_to(before, "filename"):
        name = package_of(stat.traceback[0].filename)
        grown[name] = grown.get(name, 0) + stat.size_diff
    ranked = sorted(grown.items(), key=lambda kv: -kv[1])
    return [(name, round(size / sockets)) for name, size in ranked if abs(size) >= sockets * 50]


def top_lines(
    before: tracemalloc.Snapshot,
    after: tracemalloc.Snapshot,
    sockets: int,
    top: int = 25,
    packages: tuple[str, ...] | None = None,
) -> list[tuple[str, float]]:
    """The allocating lines whose growth per socket is largest (bytes), of any package
    or of ``packages`` only."""
    stats = after.compare_to(before, "lineno")
    if packages is not None:
        stats = [s for s in stats if package_of(s.traceback[0].filename) in packages]
    stats = stats[:top]
    return [
        (f"{package_of(s.traceback[0].filename)}: "
         f"{os.path.basename(s.traceback[0].filename)}:{s.traceback[0].lineno}",
         round(s.size_diff / sockets))
        for s in stats
    ]  # fmt: skip


def table(data: dict[str, Any]) -> list[str]:
    results = data["results"]
    lines = [
        "| contender | sockets | server RSS MB | KB per socket | failed | s to connect "
        "| client processes' RSS MB | load avg |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, entry in results.items():
        label = CONTENDERS[key].label
        for s in entry["steps"]:
            lines.append(
                f"| {label} | {s['sockets']:,} | {s['server_rss_mb']} | {s['kb_per_socket']} "
                f"| {s['failed']} | {s['connect_s']} | {s['client_rss_mb']} | {s['loadavg'][0]} |"
            )
        if "error" in entry:
            lines.append(f"| {label} | failed: {entry['error'][:200]} | | | | | | |")
    mine, ceiling = results.get("streampod_demo"), results.get("ceiling")
    if mine and ceiling:
        theirs = {s["sockets"]: s for s in ceiling["steps"]}
        cells = [
            f"{s['sockets']:,}: {s['kb_per_socket'] / theirs[s['sockets']]['kb_per_socket']:.2f}x"
            for s in mine["steps"]
            if s["sockets"] in theirs and theirs[s["sockets"]]["kb_per_socket"]
        ]
        lines.append("\n*Streampod ÷ ceiling, KB per socket*: " + ", ".join(cells))
    for key, entry in results.items():
        grown = entry.get("memory_by_package")
        if grown:
            lines.append(
                f"\n{CONTENDERS[key].label}: growth of the server's Python heap per socket "
                "(tracemalloc, by the package of the allocating line; RSS figures of a "
                "--memprobe run are inflated by tracemalloc itself):\n"
            )
            lines += ["| package | bytes per socket |", "|---|---:|"]
            lines += [f"| {name} | {size:,} |" for name, size in grown]
            lines += ["", "| allocating line | bytes per socket |", "|---|---:|"]
            lines += [
                f"| `{name}` | {size:,} |" for name, size in entry.get("memory_top_lines", [])
            ]
            ours = entry.get("memory_streaming_lines")
            if ours:
                lines += ["", "| allocating line (streaming, channels) | bytes per socket |"]
                lines += ["|---|---:|", *(f"| `{name}` | {size:,} |" for name, size in ours)]
    lines.append("")
    lines.append(
        "Application-level pings from every socket at the end, each timed from its send:\n"
    )
    for key, entry in results.items():
        for name in ("ping", "ping_spread"):
            ping = entry.get(name)
            if ping:
                how = (
                    f"spread evenly over {ping['spread_s']:g} s"
                    if ping.get("spread_s")
                    else "all at once"
                )
                lines.append(
                    f"- {CONTENDERS[key].label}, {how}: {ping['answered']:,} of "
                    f"{ping['sockets']:,} answered, {ping['failed']} not within the timeout; "
                    f"the slowest in {ping['max_ms']} ms (load average {ping['loadavg'][0]})."
                )
    return lines


def plot(data: dict[str, Any], path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for key, entry in data["results"].items():
        xs = [s["sockets"] for s in entry["steps"]]
        label = CONTENDERS[key].label
        colour = "#c44e52" if key == "streampod_demo" else "#8c8c8c"
        axes[0].plot(xs, [s["server_rss_mb"] for s in entry["steps"]], "o-", color=colour,
                     label=label)  # fmt: skip
        axes[1].plot(xs, [s["kb_per_socket"] for s in entry["steps"]], "o-", color=colour,
                     label=label)  # fmt: skip
    axes[0].set_title("server RSS MB against open sockets", fontsize=10)
    axes[1].set_title("KB per socket ((RSS - RSS before) / sockets)", fontsize=10)
    for ax in axes:
        ax.set_xlabel("open, idle, authenticated sockets (one uvicorn process)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_ylim(bottom=0)
    return scale.save(plt, fig, path)


def render(data: dict[str, Any], png: str | None) -> list[str]:
    meta = data["meta"]
    return [
        f"# Connections per process {meta['date'][:10]}\n",
        f"Command: `{meta['command']}`, {meta['total_seconds']} s; "
        f"{meta['clients']} load-client processes; load average at the end "
        f"{meta['loadavg_at_end']}. {(__doc__ or '').split(chr(10), 3)[3].strip()}\n",
        f"![connections]({png})\n" if png else "",
        *table(data),
    ]


async def run(args: argparse.Namespace, tokens: list[str], db_url: str) -> dict[str, Any]:
    started = time.monotonic()
    results = {}
    for key in args.only.split(","):
        results[key] = await measure(CONTENDERS[key], tokens, db_url, args)
    return {
        "meta": {
            "date": dt.datetime.now().isoformat(timespec="seconds"),
            "command": "python -m bench.connections " + " ".join(sys.argv[1:]),
            "steps": args.steps,
            "clients": args.clients,
            "loadavg_at_end": loadavg(),
            "total_seconds": round(time.monotonic() - started, 1),
        },
        "results": results,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.connections", description=__doc__)
    parser.add_argument("--steps", default=",".join(map(str, STEPS)))
    parser.add_argument("--clients", type=int, default=4, help="load-client processes (4)")
    parser.add_argument("--users", type=int, default=0, help="distinct users (one a socket)")
    parser.add_argument("--ping-timeout", type=float, default=10.0)
    parser.add_argument("--ping-spread", type=float, default=5.0, help="second ping round (5 s)")
    parser.add_argument("--only", default=",".join(CONTENDERS))
    parser.add_argument(
        "--memprobe", action="store_true",
        help="tracemalloc in the server: its Python heap growth per socket, by package "
        "(slows it down and adds to its RSS: a run of its own)",
    )  # fmt: skip
    parser.add_argument(
        "--server-env", action="append", default=[], metavar="NAME=VALUE",
        help="environment of Streampod's uvicorn (repeatable): uvicorn reads its options "
        "from UVICORN_<OPTION>, e.g. UVICORN_WS=wsproto, UVICORN_WS_PING_INTERVAL=0",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.server_env = dict(item.split("=", 1) for item in args.server_env)
    args.steps = [int(x) for x in args.steps.split(",")]
    raise_fd_limit()
    workdir = Path(tempfile.mkdtemp(prefix="streampod-connections-"))
    try:
        path = workdir / "connections.sqlite3"
        creds = make_database(
            path, args.users or max(args.steps), "streampod_project.settings", sessions=False
        )
        data = scale.run(lambda: run(args, creds.tokens, f"sqlite:///{path}"))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    name = "connections-memprobe" if args.memprobe else "connections"
    scale.write(args.out, name, data, plot, lambda png: render(data, png))
    print("\n".join(table(data)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
