"""The Python client (streaming.client) against tiny real WebSocket servers.

Each test serves a few lines of ``websockets.serve`` on 127.0.0.1 (a real socket, not
a mock) to put the client in situations daphne will not produce on demand: a pong
held back, a server that stops answering, a refused handshake, a flood of frames.
The client against real daphne processes is in tests/e2e/test_client_e2e.py.
"""

import asyncio
import json
import logging
import subprocess
import sys
from contextlib import asynccontextmanager
from typing import Any

import pytest
from websockets.asyncio.server import serve
from websockets.datastructures import Headers
from websockets.http11 import Response

from streaming.client import (
    Client,
    ClientClosed,
    ConnectionFailed,
    NotConnected,
    RawObject,
    ServerError,
    StreamingConnectionHandler,
    StreamingConnectionStatus,
    StreamOverflow,
    UndecodableMessage,
)
from streaming.client.stream import MessageStream
from streaming.serialization import SerializableEntity
from tests.support.client_status import StatusRecorder as _StatusRecorder
from tests.support.servers import ROOT, free_port

S = StreamingConnectionStatus
PONG = json.dumps({"command": "pong", "args": {}})
WAIT = 20  # seconds: a safety net for awaits on real signals, never a measurement


class Tick(SerializableEntity):
    n: int


def data(endpoint, class_name, **fields):
    return json.dumps({"endpoint": endpoint, "object": {"className": class_name, "data": fields}})


def StatusRecorder(client):
    return _StatusRecorder(client, wait=WAIT)


@asynccontextmanager
async def ws_server(handler, **kwargs):
    """A websockets server on a free port; yields its http:// base URL."""
    async with serve(handler, "127.0.0.1", kwargs.pop("port", 0), **kwargs) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"http://127.0.0.1:{port}/"


async def answer_pings(ws, on_frame=None):
    """A minimal Streampod server loop: pong every ping, hand other frames on."""
    async for text in ws:
        frame = json.loads(text)
        if frame.get("command") == "ping":
            await ws.send(PONG)
        elif on_frame is not None:
            await on_frame(ws, frame)


async def next_item(stream):
    return await asyncio.wait_for(anext(stream), WAIT)


# -- without any server ----------------------------------------------------------------------


def test_imports_no_django_and_no_channels():
    """streaming.client (and its CLI) import and work with Django and channels absent."""
    code = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("django", "channels", "daphne", "rest_framework"):
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, Block())
from streaming.client import Client, StreamingConnectionHandler, NotConnected, ServerError
import streaming.client.cli
client = Client("http://127.0.0.1:1/")
handler = StreamingConnectionHandler(client)
assert client.echo is client.endpoint("echo")
assert not [m for m in sys.modules if m.split(".")[0] in ("django", "channels")]
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_urls_are_derived_from_the_http_url():
    client = Client("http://127.0.0.1:8000")
    assert client.url == "http://127.0.0.1:8000/"
    assert client.websocket_url == "ws://127.0.0.1:8000/websocket/"
    assert client.auth_url == "http://127.0.0.1:8000/api/auth/token/"
    secure = Client("https://example.com/app")
    assert secure.websocket_url == "wss://example.com/app/websocket/"
    assert secure.auth_url == "https://example.com/app/api/auth/token/"
    with pytest.raises(ValueError):
        Client("ftp://example.com/")
    with pytest.raises(ValueError, match="query"):
        Client("http://example.com/?auth=secret")


def test_options_are_validated():
    with pytest.raises(ValueError):
        Client("http://h/", buffer_size=0)
    with pytest.raises(ValueError, match="silence_timeout"):
        Client("http://h/", ping_interval=10, silence_timeout=5)
    with pytest.raises(ValueError):
        StreamingConnectionHandler(Client("http://h/"), min_delay=2, max_delay=1)
    with pytest.raises(ValueError):
        StreamingConnectionHandler(Client("http://h/"), jitter=1.5)


async def test_endpoint_refs_are_shared_and_private_names_are_not_endpoints():
    client = Client("http://127.0.0.1:1/")
    assert client.chat is client.endpoint("chat")
    assert client.chat.name == "chat"
    with pytest.raises(AttributeError):
        client._secret  # noqa: B018
    await client.close()


