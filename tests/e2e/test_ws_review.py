"""Review of ``streaming.uvicorn_ws:WebSocketProtocol``: defects the conformance and attack
suites missed, each shown by a client over a raw socket against a real uvicorn.

The server is ``python -m uvicorn tests.e2e.test_ws_review:app --ws streaming.uvicorn_ws:...``;
``app`` (below) routes each path to an endpoint defined beside the test that uses it. What
the app does is learnt from lines it prints (``review id=X ...``), waited for on the
server's output, never guessed with a sleep.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import pytest

from tests.e2e.test_ws_conformance import (
    GUARD,
    STREAMING,
    TEXT,
    Client,
    ConformanceServer,
    connected,
)

pytestmark = pytest.mark.timeout(120)

KiB, MiB = 1024, 1024 * 1024

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def report(ident: str, what: str) -> None:
    print(f"review id={ident} {what}", flush=True)


# --- the server -----------------------------------------------------------------------------


class ReviewServer(ConformanceServer):
    """uvicorn serving ``app`` (below) with Streampod's protocol, on a free port."""

    def __init__(self) -> None:
        super().__init__(STREAMING)

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "uvicorn", "tests.e2e.test_ws_review:app",
            "--ws", STREAMING, "--host", "127.0.0.1", "--port", str(self.port),
            "--lifespan", "off",
        ]  # fmt: skip

    async def wait_for(self, needle: str, timeout: float = GUARD) -> str:
        """The first output line holding ``needle`` (bounded)."""
        assert self.output is not None
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(None, self.output.wait_for, needle, timeout):
            raise AssertionError(f"the server never printed {needle!r}:\n{self.logs()[-2000:]}")
        return next(line for line in self.output.lines if needle in line)


@pytest.fixture
def server() -> Any:
    with ReviewServer() as srv:
        yield srv


async def frames_until_eof(client: Client) -> list[Any]:
    frames = []
    while (got := await client.recv_frame()) is not None:
        frames.append(got)
    return frames


# --- 1. a close whose reason cannot be encoded -------------------------------------------------


async def close_with_unencodable_reason(ident: str, receive: Receive, send: Send) -> None:
    await send({"type": "websocket.accept"})
    # A lone surrogate: what json.loads makes of "\ud800" in a client's message.
    await send({"type": "websocket.close", "code": 4000, "reason": "unknown topic \ud800"})


async def test_an_app_close_with_an_unencodable_reason_still_ends_in_a_close(server):
    """The app's ``websocket.close`` carries a reason that is not encodable (a lone
    surrogate): ``send`` raises, the app dies.

    Seen: the protocol had switched to "close sent" before encoding the reason, so no
    close frame went out, no close timer ran, and the app's failure was taken for a close
    in progress: the client got nothing, and the socket stayed open for as long as the
    client kept it (uvicorn's own protocol closes the TCP connection).
    Expected: a defined close: 1011, as for any app that raises, then the end of TCP.
    """
    async with connected(server.port, "/close-unencodable") as client:
        frames = await frames_until_eof(client)
    assert [(f.opcode, f.close_code) for f in frames] == [(0x8, 1011)], frames


# --- 2. another socket's ClientDisconnected escaping the app ----------------------------------

#: /broadcast: the ``send`` of every socket that joined (never removed: a naive chat).
ROOM: dict[str, Send] = {}


async def broadcast(ident: str, receive: Receive, send: Send) -> None:
    await send({"type": "websocket.accept"})
    ROOM[ident] = send
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            report(ident, f"disconnect code={message['code']}")
            return
        for member in list(ROOM.values()):  # a gone member's send raises ClientDisconnected
            await member({"type": "websocket.send", "text": message.get("text") or ""})


