"""The send path: eager sends, order, the bound, and the server's pushback.

``PushbackServer.send`` is what uvicorn's is: it waits while the socket's write
buffer is over its high-water mark. daphne's pushback comes through a
``SendFlow`` that Twisted pauses and resumes; here the test pauses it as Twisted
would. The real servers are tested in tests/e2e/test_backpressure.py.
"""

from __future__ import annotations

import asyncio

import pytest
from twisted.internet.testing import StringTransport

from streaming.flow import SendFlow, attach_flow, plain_send
from streaming.outbox import Outbox
from streaming.protocol import CloseCode


class PushbackServer:
    def __init__(self) -> None:
        self.sent: list[dict] = []
        self.writable = asyncio.Event()
        self.writable.set()

    async def send(self, message: dict) -> None:
        await self.writable.wait()
        self.sent.append(message)

    def texts(self) -> list[str]:
        return [m.get("text", f"close {m.get('code')}") for m in self.sent]


def make(limit: int = 8, flow: SendFlow | None = None):
    server = PushbackServer()
    overflows: list[int] = []
    outbox = Outbox(server.send, limit, lambda: overflows.append(1), flow, eager=True)
    return server, outbox, overflows


async def test_a_frame_goes_out_at_once_when_the_server_has_room():
    server, outbox, _ = make()
    assert outbox.put("a")
    # No await in between: sent synchronously, no task, nothing queued.
    assert server.texts() == ["a"]
    assert len(outbox) == 0 and outbox.sent == 1


async def test_frames_wait_behind_a_suspended_send_and_keep_their_order():
    server, outbox, _ = make()
    server.writable.clear()
    for text in ("a", "b", "c"):
        assert outbox.put(text)
    assert server.texts() == [] and len(outbox) == 2  # "a" is in flight
    server.writable.set()
    await outbox.wait_sent()
    assert server.texts() == ["a", "b", "c"]
    assert outbox.put("d") and server.texts()[-1] == "d"  # eager again


async def test_a_full_queue_refuses_and_reports_overflow():
    server, outbox, overflows = make(limit=2)
    server.writable.clear()
    assert outbox.put("in flight") and outbox.put("q1") and outbox.put("q2")
    assert not outbox.put("one too many")
    assert overflows == [1]


async def test_close_discarding_pending_drops_the_queue_but_not_the_frame_in_flight():
    server, outbox, _ = make()
    server.writable.clear()
    outbox.put("in flight")
    outbox.put("queued")
    outbox.close(4013, discard_pending=True)
    assert not outbox.put("after close")
    server.writable.set()
    await outbox.wait_sent()
    assert server.texts() == ["in flight", "close 4013"]


async def test_close_after_pending_frames_keeps_them():
    server, outbox, _ = make()
    server.writable.clear()
    outbox.put("a")
    outbox.put("b")
    outbox.close(1000)
    server.writable.set()
    await outbox.wait_sent()
    assert server.texts() == ["a", "b", "close 1000"]


async def test_a_paused_flow_queues_until_resumed():
    flow = SendFlow(None)
    server, outbox, overflows = make(limit=3, flow=flow)
    outbox.put("a")
    flow.pauseProducing()  # Twisted: the write buffer passed 64 KiB
    for text in ("b", "c", "d"):
        assert outbox.put(text)
    assert not outbox.put("e") and overflows == [1]
    assert server.texts() == ["a"]
    flow.resumeProducing()  # Twisted: the buffer is empty again
    await outbox.wait_sent()
    assert server.texts() == ["a", "b", "c", "d"]


async def test_the_close_goes_out_while_paused_when_the_queue_is_dropped():
    flow = SendFlow(None)
    server, outbox, _ = make(flow=flow)
    flow.pauseProducing()
    outbox.put("a")
    outbox.close(4013, discard_pending=True)
    await outbox.wait_sent()
    assert server.texts() == ["close 4013"]


async def test_a_lost_connection_releases_a_paused_queue():
    flow = SendFlow(None)
    server, outbox, _ = make(flow=flow)
    flow.pauseProducing()
    outbox.put("a")
    flow.stopProducing()  # Twisted: connection lost
    await outbox.wait_sent()
    assert server.texts() == ["a"]  # handed to the server, which drops it
    flow.pauseProducing()
    assert not flow.paused  # a stopped flow never pauses again