async def test_send_before_connecting_raises_not_connected():
    client = Client("http://127.0.0.1:1/")
    with pytest.raises(NotConnected, match="disconnected"):
        await client.echo.send_stream_message(Tick(n=1))
    await client.close()
    with pytest.raises(ClientClosed):
        await client.open_streaming_connection()


async def test_a_full_stream_drops_the_oldest_and_reports_the_gap_in_band():
    stream = MessageStream("test", maxsize=3)
    for n in range(5):
        stream._put(n)
    with pytest.raises(StreamOverflow) as gap:
        await anext(stream)
    assert gap.value.dropped == 2
    assert [await anext(stream) for _ in range(3)] == [2, 3, 4]
    stream._put(5)
    assert await anext(stream) == 5  # the gap is reported once
    assert stream.dropped_total == 2


async def test_a_cancelled_read_loses_nothing_and_an_ended_stream_drains_first():
    stream = MessageStream("test", maxsize=10)
    reader = asyncio.ensure_future(anext(stream))
    await asyncio.wait({reader}, timeout=0)  # let it start waiting
    reader.cancel()
    await asyncio.wait({reader})
    stream._put("kept")
    stream._end()
    assert [item async for item in stream] == ["kept"]


def test_backoff_grows_by_factor_up_to_max_with_jitter_below_it():
    client = Client("http://127.0.0.1:1/")
    exact = StreamingConnectionHandler(
        client, min_delay=1, max_delay=10, factor=3, jitter=0.5, rng=lambda: 0.0
    )
    assert [exact.delay_for(n) for n in range(1, 6)] == [1, 3, 9, 10, 10]
    assert exact.delay_for(10_000) == 10  # no overflow
    jittered = StreamingConnectionHandler(
        client, min_delay=1, max_delay=10, factor=3, jitter=0.5, rng=lambda: 1.0
    )
    assert [jittered.delay_for(n) for n in range(1, 4)] == [0.5, 1.5, 4.5]


async def test_serverpods_handler_shape_reports_every_change_and_counts_down():
    """listener(state) on each change and each second while waiting; connect, dispose."""
    from streaming.client import StreamingConnectionHandlerState as State

    client = Client(f"http://127.0.0.1:{free_port()}/", connect_timeout=2)  # nothing listens
    states: list[State] = []
    counted_down = asyncio.Event()

    def listener(state):
        states.append(state)
        if state.retry_in_seconds == 1:
            counted_down.set()

    handler = StreamingConnectionHandler(
        client, min_delay=2.5, max_delay=2.5, jitter=0, listener=listener
    )
    handler.connect()
    async with asyncio.timeout(10):  # a failure guard, not a synchronisation
        await counted_down.wait()
    await handler.dispose()
    assert states[0] == State("connecting")
    waiting = [s.retry_in_seconds for s in states if s.status == "waiting_to_retry"]
    assert waiting[:3] == [3, 2, 1]  # 2.5 s shown as 3, then each second
    assert states[-1] == State("disconnected")
    assert handler.dispose() is handler.dispose()  # one close, however often called
    await client.close()


# -- against tiny real servers --------------------------------------------------------------


async def test_connected_only_after_the_first_pong_and_the_token_in_a_header():
    got_ping = asyncio.Event()
    release_pong = asyncio.Event()
    requests = []

    async def handler(ws):
        requests.append(ws.request)
        frame = json.loads(await ws.recv())
        assert frame == {"command": "ping", "args": {}}
        got_ping.set()
        await release_pong.wait()
        await ws.send(PONG)
        await answer_pings(ws)

    async with ws_server(handler) as url:
        client = Client(url, auth_key="Token abc123")
        statuses = StatusRecorder(client)
        opening = asyncio.ensure_future(client.open_streaming_connection())
        try:
            await asyncio.wait_for(got_ping.wait(), WAIT)
            assert client.streaming_connection_status is S.connecting
            assert not opening.done()
        finally:
            release_pong.set()  # a failed assertion must not leave the server waiting
        await asyncio.wait_for(opening, WAIT)
        assert client.streaming_connection_status is S.connected
        await client.close_streaming_connection()
        assert statuses.seen == [S.connecting, S.connected, S.disconnected]
        assert client.disconnect_reason.by_client
        await client.close()
    request = requests[0]
    assert request.path == "/websocket/"  # no credentials in the URL
    assert request.headers["Authorization"] == "Token abc123"


