"""A minimal WebSocket client on a plain :class:`asyncio.Protocol`: the benchmarks' load client.

The load client shares this machine's two cores with the servers it measures, so every
microsecond it spends per frame is taken from them. A ``websockets`` client connection
costs a task, a queue and several coroutine switches per frame read; this one parses
frames in :meth:`RawWebSocket.data_received` and hands each text message synchronously
to a callback (:meth:`RawWebSocket.set_receiver`): no task or queue per connection once
the receiver is set. Before that, messages are queued for :meth:`RawWebSocket.recv`
(the dialects' handshakes and the closed-loop echo read one message at a time).

What it does (RFC 6455, client side):

* the HTTP/1.1 upgrade: ``Sec-WebSocket-Key`` from 16 random bytes, the answer's
  ``101`` status and ``Sec-WebSocket-Accept`` checked; extra request headers (credentials);
  no extensions offered (no compression: every server sends plain frames), no subprotocol;
* text and binary messages, fragmented or not (continuation frames are joined; control
  frames may come between the fragments), any length (7-bit, 16-bit and 64-bit lengths);
  a binary message is handed over as ``bytes``, a text one as ``str``;
* a ping is answered with a pong carrying its payload; pongs are ignored;
* the close handshake either way: a close frame from the server is answered with the same
  code and the server closes the TCP connection (it holds the ``TIME_WAIT``, as RFC 6455
  asks); :meth:`RawWebSocket.close` sends one and waits for the server's close and its end
  of the connection (bounded by ``close_timeout``, then the transport is aborted);
* back-pressure: the transport's ``pause_writing``/``resume_writing``; :meth:`send` writes
  the frame, then waits while the transport is paused (its buffer above the high-water
  mark, 64 KiB), so a sender that outruns the socket waits, and an open-loop sender's
  scheduled timestamp counts that wait. :meth:`write` is the same without the wait (the
  pong of Engine.IO's ping, written from the receive callback).

Masking: every client frame is masked (servers must refuse unmasked ones). The mask is 4
random bytes drawn once per connection (:func:`os.urandom`) and reused for each of its
frames, rather than one per frame: RFC 6455 asks for a fresh one per frame to defeat
cache poisoning by intermediaries, which do not exist on a loopback benchmark. It does
not favour any contender: every server unmasks every frame with the same work whatever
the key (websockets' and wsproto's unmaskers, autobahn's ``XorMasker`` only skip work
when the mask *bit* is clear, never for a particular key), every contender's clients use
the same code, and the key is never all zeros. The XOR is websockets' C ``apply_mask``
(about 90 ns for a 180-byte payload), or where that is missing, one big-integer XOR
(``int.from_bytes``, about 420 ns): either is a small part of a frame's cost.

Not implemented (no contender needs them): compression, subprotocols, redirects, TLS,
proxies, a maximum message size, UTF-8 validation beyond Python's decoding.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import struct
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

try:
    from websockets.speedups import apply_mask as _c_mask
except ImportError:  # pragma: no cover - websockets without its C extension
    _c_mask = None  # type: ignore[assignment]

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_MAX_HEAD = 65536  # an upgrade answer longer than this is refused

CONNECTING, OPEN, CLOSING, CLOSED = "connecting", "open", "closing", "closed"

OnText = Callable[[Any], None]


class ConnectionClosed(ConnectionError):
    """The connection is closed (or closing): ``code`` is the close code received, 1006
    when the TCP connection ended without one."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"connection closed: {code} {reason}".rstrip())
        self.code = code
        self.reason = reason


