"""RFC 6455 + ASGI conformance of uvicorn WebSocket protocol classes, black-box.

Every test runs against a real uvicorn process (``tests.support.ws_conformance_server``:
a raw ASGI app, no Django) once per protocol class: uvicorn's own
``websockets-sansio`` (which validates the tests) and Streampod's
``streaming.uvicorn_ws:WebSocketProtocol``. The client is written here, over a raw
non-blocking socket: it builds every frame by hand (masked or not, any opcode, RSV bits,
fragments, split writes) and checks every frame the server sends (unmasked, no RSV bit,
control frames final and <= 125 bytes). What the app saw (its ``websocket.disconnect``
code, the messages it received) comes from the app itself over ``GET /last?id=...``.

Where uvicorn's websockets-sansio implementation itself departs from RFC 6455, the case
is ``xfail(strict=True)`` for that parameter only, with the RFC section in the reason;
Streampod's class must pass every case.

Every read is bounded (``GUARD``); the only waits are bounded polls of a condition.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import pytest

from bench.ports import free_port
from tests.support.servers import _Output, close_output, spawn_logged, wait_or_kill

SANSIO = "websockets-sansio"
STREAMING = "streaming.uvicorn_ws:WebSocketProtocol"
IMPLS = [SANSIO, STREAMING]

GUARD = 5.0  # seconds: a failure guard on every read, never a synchronisation
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
OPCODE_NAMES = {
    CONT: "CONT",
    TEXT: "TEXT",
    BINARY: "BINARY",
    CLOSE: "CLOSE",
    PING: "PING",
    PONG: "PONG",
}

LIMITED_MAX_SIZE = 65536
PING_INTERVAL, PING_TIMEOUT = 0.2, 0.5


# --- the server ---------------------------------------------------------------------


class ConformanceServer:
    """``python -m tests.support.ws_conformance_server --ws <impl> --port N ...``."""

    def __init__(self, impl: str, *args: str) -> None:
        self.impl = impl
        self.args = list(args)
        self.port = free_port()
        self.proc: subprocess.Popen[str] | None = None
        self.output: _Output | None = None

    def command(self) -> list[str]:
        """The server's command line (a subclass serves another app)."""
        return [
            sys.executable, "-m", "tests.support.ws_conformance_server",
            "--ws", self.impl, "--port", str(self.port), *self.args,
        ]  # fmt: skip

    def __enter__(self) -> ConformanceServer:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc, self.output = spawn_logged(self.command(), env)
        if not self.output.wait_for(f"Uvicorn running on http://127.0.0.1:{self.port}", 30):
            logs = self.logs()
            self.__exit__()
            raise RuntimeError(f"uvicorn --ws {self.impl} did not start:\n{logs}")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            wait_or_kill(self.proc, 10)
        close_output(self.proc, self.output)

    def logs(self) -> str:
        return self.output.text() if self.output else ""

    def rss_bytes(self) -> int:
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS in /proc/<pid>/status")


@pytest.fixture(scope="module", params=IMPLS, ids=["sansio", "streaming"])
def impl(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def ws_server(impl: str):
    """uvicorn's defaults (16 MiB messages, pings every 20 s)."""
    with ConformanceServer(impl) as srv:
        yield srv


@pytest.fixture(scope="module")
def limited_server(impl: str):
    with ConformanceServer(impl, "--ws-max-size", str(LIMITED_MAX_SIZE)) as srv:
        yield srv


@pytest.fixture(scope="module")
def pinging_server(impl: str):
    with ConformanceServer(
        impl,
        "--ws-ping-interval",
        str(PING_INTERVAL),
        "--ws-ping-timeout",
        str(PING_TIMEOUT),
    ) as srv:
        yield srv


@pytest.fixture
def fresh_server(impl: str):
    """A server of this test's own (the test stops it)."""
    with ConformanceServer(impl) as srv:
        yield srv


def sansio_deviates(request: pytest.FixtureRequest, impl: str, reason: str) -> None:
    """This case is a known RFC 6455 departure of uvicorn's websockets-sansio class."""
    if impl == SANSIO:
        request.applymarker(pytest.mark.xfail(strict=True, reason=f"websockets-sansio: {reason}"))


# --- frames ---------------------------------------------------------------------------


def mask_bytes(data: bytes, key: bytes) -> bytes:
    if not data:
        return b""
    n = len(data)
    keystream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(keystream, "big")).to_bytes(n, "big")


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bool = True,
) -> bytes:
    """One client frame, masked unless told otherwise; ``rsv`` is RSV1..3 as 3 bits."""
    head = bytearray([(0x80 if fin else 0) | (rsv << 4) | opcode])
    maskbit = 0x80 if mask else 0
    n = len(payload)
    if n < 126:
        head.append(maskbit | n)
    elif n < 65536:
        head.append(maskbit | 126)
        head += struct.pack("!H", n)
    else:
        head.append(maskbit | 127)
        head += struct.pack("!Q", n)
    if mask:
        key = os.urandom(4)
        head += key
        payload = mask_bytes(payload, key)
    return bytes(head) + payload


