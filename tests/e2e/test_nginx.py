"""nginx in front of two uvicorn servers, and what it does against slow handshakes (issue 11).

"10,000 half-sent handshakes held uvicorn's file descriptors until real requests
failed." Neither server bounds the time a client takes to send its request: uvicorn
arms its ``--timeout-keep-alive`` only after a response, so a connection that never
finishes its request line and headers is held until the client goes; daphne (Twisted)
drops a connection after 60 s without a byte, and a client that sends a byte now and
then is held for ever. At the process's descriptor limit, new connections are refused:
``test_a_bare_server_holds_half_sent_handshakes_until_real_requests_fail``.

The defence is nginx, configured by deploy/nginx/streampod.conf (the file the
deployment docs show): it passes a request on only once its headers are complete,
drops one whose headers take longer than ``client_header_timeout`` in all (trickled or
not), and counts sockets per address (``limit_conn``). Real processes throughout: nginx,
two uvicorn servers and a private redis-server. Every wait is for an event (a frame, a
response, the end of a TCP stream); time bounds are failure guards only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import resource
import subprocess
import sys
import time

import httpx
import pytest
import websockets

from tests.e2e.test_chat_e2e import chat_frame, ready, recv_chat
from tests.support.nginx import (
    ACCEPTED,
    PLACEHOLDERS,
    TEMPLATE,
    NginxServer,
    count_lines,
    fd_count,
    nginx_cluster,
    render,
    wait_lines,
)
from tests.support.servers import (
    ROOT,
    DaphneServer,
    RedisServer,
    UvicornServer,
    child_pids,
    socket_owner,
)

pytestmark = pytest.mark.redis

GUARD = 30  # seconds: a failure guard on a wait, never a synchronisation
HEADER_TIMEOUT = 6  # client_header_timeout in these tests (deployed: 10 s)
SHORT_TIMEOUT = 2  # client_body_timeout and keepalive_timeout in these tests
PER_ADDRESS = 30  # limit_conn in these tests (deployed: 100)
HALF_SENT = 2000  # half-sent handshakes through nginx, if the descriptor limit allows
TRICKLERS = 10  # connections that send a header byte every 0.5 s
#: A WebSocket handshake cut off before the blank line that ends its headers.
PARTIAL = (
    b"GET /websocket/ HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
)


def raise_fd_limit() -> int:
    """Raise this process's descriptor limit to its hard limit (nginx, started after,
    inherits it); the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@pytest.fixture(scope="module")
def behind_nginx(django_db_setup, django_db_blocker):
    """A private redis-server, two uvicorn servers sharing it, and nginx in front of
    them with the deployed configuration (shorter timeouts): (nginx, a, b)."""
    raise_fd_limit()
    overrides = {
        "client_header_timeout": f"{HEADER_TIMEOUT}s",
        "client_body_timeout": f"{SHORT_TIMEOUT}s",
        "keepalive_timeout": f"{SHORT_TIMEOUT}s",
        "limit_conn": f"streampod_per_address {PER_ADDRESS}",
    }
    with nginx_cluster(overrides) as (nginx, _, a, b):
        yield nginx, a, b


class HalfSent:
    """A TCP connection that sent ``payload`` and then nothing: when did the server end it?"""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.opened = time.monotonic()
        self.closed: float | None = None  # when the server ended the stream
        self.got = b""  # what the server sent before (nothing, for nginx)
        self.reset = False  # ended by an RST (reset_timedout_connection), not a FIN
        self.ended = asyncio.get_running_loop().create_task(self._wait_end())

    @classmethod
    async def open(cls, port: int, payload: bytes = PARTIAL) -> HalfSent:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(payload)
        await writer.drain()
        return cls(reader, writer)

    async def _wait_end(self) -> None:
        try:
            while chunk := await self.reader.read(4096):
                self.got += chunk
        except (ConnectionResetError, BrokenPipeError):
            self.reset = True  # reset_timedout_connection: an RST rather than a FIN
        self.closed = time.monotonic()

    def close(self) -> None:
        self.ended.cancel()
        self.writer.close()


async def open_many(port: int, count: int, batch: int = 100) -> list[HalfSent]:
    opened: list[HalfSent] = []
    for start in range(0, count, batch):
        n = min(batch, count - start)
        opened += await asyncio.gather(*(HalfSent.open(port) for _ in range(n)))
    return opened


async def wait_all_ended(conns: list[HalfSent], timeout: float) -> None:
    async with asyncio.timeout(timeout):
        await asyncio.gather(*(c.ended for c in conns))


