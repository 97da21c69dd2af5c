"""Load-client processes that each hold many sockets: ``python -m bench.swarm``.

One client process cannot read 10,000 deliveries per broadcast, nor hold 19,000 sockets
(20,000 open files per process here), so the scale workloads (:mod:`bench.fanout_curve`,
:mod:`bench.connections`) spread their sockets over several of these. The coordinator
talks to each over its stdin/stdout, one JSON object a line:

* ``{"cmd": "open", "dialect": ..., "conns": [[base, uid], ...], "headers": [...]}``
  opens them (64 at a time, each waits for its server's "ready"), starts a reader on
  each; answers ``{"opened": n, "failed": k, "errors": [...]}``.
* ``{"cmd": "track"}``: forget earlier deliveries; from now on, once every socket of
  this process has broadcast ``seq``, print ``{"done": seq}`` (unprompted).
* ``{"cmd": "stats"}``: ``{"latencies_ms": [...], "delivered", "duplicates", "errors",
  "closed", "last", "cpu_s"}`` since ``track`` (``last``: when the last relayed message
  came in; ``cpu_s``: this process's CPU time, its cost as a client, and the part of it
  spent in the kernel, ``sys_s``: the sockets' system calls).
  In relay mode also ``"scheduled"``: each latency's message's scheduled send time.
  A latency is from the ``perf_counter()`` stamp the sender put in the message
  (CLOCK_MONOTONIC: one clock for every process of the machine).
* ``{"cmd": "track", "mode": "relay"}``: the same for relayed messages, each counted once
  by ``(src, seq)``, no ``done`` lines; ``{"cmd": "count"}`` answers ``{"delivered"}``.
* ``{"cmd": "send", "senders": k, "src0": id, "rate": r, "seconds": s, "start": t,
  "targets": [uid, ...]}``: open loop. The first ``k`` sockets send relay messages to
  random targets, ``r`` a second between them, message ``i`` scheduled at
  ``t + i / r`` (``perf_counter()``) and stamped with that schedule, not with when it
  left: a send that waits (the loop was busy, the socket pushed back) counts in the
  latency (no coordinated omission). Answers ``{"sent", "late_max_ms"}``.
* ``{"cmd": "ping", "ping_timeout": s, "spread": s}``: every socket sends an
  application-level ping (:meth:`bench.client.Dialect.app_ping`), all at once or evenly
  over ``spread`` seconds; answers ``{"answered", "failed",
  "max_ms", "p99_ms"}``, each timed from its own send.
* ``{"cmd": "rss"}``: this process's RSS in KB. ``{"cmd": "close"}``: close all and exit.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
from typing import Any

from .client import ERROR, RELAY, Conn, close_all, open_conn
from .servers import make_dialect, rss_kb
from .workloads import clock, percentile_ms


class Swarm:
    """The sockets of this process and what they have received since ``track``."""

    def __init__(self) -> None:
        self.conns: list[Conn] = []
        self.counts: dict[int, int] = {}
        self.last_seq: dict[int, int] = {}
        self.latencies: list[float] = []
        self.scheduled: list[float] = []  # relay mode: the send time stamped in each message
        self.cpu0 = os.times()
        self.state = {"dups": 0, "errors": 0, "closed": 0}
        self.pings: dict[int, tuple[float, asyncio.Future[float]]] = {}
        self.ping_kind = ""
        self.relay_seen: set[tuple[int, int]] | None = None  # tracking relayed messages
        self.last: float | None = None  # when the last tracked message came in

    def on_message(self, conn: Conn, kind: str, data: Any, now: float) -> None:
        if kind == RELAY and self.relay_seen is not None:
            message = (data["src"], data["seq"])
            if message in self.relay_seen:
                self.state["dups"] += 1
            else:
                self.relay_seen.add(message)
                self.latencies.append(now - data["t"])
                self.scheduled.append(data["t"])
                self.last = now
        elif kind == RELAY:
            seq = data["seq"]
            key = id(conn)
            if self.last_seq.get(key, -1) >= seq:
                self.state["dups"] += 1
                return
            self.last_seq[key] = seq
            self.latencies.append(now - data["t"])
            count = self.counts[seq] = self.counts.get(seq, 0) + 1
            if count == len(self.conns):
                emit({"done": seq})
        elif kind == self.ping_kind and id(conn) in self.pings:
            sent, future = self.pings.pop(id(conn))
            if not future.done():
                future.set_result(now - sent)
        elif kind == ERROR:
            self.state["errors"] += 1

    def on_closed(self, conn: Conn) -> None:
        self.state["closed"] += 1

    async def open(self, request: dict[str, Any]) -> dict[str, Any]:
        dialect = make_dialect(request["dialect"])
        headers = request.get("headers")
        gate = asyncio.Semaphore(request.get("concurrency", 64))

        async def one(i: int, base: str, uid: int) -> Conn:
            async with gate:
                extra = {"Authorization": headers[i]} if headers else None
                return await open_conn(dialect, base, uid, 0, timeout=60, headers=extra)

        results = await asyncio.gather(
            *(one(i, base, uid) for i, (base, uid) in enumerate(request["conns"])),
            return_exceptions=True,
        )
        opened = [r for r in results if isinstance(r, Conn)]
        failures = [r for r in results if not isinstance(r, Conn)]
        for conn in opened:
            conn.start_reader(self.on_message, self.on_closed)
        self.conns += opened
        return {
            "opened": len(opened),
            "failed": len(failures),
            "errors": sorted({repr(f)[:120] for f in failures})[:3],
        }

    def track(self, mode: str = "fanout") -> dict[str, Any]:
        self.relay_seen = set() if mode == "relay" else None
        self.last = None
        self.counts.clear()
        self.last_seq.clear()
        self.latencies = []
        self.scheduled = []
        self.cpu0 = os.times()
        self.state.update(dups=0, errors=0)
        return {"tracking": len(self.conns)}

    def stats(self) -> dict[str, Any]:
        return {
            "latencies_ms": [round(x * 1000, 3) for x in self.latencies],
            "delivered": len(self.latencies),
            "duplicates": self.state["dups"],
            "errors": self.state["errors"],
            "closed": self.state["closed"],
            "last": self.last,
            **cpu_since(self.cpu0),
            **({"scheduled": self.scheduled} if self.relay_seen is not None else {}),
        }

    async def send(self, request: dict[str, Any]) -> dict[str, Any]:
        senders = self.conns[: request["senders"]]
        rate, start, src0 = request["rate"], request["start"], request["src0"]
        targets = request["targets"]
        total = int(rate * request["seconds"])
        rng = random.Random(src0)
        seqs = [0] * len(senders)
        k = 0
        late = 0.0
        while k < total:
            now = clock()
            due = start + k / rate
            if due > now:
                # At least 1 ms: the event loop's timers have a resolution of 1 ms (libuv),
                # a shorter sleep returns at once and the loop would spin until `due`
                # (17 wake-ups per message at 1,000 msgs/s). A message sent up to 1 ms
                # late carries that wait in its latency, for every contender alike.
                await asyncio.sleep(max(due - now, 0.001))
                now = clock()
            while k < total and start + k / rate <= now:  # everything due by now
                scheduled = start + k / rate
                i = k % len(senders)
                conn = senders[i]
                await conn.ws.send(conn.dialect.relay(rng.choice(targets), src0 + i, seqs[i],
                                                      scheduled))  # fmt: skip
                seqs[i] += 1
                late = max(late, now - scheduled)
                k += 1
        return {"sent": k, "late_max_ms": round(late * 1000, 1)}

    async def ping(self, timeout: float, spread: float = 0.0) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        futures = []
        start = clock()
        for i, conn in enumerate(self.conns):
            if spread:  # socket i pings at start + i * spread / n
                due = start + i * spread / len(self.conns)
                if due > clock():
                    await asyncio.sleep(due - clock())
            text, self.ping_kind = conn.dialect.app_ping(i)
            future: asyncio.Future[float] = loop.create_future()
            self.pings[id(conn)] = (clock(), future)
            futures.append(future)
            try:
                await conn.ws.send(text)
            except Exception as exc:  # a dead socket is a failed ping
                future.set_exception(exc)
        done, pending = await asyncio.wait(futures, timeout=timeout) if futures else ((), ())
        for future in pending:
            future.cancel()
        self.pings.clear()
        times = [f.result() for f in done if not f.exception()]
        return {
            "answered": len(times),
            "failed": len(futures) - len(times),
            "max_ms": round(max(times) * 1000, 1) if times else None,
            "p99_ms": percentile_ms(times, 0.99),
        }


def cpu_since(before: os.times_result) -> dict[str, float]:
    """This process's CPU seconds since ``before`` (``os.times()``): all, and in the kernel."""
    now = os.times()
    user, system = now.user - before.user, now.system - before.system
    return {"cpu_s": round(user + system, 3), "sys_s": round(system, 3)}


