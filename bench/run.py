"""``python -m bench.run`` (``make bench``): every contender, every workload, in one run.

    python -m bench.run                     # full size, 3 runs, bench/results/<date>.*
    python -m bench.run --size tiny --runs 1 --out /tmp/b   # what the smoke test runs
    python -m bench.run --only streampod,channels --servers 1

Runs are interleaved (run 1 of every contender, then run 2...), each on freshly
started servers, so that background load on a shared machine spreads over all of
them. One run of a contender: start its servers, warm up, connect storm held idle
(RSS), relay, fan-out, echo (one server only: it crosses no server boundary), stop.
The two-server rows share one private redis-server started here. With ``--profile``
(default: when py-spy is installed and a target is missed), one more Streampod run
is recorded with py-spy and summarised in the results (its figures are not counted).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import resource
import shlex
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import report, workloads
from .servers import ALL, ROOT, Contender, ServerProcess
from .workloads import FULL, TINY, Sizes, Target

RESULTS = ROOT / "bench" / "results"
ONE_SERVER = ["streampod", "streampod_uvicorn", "channels", "socketio", "ceiling"]
TWO_SERVERS = ["streampod", "streampod_uvicorn", "channels", "socketio"]


@dataclass(frozen=True)
class Config:
    contender: Contender
    servers: int

    @property
    def key(self) -> str:
        return f"{self.contender.key}@{self.servers}"

    @property
    def label(self) -> str:
        return self.contender.label


def raise_fd_limit() -> int:
    """Soft fd limit up to the hard one (servers inherit it): 2,000 sockets each side."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _target(config: Config, procs: list[ServerProcess]) -> Target:
    return Target(
        dialect=config.contender.dialect(),
        bases=[p.base for p in procs],
        rss_kb=lambda: sum(p.rss_kb() for p in procs),
        cpu_s=lambda: sum(p.cpu_s() for p in procs),
    )


async def run_config(
    config: Config, sizes: Sizes, redis_url: str | None, profiler: Any = None
) -> dict[str, Any]:
    """One run of one contender on fresh servers: every workload's figures (or its error)."""
    env = {"REDIS_URL": redis_url} if config.servers == 2 and redis_url else {}
    if profiler is not None:
        env.update(profiler.env)
    procs = [ServerProcess(config.contender, env) for _ in range(config.servers)]
    out: dict[str, Any] = {}
    phases: dict[str, float] = {}
    out["phase_s"] = phases
    t0 = time.monotonic()
    try:
        await asyncio.gather(*(asyncio.to_thread(proc.start) for proc in procs))
        phases["start"] = round(time.monotonic() - t0, 2)
        target = _target(config, procs)
        await workloads.warm_up(target)
        phases["warmup"] = round(time.monotonic() - t0 - sum(phases.values()), 2)
        plan: list[tuple[str, Any]] = [
            ("storm", workloads.storm_and_idle),
            ("relay", workloads.relay),
            ("fanout", workloads.fanout),
        ]
        if config.servers == 1:
            plan.append(("echo", workloads.echo))
        for name, workload in plan:
            if not all(p.alive() for p in procs):
                out[name] = {"error": "server died"}
                continue
            await workloads.quiesce(target)
            sampled = profiler is not None and name in profiler.workloads
            if name == "echo" and profiler is not None:
                continue  # the profiled run stops after the workloads it samples
            if sampled:
                profiler.start(procs[0].pid, name)
            try:
                out[name] = await workload(target, sizes)
            except Exception as exc:  # a failed workload is a result
                out[name] = {"error": f"{type(exc).__name__}: {exc}"}
                traceback.print_exc()
            finally:
                if sampled:
                    profiler.stop()
                phases[name] = round(time.monotonic() - t0 - sum(phases.values()), 2)
    except Exception as exc:  # a contender that cannot start is a result
        out["start"] = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        t1 = time.monotonic()
        await asyncio.gather(*(asyncio.to_thread(proc.stop) for proc in procs))
        phases["stop"] = round(time.monotonic() - t1, 2)
        if profiler is not None and procs[0].tail is not None:
            profiler.record_gc(procs[0].tail.gc_pauses)
        out["server_warnings"] = sum(p.tail.warnings for p in procs if p.tail)
        out["server_errors"] = sum(p.tail.errors for p in procs if p.tail)
        if out["server_errors"] or any("error" in v for v in out.values() if isinstance(v, dict)):
            out["server_log_tail"] = [
                line for p in procs for line in p.output().splitlines()[-15:]
            ]
    return out


