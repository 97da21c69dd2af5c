"""A connection's life: the handshake waits for the endpoints to open, closing ends
hooks that never return, and every kind of frame waiting in memory is bounded.

Through channels' WebsocketCommunicator (no server process); the same defects
against real servers are in tests/e2e/test_reachability.py and
tests/e2e/test_abuse_memory.py.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging

import pytest

from streaming import consumer as consumer_module
from streaming.endpoint import Endpoint
from streaming.serialization import SerializableEntity
from streaming.session import StreamingSession
from streaming.testing import StreamingCommunicator


class Note(SerializableEntity):
    class_name = "tests.lifecycle.Note"
    text: str


def live_sessions() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, StreamingSession))


# -- the handshake waits for stream_opened ---------------------------------------------


async def test_the_handshake_completes_only_once_stream_opened_returned():
    gate, entered = asyncio.Event(), asyncio.Event()

    class SlowOpenEndpoint(Endpoint):
        async def stream_opened(self, session):
            entered.set()
            await gate.wait()
            await self.send_stream_message(session, Note(text="hello"))

    comm = StreamingCommunicator(endpoints=[SlowOpenEndpoint])
    connecting = asyncio.ensure_future(comm.connect(timeout=5))
    await entered.wait()
    # The hook is running: the server has sent nothing, not even the accept.
    assert comm.output_queue.empty()
    assert not connecting.done()
    gate.set()
    connected, _ = await connecting
    assert connected
    assert await comm.receive_message("slow_open") == Note(text="hello")
    await comm.disconnect()


async def test_a_hook_looping_on_listen_counts_as_opened():
    class LoopingEndpoint(Endpoint):
        async def stream_opened(self, session):
            async for message in session.messages.listen("loop_channel"):
                await self.send_stream_message(session, message)

    async with StreamingCommunicator(endpoints=[LoopingEndpoint], timeout=2) as comm:
        # Accepted without waiting for OPEN_TIMEOUT, and listening already.
        from streaming.messages import post_message

        await post_message("loop_channel", Note(text="via listen"))
        assert await comm.receive_message("looping") == Note(text="via listen")


async def test_a_stuck_stream_opened_delays_the_handshake_by_open_timeout_only(settings, caplog):
    settings.STREAMING = {"OPEN_TIMEOUT": 0.2, "CLOSE_GRACE_PERIOD": 0.2}
    forever = asyncio.Event()

    class StuckEndpoint(Endpoint):
        async def stream_opened(self, session):
            await forever.wait()

    class FineEndpoint(Endpoint):
        async def stream_opened(self, session):
            await self.send_stream_message(session, Note(text="fine"))

    with caplog.at_level(logging.WARNING, logger="streaming.consumer"):
        async with StreamingCommunicator(endpoints=[StuckEndpoint, FineEndpoint]) as comm:
            # The endpoint after the stuck one opened anyway.
            assert await comm.receive_message("fine") == Note(text="fine")
    assert "StuckEndpoint has not returned" in caplog.text
    assert "cancelling" in caplog.text and "StuckEndpoint.stream_opened" in caplog.text


# -- closing ends hooks that never return ----------------------------------------------


class ListenForeverEndpoint(Endpoint):
    """What the guide warns against, and users write: stream_opened never returns."""

    closed = 0

    async def stream_opened(self, session):
        async for message in session.messages.listen(
            f"user_{session.auth.authenticated_user_id}"
        ):
            await self.send_stream_message(session, message)

    async def stream_closed(self, session):
        type(self).closed += 1


async def test_closing_sockets_ends_hooks_that_loop_on_listen():
    ListenForeverEndpoint.closed = 0
    before_tasks = len(asyncio.all_tasks())
    before_sessions = live_sessions()
    for _batch in range(10):
        comms = [StreamingCommunicator(endpoints=[ListenForeverEndpoint]) for _ in range(50)]
        for comm in comms:
            connected, _ = await comm.connect(timeout=3)
            assert connected
        await asyncio.gather(*(comm.disconnect(timeout=3) for comm in comms))
    # 500 sockets later: every hook returned, stream_closed ran for each, nothing is left.
    assert ListenForeverEndpoint.closed == 500
    assert len(asyncio.all_tasks()) == before_tasks
    assert live_sessions() == before_sessions


async def test_a_hook_that_ignores_closing_is_cancelled_after_the_grace_period(
    settings, caplog
):
    settings.STREAMING = {"CLOSE_GRACE_PERIOD": 0.1}
    entered, cancelled = asyncio.Event(), asyncio.Event()

    class StubbornEndpoint(Endpoint):
        async def handle_stream_message(self, session, message):
            entered.set()
            try:
                await asyncio.Event().wait()
            finally:
                cancelled.set()

    before_tasks = len(asyncio.all_tasks())
    with caplog.at_level(logging.WARNING, logger="streaming.consumer"):
        comm = StreamingCommunicator(endpoints=[StubbornEndpoint])
        await comm.connect()
        await comm.send_message("stubborn", Note(text="x"))
        await entered.wait()
        await comm.disconnect(timeout=3)
    assert cancelled.is_set()
    assert "StubbornEndpoint.handle_stream_message" in caplog.text
    assert len(asyncio.all_tasks()) == before_tasks


# -- bounded memory for what waits -----------------------------------------------------


class GatedLookup:
    """Holds ``auth`` lookups until released, so that frames pile up behind one."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.calls = 0

    async def __call__(self, key):
        self.calls += 1
        await self.gate.wait()
        return None