async def test_listeners_fire_only_on_change_and_a_raising_listener_is_logged(caplog):
    async def handler(ws):
        await answer_pings(ws)

    async with ws_server(handler) as url:
        client = Client(url)
        statuses = StatusRecorder(client)

        def broken(status):
            raise RuntimeError("listener bug")

        client.add_streaming_connection_status_listener(broken)
        with caplog.at_level(logging.ERROR, logger="streaming.client"):
            await client.open_streaming_connection()
            await client.open_streaming_connection()  # already connected: no change
        assert statuses.seen == [S.connecting, S.connected]
        assert "listener bug" in caplog.text
        client.remove_streaming_connection_status_listener(broken)
        client.remove_streaming_connection_status_listener(broken)  # harmless
        await client.close()
        assert statuses.seen == [S.connecting, S.connected, S.disconnected]


async def test_the_heartbeat_pings_and_a_live_server_keeps_it_connected():
    pings = 0
    three_pings = asyncio.Event()

    async def handler(ws):
        nonlocal pings
        async for text in ws:
            if json.loads(text).get("command") == "ping":
                pings += 1
                await ws.send(PONG)
                if pings >= 4:  # the handshake ping and three heartbeats
                    three_pings.set()

    async with ws_server(handler) as url:
        client = Client(url, ping_interval=0.05, silence_timeout=2.0)
        await client.open_streaming_connection()
        await asyncio.wait_for(three_pings.wait(), WAIT)
        assert client.streaming_connection_status is S.connected
        await client.close()


async def test_silence_means_a_dead_connection():
    """The server answers the first ping and then nothing, though its socket stays up."""
    silent = asyncio.Event()

    async def handler(ws):
        await ws.recv()
        await ws.send(PONG)
        async for _ in ws:  # WebSocket pings are still answered by the library
            silent.set()

    async with ws_server(handler) as url:
        client = Client(url, ping_interval=0.05, silence_timeout=0.3)
        statuses = StatusRecorder(client)
        await client.open_streaming_connection()
        await statuses.wait_for(S.disconnected)
        assert silent.is_set()  # heartbeat pings reached the server, unanswered
        assert statuses.seen == [S.connecting, S.connected, S.disconnected]
        assert "heartbeat" in client.disconnect_reason.message
        assert not client.disconnect_reason.by_client
        with pytest.raises(NotConnected):
            await client.echo.send_stream_message(Tick(n=1))
        await client.close()


async def test_no_pong_fails_the_attempt():
    async def handler(ws):
        async for _ in ws:
            pass

    async with ws_server(handler) as url:
        client = Client(url, connect_timeout=0.3, ping_interval=0.1, silence_timeout=1)
        statuses = StatusRecorder(client)
        with pytest.raises(ConnectionFailed, match="no pong"):
            await client.open_streaming_connection()
        assert statuses.seen == [S.connecting, S.disconnected]
        await client.close()


async def test_buffer_full_drops_oldest_and_the_stream_reports_the_gap():
    async def handler(ws):
        async def on_frame(ws, frame):
            for n in range(5):
                await ws.send(data("ticks", "Tick", n=n))
            await ws.send(data("done", "Tick", n=-1))

        await answer_pings(ws, on_frame)

    async with ws_server(handler) as url:
        client = Client(url, buffer_size=3)
        await client.open_streaming_connection()
        await client.go.send_stream_message(Tick(n=0))
        assert await next_item(client.done.stream) == Tick(n=-1)  # everything has arrived
        with pytest.raises(StreamOverflow) as gap:
            await next_item(client.ticks.stream)
        assert gap.value.dropped == 2
        assert [await next_item(client.ticks.stream) for _ in range(3)] == [
            Tick(n=2),
            Tick(n=3),
            Tick(n=4),
        ]
        assert client.streaming_connection_status is S.connected  # the socket is unharmed
        await client.close()


