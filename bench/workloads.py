"""The workloads: the connect storm held idle, relay, fan-out and echo.

Each opens its own connections, is bounded in count and in time, runs against one
contender's servers (one or two; :class:`Target`), closes what it opened and returns
a flat dict of figures. Before each, :func:`quiesce` waits (bounded) until the
servers stop burning CPU on the previous one's disconnects. Latencies are measured
from a ``perf_counter()`` stamp the sender puts in the message to the moment the
reader handles it; senders and readers share the load-client process, so the clocks
agree.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .client import ECHO, ERROR, PING, RELAY, Conn, Dialect, close_all, open_conn, open_many

clock = time.perf_counter

#: First user id of each workload's clients; fan-out listeners all use FANOUT_UID.
WARMUP_UID, STORM_UID, RELAY_UID, FANOUT_UID, ECHO_UID = 900_000, 100_000, 10_000, 50_000, 60_000


@dataclass(frozen=True)
class Sizes:
    """How big and how long each workload is (``FULL`` for ``make bench``, ``TINY`` for tests)."""

    relay_clients: int = 200
    relay_senders: int = 20
    relay_window: int = 10  # messages in flight per sender
    relay_seconds: float = 1.25
    relay_messages: int | None = None  # per sender; None: bounded by time only
    fanout_listeners: int = 500
    fanout_broadcasts: int = 50
    fanout_seconds: float = 1.25  # no new broadcast starts after this
    echo_clients: int = 50
    echo_seconds: float = 1.0
    echo_messages: int | None = None  # per client
    storm: int = 2000
    idle_settle: float = 0.5  # idle connections sit this long before RSS is read
    drain_timeout: float = 5.0  # longest wait for messages still in flight


FULL = Sizes()
TINY = Sizes(
    relay_clients=6,
    relay_senders=2,
    relay_window=2,
    relay_seconds=10.0,
    relay_messages=20,
    fanout_listeners=5,
    fanout_broadcasts=3,
    fanout_seconds=10.0,
    echo_clients=3,
    echo_seconds=10.0,
    echo_messages=10,
    storm=10,
    idle_settle=0.0,
)


@dataclass
class Target:
    """A running contender: its dialect, its servers' base URLs and a way to read them."""

    dialect: Dialect
    bases: list[str]
    rss_kb: Callable[[], int]  # summed over the servers
    cpu_s: Callable[[], float]  # summed over the servers


def percentile_ms(samples: list[float], q: float) -> float | None:
    if not samples:
        return None
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))] * 1000, 2)


def _figures(
    target: Target, cpu0: float, client0: float, count: int, latencies: list[float]
) -> dict[str, Any]:
    cpu = target.cpu_s() - cpu0
    return {
        "p50_ms": percentile_ms(latencies, 0.50),
        "p99_ms": percentile_ms(latencies, 0.99),
        "server_cpu_us_per_msg": round(cpu * 1e6 / count, 1) if count else None,
        "client_cpu_s": round(time.process_time() - client0, 2),
    }


async def quiesce(target: Target, timeout: float = 2.0, busy: float = 0.1) -> float:
    """Wait until the servers use less than ``busy`` of a core over 100 ms (at most
    ``timeout`` s), so one workload's teardown does not run into the next. Returns the
    seconds waited."""
    started = clock()
    while clock() - started < timeout:
        before = target.cpu_s()
        await asyncio.sleep(0.1)  # a measurement window, not a synchronisation
        if target.cpu_s() - before < busy * 0.1:
            break
    return round(clock() - started, 2)


async def warm_up(target: Target) -> None:
    """One relay-to-self and one echo per server, so lazy imports are done before RSS is read."""
    dialect = target.dialect
    for index, base in enumerate(target.bases):
        conn = await open_conn(dialect, base, WARMUP_UID + index, index)
        try:
            for text, wanted in (
                (dialect.relay(conn.uid, 0, 0, clock()), RELAY),
                (dialect.echo(0, 0, clock()), ECHO),
            ):
                await conn.ws.send(text)
                async with asyncio.timeout(10):
                    while True:
                        kind, _ = dialect.parse(await conn.ws.recv())
                        if kind == wanted:
                            break
                        if kind == PING:
                            await conn.ws.send("3")
                        elif kind == ERROR:
                            raise RuntimeError("warm-up message refused")
        finally:
            await conn.close()