def _summary_line(config: Config, run: dict[str, Any]) -> str:
    parts = [f"{config.label:<28} {config.servers}srv"]
    for name, metric, unit in (
        ("relay", "msgs_per_s", "relay/s"),
        ("fanout", "deliveries_per_s", "fan-out/s"),
        ("echo", "msgs_per_s", "echo/s"),
        ("storm", "idle_kb_per_conn", "KB/conn"),
        ("storm", "storm_all_connected_s", "storm s"),
    ):
        entry = run.get(name)
        if isinstance(entry, dict):
            value = entry.get(metric, entry.get("error", "?"))
            lost = entry.get("lost")
            suffix = f" (lost {lost})" if lost else ""
            parts.append(f"{unit} {value}{suffix}")
    return "  ".join(parts)


async def bench(args: argparse.Namespace) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    sizes = TINY if args.size == "tiny" else FULL
    only = set(args.only.split(",")) if args.only else None
    server_counts = [int(s) for s in args.servers.split(",")]
    configs: list[Config] = []
    for servers, keys in ((1, ONE_SERVER), (2, TWO_SERVERS)):
        if servers in server_counts:
            configs += [Config(ALL[k], servers) for k in keys if only is None or k in only]
    results: dict[str, list[dict[str, Any]]] = {c.key: [] for c in configs}
    redis = None
    started = time.monotonic()
    try:
        if any(c.servers == 2 for c in configs):
            sys.path.insert(0, str(ROOT))
            from tests.support.servers import RedisServer

            redis = await asyncio.to_thread(RedisServer().start)
        for run in range(args.runs):
            for config in configs:
                t0 = time.monotonic()
                outcome = await run_config(config, sizes, redis.url if redis else None)
                outcome["seconds"] = round(time.monotonic() - t0, 1)
                results[config.key].append(outcome)
                print(f"run {run + 1}/{args.runs} {_summary_line(config, outcome)}"
                      f"  [{outcome['seconds']}s]", flush=True)  # fmt: skip
        profile = None
        streampod = next((c for c in configs if c.key == "streampod@1"), None)
        if args.profile != "off" and streampod is not None:
            from .profile import Profiler

            missed = report_missed(rows_for(configs), results, "streampod")
            if Profiler.available() and (args.profile == "on" or missed):
                print("profiling one more Streampod run with py-spy", flush=True)
                profiler = Profiler()
                profiled = await run_config(streampod, sizes, None, profiler=profiler)
                profile = profiler.summary(profiled)
    finally:
        if redis is not None:
            await asyncio.to_thread(redis.stop)
            shutil.rmtree(redis.dir, ignore_errors=True)
    meta = machine(args, sizes, time.monotonic() - started)
    meta["profile"] = profile
    return results, meta


def rows_for(configs: list[Config]) -> list[report.Row]:
    return [report.Row(c.key, c.label, c.contender.role, c.servers) for c in configs]


def report_missed(
    rows: list[report.Row], results: dict[str, list[dict[str, Any]]], contender: str
) -> bool:
    return any("MISSED" in line for line in report.targets(rows, results, contender))


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "absent"


def machine(args: argparse.Namespace, sizes: Sizes, seconds: float) -> dict[str, Any]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    packages = ["django", "channels", "channels-redis", "daphne", "twisted", "uvicorn",
                "python-socketio", "python-engineio", "websockets", "redis", "pydantic",
                "uvloop"]  # fmt: skip
    return {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in ["python", "-m", "bench.run", *sys.argv[1:]]),
        "cores": os.cpu_count(),
        "cpu": cpu,
        "loadavg_at_end": os.getloadavg(),
        "python": platform.python_version(),
        "packages": {p: _version(p) for p in packages},
        "client_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
        "runs": args.runs,
        "size": args.size,
        "sizes": sizes.__dict__,
        "total_seconds": round(seconds, 1),
        "fd_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=["full", "tiny"], default="full")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--only", default="", help="comma-separated contender keys")
    parser.add_argument("--servers", default="1,2", help="1, 2 or 1,2")
    parser.add_argument("--profile", choices=["auto", "on", "off"], default="auto")
    args = parser.parse_args(argv)
    raise_fd_limit()
    try:
        import uvloop
    except ImportError:
        results, meta = asyncio.run(bench(args))
    else:
        results, meta = uvloop.run(bench(args))
    args.out.mkdir(parents=True, exist_ok=True)
    from .markdown import write

    paths = write(args.out, results, meta, rows_for_keys(results))
    for path in paths:
        print(f"wrote {path}")
    return 0


def rows_for_keys(results: dict[str, Any]) -> list[report.Row]:
    rows = []
    for key in results:
        name, _, servers = key.partition("@")
        c = ALL[name]
        rows.append(report.Row(key, c.label, c.role, int(servers)))
    return rows


if __name__ == "__main__":
    sys.exit(main())
