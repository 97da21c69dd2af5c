"""``python -m bench.metrics_cost``: what Streampod's metrics cost the relay, on uvicorn.

    python -m bench.metrics_cost                  # 15 rounds, 40,000 messages a relay
    python -m bench.metrics_cost --size tiny --rounds 1   # what the tests run

Each round runs the bench's relay workload (bench/workloads.py: 200 sockets, 20 senders,
each sending ``--messages`` messages, 10 in flight) twice, each time on a fresh uvicorn
server (one process, the bench's settings): once with ``STREAMING["METRICS"]`` on and
once off (``BENCH_METRICS=0``), in alternating order, so that the background load of a
shared machine falls on both. Prints each round, then the medians of the delivered
messages per second and of the server's CPU time per delivered message (from
``/proc``, less sensitive to other processes than the rate), with the ratio on/off;
``--json`` writes them to a file too. Then it times the recording calls themselves in
this process (metrics on): the calls a relayed message makes, in nanoseconds.

"Off" still calls the recording functions, which then add to a count nobody reads:
the end-to-end figure is the cost of counting and of tracking sockets, not of the calls.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import statistics
import sys
import timeit
from pathlib import Path
from typing import Any

from . import workloads
from .run import raise_fd_limit
from .servers import STREAMPOD_UVICORN, ServerProcess
from .workloads import FULL, TINY, Target

MODES = {"on": "1", "off": "0"}


async def one_relay(mode: str, sizes: workloads.Sizes) -> dict[str, Any]:
    proc = ServerProcess(STREAMPOD_UVICORN, {"BENCH_METRICS": MODES[mode]})
    await asyncio.to_thread(proc.start)
    try:
        target = Target(
            dialect=STREAMPOD_UVICORN.dialect(),
            bases=[proc.base],
            rss_kb=proc.rss_kb,
            cpu_s=proc.cpu_s,
        )
        await workloads.warm_up(target)
        await workloads.quiesce(target)
        return await workloads.relay(target, sizes)
    finally:
        await asyncio.to_thread(proc.stop)


async def measure(rounds: int, sizes: workloads.Sizes) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    for index in range(rounds):
        order = ["on", "off"] if index % 2 == 0 else ["off", "on"]
        for mode in order:
            outcome = await one_relay(mode, sizes)
            runs[mode].append(outcome)
            print(
                f"round {index + 1}/{rounds} metrics {mode:3}: "
                f"{outcome['msgs_per_s']} msg/s, {outcome['server_cpu_us_per_msg']} us CPU/msg, "
                f"lost {outcome['lost']}, errors {outcome['errors']}",
                flush=True,
            )
    summary: dict[str, Any] = {"rounds": rounds, "runs": runs}
    for figure in ("msgs_per_s", "server_cpu_us_per_msg"):
        medians = {
            mode: statistics.median(r[figure] for r in runs[mode] if r[figure] is not None)
            for mode in MODES
        }
        ratio = round(medians["on"] / medians["off"], 4) if medians["off"] else None
        # The same round's two runs saw about the same background load: their ratio too.
        paired = [
            on[figure] / off[figure]
            for on, off in zip(runs["on"], runs["off"], strict=True)
            if on[figure] and off[figure]
        ]
        summary[figure] = {
            **medians,
            "on_over_off": ratio,
            "median_of_round_ratios": round(statistics.median(paired), 4) if paired else None,
        }
    return summary


def recording_ns() -> float:
    """Nanoseconds of the recording calls one relayed message makes (on the server that
    holds sender and recipient): a frame received, a post, a delivery, a frame sent."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
    os.environ.setdefault("DJANGO_SECRET_KEY", "streampod-bench-" + "k" * 50)
    import django

    django.setup()
    from streaming import metrics

    assert metrics.enabled()

    def relayed() -> None:
        metrics.frame_received("relay")
        metrics.bus_post()
        metrics.bus_delivered(1)
        metrics.frame_sent("relay")

    number = 200_000
    best = min(timeit.repeat(relayed, number=number, repeat=5))
    return round(best / number * 1e9, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.metrics_cost", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--size", choices=["full", "tiny"], default="full")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--messages", type=int, default=2000, help="per sender, per relay")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    raise_fd_limit()
    sizes = (
        TINY
        if args.size == "tiny"
        else dataclasses.replace(FULL, relay_seconds=120.0, relay_messages=args.messages)
    )
    try:
        import uvloop
    except ImportError:
        summary = asyncio.run(measure(args.rounds, sizes))
    else:
        summary = uvloop.run(measure(args.rounds, sizes))
    for figure in ("msgs_per_s", "server_cpu_us_per_msg"):
        row = summary[figure]
        print(
            f"median {figure}: on {row['on']}, off {row['off']}, on/off {row['on_over_off']} "
            f"(median of the rounds' on/off: {row['median_of_round_ratios']})"
        )
    summary["recording_ns_per_relayed_message"] = recording_ns()
    print(f"recording calls per relayed message: {summary['recording_ns_per_relayed_message']} ns")
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=2))
    lost = sum(r["lost"] + r["errors"] for runs in summary["runs"].values() for r in runs)
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
