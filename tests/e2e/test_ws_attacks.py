"""Attacks on ``streaming.uvicorn_ws:WebSocketProtocol``, black-box over raw sockets.

Each test is one abusive client against a real uvicorn (the raw ASGI app of
``tests.support.ws_conformance_server``, or the Streampod demo app) and asserts what the
module docstring of ``streaming/uvicorn_ws.py`` promises: memory bounded in bytes whatever
the client does (about ``ws_max_size`` per socket), a failed or shut-down connection
released, a handshake always answered.

Tests named ``test_defect_*`` each showed a defect of the protocol class (they failed on
its first version; "Seen" in each docstring is what that version did) and guard its fix
now: fragments accumulate in one buffer, parsing stops while the app has enough unread,
and a closing connection is aborted when its client does not read. The others are guards
for attacks it withstood from the start (some of which uvicorn's own
``websockets-sansio`` class does not: noted in each docstring).

Memory is the server process's VmRSS (``/proc/<pid>/status``). "The server has parsed
everything sent so far" is learnt from the wire: a ping written after the attack is
answered only once every byte before it was parsed (a ping may come between fragments).
Every read and every poll is bounded; nothing waits with a sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import struct
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tests.e2e.test_ws_conformance import (
    BINARY,
    CLOSE,
    CONT,
    GUARD,
    PING,
    PONG,
    STREAMING,
    TEXT,
    Client,
    ConformanceServer,
    _handshake,
    app_record,
    close_payload,
    connected,
    frame,
    open_ws,
)
from tests.support.servers import SERVERS

pytestmark = pytest.mark.timeout(180)

KiB, MiB = 1024, 1024 * 1024
MAX_SIZE = 65536  # --ws-max-size of the attacked servers (Streampod runs with 66,560)


@pytest.fixture
def server() -> Any:
    """A fresh server per test (its memory is this test's), messages up to 64 KiB."""
    with ConformanceServer(STREAMING, "--ws-max-size", str(MAX_SIZE)) as srv:
        yield srv


@pytest.fixture
def pinging_server() -> Any:
    with ConformanceServer(
        STREAMING,
        "--ws-max-size",
        str(MAX_SIZE),
        "--ws-ping-interval",
        "0.2",
        "--ws-ping-timeout",
        "0.5",
    ) as srv:
        yield srv


# --- helpers --------------------------------------------------------------------------------


def rss_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/<pid>/status")


async def parsed_up_to_here(client: Client, token: bytes) -> None:
    """Ping with ``token`` and wait for its pong: the server has parsed all sent before."""
    await client.send_frame(PING, token)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 6 * GUARD
    while True:
        got = await client.recv_frame(timeout=max(0.1, deadline - loop.time()))
        assert got is not None, "the server closed TCP instead of answering the ping"
        assert got.opcode != CLOSE, f"the server closed the connection: {got}"
        if got.opcode == PONG and got.payload == token:
            return


async def open_not_reading(port: int, path: str) -> Client:
    """A WebSocket whose receive buffer is tiny (set before connecting): it reads nothing."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    client = Client(sock, port, uuid.uuid4().hex)
    try:
        client, response = await _handshake(client, path, {})
    except BaseException:
        sock.close()
        raise
    assert response.status == 101, response
    return client


async def poll(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``condition`` (sync or async) every 20 ms until it is truthy (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.02)


async def wait_exit(proc: subprocess.Popen[str], timeout: float) -> int | None:
    """The exit status of ``proc`` within ``timeout``, or None if it still runs."""
    loop = asyncio.get_running_loop()
    try:
        return await asyncio.wait_for(loop.run_in_executor(None, proc.wait, timeout), timeout + 1)
    except (subprocess.TimeoutExpired, TimeoutError):
        return None


@contextlib.asynccontextmanager
async def draining(client: Client) -> AsyncIterator[None]:
    """Read (and drop) everything the server sends while the body runs."""

    async def drain() -> None:
        while await client._fill():
            client.buf.clear()
            # A read with data waiting returns without suspending: yield, or a server
            # that keeps sending holds this loop, and the test's own sends wait.
            await asyncio.sleep(0)

    task = asyncio.create_task(drain())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def rst(client: Client) -> None:
    """Close with an RST (SO_LINGER 0) instead of a FIN."""
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()


# --- 1. memory: fragmented messages -------------------------------------------------------


#: Empty continuation frames sent in all (6 bytes each on the wire).
EMPTY_FRAGMENTS_BYTES = 24 * MiB
#: What one socket may cost the server whatever it sends (its message is at most 64 KiB).
FRAGMENT_BUDGET = 8 * MiB


async def test_defect_empty_continuation_frames_grow_the_server_without_bound(server):
    """A fragmented message of millions of empty fragments is 0 bytes long, so the
    ``ws_max_size`` check (payload bytes) never fires, yet every fragment is appended to
    the message's parts list: 8 bytes of heap per 6 bytes on the wire, without limit.

    Seen: server RSS +9.5 MiB after 10 MiB sent, growing with every byte (by
    hand: 63 MB sent, +84 MB; ``websockets-sansio``: the same, +86 MB). Expected: the
    server closes the connection (1009, or 1008 for too many fragments) or its memory
    stays within FRAGMENT_BUDGET.
    """
    chunk = frame(CONT, b"", fin=False) * (256 * KiB // 6)
    async with connected(server.port) as client:
        await client.echo_round_trip()
        baseline = server.rss_bytes()
        await client.send_frame(TEXT, b"a", fin=False)
        sent = 0
        while sent < EMPTY_FRAGMENTS_BYTES:
            try:
                await client.send(chunk)
            except (ConnectionResetError, BrokenPipeError):
                return  # the server refused the message: fixed
            sent += len(chunk)
            growth = server.rss_bytes() - baseline
            assert growth < FRAGMENT_BUDGET, (
                f"server RSS +{growth / MiB:.1f} MiB after {sent / MiB:.1f} MiB of empty "
                f"continuation frames (one open 1-byte message)"
            )
        try:
            await parsed_up_to_here(client, b"after")
        except AssertionError as exc:
            if "closed" in str(exc):
                return  # the server refused the message: fixed
            raise
        growth = server.rss_bytes() - baseline
        assert growth < FRAGMENT_BUDGET, (
            f"server RSS +{growth / MiB:.1f} MiB after {sent / MiB:.1f} MiB of empty "
            f"continuation frames (one open 1-byte message)"
        )


ONE_BYTE_SOCKETS = 16
#: A fragmented message just under ws_max_size may cost about ws_max_size, not 50 times it.
PER_SOCKET_BUDGET = 4 * MAX_SIZE


async def test_defect_one_byte_fragments_cost_fifty_times_ws_max_size_per_socket(server):
    """16 sockets each send a binary message of 65,535 one-byte fragments (just under
    ``ws_max_size``), left open. Each fragment is kept as its own ``bytes`` object in
    a list until the message ends: about 55 bytes of heap per payload byte.

    Seen: ~3.6 MiB per socket (``websockets-sansio``: the same; text fragments
    cost ~0.55 MiB, their 1-character strings being cached). Expected: about
    ``ws_max_size`` per socket (PER_SOCKET_BUDGET = 4 x 64 KiB).
    """
    message = frame(BINARY, b"\x01", fin=False) + frame(CONT, b"\x02", fin=False) * (MAX_SIZE - 2)
    clients = []
    try:
        for _ in range(ONE_BYTE_SOCKETS):
            client, response = await open_ws(server.port)
            clients.append(client)
            assert response.status == 101, response
        baseline = server.rss_bytes()
        for client in clients:
            await client.send(message)
        for n, client in enumerate(clients):
            await parsed_up_to_here(client, b"%d" % n)
        per_socket = (server.rss_bytes() - baseline) / ONE_BYTE_SOCKETS
        assert per_socket < PER_SOCKET_BUDGET, (
            f"{per_socket / KiB:.0f} KiB per socket for an open message of "
            f"{MAX_SIZE - 1} one-byte fragments (ws_max_size {MAX_SIZE})"
        )
    finally:
        for client in clients:
            client.close()


async def test_defect_streampod_app_empty_fragment_flood(django_db_setup, django_db_blocker):
    """The same empty-fragment flood against the real Streampod app under uvicorn with
    Streampod's protocol (``--ws-max-size 66560``), from one anonymous socket.

    Seen: ~1.35 bytes of server memory per byte sent, without limit.
    """
    with SERVERS["uvicorn"]() as srv:
        assert srv.proc is not None
        pid = srv.proc.pid
        async with connected(srv.port, "/websocket/") as client:
            await parsed_up_to_here(client, b"ready")
            baseline = rss_of(pid)
            await client.send_frame(TEXT, b"[", fin=False)
            chunk = frame(CONT, b"", fin=False) * (256 * KiB // 6)
            sent = 0
            while sent < EMPTY_FRAGMENTS_BYTES:
                try:
                    await client.send(chunk)
                except (ConnectionResetError, BrokenPipeError):
                    return  # refused: fixed
                sent += len(chunk)
                growth = rss_of(pid) - baseline
                assert growth < FRAGMENT_BUDGET, (
                    f"Streampod server RSS +{growth / MiB:.1f} MiB after {sent / MiB:.1f} MiB "
                    "of empty continuation frames from one anonymous socket"
                )


# --- 2. memory: a burst of tiny messages -------------------------------------------------------

BURST_SOCKETS = 4
#: INBOX_BYTES (64 KiB) plus ws_max_queue (32) messages, plus one read (256 KiB) of raw
#: bytes kept unparsed, is below this.
BURST_BUDGET = 1 * MiB


async def test_defect_a_burst_of_empty_messages_is_not_bounded_by_ws_max_queue(server):
    """The app (``/flood``) never calls ``receive``; the client reads what it sends, and
    writes 1 MiB of empty text messages (174,762 of them) in one go.

    The contract: reading pauses while the app has more than ``ws_max_queue`` (32)
    messages not yet received. It pauses only after parsing a whole TCP read: one read
    of empty frames becomes tens of thousands of queued events (~250 bytes of heap each
    for 6 bytes on the wire), and empty messages count 0 towards INBOX_BYTES.

    Seen: +10.8 MiB per socket, i.e. one 256 KiB read turned into 43,690 queued
    events (``websockets-sansio``: +9.4 MiB, the same flaw). Expected: at most
    BURST_BUDGET per socket.
    """
    warm_up = frame(PING, b"w" * 125) * (4 * MiB // 131)
    burst = frame(TEXT, b"") * (MiB // 6)
    clients: list[Client] = []
    async with contextlib.AsyncExitStack() as stack:
        for n in range(BURST_SOCKETS):
            client = await stack.enter_async_context(connected(server.port, "/flood"))
            clients.append(client)
            await stack.enter_async_context(draining(client))
            # Pings are answered, never queued: reading them fast lets the kernel grow the
            # server's receive buffer, so that the burst arrives in few large reads.
            await client.send(warm_up)
            await client.send(frame(PING, b"%d" % n))
        await poll(
            lambda: all_sending(server.port, clients), GUARD, "the app's /flood sends started"
        )
        baseline = server.rss_bytes()
        writes = [asyncio.create_task(client.send_lenient(burst)) for client in clients]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 3.0  # a window to grow in (one read per socket, today)
        worst = 0
        while loop.time() < deadline:
            worst = max(worst, server.rss_bytes() - baseline)
            await asyncio.sleep(0.02)
        for task in writes:
            task.cancel()
        await asyncio.gather(*writes, return_exceptions=True)
        per_socket = worst / BURST_SOCKETS
        assert per_socket < BURST_BUDGET, (
            f"server RSS +{per_socket / MiB:.1f} MiB per socket for 1 MiB of empty text "
            "messages to an app that is not receiving (ws_max_queue is 32)"
        )


async def all_sending(port: int, clients: list[Client]) -> bool:
    for client in clients:
        record = await app_record(port, client.ident)
        if not record or record["sent"] == 0:
            return False
    return True


# --- 3. hangs: a client that never reads ----------------------------------------------------


async def wait_sends_blocked(port: int, ident: str) -> int:
    """Poll /last until the /flood app's sent byte count stops growing (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 3 * GUARD
    sent, stable = -1, 0
    while stable < 25:  # 25 polls (>= 0.5 s) without one more send completing
        assert loop.time() < deadline, "the /flood app's sends never blocked"
        record = await app_record(port, ident)
        now = record["sent"] if record else 0
        stable = stable + 1 if now == sent and now > 0 else 0
        sent = now
        await asyncio.sleep(0.02)
    return sent


#: uvicorn's close timeout is 10 s: a connection that cannot take our close frame must
#: be gone by then (plus a margin), not kept until the client reads.
RELEASE_WITHIN = 15.0


async def test_defect_sigterm_hangs_on_a_client_that_never_reads(server):
    """``/flood`` fills the socket of a client that reads nothing; then SIGTERM.

    ``shutdown()`` writes the 1012 close frame behind the full buffer and calls
    ``transport.close()``, which waits for the buffer to drain: forever. uvicorn waits
    for ``server_state.connections`` to empty (and the app task, blocked in ``send``),
    so the process never exits ("Waiting for connections to close").

    Seen: still running 15 s after SIGTERM (``websockets-sansio``: the same).
    Expected: exit within the close timeout (10 s) plus a margin.
    """
    client = await open_not_reading(server.port, "/flood")
    try:
        await wait_sends_blocked(server.port, client.ident)
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        code = await wait_exit(server.proc, RELEASE_WITHIN)
        assert code is not None, (
            f"uvicorn still runs {RELEASE_WITHIN} s after SIGTERM, held by one client that "
            f"never reads:\n{server.logs()[-600:]}"
        )
    finally:
        client.close()


async def test_defect_keepalive_timeout_leaves_the_app_blocked_in_send(pinging_server):
    """``/flood`` fills the socket of a client that reads nothing (so it never answers
    pings); pings every 0.2 s, timeout 0.5 s.

    The keepalive timeout "fails" the connection (``_fail(1011)``: the app's inbox gets
    ``websocket.disconnect`` 1011) but only calls ``transport.close()``, which waits for
    the full buffer to drain, forever: the TCP connection stays ESTABLISHED, the
    protocol stays in ``server_state.connections``, and the app's pending ``send`` (waiting
    for the buffer to drain) never returns nor raises ``ClientDisconnected``.

    Seen: the app's send still blocked 15 s later (``websockets-sansio``: the same).
    Expected: the connection aborted and the send raising within RELEASE_WITHIN.
    """
    port = pinging_server.port
    client = await open_not_reading(port, "/flood")
    try:
        await wait_sends_blocked(port, client.ident)

        async def send_failed() -> bool:
            record = await app_record(port, client.ident)
            return bool(record and record["send_errors"])

        try:
            await poll(send_failed, RELEASE_WITHIN, "the app's blocked send raised")
        except AssertionError:
            record = await app_record(port, client.ident)
            raise AssertionError(
                f"the keepalive timeout did not release the connection: {RELEASE_WITHIN} s "
                f"later the app is still blocked in send ({record})"
            ) from None
    finally:
        client.close()


# --- guards: attacks withstood today ------------------------------------------------------


PING_FLOOD_BUDGET = 16 * MiB


async def test_a_ping_flood_from_a_client_that_never_reads_stays_bounded(server):
    """Guard. 125-byte pings as fast as they go, pongs never read: memory stays bounded
    (``websockets-sansio``: +100 MB in 4 s, without limit). The pings of one read are
    answered by one pong, for the last (RFC 6455 5.5.3), so the unread pongs grow by one
    per read, and reading pauses with the write buffer once they fill it."""
    client = await open_not_reading(server.port, "/echo")
    try:
        baseline = server.rss_bytes()
        chunk = frame(PING, b"p" * 125) * 4000  # 524 KB
        sent = 0
        loop = asyncio.get_running_loop()
        with contextlib.suppress(TimeoutError):  # the server stopped reading: the point
            while sent < 64 * MiB:
                await asyncio.wait_for(loop.sock_sendall(client.sock, chunk), 2)
                sent += len(chunk)
        growth = server.rss_bytes() - baseline
        assert growth < PING_FLOOD_BUDGET, (
            f"server RSS +{growth / MiB:.1f} MiB after {sent / MiB:.1f} MiB of pings"
        )
    finally:
        client.close()


CHURN = 400
CHURN_BUDGET = 24 * MiB


async def test_abusive_connection_churn_leaves_nothing_behind(server):
    """Guard. 400 connections, each ended abusively: RST right after the request, RST in
    a fragmented message, RST right after the app's close, half-close (SHUT_WR) after the
    handshake, in a frame, and after the app's close, a client close never read. Then a new
    connection still works and SIGTERM exits promptly (uvicorn waits for
    ``server_state.connections`` and ``tasks``: a leaked one would hold it)."""
    port = server.port
    async with connected(port) as warm:
        await warm.echo_round_trip()
    baseline = server.rss_bytes()
    held: list[Client] = []
    try:
        for i in range(CHURN):
            kind = i % 7
            if kind == 0:  # RST during the handshake
                sock = socket.create_connection(("127.0.0.1", port), timeout=GUARD)
                sock.sendall(
                    b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    b"Sec-WebSocket-Version: 13\r\n\r\n"
                )
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
                continue
            path = "/close" if kind in (2, 5) else "/echo"
            client, response = await open_ws(port, path)
            assert response.status == 101, response
            if kind == 1:  # RST inside a fragmented message
                await client.send(
                    frame(BINARY, b"x" * 1000, fin=False) + frame(CONT, b"y", fin=False)
                )
                rst(client)
            elif kind == 2:  # RST right after the app's close
                await client.expect_close(4001, "bye")
                rst(client)
            elif kind == 3:  # half-close after the handshake
                client.sock.shutdown(socket.SHUT_WR)
                held.append(client)
            elif kind == 4:  # half-close inside a frame
                await client.send(frame(BINARY, b"x" * 1000)[:300])
                client.sock.shutdown(socket.SHUT_WR)
                held.append(client)
            elif kind == 5:  # half-close after the app's close, never answering it
                await client.expect_close(4001, "bye")
                client.sock.shutdown(socket.SHUT_WR)
                held.append(client)
            else:  # a client close whose answer is never read
                await client.send(frame(CLOSE, close_payload(1000)))
                held.append(client)
    finally:
        for client in held:
            client.close()
    async with connected(port) as fresh:
        await fresh.echo_round_trip("after the churn")
    growth = server.rss_bytes() - baseline
    assert growth < CHURN_BUDGET, f"server RSS +{growth / MiB:.1f} MiB after {CHURN} connections"
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    code = await wait_exit(server.proc, 5)
    assert code is not None, f"SIGTERM did not end uvicorn within 5 s:\n{server.logs()[-600:]}"


async def test_header_tricks_get_an_answer(server):
    """Guard. A 15 KB header value and 100 headers (within h11's 16 KiB head) are served;
    a control character in a value is served (h11, daphne) or refused with 400 (httptools:
    RFC 9110 5.5 allows none); a duplicate Sec-WebSocket-Key is refused.
    (``websockets-sansio`` never answers the 15 KB value, nor a control character in a
    value: its connection hangs.)"""
    for headers, statuses in (
        ({"X-Long": "a" * 15000}, {101}),
        ({f"X-H{i}": "v" for i in range(100)}, {101}),
        ({"X-Ctl": "a\x01b"}, {101, 400}),
    ):
        client, response = await open_ws(server.port, headers=headers)
        try:
            assert response.status in statuses, (list(headers)[:2], response)
            if response.status == 101:
                await client.echo_round_trip()
        finally:
            client.close()
    # http.client-style duplicates need a raw request: open_ws takes a dict.
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", server.port), GUARD
    )
    try:
        key = b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        writer.write(
            b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n" + key + key + b"\r\n"
        )
        line = await asyncio.wait_for(reader.readline(), GUARD)
        assert line.startswith(b"HTTP/1.1 400"), line
    finally:
        writer.close()


