"""Write a bench run: ``<date>.md`` (tables, targets, profile), ``<date>.json`` (every
run's raw figures) and ``<date>.png`` (the plot ``docs/performance.md`` shows)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import report
from .servers import ALL


def _profile_lines(profile: dict[str, Any] | None, server: str = "daphne") -> list[str]:
    if not profile:
        return []
    out = [
        "## Where Streampod's time goes (py-spy, one extra run, one server)\n",
        f"CPU samples of the Streampod {server} process during each workload (connects "
        "included; idle excluded): by stage of the event loop's work, by the layer of the "
        "function on top of the stack, then the top functions by self time and Streampod's "
        "by inclusive time. This run's figures are not in the tables above: sampling costs "
        "CPU on a 2-core machine. A garbage-collection pause shows up as self time of "
        "whatever function was running when it started (under daphne often "
        "`Server.application_checker`); the GC line of each workload says how long they "
        "were. docs/performance.md says what would close the gaps.\n",
    ]
    for name, data in profile.items():
        out.append(f"### {name} ({data['samples']:,} samples)\n")
        figures = data.get("figures")
        if figures:
            out.append(
                "This run, sampled: " + ", ".join(f"{k} {v}" for k, v in figures.items()) + ".\n"
            )
        gc = data.get("gc")
        if gc:
            out.append(
                f"Garbage collection in the server during this workload ({gc['seconds']} s, "
                f"bench/gcprobe): {gc['collections_over_1ms']} collections of 1 ms or more, "
                f"{gc['gen2_collections']} of them full (generation 2), the longest "
                f"{gc.get('max_ms', gc['gen2_max_ms']):.0f} ms; {gc['total_ms']:.0f} ms paused "
                "in all.\n"
            )
        out.append("| stage | % |")
        out.append("|---|---|")
        out += [f"| {stage} | {pct} |" for stage, pct in data["stages_pct"].items()]
        out.append("")
        out.append("| layer | self % |")
        out.append("|---|---|")
        out += [f"| {layer} | {pct} |" for layer, pct in data["layers_self_pct"].items()]
        out.append("")
        out.append("| function (self time) | % |")
        out.append("|---|---|")
        out += [f"| `{frame}` | {pct} |" for frame, pct in data["self_pct"]]
        out.append("")
        out.append("| Streampod function (inclusive time) | % |")
        out.append("|---|---|")
        out += [f"| `{frame}` | {pct} |" for frame, pct in data["inclusive_pct"]]
        out.append("")
    return out


def _runs_lines(rows: list[report.Row], results: dict[str, list[dict[str, Any]]]) -> list[str]:
    out = [
        "## Every run\n",
        "| contender | servers | run | relay msgs/s | relay lost | fan-out deliv/s | fan-out lost "
        "| echo msgs/s | KB/conn | storm s | storm errors | server warnings/errors | s |",
        "|---" * 13 + "|",
    ]
    for row in rows:
        for i, run in enumerate(results.get(row.key, []), 1):

            def get(workload: str, metric: str, run: dict[str, Any] = run) -> str:
                entry = run.get(workload)
                if not isinstance(entry, dict):
                    return "-"
                if "error" in entry:
                    return "failed"
                return report._fmt(entry.get(metric))

            out.append(
                f"| {row.label} | {row.servers} | {i} | {get('relay', 'msgs_per_s')} | "
                f"{get('relay', 'lost')} | {get('fanout', 'deliveries_per_s')} | "
                f"{get('fanout', 'lost')} | {get('echo', 'msgs_per_s')} | "
                f"{get('storm', 'idle_kb_per_conn')} | {get('storm', 'storm_all_connected_s')} | "
                f"{get('storm', 'storm_errors')} | {run.get('server_warnings', 0)}/"
                f"{run.get('server_errors', 0)} | {run.get('seconds', '-')} |"
            )
    failures = [
        f"- {row.label} ({row.servers} server(s)), run {i}, {workload}: {entry['error']}"
        for row in rows
        for i, run in enumerate(results.get(row.key, []), 1)
        for workload, entry in run.items()
        if isinstance(entry, dict) and "error" in entry
    ]
    if failures:
        out += ["", "Failures:", "", *failures]
    out.append("")
    return out


def method_lines(meta: dict[str, Any]) -> list[str]:
    sizes = meta["sizes"]
    return [
        "## Method\n",
        f"- Machine: {meta['cores']} cores ({meta['cpu']}), shared by the load client, the "
        "servers and Redis (and, on this workplace, other engineers' jobs: load average at "
        f"the end {', '.join(f'{x:.1f}' for x in meta['loadavg_at_end'])}). Python "
        f"{meta['python']}; load client on {meta['client_loop']}.",
        "- Packages: " + ", ".join(f"{k} {v}" for k, v in meta["packages"].items()) + ".",
        f"- {meta['runs']} run(s) per contender, interleaved, each on freshly started servers; "
        "tables show medians (losses, sent counts and storm errors: sums over the runs).",
        f"- relay: {sizes['relay_clients']} clients, {sizes['relay_senders']} senders to random "
        f"other users, at most {sizes['relay_window']} undelivered per sender, "
        f"{sizes['relay_seconds']} s of sending (shrunk to fit 5 minutes), then up to "
        f"{sizes['drain_timeout']} s for stragglers; on two servers every message crosses "
        "servers (recipients on the other one).",
        f"- fan-out: {sizes['fanout_listeners']} listeners on one channel (split over the "
        f"servers), up to {sizes['fanout_broadcasts']} broadcasts one at a time, each awaited "
        f"by every listener; no new broadcast after {sizes['fanout_seconds']} s (the slow "
        "contenders do fewer than 50, shrunk to fit 5 minutes: the `broadcasts` column).",
        f"- echo: {sizes['echo_clients']} clients, closed loop, {sizes['echo_seconds']} s; "
        "one server only (echo crosses no server boundary).",
        f"- connect storm and idle share one phase: {sizes['storm']:,} connects at once (each "
        "counted as connected when the server says it listens on its channel), then held "
        f"idle {sizes['idle_settle']} s and the servers' RSS read from /proc: (after - "
        "before) / connections. Before = after a warm-up connection.",
        "- Client-bound rows: where a row's `client_cpu_s` in the JSON is close to the "
        "workload's duration (the ceiling and Streampod on uvicorn, near 12,000 msgs/s), the "
        "load client used a whole core: the server could do more.",
        "- Latency: from a perf_counter stamp in the message to the receiving reader (one "
        "process sends and receives). ~100-byte JSON messages; each framework adds its own "
        "envelope. No compression, no client pings.",
        "- Clients identify with `?uid=<id>`: no token lookup per connection in any contender "
        "(`bench/identity.py`). Streampod and the Channels baseline still go through their "
        "auth middleware stacks (session cookie lookup) as deployed.",
        "- Every server listens with a backlog of 2,048. Redis rows: a private redis-server; "
        "Streampod and Channels use the channels-redis pub/sub layer with the project's "
        "shipped host options (`socket_timeout` None...); python-socketio uses "
        "AsyncRedisManager with `socket_timeout` None.",
        "",
    ]


def write(
    out_dir: Path, results: dict[str, list[dict[str, Any]]], meta: dict[str, Any],
    rows: list[report.Row],
) -> list[Path]:  # fmt: skip
    stamp = meta["date"][:10]
    md, js, png = (out_dir / f"{stamp}.{ext}" for ext in ("md", "json", "png"))
    report.write_json(js, meta, results)
    plotted = report.plot(rows, results, png)
    tables = report.tables(rows, results, meta["sizes"])
    targets = report.targets(rows, results)
    contenders = [
        f"- **{c.label}**: {c.note}." for c in ALL.values() if any(r.key.startswith(c.key + "@")
                                                                for r in rows)
    ]  # fmt: skip
    lines = [
        f"# Benchmark results {stamp}\n",
        f"Command: `{meta['command']}` (what `make bench` runs), {meta['total_seconds']} s "
        "in all.\n",
        *contenders,
        "",
        f"![benchmark plot]({png.name})\n" if plotted else "(matplotlib missing: no plot)\n",
        "## Targets (issue 6)\n",
        "Checked for each server Streampod runs on: uvicorn (production, docs/deployment.md) "
        "and daphne (`runserver`).\n",
        *(targets or ["- (no Streampod row in this run)"]),
        "",
        "## Figures\n",
        "Ratios are Streampod's figure divided by the other's: above 1 is better for "
        "throughput, below 1 is better for latency, CPU and memory.\n",
        *tables,
        *_profile_lines(meta.get("profile")),
        *method_lines(meta),
        *_runs_lines(rows, results),
        f"Raw figures of every run: `{js.name}`.",
    ]
    md.write_text("\n".join(lines) + "\n")
    print("\n".join(["", *tables, "Targets:", *targets, ""]))
    return [md, js, *([png] if plotted else [])]