def emit(reply: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()


async def serve() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    swarm = Swarm()
    while line := await reader.readline():
        request = json.loads(line)
        cmd = request["cmd"]
        if cmd == "open":
            emit(await swarm.open(request))
        elif cmd == "track":
            emit(swarm.track(request.get("mode", "fanout")))
        elif cmd == "count":
            emit({"delivered": len(swarm.latencies)})
        elif cmd == "send":
            emit(await swarm.send(request))
        elif cmd == "stats":
            emit(swarm.stats())
        elif cmd == "ping":
            emit(await swarm.ping(request.get("ping_timeout", 5.0), request.get("spread", 0.0)))
        elif cmd == "rss":
            emit({"rss_kb": rss_kb()})
        elif cmd == "close":
            await close_all(swarm.conns, timeout=30)
            emit({"closed": len(swarm.conns)})
            return


class SwarmProcess:
    """The coordinator's handle on one client process: ``python -m bench.swarm`` by
    default, or ``python -m <module> *args`` for another bench's worker that speaks the
    same protocol (a JSON request a line on stdin, a JSON reply a line on stdout, and
    ``{"cmd": "close"}`` to end)."""

    def __init__(
        self, module: str = "bench.swarm", *args: str, command: list[str] | None = None
    ) -> None:
        """``command``: run that program instead (the C client, :mod:`bench.cswarm`)."""
        self.argv = ["-m", module, *args]
        self.command = command
        self.proc: asyncio.subprocess.Process | None = None
        self.replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.on_done: Any = None  # called with the seq of each "done" line
        self._pump: asyncio.Task[None] | None = None

    async def start(self, client: str | None = None) -> SwarmProcess:
        """``client``: the WebSocket client (``BENCH_CLIENT``, :mod:`bench.client`);
        this process's own by default."""
        from .servers import ROOT

        env = {**os.environ, **({"BENCH_CLIENT": client} if client else {})}
        self.proc = await asyncio.create_subprocess_exec(
            *(self.command or [sys.executable, *self.argv]),
            cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            limit=2**26, env=env,
        )  # fmt: skip
        self._pump = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            reply = json.loads(line)
            if "done" in reply:
                if self.on_done is not None:
                    self.on_done(reply["done"])
            else:
                self.replies.put_nowait(reply)
        self.replies.put_nowait({"error": "swarm process exited"})

    async def request(self, timeout: float = 300.0, **request: Any) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        await self.proc.stdin.drain()
        return await self.reply(timeout)

    async def reply(self, timeout: float = 300.0) -> dict[str, Any]:
        """The next reply (one the process sends unasked, too: a worker's "up")."""
        async with asyncio.timeout(timeout):
            return await self.replies.get()

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        try:
            await self.request(cmd="close", timeout=60)
            await asyncio.wait_for(self.proc.wait(), 10)
        except Exception:  # a stuck client process is killed, not waited for
            self.proc.kill()
            await self.proc.wait()
        if self._pump is not None:
            self._pump.cancel()


def main() -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve())
    else:
        uvloop.run(serve())


if __name__ == "__main__":
    main()
