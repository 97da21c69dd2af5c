"""The Python client on a graceful shutdown: close code 1012 means "retry soon": after a
random wait of up to ``restart_spread`` (so that one server's clients do not all return
in the same instant), with no backoff delay and no failure counted; other codes keep the
backoff. Against a tiny real
``websockets`` server (as tests/test_client_unit.py); against real servers being
restarted: tests/e2e/test_graceful.py.
"""

import asyncio
import json
import math

import pytest
from websockets.asyncio.server import serve

from streaming.client import Client, StreamingConnectionHandler, StreamingConnectionStatus
from streaming.client.status import DisconnectReason
from tests.support.fake_servers import advising_restarts

S = StreamingConnectionStatus
PONG = json.dumps({"command": "pong", "args": {}})
WAIT = 20  # seconds: a safety net for awaits, never a measurement


async def test_1012_reconnects_within_the_restart_spread_and_1001_still_backs_off():
    codes = iter([1012, 1012, 1001])
    accepted = 0
    delays: list[tuple[int | None, float | None]] = []  # (close code, retry_in_seconds)
    backing_off = asyncio.Event()

    async def server_handler(ws):
        nonlocal accepted
        accepted += 1
        await ws.recv()  # the first ping
        await ws.send(PONG)
        code = next(codes, None)
        if code is None:
            await ws.wait_closed()
            return
        await ws.close(code)

    async with serve(server_handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        client = Client(f"http://127.0.0.1:{port}/")

        def record(status):
            if status is S.waiting_to_retry:
                delays.append((client.disconnect_reason.code, client.retry_in_seconds))
                if client.disconnect_reason.code == 1001:
                    backing_off.set()

        client.add_streaming_connection_status_listener(record)
        # A minimum delay far beyond the test's wait: only "no backoff" can reconnect.
        # The draw (0.25) places each 1012's wait at a quarter of the spread. Every
        # connection counts as one that held (stable_after=0), so each 1012 is free.
        handler = StreamingConnectionHandler(
            client,
            min_delay=60,
            max_delay=120,
            jitter=0,
            restart_spread=0.4,
            stable_after=0,
            rng=lambda: 0.25,
        )
        handler.start()
        await asyncio.wait_for(backing_off.wait(), WAIT)
        assert accepted == 3  # two 1012 closes, each followed soon by a new connection
        assert [code for code, _ in delays] == [1012, 1012, 1001]
        # retry_in_seconds counts down from the draw: read a moment after it was set
        assert delays[0][1] == pytest.approx(0.1, abs=0.01)
        assert delays[1][1] == pytest.approx(0.1, abs=0.01)
        assert delays[2][1] > 30  # the first failure's backoff, not shortened by the 1012s
        assert client.disconnect_reason.code == 1001
        await handler.close()
        await client.close()


async def test_a_1012_with_no_restart_spread_reconnects_at_once():
    accepted = 0
    back = asyncio.Event()

    async def server_handler(ws):
        nonlocal accepted
        accepted += 1
        await ws.recv()
        await ws.send(PONG)
        if accepted == 1:
            await ws.close(1012)
            return
        back.set()
        await ws.wait_closed()

    async with serve(server_handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        client = Client(f"http://127.0.0.1:{port}/")
        waits: list[float | None] = []
        client.add_streaming_connection_status_listener(
            lambda status: status is S.waiting_to_retry and waits.append(client.retry_in_seconds)
        )
        handler = StreamingConnectionHandler(client, restart_spread=0, rng=lambda: 1.0)
        handler.start()
        await asyncio.wait_for(back.wait(), WAIT)
        assert waits == [0.0]
        await handler.close()
        await client.close()


async def test_a_1012_waits_as_long_as_the_servers_close_reason_advises():
    """A server that closes 19,000 sockets at once cannot take them all back within a
    second: its 1012 says when to come back ("restart after=A spread=S", RESTART_RATE).
    The client waits A plus a random moment of the larger of S and its own spread."""
    advising = advising_restarts(["restart after=0.3 spread=2", "restart spread=0.1"])
    waits: list[float | None] = []
    two = asyncio.Event()

    async with serve(advising, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        client = Client(f"http://127.0.0.1:{port}/")

        def record(status):
            if status is S.waiting_to_retry:
                waits.append(client.retry_in_seconds)
                if len(waits) == 2:
                    two.set()

        client.add_streaming_connection_status_listener(record)
        handler = StreamingConnectionHandler(
            client, restart_spread=0.4, stable_after=0, rng=lambda: 0.5
        )
        handler.start()
        await asyncio.wait_for(two.wait(), WAIT)
        assert client.disconnect_reason.close_reason == "restart spread=0.1"
        await handler.close()
        await client.close()
    # 0.3 + 2 x 0.5; then the client's own 0.4 (larger than the advised 0.1) x 0.5.
    assert waits == pytest.approx([1.3, 0.2], abs=0.01)


async def restarting(ws):
    """A server that closes every connection with 1012 right after its pong."""
    await ws.recv()
    await ws.send(PONG)
    await ws.close(1012)


async def test_1012s_in_a_row_on_connections_that_did_not_hold_back_off():
    """A server that closes every connection with 1012 right after its pong (one that
    keeps restarting; a Redis link that keeps dropping). Seen (a client review): the
    client came back 562 times a second with restart_spread=0, 2.8 at the default, for
    ever. Expected: the first 1012 is free, the next ones back off like failures."""
    waits: list[float | None] = []
    six = asyncio.Event()

    async with serve(restarting, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        client = Client(f"http://127.0.0.1:{port}/")

        def record(status):
            if status is S.waiting_to_retry:
                waits.append(client.retry_in_seconds)
                if len(waits) == 6:
                    six.set()

        client.add_streaming_connection_status_listener(record)
        handler = StreamingConnectionHandler(
            client, min_delay=0.05, max_delay=0.4, factor=2, jitter=0, restart_spread=0
        )
        handler.start()
        await asyncio.wait_for(six.wait(), WAIT)
        await handler.close()
        await client.close()
    assert waits[:6] == pytest.approx([0, 0.05, 0.1, 0.2, 0.4, 0.4], abs=0.01)


@pytest.mark.parametrize("code", [1000, 1011, 4008, 4013])
async def test_connections_closed_once_up_back_off(code):
    """A server that closes every connection right after its pong, with any code but 1012
    (shedding load with 4013, 4008 for a rate limit, 1011 on an error). Seen (helper
    "chaos10"): the count of failures was reset as soon as a connection came up, so every
    client came back about 3 times a second, for ever. Expected: a connection that did not
    hold for ``stable_after`` counts as a failure."""
    waits: list[float | None] = []
    five = asyncio.Event()

    async def closing(ws):
        await ws.recv()
        await ws.send(PONG)
        await ws.close(code)

    async with serve(closing, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        client = Client(f"http://127.0.0.1:{port}/")

        def record(status):
            if status is S.waiting_to_retry:
                waits.append(client.retry_in_seconds)
                if len(waits) == 5:
                    five.set()

        client.add_streaming_connection_status_listener(record)
        handler = StreamingConnectionHandler(
            client, min_delay=0.05, max_delay=0.4, factor=2, jitter=0
        )
        handler.start()
        await asyncio.wait_for(five.wait(), WAIT)
        await handler.close()
        await client.close()
    assert waits[:5] == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.4], abs=0.01)


async def test_a_handler_that_fails_leaves_the_client_disconnected(caplog):
    """Seen (a client review): after "stopped on an unexpected error" the client stayed
    ``waiting_to_retry`` for good, its countdown at 0, with nothing retrying."""
    async with serve(restarting, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        client = Client(f"http://127.0.0.1:{port}/")
        # A draw that is not a number: the wait cannot be counted down (a bug's stand-in).
        handler = StreamingConnectionHandler(client, rng=lambda: math.nan)
        handler.start()
        await asyncio.wait_for(handler.wait_closed(), WAIT)
        assert "stopped on an unexpected error" in caplog.text
        assert client.streaming_connection_status is S.disconnected
        assert client.retry_in_seconds is None
        await client.close()


def test_restart_spread_and_stable_after_must_be_finite():
    client = Client("http://127.0.0.1:9/")
    for bad in (-1, math.inf, math.nan):
        with pytest.raises(ValueError, match="restart_spread"):
            StreamingConnectionHandler(client, restart_spread=bad)
        with pytest.raises(ValueError, match="stable_after"):
            StreamingConnectionHandler(client, stable_after=bad)


def test_1012_is_described_as_a_restart_and_is_not_an_auth_failure():
    reason = DisconnectReason.from_close(1012)
    assert reason.message == "the server is restarting (close code 1012)"
    assert reason.is_service_restart
    assert not reason.is_auth_failure
    assert not DisconnectReason.from_close(1001).is_service_restart


async def test_a_1012_before_the_connection_is_up_is_backed_off():
    """A draining server may accept a handshake and close it at once with 1012 (daphne's,
    streaming/shutdown.py). Seen (a client robustness review): every such close was retried
    at once, 5,849 attempts in 4 s against a server doing that for its whole drain.
    Expected: a 1012 before the first pong is a failed attempt, backed off like any other;
    only a 1012 on a connection that was up is retried at once."""
    accepted = 0
    backing_off = asyncio.Event()
    delays: list[float | None] = []

    async def refusing(ws):
        nonlocal accepted
        accepted += 1
        await ws.close(1012)  # before any pong

    async with serve(refusing, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        client = Client(f"http://127.0.0.1:{port}/")

        def record(status):
            if status is S.waiting_to_retry:
                delays.append(client.retry_in_seconds)
                backing_off.set()

        client.add_streaming_connection_status_listener(record)
        handler = StreamingConnectionHandler(client, min_delay=60, max_delay=120, jitter=0)
        handler.start()
        await asyncio.wait_for(backing_off.wait(), WAIT)
        assert accepted == 1
        assert client.disconnect_reason.code == 1012
        assert delays[0] > 30  # the first failure's backoff, not an immediate retry
        await handler.close()
        await client.close()
