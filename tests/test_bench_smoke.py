"""The benchmark harness cannot rot: ``python -m bench.run`` at a tiny size, every
contender and every workload, one server and two servers sharing a private Redis.

No timing assertions: only that every workload ran, delivered what was sent (zero
losses, zero duplicates, zero connect errors) and that the results were written.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.servers import IN_CI, ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

ONE_SERVER = {"streampod", "streampod_uvicorn", "channels", "socketio", "ceiling"}
TWO_SERVERS = {"streampod", "streampod_uvicorn", "channels", "socketio"}


def run_bench(module: str, *args: str) -> None:
    """``python -m <module> <args>`` in the project; fails the test with its output's tail."""
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_every_workload_runs_at_tiny_size_with_zero_losses(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        message = "redis-server is not installed (the two-server rows start their own)"
        if IN_CI:
            pytest.fail(message + "; CI=true needs it")
        pytest.skip(message)
    run_bench("bench.run", "--size", "tiny", "--runs", "1", "--out", str(tmp_path),
              "--profile", "off")  # fmt: skip

    [results_json] = tmp_path.glob("*.json")
    results = json.loads(results_json.read_text())["results"]
    expected = {f"{k}@1" for k in ONE_SERVER} | {f"{k}@2" for k in TWO_SERVERS}
    assert set(results) == expected
    for key, runs in results.items():
        [run] = runs
        workloads = {"storm", "relay", "fanout"} | ({"echo"} if key.endswith("@1") else set())
        for name in workloads:
            figures = run.get(name)
            assert isinstance(figures, dict) and "error" not in figures, (key, name, run)
        storm, relay, fanout = run["storm"], run["relay"], run["fanout"]
        assert storm["storm_errors"] == 0 and storm["idle_connections"] == 10, (key, storm)
        assert relay["sent"] == 2 * 20 and relay["lost"] == 0, (key, relay)
        assert relay["duplicates"] == 0 and relay["errors"] == 0, (key, relay)
        assert fanout["broadcasts"] == 3 and fanout["delivered"] == 3 * 5, (key, fanout)
        assert fanout["lost"] == 0 and fanout["duplicates"] == 0, (key, fanout)
        if "echo" in workloads:
            assert run["echo"]["echoes"] == 3 * 10 and run["echo"]["lost"] == 0, (key, run)
        assert run["server_errors"] == 0, (key, run.get("server_log_tail"))

    [report] = tmp_path.glob("*.md")
    text = report.read_text()
    assert "Streampod (daphne) ÷ Channels baseline" in text
    assert "Streampod (daphne) ÷ python-socketio" in text
    assert "Streampod (daphne) ÷ ceiling" in text
    assert "**Streampod on uvicorn**" in text and "**Streampod on daphne**" in text
    assert (tmp_path / report.name.replace(".md", ".png")).stat().st_size > 0


def test_the_fan_out_curve_runs_at_tiny_size_with_zero_losses(tmp_path: Path) -> None:
    """``make bench-scale``'s fan-out curve (bench/fanout_curve.py): listeners spread over
    two load-client processes (bench/swarm.py), each N awaited by every listener."""
    run_bench("bench.fanout_curve", "--points", "2,5", "--servers", "1",
              "--only", "streampod_uvicorn,ceiling", "--clients", "2", "--max-broadcasts", "4",
              "--out", str(tmp_path))  # fmt: skip
    [results_json] = tmp_path.glob("*-fanout.json")
    results = json.loads(results_json.read_text())["results"]
    assert set(results) == {"streampod_uvicorn@1", "ceiling@1"}
    for key, entry in results.items():
        assert "error" not in entry and entry["server_errors"] == 0, (key, entry)
        assert [p["listeners"] for p in entry["points"]] == [2, 5], (key, entry)
        for point in entry["points"]:
            assert point["broadcasts"] == 4, (key, point)
            assert point["delivered"] == 4 * point["listeners"], (key, point)
            assert point["lost"] == 0 and point["duplicates"] == 0, (key, point)
    text = next(tmp_path.glob("*-fanout.md")).read_text()
    assert "*Streampod (uvicorn) ÷ bare websockets (ceiling), deliveries/s*" in text
    assert next(tmp_path.glob("*-fanout.png")).stat().st_size > 0


def test_the_connections_curve_holds_authenticated_sockets_that_answer_pings(
    tmp_path: Path,
) -> None:
    """``make bench-scale``'s sockets per process (bench/connections.py): the demo project
    under uvicorn with token-authenticated sockets (a wrong token would be closed with
    4401 before the handshake's ping is answered) against the ceiling, with the
    tracemalloc probe's breakdown by package."""
    run_bench("bench.connections", "--steps", "3,6", "--clients", "2", "--memprobe",
              "--ping-spread", "0.5", "--out", str(tmp_path))  # fmt: skip
    [results_json] = tmp_path.glob("*-connections-memprobe.json")
    results = json.loads(results_json.read_text())["results"]
    assert set(results) == {"streampod_demo", "ceiling"}
    for key, entry in results.items():
        assert "error" not in entry and entry["server_errors"] == 0, (key, entry)
        assert [s["sockets"] for s in entry["steps"]] == [3, 6], (key, entry)
        assert all(s["failed"] == 0 and s["server_rss_mb"] > 0 for s in entry["steps"]), entry
        for ping in (entry["ping"], entry["ping_spread"]):
            assert ping["answered"] == 6 and ping["failed"] == 0, (key, entry)
        assert entry["memory_top_lines"], (key, entry)
    text = next(tmp_path.glob("*-connections-memprobe.md")).read_text()
    assert "*Streampod ÷ ceiling, KB per socket*" in text
    assert "| allocating line | bytes per socket |" in text


def test_the_open_loop_curve_delivers_every_scheduled_message(tmp_path: Path) -> None:
    """``make bench-scale``'s open-loop latency (bench/open_loop.py): each contender's
    saturation under overload and its knee (a reference level for the latency bound, then a
    step search), then fixed rates from two load-client processes, then every contender at
    each one's 75%-of-knee rate (--same-load), each message of every level delivered."""
    run_bench("bench.open_loop", "--only", "streampod_uvicorn,ceiling", "--levels", "10,20",
              "--seconds", "0.5", "--saturation-seconds", "0.5", "--search-steps", "2",
              "--search-seconds", "0.5", "--repeats", "1", "--same-load-rates", "150",
              "--out", str(tmp_path))  # fmt: skip
    [results_json] = tmp_path.glob("*-open-loop.json")
    results = json.loads(results_json.read_text())["results"]
    assert set(results) == {"streampod_uvicorn", "ceiling"}
    for key, entry in results.items():
        assert "error" not in entry and entry["server_errors"] == 0, (key, entry)
        assert len(entry["knee_steps"]) == 2, (key, entry)
        # the knee's latency bound comes from two reference levels at a low rate
        assert len(entry["reference"]) == 2 and entry["bound_ms"] >= 10, (key, entry)
        assert all(isinstance(e["sustained"], bool) for e in entry["knee_steps"]), (key, entry)
        levels = [(e["percent"], e["basis"]) for e in entry["levels"]]
        if entry["knee"]:  # the levels are fractions of the knee, plus 75% of the overload
            assert levels == [(10, "knee"), (20, "knee"), (75, "overload")], (key, levels)
        else:  # no step was sustained (a loaded machine): fractions of the overload figure
            assert levels == [(10, "overload"), (20, "overload")], (key, levels)
        for level in entry["levels"]:
            assert level["sent"] > 0 and level["delivered"] == level["sent"], (key, level)
            assert level["lost"] == 0 and level["duplicates"] == 0, (key, level)
            assert level["errors"] == 0 and level["closed"] == 0, (key, level)
            assert level["client_cpu_us_per_msg"] > 0, (key, level)
        # --same-load (at a fixed rate here: a 2-step search may find no knee): everyone
        [same] = entry["same_load"]["levels"]
        assert same["rate_of"] == "fixed:150" and same["offered_per_s"] == 150, (key, same)
        assert same["sent"] > 0 and same["delivered"] == same["sent"], (key, same)
        assert entry["same_load"]["server_errors"] == 0, (key, entry["same_load"])
    text = next(tmp_path.glob("*-open-loop.md")).read_text()
    assert "*Streampod (uvicorn) ÷ bare websockets (ceiling), median p99*" in text
    assert "The knee search, step by step" in text
    assert "The same offered rate for every contender" in text
    assert "| fixed: 150/s |" in text


def test_the_load_client_comparison_runs_both_clients(tmp_path: Path) -> None:
    """``python -m bench.open_loop --compare-clients``: the same offered rate from the
    websockets library's client and from bench.rawws, the load clients' CPU per message."""
    run_bench("bench.open_loop", "--only", "ceiling", "--compare-clients", "200",
              "--runs", "1", "--seconds", "0.5", "--out", str(tmp_path))  # fmt: skip
    [results_json] = tmp_path.glob("*-open-loop-clients.json")
    [entry] = json.loads(results_json.read_text())["results"].values()
    assert "error" not in entry and entry["server_errors"] == 0, entry
    assert [e["client"] for e in entry["levels"]] == ["websockets", "raw"], entry
    for level in entry["levels"]:
        assert level["lost"] == 0 and level["client_cpu_us_per_msg"] > 0, level
    text = next(tmp_path.glob("*-open-loop-clients.md")).read_text()
    assert "| bare websockets (ceiling) | 200 |" in text


@pytest.mark.parametrize("client", ["c", "python"])
def test_the_workers_comparison_runs_one_and_two_uvicorn_workers(
    tmp_path: Path, client: str
) -> None:
    """``make bench-scale``'s two uvicorn workers against one (bench/workers.py): relay and
    fan-out through each configuration, with either load client, nothing lost, medians and
    ratios written."""
    if shutil.which("redis-server") is None:
        message = "redis-server is not installed (the workers share a private one)"
        if IN_CI:
            pytest.fail(message + "; CI=true needs it")
        pytest.skip(message)
    run_bench("bench.workers", "--runs", "1", "--offered", "400", "--seconds", "0.5",
              "--listeners", "10", "--deliveries", "30", "--client", client,
              "--out", str(tmp_path))  # fmt: skip
    [results_json] = tmp_path.glob("*-workers.json")
    rows = json.loads(results_json.read_text())["results"]
    assert [r["name"] for r in rows] == [
        "1 worker, in-memory", "1 worker + Redis", "2 workers + Redis"
    ]  # fmt: skip
    for row in rows:
        assert "error" not in row and row["server_errors"] == 0, row
        assert row["relay"]["sent"] > 0 and row["relay"]["lost"] == 0, row
        assert row["fanout"]["broadcasts"] == 3 and row["fanout"]["lost"] == 0, row
    text = next(tmp_path.glob("*-workers.md")).read_text()
    assert "*2 workers ÷ 1 worker + Redis, medians*" in text


def test_the_reconnect_herd_brings_every_client_back_and_the_advice_reaches_them(
    tmp_path: Path,
) -> None:
    """``python -m bench.herd``: Streampod's Python clients on one uvicorn, its Redis
    subscriber connection cut (a bus gap): every socket is closed with 1012, with the
    advice when RESTART_RATE is set and none without, and every client comes back; with
    and without ``tune_gc()``'s socket freezer."""
    if shutil.which("redis-server") is None:
        message = "redis-server is not installed (the herd runs on a private one)"
        if IN_CI:
            pytest.fail(message + "; CI=true needs it")
        pytest.skip(message)
    run_bench("bench.herd", "--sockets", "40", "--clients", "2", "--rates", "none,400",
              "--freeze-sockets", "on,off", "--timeout", "60", "--profile", "1",
              "--out", str(tmp_path))  # fmt: skip
    [results_json] = tmp_path.glob("*-herd.json")
    rows = json.loads(results_json.read_text())["rows"]
    assert [(r["rate"], r["freeze"]) for r in rows] == [
        ("none", "on"), ("none", "off"), ("400", "on"), ("400", "off")
    ]  # fmt: skip
    for row in rows:
        assert "error" not in row and row["server_errors"] == 0, row
        assert row["closed_1012"] == 40 and row["back"] == 40, row
        assert row["back_all_s"] is not None, row
    assert rows[0]["close_reasons"] == rows[1]["close_reasons"] == [""], rows[:2]
    for row in rows[2:]:
        assert row["close_reasons"] == ["restart spread=0.1"], row  # 40 / 400 a second
    text = next(tmp_path.glob("*-herd.md")).read_text()
    assert "| RESTART_RATE |" in text
    assert "### the first 1 s after the cut, rate 400 (" in text  # --profile: py-spy, GC probe
    assert "### the first 1 s after the cut, rate 400, socket freezer off" in text


def test_the_open_loop_curve_runs_pinned(tmp_path: Path) -> None:
    """``python -m bench.open_loop --pin``: the server on its own CPU, the load clients on
    the other; the pinning is recorded with the results."""
    run_bench("bench.open_loop", "--pin", "--only", "ceiling", "--levels", "10",
              "--seconds", "0.5", "--saturation-seconds", "0.5", "--search-steps", "1",
              "--search-seconds", "0.5", "--repeats", "1", "--no-same-load",
              "--out", str(tmp_path))  # fmt: skip
    [results_json] = tmp_path.glob("*-open-loop-pinned.json")
    data = json.loads(results_json.read_text())
    cpus = sorted(os.sched_getaffinity(0))
    assert data["meta"]["pinned"] == {"server": cpus[:-1], "clients": cpus[-1:]}, data["meta"]
    [entry] = data["results"].values()
    assert "error" not in entry and entry["levels"], entry
    assert all(level["lost"] == 0 for level in entry["levels"]), entry