async def real_request(port: int, path: str = "/login/") -> bytes:
    """A whole GET on a fresh connection: the response's first bytes, or b"" when the
    server ended the connection without an answer."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return b""
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        )
        async with asyncio.timeout(GUARD):
            return await reader.read(64)
    except (ConnectionResetError, BrokenPipeError):
        return b""
    finally:
        writer.close()


def connect(url: str, key: str | None = None, **kwargs):
    headers = {"Authorization": key} if key else None
    return websockets.connect(url, additional_headers=headers, open_timeout=GUARD, **kwargs)


# --- The configuration the docs show ------------------------------------------------


def test_the_documented_rendering_is_what_the_tests_run_and_nginx_accepts_it(tmp_path):
    """The file's header renders it with envsubst; tests/support/nginx.py does the same."""
    values = {
        "STREAMPOD_LISTEN": "127.0.0.1:8080",
        "STREAMPOD_UPSTREAM_1": "127.0.0.1:8001",
        "STREAMPOD_UPSTREAM_2": "127.0.0.1:8002",
    }
    header = TEMPLATE.read_text()
    command = re.search(r"envsubst '([^']+)'", header)
    assert command is not None
    assert command.group(1).split() == [f"${name}" for name in PLACEHOLDERS]
    envsubst = subprocess.run(
        ["envsubst", command.group(1)],
        input=header,
        capture_output=True,
        text=True,
        env={**os.environ, **values},
        check=True,
        timeout=30,
    )
    assert envsubst.stdout == render(values)
    assert "$http_upgrade" in envsubst.stdout  # nginx's own variables are left alone

    nginx = NginxServer(["127.0.0.1:8001", "127.0.0.1:8002"])
    try:
        assert "test is successful" in nginx.check()
    finally:
        nginx.__exit__(None, None, None)


def test_the_documented_tls_lines_are_accepted_by_nginx(tmp_path):
    """docs/deployment.md, "TLS in nginx": the file with its listen line replaced by the
    documented three lines, and a self-signed certificate at the documented paths."""
    text = (ROOT / "docs" / "deployment.md").read_text()
    section = text.split("**TLS in nginx.**", 1)[1]
    lines = re.search(r"```\n(.*?)```", section, re.DOTALL).group(1)
    certificate, key = tmp_path / "fullchain.pem", tmp_path / "privkey.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=chat.example.com", "-keyout", str(key), "-out", str(certificate)],
        capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    lines = lines.replace("/etc/streampod/tls/fullchain.pem", str(certificate))
    lines = lines.replace("/etc/streampod/tls/privkey.pem", str(key))
    nginx = NginxServer(["127.0.0.1:8001", "127.0.0.1:8002"])
    try:
        conf = nginx.write_conf()
        rendered = conf.read_text()
        listen = re.search(r"^\s*listen 127\.0\.0\.1:\d+;\n", rendered, re.MULTILINE)
        assert listen is not None
        conf.write_text(rendered.replace(listen.group(0), lines))
        result = subprocess.run(
            nginx.command("-t"), capture_output=True, text=True, timeout=30, check=False
        )
        assert "test is successful" in result.stderr, result.stderr
    finally:
        nginx.__exit__(None, None, None)


def test_every_copy_of_the_configuration_in_the_docs_is_the_file():
    """An ```nginx block of the docs that shows the upstream is deploy/nginx/streampod.conf."""
    shown = []
    for doc in sorted((ROOT / "docs").glob("*.md")):
        for block in re.findall(r"```nginx\n(.*?)```", doc.read_text(), re.DOTALL):
            if "upstream streampod" in block:
                shown.append(doc.name)
                assert block == TEMPLATE.read_text(), f"{doc.name} shows another configuration"
    assert "reliability.md" in shown


# --- What the servers do on their own -----------------------------------------------


