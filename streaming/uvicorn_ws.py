"""A lean WebSocket protocol for uvicorn: RFC 6455 and the ASGI WebSocket spec, per socket in bytes.

uvicorn speaks WebSocket through a protocol class it is given (``uvicorn.Config(ws=...)``,
``uvicorn.run(..., ws=...)``); its own, on the ``websockets`` library's sans-I/O core,
holds about 18 KB of Python heap per idle socket (measured at 2,000 sockets with
``python -m bench.connections --memprobe``): the library's request and response objects
and header maps kept for the socket's life, an ``asyncio.Queue`` with its three deques, two
``asyncio.Event``, an instance dict of 40 attributes. That is more than a whole socket of
the bare ``websockets`` server. :class:`WebSocketProtocol` is the same protocol in a
fraction of it: ``__slots__``, one timer for keepalive and closing, no queue until a
frame waits, nothing kept from the handshake but the ASGI scope. Run it with
``uvicorn --ws streaming.uvicorn_ws:WebSocketProtocol ...`` (docs/deployment.md).

Contract (what a client and the application see):

* Handshake: the app gets ``websocket.connect`` once uvicorn has parsed an upgrade request;
  a request that is not a valid RFC 6455 handshake gets HTTP 400 (426 with
  ``Sec-WebSocket-Version: 13`` for another version) and never reaches the app.
  ``websocket.accept`` (subprotocol, headers), ``websocket.close`` before accepting (HTTP
  403) and the ``websocket.http.response`` extension (any status and body) as in uvicorn.
  No extension is negotiated: permessage-deflate would cost each socket zlib's state
  (tens of KB), and Streampod's frames are small.
* Frames in: a client frame must be masked, carry no RSV bit, use a defined opcode, and
  obey the fragmentation and control-frame rules; otherwise close **1002**. A text message
  that is not UTF-8, or a close reason that is not, closes **1007**. A message (a frame, or
  the fragments so far) above ``ws_max_size`` closes **1009** as soon as its header says
  so, before its payload is read. Pings are answered with the same payload; the pings of
  one read with one pong, for the last of them (RFC 6455 5.5.3). A socket's frames are
  parsed at most :data:`FRAMES_PER_TURN` at a turn of the event loop, however its app
  reads (``receive`` in a loop included), so a client flooding small frames cannot hold
  the process; data frames after the server's close frame are skipped unread.
* Close: a client's close frame is answered with its code (none for none) and the app gets
  ``websocket.disconnect`` with that code and reason (1005 for none); a dropped TCP
  connection gives 1006; ``websocket.close`` from the app sends its code and reason and
  waits up to 10 s for the client's reply (1005 sends no code; a code that may not be sent,
  such as 1006 or 2000, sends 1011 and logs a warning); an app that returns without closing closes
  1000, one that raises closes 1011 (HTTP 500 before accepting). uvicorn's shutdown closes
  open sockets with 1012, and answers a handshake still waiting for the app with HTTP 500
  (the app gets ``websocket.disconnect`` 1012 at once).
* Keepalive: ``ws_ping_interval`` / ``ws_ping_timeout`` as in uvicorn: a ping with a random
  payload, and close 1011 if its pong does not come in time. While reading is paused (the
  app's inbox is full, or the client is behind on what it is sent), the pong may be there
  unread: the timeout waits on while the app is the one behind, or while the client takes
  bytes (a slow reader is alive); a client that took nothing for a whole timeout is not.
* Bounded in bytes whatever the client does: parsing stops, and reading pauses, while the
  app has :data:`INBOX_BYTES` (each event counting :data:`EVENT_COST` beyond its payload)
  or ``ws_max_queue`` events not yet received; reading also pauses while the transport's
  write buffer is above its high-water mark (so a client that sends pings and never reads
  cannot grow the pongs). A message being assembled is one buffer of at most
  ``ws_max_size`` bytes, however many fragments it comes in (empty ones cost nothing;
  parsing a frame makes a few transient copies of it);
  before ``websocket.accept`` at most :data:`INBOX_BYTES` plus one read are buffered.
* Closing never waits on the client for ever: over TCP the server half-closes once what is
  written is sent (so unread client data cannot make the kernel reset the connection and
  drop the close frame), reads on and discards until the client closes its side, and aborts
  (a reset, ``SO_LINGER`` 0, so the kernel frees the unread buffers) if that takes
  ``CLOSE_TIMEOUT`` (10 s): after a close frame, a failure (a keepalive timeout
  included) or a refused handshake. A client that answers nothing holds its socket at most
  twice that after the app's close: 10 s for its close reply, then 10 s for its side of
  TCP. At uvicorn's shutdown every close, new or under way, waits at most
  ``SHUTDOWN_CLOSE_TIMEOUT`` (1 s) more, so such a client cannot hold the process's exit.
* Fair: a data ``send`` yields to the event loop when nothing of the process has for
  :data:`FAIR_SLICE` (5 ms; one clock for the process, ``streaming.fairness``), so an app
  sending in a loop to a client that reads as fast as it sends cannot hold every other
  socket of the process waiting (but for Streampod's outbox, whose queue bounds its
  bursts).
* ``send`` of data waits while the transport's write buffer is above its high-water mark (a
  close, an accept or a refusal never waits), and raises ``ClientDisconnected`` (an
  ``OSError``) once the connection is gone, failed or closed by the client (a ``send``
  waiting for room is woken when it starts to close); after the app's own close, another
  ``send`` raises ``RuntimeError``, as in uvicorn; a ``websocket.close`` after the client's close
  or the connection's end does nothing (uvicorn's protocols: the same), so an app's cleanup
  that closes need not race the client. ``receive`` may be awaited by several
  tasks; cancelling one leaves the others waiting.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import codecs
import contextvars
import email.utils
import hashlib
import logging
import random
import socket
import struct
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any
from urllib.parse import quote, unquote

from .fairness import FAIR_SLICE, turn_due

_ioctl: Callable[..., Any] | None
try:  # the kernel's send queue of a socket (Linux, the BSDs, macOS)
    import fcntl
    import termios

    _ioctl, _TIOCOUTQ = fcntl.ioctl, termios.TIOCOUTQ
except ImportError:  # pragma: no cover - Windows
    _ioctl, _TIOCOUTQ = None, 0

try:  # websockets' C helper (a dependency of Streampod); the fallback is pure Python.
    from websockets.speedups import apply_mask as _c_apply_mask
except ImportError:  # pragma: no cover - websockets built without its C extension
    _c_apply_mask = None  # type: ignore[assignment]

try:  # what uvicorn's own protocols raise from ``send`` after a disconnect
    from uvicorn.protocols.utils import ClientDisconnected
except ImportError:  # pragma: no cover - uvicorn moved it: an OSError all the same

    class ClientDisconnected(OSError):  # type: ignore[no-redef]
        """The client is gone: ``send`` after the connection was lost."""


__all__ = [
    "FAIR_SLICE",
    "INBOX_BYTES",
    "ClientDisconnected",
    "WebSocketProtocol",
    "apply_mask",
]

logger = logging.getLogger("uvicorn.error")

#: Bytes of received messages the app has not read yet before reading pauses; also the
#: most buffered before ``websocket.accept``.
INBOX_BYTES = 64 * 1024

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CLOSE_TIMEOUT = 10.0
#: ``SO_LINGER`` on, 0 s: closing the socket resets the connection and frees its buffers.
_LINGER_RESET = struct.pack("ii", 1, 0)
#: What a close waits for the client at uvicorn's shutdown (the process is going: a client
#: that neither reads nor closes must not hold its exit CLOSE_TIMEOUT longer).
SHUTDOWN_CLOSE_TIMEOUT = 1.0

# States.
# CLOSE_SENT: the app closed, the client's reply is awaited; CLOSING: the TCP connection is
# closing (no more frames are read).
HEAD, CONNECTING, RESPONDING, OPEN, CLOSE_SENT, CLOSING, CLOSED = range(7)

# Opcodes.
CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

# Close codes a peer may send (RFC 6455 7.4, and IANA's 1012-1014).
_VALID_CODES = frozenset(range(1000, 1004)) | frozenset(range(1007, 1015))

_PAUSED_INBOX, _PAUSED_WRITE, _PAUSED_TURN = 1, 2, 4
# Timers run in an empty context: the call that starts one (an eager send, in some task's
# stack) must not keep that task's context variables alive for the socket's life.
_NO_CONTEXT = contextvars.Context()
_NEVER = 1 << 62  # ``_need`` while frames must wait (before the accept)

#: Frames of a socket parsed between two turns of the event loop (by reads and by the app's
#: ``receive`` alike); the rest of the read waits for the next turn (reading paused
#: meanwhile), so that a client flooding small frames (pings, say: a
#: 256 KiB read holds 43,690 of them) cannot hold the other sockets of the process.
FRAMES_PER_TURN = 256

#: Sends Streampod's outbox marks (``streaming.outbox.OUTBOX_KEY``; not imported: this
#: module imports nothing of Django's): they never yield for :data:`FAIR_SLICE`, the
#: outbox's queue bounds their bursts.
_OUTBOX_KEY = "streaming.outbox"

#: What a queued event counts beyond its payload towards :data:`INBOX_BYTES`: so that
#: empty messages, which cost memory but carry no bytes, are bounded too.
EVENT_COST = 128
_OPCODES = frozenset((CONT, TEXT, BINARY, CLOSE, PING, PONG))

_utf8_decoder = codecs.getincrementaldecoder("utf-8")


def _py_apply_mask(data: bytes, mask: bytes) -> bytes:
    n = len(data)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(data, "big") ^ key).to_bytes(n, "big")


def apply_mask(data: bytes, mask: bytes) -> bytes:
    """XOR ``data`` with the 4-byte ``mask`` repeated (RFC 6455 5.3)."""
    if _c_apply_mask is not None:
        return _c_apply_mask(data, mask)
    return _py_apply_mask(data, mask)


def _frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    if n < 65536:
        return bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big") + payload


def _close_payload(code: int | None, reason: str = "") -> bytes:
    if code is None:
        return b""
    data = reason.encode()
    if len(data) > 123:  # a control frame's payload is at most 125 bytes: cut at a character
        data = data[:123].decode("utf-8", "ignore").encode()
    return code.to_bytes(2, "big") + data


def _http_response(status: int, headers: Iterable[tuple[bytes, bytes]], body: bytes = b"") -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, phrase.encode())]
    for name, value in headers:
        if b"\r" in name or b"\n" in name or b"\r" in value or b"\n" in value:
            raise RuntimeError(f"invalid response header {name!r}: {value!r}")
        lines.append(name + b": " + value + b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines) + body


def _plain(status: int, text: str, extra: Iterable[tuple[bytes, bytes]] = ()) -> bytes:
    body = text.encode()
    headers = [
        (b"date", email.utils.formatdate(usegmt=True).encode()),
        *extra,
        (b"connection", b"close"),
        (b"content-length", str(len(body)).encode()),
        (b"content-type", b"text/plain; charset=utf-8"),
    ]
    return _http_response(status, headers, body)


#: What this protocol reads of uvicorn's ``Config`` and ``ServerState`` (uvicorn 0.35 to
#: 0.54, where ``--ws`` takes an import string). Checked when a socket arrives: if uvicorn
#: lacks one, :class:`WebSocketProtocol` serves with uvicorn's own protocol instead.
CONFIG_ATTRS = (
    "loaded", "loaded_app", "root_path", "asgi_version",
    "ws_max_size", "ws_max_queue", "ws_ping_interval", "ws_ping_timeout",
)  # fmt: skip
SERVER_STATE_ATTRS = ("connections", "tasks", "default_headers")
#: Read, where it exists, of the HTTP protocol the socket is upgraded from (uvicorn's h11
#: and httptools protocols: their ``FlowControl``): whether its writing was paused. Where
#: it does not exist the socket starts writable, as uvicorn's own protocols do.
HTTP_FLOW_ATTRS = ("flow", "write_paused")


def _missing(config: Any, server_state: Any) -> list[str]:
    return [f"Config.{a}" for a in CONFIG_ATTRS if not hasattr(config, a)] + [
        f"ServerState.{a}" for a in SERVER_STATE_ATTRS if not hasattr(server_state, a)
    ]


def _uvicorn_protocol() -> Callable[..., asyncio.Protocol]:
    """uvicorn's own WebSocket protocol (what ``--ws auto`` picks)."""
    from uvicorn.protocols.websockets.auto import AutoWebSocketsProtocol

    if AutoWebSocketsProtocol is None:  # pragma: no cover - websockets is a dependency
        raise RuntimeError("no WebSocket protocol in uvicorn")
    return AutoWebSocketsProtocol