async def test_error_frames_and_undecodable_frames_are_reported():
    async def handler(ws):
        async def on_frame(ws, frame):
            await ws.send(
                json.dumps(
                    {
                        "command": "error",
                        "args": {
                            "code": "invalid_message",
                            "message": "Invalid Tick",
                            "endpoint": "ticks",
                            "id": "m1",
                            "errors": [{"path": "n", "reason": "Input should be a valid integer"}],
                        },
                    }
                )
            )
            await ws.send(data("ticks", "NoSuchClass", x=1))
            await ws.send(data("ticks", "Tick", n="not an int"))
            await ws.send(data("ticks", "Tick", n=7))

        await answer_pings(ws, on_frame)

    async with ws_server(handler) as url:
        seen = []
        client = Client(url, on_error=seen.append)
        await client.open_streaming_connection()
        await client.ticks.send_stream_message(Tick(n=1), id="m1")
        assert await next_item(client.ticks.stream) == Tick(n=7)  # the bad ones are not on it
        error = await next_item(client.errors)
        assert isinstance(error, ServerError)
        assert (error.code, error.message, error.endpoint, error.id) == (
            "invalid_message",
            "Invalid Tick",
            "ticks",
            "m1",
        )
        assert error.errors == [{"path": "n", "reason": "Input should be a valid integer"}]
        unknown = await next_item(client.errors)
        invalid = await next_item(client.errors)
        assert isinstance(unknown, UndecodableMessage)
        assert (unknown.code, unknown.endpoint) == ("unknown_class", "ticks")
        assert (invalid.code, invalid.errors[0]["path"]) == ("invalid_message", "n")
        assert seen == [error, unknown, invalid]
        assert client.is_connected
        await client.close()


async def test_a_message_of_an_unknown_class_is_logged_while_nobody_looks(caplog):
    """Helper "serverpod10": a program that had not imported a message's class never saw
    the message, and nothing was logged (it went to ``client.errors`` only), so it looked
    like a lost delivery. Logged once a kind (a WARNING) while there is no ``on_error`` and
    nobody reads ``client.errors``; not with either."""

    async def handler(ws):
        async def on_frame(ws, frame):
            for _ in range(3):
                await ws.send(data("ticks", "NoSuchClass", x=1))
            await ws.send(data("ticks", "Tick", n=7))

        await answer_pings(ws, on_frame)

    async with ws_server(handler) as url:
        for on_error in (None, [].append):
            caplog.clear()
            client = Client(url, on_error=on_error)
            await client.open_streaming_connection()
            with caplog.at_level(logging.WARNING, logger="streaming.client"):
                await client.ticks.send_stream_message(Tick(n=1))
                assert await next_item(client.ticks.stream) == Tick(n=7)
            warned = [r for r in caplog.records if "NoSuchClass" in r.getMessage()]
            assert len(warned) == (1 if on_error is None else 0), caplog.text
            await client.close()


async def test_a_raw_client_needs_no_classes():
    async def handler(ws):
        async def on_frame(ws, frame):
            await ws.send(json.dumps(frame))  # echo

        await answer_pings(ws, on_frame)

    async with ws_server(handler) as url:
        client = Client(url, raw=True)
        await client.open_streaming_connection()
        await client.echo.send_stream_message(RawObject("Unregistered", {"a": [1, 2]}))
        assert await next_item(client.echo.stream) == RawObject("Unregistered", {"a": [1, 2]})
        await client.close()


async def test_close_ends_every_stream_after_what_was_buffered():
    async def handler(ws):
        async def on_frame(ws, frame):
            await ws.send(data("ticks", "Tick", n=1))
            await ws.send(data("done", "Tick", n=0))

        await answer_pings(ws, on_frame)

    async with ws_server(handler) as url:
        client = Client(url)
        await client.open_streaming_connection()
        await client.go.send_stream_message(Tick(n=0))
        await next_item(client.done.stream)
        reader = asyncio.ensure_future(_collect(client.done.stream))
        await client.close()
        assert [m async for m in client.ticks.stream] == [Tick(n=1)]
        assert await asyncio.wait_for(reader, WAIT) == []
        assert [e async for e in client.errors] == []