class HandshakeError(ConnectionError):
    """The server did not accept the upgrade (status, headers or accept key)."""


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a ``Sec-WebSocket-Key`` (RFC 6455, 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def _masker(mask: bytes) -> Callable[[bytes], bytes]:
    """``payload -> payload XOR mask`` (the mask repeated over the payload)."""
    if _c_mask is not None:
        return lambda payload: _c_mask(payload, mask)

    def xor(payload: bytes) -> bytes:
        n = len(payload)
        if not n:
            return payload
        key = int.from_bytes(mask * ((n + 3) // 4)) >> (8 * (-n % 4))
        return (int.from_bytes(payload) ^ key).to_bytes(n)

    return xor


_head16 = struct.Struct("!BBH").pack
_head64 = struct.Struct("!BBQ").pack


def _header(first: int, n: int) -> bytes:
    """A masked client frame's header up to the mask: FIN/opcode byte and length."""
    if n < 126:
        return bytes((first, 0x80 | n))
    if n < 65536:
        return _head16(first, 0xFE, n)
    return _head64(first, 0xFF, n)


class RawWebSocket(asyncio.Protocol):
    """One client connection. Make it with :func:`connect`."""

    def __init__(self, host: str, resource: str, headers: dict[str, str] | None) -> None:
        self.transport: asyncio.Transport | None = None
        self.state = CONNECTING
        self.close_code: int | None = None
        self.pauses = 0  # how many times the transport pushed back (pause_writing)
        self.error: Exception | None = None  # what aborted the connection, if anything
        self._loop = asyncio.get_running_loop()
        self._key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {resource} HTTP/1.1",
            f"Host: {host}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {self._key}",
            "Sec-WebSocket-Version: 13",
            *(f"{name}: {value}" for name, value in (headers or {}).items()),
        ]
        self._request = ("\r\n".join(lines) + "\r\n\r\n").encode()
        self._opened: asyncio.Future[None] = self._loop.create_future()
        self._lost: asyncio.Future[None] = self._loop.create_future()
        self._head = bytearray()
        mask = os.urandom(4)
        while mask == b"\0\0\0\0":
            mask = os.urandom(4)
        self._mask_key = mask
        self._mask = _masker(mask)
        # Receiving.
        self._buf = bytearray()
        self._need = 0  # bytes the incomplete frame in _buf needs before parsing again
        self._fragments: list[bytes] = []
        self._fragment_op = 0
        self._on_text: OnText | None = None
        self._on_closed: Callable[[], None] | None = None
        self._queue: deque[Any] = deque()
        self._waiter: asyncio.Future[None] | None = None
        # Sending.
        self._paused = False
        self._drain: list[asyncio.Future[None]] = []

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        transport.write(self._request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.state == CONNECTING:
            data = self._handshake(data)
            if not data:
                return
        buf = self._buf
        if buf:
            buf += data
            if len(buf) < self._need:
                return
            data = bytes(buf)
            buf.clear()
        try:
            pos = self._frames(data)
        except Exception as exc:  # the receiver failed, or a protocol error: end it
            self._fail(exc)
            return
        if pos < len(data):
            buf += memoryview(data)[pos:]

    def pause_writing(self) -> None:
        self._paused = True
        self.pauses += 1

    def resume_writing(self) -> None:
        self._paused = False
        self._wake_drain(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = CLOSED
        if self.close_code is None:
            self.close_code = 1006
        if not self._opened.done():
            self._opened.set_exception(
                exc or HandshakeError("the connection closed during the handshake")
            )
        if not self._lost.done():
            self._lost.set_result(None)
        self._wake_drain(ConnectionClosed(self.close_code))
        self._wake_reader()
        if self._on_closed is not None:
            self._on_closed()

    # -- the upgrade -----------------------------------------------------------------

    def _handshake(self, data: bytes) -> bytes:
        """Read the upgrade answer; returns the bytes after it (the first frames)."""
        head = self._head
        head += data
        end = head.find(b"\r\n\r\n")
        if end < 0:
            if len(head) > _MAX_HEAD:
                self._refuse("the upgrade answer is too long")
            return b""
        rest = bytes(head[end + 4 :])
        lines = head[:end].decode("latin-1").split("\r\n")
        head.clear()
        status = lines[0].split(" ", 2)
        if len(status) < 2 or status[1] != "101":
            self._refuse(f"the server answered {lines[0]!r}")
            return b""
        fields: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        if fields.get("upgrade", "").lower() != "websocket":
            self._refuse(f"Upgrade: {fields.get('upgrade')!r}")
            return b""
        if "upgrade" not in fields.get("connection", "").lower():
            self._refuse(f"Connection: {fields.get('connection')!r}")
            return b""
        if fields.get("sec-websocket-accept") != accept_key(self._key):
            self._refuse("wrong Sec-WebSocket-Accept")
            return b""
        if fields.get("sec-websocket-extensions"):
            self._refuse(f"unasked extensions: {fields['sec-websocket-extensions']!r}")
            return b""
        self.state = OPEN
        self._opened.set_result(None)
        return rest

    def _refuse(self, why: str) -> None:
        self.state = CLOSED
        if not self._opened.done():
            self._opened.set_exception(HandshakeError(why))
        assert self.transport is not None
        self.transport.abort()

    # -- receiving -------------------------------------------------------------------

    def _frames(self, data: bytes) -> int:
        """Parse every whole frame in ``data``; returns where the first incomplete one
        starts (``len(data)`` when none)."""
        end = len(data)
        pos = 0
        while end - pos >= 2:
            b0 = data[pos]
            n = data[pos + 1]
            if n & 0x80:
                raise ConnectionError("the server masked a frame")
            if n < 126:
                start = pos + 2
            elif n == 126:
                start = pos + 4
                if start > end:
                    self._need = 4
                    return pos
                n = int.from_bytes(data[pos + 2 : start])
            else:
                start = pos + 10
                if start > end:
                    self._need = 10
                    return pos
                n = int.from_bytes(data[pos + 2 : start])
            stop = start + n
            if stop > end:
                self._need = stop - pos
                return pos
            opcode = b0 & 0x0F
            if opcode == OP_TEXT and b0 & 0x80 and not self._fragments:
                self._deliver(data[start:stop].decode())  # the common case
            else:
                self._frame(b0 & 0x80, opcode, data[start:stop])
            pos = stop
        self._need = 0
        return pos

    def _frame(self, fin: int, opcode: int, payload: bytes) -> None:
        """Every frame but an unfragmented text one."""
        if opcode >= OP_CLOSE:
            if opcode == OP_PING:
                self._send_frame(0x80 | OP_PONG, payload)
            elif opcode == OP_CLOSE:
                self._closing(payload)
            elif opcode != OP_PONG:
                raise ConnectionError(f"unknown control opcode {opcode}")
            return
        if opcode == OP_CONT:
            if not self._fragments:
                raise ConnectionError("a continuation frame without a first fragment")
        elif self._fragments:
            raise ConnectionError("a new message before the fragmented one ended")
        elif opcode in (OP_TEXT, OP_BINARY):
            self._fragment_op = opcode
        else:
            raise ConnectionError(f"unknown data opcode {opcode}")
        self._fragments.append(payload)
        if fin:
            message = b"".join(self._fragments)
            self._fragments = []
            self._deliver(message.decode() if self._fragment_op == OP_TEXT else message)

    def _closing(self, payload: bytes) -> None:
        code = int.from_bytes(payload[:2]) if len(payload) >= 2 else 1005
        self.close_code = code
        if self.state == OPEN:  # the server began: answer with its code; it closes TCP
            self._send_frame(0x80 | OP_CLOSE, payload[:2])
        self.state = CLOSING
        self._wake_reader()

    def _deliver(self, message: Any) -> None:
        if self._on_text is not None:
            self._on_text(message)
        else:
            self._queue.append(message)
            self._wake_reader()

    def _wake_reader(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: Exception) -> None:
        self.error = exc
        self.state = CLOSED
        if self.transport is not None:
            self.transport.abort()

    def set_receiver(self, on_text: OnText, on_closed: Callable[[], None] | None = None) -> None:
        """From now on every message goes to ``on_text(message)`` as it is parsed (in
        ``data_received``: it must not block), the queued ones first; ``on_closed()`` is
        called once when the TCP connection ends. An exception from ``on_text`` aborts the
        connection."""
        self._on_text = on_text
        self._on_closed = on_closed
        while self._queue and self._on_text is on_text:
            on_text(self._queue.popleft())
        if self.state == CLOSED and on_closed is not None:
            on_closed()

    async def recv(self) -> Any:
        """The next message (``str`` for text, ``bytes`` for binary); raises
        :class:`ConnectionClosed` once the connection is closing and nothing is queued.
        Only before :meth:`set_receiver`; one reader at a time."""
        while not self._queue:
            if self.state in (CLOSING, CLOSED):
                raise ConnectionClosed(self.close_code or 1006)
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._queue.popleft()

    # -- sending ---------------------------------------------------------------------

    def _send_frame(self, first: int, payload: bytes) -> None:
        assert self.transport is not None
        self.transport.write(
            _header(first, len(payload)) + self._mask_key + self._mask(payload)
        )

    def write(self, message: str | bytes) -> None:
        """Send one message in one frame (text for ``str``, binary for ``bytes``) without
        waiting for the transport's buffer; raises :class:`ConnectionClosed` when the
        connection is not open."""
        if self.state != OPEN:
            raise ConnectionClosed(self.close_code or 1006)
        if isinstance(message, str):
            self._send_frame(0x80 | OP_TEXT, message.encode())
        else:
            self._send_frame(0x80 | OP_BINARY, message)

    async def send(self, message: str | bytes) -> None:
        """:meth:`write`, then wait while the transport pushes back (its buffer above the
        high-water mark) until it has drained below the low-water mark."""
        self.write(message)
        if self._paused:
            waiter = self._loop.create_future()
            self._drain.append(waiter)
            await waiter

    @property
    def paused(self) -> bool:
        """Whether the transport is pushing back right now."""
        return self._paused

    def _wake_drain(self, exc: Exception | None) -> None:
        waiters, self._drain = self._drain, []
        for waiter in waiters:
            if not waiter.done():
                if exc is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(exc)

    async def close(self, code: int = 1000, close_timeout: float = 2.0) -> None:
        """The close handshake: send a close frame (when open), wait for the server's and
        for it to end the TCP connection, at most ``close_timeout`` s, then abort."""
        if self.state == OPEN:
            self._send_frame(0x80 | OP_CLOSE, code.to_bytes(2))
            self.state = CLOSING
        if self.state == CLOSED or self.transport is None:
            return
        try:
            async with asyncio.timeout(close_timeout):
                await asyncio.shield(self._lost)
        except TimeoutError:
            self.transport.abort()

    def abort(self) -> None:
        """End the TCP connection at once (no close handshake)."""
        if self.transport is not None:
            self.transport.abort()


async def connect(
    url: str, headers: dict[str, str] | None = None, timeout: float | None = None
) -> RawWebSocket:
    """Open ``ws://host:port/path?query``: TCP connect and the upgrade, at most ``timeout``
    s. ``headers``: extra request headers. Raises :class:`HandshakeError` when the server
    refuses the upgrade, ``OSError`` when the TCP connect fails."""
    parts = urlsplit(url)
    if parts.scheme != "ws":
        raise ValueError(f"only ws:// URLs: {url!r}")
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 80
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    netloc = host if port == 80 else f"{host}:{port}"
    loop = asyncio.get_running_loop()
    ws = RawWebSocket(netloc, resource, headers)
    async with asyncio.timeout(timeout):
        await loop.create_connection(lambda: ws, host, port)
        try:
            await ws._opened
        except BaseException:
            ws.abort()
            raise
    return ws
