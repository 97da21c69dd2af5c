"""Graceful restarts against real servers (streaming/shutdown.py, docs/deployment.md).

* SIGTERM to a daphne or uvicorn process with open sockets: every client sees close
  code 1012 (not 1006 or 1001), a ``stream_closed`` hook still running finishes (it
  writes a marker file the test reads), a new handshake during the drain is refused,
  and the process exits within ``SHUTDOWN_GRACE_PERIOD`` plus a margin.
* A rolling restart (uvicorn, then daphne): two servers sharing a private Redis behind
  nginx, Python clients chatting through it all along; server A gets SIGTERM and A'
  starts on its port. The clients that were on A are back (through nginx, on B) at
  once, every message the database holds reached its recipient, and the reconnect times
  are measured and printed (the issue's bound is 2 s; the assertion is generous, CI is
  loaded).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, quote

import pytest
import websockets

from streaming.endpoint import Endpoint
from tests.support.servers import ROOT, SERVERS, free_port

#: Seconds the ``linger`` endpoint's stream_closed takes (within CLOSE_GRACE_PERIOD, 5 s).
LINGER = 1.0
SHUTDOWN_GRACE = 10.0  # SHUTDOWN_GRACE_PERIOD's default
MARGIN = 30.0  # process start-up and exit on a loaded CI machine
WAIT = 30  # seconds: a safety net for awaits on real signals, never a measurement


class LingerEndpoint(Endpoint):
    """Wire name ``linger``. For a socket opened with ``?marker=<path>``, stream_closed
    takes ``LINGER`` seconds, then writes "finished" to that path."""

    async def stream_closed(self, session):
        query = parse_qs(session.scope.get("query_string", b"").decode("latin-1"))
        marker = query.get("marker")
        if marker:
            await asyncio.sleep(LINGER)  # a hook still busy when its socket closes
            await asyncio.to_thread(Path(marker[0]).write_text, "finished")


@pytest.fixture(params=["daphne", "uvicorn"])
def graceful_server(request, django_db_setup, django_db_blocker):
    """A fresh server (this test stops it) with the ``linger`` endpoint."""
    srv = SERVERS[request.param](env={"DJANGO_SETTINGS_MODULE": "tests.e2e_graceful_settings"})
    with srv:
        yield srv


async def ping(ws) -> None:
    await ws.send(json.dumps({"command": "ping", "args": {}}))
    async with asyncio.timeout(WAIT):
        while json.loads(await ws.recv()) != {"command": "pong", "args": {}}:
            pass  # greetings of the e2e endpoints on open


async def close_code(ws) -> int | None:
    """The close code the server sent (waits for the close)."""
    await asyncio.wait_for(ws.wait_closed(), WAIT)
    return ws.close_code


async def handshake_while_draining(reader, writer) -> int:
    """Send a WebSocket handshake on an open TCP connection: the HTTP status if refused,
    else the code of the close frame that follows the 101."""
    try:
        writer.write(
            b"GET /websocket/ HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        status = int(head.split(b" ", 2)[1])
        if status != 101:
            return status
        first = await asyncio.wait_for(reader.readexactly(2), WAIT)
        payload = await asyncio.wait_for(reader.readexactly(first[1] & 0x7F), WAIT)
        assert first[0] & 0x0F == 0x8, (first, payload)  # a close frame, nothing before it
        return int.from_bytes(payload[:2], "big")
    finally:
        writer.close()


async def test_sigterm_closes_with_1012_lets_hooks_finish_refuses_new_sockets_and_exits(
    graceful_server, tmp_path
):
    srv = graceful_server
    marker = tmp_path / "stream_closed"
    lingering = await websockets.connect(
        f"{srv.ws_url}?marker={quote(str(marker))}", open_timeout=WAIT
    )
    others = [await websockets.connect(srv.ws_url, open_timeout=WAIT) for _ in range(2)]
    sockets = [lingering, *others]
    for ws in sockets:
        await ping(ws)
    # uvicorn: at the first socket (its handler is installed after the application loads).
    assert await asyncio.to_thread(srv.output.wait_for, "graceful shutdown installed", WAIT), (
        srv.logs()
    )

    # A TCP connection accepted before the SIGTERM, whose handshake comes during the drain
    # (as one through a proxy can): never a final refusal (HTTP 403: clients give up).
    early = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", srv.port), WAIT)

    signalled = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    codes = await asyncio.gather(*(close_code(ws) for ws in sockets))
    assert codes == [1012, 1012, 1012], srv.logs()
    # Each says when to come back: within 3 sockets / RESTART_RATE (200 a second).
    assert [ws.close_reason for ws in sockets] == ["restart spread=0.015"] * 3
    assert await handshake_while_draining(*early) == (
        503 if srv.name == "uvicorn" else 1012
    ), srv.logs()

    # The lingering hook holds the drain open: a new handshake now is refused (the
    # listening socket is closed: refused at TCP; or, if one got through, HTTP 503 under
    # uvicorn, accepted and closed at once with 1012 under daphne: never a final 403).
    assert not marker.exists()
    try:
        late = await websockets.connect(srv.ws_url, open_timeout=WAIT)
    except websockets.InvalidStatus as refused:
        assert refused.response.status_code == 503, refused
    except OSError:
        pass  # refused at TCP
    else:
        assert await close_code(late) == 1012, srv.logs()

    returncode = await asyncio.to_thread(srv.proc.wait, SHUTDOWN_GRACE + MARGIN)
    elapsed = time.monotonic() - signalled
    assert marker.read_text() == "finished"  # the hook finished before the exit
    logs = srv.logs()
    assert "drained: 3 sockets closed with 1012" in logs, logs
    if srv.name == "uvicorn":
        # uvicorn re-raises the signal once its own shutdown is done: "killed by SIGTERM".
        assert returncode == -signal.SIGTERM, logs
        assert "Finished server process" in logs
    else:
        assert returncode == 0, logs
    assert elapsed < SHUTDOWN_GRACE + MARGIN
    print(f"\n{srv.name}: SIGTERM to exit {elapsed:.2f}s (stream_closed took {LINGER}s)")


# -- a rolling restart behind nginx ----------------------------------------------------------

SENDERS = 8  # through nginx; round robin puts some on each server
PACE = 0.5  # seconds between one sender's messages (the chat allows 20 per 10 s)
RESTART_BOUND = 2.0  # the bound on a client's return, reported
RESTART_ASSERTED = 10.0  # what the test asserts: generous, CI is loaded and shared
ROLLING_PAUSE = 11.0  # between restarting A and B: past nginx's former fail_timeout (10 s)
#: Each server's log line for an accepted WebSocket handshake.
ACCEPTED = {"uvicorn": '"WebSocket /websocket/" [accepted]', "daphne": '"WSCONNECT /websocket/"'}


@pytest.fixture(params=["uvicorn", "daphne"])
def behind_nginx(request, django_db_setup, django_db_blocker):
    """nginx (deploy/nginx/streampod.conf) in front of two servers sharing a private
    Redis: (nginx, a, b)."""
    from tests.support.nginx import nginx_cluster

    with nginx_cluster(server_class=SERVERS[request.param]) as (nginx, _, a, b):
        yield nginx, a, b


class Timeline:
    """A status listener recording (monotonic time, status, close code) for one client."""

    def __init__(self, client) -> None:
        self.client = client
        self.events: list[tuple[float, object, int | None]] = []
        self.reasons: list = []
        self.changed = asyncio.Event()
        client.add_streaming_connection_status_listener(self)

    def __call__(self, status) -> None:
        reason = self.client.disconnect_reason
        self.events.append((time.monotonic(), status, reason.code if reason else None))
        self.reasons.append(reason)
        self.changed.set()

    def lost_between(self, since: float, until: float) -> list[tuple[float, object, int | None]]:
        """The losses (waiting_to_retry or disconnected, with the close code) in a window."""
        return [
            e
            for e in self.events
            if since <= e[0] < until and e[1].value in ("waiting_to_retry", "disconnected")
        ]

    def back_after(self, since: float) -> float | None:
        """Seconds from the first loss after ``since`` to the next ``connected``."""
        lost = next(
            (e[0] for e in self.events if e[0] >= since and e[1].value != "connected"), None
        )
        if lost is None:
            return None
        back = next((e[0] for e in self.events if e[0] > lost and e[1].value == "connected"), None)
        return None if back is None else back - lost

    async def wait_connected(self, since: float = 0.0) -> None:
        try:
            async with asyncio.timeout(WAIT):
                while not any(e[0] >= since and e[1].value == "connected" for e in self.events):
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            # What the client went through, for the failure's story.
            raise AssertionError(
                f"not connected within {WAIT} s after {since:.3f}: {self.events} {self.reasons}"
            ) from None


async def test_a_rolling_restart_loses_no_saved_message_and_clients_return_at_once(
    behind_nginx, make_user
):
    from asgiref.sync import sync_to_async

    from chat.models import Message
    from chat.protocol import ChatMessage
    from streaming.client import Client, ClientError, StreamingConnectionHandler
    from tests.support.nginx import count_lines, wait_lines

    nginx, a, b = behind_nginx
    receivers = [await make_user(f"receiver{i}") for i in range(2)]
    senders = [await make_user(f"sender{i}") for i in range(SENDERS)]
    received: dict[int, set[int]] = {user.pk: set() for user, _ in receivers}
    acked: dict[int, set[int]] = {user.pk: set() for user, _ in senders}
    arrived = asyncio.Event()
    stop = asyncio.Event()
    tasks: list[asyncio.Task] = []
    handlers: list[StreamingConnectionHandler] = []

    async def collect(client, into: set[int], me: int, only_from_me: bool) -> None:
        async for message in client.chat.stream:
            if (message.sender_id == me) == only_from_me:
                into.add(message.id)
                arrived.set()

    async def start(url: str, key: str, me: int, only_from_me: bool) -> tuple:
        client = Client(url, auth_key=key)
        timeline = Timeline(client)
        handler = StreamingConnectionHandler(client)
        handlers.append(handler)
        handler.start()
        await timeline.wait_connected()
        into = acked[me] if only_from_me else received[me]
        tasks.append(asyncio.create_task(collect(client, into, me, only_from_me)))
        return client, timeline

    async def send_loop(client, name: str) -> None:
        n = 0
        while not stop.is_set():
            if client.is_connected:
                recipient = receivers[n % len(receivers)][0].pk
                try:
                    await client.chat.send_stream_message(
                        ChatMessage(recipient_id=recipient, text=f"{name} #{n}")
                    )
                    n += 1
                except ClientError:
                    pass  # lost meanwhile: the handler brings it back
            await asyncio.sleep(PACE)  # pacing (the chat's rate limit), not synchronisation

    # Receivers on B, which is not restarted: they see every message live.
    for user, key in receivers:
        await start(b.http_url, key, user.pk, only_from_me=False)
    # Senders through nginx; the server each lands on is read from the servers' logs.
    # The servers' output is read by threads of their own, so a handshake's line can come
    # after its client saw "connected": each count waits until every handshake so far is
    # in. (Counting at once put a client of B among A's under load: it never saw the 1012
    # the test waited for.)
    on_a: list[tuple] = []
    on_b: list[tuple] = []
    needle, outputs = ACCEPTED[a.name], [a.output, b.output]
    accepted = len(receivers)  # their sockets, straight to B
    for user, key in senders:
        assert await asyncio.to_thread(wait_lines, outputs, needle, accepted, WAIT)
        before = count_lines(a.output, needle)
        client, timeline = await start(nginx.http_url, key, user.pk, only_from_me=True)
        accepted += 1
        assert await asyncio.to_thread(wait_lines, outputs, needle, accepted, WAIT)
        entry = (user, client, timeline)
        (on_a if count_lines(a.output, needle) > before else on_b).append(entry)
        tasks.append(asyncio.create_task(send_loop(client, user.username)))
    assert on_a and on_b, (len(on_a), len(on_b))

    def stored_for(recipient_id: int) -> set[int]:
        return set(Message.objects.filter(recipient_id=recipient_id).values_list("id", flat=True))

    async def delivered() -> None:
        """Until every stored message reached its receiver (a state, polled), or WAIT."""
        deadline = time.monotonic() + WAIT
        for user, _ in receivers:
            while time.monotonic() < deadline:
                if await sync_to_async(stored_for)(user.pk) <= received[user.pk]:
                    break
                arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(arrived.wait(), 0.5)

    async def acks_reach(count: int, users) -> None:
        async with asyncio.timeout(WAIT * 2):
            while any(len(acked[user.pk]) < count for user in users):
                arrived.clear()
                await arrived.wait()

    try:
        await acks_reach(2, [user for user, _ in senders])  # traffic flows everywhere
        terminated = time.monotonic()
        a.proc.send_signal(signal.SIGTERM)  # the rolling restart: A first
        for _, _, timeline in on_a:
            await timeline.wait_connected(since=terminated)
        returncode = await asyncio.to_thread(a.proc.wait, SHUTDOWN_GRACE + MARGIN)
        exited = time.monotonic() - terminated
        assert returncode == (-signal.SIGTERM if a.name == "uvicorn" else 0), a.logs()
        assert "drained:" in a.logs(), a.logs()
        a.stop()
        # A' on A's port (nginx's upstream), then a client straight to it chats too.
        a2 = await asyncio.to_thread(type(a)(env=a.env, port=a.port).start)
        try:
            user, key = senders[0]
            await start(a2.http_url, key, user.pk, only_from_me=True)
            counts = {user.pk: len(acked[user.pk]) for user, _, _ in on_a}
            await acks_reach(max(counts.values()) + 2, [user for user, _, _ in on_a])
            stopped = time.monotonic()
            stop.set()
            for handler in handlers[len(receivers) :]:  # the senders; receivers stay
                await handler.close()
            await delivered()  # what the senders' last hooks saved reaches the receivers
        finally:
            stop.set()
            await asyncio.to_thread(a2.stop)
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for handler in handlers:
            await handler.close()
            await handler.client.close()

    # Every message the database holds for the receivers reached them, live.
    for user, _ in receivers:
        stored = await sync_to_async(stored_for)(user.pk)
        assert stored, user.username
        assert stored - received[user.pk] == set(), f"saved but never delivered to {user}"
    all_acked = set().union(*acked.values())
    all_stored = set().union(*[await sync_to_async(stored_for)(u.pk) for u, _ in receivers])
    assert all_acked <= all_stored

    # The clients that were on A saw 1012 (not 1006/1001) and came back at once.
    returns = []
    for user, _, timeline in on_a:
        codes = {code for _, _, code in timeline.lost_between(terminated, stopped)}
        assert codes == {1012}, (user.username, timeline.events, timeline.reasons)
        returns.append(timeline.back_after(terminated))
    for user, _, timeline in on_b:
        assert timeline.lost_between(terminated, stopped) == [], (user.username, timeline.events)
    figures = ", ".join(f"{t:.3f}" for t in returns)
    print(
        f"\nrolling restart ({a.name}): {len(on_a)} clients on A back in [{figures}] s "
        f"(bound {RESTART_BOUND} s); A exited {exited:.2f} s after SIGTERM; "
        f"{len(all_stored)} messages stored, all delivered"
    )
    assert all(t is not None and t < RESTART_ASSERTED for t in returns), returns


async def test_restarting_every_server_in_turn_behind_nginx_brings_every_client_back(
    behind_nginx, make_user
):
    """The whole rolling restart with WebSocket-only clients (the Python client): A, then
    B once A' is up. Seen (an operator review): with the nginx file's former
    ``max_fails=1 fail_timeout=10s``, a connect refused during A's drain marked A failed,
    and nginx marks a server live again only when a request to it ends, which a
    WebSocket does not: after B's SIGTERM, 79 of 90 clients were not back 60 s later
    (HTTP 502, "no live upstreams"). Expected: each comes back to A' within the bound."""
    from streaming.client import Client, StreamingConnectionHandler

    nginx, a, b = behind_nginx
    handlers: list[StreamingConnectionHandler] = []
    timelines: list[Timeline] = []
    a2 = None
    try:
        for i in range(6):
            _, key = await make_user(f"roller{i}")
            client = Client(nginx.http_url, auth_key=key)
            timelines.append(Timeline(client))
            handlers.append(StreamingConnectionHandler(client))
            handlers[-1].start()
            await timelines[-1].wait_connected()
        # A first: its clients go to B. Once A has exited, every client is on B.
        a.proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(a.proc.wait, SHUTDOWN_GRACE + MARGIN)
        a.stop()
        for timeline in timelines:
            while not timeline.client.is_connected:
                await timeline.wait_connected(since=timeline.events[-1][0])
        a2 = await asyncio.to_thread(type(a)(env=a.env, port=a.port).start)
        # Then B, once A' has been up a while (as an operator waits for its health check):
        # longer than nginx's former fail_timeout, the stranding's condition. The wait is
        # the scenario, not a synchronisation. Every client must come back, to A'.
        await asyncio.sleep(ROLLING_PAUSE)
        terminated = time.monotonic()
        b.proc.send_signal(signal.SIGTERM)
        for timeline in timelines:
            await timeline.wait_connected(since=terminated)
        returns = [timeline.back_after(terminated) for timeline in timelines]
        print(f"\nB restarted ({b.name}): clients back on A' in {returns} s")
        assert all(t is not None and t < RESTART_ASSERTED for t in returns), returns
    finally:
        for handler in handlers:
            await handler.close()
            await handler.client.close()
        if a2 is not None:
            await asyncio.to_thread(a2.stop)