async def _collect(stream):
    return [item async for item in stream]


async def test_backoff_grows_while_failing_and_resets_after_a_success():
    port = free_port()  # nothing listens here yet: attempts are refused
    client = Client(f"http://127.0.0.1:{port}/", connect_timeout=5)
    before, after = [], []  # delays before and after the first success
    four_failures, retry_after_success = asyncio.Event(), asyncio.Event()

    def record(status):
        if status is S.waiting_to_retry:
            (after if S.connected in statuses.seen else before).append(client.retry_in_seconds)
            if len(before) == 4:
                four_failures.set()
            if after:
                retry_after_success.set()

    statuses = StatusRecorder(client)
    client.add_streaming_connection_status_listener(record)
    # stable_after=0: the connection counts as one that held, however short (with the
    # default, one closed within 10 s is a failure: test_client_restart.py).
    handler = StreamingConnectionHandler(
        client,
        min_delay=0.05,
        max_delay=0.2,
        factor=2,
        jitter=0.5,
        rng=lambda: 0.0,
        stable_after=0,
    )
    drop = asyncio.Event()

    async def server_handler(ws):
        await ws.recv()
        await ws.send(PONG)
        await drop.wait()
        await ws.close(1001)

    async with handler:
        await asyncio.wait_for(four_failures.wait(), WAIT)
        async with ws_server(server_handler, port=port):
            try:
                await statuses.wait_for(S.connected)
            finally:
                drop.set()
            await asyncio.wait_for(retry_after_success.wait(), WAIT)
    assert before[:4] == pytest.approx([0.05, 0.1, 0.2, 0.2], abs=0.01)
    assert after[0] == pytest.approx(0.05, abs=0.01)  # reset by the success
    assert statuses.seen[:2] == [S.connecting, S.waiting_to_retry]
    assert statuses.seen[-1] is S.disconnected
    await client.close()


async def test_a_refused_handshake_stops_the_handler():
    def refuse(connection, request):
        return Response(403, "Forbidden", Headers(), b"no\n")

    async def handler(ws):
        raise AssertionError("never reached")

    async with ws_server(handler, process_request=refuse) as url:
        client = Client(url)
        statuses = StatusRecorder(client)
        handler = StreamingConnectionHandler(client, min_delay=0.01)
        handler.start()
        await asyncio.wait_for(handler.wait_closed(), WAIT)
        assert statuses.seen == [S.connecting, S.disconnected]
        assert client.disconnect_reason.http_status == 403
        assert client.disconnect_reason.is_auth_failure
        await client.close()


async def test_close_while_waiting_to_retry_stops_the_handler():
    client = Client(f"http://127.0.0.1:{free_port()}/")
    statuses = StatusRecorder(client)
    handler = StreamingConnectionHandler(client, min_delay=30, max_delay=60)
    handler.start()
    await statuses.wait_for(S.waiting_to_retry)
    assert 15 <= client.retry_in_seconds <= 30
    await client.close_streaming_connection()
    await asyncio.wait_for(handler.wait_closed(), WAIT)
    assert statuses.seen == [S.connecting, S.waiting_to_retry, S.disconnected]
    assert client.disconnect_reason.by_client
    assert client.retry_in_seconds is None
    await client.close()