@pytest.mark.parametrize("server_class", [UvicornServer, DaphneServer], ids=lambda c: c.name)
async def test_a_bare_server_holds_half_sent_handshakes_until_real_requests_fail(
    server_class, django_db_setup
):
    """With 256 descriptors (a small ulimit -n, to see at 300 connections what 10,000
    do to a real one), half-sent handshakes take them all, and a real request gets no
    answer; once they go, it does."""
    limit = 256

    class Limited(server_class):  # type: ignore[misc, valid-type]
        def command(self) -> list[str]:
            return ["prlimit", f"--nofile={limit}:{limit}", "--", *super().command()]

    srv = await asyncio.to_thread(Limited().start)
    conns: list[HalfSent] = []
    try:
        assert (await real_request(srv.port)).startswith(b"HTTP/1.1 200")
        baseline = fd_count(srv.proc.pid)
        conns = await open_many(srv.port, 300, batch=50)
        # The server accepts until it runs out of descriptors; the first connection it
        # then drops at accept says it is full.
        await asyncio.wait_for(_ended_among(conns, count=1), GUARD)
        assert await real_request(srv.port) == b""  # no answer: dropped at accept
        assert fd_count(srv.proc.pid) >= limit - 2
        held = [c for c in conns if c.closed is None]
        assert len(held) >= limit - baseline - 10, (len(held), baseline)
        print(
            f"{srv.name}: {baseline} fds before, {fd_count(srv.proc.pid)} with "
            f"{len(held)} half-sent handshakes held",
            file=sys.stderr,
        )

        for conn in conns:
            conn.close()
        async with asyncio.timeout(GUARD):
            while not (answer := await real_request(srv.port)):
                pass  # each attempt ends on an event: the answer, or the server's close
        assert answer.startswith(b"HTTP/1.1 200")
    finally:
        for conn in conns:
            conn.close()
        await asyncio.to_thread(srv.stop)


async def _ended_among(conns: list[HalfSent], count: int) -> int:
    """Wait until ``count`` of ``conns`` were ended by the server."""
    done = [c.ended for c in conns]
    ended = 0
    for future in asyncio.as_completed(done):
        await future
        ended += 1
        if ended >= count:
            return ended
    return ended