@pytest.fixture
def gated_lookup(monkeypatch):
    lookup = GatedLookup()
    monkeypatch.setattr(consumer_module, "user_for_key", lookup)
    return lookup


class CountingEndpoint(Endpoint):
    seen = 0

    async def handle_stream_message(self, session, message):
        type(self).seen += 1


def costly_frame(endpoint: str, lists: int) -> str:
    values = ",".join(["[]"] * lists)
    return (
        f'{{"endpoint":"{endpoint}","object":{{"className":"tests.lifecycle.Note",'
        f'"data":{{"text":"x","pad":[{values}]}}}}}}'
    )


async def test_frames_held_behind_an_auth_are_bounded_and_released(settings, gated_lookup):
    settings.STREAMING = {"MAX_PENDING_FRAMES": 5}
    CountingEndpoint.seen = 0
    async with StreamingCommunicator(endpoints=[CountingEndpoint]) as comm:
        await comm.send_command("auth", {"key": "Token pending"})
        for _ in range(7):
            await comm.send_message("counting", Note(text="x"), frame_id="f")
        # Two over the bound: refused at once, while the auth is still pending.
        for _ in range(2):
            assert (await comm.receive_error("rate_limited"))["id"] == "f"
        # One auth at a time: another is refused, not chained.
        await comm.send_command("auth", {"key": "Token another"})
        error = await comm.receive_error("rate_limited")
        assert "auth" in error["message"]
        assert gated_lookup.calls == 1
        gated_lookup.gate.set()
        assert await comm.receive_command("auth") == {"user_id": None}
        await comm.assert_nothing_received()
        assert CountingEndpoint.seen == 5  # the held frames, handled in the end


async def test_held_frames_are_bounded_in_bytes_too(settings, gated_lookup):
    settings.STREAMING = {"MAX_PENDING_BYTES": 2_000_000, "MAX_PENDING_FRAMES": 1000}
    async with StreamingCommunicator(endpoints=[CountingEndpoint]) as comm:
        await comm.send_command("auth", {"key": "Token pending"})
        frame = costly_frame("counting", 5_000)  # 15 KB on the wire, far more parsed
        for _ in range(10):
            await comm.send_to(text_data=frame)
        # Each frame counts ~1.9 MB parsed: one fits in 2 MB; the other 9 are refused
        # at once, and the answer to the auth is the next frame after them.
        for _ in range(9):
            await comm.receive_error("rate_limited")
        gated_lookup.gate.set()
        assert await comm.receive_command("auth") == {"user_id": None}


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (costly_frame("counting", 20_000), "more than 10000 JSON values"),
        ('{"endpoint":"counting","object":{"className":"tests.lifecycle.Note","data":{"text":"x","d":'
         + "[" * 40 + "]" * 40 + "}}}", "nested deeper than 32"),
    ],
)
async def test_a_frame_too_costly_once_parsed_is_refused(text, reason):
    CountingEndpoint.seen = 0
    async with StreamingCommunicator(endpoints=[CountingEndpoint]) as comm:
        await comm.send_to(text_data=text)
        error = await comm.receive_error("malformed_frame")
        assert reason in error["message"]
        await comm.ping()  # still open
        await comm.assert_nothing_received()
    assert CountingEndpoint.seen == 0


