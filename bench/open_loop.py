"""``python -m bench.open_loop`` (part of ``make bench-scale``): relay latency at a steady
offered rate, at 25/50/75/90% of each contender's saturation, on one server.

For each contender, on a fresh server: ``--clients`` load-client processes
(:mod:`bench.swarm`) hold 200 relay clients between them, 20 senders each. The
contender's closed-loop relay (:func:`bench.workloads.relay`, ``make bench``'s, from one
more load-client process) gives a first rate. Saturation is then measured two ways on
this setup (servers and load clients share the 2 cores: a contender whose frames cost
the clients more saturates lower):

* *overload*: the swarms offer twice the closed-loop rate for ``--saturation-seconds``;
  the rate at which the messages come in, until the last one. Under overload servers and
  clients read and write in larger batches, so this can be more than the server keeps
  up with at a steady rate;
* *knee*: the highest offered rate the contender *sustains reliably*, found by a step
  search. First a *reference*: two levels of ``--search-seconds`` at
  ``--reference-percent`` (20%) of the overload figure; the lower of their two p99s
  (the messages scheduled after the first quarter) is the contender's unloaded p99, and
  the latency *bound* is ``max(--bound-factor (10) x that p99, --bound-floor-ms (10))``.
  A level of ``--search-seconds`` (3) at a rate passes when

  - every message was delivered (none lost),
  - delivered/s, counted to the last delivery, is at least 99% of the offered rate (so
    the last message came in at most 1% of the level's length after the last send), and
  - the p99 latency of the messages scheduled in the *last quarter* of the level is at
    most the bound: the first three quarters (and the start-up spike in them) are not
    judged on latency, but a backlog built in them is still queued in the last quarter.

  A rate is *sustained* when 2 of its tries pass (2 of 2, or 2 of 3 when the first two
  disagree), and not sustained when 2 fail; a try that delivers under 90% of the offered
  rate decides "not sustained" at once (plainly overloaded). The search starts at 70% of
  the overload figure, goes up by 1.4x while sustained, down by 2x while not, then
  bisects geometrically between the highest sustained rate and the lowest not until
  they are within 10%; at most ``--search-steps`` (12) tries. The knee is the highest
  sustained rate, or none when none was found (the levels are then fractions of the
  overload figure).

Then the clients send at each fraction of the knee (``--basis knee``, the default; or of
the overload figure) for ``--seconds``, plus one level at 75% of the other figure, all
of them ``--repeats`` times, interleaved (the tables give the medians): open
loop, every message stamped with its *scheduled* send time, so a message that waited
(for the client's loop or a socket's push-back) counts its wait. Figures per level: the
offered and delivered rates, p50/p99/p99.9 latency, losses, server CPU per message and
the load clients' CPU per message (one frame sent, one received), and whether the
level passed the knee's test (one try, the same bound).

``--same-load`` (on; ``--no-same-load``): then each contender again, on a fresh server,
at every contender's 75%-of-knee rate (the same offered load for all, where the levels
above give each its own), ``--repeats`` times interleaved; a rate above a contender's own
knee is not run. ``--same-load-rates R1,R2``: at these rates instead, for everyone.

``--pin``: each server runs on all CPUs but the last, this process and the load clients
on the last (``sched_setaffinity``; Redis and other jobs are not pinned), so the clients'
work does not compete with the server's; results go to ``<date>-open-loop-pinned.*``.

``--compare-clients R1,R2``: instead, the load client's own cost: each contender at
these offered rates with the ``websockets`` library's client and with
:mod:`bench.rawws` (``BENCH_CLIENT``), the swarms' CPU per message side by side
(``<date>-open-loop-clients.*``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator
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
#: ``--pin``: the CPUs of the server and of everything else this run starts.
PINNED: dict[str, set[int]] = {}
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
    ``drain_timeout``): the level's figures. Delivered/s runs to the last delivery. Not
    judged here: :func:`judge` adds ``sustained`` once the contender's bound is known."""
    seconds = seconds or args.seconds
    senders = getattr(args, "senders", SENDERS_PER_SWARM)  # per load-client process
    uids = [RELAY_UID + i for i in range(len(swarms) * CLIENTS_PER_SWARM)]
    await asyncio.gather(*(s.request(cmd="track", mode="relay") for s in swarms))
    cpu0 = target.cpu_s()
    start = clock() + 0.1
    sends = await asyncio.gather(
        *(
            s.request(
                cmd="send",
                senders=senders,
                src0=i * senders,
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
    scheduled: list[float] = []
    dups = errors = closed = 0
    client_cpu = client_sys = 0.0
    last = start
    for swarm in swarms:
        stats = await swarm.request(cmd="stats")
        last = max(last, stats["last"] or start)
        latencies += [x / 1000 for x in stats["latencies_ms"]]
        scheduled += stats.get("scheduled", [])
        dups += stats["duplicates"]
        errors += stats["errors"]
        closed += stats["closed"]
        client_cpu += stats["cpu_s"]
        client_sys += stats["sys_s"]
    first = window(scheduled, latencies, start, start + seconds / 4)
    steady = window(scheduled, latencies, start + seconds / 4, start + seconds)
    final = window(scheduled, latencies, start + seconds * 3 / 4, start + seconds)
    delivered_per_s = round(len(latencies) / max(last - start, seconds))
    lost = sent - len(latencies)
    return {
        "offered_per_s": round(rate),
        "sent": sent,
        "delivered": len(latencies),
        "lost": lost,
        "duplicates": dups,
        "errors": errors,  # error frames the senders got back
        "closed": closed,  # sockets closed by the server so far
        "delivered_per_s": delivered_per_s,
        "p50_ms": percentile_ms(latencies, 0.50),
        "p99_ms": percentile_ms(latencies, 0.99),
        "p999_ms": percentile_ms(latencies, 0.999),
        "max_ms": round(max(latencies) * 1000, 1) if latencies else None,
        "send_late_max_ms": max(r["late_max_ms"] for r in sends),
        "server_cpu_us_per_msg": round(cpu * 1e6 / len(latencies), 1) if latencies else None,
        "client_cpu_us_per_msg": round(client_cpu * 1e6 / len(latencies), 1) if latencies else None,
        # of which in the kernel (the sockets' system calls)
        "client_sys_us_per_msg": round(client_sys * 1e6 / len(latencies), 1) if latencies else None,
        "p50_first_quarter_ms": percentile_ms(first, 0.5),  # the start-up spike, unjudged
        "p99_steady_ms": percentile_ms(steady, 0.99),  # after the first quarter
        "p50_last_quarter_ms": percentile_ms(final, 0.5),
        "p99_last_quarter_ms": percentile_ms(final, 0.99),
        "drain_ms": round((last - start - seconds) * 1000, 1),
        "loadavg": loadavg(),
    }


def window(scheduled: list[float], latencies: list[float], t0: float, t1: float) -> list[float]:
    """The latencies of the messages scheduled in ``[t0, t1)`` (the last window: to ``t1``
    inclusive)."""
    return [lat for t, lat in zip(scheduled, latencies, strict=True) if t0 <= t <= t1]


def passes(entry: dict[str, Any], bound_ms: float) -> bool:
    """The knee's test of one level (see the module docstring): nothing lost, delivered/s
    (to the last delivery) at least 99% of offered, and the last quarter's p99 within
    ``bound_ms``."""
    p99 = entry["p99_last_quarter_ms"]
    return bool(
        entry["lost"] == 0
        and entry["delivered_per_s"] >= 0.99 * entry["offered_per_s"]
        and p99 is not None
        and p99 <= bound_ms
    )


def judge(entry: dict[str, Any], bound_ms: float | None) -> dict[str, Any]:
    """``entry`` with ``bound_ms`` and ``sustained`` (:func:`passes`; None without a bound)."""
    entry["bound_ms"] = bound_ms
    entry["sustained"] = passes(entry, bound_ms) if bound_ms is not None else None
    return entry


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


async def reference(
    target: Target, swarms: list[SwarmProcess], overload: float, args: argparse.Namespace
) -> tuple[float, list[dict[str, Any]]]:
    """The contender's latency bound for the knee's test: two levels of
    ``--search-seconds`` at ``--reference-percent`` of the overload figure; the lower of
    their p99s after the first quarter (one burst of other work spoils one level, not the
    reference), times ``--bound-factor``, at least ``--bound-floor-ms``."""
    tries = []
    for attempt in (1, 2):
        await quiesce(target, timeout=5)
        rate = overload * args.reference_percent / 100
        entry = await level(target, swarms, rate, args, args.search_seconds, 30.0)
        entry["attempt"] = attempt
        tries.append(entry)
    p99s = [e["p99_steady_ms"] for e in tries if e["p99_steady_ms"] is not None]
    bound = max(args.bound_factor * min(p99s), args.bound_floor_ms) if p99s else None
    bound = round(bound, 2) if bound is not None else args.bound_floor_ms
    for entry in tries:
        judge(entry, bound)
    print(
        f"    reference {tries[0]['offered_per_s']}/s: p99 "
        f"{' and '.join(str(e['p99_steady_ms']) for e in tries)} ms; bound {bound} ms",
        flush=True,
    )
    return bound, tries


async def knee_search(
    target: Target,
    swarms: list[SwarmProcess],
    overload: float,
    bound_ms: float,
    args: argparse.Namespace,
) -> tuple[float | None, list[dict[str, Any]]]:
    """The highest offered rate found sustained (the module docstring's test, 2 of at
    most 3 tries passing; a try under 90% of the offered rate fails the rate at once),
    starting at 70% of ``overload``: up by 1.4x while sustained, down by 2x while not,
    then geometric bisection between the highest sustained and the lowest not until they
    are within 10%. At most ``--search-steps`` tries; a rate left undecided by the limit
    counts as not sustained. Returns the rate (None when none was sustained) and every
    try's figures (``attempt``; ``verdict`` on the try that decided its rate)."""
    lo, hi = 0.0, 0.0
    rate = 0.7 * overload
    steps: list[dict[str, Any]] = []
    while len(steps) < args.search_steps:
        results: list[bool] = []
        verdict = False
        while len(steps) < args.search_steps:
            await quiesce(target, timeout=5)
            entry = judge(await level(target, swarms, rate, args, args.search_seconds, 30.0),
                          bound_ms)  # fmt: skip
            entry["attempt"] = len(results) + 1
            steps.append(entry)
            results.append(entry["sustained"])
            plain = entry["delivered_per_s"] < 0.9 * entry["offered_per_s"]
            print(
                f"    knee search {entry['offered_per_s']}/s (try {entry['attempt']}): "
                f"delivered {entry['delivered_per_s']}/s, drain {entry['drain_ms']} ms, "
                f"last quarter p99 {entry['p99_last_quarter_ms']} ms (bound {bound_ms}), "
                f"{'pass' if entry['sustained'] else 'fail'} (load {entry['loadavg'][0]})",
                flush=True,
            )
            if results.count(True) >= 2 or results.count(False) >= 2 or plain:
                verdict = results.count(True) >= 2
                entry["verdict"] = verdict
                break
        if "verdict" not in steps[-1]:
            break  # out of tries with this rate undecided: not counted as sustained
        if verdict:
            lo = max(lo, rate)
        else:
            hi = min(hi, rate) if hi else rate
        if hi and lo and hi / lo <= 1.10:
            break
        rate = rate * 1.4 if not hi else rate / 2 if not lo else (lo * hi) ** 0.5
    return (round(lo) if lo else None), steps


async def start_relay_swarms(
    target: Target, dialect: str, base: str, args: argparse.Namespace, client: str | None = None
) -> list[SwarmProcess]:
    """``--clients`` load-client processes with their relay clients open."""
    swarms = list(
        await asyncio.gather(*(SwarmProcess().start(client) for _ in range(args.clients)))
    )
    try:
        await open_relay_clients(swarms, dialect, base)
    except BaseException:
        await asyncio.gather(*(s.stop() for s in swarms), return_exceptions=True)
        raise
    await quiesce(target, timeout=5)
    return swarms


def report(label: str, name: str, entry: dict[str, Any]) -> None:
    print(
        f"{label:<28} {name} ({entry['offered_per_s']}/s): delivered "
        f"{entry['delivered_per_s']}/s, p50 {entry['p50_ms']} p99 {entry['p99_ms']} "
        f"p99.9 {entry['p999_ms']} ms, lost {entry['lost']}, client CPU "
        f"{entry['client_cpu_us_per_msg']} µs/msg (load {entry['loadavg'][0]})",
        flush=True,
    )


@contextlib.asynccontextmanager
async def served(key: str, out: dict[str, Any]) -> AsyncIterator[tuple[Any, Any, Target, list]]:
    """A fresh, warmed-up server of contender ``key``: ``(contender, process, target,
    swarms)``. Swarms the caller puts in ``swarms`` are stopped with the server; an
    exception ends the contender's measurement as a result (``out["error"]``)."""
    contender = ALL[key]
    proc = ServerProcess(contender, {})
    swarms: list[SwarmProcess] = []
    try:
        await asyncio.to_thread(proc.start)
        if PINNED:
            proc.pin(PINNED["server"])
        target = Target(contender.dialect(), [proc.base], proc.rss_kb, proc.cpu_s)
        await warm_up(target)
        yield contender, proc, target, swarms
    except Exception as exc:  # a contender that fails is a result
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        await stop_all(out, [proc], swarms)


async def measure(key: str, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"levels": []}
    async with served(key, out) as (contender, proc, target, swarms):
        from dataclasses import replace

        closed = await relay(target, replace(FULL, relay_seconds=args.saturation_seconds))
        out["saturation"] = closed
        swarms += await start_relay_swarms(target, contender.dialect_name, proc.base, args)
        probe = await level(
            target, swarms, 2 * closed["msgs_per_s"], args, args.saturation_seconds, 60.0
        )
        out["overload"] = probe
        overload = probe["delivered_per_s"]
        print(
            f"{contender.label:<28} closed-loop relay {closed['msgs_per_s']} msgs/s; offered "
            f"{probe['offered_per_s']}/s: overload saturation {overload} msgs/s",
            flush=True,
        )
        bound, out["reference"] = await reference(target, swarms, overload, args)
        out["bound_ms"] = bound
        knee, steps = await knee_search(target, swarms, overload, bound, args)
        out["knee"] = knee
        out["knee_steps"] = steps
        print(f"{contender.label:<28} knee {knee} msgs/s (bound {bound} ms)", flush=True)
        bases = {"overload": overload, "knee": knee}
        basis = args.basis if knee else "overload"  # no sustained rate found: the other
        other = "overload" if basis == "knee" else "knee"
        plan = [(pct, basis) for pct in args.levels] + ([(75, other)] if knee else [])
        for repeat in range(args.repeats):  # interleaved: a burst of other work hits one
            for pct, basis in plan:
                await quiesce(target, timeout=5)
                entry = await level(target, swarms, bases[basis] * pct / 100, args)
                judge(entry, bound)
                entry.update(percent=pct, basis=basis, repeat=repeat + 1)
                out["levels"].append(entry)
                report(contender.label, f"{pct}% of {basis}, run {repeat + 1}", entry)
    return out


async def measure_clients(key: str, args: argparse.Namespace) -> dict[str, Any]:
    """``--compare-clients``: the same offered rates from swarms on each WebSocket client."""
    out: dict[str, Any] = {"levels": []}
    async with served(key, out) as (contender, proc, target, swarms):
        for _ in range(args.runs):  # interleaved: background load spreads over both
            for client in ("websockets", "raw"):
                swarms += await start_relay_swarms(
                    target, contender.dialect_name, proc.base, args, client
                )
                for rate in args.compare_clients:
                    await quiesce(target, timeout=5)
                    entry = await level(target, swarms, rate, args)
                    entry["client"] = client
                    out["levels"].append(entry)
                    report(contender.label, f"{client} client", entry)
                await asyncio.gather(*(s.stop() for s in swarms))
                swarms.clear()
    return out


def same_load_rates(results: dict[str, Any], fixed: list[float]) -> dict[str, float]:
    """``--same-load``'s offered rates by name: 75% of each contender's knee (named by the
    contender's key), or ``--same-load-rates`` (named ``fixed:<rate>``) when given."""
    if fixed:
        return {f"fixed:{rate:g}": rate for rate in fixed}
    return {key: 0.75 * e["knee"] for key, e in results.items() if e.get("knee")}


def rate_label(name: str) -> str:
    """A :func:`same_load_rates` name as the tables print it."""
    return f"75% of {ALL[name].label}'s knee" if name in ALL else "fixed"


async def measure_same_load(
    key: str, rates: dict[str, float], knee: float | None, args: argparse.Namespace
) -> dict[str, Any]:
    """``--same-load``: contender ``key``, on a fresh server, at each of ``rates``
    (:func:`same_load_rates`), ``--repeats`` times interleaved, each level judged by the
    knee's test with the contender's own bound. A contender's-knee rate above this
    contender's own knee is not run (it would only measure a backlog): its entry says
    ``beyond_knee``; fixed rates always run. Returns ``levels`` (and ``server_errors``,
    ``error`` as :func:`measure` does)."""
    levels: list[dict[str, Any]] = []
    out: dict[str, Any] = {"levels": levels, "server_errors": 0}
    runnable = {
        name: rate
        for name, rate in rates.items()
        if name not in ALL or (knee and rate <= knee)
    }
    levels += [
        {"rate_of": name, "offered_per_s": round(rate), "beyond_knee": True}
        for name, rate in rates.items()
        if name not in runnable
    ]
    if not runnable:
        return out
    async with served(key, out) as (contender, proc, target, swarms):
        swarms += await start_relay_swarms(target, contender.dialect_name, proc.base, args)
        for repeat in range(args.repeats):
            for name, rate in sorted(runnable.items(), key=lambda kv: kv[1]):
                await quiesce(target, timeout=5)
                entry = judge(await level(target, swarms, rate, args), args.bounds.get(key))
                entry.update(rate_of=name, repeat=repeat + 1)
                levels.append(entry)
                report(contender.label, f"{rate_label(name)}, run {repeat + 1}", entry)
    return out


def same_load_table(data: dict[str, Any]) -> list[str]:
    """``--same-load``: median p99 (and p50, ms) of every contender at each same-load
    rate; then Streampod's p99 over each peer's at that peer's own 75%-of-knee rate."""
    results = data["results"]
    rates: dict[str, float] = data["meta"].get("same_load_rates") or {}
    if not rates:
        return []
    order = sorted(rates, key=rates.__getitem__)
    runs = max(
        (sum(1 for e in r.get("same_load", {}).get("levels", [])
             if e.get("rate_of") == name and "repeat" in e)
         for r in results.values() for name in order),
        default=0,
    )  # fmt: skip

    def cell(entries: list[dict[str, Any]], name: str) -> tuple[str, float | None]:
        mine = [e for e in entries if e.get("rate_of") == name]
        if not mine:
            return "-", None
        if mine[0].get("beyond_knee"):
            return "beyond its knee", None
        p99s = [e["p99_ms"] for e in mine if e.get("p99_ms") is not None]
        p50s = [e["p50_ms"] for e in mine if e.get("p50_ms") is not None]
        if not p99s:
            return "no deliveries", None
        failed = sum(1 for e in mine if e.get("sustained") is False)
        note = f"; {len(mine) - failed} of {len(mine)} sustained" if failed else ""
        p99 = statistics.median(p99s)
        return f"{p99:.1f} (p50 {statistics.median(p50s):.1f}{note})", p99

    lines = [
        "\nThe same offered rate for every contender (`--same-load`, fresh servers, "
        f"{runs} interleaved runs, medians): p99 ms (p50 ms); a contender's 75%-of-knee rate "
        "above another's own knee is not run for it:\n",
        "| contender | "
        + " | ".join(f"{rate_label(name)}: {round(rates[name]):,}/s" for name in order)
        + " |",
        "|---|" + "---|" * len(order),
    ]
    p99_at: dict[tuple[str, str], float] = {}
    for key, entry in results.items():
        same = entry.get("same_load", {})
        cells = []
        for name in order:
            text, p99 = cell(same.get("levels", []), name)
            if p99:
                p99_at[(key, name)] = p99
            cells.append(text)
        if "error" in same:
            cells[-1] += f" (failed: {same['error'][:120]})"
        lines.append(f"| {ALL[key].label} | " + " | ".join(cells) + " |")
    mine = "streampod_uvicorn"
    ratios = [
        f"at {ALL[name].label}'s ({round(rates[name]):,}/s): "
        f"{p99_at[(mine, name)] / p99_at[(name, name)]:.2f}x"
        for name in order
        if name != mine and (mine, name) in p99_at and (name, name) in p99_at
    ]
    if ratios:
        lines.append("\n*Streampod (uvicorn) ÷ the peer, median p99 at the peer's own "
                     "75%-of-knee rate*: " + ", ".join(ratios))  # fmt: skip
    return lines


def medians(levels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (percent, basis): the median of its repeats' figures, losses summed,
    how many repeats were sustained."""
    rows = []
    for key in dict.fromkeys((e["percent"], e.get("basis")) for e in levels):
        mine = [e for e in levels if (e["percent"], e.get("basis")) == key]
        row: dict[str, Any] = {"percent": key[0], "basis": key[1], "runs": len(mine)}
        for field in ("offered_per_s", "delivered_per_s", "p50_ms", "p99_ms", "p999_ms",
                      "server_cpu_us_per_msg", "client_cpu_us_per_msg"):  # fmt: skip
            values = [e[field] for e in mine if isinstance(e.get(field), int | float)]
            row[field] = round(statistics.median(values), 2) if values else None
        row["lost"] = sum(e["lost"] for e in mine)
        row["sustained"] = sum(1 for e in mine if e.get("sustained"))
        row["load_max"] = max(e["loadavg"][0] for e in mine)
        rows.append(row)
    return rows


def table(data: dict[str, Any]) -> list[str]:
    if data["meta"].get("compare_clients"):
        return clients_table(data)
    results = data["results"]
    lines = [
        "Medians of each level's runs (interleaved; every run in the next table):\n",
        "| contender | overload sat. msgs/s | knee msgs/s | level | runs | offered/s "
        "| delivered/s | p50 ms | p99 ms | p99.9 ms | lost | runs sustained "
        "| srv CPU µs/msg | client CPU µs/msg | load avg max |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, entry in results.items():
        sat = (entry.get("overload") or {}).get("delivered_per_s")
        for m in medians(entry["levels"]):
            lines.append(
                f"| {ALL[key].label} | {_n(sat)} | {_n(entry.get('knee'))} "
                f"| {m['percent']}% of {m['basis']} | {m['runs']} | {_n(m['offered_per_s'])} "
                f"| {_n(m['delivered_per_s'])} | {m['p50_ms']} | {m['p99_ms']} | {m['p999_ms']} "
                f"| {m['lost']} | {m['sustained']} of {m['runs']} | {m['server_cpu_us_per_msg']} "
                f"| {m['client_cpu_us_per_msg']} | {m['load_max']} |"
            )
    mine = results.get("streampod_uvicorn")
    if mine:
        at = {(m["percent"], m["basis"]): m for m in medians(mine["levels"])}
        for key, entry in results.items():
            if key == "streampod_uvicorn":
                continue
            cells = [
                f"{m['percent']}% of {m['basis']}: "
                f"{at[(m['percent'], m['basis'])]['p99_ms'] / m['p99_ms']:.2f}x"
                for m in medians(entry["levels"])
                if (m["percent"], m["basis"]) in at
                and m["p99_ms"]
                and at[(m["percent"], m["basis"])]["p99_ms"]
            ]
            lines.append(
                f"\n*Streampod (uvicorn) ÷ {ALL[key].label}, median p99*: " + ", ".join(cells)
            )
    lines += same_load_table(data)
    lines += [
        "\nEvery run:\n",
        "| contender | overload sat. msgs/s | knee msgs/s | level | offered/s | delivered/s "
        "| p50 ms | p99 ms | p99.9 ms | lost | refused / closed | srv CPU µs/msg "
        "| client CPU µs/msg | send late max ms | load avg |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, entry in results.items():
        label = ALL[key].label
        sat = (entry.get("overload") or {}).get("delivered_per_s")
        knee = entry.get("knee")
        for e in entry["levels"]:
            lines.append(
                f"| {label} | {_n(sat)} | {_n(knee)} "
                f"| {e['percent']}% of {e.get('basis')}, run {e.get('repeat', 1)} "
                f"| {e['offered_per_s']:,} | {e['delivered_per_s']:,} | {e['p50_ms']} "
                f"| {e['p99_ms']} | {e['p999_ms']} | {e['lost']} "
                f"| {e.get('errors', 0)} / {e.get('closed', 0)} | {e['server_cpu_us_per_msg']} "
                f"| {e.get('client_cpu_us_per_msg')} | {e['send_late_max_ms']} "
                f"| {e['loadavg'][0]} |"
            )
        if "error" in entry:
            lines.append(f"| {label} | failed: {entry['error'][:200]} |" + " |" * 13)
    lines += [
        "\nThe knee search, step by step (a try passes with every message delivered, "
        "delivered/s to the last delivery at least 99% of offered, and the last quarter's "
        "p99 within the contender's bound: the reference's p99 times the factor, at least "
        "the floor; a rate is sustained when 2 of its tries pass, not when 2 fail or one "
        "delivers under 90%; the reference rows set the bound):\n",
        "| contender | step | offered/s | delivered/s | drain ms | p50 first quarter ms "
        "| p99 after first quarter ms | p99 last quarter ms | bound ms | lost | try "
        "| rate sustained | load avg |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    for key, entry in results.items():
        rows = [("reference", e) for e in entry.get("reference", [])]
        rows += [("search", e) for e in entry.get("knee_steps", [])]
        for step, e in rows:
            verdict = {True: "**yes**", False: "**no**"}.get(e.get("verdict"), "")
            lines.append(
                f"| {ALL[key].label} | {step} | {e['offered_per_s']:,} "
                f"| {e['delivered_per_s']:,} | {e['drain_ms']} | {e['p50_first_quarter_ms']} "
                f"| {e['p99_steady_ms']} | {e['p99_last_quarter_ms']} | {e.get('bound_ms')} "
                f"| {e['lost']} | {e.get('attempt')}: {'pass' if e.get('sustained') else 'fail'} "
                f"| {verdict} | {e['loadavg'][0]} |"
            )
    lines.append("")
    return lines


def _n(value: float | None) -> str:
    return f"{value:,}" if isinstance(value, int | float) else "-"


def clients_table(data: dict[str, Any]) -> list[str]:
    """``--compare-clients``: each level, then the medians per client and rate."""
    lines = [
        "| contender | client | offered/s | delivered/s | client CPU µs/msg | of which kernel "
        "| srv CPU µs/msg | p50 ms | p99 ms | send late max ms | lost | load avg |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    summary = []
    for key, entry in data["results"].items():
        label = ALL[key].label
        levels = entry["levels"]
        for e in levels:
            lines.append(
                f"| {label} | {e['client']} | {e['offered_per_s']:,} | {e['delivered_per_s']:,} "
                f"| {e['client_cpu_us_per_msg']} | {e.get('client_sys_us_per_msg')} "
                f"| {e['server_cpu_us_per_msg']} | {e['p50_ms']} | {e['p99_ms']} "
                f"| {e['send_late_max_ms']} | {e['lost']} | {e['loadavg'][0]} |"
            )
        if "error" in entry:
            lines.append(f"| {label} | failed: {entry['error'][:200]} |" + " |" * 10)
        for rate in sorted({e["offered_per_s"] for e in levels}):
            cells = {}
            for client in ("websockets", "raw"):
                mine = [e for e in levels if e["client"] == client and e["offered_per_s"] == rate]
                if mine and all(e.get("client_sys_us_per_msg") is not None for e in mine):
                    total = statistics.median(e["client_cpu_us_per_msg"] for e in mine)
                    user = statistics.median(
                        e["client_cpu_us_per_msg"] - e["client_sys_us_per_msg"] for e in mine
                    )
                    cells[client] = (total, user)
            if len(cells) == 2:
                (wt, wu), (rt, ru) = cells["websockets"], cells["raw"]
                summary.append(
                    f"| {label} | {rate:,} | {wt:.1f} ({wu:.1f}) | {rt:.1f} ({ru:.1f}) "
                    f"| {rt / wt:.2f}x | {ru / wu:.2f}x |"
                )
    lines += [
        "\nMedians: the load clients' CPU per relayed message (one frame sent, one "
        "received, the JSON and bookkeeping included), all (in user space, outside the "
        "kernel's socket calls):\n",
        "| contender | offered/s | websockets client µs/msg | bench.rawws µs/msg "
        "| ratio, all | ratio, user space |",
        "|---|---:|---:|---:|---:|---:|",
        *summary,
        "",
    ]
    return lines


def plot(data: dict[str, Any], path: Path) -> bool:
    plt = pyplot()
    if plt is None or data["meta"].get("compare_clients"):
        return False
    basis = data["meta"].get("basis", "overload")
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    for ax, (metric, title) in zip(
        axes, [("p50_ms", "p50"), ("p99_ms", "p99"), ("p999_ms", "p99.9")], strict=True
    ):
        for key, entry in data["results"].items():
            mine = [m for m in medians(entry["levels"]) if m["basis"] == basis and m.get(metric)]
            if mine:
                ax.plot([e["percent"] for e in mine], [e[metric] for e in mine], "o-",
                        color=COLOURS.get(key, "black"), label=ALL[key].label)  # fmt: skip
        ax.set_yscale("log")
        ax.set_xlabel(f"offered rate, % of the contender's own saturation ({basis})")
        ax.set_title(f"relay latency {title}, ms, median of runs (open loop; lower is better)",
                     fontsize=10)  # fmt: skip
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    return scale.save(plt, fig, path)


def render(data: dict[str, Any], png: str | None) -> list[str]:
    meta = data["meta"]
    title = "The load client's CPU" if meta.get("compare_clients") else "Open-loop relay latency"
    return [
        f"# {title} {meta['date'][:10]}\n",
        f"Command: `{meta['command']}`, {meta['total_seconds']} s; {meta['clients']} "
        f"load-client processes, {meta['seconds']} s per level; knee search tries of "
        f"{meta.get('search_seconds')} s, bound {meta.get('bound_factor')} x the p99 at "
        f"{meta.get('reference_percent')}% of the overload figure, at least "
        f"{meta.get('bound_floor_ms')} ms; load average at the "
        f"start {meta.get('loadavg_at_start')}, at the end {meta['loadavg_at_end']}; "
        f"commit {meta.get('revision')}.\n",
        (__doc__ or "").split("\n", 2)[2].strip() + "\n",
        f"![open-loop latency]({png})\n" if png else "",
        *table(data),
    ]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    if args.pin:
        # This process and the load-client processes it starts (which inherit it) on
        # the last CPU, each server on the others: the clients' CPU no longer competes
        # with the server's, so a level's latency is the server's (other jobs of the
        # machine are not pinned).
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            raise SystemExit("--pin needs at least 2 CPUs")
        PINNED.update(server=set(cpus[:-1]), clients={cpus[-1]})
        os.sched_setaffinity(0, PINNED["clients"])
    rev0 = scale.revision()  # the code measured; another commit may land during the run
    at_start = loadavg()
    results = {}
    for key in args.only.split(","):
        if args.compare_clients:
            results[key] = await measure_clients(key, args)
        else:
            results[key] = await measure(key, args)
    rates: dict[str, float] = {}
    if args.same_load and not args.compare_clients:
        rates = same_load_rates(results, args.same_load_rates)
        args.bounds = {key: e.get("bound_ms") for key, e in results.items()}
        for key in results:
            results[key]["same_load"] = await measure_same_load(
                key, rates, results[key].get("knee"), args
            )
    return {
        "meta": {
            "date": dt.datetime.now().isoformat(timespec="seconds"),
            "command": "python -m bench.open_loop " + " ".join(sys.argv[1:]),
            "clients": args.clients,
            "seconds": args.seconds,
            "levels": args.levels,
            "basis": args.basis,
            "search_seconds": args.search_seconds,
            "reference_percent": args.reference_percent,
            "bound_factor": args.bound_factor,
            "bound_floor_ms": args.bound_floor_ms,
            "compare_clients": args.compare_clients,
            "pinned": {k: sorted(v) for k, v in PINNED.items()},
            "same_load_rates": rates,
            "loadavg_at_start": at_start,
            "loadavg_at_end": loadavg(),
            "revision": rev0 if scale.revision() == rev0 else f"{rev0} -> {scale.revision()}",
            "total_seconds": round(time.monotonic() - started, 1),
        },
        "results": results,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.open_loop", description=__doc__)
    parser.add_argument("--only", default=",".join(CONTENDERS))
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)))
    parser.add_argument("--basis", choices=("knee", "overload"), default="knee",
                        help="the saturation the levels are fractions of (knee)")  # fmt: skip
    parser.add_argument("--seconds", type=float, default=3.0, help="per level (3)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each level (3)")
    parser.add_argument("--saturation-seconds", type=float, default=3.0)
    parser.add_argument("--search-steps", type=int, default=12, help="knee search tries (12)")
    parser.add_argument("--search-seconds", type=float, default=3.0, help="per search try (3)")
    parser.add_argument("--reference-percent", type=float, default=20.0,
                        help="the reference rate, %% of the overload figure (20)")  # fmt: skip
    parser.add_argument("--bound-factor", type=float, default=10.0,
                        help="the knee's p99 bound: this x the reference's p99 (10)")  # fmt: skip
    parser.add_argument("--bound-floor-ms", type=float, default=10.0,
                        help="the knee's p99 bound, at least (10 ms)")  # fmt: skip
    parser.add_argument("--drain-timeout", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=2, help="load-client processes (2)")
    parser.add_argument(
        "--compare-clients", default="", metavar="RATES",
        help="offered rates (msgs/s, comma-separated): the load client's CPU per message "
        "with the websockets library's client against bench.rawws, nothing else",
    )  # fmt: skip
    parser.add_argument("--runs", type=int, default=3, help="--compare-clients runs (3)")
    parser.add_argument(
        "--same-load", action=argparse.BooleanOptionalAction, default=True,
        help="then every contender again at each contender's 75%%-of-knee rate (on)",
    )  # fmt: skip
    parser.add_argument(
        "--same-load-rates", default="", metavar="RATES",
        help="--same-load at these offered rates (msgs/s, comma-separated) instead",
    )  # fmt: skip
    parser.add_argument(
        "--pin", action="store_true",
        help="each server on its own CPU(s), this process and the load clients on the last",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.levels = [int(x) for x in args.levels.split(",")]
    args.compare_clients = [float(x) for x in args.compare_clients.split(",") if x]
    args.same_load_rates = [float(x) for x in args.same_load_rates.split(",") if x]
    name = "open-loop-clients" if args.compare_clients else "open-loop"
    name += "-pinned" if args.pin else ""
    return scale.execute(name, args, run, plot, render, table)


if __name__ == "__main__":
    sys.exit(main())