async def test_an_app_that_lets_another_sockets_disconnect_escape_closes_its_own(server):
    """A naive broadcast: A's app sends to every member, B among them, whose client has
    gone: B's ``send`` raises ``ClientDisconnected``, which escapes A's app.

    Seen: the protocol took that for its own socket's end and did nothing; A's socket
    stayed open with no app behind it: its frames unanswered, its pings answered, for ever
    (uvicorn's own protocol closes the TCP connection).
    Expected: A's client gets a defined close (1011: the app raised) and the end of TCP.
    """
    async with connected(server.port, "/broadcast") as gone:
        pass
    await server.wait_for(f"review id={gone.ident} disconnect")
    async with connected(server.port, "/broadcast") as client:
        await client.send_frame(TEXT, b"hello")
        frames = await frames_until_eof(client)
    assert frames and (frames[-1].opcode, frames[-1].close_code) == (0x8, 1011), frames


# --- 3. an upgrade on a connection whose writing uvicorn has paused ----------------------------

BIG_BODY = 8 * MiB
FLOOD_CHUNK = b"\x00" * (64 * KiB)
FLOOD_CAP = 64 * MiB  # the endpoint stops there (the defect would go on without limit)
FLOOD_BUDGET = 8 * MiB  # what a socket's sends may queue before they must wait
BLOCKED_AFTER = 2.0  # seconds: a send that waits this long waits for the client


