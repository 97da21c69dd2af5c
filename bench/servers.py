"""The contenders and their server processes on 127.0.0.1.

A :class:`Contender` says how to start one server of its kind on a port; a
:class:`ServerProcess` runs it, knows when it listens (the port accepts a TCP
connection), reads its RSS and CPU time from ``/proc``, and keeps the tail of its
output (warnings and errors are counted into the results). Every server listens with
a backlog of 2,048 (uvicorn's default; daphne's is 50 and would turn a connect storm
into SYN retries).
"""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .client import (
    Dialect,
    JsonDialect,
    SocketIODialect,
    StreampodDemoDialect,
    StreampodDialect,
)
from .ports import free_port

ROOT = Path(__file__).resolve().parents[1]
BACKLOG = 2048
#: daphne drops frames above its own limit; keep it just above Streampod's (65,536).
DAPHNE_MAX_MESSAGE = 65536 + 1024
_TICKS = os.sysconf("SC_CLK_TCK")




def rss_kb(pid: int | str = "self") -> int:
    """A process's resident set size in KB, from ``/proc/<pid>/status``."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def make_dialect(name: str) -> Dialect:
    """The client dialect called ``name``: streampod, streampod_demo, channels, socketio
    or ceiling."""
    if name == "streampod":
        return StreampodDialect()
    if name == "streampod_demo":
        return StreampodDemoDialect()
    if name == "channels":
        return JsonDialect("/channels/")
    if name == "socketio":
        return SocketIODialect()
    return JsonDialect("/")


@dataclass(frozen=True)
class Contender:
    """One thing measured. ``role``: streampod, baseline, peer or ceiling."""

    key: str
    label: str
    role: str
    server: str  # daphne | uvicorn | websockets
    app: str
    dialect_name: str  # streampod | channels | ceiling | socketio
    note: str

    def dialect(self) -> Dialect:
        return make_dialect(self.dialect_name)

    def command(self, port: int) -> list[str]:
        python = sys.executable
        if self.server == "daphne":
            return [
                python, "-m", "daphne",
                "-e", f"tcp:port={port}:interface=127.0.0.1:backlog={BACKLOG}",
                "-v", "0",  # no access log (uvicorn runs with --no-access-log too)
                "--websocket-max-message-size", str(DAPHNE_MAX_MESSAGE),
                self.app,
            ]  # fmt: skip
        if self.server == "uvicorn":
            return [
                python, "-m", "uvicorn", self.app,
                "--host", "127.0.0.1", "--port", str(port),
                "--backlog", str(BACKLOG),
                "--log-level", "warning", "--no-access-log",
                "--http", "h11",  # as docs/deployment.md serves it
            ]  # fmt: skip
        return [python, "-m", self.app, "--port", str(port)]


#: The WebSocket protocol Streampod's uvicorn contenders run (``--ws``, docs/deployment.md);
#: ``BENCH_STREAMPOD_WS=websockets-sansio`` measures them on uvicorn's own instead.
STREAMPOD_WS = os.environ.get("BENCH_STREAMPOD_WS", "streaming.uvicorn_ws:WebSocketProtocol")

STREAMPOD = Contender(
    "streampod", "Streampod (daphne)", "streampod", "daphne", "bench.asgi:application",
    "streampod", "relay endpoint on /websocket/ (bench/streampod_relay.py)",
)  # fmt: skip
STREAMPOD_UVICORN = Contender(
    "streampod_uvicorn", "Streampod (uvicorn)", "streampod", "uvicorn", "bench.asgi:application",
    "streampod", "the same app under uvicorn (uvloop when installed)",
)  # fmt: skip
CHANNELS = Contender(
    "channels", "Channels baseline (daphne)", "baseline", "daphne",
    "bench.channels_asgi:application",
    "channels", "AsyncJsonWebsocketConsumer + group_send (bench/channels_relay.py)",
)  # fmt: skip
SOCKETIO = Contender(
    "socketio", "python-socketio (uvicorn)", "peer", "uvicorn", "bench.sio_app:app",
    "socketio", "rooms user_<id>; AsyncRedisManager on two servers (bench/sio_app.py)",
)  # fmt: skip
CEILING = Contender(
    "ceiling", "bare websockets (ceiling)", "ceiling", "websockets", "bench.ceiling",
    "ceiling", "one process, no framework (bench/ceiling.py)",
)  # fmt: skip

ALL = {c.key: c for c in (STREAMPOD, STREAMPOD_UVICORN, CHANNELS, SOCKETIO, CEILING)}


class _Tail:
    """Reads a process's output in a thread: the last lines, and warning/error counts."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: deque[str] = deque(maxlen=200)
        self.gc_pauses: list[tuple[float, int, float]] = []  # (monotonic, generation, ms)
        self.memprobes: queue.Queue[str] = queue.Queue()  # snapshot paths (bench/memprobe)
        self.warnings = 0
        self.errors = 0
        self.first_errors: list[str] = []  # the first error lines, and the lines after them
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        for raw in iter(stream.readline, ""):
            line = raw.rstrip("\n")
            if line.startswith("BENCH-MEMPROBE "):  # bench/memprobe: a snapshot written
                self.memprobes.put(line.split(" ", 1)[1])
                continue
            if line.startswith("BENCH-GC "):  # bench/gcprobe, profiled runs only
                _, generation, ms = line.split()
                self.gc_pauses.append((time.monotonic(), int(generation), float(ms)))
                continue
            self.lines.append(line)
            if "WARNING" in line:
                self.warnings += 1
            elif "ERROR" in line or "Traceback" in line or "CRITICAL" in line:
                self.errors += 1
            if (self.errors or self.warnings) and len(self.first_errors) < 80:
                self.first_errors.append(line)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


