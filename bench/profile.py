"""Where a server's time goes: py-spy samples a server during a workload.

``Profiler.start(pid, name)`` / ``stop()`` record CPU samples (idle time excluded;
the process is paused for each sample, so stacks are exact) of one process;
:meth:`Profiler.summary` folds them into: the stage of the event loop's work each
sample belongs to (reading frames, the endpoint lane, the send path...), the layer
of the function on top (Streampod, daphne/Twisted/autobahn, pydantic, json...), and
the top functions by self and inclusive time. The profiled run is an extra one:
sampling costs CPU on a 2-core machine, so its figures are not counted.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

#: (layer, substrings of "function (file:line)") in match order: first match wins.
LAYERS = [
    ("streampod: streaming/", ("streaming/",)),
    ("bench relay endpoint", ("bench/",)),
    ("channels", ("channels/",)),
    ("daphne", ("daphne/",)),
    ("autobahn (WebSocket protocol)", ("autobahn/",)),
    ("twisted", ("twisted/",)),
    ("uvicorn (WebSocket protocol)", ("uvicorn/",)),
    ("websockets (frames, used by uvicorn)", ("websockets/",)),
    ("uvloop", ("uvloop/",)),
    ("txaio", ("txaio/",)),
    ("pydantic", ("pydantic",)),
    ("json", ("json/",)),
    ("asyncio", ("asyncio/",)),
    ("asgiref", ("asgiref/",)),
    ("django", ("django/",)),
]


#: (stage, a frame that marks it) in match order: the event loop's kinds of work.
STAGES = [
    ("send path: Outbox -> the server's send (daphne/autobahn/Twisted or uvicorn/websockets)",
     "streaming/outbox.py"),
    ("endpoint lane: decode_object, the hook, the bus, send_stream_message",
     "StreamingConsumer._deliver"),
    ("bus receiver: frames from Redis to local listeners", "MessageBus._receive_loop"),
    ("receive loop: middleware, consumer, decode_frame, routing", "ProtocolTypeRouter.__call__"),
    ("twisted/autobahn: socket reads, frame parsing, handshakes", "Connection.doRead"),
    ("twisted: socket writes", "doWrite"),
    ("channels-redis / redis-py", "channels_redis/"),
    ("accepting connections", "Port.doRead"),
]  # fmt: skip
IDLE_MARK = "concurrent/futures/thread.py"  # thread-pool workers waiting for work


def stage_of(stack: str) -> str:
    for name, marker in STAGES:
        if marker in stack:
            return name
    return "other (event loop, timers, disconnects)"


def executable() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def layer_of(frame: str) -> str:
    for name, needles in LAYERS:
        if any(needle in frame for needle in needles):
            return name
    return "other"


class Profiler:
    """py-spy around chosen workloads of one server process."""

    #: Environment of the profiled server: the GC pause probe (bench/gcprobe).
    env = {"PYTHONPATH": str(Path(__file__).resolve().parent / "gcprobe")}

    def __init__(self, workloads: tuple[str, ...] = ("relay", "fanout"), rate: int = 200) -> None:
        self.workloads = workloads
        self.rate = rate
        self.dir = Path(tempfile.mkdtemp(prefix="streampod-bench-profile-"))
        self.files: dict[str, Path] = {}
        self.windows: dict[str, tuple[float, float]] = {}
        self.gc: dict[str, dict[str, Any]] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._current: tuple[str, float] | None = None

    @staticmethod
    def available() -> bool:
        return executable() is not None

    def start(self, pid: int, name: str) -> None:
        binary = executable()
        if binary is None:
            return
        out = self.dir / f"{name}.txt"
        self.files[name] = out
        self._current = (name, time.monotonic())
        self._proc = subprocess.Popen(
            [binary, "record", "--pid", str(pid), "--rate", str(self.rate), "--format", "raw",
             "--function", "--output", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def stop(self) -> None:
        if self._current is not None:
            name, started = self._current
            self.windows[name] = (started, time.monotonic())
            self._current = None
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.send_signal(signal.SIGINT)  # py-spy writes its samples on Ctrl-C
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def record_gc(self, pauses: list[tuple[float, int, float]]) -> None:
        """Sort the server's GC pauses (from bench/gcprobe) into the profiled workloads."""
        for name, (started, stopped) in self.windows.items():
            mine = [(gen, ms) for at, gen, ms in pauses if started <= at <= stopped]
            full = [ms for gen, ms in mine if gen == 2]
            self.gc[name] = {
                "seconds": round(stopped - started, 2),
                "collections_over_1ms": len(mine),
                "gen2_collections": len(full),
                "gen2_max_ms": max(full, default=0.0),
                "max_ms": max((ms for _, ms in mine), default=0.0),
                "total_ms": round(sum(ms for _, ms in mine), 1),
            }

    def summary(self, run: dict[str, Any] | None = None, top: int = 18) -> dict[str, Any]:
        """Per sampled workload: stages, layers, top functions, GC, and the run's figures."""
        out: dict[str, Any] = {}
        for name, path in self.files.items():
            stacks = read_raw(path)
            total = sum(stacks.values())
            if not total:
                continue
            own: Counter[str] = Counter()
            inclusive: Counter[str] = Counter()
            layers: Counter[str] = Counter()
            stages: Counter[str] = Counter()
            for stack, count in stacks.items():
                stages[stage_of(stack)] += count
                frames = stack.split(";")
                own[frames[-1]] += count
                layers[layer_of(frames[-1])] += count
                for frame in set(frames):
                    inclusive[frame] += count
            out[name] = {
                "samples": total,
                "gc": self.gc.get(name),
                "figures": {
                    k: v
                    for k, v in ((run or {}).get(name) or {}).items()
                    if k in ("msgs_per_s", "deliveries_per_s", "p50_ms", "p99_ms", "lost")
                },
                "stages_pct": {k: round(v * 100 / total, 1) for k, v in stages.most_common()},
                "layers_self_pct": {k: round(v * 100 / total, 1) for k, v in layers.most_common()},
                "self_pct": [(f, round(c * 100 / total, 1)) for f, c in own.most_common(top)],
                "inclusive_pct": [
                    (f, round(c * 100 / total, 1))
                    for f, c in inclusive.most_common()
                    if "streaming/" in f or "bench/" in f
                ][:top],
            }
        shutil.rmtree(self.dir, ignore_errors=True)
        return out


def read_raw(path: Path) -> Counter[str]:
    """py-spy's raw format: one ``frame;frame;... count`` line per distinct stack."""
    stacks: Counter[str] = Counter()
    if not path.exists():
        return stacks
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit() and IDLE_MARK not in stack:
            stacks[stack] += int(count)
    return stacks
