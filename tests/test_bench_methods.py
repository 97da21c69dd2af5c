"""The streaming-methods workload cannot rot: ``python -m bench.methods`` at a tiny size,
both contenders (Streampod's Python client, python-socketio's ``call`` with acks), each on
a real uvicorn.

No timing assertions: only that every call returned, every stream delivered all its values
(the workload raises otherwise), and the report was written.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.servers import ROOT

pytestmark = [pytest.mark.e2e]


def test_the_methods_workload_runs_at_tiny_size(tmp_path: Path) -> None:
    out = tmp_path / "methods.json"
    args = ["--calls", "60", "--concurrency", "5", "--streams", "3", "--values", "150"]
    done = subprocess.run(
        [sys.executable, "-m", "bench.methods", *args, "--runs", "1", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["workload"] == "methods"
    assert report["params"]["values"] == 150
    rows = {row["contender"]: row for row in report["results"]}
    assert set(rows) == {"streampod_methods", "socketio_calls"}
    for row in rows.values():
        assert row["calls_per_s"] > 0 and row["values_per_s"] > 0
        assert len(row["runs"]) == 1
    assert "| Streampod methods (uvicorn) |" in done.stdout
    assert "| python-socketio call + ack (uvicorn) |" in done.stdout
