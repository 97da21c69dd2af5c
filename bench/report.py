"""Turn the runs into tables: medians, the Streampod ratios, the targets, a PNG plot.

Input: ``{config key: [run, ...]}`` where a run is ``{workload: figures}`` (see
:mod:`bench.run`). Output: the text printed by ``make bench`` and
``bench/results/<date>.md`` / ``.json`` / ``.png``.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: (workload, metric, header, higher is better, summed over runs instead of the median)
METRICS: dict[str, list[tuple[str, str, bool | None, bool]]] = {
    "relay": [
        ("msgs_per_s", "delivered msgs/s", True, False),
        ("p50_ms", "p50 ms", False, False),
        ("p99_ms", "p99 ms", False, False),
        ("lost", "lost", None, True),
        ("sent", "sent", None, True),
        ("server_cpu_us_per_msg", "srv CPU µs/msg", False, False),
    ],
    "fanout": [
        ("deliveries_per_s", "deliveries/s", True, False),
        ("p50_ms", "p50 ms", False, False),
        ("p99_ms", "p99 ms", False, False),
        ("lost", "lost", None, True),
        ("broadcasts", "broadcasts", None, True),
        ("server_cpu_us_per_msg", "srv CPU µs/delivery", False, False),
    ],
    "echo": [
        ("msgs_per_s", "msgs/s", True, False),
        ("p50_ms", "p50 ms", False, False),
        ("p99_ms", "p99 ms", False, False),
        ("lost", "lost", None, True),
        ("server_cpu_us_per_msg", "srv CPU µs/msg", False, False),
    ],
    "idle": [
        ("idle_kb_per_conn", "KB per connection", False, False),
        ("idle_rss_before_mb", "RSS before MB", None, False),
        ("idle_rss_after_mb", "RSS after MB", None, False),
    ],
    "storm": [
        ("storm_all_connected_s", "s until all connected", False, False),
        ("storm_errors", "errors", None, True),
    ],
}

def titles(sizes: dict[str, Any]) -> dict[str, str]:
    return {
        "relay": f"relay: {sizes['relay_clients']:,} clients, {sizes['relay_senders']} senders "
        f"to random other users, {sizes['relay_window']} in flight each",
        "fanout": f"fan-out: {sizes['fanout_listeners']:,} listeners on one channel, "
        "broadcasts each awaited by all",
        "echo": f"echo: {sizes['echo_clients']} clients, closed loop",
        "idle": f"idle: {sizes['storm']:,} connections held open, server RSS per connection",
        "storm": f"connect storm: {sizes['storm']:,} connects at once",
    }


#: Which run entry holds each report workload (idle and storm share one phase).
SOURCE = {"relay": "relay", "fanout": "fanout", "echo": "echo", "idle": "storm", "storm": "storm"}
ROLE_ORDER = {"streampod": 0, "baseline": 1, "peer": 2, "ceiling": 3}


@dataclass(frozen=True)
class Row:
    key: str  # config key
    label: str
    role: str
    servers: int


def _median(values: list[Any]) -> Any:
    numbers = [v for v in values if isinstance(v, int | float)]
    if not numbers:
        return None
    value = statistics.median(numbers)
    return round(value, 2) if isinstance(value, float) else value


def aggregate(runs: list[dict[str, Any]], workload: str) -> dict[str, Any] | None:
    """Medians over the runs (sums for counts such as losses); None if no run has it."""
    source = SOURCE[workload]
    entries = [run.get(source) for run in runs]
    ok = [e for e in entries if isinstance(e, dict) and "error" not in e]
    failed = [e["error"] for e in entries if isinstance(e, dict) and "error" in e]
    if not ok and not failed:
        return None
    out: dict[str, Any] = {"runs": len(ok), "failed": failed}
    for metric, _, _, summed in METRICS[workload]:
        values = [e.get(metric) for e in ok]
        if summed:
            numbers = [v for v in values if isinstance(v, int | float)]
            out[metric] = sum(numbers) if numbers else None
        else:
            out[metric] = _median(values)
        out[metric + "__runs"] = values
    if workload == "relay":
        out["duplicates"] = sum(e.get("duplicates", 0) for e in ok)
        out["errors"] = sum(e.get("errors", 0) for e in ok)
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}" if value < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _ratio(a: Any, b: Any) -> str:
    if not isinstance(a, int | float) or not isinstance(b, int | float) or b == 0:
        return "-"
    return f"{a / b:.2f}x"


def tables(
    rows: list[Row], results: dict[str, list[dict[str, Any]]], sizes: dict[str, Any]
) -> list[str]:
    """Markdown tables, one per workload and server count, with the ratio rows under them."""
    out: list[str] = []
    names = titles(sizes)
    for workload in METRICS:
        for servers in (1, 2):
            group = sorted(
                (r for r in rows if r.servers == servers),
                key=lambda r: (ROLE_ORDER[r.role], r.key),
            )
            figures = {r.key: aggregate(results.get(r.key, []), workload) for r in group}
            group = [r for r in group if figures[r.key] is not None]
            if not group:
                continue
            where = "one server, in-memory" if servers == 1 else "two servers sharing Redis"
            metrics = METRICS[workload]
            out.append(f"#### {names[workload]} ({where})\n")
            out.append("| contender | " + " | ".join(m[1] for m in metrics) + " |")
            out.append("|---" * (len(metrics) + 1) + "|")
            for r in group:
                f = figures[r.key] or {}
                cells = [_fmt(f.get(m[0])) for m in metrics]
                if f.get("failed"):
                    cells[-1] += f" (failed runs: {len(f['failed'])})"
                out.append(f"| {r.label} | " + " | ".join(cells) + " |")
            peers = {r.role: r for r in group if r.role != "streampod"}
            for sp in (r for r in group if r.role == "streampod"):
                for role, name in (
                    ("baseline", "Channels baseline"),
                    ("peer", "python-socketio"),
                    ("ceiling", "ceiling"),
                ):
                    other = peers.get(role)
                    if other is None:
                        continue
                    a, b = figures[sp.key] or {}, figures[other.key] or {}
                    cells = [
                        _ratio(a.get(m[0]), b.get(m[0])) if m[2] is not None else ""
                        for m in metrics
                    ]
                    out.append(f"| *{sp.label} ÷ {name}* | " + " | ".join(cells) + " |")
            out.append("")
    return out


def _lookup(results: dict[str, list[dict[str, Any]]], key: str, workload: str, metric: str) -> Any:
    agg = aggregate(results.get(key, []), workload)
    return None if agg is None else agg.get(metric)


#: Streampod's rows whose targets are checked, by contender key: the server each runs on.
STREAMPOD_SERVERS = {"streampod_uvicorn": "uvicorn", "streampod": "daphne"}


def targets(
    rows: list[Row], results: dict[str, list[dict[str, Any]]], contender: str | None = None
) -> list[str]:
    """Issue 6's targets, met or missed by how much, for each Streampod row (or one)."""
    lines: list[str] = []
    for key, server in STREAMPOD_SERVERS.items():
        if contender not in (None, key):
            continue
        found = _targets_of(key, results)
        if found:
            lines += [f"**Streampod on {server}**", "", *found, ""]
    return lines