def close_payload(code: int | None = None, reason: bytes = b"") -> bytes:
    return b"" if code is None else struct.pack("!H", code) + reason


@dataclass
class Frame:
    fin: bool
    rsv: int
    opcode: int
    payload: bytes

    @property
    def close_code(self) -> int | None:
        assert self.opcode == CLOSE
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else None

    @property
    def close_reason(self) -> str:
        assert self.opcode == CLOSE
        return self.payload[2:].decode("utf-8")

    def __repr__(self) -> str:
        name = OPCODE_NAMES.get(self.opcode, hex(self.opcode))
        if self.opcode == CLOSE and len(self.payload) >= 2:
            body = f"code={self.close_code} reason={self.payload[2:]!r}"
        elif len(self.payload) > 40:
            body = f"{len(self.payload)} bytes {self.payload[:40]!r}..."
        else:
            body = repr(self.payload)
        return f"<{name}{'' if self.fin else ' FIN=0'} {body}>"


@dataclass
class HTTPResponse:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return ", ".join(values) if values else None


# --- the client -----------------------------------------------------------------------


@dataclass
class Client:
    """A WebSocket client over a raw socket: every byte on the wire is the test's."""

    sock: socket.socket
    port: int
    ident: str
    key: str = ""
    buf: bytearray = field(default_factory=bytearray)
    eof: bool = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    async def send(self, data: bytes) -> None:
        await asyncio.wait_for(self.loop.sock_sendall(self.sock, data), GUARD)

    async def send_lenient(self, data: bytes) -> None:
        """Send what the server may refuse half-way (it may have closed already)."""
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            await self.send(data)

    async def send_frame(self, opcode: int, payload: bytes = b"", **kw: Any) -> None:
        await self.send(frame(opcode, payload, **kw))

    async def _fill(self) -> bool:
        if self.eof:
            return False
        try:
            chunk = await self.loop.sock_recv(self.sock, 1 << 18)
        except (ConnectionResetError, BrokenPipeError):
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    async def _read_exact(self, n: int) -> bytes | None:
        while len(self.buf) < n:
            if not await self._fill():
                return None
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    async def _read_frame(self) -> Frame | None:
        head = await self._read_exact(2)
        if head is None:
            assert not self.buf, f"TCP closed inside a frame header: {bytes(self.buf)!r}"
            return None
        b0, b1 = head
        n = b1 & 0x7F
        if n == 126:
            ext = await self._read_exact(2)
            assert ext is not None, "TCP closed inside a frame header"
            n = struct.unpack("!H", ext)[0]
        elif n == 127:
            ext = await self._read_exact(8)
            assert ext is not None, "TCP closed inside a frame header"
            n = struct.unpack("!Q", ext)[0]
        assert not b1 & 0x80, "the server masked a frame (RFC 6455 5.1: it MUST NOT)"
        payload = await self._read_exact(n)
        assert payload is not None, f"TCP closed inside a {n}-byte frame payload"
        got = Frame(fin=bool(b0 & 0x80), rsv=(b0 >> 4) & 7, opcode=b0 & 0x0F, payload=payload)
        assert got.rsv == 0, f"the server set RSV bits with no extension negotiated: {got}"
        assert got.opcode in OPCODE_NAMES, f"the server sent a reserved opcode: {got}"
        if got.opcode >= CLOSE:
            assert got.fin and len(payload) <= 125, f"invalid control frame from server: {got}"
        return got

    async def recv_frame(self, timeout: float = GUARD) -> Frame | None:
        """The next frame from the server; None once it closed TCP."""
        try:
            return await asyncio.wait_for(self._read_frame(), timeout)
        except TimeoutError:
            raise AssertionError(f"no frame from the server within {timeout} s") from None

    async def recv_message(self) -> tuple[str, str | bytes]:
        """The next data message (fragments joined): ("text", str) or ("bytes", bytes)."""
        first = await self.recv_frame()
        assert first is not None and first.opcode in (TEXT, BINARY), (
            f"expected a data message, got {first}"
        )
        parts = [first.payload]
        last = first
        while not last.fin:
            nxt = await self.recv_frame()
            assert nxt is not None and nxt.opcode == CONT, f"expected a continuation, got {nxt}"
            parts.append(nxt.payload)
            last = nxt
        data = b"".join(parts)
        if first.opcode == TEXT:
            return "text", data.decode("utf-8")
        return "bytes", data

    async def expect_close(self, code: int | None, reason: str | None = None) -> Frame:
        got = await self.recv_frame()
        assert got is not None and got.opcode == CLOSE, f"expected CLOSE {code}, got {got}"
        assert len(got.payload) != 1, f"the server sent a 1-byte close payload: {got}"
        assert got.close_code == code, f"expected CLOSE {code}, got {got}"
        got.close_reason  # noqa: B018  (a close reason must be UTF-8: this decodes it)
        if reason is not None:
            assert got.close_reason == reason, f"expected reason {reason!r}, got {got}"
        return got

    async def expect_eof(self, timeout: float = GUARD) -> None:
        """The server closes TCP, sending no further frame."""

        async def rest() -> list[Frame]:
            frames = []
            while (got := await self._read_frame()) is not None:
                frames.append(got)
            return frames

        try:
            frames = await asyncio.wait_for(rest(), timeout)
        except TimeoutError:
            raise AssertionError(f"the server did not close TCP within {timeout} s") from None
        assert frames == [], f"the server sent {frames} after its close frame"

    async def read_to_eof(self) -> None:
        """Read raw bytes (an HTTP body) until the server closes TCP."""

        async def drain() -> None:
            while await self._fill():
                pass

        try:
            await asyncio.wait_for(drain(), GUARD)
        except TimeoutError:
            raise AssertionError(f"the server did not close TCP within {GUARD} s") from None

    async def fails_with(self, code: int) -> None:
        """The server fails the connection: a close frame with ``code``, then TCP closed."""
        await self.expect_close(code)
        await self.expect_eof()

    async def echo_round_trip(self, text: str = "still open") -> None:
        await self.send_frame(TEXT, text.encode())
        assert await self.recv_message() == ("text", text)

    def close(self) -> None:
        self.sock.close()