class ServerProcess:
    """One contender server on a free port of 127.0.0.1."""

    def __init__(self, contender: Contender, env: dict[str, str]) -> None:
        self.contender = contender
        self.port = free_port()
        self.env = env
        self.proc: subprocess.Popen[str] | None = None
        self.tail: _Tail | None = None

    @property
    def base(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> ServerProcess:
        env = dict(os.environ)
        env.update(
            {
                "DJANGO_SETTINGS_MODULE": "bench.settings",
                "DJANGO_DEBUG": "0",
                # Debug off needs a key of its own (the settings refuse the public one).
                "DJANGO_SECRET_KEY": "streampod-bench-" + "k" * 50,
                "PYTHONUNBUFFERED": "1",
                "STREAMPOD_REDIS_LAYER": "pubsub",
                "REDIS_URL": "",
            }
        )
        if self.contender.role == "streampod" and self.contender.server == "uvicorn":
            # As docs/deployment.md serves it; UVICORN_WS in ``env`` picks another protocol.
            env["UVICORN_WS"] = STREAMPOD_WS
        env.update(self.env)
        self.proc = subprocess.Popen(
            self.contender.command(self.port),
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.proc.stdout is not None
        self.tail = _Tail(self.proc.stdout)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.contender.label} exited:\n{self.output()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"{self.contender.label} did not listen within {timeout}s:\n{self.output()}"
                    ) from None
                time.sleep(0.02)  # polling the port: the signal is the accepted connect

    def pin(self, cpus: set[int]) -> None:
        """Run every thread of the server on ``cpus`` only (``sched_setaffinity``; the
        threads it starts later inherit it)."""
        for tid in os.listdir(f"/proc/{self.pid}/task"):
            os.sched_setaffinity(int(tid), cpus)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_kb(self) -> int:
        return rss_kb(self.pid)

    def cpu_s(self) -> float:
        with open(f"/proc/{self.pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime

    def output(self) -> str:
        return "\n".join(self.tail.lines) if self.tail else ""

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.tail is not None:
            self.tail.join(2)