async def storm_and_idle(target: Target, sizes: Sizes) -> dict[str, Any]:
    """``storm`` connects at once, spread over the servers (errors; time until every one
    is ready), then held idle: the servers' RSS growth per connection."""
    n_servers = len(target.bases)
    rss0 = target.rss_kb()
    cpu0 = target.cpu_s()
    started = clock()
    ready_at: list[float] = []

    async def one(i: int) -> Conn:
        server = i % n_servers
        conn = await open_conn(target.dialect, target.bases[server], STORM_UID + i, server)
        ready_at.append(clock())
        return conn

    results = await asyncio.gather(*(one(i) for i in range(sizes.storm)), return_exceptions=True)
    all_ready = (max(ready_at) - started) if ready_at else None
    storm_cpu = target.cpu_s() - cpu0
    conns = [r for r in results if isinstance(r, Conn)]
    failures = [r for r in results if not isinstance(r, Conn)]
    if sizes.idle_settle:
        await asyncio.sleep(sizes.idle_settle)  # let the servers finish their bookkeeping
    rss1 = target.rss_kb()
    await close_all(conns)
    return {
        "storm_errors": len(failures),
        "storm_error_kinds": sorted({repr(f)[:100] for f in failures})[:5],
        "storm_all_connected_s": round(all_ready, 3) if all_ready is not None else None,
        "storm_server_cpu_ms_per_conn": round(storm_cpu * 1000 / max(len(conns), 1), 2),
        "idle_connections": len(conns),
        "idle_kb_per_conn": round((rss1 - rss0) / len(conns), 2) if conns else None,
        "idle_rss_before_mb": round(rss0 / 1024, 1),
        "idle_rss_after_mb": round(rss1 / 1024, 1),
    }


async def relay(target: Target, sizes: Sizes) -> dict[str, Any]:
    """``relay_clients`` users; the first ``relay_senders`` send to random other users,
    at most ``relay_window`` undelivered messages each. On two servers every message
    crosses servers (recipients are picked on the other server)."""
    dialect = target.dialect
    n_servers = len(target.bases)
    n = sizes.relay_clients
    n_senders = min(sizes.relay_senders, n)
    conns = await open_many(
        dialect, target.bases, [(i % n_servers, RELAY_UID + i) for i in range(n)]
    )
    cpu0, client0 = target.cpu_s(), time.process_time()
    windows = [asyncio.Semaphore(sizes.relay_window) for _ in range(n_senders)]
    sent = [0] * n_senders
    seen: set[tuple[int, int]] = set()
    latencies: list[float] = []
    state = {"dups": 0, "errors": 0, "closed": 0, "last": 0.0, "stopping": False}
    drained = asyncio.Event()

    def check_drained() -> None:
        if state["stopping"] and len(seen) + state["errors"] >= sum(sent):
            drained.set()

    def on_message(conn: Conn, kind: str, data: Any, now: float) -> None:
        if kind == RELAY:
            key = (data["src"], data["seq"])
            if key in seen:
                state["dups"] += 1
                return
            seen.add(key)
            latencies.append(now - data["t"])
            state["last"] = now
            windows[data["src"]].release()
            check_drained()
        elif kind == ERROR:
            state["errors"] += 1
            check_drained()

    def on_closed(conn: Conn) -> None:
        state["closed"] += 1

    for conn in conns:
        conn.start_reader(on_message, on_closed)

    async def sender(i: int) -> None:
        rng = random.Random(i)
        peers = [
            conns[j].uid
            for j in range(n)
            if j != i and (n_servers == 1 or conns[j].server != conns[i].server)
        ]
        ws, window = conns[i].ws, windows[i]
        seq = 0
        cap = sizes.relay_messages
        while cap is None or seq < cap:
            await window.acquire()
            if state["stopping"]:
                return
            await ws.send(dialect.relay(rng.choice(peers), i, seq, clock()))
            seq += 1
            sent[i] = seq

    started = clock()
    senders = [asyncio.create_task(sender(i)) for i in range(n_senders)]
    await asyncio.wait(senders, timeout=sizes.relay_seconds)
    state["stopping"] = True
    for window in windows:
        window.release()  # wake senders blocked on a full window: they see `stopping`
    await asyncio.gather(*senders, return_exceptions=True)
    check_drained()
    try:
        async with asyncio.timeout(sizes.drain_timeout):
            await drained.wait()
    except TimeoutError:
        pass
    total = sum(sent)
    delivered = len(seen)
    elapsed = (state["last"] or clock()) - started
    figures = _figures(target, cpu0, client0, delivered, latencies)
    closed_early = state["closed"]
    await close_all(conns)
    return {
        "sent": total,
        "delivered": delivered,
        "lost": total - delivered,
        "duplicates": state["dups"],
        "errors": state["errors"],
        "closed_early": closed_early,
        "msgs_per_s": round(delivered / elapsed) if elapsed > 0 else None,
        **figures,
    }