async def open_ws(
    port: int,
    path: str = "/echo",
    *,
    headers: dict[str, str | None] | None = None,
) -> tuple[Client, HTTPResponse]:
    """Open a socket and send the opening handshake (``headers``: None removes one;
    the pseudo-header ``method`` replaces GET)."""
    sock = socket.socket()
    sock.setblocking(False)
    client = Client(sock, port, uuid.uuid4().hex)
    try:
        return await _handshake(client, path, headers or {})
    except BaseException:
        sock.close()
        raise


async def _handshake(
    client: Client, path: str, headers: dict[str, str | None]
) -> tuple[Client, HTTPResponse]:
    port, ident = client.port, client.ident
    await asyncio.wait_for(client.loop.sock_connect(client.sock, ("127.0.0.1", port)), GUARD)
    fields: dict[str, str | None] = {
        "Host": f"127.0.0.1:{port}",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version": "13",
    }
    fields.update(headers)
    method = fields.pop("method", None) or "GET"
    sep = "&" if "?" in path else "?"
    request = f"{method} {path}{sep}id={ident} HTTP/1.1\r\n"
    request += "".join(f"{k}: {v}\r\n" for k, v in fields.items() if v is not None) + "\r\n"
    client.key = fields["Sec-WebSocket-Key"] or ""
    await client.send(request.encode())

    async def head() -> bytes:
        while b"\r\n\r\n" not in client.buf:
            if not await client._fill():
                raise AssertionError(f"TCP closed before a response head: {bytes(client.buf)!r}")
        end = client.buf.index(b"\r\n\r\n") + 4
        data = bytes(client.buf[:end])
        del client.buf[:end]
        return data

    raw = await asyncio.wait_for(head(), GUARD)
    status_line, *header_lines = raw.decode("latin-1").split("\r\n")[:-2]
    _, status, *reason = status_line.split(" ", 2)
    response = HTTPResponse(
        status=int(status),
        reason=reason[0] if reason else "",
        headers=[tuple(x.strip() for x in line.split(":", 1)) for line in header_lines],  # type: ignore[misc]
    )
    if response.status != 101:
        length = response.header("content-length")
        if length is not None:
            body = await asyncio.wait_for(client._read_exact(int(length)), GUARD)
            response.body = body or b""
        else:
            await client.read_to_eof()
            response.body = bytes(client.buf)
    return client, response


@contextlib.asynccontextmanager
async def connected(port: int, path: str = "/echo", **kw: Any) -> AsyncIterator[Client]:
    """An open WebSocket (the handshake answered 101); closed at the end."""
    client, response = await open_ws(port, path, **kw)
    try:
        assert response.status == 101, f"handshake refused: {response}"
        yield client
    finally:
        client.close()


# --- what the app saw -----------------------------------------------------------------


async def app_record(port: int, ident: str) -> dict[str, Any] | None:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), GUARD)
    try:
        request = f"GET /last?id={ident} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        writer.write(request.encode() + b"\r\n")
        raw = await asyncio.wait_for(reader.read(), GUARD)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), raw
    return json.loads(body)