async def test_a_failing_send_discards_everything_after_it_and_closes_with_1011():
    tried: list[dict] = []

    async def refusing(message):
        tried.append(message)
        if message["type"] == "websocket.send":
            raise ValueError("the server refused the frame")  # as autobahn does past its limit

    outbox = Outbox(refusing, 8, lambda: None, eager=True)
    assert outbox.put("a")  # accepted, then the send fails
    assert outbox.closed
    assert not outbox.put("b")
    # Never open and mute: the socket is closed with a defined code.
    assert tried[-1] == {"type": "websocket.close", "code": 1011}


async def test_the_queue_is_bounded_in_bytes_as_well_as_frames():
    server = PushbackServer()
    overflows: list[int] = []
    outbox = Outbox(
        server.send, 1000, lambda: overflows.append(1), eager=True, byte_limit=100_000
    )
    server.writable.clear()
    big = "x" * 30_000
    assert outbox.put(big)  # in flight, suspended
    assert outbox.put(big) and outbox.put(big) and outbox.put(big)  # ~90 KB queued
    assert overflows == []
    assert not outbox.put(big)  # would pass 100 KB
    assert overflows == [1]
    assert outbox.queued_bytes <= 100_000
    server.writable.set()
    await outbox.wait_sent()
    assert outbox.queued_bytes == 0


async def test_a_gated_outbox_sends_the_accept_first_then_what_was_queued():
    server = PushbackServer()
    outbox = Outbox(server.send, 8, lambda: None, eager=True, gated=True)
    assert outbox.put("hello from stream_opened")
    assert server.sent == []  # nothing before the accept
    outbox.open()
    await outbox.wait_sent()
    assert server.sent[0] == {"type": "websocket.accept"}
    assert server.texts()[1:] == ["hello from stream_opened"]
    assert outbox.put("later") and server.texts()[-1] == "later"  # eager from now on


async def test_a_close_before_the_accept_still_follows_it():
    server = PushbackServer()
    outbox = Outbox(server.send, 8, lambda: None, eager=True, gated=True)
    outbox.put("dropped")
    outbox.close(4401, discard_pending=True)
    outbox.open()
    await outbox.wait_sent()
    assert [m["type"] for m in server.sent] == ["websocket.accept", "websocket.close"]


async def test_cancelling_the_drain_abandons_the_suspended_send():
    ended = asyncio.Event()

    async def send(message):
        try:
            await asyncio.Event().wait()
        finally:
            ended.set()

    outbox = Outbox(send, 8, lambda: None, eager=True)
    outbox.put("a")
    outbox.put("b")
    task = outbox._task
    assert task is not None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ended.is_set()
    assert outbox.closed and len(outbox) == 0


async def test_detach_unregisters_from_the_twisted_consumer():
    transport = StringTransport()
    flow = SendFlow(transport)
    transport.registerProducer(flow, True)
    flow.detach()
    assert transport.producer is None
    flow.detach()  # idempotent


def test_no_flow_for_servers_whose_send_pushes_back_itself():
    async def send(message):
        pass

    assert attach_flow(send) is None
    assert attach_flow(PushbackServer().send) is None


async def test_an_unknown_send_runs_in_the_outboxs_own_task():
    """A send that is not a server's own (a middleware's wrapper) is never started eagerly."""
    caller, seen, overflows = asyncio.current_task(), [], []

    async def send(message):
        seen.append(asyncio.current_task())

    assert not plain_send(send)
    outbox = Outbox(send, 2, lambda: overflows.append(1))
    assert outbox.put("a") and outbox.put("b")
    assert not outbox.put("c") and overflows == [1]  # queued within one turn
    await outbox.wait_sent()
    assert len(seen) == 2 and caller not in seen


def closes(code: str) -> float:
    from streaming import metrics

    count = metrics._closes.get(code)
    return count.value if count is not None else 0