async def fanout(target: Target, sizes: Sizes) -> dict[str, Any]:
    """``fanout_listeners`` sockets on one channel (``user_<FANOUT_UID>``, spread over the
    servers); broadcasts one at a time, each awaited by every listener."""
    dialect = target.dialect
    n_servers = len(target.bases)
    n = sizes.fanout_listeners
    conns = await open_many(dialect, target.bases, [(i % n_servers, FANOUT_UID) for i in range(n)])
    broadcaster = await open_conn(dialect, target.bases[0], FANOUT_UID + 1, 0)
    cpu0, client0 = target.cpu_s(), time.process_time()
    counts = [0] * sizes.fanout_broadcasts
    events = [asyncio.Event() for _ in range(sizes.fanout_broadcasts)]
    last_seq: dict[int, int] = {}
    latencies: list[float] = []
    state = {"dups": 0, "errors": 0, "closed": 0, "last": 0.0}

    def on_message(conn: Conn, kind: str, data: Any, now: float) -> None:
        if kind == RELAY:
            seq = data["seq"]
            key = id(conn)
            if last_seq.get(key, -1) >= seq:
                state["dups"] += 1
                return
            last_seq[key] = seq
            latencies.append(now - data["t"])
            state["last"] = now
            counts[seq] += 1
            if counts[seq] == n:
                events[seq].set()
        elif kind == ERROR:
            state["errors"] += 1

    def on_closed(conn: Conn) -> None:
        state["closed"] += 1

    for conn in conns:
        conn.start_reader(on_message, on_closed)
    broadcaster.start_reader(on_message, on_closed)

    started = clock()
    done = 0
    for seq in range(sizes.fanout_broadcasts):
        if seq and clock() - started > sizes.fanout_seconds:
            break
        await broadcaster.ws.send(dialect.relay(FANOUT_UID, 0, seq, clock()))
        done += 1
        try:
            async with asyncio.timeout(sizes.drain_timeout):
                await events[seq].wait()
        except TimeoutError:
            break  # some listener never got it: counted as lost below
    delivered = sum(counts[:done])
    elapsed = (state["last"] or clock()) - started
    figures = _figures(target, cpu0, client0, delivered, latencies)
    closed_early = state["closed"]
    await close_all([*conns, broadcaster])
    return {
        "broadcasts": done,
        "expected": done * n,
        "delivered": delivered,
        "lost": done * n - delivered,
        "duplicates": state["dups"],
        "errors": state["errors"],
        "closed_early": closed_early,
        "deliveries_per_s": round(delivered / elapsed) if elapsed > 0 else None,
        **figures,
    }


async def echo(target: Target, sizes: Sizes) -> dict[str, Any]:
    """``echo_clients`` clients in a closed loop: send, wait for the echo, repeat."""
    dialect = target.dialect
    conns = await open_many(
        dialect, target.bases, [(0, ECHO_UID + i) for i in range(sizes.echo_clients)]
    )
    cpu0, client0 = target.cpu_s(), time.process_time()
    latencies: list[float] = []
    state = {"done": 0, "errors": 0, "mismatched": 0, "stopping": False}

    async def client(i: int) -> None:
        ws = conns[i].ws
        seq = 0
        cap = sizes.echo_messages
        while not state["stopping"] and (cap is None or seq < cap):
            t = clock()
            await ws.send(dialect.echo(i, seq, t))
            while True:
                kind, data = dialect.parse(await ws.recv())
                if kind == ECHO:
                    if data["seq"] != seq or data["src"] != i:
                        state["mismatched"] += 1
                    break
                if kind == PING:
                    await ws.send("3")
                elif kind == ERROR:
                    state["errors"] += 1
                    break
            latencies.append(clock() - t)
            state["done"] += 1
            seq += 1

    started = clock()
    clients = [asyncio.create_task(client(i)) for i in range(len(conns))]
    await asyncio.wait(clients, timeout=sizes.echo_seconds)
    state["stopping"] = True
    try:
        async with asyncio.timeout(sizes.drain_timeout):
            await asyncio.gather(*clients)
    except TimeoutError:
        for task in clients:
            task.cancel()
    elapsed = clock() - started
    figures = _figures(target, cpu0, client0, state["done"], latencies)
    await close_all(conns)
    return {
        "echoes": state["done"],
        "errors": state["errors"],
        "mismatched": state["mismatched"],
        "lost": state["errors"] + state["mismatched"],
        "msgs_per_s": round(state["done"] / elapsed) if elapsed > 0 else None,
        **figures,
    }