async def test_values_past_the_credit_fail_the_call_instead_of_filling_memory():
    """A server that ignores the credit the client granted. Seen (a client robustness
    review): with credit 64 and a reader that stopped after one value, 199,999 values
    (32.7 MB) waited in the client. Expected: the call fails (``rate_limited``) at the
    first value past the credit, and the client sends ``cancel``."""
    from websockets.asyncio.server import serve

    from streaming.client import CallFailed, Client
    from tests.support.fake_servers import credit_ignoring

    cancelled = asyncio.get_running_loop().create_future()

    flooding = credit_ignoring(cancelled)

    async with serve(flooding, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        async with Client(f"http://127.0.0.1:{port}/") as client:
            await client.open_streaming_connection()
            call = client.endpoint("numbers").count(credit=64)
            stream = aiter(call)
            assert await anext(stream) == 0  # then reads nothing more
            while call._outcome is None:
                call._changed.clear()
                await asyncio.wait_for(call._changed.wait(), 10)
            kind, error = call._outcome
            assert kind == "error" and isinstance(error, CallFailed), call._outcome
            assert error.code == "rate_limited"
            assert await asyncio.wait_for(cancelled, 10) == call.id
            assert len(call._values) <= 64


async def test_a_value_nested_too_deeply_fails_its_call_not_the_connection():
    """Helper "attacker12": a hostile server's value nested 950 levels deep raised
    ``RecursionError`` in the client's reader, which ended the connection (every call:
    ``NotConnected``). The call fails with ``UndecodableMessage``; the connection lives.
    (100,000 levels: past what any Python's parser takes, so the frame as a whole cannot
    be decoded, and the call it belongs to is failed. At 950, Python 3.11 failed in
    reading the value, 3.12 read it: both answers are covered by the same code.)"""
    from streaming.client import Client, UndecodableMessage
    from tests.support.fake_servers import answering

    deep = "[" * 100_000 + "]" * 100_000
    async with serve(answering(deep), "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        async with Client(f"http://127.0.0.1:{port}/") as client:
            await client.open_streaming_connection()
            for returns in ({}, {"returns": list[Any]}):
                with pytest.raises(UndecodableMessage, match="nested too deeply"):
                    await client.endpoint("e").m(**returns)
            assert client.streaming_connection_status.name == "connected"


async def test_messages_for_ever_new_endpoint_names_do_not_fill_the_client():
    """A server that sends each message to another endpoint name. Seen (a client robustness
    review): 100,000 names made 100,001 streams (227 MB), whatever ``buffer_size``.
    Expected: past MAX_ENDPOINTS streams, a message for a new name is dropped and reported
    on ``errors`` (``unknown_endpoint``)."""
    from streaming.client import Client
    from streaming.client.client import MAX_ENDPOINTS
    from tests.support.fake_servers import many_endpoints

    async with serve(many_endpoints(MAX_ENDPOINTS + 100), "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        async with Client(f"http://127.0.0.1:{port}/", raw=True) as client:
            await client.open_streaming_connection()
            stream = aiter(client.endpoint("e0").stream)
            while (await asyncio.wait_for(anext(stream), 10)).data["n"] != -1:
                pass
            assert len(client._refs) == MAX_ENDPOINTS
            errors = []
            while len(errors) < 100:
                errors.append(await asyncio.wait_for(anext(aiter(client.errors)), 10))
            assert {error.code for error in errors} == {"unknown_endpoint"}


async def test_a_server_that_talks_but_never_reads_is_dropped_and_a_blocked_send_fails():
    """A review found a send that waited for ever while the status stayed ``connected``:
    the server kept sending (so the heartbeat, which counted any frame as life, was
    content) but read nothing, so the client's frames filled the TCP buffers. Expected:
    a send stuck for ``silence_timeout`` drops the link and raises NotConnected."""
    from tests.support.fake_servers import deaf_chatter

    async with await deaf_chatter() as server:
        port = server.sockets[0].getsockname()[1]
        async with Client(
            f"http://127.0.0.1:{port}/", raw=True, ping_interval=0.2, silence_timeout=1.0
        ) as client:
            ended = asyncio.Event()
            client.add_streaming_connection_status_listener(
                lambda status: status is StreamingConnectionStatus.disconnected and ended.set()
            )
            await client.open_streaming_connection()
            big = RawObject("Nx", {"text": "x" * 60_000})
            with pytest.raises(NotConnected):
                async with asyncio.timeout(30):  # a failure guard: it hung for ever
                    while True:
                        await client.endpoint("chat").send_stream_message(big)
            async with asyncio.timeout(10):  # a failure guard
                await ended.wait()
            assert client.disconnect_reason is not None
            assert "read nothing" in client.disconnect_reason.message


async def test_a_close_frame_without_the_tcp_close_ends_the_link_after_the_close_timeout():
    """A server (or a middlebox) that sends its close frame (1012) but never closes TCP.
    Seen (a client review): the client stayed ``connected`` until its next ping (20 s at
    the defaults), and a send meanwhile blocked. Expected: the link ends within the close
    timeout, with the server's code, and the handler reconnects."""
    from streaming.client.client import _CLOSE_TIMEOUT
    from tests.support.fake_servers import lingering_closer

    connections: list[asyncio.StreamWriter] = []
    server = await lingering_closer(connections)
    try:
        port = server.sockets[0].getsockname()[1]
        # A ping far beyond the failure guard: only the close timeout can end the link.
        client = Client(
            f"http://127.0.0.1:{port}/", raw=True, ping_interval=600, silence_timeout=1200
        )
        losses: list[int | None] = []
        back = asyncio.Event()

        def record(status: StreamingConnectionStatus) -> None:
            if status is StreamingConnectionStatus.waiting_to_retry:
                losses.append(client.disconnect_reason.code)
            elif status is StreamingConnectionStatus.connected and losses:
                back.set()

        client.add_streaming_connection_status_listener(record)
        async with StreamingConnectionHandler(client, restart_spread=0):
            async with asyncio.timeout(_CLOSE_TIMEOUT * 3):  # a failure guard: it hung
                await back.wait()
        await client.close()
        assert losses[:1] == [1012]
        assert len(connections) >= 2
    finally:
        for writer in connections:
            writer.transport.abort()
        server.close()


async def test_a_frame_too_large_for_the_client_is_reported_as_1009():
    """websockets fails the connection with 1009 when the server sends more than its
    ``max_size`` (1 MiB); the client reported it as 1006, "the connection was lost"."""
    from tests.support.fake_servers import oversize_frame

    async with serve(oversize_frame(2**20 + 1), "127.0.0.1", 0, max_size=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        async with Client(f"http://127.0.0.1:{port}/", raw=True) as client:
            ended = asyncio.Event()
            client.add_streaming_connection_status_listener(
                lambda status: status is StreamingConnectionStatus.disconnected and ended.set()
            )
            await client.open_streaming_connection()
            async with asyncio.timeout(10):  # a failure guard
                await ended.wait()
            assert client.disconnect_reason.code == 1009, client.disconnect_reason
            assert "max_size" in client.disconnect_reason.message


async def test_frames_keep_a_link_alive_while_its_pongs_are_late():
    """A review of the first fix for the stuck send (dropping a link whose ping went
    unanswered for ``silence_timeout``): the server's pong waits behind every frame it
    queued, so a burst over a slow link dropped healthy connections (697 of 900
    frames, at the defaults). Frames arriving keep the link; only a stuck send drops it."""
    from tests.support.fake_servers import late_ponger

    async with serve(late_ponger(), "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        async with Client(
            f"http://127.0.0.1:{port}/", raw=True, ping_interval=0.2, silence_timeout=1.0
        ) as client:
            await client.open_streaming_connection()
            stream = aiter(client.endpoint("chat").stream)
            while (await asyncio.wait_for(anext(stream), 10)).data["n"] < 150:  # 3 s
                pass
            assert client.streaming_connection_status is StreamingConnectionStatus.connected
            assert client.disconnect_reason is None


def test_an_errors_str_names_its_first_fields_and_tolerates_odd_ones():
    """What a traceback shows: the message and the first failing fields (helper
    "serverpod12"); a server's odd ``errors`` entries are skipped, not a crash in the
    logging of the error (helper "reviewer12": ``AttributeError``)."""
    from streaming.client import CallFailed, ServerError

    odd = ServerError.from_args(
        {"code": "invalid_message", "message": "bad", "errors": ["x", None]}
    )
    assert str(odd) == "bad"
    errors = [{"path": f"p{i}", "reason": "no"} for i in range(5)]
    failed = CallFailed("invalid_message", "Invalid.", errors=errors)
    assert str(failed) == "Invalid. (p0: no; p1: no; p2: no; and 2 more)"
    assert failed.message == "Invalid."