def listening(port: int, timeout: float = 30) -> None:
    """Once something accepts connections on ``port`` (a state, polled)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def read_slowly_through_a_shutdown(
    port: int, proc: subprocess.Popen, rate: int
) -> tuple[bytes, str]:
    """A handshake, then reading at ``rate`` bytes/s; SIGTERM to ``proc`` once the first
    frames arrived. Returns what was read and how the connection ended."""
    import base64

    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    got, terminated = b"", False
    try:
        while True:
            try:
                data = sock.recv(8192)
            except ConnectionResetError:
                return got, "reset"
            if not data:
                return got, "eof"
            got += data
            if not terminated and len(got) > 100_000:
                proc.send_signal(signal.SIGTERM)  # with about 3 MB still on the way
                terminated = True
            time.sleep(len(data) / rate)  # a steady slow reader (a phone on a weak link)
    finally:
        sock.close()


def test_a_slow_reader_still_gets_its_1012_when_uvicorn_shuts_down():
    """Seen (a review of the reset after a close times out): at shutdown a client reading
    400 KB/s steadily, 3 MB behind, got a reset 1 s after SIGTERM and lost its 1012 (so its
    restart advice, and its free retry). At shutdown the kernel is left to deliver what is
    written: the client reads all of it, the 1012 last."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--port", str(port), "--log-level", "warning",
         "--ws", "streaming.uvicorn_ws:WebSocketProtocol", "tests.support.backlog_app:app"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        listening(port)
        got, ended = read_slowly_through_a_shutdown(port, proc, 400_000)
    finally:
        proc.kill()
        proc.wait()
    assert got.endswith(b"\x88\x02\x03\xf4"), (len(got), ended)  # the 1012 close frame, last
    assert len(got) > 48 * 65536 and ended == "eof"