class _Refused(Exception):
    def __init__(self, response: bytes) -> None:
        self.response = response


class WebSocketProtocol(asyncio.Protocol):
    """One WebSocket connection under uvicorn (see the module docstring for the contract).

    uvicorn builds it when an HTTP request asks for an upgrade, with
    ``(config=, server_state=, app_state=)``, then calls ``connection_made`` and
    ``data_received`` with the request's head, and hands it the transport.
    """

    __slots__ = (
        "_app_closed",
        "_app_state",
        "_budget",
        "_buf",
        "_config",
        "_drain",
        "_final",
        "_frag_op",
        "_frag_parts",
        "_frag_text",
        "_inbox",
        "_inbox_bytes",
        "_key",
        "_loop",
        "_need",
        "_paused",
        "_ping",
        "_ping_drained",
        "_response",
        "_rest",
        "_scope",
        "_sent",
        "_server_state",
        "_state",
        "_timer",
        "_transport",
        "_waiter",
    )  # fmt: skip

    #: The (config, server_state) pair last found complete, and whether it was.
    _checked: tuple[Any, Any, bool] | None = None

    def __new__(
        cls,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> Any:
        checked = cls._checked
        if checked is None or checked[0] is not config or checked[1] is not server_state:
            missing = _missing(config, server_state)
            if missing:
                logger.warning(
                    "streaming.uvicorn_ws: this uvicorn lacks %s; serving WebSockets with "
                    "uvicorn's own protocol instead",
                    ", ".join(missing),
                )
            checked = cls._checked = (config, server_state, not missing)
        if not checked[2]:
            return _uvicorn_protocol()(
                config=config, server_state=server_state, app_state=app_state, _loop=_loop
            )
        return super().__new__(cls)

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not config.loaded:
            config.load()  # pragma: no cover - uvicorn loads it before serving
        self._config = config
        self._server_state = server_state
        self._app_state = app_state
        self._loop = _loop or asyncio.get_running_loop()
        self._transport: asyncio.Transport = None  # type: ignore[assignment]
        self._scope: dict[str, Any] | None = None
        self._state = HEAD
        self._buf: bytearray | None = None  # an incomplete frame (or head)
        self._need = 0  # bytes ``_buf`` must hold before it is parsed again
        self._frag_op = 0  # TEXT or BINARY while a fragmented message is open
        self._frag_parts: bytearray | None = None
        self._frag_text: Any = None  # the incremental UTF-8 decoder of a fragmented text
        self._inbox: list[tuple[dict[str, Any], int]] = []  # (event, bytes)
        self._inbox_bytes = 0
        self._waiter: asyncio.Future[None] | None = None
        self._final: dict[str, Any] | None = None  # the websocket.disconnect event
        self._paused = 0
        self._drain: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._ping: bytes | None = None  # the payload of the keepalive ping in flight
        self._sent = 0  # bytes handed to the transport
        self._ping_drained = 0  # bytes the client had taken when that ping went out
        self._key: bytes | None = None  # Sec-WebSocket-Accept, until accepted
        self._app_closed = False
        self._response: list[Any] | None = None  # websocket.http.response: status, headers, body
        self._rest: tuple[bytes, int] | None = None  # a read left unparsed: the inbox was full
        self._budget = FRAMES_PER_TURN  # frames left to parse before the next turn's

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._server_state.connections.add(self)
        # The HTTP protocol may have paused reading (a pipelined request): this one starts
        # with reading on.
        resume = getattr(transport, "resume_reading", None)
        if resume is not None:
            try:
                resume()
            except RuntimeError:  # pragma: no cover - a closing transport
                pass
        # The HTTP protocol (still the transport's) may have been told to pause writing: a
        # response before the upgrade, unread. The transport will not tell this one again
        # until it has drained: without this, sends would not wait for a client that never reads.
        flow = getattr(transport.get_protocol(), HTTP_FLOW_ATTRS[0], None)
        if getattr(flow, HTTP_FLOW_ATTRS[1], False):
            self._pause(_PAUSED_WRITE)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server_state.connections.discard(self)
        self._cancel_timer()
        self._state = CLOSED
        self._buf = self._frag_parts = self._frag_text = self._rest = None
        self._disconnect(1006)
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    def eof_received(self) -> bool | None:
        return None  # the client closed its side: the transport closes (ours too, if open)

    def pause_writing(self) -> None:
        # Stop reading too: what a client sends (pings) must not grow what it does not read.
        self._pause(_PAUSED_WRITE)

    def resume_writing(self) -> None:
        self._resume(_PAUSED_WRITE)
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    def shutdown(self) -> None:
        """uvicorn's shutdown: close an open socket with 1012, refuse a pending handshake."""
        if self._state == OPEN:
            self._disconnect(1012)
            self._write(_frame(CLOSE, _close_payload(1012)))
        elif self._state in (HEAD, CONNECTING, RESPONDING):
            self._write(_plain(500, "Internal Server Error"))
            if self._state != HEAD:  # an app holds the handshake: it hears now, not at TCP's end
                self._disconnect(1012)
        # At shutdown the process goes after SHUTDOWN_CLOSE_TIMEOUT: closed without a reset,
        # what is written (a 1012 after a slow client's backlog) is still delivered by the
        # kernel after the exit (seen, a review: a client reading 400 KB/s lost its 1012).
        if self._state < CLOSING:
            self._close_transport(SHUTDOWN_CLOSE_TIMEOUT, reset=False)
        elif self._state == CLOSING and self._timer is not None:
            # Already closing (the app's close, a drain's 1012): shorten what is left.
            self._cancel_timer()
            self._timer = self._call_later(SHUTDOWN_CLOSE_TIMEOUT, self._transport.abort)

    def data_received(self, data: bytes) -> None:
        if self._state >= CLOSING:
            return  # read only to drain the socket until the client closes its side
        if self._paused:
            # Reading was resumed behind this protocol's back: uvicorn's HTTP protocol does
            # at the end of a response to a request pipelined before the upgrade (its
            # ``FlowControl``, paused by the request after it, resumes the transport). Pause
            # it again; this read is handled as usual (a full inbox defers it, unparsed).
            self._pause_transport()
        rest = self._rest
        if rest is not None:  # reading resumed before the deferred rest was parsed
            self._rest = None
            data = rest[0][rest[1] :] + data
        buf = self._buf
        if buf is not None:
            buf += data
            if len(buf) < self._need:
                if len(buf) > INBOX_BYTES and self._state < OPEN:
                    self._pause(_PAUSED_INBOX)  # early frames: kept, within a bound
                return
            data = bytes(buf)
            self._buf = None
        state = self._state
        if state == OPEN or state == CLOSE_SENT:
            self._frames(data)
        elif state == HEAD:
            self._head(data)
        elif state == CONNECTING or state == RESPONDING:
            # A client must wait for the 101: what came early is parsed after the accept.
            self._keep(data, 0, _NEVER)
            if len(data) > INBOX_BYTES:
                self._pause(_PAUSED_INBOX)

    # -- handshake ---------------------------------------------------------------------------

    def _head(self, data: bytes) -> None:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            if len(data) > 65536:
                self._refuse(_plain(400, "Request head too large"))
                return
            self._keep(data, 0, len(data) + 1)
            return
        try:
            self._scope = self._handshake(data[:end])
        except _Refused as refused:
            self._refuse(refused.response)
            return
        rest = data[end + 4 :]
        if rest:
            self._keep(rest, 0, _NEVER)
        self._state = CONNECTING
        self._inbox.append(({"type": "websocket.connect"}, 0))
        task = self._loop.create_task(self._run_asgi())
        tasks = self._server_state.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def _handshake(self, head: bytes) -> dict[str, Any]:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or parts[0] != b"GET" or not parts[2].startswith(b"HTTP/1."):
            raise _Refused(_plain(400, "WebSocket handshake: GET required"))
        headers: list[tuple[bytes, bytes]] = []
        key = version = None
        keys = versions = 0
        subprotocols: list[str] = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                raise _Refused(_plain(400, "WebSocket handshake: malformed header"))
            name = name.strip().lower()
            value = value.strip()
            headers.append((name, value))
            if name == b"sec-websocket-key":
                key, keys = value, keys + 1
            elif name == b"sec-websocket-version":
                version, versions = value, versions + 1
            elif name == b"sec-websocket-protocol":
                subprotocols.extend(
                    t.strip() for t in value.decode("latin-1").split(",") if t.strip()
                )
        if versions != 1 or version != b"13":
            raise _Refused(
                _plain(426, "WebSocket version 13 required", [(b"sec-websocket-version", b"13")])
            )
        try:
            if keys != 1 or key is None or len(base64.b64decode(key, validate=True)) != 16:
                raise ValueError
        except (ValueError, binascii.Error):
            raise _Refused(_plain(400, "WebSocket handshake: invalid Sec-WebSocket-Key")) from None
        self._key = base64.b64encode(hashlib.sha1(key + GUID).digest())
        config = self._config
        root_path = config.root_path
        raw_path, _, query = parts[1].partition(b"?")
        transport = self._transport
        return {
            "type": "websocket",
            "asgi": {"version": config.asgi_version, "spec_version": "2.4"},
            "http_version": "1.1",
            "scheme": "wss" if transport.get_extra_info("sslcontext") else "ws",
            "server": _address(transport.get_extra_info("sockname")),
            "client": _address(transport.get_extra_info("peername")),
            "root_path": root_path,
            "path": root_path + unquote(raw_path.decode("latin-1")),
            "raw_path": root_path.encode("ascii") + raw_path,
            "query_string": query,
            "headers": headers,
            "subprotocols": subprotocols,
            "state": self._app_state.copy(),
            "extensions": {"websocket.http.response": {}},
        }

    def _refuse(self, response: bytes) -> None:
        self._write(response)
        self._close_transport()

    def _accept(self, message: dict[str, Any]) -> None:
        accept, self._key = self._key or b"", None
        headers = [
            (b"upgrade", b"websocket"),
            (b"connection", b"Upgrade"),
            (b"sec-websocket-accept", accept),
        ]
        subprotocol = message.get("subprotocol")
        if subprotocol:
            headers.append((b"sec-websocket-protocol", subprotocol.encode()))
        headers += self._server_state.default_headers
        headers += [(bytes(n).lower(), bytes(v)) for n, v in message.get("headers") or ()]
        response = _http_response(101, headers)
        if logger.isEnabledFor(logging.INFO):
            logger.info('%s - "WebSocket %s" [accepted]', *_log_fields(self._scope))
        self._state = OPEN
        self._write(response)
        self._keepalive()
        early = self._buf
        if early is not None:
            self._buf = None
            self._resume(_PAUSED_INBOX)
            self._frames(bytes(early))

    def _respond(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        names = {n.lower() for n, _ in headers}
        extra = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers]
        for name, value in (
            ("date", email.utils.formatdate(usegmt=True)),
            ("connection", "close"),
            ("content-length", str(len(body))),
            ("content-type", "text/plain; charset=utf-8"),
        ):
            if name not in names:
                extra.append((name.encode(), value.encode()))
        self._write(_http_response(status, extra, body))
        self._disconnect(1006)
        self._close_transport()

    # -- frames in ------------------------------------------------------------------------

    def _keep(self, data: bytes, pos: int, need: int) -> None:
        self._buf = bytearray(data[pos:] if pos else data)
        self._need = need

    def _frames(self, data: bytes, pos: int = 0) -> None:
        """Parse the frames of ``data`` from ``pos``; pings of one call are answered once,
        for the last of them (RFC 6455 5.5.3), at its end."""
        pong = self._parse(data, pos)
        if pong is not None and (self._state == OPEN or self._state == CLOSE_SENT):
            # Answered until the client's close arrives, ours sent or not (RFC 6455 5.5.2).
            self._write(_frame(PONG, pong))

    def _defer(self, data: bytes, pos: int, why: int) -> None:
        """Leave ``data[pos:]`` unparsed, reading paused, until ``why`` is over."""
        # Kept whole only while what is left is most of it: ``data`` may be a large frame
        # already delivered (the copy is amortised: it at least halves ``data``).
        self._rest = (data[pos:], 0) if pos > len(data) - pos else (data, pos)
        self._pause(why)

    def _next_turn(self) -> None:
        """The rest of a read deferred by :data:`FRAMES_PER_TURN`, a loop turn later."""
        self._budget = FRAMES_PER_TURN
        self._resume(_PAUSED_TURN)
        if not self._paused & _PAUSED_INBOX:
            self._parse_rest()

    def _parse(self, data: bytes, pos: int) -> bytes | None:
        """:meth:`_frames`' loop: returns the payload of the last ping parsed, if any."""
        n = len(data)
        max_size = self._config.ws_max_size
        max_queue = max(1, self._config.ws_max_queue)
        pong: bytes | None = None
        # The budget is the socket's, not the call's: an app's ``receive`` parses the rest
        # of a read each time the inbox drains to half, within the same turn.
        budget = self._budget
        while self._state == OPEN or self._state == CLOSE_SENT:
            left = n - pos
            if left < 2:
                if left:
                    self._keep(data, pos, 2)
                break
            if self._state == OPEN and (
                self._inbox_bytes >= INBOX_BYTES or len(self._inbox) >= max_queue
            ):
                # The app has enough to read: the rest waits, unparsed, and so does the
                # socket (``receive`` resumes both).
                self._budget = budget
                self._defer(data, pos, _PAUSED_INBOX)
                return pong
            if not budget:  # the other sockets' turn: the rest at the next one
                self._budget = 0
                self._defer(data, pos, _PAUSED_TURN)
                self._loop.call_soon(self._next_turn)
                return pong
            budget -= 1
            b0 = data[pos]
            b1 = data[pos + 1]
            opcode = b0 & 0x0F
            if b0 & 0x70:
                self._fail(1002, "reserved bits set")
                return None
            if opcode not in _OPCODES:
                self._fail(1002, "reserved opcode")
                return None
            if not b1 & 0x80:
                self._fail(1002, "unmasked frame")
                return None
            length = b1 & 0x7F
            if length < 126:
                start = pos + 6
            elif length == 126:
                if left < 8:
                    self._keep(data, pos, 8)
                    break
                length = int.from_bytes(data[pos + 2 : pos + 4], "big")
                start = pos + 8
            else:
                if left < 14:
                    self._keep(data, pos, 14)
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                start = pos + 14
            if opcode >= 8:
                if length > 125 or not b0 & 0x80:
                    self._fail(1002, "invalid control frame")
                    return None
            else:
                held = self._frag_parts  # a continuation adds to the message so far
                if length + (len(held) if opcode == CONT and held is not None else 0) > max_size:
                    self._fail(1009, "message too big")
                    return None
            end = start + length
            if end > n:
                self._keep(data, pos, end - pos)
                break
            if opcode < 8 and self._state == CLOSE_SENT:
                pos = end  # data after our close frame: discarded unread (RFC 6455 5.5.1)
                continue
            payload = data[start:end]
            if length:
                payload = apply_mask(payload, data[start - 4 : start])
            pos = end
            if opcode == TEXT or opcode == BINARY:
                self._message(opcode, b0 & 0x80, payload)
            elif opcode == CONT:
                self._continuation(b0 & 0x80, payload)
            elif opcode == PING:
                pong = payload  # answered at the end of the read (:meth:`_frames`)
            elif opcode == PONG:
                if self._state == OPEN and payload == self._ping and self._ping is not None:
                    self._ping = None
                    self._keepalive()
            else:
                if pong is not None:  # the pings before it, before the close reply
                    self._write(_frame(PONG, pong))
                    pong = None
                self._peer_close(payload)
        self._budget = budget
        return pong

    def _message(self, opcode: int, fin: int, payload: bytes) -> None:
        if self._frag_op:
            self._fail(1002, "new message inside a fragmented one")
            return
        if fin:
            if opcode == TEXT:
                try:
                    text = payload.decode()
                except UnicodeDecodeError:
                    self._fail(1007, "invalid UTF-8")
                    return
                self._deliver({"type": "websocket.receive", "text": text}, len(payload))
            else:
                self._deliver({"type": "websocket.receive", "bytes": payload}, len(payload))
            return
        self._frag_op = opcode
        self._frag_parts = bytearray(payload)
        if opcode == TEXT:
            self._frag_text = _utf8_decoder()
            self._text_part(payload, False)

    def _continuation(self, fin: int, payload: bytes) -> None:
        if not self._frag_op or self._frag_parts is None:
            self._fail(1002, "continuation without a message")
            return
        if self._frag_text is not None and not self._text_part(payload, bool(fin)):
            return
        self._frag_parts += payload
        if fin:
            parts, size = self._frag_parts, len(self._frag_parts)
            message: dict[str, Any]
            if self._frag_op == TEXT:  # valid UTF-8: checked fragment by fragment
                message = {"type": "websocket.receive", "text": parts.decode()}
            else:
                message = {"type": "websocket.receive", "bytes": bytes(parts)}
            self._frag_op = 0
            self._frag_parts = self._frag_text = None
            self._deliver(message, size)

    def _text_part(self, payload: bytes, final: bool) -> bool:
        """Check a text fragment as UTF-8 (a code point may straddle fragments)."""
        try:
            self._frag_text.decode(payload, final)
        except UnicodeDecodeError:
            self._fail(1007, "invalid UTF-8")
            return False
        return True

    def _peer_close(self, payload: bytes) -> None:
        code: int | None = None
        reason = ""
        if len(payload) == 1:
            self._fail(1002, "invalid close frame")
            return
        if payload:
            code = int.from_bytes(payload[:2], "big")
            if code not in _VALID_CODES and not 3000 <= code <= 4999:
                self._fail(1002, "invalid close code")
                return
            try:
                reason = payload[2:].decode()
            except UnicodeDecodeError:
                self._fail(1007, "invalid UTF-8 in close reason")
                return
        if self._state == OPEN:
            self._write(_frame(CLOSE, _close_payload(code)))
            self._disconnect(1005 if code is None else code, reason)
        self._close_transport()

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection: send ``code``, tell the app, close the TCP connection."""
        if self._state == OPEN:
            self._write(_frame(CLOSE, _close_payload(code, reason)))
            self._disconnect(code, reason)
        self._buf = self._frag_parts = self._frag_text = self._rest = None
        self._close_transport()

    def _deliver(self, message: dict[str, Any], size: int) -> None:
        """Queue ``message`` for the app's ``receive`` (dropped once our close frame is out)."""
        if self._state != OPEN:
            return  # after our close frame: discarded (RFC 6455 5.5.1)
        size += EVENT_COST
        self._inbox.append((message, size))
        self._inbox_bytes += size
        self._wake()

    def _wake(self) -> None:
        """Wake the ``receive`` waiting for the inbox, if one is."""
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # -- the ASGI application -------------------------------------------------------------

    def _disconnect(self, code: int, reason: str = "") -> None:
        if self._final is None:
            self._final = {"type": "websocket.disconnect", "code": code, "reason": reason}
            self._inbox.append((self._final, 0))
            self._wake()

    async def receive(self) -> dict[str, Any]:
        """The next ASGI event; once ``websocket.disconnect`` came, that event again."""
        inbox = self._inbox
        while not inbox:
            if self._final is not None:
                return self._final
            waiter = self._waiter
            if waiter is None or waiter.done():
                waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            except asyncio.CancelledError:
                # Receivers share the waiter: another one's cancellation cancels it too.
                task = asyncio.current_task()
                if task is None or task.cancelling():
                    raise
        message, size = inbox.pop(0)
        if size:
            self._inbox_bytes -= size
        if (
            self._paused & _PAUSED_INBOX
            and self._state == OPEN
            and self._inbox_bytes <= INBOX_BYTES // 2
            and len(inbox) <= self._config.ws_max_queue // 2
        ):
            self._resume(_PAUSED_INBOX)
            self._parse_rest()
        return message

    def _parse_rest(self) -> None:
        """Parse what was left unparsed when the inbox filled."""
        rest = self._rest
        if rest is not None:
            self._rest = None
            self._frames(*rest)

    async def send(self, message: dict[str, Any]) -> None:
        """Send an ASGI event; waits while the write buffer is full (see the module doc)."""
        kind = message["type"]
        if kind == "websocket.send" and _OUTBOX_KEY not in message:
            # A send with room in the buffer returns without suspending: an app sending in
            # a loop to a client that reads as fast held every other socket of the process
            # (a ping on another socket answered after 14 to 34 s; uvicorn's own protocol:
            # 16 s). One clock for the process (streaming.fairness).
            if turn_due(self._loop.time()):  # the other sockets' turn (FAIR_SLICE)
                await asyncio.sleep(0)
        if self._paused & _PAUSED_WRITE and self._state == OPEN and kind == "websocket.send":
            # Only data waits for room: a close, an accept or a refusal must not wait on a
            # client that has stopped reading.
            drain = self._drain
            if drain is None:
                drain = self._drain = self._loop.create_future()
            await asyncio.shield(drain)
            if self._app_closed:
                # The app closed the socket while this frame waited for room (a close does
                # not wait: streaming.outbox sends it past a client that stopped reading):
                # the frame is dropped, as for a client that is gone.
                raise ClientDisconnected()
        state = self._state
        if state == CLOSED:
            if kind == "websocket.close":
                return  # the connection is over already (uvicorn's protocols: the same)
            raise ClientDisconnected()
        if state == OPEN:
            if kind == "websocket.send":
                if self._transport.is_closing():  # lost, and connection_lost is on its way
                    raise ClientDisconnected()
                data = message.get("bytes")
                if data is not None:
                    self._write(_frame(BINARY, data))
                else:
                    text = message.get("text")
                    if text is not None:
                        self._write(_frame(TEXT, text.encode()))
            elif kind == "websocket.close":
                code = message.get("code") or 1000
                reason = message.get("reason") or ""
                sent: int | None = code
                if code not in _VALID_CODES and not 3000 <= code <= 4999:
                    # 1005 means "no code": a close frame without one. Any other code may
                    # not go on the wire (RFC 6455 7.4): the close still happens, with 1011.
                    sent = None if code == 1005 else 1011
                    if sent:
                        logger.warning("close code %s may not be sent: closing with 1011", code)
                # Encoded first: a reason that cannot be raises while the socket is still open.
                payload = _close_payload(sent, reason)
                self._app_closed = True
                self._state = CLOSE_SENT
                self._disconnect(code, reason)
                self._write(_frame(CLOSE, payload))
                self._cancel_timer()
                self._timer = self._call_later(CLOSE_TIMEOUT, self._close_transport)
                self._resume(_PAUSED_INBOX)  # read on, for the client's close reply
                self._parse_rest()
            else:
                raise RuntimeError(
                    "Expected ASGI message 'websocket.send' or 'websocket.close', "
                    f"but got {kind!r}."
                )
        elif state == CONNECTING:
            if kind == "websocket.accept":
                self._accept(message)
            elif kind == "websocket.close":
                if logger.isEnabledFor(logging.INFO):
                    logger.info('%s - "WebSocket %s" 403', *_log_fields(self._scope))
                self._app_closed = True
                self._respond(403, [], b"")
            elif kind == "websocket.http.response.start":
                status = message["status"]
                if not 100 <= status < 600:
                    raise RuntimeError(f"Invalid HTTP status code '{status}' in response.")
                if logger.isEnabledFor(logging.INFO):
                    fields = _log_fields(self._scope)
                    logger.info('%s - "WebSocket %s" %d', *fields, status)
                headers = [
                    (bytes(n).decode("latin-1"), bytes(v).decode("latin-1"))
                    for n, v in message.get("headers") or ()
                ]
                self._response = [status, headers, []]
                self._state = RESPONDING
            else:
                raise RuntimeError(
                    "Expected ASGI message 'websocket.accept', 'websocket.close' or "
                    f"'websocket.http.response.start' but got {kind!r}."
                )
        elif state == RESPONDING:
            if kind != "websocket.http.response.body":
                raise RuntimeError(
                    f"Expected ASGI message 'websocket.http.response.body' but got {kind!r}."
                )
            response = self._response
            assert response is not None
            response[2].append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                self._response = None
                self._respond(response[0], response[1], b"".join(response[2]))
        elif self._app_closed:
            raise RuntimeError(
                f"Unexpected ASGI message {kind!r}, after sending 'websocket.close'."
            )
        elif kind != "websocket.close":  # CLOSING: the client closed, the connection
            raise ClientDisconnected()  # failed, or uvicorn shuts down
        # else: closing what is already closing or closed does nothing (as in uvicorn)

    async def _run_asgi(self) -> None:
        try:
            result = await self._config.loaded_app(self._scope, self.receive, self.send)
        except ClientDisconnected:
            if self._state < CLOSING and not self._transport.is_closing():
                # Not this socket's: another one's (a broadcast to a gone client) escaped.
                logger.exception("Exception in ASGI application\n")
                self._end(1011, "internal error")
        except BaseException:
            logger.exception("Exception in ASGI application\n")
            self._end(1011, "internal error")
        else:
            if self._state in (CONNECTING, RESPONDING):
                logger.error("ASGI callable returned without completing handshake.")
            elif result is not None:
                logger.error("ASGI callable should return None, but returned '%s'.", result)
            self._end(1000, "")

    def _end(self, code: int, reason: str) -> None:
        state = self._state
        if state in (CONNECTING, RESPONDING):
            self._write(_plain(500, "Internal Server Error"))
        elif state == OPEN:
            self._write(_frame(CLOSE, _close_payload(code, reason)))
        elif state == CLOSE_SENT:
            return  # waiting for the client's close reply (or CLOSE_TIMEOUT)
        if state < CLOSING:
            self._close_transport()

    # -- keepalive, flow, output ------------------------------------------------------------

    def _keepalive(self) -> None:
        """Schedule the next keepalive ping (after accept, and after each pong)."""
        self._cancel_timer()
        interval = self._config.ws_ping_interval
        if interval and self._state == OPEN:
            self._timer = self._call_later(interval, self._send_ping)

    def _send_ping(self) -> None:
        self._timer = None
        if self._state != OPEN:
            return
        self._ping = random.getrandbits(32).to_bytes(4, "big")
        self._write(_frame(PING, self._ping))
        self._ping_drained = self._drained()
        timeout = self._config.ws_ping_timeout
        if timeout:
            self._timer = self._call_later(timeout, self._ping_timed_out)
        else:
            self._ping = None
            self._keepalive()

    def _ping_timed_out(self) -> None:
        self._timer = None
        if self._state != OPEN:
            return
        if self._paused == _PAUSED_INBOX:
            # Reading waits for the app, not the client: the pong may be there, unread.
            self._timer = self._call_later(self._config.ws_ping_timeout, self._ping_timed_out)
            return
        if self._paused & _PAUSED_WRITE:
            # Reading waits for the client to take what it is sent, so its pong may be
            # there, unread. It is alive while it takes some (seen, a review: a client
            # reading 35 KB/s behind a 4 MB backlog was closed as dead); one that took
            # nothing since the ping is not.
            drained = self._drained()
            if drained > self._ping_drained:
                self._ping_drained = drained
                self._timer = self._call_later(self._config.ws_ping_timeout, self._ping_timed_out)
                return
        self._fail(1011, "keepalive ping timeout")

    def _drained(self) -> int:
        """Bytes the client has taken: handed to the transport, less its buffer, less the
        kernel's send queue (bytes not yet acknowledged by the client's end). The kernel
        part matters: its send buffer grows to megabytes and wakes the transport only once
        a third of it is free, which a client reading 35 KB/s takes a minute to make."""
        transport = self._transport
        try:
            taken = self._sent - transport.get_write_buffer_size()
        except (AttributeError, RuntimeError):  # a transport without it, or closing
            return 0
        sock = transport.get_extra_info("socket")
        if _ioctl is not None and sock is not None:
            try:
                queued = _ioctl(sock.fileno(), _TIOCOUTQ, b"\0\0\0\0")
            except (OSError, ValueError):  # not a TCP socket (a Unix socket: counts as sent)
                pass
            else:
                taken -= struct.unpack("i", queued)[0]
        return taken

    def _close_transport(self, timeout: float = CLOSE_TIMEOUT, *, reset: bool = True) -> None:
        """End the TCP connection once what is written is sent; abort it if the client has
        not read that and closed its side within ``timeout`` (a client that never reads
        must not hold it): with a reset (:meth:`_abort`), or, ``reset=False``, leaving
        what is unsent to the kernel.

        Over TCP the end is a half-close (``write_eof``), then reading on, discarding, until
        the client closes its side: closing a socket with unread data would make the kernel
        reset the connection and drop the close frame still queued (the client would see
        1006 instead of, say, 1009 for a frame it is still sending).
        """
        self._cancel_timer()
        if self._state == CLOSED:
            return
        self._state = CLOSING
        self._buf = self._rest = None
        transport = self._transport
        try:
            half_close = transport.can_write_eof()
        except (AttributeError, NotImplementedError):  # pragma: no cover - not a socket
            half_close = False
        if half_close and not transport.is_closing():
            transport.write_eof()
            if self._paused:
                self._paused = 0
                try:
                    transport.resume_reading()
                except RuntimeError:  # pragma: no cover - closing already
                    pass
        else:
            transport.close()
        self._timer = self._call_later(timeout, self._abort if reset else transport.abort)
        drain, self._drain = self._drain, None  # a send waiting for room: the socket is gone
        if drain is not None and not drain.done():
            drain.set_result(None)

    def _abort(self) -> None:
        """End the connection now, with a reset: the client did not take what was written
        (the close frame among it) in time. Without ``SO_LINGER`` 0 the kernel would keep
        the socket, and its send buffer (up to megabytes), as an orphan in FIN-WAIT-1 for
        as long as the client acknowledges without reading (seen, an attacker's try: 50
        clients reading a byte a second held 137 MB of kernel buffers 60 s after their
        sockets closed)."""
        transport = self._transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            except (OSError, AttributeError):  # gone already, or not a TCP socket
                pass
        transport.abort()

    def _call_later(self, delay: float, callback: Any) -> asyncio.TimerHandle:
        return self._loop.call_later(delay, callback, context=_NO_CONTEXT)

    def _cancel_timer(self) -> None:
        timer = self._timer
        if timer is not None:
            self._timer = None
            timer.cancel()

    def _write(self, data: bytes) -> None:
        transport = self._transport
        if self._state < CLOSING and not transport.is_closing():
            transport.write(data)
            self._sent += len(data)

    def _pause(self, why: int) -> None:
        if self._state >= CLOSING:
            return  # closing reads on to the client's end, whatever it does not read
        if not self._paused:
            self._pause_transport()
        self._paused |= why

    def _pause_transport(self) -> None:
        try:
            self._transport.pause_reading()
        except (AttributeError, RuntimeError):  # closing, or a transport without it
            pass

    def _resume(self, why: int) -> None:
        if not self._paused & why:
            return
        self._paused &= ~why
        if not self._paused and self._state != CLOSED:
            try:
                self._transport.resume_reading()
            except (AttributeError, RuntimeError):
                pass


def _address(info: Any) -> tuple[str, int] | None:
    if isinstance(info, (list, tuple)) and len(info) >= 2:
        return (str(info[0]), int(info[1]))
    return None


def _log_fields(scope: dict[str, Any] | None) -> tuple[str, str]:
    if scope is None:
        return "", ""
    client = scope.get("client")
    path = quote(scope["path"])
    if scope["query_string"]:
        path += "?" + scope["query_string"].decode("ascii", "replace")
    return (f"{client[0]}:{client[1]}" if client else ""), path