async def app_until(
    port: int, ident: str, ready: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, Any]:
    """Poll what the app saw on connection ``ident`` until ``ready`` holds (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + GUARD
    record = None
    while loop.time() < deadline:
        record = await app_record(port, ident)
        if record is not None and ready(record):
            return record
        await asyncio.sleep(0.02)
    raise AssertionError(f"the app never saw {what} within {GUARD} s; it saw {record}")


async def app_disconnect(port: int, ident: str) -> dict[str, Any]:
    record = await app_until(
        port, ident, lambda r: r["disconnect"] is not None, "websocket.disconnect"
    )
    return record["disconnect"]


# --- 1. opening handshake ---------------------------------------------------------------


async def test_handshake_answers_101_with_the_right_accept(ws_server):
    client, response = await open_ws(ws_server.port)
    try:
        assert response.status == 101, response
        assert (response.header("upgrade") or "").lower() == "websocket", response
        assert "upgrade" in (response.header("connection") or "").lower(), response
        key = client.key.encode()
        expected = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
        assert response.header("sec-websocket-accept") == expected, response
        assert response.header("sec-websocket-protocol") is None, response  # none offered
        assert response.header("sec-websocket-extensions") is None, response  # none offered
        await client.echo_round_trip("hello")
    finally:
        client.close()


BAD_HANDSHAKES = {
    "no-key": {"Sec-WebSocket-Key": None},
    "key-not-base64": {"Sec-WebSocket-Key": "not a base64 key!"},
    "key-15-bytes": {"Sec-WebSocket-Key": base64.b64encode(b"k" * 15).decode()},
    "no-version": {"Sec-WebSocket-Version": None},
    "version-8": {"Sec-WebSocket-Version": "8"},
}


@pytest.mark.parametrize("headers", BAD_HANDSHAKES.values(), ids=BAD_HANDSHAKES.keys())
async def test_an_invalid_handshake_gets_a_4xx_and_never_reaches_the_app(ws_server, headers):
    client, response = await open_ws(ws_server.port, headers=headers)
    client.close()
    assert 400 <= response.status < 500, response
    assert await app_record(ws_server.port, client.ident) is None


async def test_an_upgrade_that_is_not_a_get_gets_a_4xx(ws_server):
    """RFC 6455 4.1: the method MUST be GET; 4.2.1: an invalid handshake gets an HTTP error."""
    client, response = await open_ws(ws_server.port, headers={"method": "POST"})
    client.close()
    assert 400 <= response.status < 500, response
    assert await app_record(ws_server.port, client.ident) is None


async def test_an_unsupported_version_is_answered_with_the_supported_one(ws_server, impl, request):
    sansio_deviates(
        request,
        impl,
        "a version-8 handshake gets a plain 400 without Sec-WebSocket-Version; RFC 6455 4.4 "
        "(and 4.2.2 step 4): the server MUST answer with a Sec-WebSocket-Version header "
        "listing the versions it supports",
    )
    client, response = await open_ws(ws_server.port, headers={"Sec-WebSocket-Version": "8"})
    client.close()
    assert 400 <= response.status < 500, response
    versions = [v.strip() for v in (response.header("sec-websocket-version") or "").split(",")]
    assert "13" in versions, response


async def test_accept_carries_the_chosen_subprotocol_and_extra_headers(ws_server):
    client, response = await open_ws(
        ws_server.port, "/subprotocol", headers={"Sec-WebSocket-Protocol": "chat.v2, chat.v1"}
    )
    try:
        assert response.status == 101, response
        assert response.header("sec-websocket-protocol") == "chat.v2", response
        assert response.header("x-conformance") == "1", response
        await client.echo_round_trip()
    finally:
        client.close()


async def test_close_before_accept_is_a_403(ws_server):
    client, response = await open_ws(ws_server.port, "/deny")
    try:
        assert response.status == 403, response
        await client.read_to_eof()
    finally:
        client.close()


async def test_an_http_response_from_the_app_reaches_the_client(ws_server):
    client, response = await open_ws(ws_server.port, "/http-deny")
    try:
        assert response.status == 418, response
        assert response.header("x-deny") == "teapot", response
        assert response.body == b"no websocket for you", response
    finally:
        client.close()


# --- 2. data ----------------------------------------------------------------------------

MESSAGES = {
    "text": (TEXT, "héllo wörld 🎉".encode()),
    "binary": (BINARY, bytes(range(256))),
    "empty-text": (TEXT, b""),
    "empty-binary": (BINARY, b""),
}


def as_message(opcode: int, payload: bytes) -> tuple[str, str | bytes]:
    return ("text", payload.decode()) if opcode == TEXT else ("bytes", payload)


@pytest.mark.parametrize("opcode,payload", MESSAGES.values(), ids=MESSAGES.keys())
async def test_echo(ws_server, opcode, payload):
    async with connected(ws_server.port) as client:
        await client.send_frame(opcode, payload)
        assert await client.recv_message() == as_message(opcode, payload)


@pytest.mark.parametrize("opcode", [TEXT, BINARY], ids=["text", "binary"])
async def test_a_one_megabyte_message_is_echoed(ws_server, opcode):
    payload = os.urandom(1 << 20) if opcode == BINARY else b"x" * (1 << 20)
    async with connected(ws_server.port) as client:
        await client.send_frame(opcode, payload)
        assert await client.recv_message() == as_message(opcode, payload)


async def test_many_small_frames_in_one_tcp_write(ws_server):
    texts = [f"m{i}" for i in range(200)]
    async with connected(ws_server.port) as client:
        await client.send(b"".join(frame(TEXT, t.encode()) for t in texts))
        for text in texts:
            assert await client.recv_message() == ("text", text)


async def test_one_frame_written_byte_by_byte(ws_server):
    data = frame(TEXT, "split into single bytes: ü€𝄞".encode())
    async with connected(ws_server.port) as client:
        for i in range(len(data)):
            await client.send(data[i : i + 1])
        assert await client.recv_message() == ("text", "split into single bytes: ü€𝄞")


@pytest.mark.parametrize("opcode", [TEXT, BINARY], ids=["text", "binary"])
async def test_a_fragmented_message_with_a_ping_between_fragments(ws_server, opcode):
    async with connected(ws_server.port) as client:
        await client.send(frame(opcode, b"Hel", fin=False) + frame(PING, b"mid-message"))
        pong = await client.recv_frame()
        assert pong is not None and pong.opcode == PONG and pong.payload == b"mid-message", pong
        await client.send(frame(CONT, b"lo, ", fin=False))
        await client.send(frame(CONT, b"", fin=False) + frame(CONT, b"world"))
        assert await client.recv_message() == as_message(opcode, b"Hello, world")


async def test_a_code_point_split_across_fragments_is_accepted(ws_server):
    data = "κόσμε 𝄞".encode()
    async with connected(ws_server.port) as client:
        await client.send(
            frame(TEXT, data[:1], fin=False)  # inside κ
            + frame(CONT, data[1:4], fin=False)  # ends inside ό
            + frame(CONT, data[4:-2], fin=False)  # ends inside 𝄞
            + frame(CONT, data[-2:])
        )
        assert await client.recv_message() == ("text", "κόσμε 𝄞")


# --- 3. ping / pong -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload", [b"", b"hello", bytes(range(125))], ids=["empty", "short", "125-bytes"]
)
async def test_ping_is_answered_with_a_pong_of_the_same_payload(ws_server, payload):
    async with connected(ws_server.port) as client:
        await client.send_frame(PING, payload)
        pong = await client.recv_frame()
        assert pong is not None and pong.opcode == PONG and pong.payload == payload, pong


async def test_an_unsolicited_pong_is_ignored(ws_server):
    async with connected(ws_server.port) as client:
        await client.send(frame(PONG, b"unsolicited") + frame(TEXT, b"after"))
        assert await client.recv_message() == ("text", "after")  # nothing came before it


# --- 4. protocol errors: close 1002 ---------------------------------------------------------

PROTOCOL_ERRORS = {
    "unmasked": frame(TEXT, b"hello", mask=False),
    "rsv1": frame(TEXT, b"hello", rsv=0b100),
    "rsv2": frame(TEXT, b"hello", rsv=0b010),
    "rsv3": frame(TEXT, b"hello", rsv=0b001),
    **{f"opcode-{op:#x}": frame(op, b"x") for op in [*range(3, 8), *range(0xB, 0x10)]},
    "ping-126-bytes": frame(PING, b"p" * 126),
    "close-126-bytes": frame(CLOSE, close_payload(1000, b"r" * 124)),
    "ping-fin-0": frame(PING, b"p", fin=False),
    "continuation-alone": frame(CONT, b"nothing to continue"),
    "continuation-alone-fin-0": frame(CONT, b"nothing", fin=False),
    "text-inside-fragmented-text": frame(TEXT, b"a", fin=False) + frame(TEXT, b"b"),
    "binary-inside-fragmented-text": frame(TEXT, b"a", fin=False) + frame(BINARY, b"b"),
    "close-1-byte": frame(CLOSE, b"\x03"),
}

INVALID_CLOSE_CODES = [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]


@pytest.mark.parametrize("data", PROTOCOL_ERRORS.values(), ids=PROTOCOL_ERRORS.keys())
async def test_a_protocol_error_fails_the_connection_with_1002(ws_server, data):
    async with connected(ws_server.port) as client:
        await client.send(data)
        await client.fails_with(1002)
        await app_disconnect(ws_server.port, client.ident)  # the app is told


@pytest.mark.parametrize("code", INVALID_CLOSE_CODES)
async def test_a_close_code_invalid_on_the_wire_is_a_protocol_error(ws_server, code):
    async with connected(ws_server.port) as client:
        await client.send_frame(CLOSE, close_payload(code, b"x"))
        await client.fails_with(1002)


# --- 5. UTF-8: close 1007 -----------------------------------------------------------------

INVALID_UTF8 = {
    "byte-ff": b"ok \xff",
    "overlong": b"\xc0\xaf",
    "surrogate": b"\xed\xa0\x80",
    "above-10ffff": b"\xf4\x90\x80\x80",
    "truncated": "κόσμε".encode()[:-1],
}


@pytest.mark.parametrize("payload", INVALID_UTF8.values(), ids=INVALID_UTF8.keys())
async def test_invalid_utf8_text_fails_with_1007(ws_server, payload):
    async with connected(ws_server.port) as client:
        await client.send_frame(TEXT, payload)
        await client.fails_with(1007)


async def test_invalid_utf8_split_across_fragments_fails_with_1007(ws_server):
    async with connected(ws_server.port) as client:
        # Each fragment could start or end a valid sequence; together they are invalid.
        await client.send(frame(TEXT, b"ab\xce", fin=False) + frame(CONT, b"\xff"))
        await client.fails_with(1007)


async def test_invalid_utf8_in_a_close_reason_fails_with_1007(ws_server):
    async with connected(ws_server.port) as client:
        await client.send_frame(CLOSE, close_payload(1000, b"bad \xff reason"))
        await client.fails_with(1007)


# --- 6. message size: close 1009 -----------------------------------------------------------

TOO_BIG = {
    "text-frame": [frame(TEXT, b"t" * (LIMITED_MAX_SIZE + 1))],
    "binary-frame": [frame(BINARY, b"\x01" * (LIMITED_MAX_SIZE + 1))],
    "fragments": [
        frame(BINARY, b"\x01" * 30000, fin=False),
        frame(CONT, b"\x02" * 30000, fin=False),
        frame(CONT, b"\x03" * 30000),
    ],
}


@pytest.mark.parametrize("frames", TOO_BIG.values(), ids=TOO_BIG.keys())
async def test_a_message_over_max_size_fails_with_1009(limited_server, frames):
    async with connected(limited_server.port) as client:
        # The server may stop reading half-way: the writes must not block the reads.
        writes = asyncio.create_task(client.send_lenient(b"".join(frames)))
        try:
            await client.fails_with(1009)
        finally:
            await asyncio.wait_for(writes, GUARD)
        await app_disconnect(limited_server.port, client.ident)


async def test_a_message_of_exactly_max_size_is_accepted(limited_server):
    async with connected(limited_server.port) as client:
        await client.send_frame(BINARY, b"\x01" * LIMITED_MAX_SIZE)
        assert await client.recv_message() == ("bytes", b"\x01" * LIMITED_MAX_SIZE)
        half = LIMITED_MAX_SIZE // 2
        await client.send(frame(TEXT, b"a" * half, fin=False) + frame(CONT, b"b" * half))
        assert await client.recv_message() == ("text", "a" * half + "b" * half)


# --- 7. closing handshake from the client ---------------------------------------------------


async def test_client_close_is_echoed_and_the_app_sees_its_code(ws_server):
    async with connected(ws_server.port) as client:
        await client.echo_round_trip()
        await client.send_frame(CLOSE, close_payload(1000, b"done"))
        await client.expect_close(1000)
        await client.expect_eof()
    disconnect = await app_disconnect(ws_server.port, client.ident)
    assert disconnect["code"] == 1000, disconnect
    assert disconnect.get("reason") in (None, "done"), disconnect


VALID_CLOSE_CODES = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014]
VALID_CLOSE_CODES += [3000, 3999, 4000, 4999]
VALID_CLOSE_CODES_ALL = {*range(1000, 1004), *range(1007, 1015), *range(3000, 5000)}


@pytest.mark.parametrize("code", VALID_CLOSE_CODES)
async def test_every_valid_close_code_is_accepted(ws_server, code):
    async with connected(ws_server.port) as client:
        await client.send_frame(CLOSE, close_payload(code, "raison d'être".encode()))
        reply = await client.recv_frame()
        assert reply is not None and reply.opcode == CLOSE, reply
        assert reply.close_code in (code, 1000), reply  # "typically echos" (RFC 6455 5.5.1)
        await client.expect_eof()
    disconnect = await app_disconnect(ws_server.port, client.ident)
    assert disconnect["code"] == code, disconnect


async def test_an_empty_close_is_answered_and_the_app_sees_1005(ws_server):
    async with connected(ws_server.port) as client:
        await client.send_frame(CLOSE, b"")
        reply = await client.recv_frame()
        assert reply is not None and reply.opcode == CLOSE, reply
        assert reply.payload == b"" or reply.close_code == 1000, reply
        await client.expect_eof()
    disconnect = await app_disconnect(ws_server.port, client.ident)
    assert disconnect["code"] == 1005, disconnect


async def test_a_dropped_tcp_connection_is_1006_for_the_app(ws_server, impl, request):
    sansio_deviates(
        request,
        impl,
        "a TCP drop without a close frame after the handshake reaches the app as 1005; "
        "RFC 6455 7.1.5: with no close frame received the close code is 1006 "
        "(1005 means a close frame without a code)",
    )
    async with connected(ws_server.port) as client:
        await client.echo_round_trip()
    disconnect = await app_disconnect(ws_server.port, client.ident)
    assert disconnect["code"] == 1006, disconnect


async def test_a_close_between_fragments_is_answered(ws_server, impl, request):
    sansio_deviates(
        request,
        impl,
        "a close frame between the fragments of a message is answered with 1002 (websockets: "
        "'incomplete fragmented message'); RFC 6455 5.4: control frames MAY be injected in "
        "the middle of a fragmented message, and 5.5.1: the close is answered (echoing 1000)",
    )
    async with connected(ws_server.port) as client:
        await client.send(
            frame(TEXT, b"half a mess", fin=False) + frame(CLOSE, close_payload(1000))
        )
        await client.expect_close(1000)
        await client.expect_eof()
    disconnect = await app_disconnect(ws_server.port, client.ident)
    assert disconnect["code"] == 1000, disconnect


# --- 8. closing handshake from the app --------------------------------------------------------


async def test_app_close_reaches_the_client_and_the_reply_ends_tcp(ws_server):
    async with connected(ws_server.port, "/close") as client:
        await client.expect_close(4001, "bye")
        await client.send_frame(CLOSE, close_payload(4001))
        await client.expect_eof()


async def test_a_client_that_never_answers_the_close_is_dropped(ws_server):
    async with connected(ws_server.port, "/close") as client:
        await client.expect_close(4001, "bye")
        await client.expect_eof(timeout=20)  # uvicorn's close timeout is 10 s


async def frames_until_eof(client: Client, timeout: float = 15) -> list[Frame]:
    """Every frame until the server closes TCP; a close frame is answered (echoed)."""

    async def collect() -> list[Frame]:
        frames = []
        while (got := await client._read_frame()) is not None:
            frames.append(got)
            if got.opcode == CLOSE:
                await client.send_lenient(frame(CLOSE, got.payload))
        return frames

    try:
        return await asyncio.wait_for(collect(), timeout)
    except TimeoutError:
        raise AssertionError(f"the server did not close TCP within {timeout} s") from None


@pytest.mark.parametrize("code", [999, 1004, 1005, 1006, 1015, 2000, 5000])
async def test_an_app_close_code_invalid_on_the_wire_never_reaches_it(ws_server, code):
    """RFC 6455 7.4.1/7.4.2: 1005, 1006, 1015 MUST NOT be sent in a close frame, nor codes
    outside 1000-4999 or unassigned below 3000; the server may substitute a valid code or
    refuse the app's close, but what reaches the client must be valid."""
    async with connected(ws_server.port, f"/close?code={code}&reason=x") as client:
        frames = await frames_until_eof(client)
    closes = [f for f in frames if f.opcode == CLOSE]
    assert [f for f in frames if f.opcode != CLOSE] == [], frames
    for got in closes:
        assert got.close_code is None or got.close_code in VALID_CLOSE_CODES_ALL, got


