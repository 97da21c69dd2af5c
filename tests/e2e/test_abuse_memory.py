"""What one abusive socket costs the server, under daphne and under uvicorn.

Each test starts a fresh server (tests/e2e_abuse_settings.py: every limit at its
default, plus the ``oversize`` endpoint of tests/e2e_app/abuse_endpoints.py) and reads
the server process's resident memory from ``/proc/<pid>/status``: its peak (VmHWM,
reset through ``/proc/<pid>/clear_refs`` once the socket is set up) minus its RSS at
that moment. One socket may cost the server at most MAX_GROWTH, and gets a defined
answer (an ``error`` frame, or a documented close code), never silence.

1. Frames held while an ``auth`` is pending: one anonymous socket alternates ``auth``
   commands (random tokens) with data frames that are small on the wire but costly
   once parsed (21,000 empty JSON lists in 64 KB), under the frame-rate limit
   (500/s, a burst of 1,000: 800 frames are sent as fast as they go). Every frame
   must be answered (``auth`` reply or ``error``; the intended fix: ``rate_limited``
   past MAX_PENDING_FRAMES held frames or for a second ``auth`` in flight,
   ``malformed_frame`` for a frame with too many values), or the socket closed with
   4008/4013 after answers.
2. A socket that never reads: 1,000 frames for an unknown endpoint whose name is
   ``é`` repeated (64 KB on the wire; echoed JSON-escaped in the error, 390 KB). The
   server must close it with 4013, or answer with short errors (the intended fix:
   truncated names and a send queue bounded in bytes) and then answer ``ping``, or
   close it as a flood (4008); never go mute. The client reads as soon as it has
   sent: autobahn drops a connection whose client does not answer its close frame
   within 1 s, and the close frame with it, so under daphne a server-ended socket
   may end without a close code; that counts as ended, not as mute.
3. An outgoing frame above 1 MiB (daphne's, i.e. autobahn's, limit on what it sends):
   the client gets error ``message_too_large`` and the socket still answers ``ping``.

Loops are bounded in count and time; every wait has a timeout and fails with what was
(not) received. Feeding a server stops once it has grown by ABORT_GROWTH.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import threading
from collections import Counter

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from tests.support.servers import SERVERS

pytestmark = pytest.mark.timeout(300)

MiB = 1024 * 1024
#: What one socket may cost a server.
MAX_GROWTH = 64 * MiB
#: Past this growth the test stops feeding the server (it has failed by then anyway).
ABORT_GROWTH = 256 * MiB
#: Seconds to wait for a frame or a close: a failure guard, never a synchronisation.
TIMEOUT = 20
#: Streampod's default MAX_MESSAGE_BYTES: every frame the tests send fits in it.
MAX_MESSAGE_BYTES = 65536
#: The documented close codes a server may end an abusive socket with.
DEFINED_CLOSES = {4008, 4009, 4013}

PING = json.dumps({"command": "ping", "args": {}})
PONG = {"command": "pong", "args": {}}


@pytest.fixture(params=sorted(SERVERS))
def abuse_server(request, django_db_setup, django_db_blocker):
    """A fresh server per test (daphne, then uvicorn), so that its memory is this test's."""
    env = {"DJANGO_SETTINGS_MODULE": "tests.e2e_abuse_settings"}
    with SERVERS[request.param](env=env) as srv:
        yield srv


def connect(url, **kwargs):
    return ws_connect(url, open_timeout=TIMEOUT, proxy=None, **kwargs)


# -- the server's memory --------------------------------------------------------------