@contextlib.asynccontextmanager
async def upgraded(
    server: ReviewServer, path: str, *, first: bytes = b"", rcvbuf: int | None = None
) -> AsyncIterator[str]:
    """A raw client that sends ``first`` (whole HTTP requests, if any) and then an upgrade to
    ``path`` on one connection, and reads nothing: yields the socket's id (``?id=``)."""
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    client = Client(sock, server.port, uuid.uuid4().hex)
    key = base64.b64encode(os.urandom(16)).decode()
    try:
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", server.port)), GUARD)
        await client.send(
            first
            + f"GET {path}?id={client.ident} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        yield client.ident
    finally:
        sock.close()


def unread_upgrade(server: ReviewServer, path: str) -> contextlib.AbstractAsyncContextManager[str]:
    """A client that sends a GET of the large page and then an upgrade to ``path`` on one
    connection, and reads nothing (a 4 KiB receive buffer): yields the socket's id."""
    first = b"GET /big HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    return upgraded(server, path, first=first, rcvbuf=4096)


async def flood(ident: str, receive: Receive, send: Send) -> None:
    await send({"type": "websocket.accept"})
    sent = 0
    while sent < FLOOD_CAP:
        try:
            await asyncio.wait_for(
                send({"type": "websocket.send", "bytes": FLOOD_CHUNK}), BLOCKED_AFTER
            )
        except TimeoutError:
            report(ident, f"flood blocked sent={sent}")
            break
        sent += len(FLOOD_CHUNK)
    else:
        report(ident, f"flood unbounded sent={sent}")
    while (await receive())["type"] != "websocket.disconnect":
        pass


async def test_an_upgrade_behind_an_unread_http_response_keeps_sends_bounded(server):
    """A client pipelines a GET of a large page and a WebSocket upgrade on one keep-alive
    connection, and reads nothing. When the upgrade is handled, the transport has told the
    HTTP protocol to pause writing; it will not tell the WebSocket protocol again until it
    has drained, which is never.

    Seen: the WebSocket protocol took the transport as writable: every ``send`` returned at
    once, and the app queued 64 MiB (its cap; without one, all it had) on a socket
    that reads nothing (uvicorn's own protocol: the same).
    Expected: ``send`` waits for the client from the start, as on any full socket.
    """
    async with unread_upgrade(server, "/flood") as ident:
        line = await server.wait_for(f"review id={ident} flood", 3 * GUARD)
    sent = int(line.rsplit("sent=", 1)[1])
    assert "blocked" in line and sent <= FLOOD_BUDGET, (
        f"the app's sends went on ({sent / MiB:.0f} MiB queued) on a socket that "
        f"reads nothing: {line}"
    )


# --- 4. a send before the accept, on a connection whose writing is paused -------------------


async def send_early(ident: str, receive: Receive, send: Send) -> None:
    try:  # an app bug: data before the accept
        await asyncio.wait_for(send({"type": "websocket.send", "text": "early"}), BLOCKED_AFTER)
    except TimeoutError:
        report(ident, "send-early blocked")
    except RuntimeError:
        report(ident, "send-early raised RuntimeError")


async def test_a_send_before_the_accept_fails_at_once_even_when_writing_is_paused(server):
    """The app sends data before accepting (a bug), on an upgrade pipelined behind an
    unread HTTP response, so writing is paused from the start.

    Seen: the send waited for room like an open socket's, for a client that never reads:
    the buggy app hung instead of failing.
    Expected: ``RuntimeError`` at once, as on any connection not yet accepted.
    """
    async with unread_upgrade(server, "/send-early") as ident:
        line = await server.wait_for(f"review id={ident} send-early", 3 * GUARD)
    assert "raised RuntimeError" in line, line


# --- 5. the app closes after the client has ---------------------------------------------------


async def close_after_client(ident: str, receive: Receive, send: Send) -> None:
    await send({"type": "websocket.accept"})
    while (message := await receive())["type"] != "websocket.disconnect":
        pass
    try:  # an app's cleanup that closes, racing the client's close
        await send({"type": "websocket.close", "code": 1000})
    except Exception as exc:
        report(ident, f"late close raised {type(exc).__name__}")
    else:
        report(ident, f"late close returned after code={message['code']}")


async def test_a_close_after_the_clients_close_does_nothing(server):
    """The client closes; the app, told so, closes too (as cleanup code does).

    Seen: the close raised ``ClientDisconnected``, where uvicorn's protocols return; an
    app written for them then skipped whatever followed its close.
    Expected: it returns; the client got its close reply and the end of TCP.
    """
    async with connected(server.port, "/close-after-client") as client:
        await client.send_frame(0x8, (1000).to_bytes(2, "big"))
        frames = await frames_until_eof(client)
        line = await server.wait_for(f"review id={client.ident} late close", GUARD)
    assert "returned after code=1000" in line, line
    assert [(f.opcode, f.close_code) for f in frames] == [(0x8, 1000)], frames


# --- 6. an app sending in a loop to a client that reads as fast ------------------------------


async def spin(ident: str, receive: Receive, send: Send) -> None:
    """Sends small messages for as long as the client is there, never awaiting anything
    else (a stream of values from a generator): the client reads them faster than they
    come, so each ``send`` finds room in the buffer and returns without suspending."""
    await send({"type": "websocket.accept"})
    report(ident, "spinning")
    with contextlib.suppress(OSError):  # ClientDisconnected: the client went
        while True:
            await send({"type": "websocket.send", "text": '{"value": 42}'})


async def idle(ident: str, receive: Receive, send: Send) -> None:
    await send({"type": "websocket.accept"})
    report(ident, "idle")
    while (await receive())["type"] != "websocket.disconnect":
        pass


async def test_an_app_sending_to_a_fast_reader_does_not_hold_the_other_sockets(server):
    """One socket's app sends small messages in a loop; its client reads them faster than
    they come, so the server's buffer never fills and no ``send`` suspends. Another socket
    pings.

    Seen: the app held the event loop for as long as it sent: the other socket's
    handshake was never answered (uvicorn's own protocol: the same), nor anything else of
    the process.
    Expected: the pings answered while the app spins (each within the guard, 5 s; a few
    ms on an idle machine).
    """
    async with connected(server.port, "/spin") as spinner:
        spinner.sock.setblocking(True)  # read by a thread of its own, at full speed
        reading = asyncio.create_task(asyncio.to_thread(read_all, spinner.sock))
        try:
            await server.wait_for(f"review id={spinner.ident} spinning")
            async with connected(server.port, "/idle") as probe:
                for n in range(20):
                    payload = b"probe %d" % n
                    await probe.send_frame(0x9, payload)
                    pong = await probe.recv_frame(timeout=GUARD)
                    assert pong is not None and (pong.opcode, pong.payload) == (0xA, payload), (
                        f"ping {n} not answered within {GUARD} s while another socket's "
                        f"app sends: {pong}"
                    )
        finally:
            spinner.sock.shutdown(socket.SHUT_RDWR)  # ends the thread's read
            await asyncio.wait_for(reading, GUARD)


def read_all(sock: socket.socket) -> None:
    """Read and drop everything as fast as it comes, until the socket ends."""
    with contextlib.suppress(OSError):
        while sock.recv(1 << 18):
            pass


# --- 7. uvicorn's shutdown while a handshake waits for the app --------------------------------


async def pending(ident: str, receive: Receive, send: Send) -> None:
    """Neither accepts nor refuses (an authentication still running): waits for news."""
    report(ident, "pending")
    message = await receive()
    report(ident, f"pending got {message['type']} code={message.get('code')}")


async def test_shutdown_tells_an_app_whose_handshake_is_pending(server):
    """uvicorn shuts down while an app holds a handshake without answering it (awaiting
    ``receive``, as a consumer still authenticating does); the client keeps its socket.

    Seen: the client got its 500, but the app heard nothing until the client closed or
    the protocol aborted the socket 10 s later, and uvicorn's shutdown waited for it.
    Expected: the app gets ``websocket.disconnect`` (1012, the server restarting) at once.
    """
    async with upgraded(server, "/pending") as ident:
        await server.wait_for(f"review id={ident} pending")
        server.proc.send_signal(signal.SIGTERM)
        line = await server.wait_for(f"review id={ident} pending got", GUARD)
        assert "websocket.disconnect code=1012" in line, line


async def test_shutdown_does_not_wait_ten_seconds_for_a_client_that_does_not_answer(server):
    """uvicorn shuts down while a client holds an open socket and neither reads nor closes.

    Seen (an operator's try, 300 sockets, one client paused): the others got 1012 at once,
    but the process exited only after 10.65 s: the protocol waited CLOSE_TIMEOUT (10 s) for
    that client's close reply, and uvicorn for the protocol; 20 s when the app had closed
    the socket itself just before (its 10 s started again). An orchestrator's kill timeout
    set just above SHUTDOWN_GRACE_PERIOD killed the process.
    Expected: at uvicorn's shutdown a close waits at most SHUTDOWN_CLOSE_TIMEOUT (1 s) for
    the client: the process exits well within 5 s."""
    from streaming.uvicorn_ws import SHUTDOWN_CLOSE_TIMEOUT

    assert SHUTDOWN_CLOSE_TIMEOUT <= 1.0
    async with upgraded(server, "/idle", rcvbuf=4096) as ident:
        await server.wait_for(f"review id={ident} idle")
        server.proc.send_signal(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        started = loop.time()
        code = await loop.run_in_executor(None, wait_or_none, server.proc, 8.0)
        took = loop.time() - started
    assert code is not None, "uvicorn still runs 8 s after SIGTERM"
    assert took < 5.0, f"uvicorn took {took:.1f} s to exit"


def wait_or_none(proc: Any, timeout: float) -> int | None:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


# --- the app ---------------------------------------------------------------------------------

ROUTES: dict[str, Callable[[str, Receive, Send], Awaitable[None]]] = {
    "/close-unencodable": close_with_unencodable_reason,
    "/broadcast": broadcast,
    "/flood": flood,
    "/send-early": send_early,
    "/close-after-client": close_after_client,
    "/spin": spin,
    "/idle": idle,
    "/pending": pending,
}


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] == "http":
        while (await receive()).get("more_body"):
            pass
        body = b"x" * BIG_BODY if scope["path"] == "/big" else b""
        await send(
            {
                "type": "http.response.start",
                "status": 200 if body else 404,
                "headers": [(b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})
        return
    if scope["type"] != "websocket":
        return
    ident = parse_qs(scope["query_string"].decode("latin-1")).get("id", [""])[0]
    assert (await receive())["type"] == "websocket.connect"
    handler = ROUTES.get(scope["path"])
    if handler is None:
        await send({"type": "websocket.close"})
        return
    await handler(ident, receive, send)