def _targets_of(contender: str, results: dict[str, list[dict[str, Any]]]) -> list[str]:
    lines: list[str] = []

    def check(ok: bool, text: str) -> None:
        lines.append(f"- {'met' if ok else '**MISSED**'}: {text}")

    for servers in (1, 2):
        sp, base, peer = (f"{k}@{servers}" for k in (contender, "channels", "socketio"))
        if sp not in results:
            continue
        where = "one server" if servers == 1 else "two servers"
        for workload, metric in (
            ("relay", "msgs_per_s"),
            ("fanout", "deliveries_per_s"),
            ("echo", "msgs_per_s"),
        ):
            mine = _lookup(results, sp, workload, metric)
            if mine is None:
                continue
            b = _lookup(results, base, workload, metric)
            p = _lookup(results, peer, workload, metric)
            if isinstance(b, int | float) and b:
                check(mine >= 2 * b, f"{workload} ({where}) ≥ 2x Channels: {mine / b:.2f}x")
            if isinstance(p, int | float) and p:
                check(mine > p, f"{workload} ({where}) above python-socketio: {mine / p:.2f}x")
            p99 = _lookup(results, sp, workload, "p99_ms")
            for other, name in ((base, "Channels"), (peer, "python-socketio")):
                q = _lookup(results, other, workload, "p99_ms")
                if isinstance(p99, int | float) and isinstance(q, int | float) and q:
                    check(
                        p99 < q,
                        f"{workload} ({where}) p99 below {name}: {p99:,.1f} vs {q:,.1f} ms "
                        f"({p99 / q:.2f}x)",
                    )
            lost = _lookup(results, sp, workload, "lost")
            if lost is not None:
                check(lost == 0, f"{workload} ({where}) zero losses: {lost} lost over all runs")
        errors = _lookup(results, sp, "storm", "storm_errors")
        if errors is not None:
            check(errors == 0, f"connect storm ({where}) zero errors: {errors}")
        kb = _lookup(results, sp, "idle", "idle_kb_per_conn")
        kb_base = _lookup(results, base, "idle", "idle_kb_per_conn")
        if isinstance(kb, int | float) and isinstance(kb_base, int | float) and kb_base:
            check(
                kb <= 1.25 * kb_base,
                f"idle memory ({where}) ≤ 1.25x Channels: {kb:.1f} vs {kb_base:.1f} KB/conn "
                f"({kb / kb_base:.2f}x)",
            )
    return lines