def _status_bytes(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


class ServerMemory:
    """A server process's RSS from now on: ``growth()`` is its peak minus its RSS now.

    The kernel's peak (VmHWM) is reset through ``clear_refs`` when that is allowed; a
    thread also samples VmRSS every few milliseconds, as a fallback and to set
    ``too_much`` once the growth passes ABORT_GROWTH.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as clear_refs:
                clear_refs.write("5")  # reset VmHWM to the current RSS
            self.hwm_reset = True
        except OSError:
            self.hwm_reset = False
        self.baseline = _status_bytes(pid, "VmRSS")
        self.sampled_peak = self.baseline
        self.too_much = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            try:
                rss = _status_bytes(self.pid, "VmRSS")
            except (OSError, AssertionError):
                return  # the process is gone
            self.sampled_peak = max(self.sampled_peak, rss)
            if rss - self.baseline > ABORT_GROWTH:
                self.too_much.set()

    def growth(self) -> int:
        peak = self.sampled_peak
        if self.hwm_reset:
            peak = max(peak, _status_bytes(self.pid, "VmHWM"))
        return peak - self.baseline

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def mib(n: int) -> str:
    return f"{n / MiB:.1f} MiB"


# -- frames ------------------------------------------------------------------------------


def data_frame(endpoint, class_name, frame_id=None, **fields):
    frame = {"endpoint": endpoint, "object": {"className": class_name, "data": fields}}
    if frame_id is not None:
        frame["id"] = frame_id
    return json.dumps(frame)


def auth_frame():
    return json.dumps({"command": "auth", "args": {"key": f"Token {secrets.token_hex(20)}"}})


#: Empty lists in one costly frame: 3 bytes each on the wire, ~64 bytes each once parsed.
COSTLY_LISTS = 21_000


def costly_frame(frame_id):
    lists = ",".join(["[]"] * COSTLY_LISTS)
    return (
        '{"endpoint":"chat","id":"' + frame_id + '","object":{"className":"X",'
        '"data":{"a":[' + lists + "]}}}"
    )


async def next_frame(ws, timeout=TIMEOUT, skip_endpoints=("whoami",)):
    """The next frame, skipping greetings of other endpoints; None after ``timeout``
    seconds of silence. A close raises ConnectionClosed."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                frame = json.loads(await ws.recv())
                if frame.get("endpoint") in skip_endpoints:
                    continue
                return frame
    except TimeoutError:
        return None


def close_code(exc: ConnectionClosed):
    return exc.rcvd.code if exc.rcvd is not None else None


# -- 1. frames held behind a pending auth --------------------------------------------------

#: auth + costly frame pairs: 800 frames, within the default burst of 1,000 frames.
PAIRS = 400


class Answers:
    """What the server sent back: ``auth`` replies and ``error`` frames, by kind."""

    def __init__(self) -> None:
        self.count = 0
        self.kinds: Counter[str] = Counter()
        self.closed = False
        self.close_code: int | None = None
        self.changed = asyncio.Event()

    async def read(self, ws) -> None:
        try:
            while True:
                frame = json.loads(await ws.recv())
                if frame.get("command") == "auth":
                    self.kinds["auth"] += 1
                elif frame.get("command") == "error":
                    self.kinds[frame["args"].get("code")] += 1
                else:
                    continue  # a data frame: whoami's greeting
                self.count += 1
                self.changed.set()
        except ConnectionClosed as exc:
            self.closed, self.close_code = True, close_code(exc)
            self.changed.set()

    async def wait(self, count: int) -> None:
        while True:
            self.changed.clear()
            if self.count >= count or self.closed:
                return
            await self.changed.wait()


async def test_frames_held_behind_pending_auth_commands_cost_bounded_memory(abuse_server):
    costly = costly_frame("c-0")
    assert len(costly.encode()) <= MAX_MESSAGE_BYTES
    async with connect(abuse_server.ws_url) as ws:
        # Warm up every code path once (a lookup, a costly frame): three answers, then
        # measure.
        await ws.send(auth_frame())
        await ws.send(costly)
        await ws.send(PING)
        for _ in range(3):
            frame = await next_frame(ws)
            assert frame is not None, "no answer to a warm-up frame"
            assert frame.get("command") in ("auth", "error", "pong"), frame

        memory = ServerMemory(abuse_server.proc.pid)
        answers = Answers()
        reader = asyncio.create_task(answers.read(ws))
        sent = 0
        try:
            try:
                for i in range(PAIRS):
                    if memory.too_much.is_set():
                        break
                    await ws.send(auth_frame())
                    sent += 1
                    await ws.send(costly_frame(f"c-{i}"))
                    sent += 1
            except ConnectionClosed:
                pass  # closed by the server: answers.closed tells how
            try:
                async with asyncio.timeout(60):
                    await answers.wait(sent)
                silent = False
            except TimeoutError:
                silent = True
            growth = memory.growth()
        finally:
            memory.stop()
            reader.cancel()

    print(
        f"{abuse_server.name}: {sent} frames sent, {answers.count} answers "
        f"{dict(answers.kinds)}, close {answers.close_code}, server grew by {mib(growth)}"
    )
    problems = []
    if growth >= MAX_GROWTH:
        problems.append(
            f"the server grew by {mib(growth)} (limit {mib(MAX_GROWTH)}) while one socket "
            f"sent {sent} frames"
            + (f" (stopped early: past {mib(ABORT_GROWTH)})" if sent < 2 * PAIRS else "")
        )
    if silent:
        problems.append(f"only {answers.count} answers to {sent} frames after 60 s, and no close")
    elif answers.closed and answers.close_code not in DEFINED_CLOSES:
        problems.append(
            f"closed with {answers.close_code} after {answers.count} answers to {sent} frames"
        )
    assert not problems, "; ".join(problems)


# -- 2. a socket that never reads ----------------------------------------------------------

#: Frames for an unknown endpoint the stalled socket sends (the default send queue
#: holds 1,024 frames).
UNREAD_FRAMES = 1000
#: An error that echoes a truncated name stays well under this.
SHORT_ERROR = 4096


def unknown_endpoint_frame():
    """64 KB on the wire: an endpoint name of ``é`` (2 bytes in UTF-8) repeated."""
    envelope = data_frame("", "X")
    name = "\u00e9" * ((MAX_MESSAGE_BYTES - len(envelope) - 64) // 2)
    frame = json.dumps(
        {"endpoint": name, "object": {"className": "X", "data": {}}}, ensure_ascii=False
    )
    assert MAX_MESSAGE_BYTES - 1024 < len(frame.encode()) <= MAX_MESSAGE_BYTES
    return frame


def small_buffer_socket(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16_384)
    sock.connect(("127.0.0.1", port))
    return sock


async def test_socket_that_never_reads_costs_bounded_memory(abuse_server):
    frame = unknown_endpoint_frame()
    # The client stops reading the socket once one frame waits (whoami's greeting):
    # the server's answers fill the kernel's buffers, then whatever the server keeps.
    stalled = await connect(
        abuse_server.ws_url,
        sock=small_buffer_socket(abuse_server.port),
        max_queue=1,
        ping_interval=None,
        compression=None,
    )
    try:
        memory = ServerMemory(abuse_server.proc.pid)
        sent = 0
        try:
            try:
                for _ in range(UNREAD_FRAMES):
                    if memory.too_much.is_set():
                        break
                    await stalled.send(frame)
                    sent += 1
            except ConnectionClosed:
                pass  # the server ended the socket: the reading below tells how

            # Read at once: a server that closed the socket must not wait long for the
            # client's reply (autobahn drops the connection after 1 s, and its close
            # frame with it). The server's peak is in VmHWM whatever the reading frees.
            errors = biggest = 0
            other: list[str] = []
            ended = "silence"
            try:
                for _ in range(sent + 10):
                    try:
                        async with asyncio.timeout(TIMEOUT):
                            raw = await stalled.recv()
                    except TimeoutError:
                        break
                    answer = json.loads(raw)
                    if answer.get("endpoint") == "whoami":
                        continue
                    if answer.get("command") == "error":
                        errors += 1
                        biggest = max(biggest, len(raw.encode()))
                    else:
                        other.append(raw[:200])
                    if errors == sent:
                        await stalled.send(PING)
                        pong = await next_frame(stalled)
                        ended = "pong" if pong == PONG else f"then {pong!r:.200}"
                        break
            except ConnectionClosed as exc:
                code = close_code(exc)
                ended = f"close {code}" if code is not None else "dropped"
            growth = memory.growth()
        finally:
            memory.stop()
    finally:
        await stalled.close()

    print(
        f"{abuse_server.name}: {sent} frames sent; server grew by {mib(growth)}; read back "
        f"{errors} errors (largest {biggest} bytes); ended with {ended}"
    )
    problems = []
    if growth >= MAX_GROWTH:
        problems.append(
            f"the server grew by {mib(growth)} (limit {mib(MAX_GROWTH)}) for one socket "
            f"that sent {sent} frames and read none"
        )
    if ended == "close 4013":
        pass  # the server gave up on the socket, as documented
    elif ended in ("pong", "close 4008", "dropped"):
        # Kept open and answered, or refused as a flood (4008), or closed while the
        # client was not reading (under daphne the close frame may be lost then): each
        # error must be short, whatever name it answers.
        if biggest > SHORT_ERROR:
            problems.append(
                f"each of the {errors} errors echoes the whole name: up to {biggest} bytes "
                f"for a {len(frame.encode())}-byte frame"
            )
    elif ended == "silence":
        problems.append(
            f"the socket went mute: {errors} of {sent} frames answered, then no frame "
            f"and no close for {TIMEOUT} s"
        )
    else:
        problems.append(
            f"{errors} of {sent} frames answered, then {ended} (other frames: {other[:3]})"
        )
    assert not problems, "; ".join(problems)


# -- 3. an outgoing frame above 1 MiB ------------------------------------------------------

#: The reply's text: its frame is above 1 MiB, daphne's (autobahn's) default limit.
BIG = 3 * MiB // 2


async def test_outgoing_frame_above_one_mib_gets_an_error_and_the_socket_lives(abuse_server):
    async with connect(abuse_server.ws_url, max_size=None, compression=None) as ws:
        await ws.send(data_frame("oversize", "AbuseBigRequest", frame_id="big-1", size=BIG))
        try:
            answer = await next_frame(ws)
        except ConnectionClosed as exc:
            pytest.fail(f"closed with {close_code(exc)} instead of error message_too_large")
        assert answer is not None, (
            f"no answer, no close for {TIMEOUT} s after asking for a {mib(BIG)} frame: "
            "the socket is mute (expected error message_too_large)"
        )
        if answer.get("command") != "error":
            size = len(json.dumps(answer))
            pytest.fail(
                f"got a {size}-byte {answer.get('endpoint')!r} frame instead of error "
                "message_too_large: frames above 1 MiB go out under this server "
                "and not under daphne"
            )
        assert answer["args"]["code"] == "message_too_large", answer

        await ws.send(PING)
        try:
            pong = await next_frame(ws)
        except ConnectionClosed as exc:
            pytest.fail(f"closed with {close_code(exc)} after the error: expected a pong")
        assert pong == PONG, f"expected a pong after the error, got {pong!r:.300}"