async def test_an_over_long_close_reason_from_the_app_stays_valid_utf8(ws_server):
    """A close frame's payload is at most 125 bytes (RFC 6455 5.5) and its reason UTF-8
    (5.5.1): a longer multi-byte reason from the app must not be cut inside a code point."""
    reason = "é" * 100  # 200 bytes: 123 bytes of it would end half-way through an "é"
    async with connected(ws_server.port, f"/close?code=4002&reason={quote(reason)}") as client:
        frames = await frames_until_eof(client)
    for got in frames:
        assert got.opcode == CLOSE, frames
        assert got.close_code == 4002, got
        try:
            got.close_reason  # noqa: B018
        except UnicodeDecodeError as exc:
            raise AssertionError(
                f"close reason is not UTF-8: {got.payload[-6:]!r}: {exc}"
            ) from None
        assert reason.startswith(got.close_reason), got


# --- 9. keepalive ---------------------------------------------------------------------------


async def test_a_client_that_answers_pings_stays_open(pinging_server):
    async with connected(pinging_server.port) as client:
        answered = 0
        while answered < 5:
            ping = await client.recv_frame(timeout=GUARD)
            assert ping is not None and ping.opcode == PING, ping
            await client.send_frame(PONG, ping.payload)
            answered += 1
        await client.send_frame(TEXT, b"still here")
        while True:  # pings may come before the echo: answer them
            got = await client.recv_frame()
            assert got is not None, "the server closed a connection that answered every ping"
            if got.opcode == PING:
                await client.send_frame(PONG, got.payload)
                continue
            assert got.opcode == TEXT and got.payload == b"still here", got
            break