async def test_pongs_with_the_wrong_payload_do_not_keep_a_socket_alive(pinging_server):
    """Guard. A client that answers every keepalive ping with a pong of another payload
    is closed with 1011 (the ping timeout), like one that never answers."""
    async with connected(pinging_server.port) as client:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + GUARD
        while True:
            got = await client.recv_frame(timeout=max(0.1, deadline - loop.time()))
            assert got is not None, "the server closed TCP without a close frame"
            if got.opcode == PING:
                await client.send_lenient(frame(PONG, got.payload[::-1] + b"x"))
            elif got.opcode == CLOSE:
                assert got.close_code == 1011, got
                break


async def test_a_client_that_stops_reading_still_gets_the_close_frame_before_the_end():
    """A client that stops reading while the server floods it, and keeps sending: the
    keepalive times out (1011) with the close frame queued behind the flood and the
    client's frames unread. Closing such a socket outright makes Linux reset the
    connection and drop what is still queued, close frame included; the protocol
    half-closes instead and reads on, so once the client reads again it gets every frame
    queued, then the close frame, then the end of the stream.

    Seen (before the half-close): the stream ended in a reset, without the close frame.
    """
    with ConformanceServer(
        STREAMING, "--ws-ping-interval", "0.2", "--ws-ping-timeout", "0.5"
    ) as srv:
        client, response = await open_ws(srv.port, "/flood")
        try:
            assert response.status == 101, response
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 6 * GUARD
            # The server's sends stall (nothing read); the client's frames stay unread.
            while (record := await app_record(srv.port, client.ident)) is None or not record[
                "send_errors"
            ]:
                with contextlib.suppress(TimeoutError, BlockingIOError):
                    client.sock.send(frame(PING, b"unread"))
                assert loop.time() < deadline, f"the keepalive never timed out: {record}"
                await asyncio.sleep(0.05)  # between polls of the condition above
            frames = []
            while (got := await client.recv_frame(timeout=3 * GUARD)) is not None:
                frames.append(got)
            assert frames, "nothing arrived"
            last = frames[-1]
            assert last.opcode == CLOSE and last.close_code == 1011, frames[-3:]
        finally:
            client.close()