async def test_a_client_gone_before_its_accept_is_a_1006_close_not_a_warning(caplog):
    """Clients that vanish right after sending the upgrade request (a reconnect storm):
    the server's send of the accept raises (uvicorn: ClientDisconnected, an OSError).
    Seen (an operator's try, 50 such clients): 50 warnings with tracebacks saying
    "closing with 1011", nothing closed with 1011, and no close counted at all. Expected:
    one quiet line each, and the close counted as what it was, 1006 (the connection
    dropped)."""
    import logging

    async def gone(message):
        raise ConnectionResetError("the client is gone")

    before = closes("1006")
    outbox = Outbox(gone, 8, lambda: None, eager=True, gated=True)
    with caplog.at_level(logging.INFO, logger="streaming.outbox"):
        outbox.open()
    assert outbox.closed
    assert closes("1006") == before + 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert "the client is gone" in caplog.text


async def test_a_queued_close_is_not_counted_as_a_frame():
    """Seen (an operator's try): five sockets closed with 4013 for not reading showed
    ``streampod_send_queue_frames 5`` with 0 bytes queued: the close markers counted as
    frames. Expected: only data frames count."""
    server, outbox, _ = make()
    server.writable.clear()
    assert outbox.put("a")  # in flight, suspended
    assert outbox.put("b")
    assert len(outbox) == 1
    outbox.close(4013, discard_pending=True)
    assert len(outbox) == 0 and outbox.queued_bytes == 0
    server.writable.set()
    await outbox.wait_sent()
    assert server.texts() == ["a", "close 4013"]


async def test_a_sealed_outbox_sends_what_was_queued_and_nothing_put_after():
    """daphne's 1012 (shutdown.close_listeners, the graceful drain) waits for the queue,
    then sends the close frame itself: a frame put meanwhile must not go before it (an
    attacker's review: a backlogged listener got 100+ newer posts before its 1012, so
    the posts it had missed were skipped for good by a client reading "after the last
    one it got")."""
    server, outbox, _ = make()
    server.writable.clear()
    outbox.put("a")
    outbox.put("b")
    outbox.seal()
    assert outbox.closed
    assert not outbox.put("newer")
    server.writable.set()
    await outbox.wait_sent()
    assert server.texts() == ["a", "b"]
    outbox.close(1000)  # still possible after a seal (a socket still in its handshake)
    await outbox.wait_sent()
    assert server.texts() == ["a", "b", "close 1000"]


async def test_a_discarded_outbox_sends_no_close_even_after_a_seal():
    """daphne's 1012 seals, waits, discards, then sends the close frame itself: a close
    the consumer's teardown asks for afterwards must not send (or count) a second one."""
    server, outbox, _ = make()
    outbox.put("a")
    outbox.seal()
    await outbox.wait_sent()
    outbox.discard()
    before = closes("1000")
    outbox.close(1000)
    await outbox.wait_sent()
    assert server.texts() == ["a"]
    assert closes("1000") == before


async def test_a_queued_close_by_its_enum_code_is_not_counted_either():
    """The consumer closes with ``CloseCode`` members (an ``IntEnum``): seen, such a close
    queued behind a suspended send counted as one frame in ``streampod_send_queue_frames``
    (the check was ``type(item) is int``)."""
    server, outbox, _ = make()
    server.writable.clear()
    assert outbox.put("a")  # in flight, suspended
    outbox.close(CloseCode.SERVICE_RESTART)
    assert len(outbox) == 0
    server.writable.set()
    await outbox.wait_sent()
    assert server.sent[-1] == {"type": "websocket.close", "code": 1012}


async def test_a_close_reason_goes_out_with_its_code():
    server, outbox, _ = make()
    server.writable.clear()
    assert outbox.put("a")
    outbox.close(CloseCode.SERVICE_RESTART, reason="restart spread=0.5")
    server.writable.set()
    await outbox.wait_sent()
    close = {"type": "websocket.close", "code": 1012, "reason": "restart spread=0.5"}
    assert server.sent[-1] == close
    server, outbox, _ = make()
    outbox.close(1012, reason="restart spread=0.5")  # eager: nothing queued
    assert server.sent[-1]["reason"] == "restart spread=0.5"