async def test_uvicorn_keep_alive_timeout_does_not_cover_a_half_sent_request(django_db_setup):
    """``--timeout-keep-alive 1`` closes an idle connection after its response; a request
    that never finished has no timer at all."""
    srv = await asyncio.to_thread(UvicornServer(args=["--timeout-keep-alive", "1"]).start)
    conns: list[HalfSent] = []
    try:
        conns = await open_many(srv.port, 200)
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(b"GET /login/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answered = HalfSent(reader, writer)  # watches the stream's end
        await asyncio.wait_for(answered.ended, GUARD)  # uvicorn closed it after 1 s
        assert answered.got.startswith(b"HTTP/1.1 200")
        # ... opened after the 200 half-sent ones, closed before any of them.
        assert [c for c in conns if c.closed is not None] == []
        assert fd_count(srv.proc.pid) >= 200
        answered.close()
    finally:
        for conn in conns:
            conn.close()
        await asyncio.to_thread(srv.stop)


# --- Through nginx ------------------------------------------------------------------


async def test_half_sent_handshakes_through_nginx_are_dropped_and_chat_goes_on(
    behind_nginx, make_user
):
    nginx, a, b = behind_nginx
    alice, alice_key = await make_user("alice")
    bob, bob_key = await make_user("bob")
    upstream_pids = [a.proc.pid, b.proc.pid]
    before = {
        "nginx_fds": nginx.open_fds(),
        "nginx_rss_kb": nginx.rss_kb(),
        "upstream_fds": [fd_count(pid) for pid in upstream_pids],
    }

    # This process holds one descriptor per connection (20,000 here; 1,024 on some hosts).
    half_sent = min(HALF_SENT, resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 300)
    started = time.monotonic()
    conns = await open_many(nginx.port, half_sent)
    tricklers = await asyncio.gather(*(HalfSent.open(nginx.port) for _ in range(TRICKLERS)))
    trickling = [asyncio.create_task(_trickle(t)) for t in tricklers]
    opened_in = time.monotonic() - started
    try:
        # A connection is open once the kernel accepted it; nginx takes it from the
        # backlog a moment later: wait until it holds them all (a state, polled).
        expected_fds = before["nginx_fds"] + half_sent + TRICKLERS
        await _wait_fds(nginx, expected_fds)
        held = {
            "nginx_fds": nginx.open_fds(),
            "nginx_rss_kb": nginx.rss_kb(),
            "upstream_fds": [fd_count(pid) for pid in upstream_pids],
        }
        # Meanwhile, real clients connect and chat through nginx.
        async with (
            connect(nginx.ws_url, alice_key) as alices,
            connect(nginx.ws_url, bob_key) as bobs,
        ):
            await ready(bobs, bob.pk)
            await alices.send(chat_frame(bob.pk, "through nginx, under attack"))
            frame = await recv_chat(bobs)
            assert frame["object"]["data"]["text"] == "through nginx, under attack"
            async with httpx.AsyncClient(base_url=nginx.http_url, timeout=GUARD) as http:
                response = await http.get(
                    "/api/chat/messages/",
                    params={"with": alice.pk},
                    headers={"Authorization": bob_key},
                )
            assert response.status_code == 200
            assert [m["text"] for m in response.json()["results"]] == [
                "through nginx, under attack"
            ]
            chatted_at = time.monotonic()
            # Every half-sent handshake was still held while they chatted ...
            assert [c for c in [*conns, *tricklers] if c.closed is not None] == []
            # ... by nginx alone: none reached uvicorn (nginx passes complete requests only).
            assert held["nginx_fds"] >= expected_fds
            for pid, fds in zip(upstream_pids, before["upstream_fds"], strict=True):
                assert fd_count(pid) <= fds + 10  # alice's and bob's sockets, and Redis

            # nginx drops each one once its headers took client_header_timeout, the
            # tricklers too though they still send.
            await wait_all_ended([*conns, *tricklers], HEADER_TIMEOUT + GUARD)
            lifetimes = [c.closed - c.opened for c in [*conns, *tricklers]]
            assert min(lifetimes) >= HEADER_TIMEOUT - 1, min(lifetimes)
            assert all(c.got == b"" for c in conns)  # closed without an answer
            trickled = await asyncio.wait_for(asyncio.gather(*trickling), GUARD)
            assert min(trickled) >= HEADER_TIMEOUT, trickled  # bytes sent until the end
            for t in tricklers:
                assert t.closed - t.opened < HEADER_TIMEOUT + 5

            # The chat's sockets are whole requests: the timeout never touched them.
            await alices.send(chat_frame(bob.pk, "after the attack"))
            frame = await recv_chat(bobs)
            assert frame["object"]["data"]["text"] == "after the attack"
        after = {"nginx_fds": nginx.open_fds(), "nginx_rss_kb": nginx.rss_kb()}
        assert after["nginx_fds"] <= before["nginx_fds"] + 4
    finally:
        for task in trickling:
            task.cancel()
        for conn in [*conns, *tricklers]:
            conn.close()
    report = {
        "half_sent": half_sent,
        "tricklers": TRICKLERS,
        "opened_in_s": round(opened_in, 2),
        "chat_done_after_s": round(chatted_at - started, 2),
        "closed_after_s": [round(min(lifetimes), 2), round(max(lifetimes), 2)],
        "resets": sum(c.reset for c in [*conns, *tricklers]),
        "before": before,
        "held": held,
        "after": after,
    }
    print("half-sent through nginx:", json.dumps(report), file=sys.stderr)


async def _wait_fds(nginx: NginxServer, count: int) -> None:
    """Wait until nginx's workers hold ``count`` descriptors (a state, polled)."""
    deadline = time.monotonic() + GUARD
    while True:
        fds = nginx.open_fds()
        if fds >= count:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"nginx holds {fds} descriptors, expected {count}")
        await asyncio.sleep(0.05)


async def _trickle(conn: HalfSent) -> int:
    """Send one more header byte every 0.5 s (the attack's pace) until the server ends
    the connection; how many were sent."""
    sent = 0
    header = b"X-Slow: " + b"a" * 1000
    while conn.closed is None and sent < len(header):
        done, _ = await asyncio.wait([conn.ended], timeout=0.5)
        if done:
            break
        try:
            conn.writer.write(header[sent : sent + 1])
            await conn.writer.drain()
        except (ConnectionResetError, BrokenPipeError):
            break
        sent += 1
    return sent


async def test_a_slow_request_body_through_nginx_is_dropped_before_any_server_sees_it(
    behind_nginx,
):
    nginx, a, b = behind_nginx
    body = b'{"username": "alice", "password": "' + b"x" * 100 + b'"}'
    conn = await HalfSent.open(
        nginx.port,
        b"POST /api/auth/token/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body[:20],
    )
    try:
        await asyncio.wait_for(conn.ended, SHORT_TIMEOUT + GUARD)
        assert conn.closed - conn.opened >= SHORT_TIMEOUT - 0.3
        # nginx reads a whole body before it opens a connection upstream.
        for srv in (a, b):
            assert "/api/auth/token/" not in srv.logs()
    finally:
        conn.close()