async def test_error_frames_repeat_at_most_a_short_prefix_of_client_values():
    name = "é" * 20_000
    async with StreamingCommunicator(endpoints=[CountingEndpoint]) as comm:
        await comm.send_to(
            text_data=json.dumps(
                {
                    "endpoint": name,
                    "object": {"className": "tests.lifecycle.Note", "data": {"text": "x"}},
                },
                ensure_ascii=False,
            )
        )
        text = await comm.receive_from()
        assert len(text.encode()) < 1024
        assert json.loads(text)["args"]["code"] == "unknown_endpoint"
        await comm.send_command("x" * 50_000)
        text = await comm.receive_from()
        assert len(text) < 1024 and "unknown_command" in text
        await comm.send_message("counting", Note(text="x"))  # fine after all that
        await comm.send_to(
            text_data=json.dumps(
                {"endpoint": "counting", "object": {"className": "N" * 30_000, "data": {}}}
            )
        )
        text = await comm.receive_from()
        assert len(text) < 1024 and "unknown_class" in text


async def test_a_message_too_large_to_send_gets_an_error_that_fits(settings):
    settings.STREAMING = {"MAX_SEND_BYTES": 4096}

    class BigEndpoint(Endpoint):
        async def handle_stream_message(self, session, message):
            sent = await self.send_stream_message(session, Note(text="é" * 2100))
            await self.send_stream_message(session, Note(text=f"sent={sent}"))

    async with StreamingCommunicator(endpoints=[BigEndpoint]) as comm:
        await comm.send_message("big", Note(text="go"))
        error = await comm.receive_error("message_too_large")
        assert error["endpoint"] == "big"
        assert await comm.receive_message("big") == Note(text="sent=False")
        await comm.assert_nothing_received()


async def test_an_answer_too_large_to_send_is_not_answered_again(settings, caplog):
    """The server's own limit (daphne's --websocket-max-message-size) may be below what the
    ``message_too_large`` answer takes. Seen: the answer, too large itself, was answered
    again, a thousand times, until a RecursionError: the client got nothing and the log a
    thousand warnings. Expected: one warning, one error naming the limit to raise, and the
    socket goes on (it answers a ping)."""
    settings.STREAMING = {"MAX_SEND_BYTES": 4096}

    class BigEndpoint(Endpoint):
        async def handle_stream_message(self, session, message):
            await self.send_stream_message(session, Note(text="x" * 200))

    async with StreamingCommunicator(endpoints=[BigEndpoint]) as comm:
        from streaming.connections import get_connections

        (consumer,) = get_connections().live()
        consumer._max_send = 100  # as daphne's own limit would set it
        with caplog.at_level(logging.WARNING, logger="streaming.consumer"):
            await comm.send_message("big", Note(text="go"))
            await comm.ping()
        assert caplog.text.count("not sending") == 1, caplog.text[:500]
        assert "--websocket-max-message-size" in caplog.text


# -- streaming.testing -----------------------------------------------------------------


async def test_assert_nothing_received_waits_for_work_queued_for_an_endpoint():
    class LateEndpoint(Endpoint):
        async def handle_stream_message(self, session, message):
            for _ in range(5):
                await asyncio.sleep(0)  # still working when the ping arrives
            await self.send_stream_message(session, message)

    async with StreamingCommunicator(endpoints=[LateEndpoint]) as comm:
        await comm.send_message("late", Note(text="due"))
        with pytest.raises(AssertionError, match="unexpected frame"):
            await comm.assert_nothing_received()