def plot(rows: list[Row], results: dict[str, list[dict[str, Any]]], path: Path) -> bool:
    """Grouped bars per figure; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    panels = [
        ("relay", "msgs_per_s", "relay: delivered msgs/s (higher is better)"),
        ("fanout", "deliveries_per_s", "fan-out: deliveries/s (higher is better)"),
        ("echo", "msgs_per_s", "echo: msgs/s (higher is better)"),
        ("relay", "p99_ms", "relay: p99 latency ms (lower is better)"),
        ("fanout", "p99_ms", "fan-out: p99 latency ms (lower is better)"),
        ("echo", "p99_ms", "echo: p99 latency ms (lower is better)"),
        ("idle", "idle_kb_per_conn", "idle: server KB per connection (lower is better)"),
        ("storm", "storm_all_connected_s", "storm: s until 2,000 connected (lower is better)"),
    ]
    labels = []
    for r in sorted(rows, key=lambda r: (ROLE_ORDER[r.role], r.key)):
        if r.label not in labels:
            labels.append(r.label)
    fig, axes = plt.subplots(4, 2, figsize=(13, 15))
    colours = {1: "#4c72b0", 2: "#dd8452"}
    width = 0.38
    for ax, (workload, metric, title) in zip(axes.flat, panels, strict=True):
        for offset, servers in ((-width / 2, 1), (width / 2, 2)):
            xs, ys = [], []
            for i, label in enumerate(labels):
                row = next((r for r in rows if r.label == label and r.servers == servers), None)
                value = _lookup(results, row.key, workload, metric) if row else None
                if isinstance(value, int | float):
                    xs.append(i + offset)
                    ys.append(value)
            if xs:
                name = "one server" if servers == 1 else "two servers + Redis"
                bars = ax.bar(xs, ys, width, label=name, color=colours[servers])
                ax.bar_label(bars, fmt="%.0f" if max(ys) >= 100 else "%.1f", fontsize=7)
        ax.set_title(title, fontsize=10)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels([label.replace(" (", "\n(") for label in labels], fontsize=8)
        ax.legend(fontsize=8)
    fig.suptitle("Streampod benchmark: medians of the runs (bench/results)", fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def write_json(path: Path, meta: dict[str, Any], results: dict[str, Any]) -> None:
    path.write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=str) + "\n")
