"""The C load client (bench/cswarm.c, ``python -m bench.workers --client c``) against a
``websockets`` server in the test's own loop that sends what the bench servers do not:
fragmented messages, a ping, a message past 65,535 bytes (the 64-bit length), and a
close of its own. The bench servers themselves: tests/test_bench_smoke.py (the workers
comparison runs its relay and fan-out through this client)."""

from __future__ import annotations

import asyncio
import json
import shutil
import time

import pytest
from websockets.asyncio.server import ServerConnection, serve

from bench.cswarm import binary, swarm_process
from tests.support.servers import IN_CI

pytestmark = [pytest.mark.e2e]


def relay(seq: int, t: float, pad: str = "") -> str:
    data = {"to": 1, "src": 7, "seq": seq, "t": t, "pad": pad}
    return json.dumps({"endpoint": "relay", "object": {"className": "BenchRelay", "data": data}})


@pytest.fixture(scope="module")
def built() -> None:
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        if IN_CI:
            pytest.fail("no C compiler: CI=true needs one for the C load client")
        pytest.skip("no C compiler")
    binary()


async def test_the_c_client_reads_what_a_websocket_server_may_send(built) -> None:
    received: list[str] = []
    go = asyncio.Event()
    pong = asyncio.Event()
    ended: asyncio.Future[tuple[int | None, str]] = asyncio.get_running_loop().create_future()

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None and ws.request.path == "/websocket/?uid=1"
        await ws.send(json.dumps({"object": {"className": "BenchReady", "data": {"uid": 1}}}))
        await go.wait()
        now = time.perf_counter()
        text = relay(0, now - 0.002)
        await ws.send(iter([text[:10], text[10:50], text[50:]]))  # three fragments
        await (await ws.ping(b"are you there"))  # answered with its payload
        pong.set()
        await ws.send(relay(1, now, pad="x" * 70_000))  # a 64-bit length
        await ws.send(relay(1, now))  # the same message again: a duplicate
        async for frame in ws:
            received.append(frame)
        ended.set_result((ws.close_code, ws.close_reason))

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        swarm = await swarm_process().start()
        done: list[int] = []
        both = asyncio.Event()

        def on_done(seq: int) -> None:  # every socket of the process has message seq
            done.append(seq)
            if len(done) == 2:
                both.set()

        swarm.on_done = on_done
        try:
            reply = await swarm.request(cmd="open", dialect="streampod",
                                        conns=[[f"ws://127.0.0.1:{port}", 1]])  # fmt: skip
            assert reply == {"opened": 1, "failed": 0, "errors": []}
            assert await swarm.request(cmd="track") == {"tracking": 1}
            go.set()
            await asyncio.wait_for(pong.wait(), 10)
            await asyncio.wait_for(both.wait(), 10)
            assert done == [0, 1]
            stats = await swarm.request(cmd="stats")  # after the duplicate, sent before pong
            assert stats["delivered"] == 2 and stats["duplicates"] == 1, stats
            assert stats["latencies_ms"][0] >= 2.0  # timed from the stamp, on one clock
            assert await swarm.request(cmd="track", mode="relay") == {"tracking": 1}
            start = time.perf_counter()
            sent = await swarm.request(
                cmd="send", senders=1, src0=3, rate=1000.0, seconds=0.01, start=start, targets=[5]
            )
            assert sent["sent"] == 10
            assert await swarm.request(cmd="close") == {"closed": 1}
            assert await asyncio.wait_for(ended, 10) == (1000, "")
        finally:
            await swarm.stop()
    frames = [json.loads(text)["object"]["data"] for text in received]
    assert [(f["to"], f["src"], f["seq"]) for f in frames] == [(5, 3, i) for i in range(10)]


async def test_the_c_client_answers_a_close_from_the_server(built) -> None:
    answered = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        await ws.send(json.dumps({"object": {"className": "BenchReady", "data": {"uid": 2}}}))
        await ws.recv()  # the test's go
        await ws.close(4000, "bye")  # returns once the client has answered
        assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 4000
        answered.set()

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        swarm = await swarm_process().start()
        try:
            reply = await swarm.request(cmd="open", dialect="streampod",
                                        conns=[[f"ws://127.0.0.1:{port}", 2]])  # fmt: skip
            assert reply["opened"] == 1
            start = time.perf_counter()
            sent = await swarm.request(
                cmd="send", senders=1, src0=0, rate=1000.0, seconds=0.001, start=start, targets=[1]
            )
            assert sent["sent"] == 1
            await asyncio.wait_for(answered.wait(), 10)
            assert (await swarm.request(cmd="stats"))["closed"] == 1
            assert await swarm.request(cmd="close") == {"closed": 1}
        finally:
            await swarm.stop()


async def test_the_c_client_reports_a_refused_upgrade(built) -> None:
    swarm = await swarm_process().start()
    try:
        reply = await swarm.request(cmd="open", dialect="streampod",
                                    conns=[["ws://127.0.0.1:9", 1]])  # fmt: skip
        assert reply["opened"] == 0 and reply["failed"] == 1
        assert "connect" in reply["errors"][0]
    finally:
        await swarm.stop()


async def test_the_c_client_answers_an_open_whose_socket_is_refused_before_ready(built) -> None:
    """Helper "reviewer13": a socket closed before its BenchReady (4029, 4401) left the
    open unanswered until the coordinator's timeout."""

    async def handler(ws: ServerConnection) -> None:
        await ws.close(4029, "too many sockets")

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        swarm = await swarm_process().start()
        try:
            reply = await swarm.request(
                cmd="open", dialect="streampod", conns=[[f"ws://127.0.0.1:{port}", 1]], timeout=10
            )
            assert (reply["opened"], reply["failed"]) == (0, 1)
            assert "4029" in reply["errors"][0]
        finally:
            await swarm.stop()


async def test_each_connection_goes_to_its_own_base_and_only_open_ones_count(built) -> None:
    """Helper "reviewer13": every connection went to the last base named, and failed
    opens counted in ``tracking`` and in the quorum of ``done`` (which never came)."""
    seen: dict[int, list[str]] = {}

    async def handler(ws: ServerConnection) -> None:
        port = ws.local_address[1]
        assert ws.request is not None
        seen.setdefault(port, []).append(ws.request.path)
        await ws.send(json.dumps({"object": {"className": "BenchReady", "data": {"uid": 0}}}))
        await ws.send(relay(0, time.perf_counter()))
        await ws.wait_closed()

    async with (
        serve(handler, "127.0.0.1", 0, compression=None) as one,
        serve(handler, "127.0.0.1", 0, compression=None) as two,
    ):
        ports = [s.sockets[0].getsockname()[1] for s in (one, two)]
        swarm = await swarm_process().start()
        done = asyncio.Event()
        swarm.on_done = lambda seq: done.set()
        try:
            assert await swarm.request(cmd="track") == {"tracking": 0}
            reply = await swarm.request(
                cmd="open",
                dialect="streampod",
                conns=[[f"ws://127.0.0.1:{ports[0]}", 1], [f"ws://127.0.0.1:{ports[1]}", 2],
                       ["ws://127.0.0.1:9", 3]],
            )  # fmt: skip
            assert (reply["opened"], reply["failed"]) == (2, 1)
            await asyncio.wait_for(done.wait(), 10)  # seq 0 reached both open sockets
            assert await swarm.request(cmd="close") == {"closed": 3}
        finally:
            await swarm.stop()
    assert seen == {ports[0]: ["/websocket/?uid=1"], ports[1]: ["/websocket/?uid=2"]}