async def test_a_client_that_never_answers_pings_is_closed_with_1011(pinging_server):
    async with connected(pinging_server.port) as client:
        pings = 0
        while True:
            got = await client.recv_frame()
            assert got is not None, f"TCP closed without a close frame after {pings} ping(s)"
            if got.opcode == PING:
                pings += 1
                continue
            assert got.opcode == CLOSE and got.close_code == 1011, got
            break
        assert pings >= 1
        await client.expect_eof()
        await app_disconnect(pinging_server.port, client.ident)


async def test_a_pong_in_flight_when_the_app_closes_does_not_stall_the_close(pinging_server):
    """The app closes while the server's keepalive ping waits for its pong; the pong, then
    the client's close reply, arrive: the server must end TCP (RFC 6455 5.5.1: after both
    close frames it MUST close the TCP connection)."""
    async with connected(pinging_server.port) as client:
        ping = await client.recv_frame()
        assert ping is not None and ping.opcode == PING, ping
        await client.send_frame(TEXT, b"__close__")
        await client.expect_close(4000, "asked")
        await client.send(frame(PONG, ping.payload) + frame(CLOSE, close_payload(4000)))
        await client.expect_eof()


# --- 10. graceful shutdown ----------------------------------------------------------------


async def test_sigterm_closes_open_sockets_with_1012_and_exits(fresh_server):
    async with connected(fresh_server.port) as client:
        await client.echo_round_trip()
        fresh_server.proc.send_signal(signal.SIGTERM)
        await client.expect_close(1012)
        await client.send_lenient(frame(CLOSE, close_payload(1012)))
        await client.expect_eof()
    loop = asyncio.get_running_loop()
    code = await asyncio.wait_for(loop.run_in_executor(None, fresh_server.proc.wait), 10)
    # uvicorn re-raises the signal it handled once it has shut down: -SIGTERM is its clean exit.
    assert code in (0, -signal.SIGTERM), f"exit status {code}:\n{fresh_server.logs()}"
    assert f"conformance-disconnect id={client.ident} code=" in fresh_server.logs(), (
        "the app never got its websocket.disconnect:\n" + fresh_server.logs()
    )