async def test_an_idle_keep_alive_connection_is_closed_by_nginx(behind_nginx):
    nginx, _, _ = behind_nginx
    reader, writer = await asyncio.open_connection("127.0.0.1", nginx.port)
    writer.write(b"GET /login/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    conn = HalfSent(reader, writer)
    try:
        await asyncio.wait_for(conn.ended, SHORT_TIMEOUT + GUARD)
        assert conn.got.startswith(b"HTTP/1.1 200")
        assert conn.closed - conn.opened >= SHORT_TIMEOUT - 0.3
    finally:
        conn.close()


async def test_the_probes_are_not_served_to_the_public_through_nginx(behind_nginx):
    """/readyz names the Redis and the database a server cannot reach (seen, a newcomer's
    try: through nginx, anyone read "redis 127.0.0.1:25794/0 ... ConnectionError"). The
    deployed configuration answers the probe paths with 404; each server answers them."""
    nginx, a, _ = behind_nginx
    public = f"http://127.0.0.1:{nginx.port}"
    async with httpx.AsyncClient(timeout=GUARD) as http:
        for path in ("/healthz", "/readyz", "/metrics", "/readyz/"):
            response = await http.get(public + path)
            assert response.status_code == 404, (path, response.text)
            assert "redis" not in response.text.lower()
        for path in ("/healthz", "/readyz"):
            assert (await http.get(a.http_url + path)).status_code == 200, path
        assert (await http.get(public + "/login/")).status_code == 200  # the rest is served


async def test_sockets_per_address_are_limited_with_429(behind_nginx):
    nginx, _, _ = behind_nginx
    async with contextlib.AsyncExitStack() as stack:
        sockets = [
            await stack.enter_async_context(connect(nginx.ws_url)) for _ in range(PER_ADDRESS)
        ]
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with connect(nginx.ws_url):
                pass
        assert refused.value.response.status_code == 429
        for ws in sockets:  # those that were let in work
            await ws.send(json.dumps({"command": "ping", "args": {}}))
        for ws in sockets:
            while json.loads(await asyncio.wait_for(ws.recv(), GUARD)).get("command") != "pong":
                pass
    # All closed: the address may connect again (nginx counts a socket until it ends).
    async with asyncio.timeout(GUARD):
        while True:
            try:
                async with connect(nginx.ws_url) as ws:
                    await ws.send(json.dumps({"command": "ping", "args": {}}))
                    break
            except websockets.InvalidStatus as exc:
                assert exc.response.status_code == 429


# --- The chat through nginx: a browser, the Python client, two upstreams ------------------


def _accepted(srv: DaphneServer) -> int:
    return count_lines(srv.output, ACCEPTED)


@pytest.mark.browser
async def test_a_browser_through_nginx_chats_with_a_python_client_on_the_other_upstream(
    make_user,
):
    """Chromium signs in and chats through nginx; bob's Python client is connected to
    the upstream the browser's socket did not land on, so every message crosses Redis
    (and, under ``make test-pg``, the servers share PostgreSQL); alice's Python client
    connects through nginx too and sees the conversation."""
    from playwright.async_api import async_playwright

    from chat.protocol import ChatMessage
    from streaming.client import Client
    from tests.browser.conftest import CHROMIUM_ARGS, chromium_path
    from tests.browser.test_chat_browser import DESKTOP, say, sign_in, wait_bubbles

    executable = chromium_path()
    alice, alice_key = await make_user("alice", first_name="Alice")
    bob, bob_key = await make_user("bob", first_name="Bob")
    page_errors: list[str] = []
    with nginx_cluster() as (nginx, _, a, b):
        async with async_playwright() as playwright:
            chromium = await playwright.chromium.launch(
                executable_path=executable, args=CHROMIUM_ARGS
            )
            try:
                before = {srv.port: _accepted(srv) for srv in (a, b)}
                context, page = await sign_in(
                    chromium, page_errors, nginx.http_url, "alice", DESKTOP
                )
                # The page's socket went through nginx to one of the two upstreams (the
                # servers' output is read by threads of their own: wait for its line).
                assert await asyncio.to_thread(
                    wait_lines, [a.output, b.output], ACCEPTED, sum(before.values()) + 1, 30
                )
                landed = [srv for srv in (a, b) if _accepted(srv) > before[srv.port]]
                assert len(landed) == 1, (before, [_accepted(a), _accepted(b)])
                other = b if landed[0] is a else a
                async with (
                    Client(other.http_url, auth_key=bob_key) as bobs,
                    Client(nginx.http_url, auth_key=alice_key) as alices_phone,
                ):
                    await bobs.open_streaming_connection()
                    await alices_phone.open_streaming_connection()  # through nginx too
                    await page.click(".person[data-username=bob]")
                    await say(page, "from Chromium, through nginx")
                    got = await asyncio.wait_for(anext(bobs.chat.stream), GUARD)
                    assert (got.sender_id, got.text) == (alice.pk, "from Chromium, through nginx")
                    await bobs.chat.send_stream_message(
                        ChatMessage(recipient_id=alice.pk, text="from Python, on the other one")
                    )
                    conversation = ["from Chromium, through nginx", "from Python, on the other one"]
                    await wait_bubbles(page, conversation)
                    # Alice's Python client, through nginx, saw both (her own as an echo).
                    texts = [
                        (await asyncio.wait_for(anext(alices_phone.chat.stream), GUARD)).text
                        for _ in range(2)
                    ]
                    assert texts == conversation
                await context.close()
            finally:
                await chromium.close()
    assert not page_errors, page_errors
    assert bob.pk != alice.pk


async def test_uvicorn_with_two_workers_shares_the_chat_through_redis(make_user):
    """``uvicorn --workers 2``: one port, two worker processes, each its own bus. Sockets
    are opened until two land on different workers (the worker holding each is read
    from /proc); a message from one reaches the other through Redis."""
    alice, alice_key = await make_user("alice", password=None)
    bob, bob_key = await make_user("bob", password=None)
    with contextlib.ExitStack() as stack:
        rs = stack.enter_context(RedisServer())
        srv = UvicornServer(env={"REDIS_URL": rs.url}, args=["--workers", "2"])
        stack.callback(srv.stop)
        await asyncio.to_thread(srv.start)  # the parent has bound the port ...
        # ... and each worker listens once it logs this.
        assert await asyncio.to_thread(
            wait_lines, [srv.output], "Application startup complete.", 2, GUARD
        ), srv.logs()
        async with contextlib.AsyncExitStack() as sockets:
            alices = await sockets.enter_async_context(connect(srv.ws_url, alice_key))
            await ready(alices, alice.pk)
            workers = child_pids(srv.proc.pid)
            alice_worker = socket_owner(workers, srv.port, alices.local_address[1])
            assert alice_worker is not None, workers
            bobs, bob_worker, tries = None, None, 0
            while bob_worker in (None, alice_worker):
                tries += 1
                assert tries <= 40, "every socket landed on the same worker"
                if bobs is not None:
                    await bobs.close()
                bobs = await sockets.enter_async_context(connect(srv.ws_url, bob_key))
                await ready(bobs, bob.pk)
                bob_worker = socket_owner(workers, srv.port, bobs.local_address[1])
            assert len(set(workers)) >= 2 and {alice_worker, bob_worker} <= set(workers)

            await alices.send(chat_frame(bob.pk, "across two workers"))
            frame = await recv_chat(bobs, timeout=GUARD)
            assert frame["object"]["data"]["text"] == "across two workers"
            await bobs.send(chat_frame(alice.pk, "and back"))
            texts = [(await recv_chat(alices, timeout=GUARD))["object"]["data"]["text"]]
            texts.append((await recv_chat(alices, timeout=GUARD))["object"]["data"]["text"])
            assert texts == ["across two workers", "and back"]  # her ack, then bob's reply
        print(
            f"\ntwo workers: bob's socket on the other worker after {tries} tries", file=sys.stderr
        )
        assert "streaming.W004" not in srv.logs()


async def test_uvicorn_with_two_workers_and_an_in_memory_layer_warns_at_start_up():
    """Each worker's bus is its own with the in-memory layer: a post on one never reaches
    a socket on the other. Servers run no system checks, so every worker logs
    ``streaming.W004`` at start-up; with Redis (the test above) none does."""
    with UvicornServer(args=["--workers", "2"]) as srv:
        assert await asyncio.to_thread(
            wait_lines, [srv.output], "Application startup complete.", 2, GUARD
        ), srv.logs()
        assert srv.logs().count("streaming.W004") == 2, srv.logs()
        assert "started by another (uvicorn --workers)" in srv.logs()


def test_the_documented_server_command_is_the_one_the_tests_run():
    """docs/deployment.md, "Processes": the command is UvicornServer's, on port 8001."""
    text = (ROOT / "docs" / "deployment.md").read_text()
    section = text.split("## Processes", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block is not None
    shown = block.group(1).replace("\\\n", " ").split()
    run = UvicornServer(port=8001).command()
    assert shown == ["python", *run[1:]], (shown, run)