# --- 11. after the close --------------------------------------------------------------------


async def test_frames_after_the_client_close_are_ignored(ws_server):
    async with connected(ws_server.port) as client:
        await client.send(
            frame(CLOSE, close_payload(1000))
            + frame(TEXT, b"after close")
            + frame(PING, b"after close")
        )
        await client.expect_close(1000)
        await client.expect_eof()  # no echo, no pong
    record = await app_until(
        ws_server.port, client.ident, lambda r: r["disconnect"] is not None, "the disconnect"
    )
    assert record["received"] == [], record
    assert record["disconnect"]["code"] == 1000, record


async def test_data_after_the_server_close_is_not_echoed(ws_server):
    async with connected(ws_server.port) as client:
        await client.send_frame(TEXT, b"__close__")
        await client.expect_close(4000, "asked")
        # The app tries to echo "late": no data frame may follow the close (RFC 6455 5.5.1).
        await client.send_lenient(frame(TEXT, b"late") + frame(BINARY, b"late"))
        await client.send_lenient(frame(CLOSE, close_payload(4000)))
        await client.expect_eof()


async def test_a_ping_after_the_server_close_is_still_answered(ws_server):
    async with connected(ws_server.port) as client:
        await client.send_frame(TEXT, b"__close__")
        await client.expect_close(4000, "asked")
        # RFC 6455 5.5.2: a ping MUST be answered "unless it already received a Close
        # frame": the server sent one but has received none yet.
        await client.send_lenient(frame(PING, b"late"))
        pong = await client.recv_frame()
        assert pong is not None and pong.opcode == PONG and pong.payload == b"late", pong
        await client.send_lenient(frame(CLOSE, close_payload(4000)))
        await client.expect_eof()


# --- backpressure ----------------------------------------------------------------------------

FLOOD_RSS_BUDGET = 50 * 1024 * 1024


async def test_a_client_that_never_reads_does_not_grow_the_server(ws_server):
    """/flood sends 64 KB messages as fast as its sends return; the client reads nothing.

    The app's sends must block (its byte count stops growing) before the server holds
    50 MB, and stay blocked while it could have sent far more; at the disconnect the
    blocked send is released.
    """
    baseline = ws_server.rss_bytes()
    loop = asyncio.get_running_loop()
    async with connected(ws_server.port, "/flood") as client:
        deadline = loop.time() + 3 * GUARD
        sent, stable_polls = -1, 0
        while stable_polls < 25:  # 25 polls (>= 0.5 s) without one more send completing
            assert loop.time() < deadline, (
                f"the app's sends never blocked: {sent / 1e6:.0f} MB sent, server RSS "
                f"+{(ws_server.rss_bytes() - baseline) / 1e6:.0f} MB"
            )
            record = await app_record(ws_server.port, client.ident)
            now = record["sent"] if record else 0
            stable_polls = stable_polls + 1 if now == sent and now > 0 else 0
            sent = now
            growth = ws_server.rss_bytes() - baseline
            assert growth < FLOOD_RSS_BUDGET, f"server RSS +{growth / 1e6:.0f} MB, {sent} sent"
            await asyncio.sleep(0.02)
        assert sent < FLOOD_RSS_BUDGET, f"{sent / 1e6:.0f} MB accepted from the app"
    record = await app_until(
        ws_server.port, client.ident, lambda r: r["send_errors"] != [], "its send fail"
    )
    assert record["disconnect"] is None or record["disconnect"]["code"] >= 1000, record
