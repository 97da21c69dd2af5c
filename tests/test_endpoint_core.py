"""The streaming core through channels' WebsocketCommunicator (no server process)."""

import asyncio
import gc
import weakref
from datetime import UTC

import pytest
from django.contrib.auth.models import AnonymousUser

from streaming.endpoint import Endpoint
from streaming.serialization import SerializableEntity
from streaming.testing import StreamingCommunicator


class Note(SerializableEntity):
    text: str
    n: int = 0


class EchoEndpoint(Endpoint):
    async def handle_stream_message(self, session, message):
        await self.send_stream_message(session, message)


class _User:
    """A signed-in user stand-in: the consumer only reads pk and is_authenticated."""

    is_authenticated = True
    is_active = True

    def __init__(self, pk):
        self.pk = pk


async def test_echo_round_trip_in_order():
    async with StreamingCommunicator(endpoints=[EchoEndpoint]) as comm:
        for i in range(20):
            await comm.send_message("echo", Note(text="hi", n=i))
        for i in range(20):
            assert await comm.receive_message("echo") == Note(text="hi", n=i)
        await comm.assert_nothing_received()


async def test_name_derivation():
    class ChatRoomEndpoint(Endpoint):
        pass

    class Named(Endpoint):
        name = "custom"

    assert ChatRoomEndpoint.name == "chat_room"
    assert Named.name == "custom"
    with pytest.raises(TypeError):

        class Bad(Endpoint):
            name = "not-an-identifier"


async def test_hooks_order_and_user_object():
    events = []

    class First(Endpoint):
        name = "first"

        async def stream_opened(self, session):
            events.append(("open", "first", session.endpoint))
            self.set_user_object(session, {"count": 0})

        async def handle_stream_message(self, session, message):
            state = self.get_user_object(session)
            state["count"] += 1
            await self.send_stream_message(session, Note(text="count", n=state["count"]))

        async def stream_closed(self, session):
            events.append(("close", "first", self.get_user_object(session)["count"]))

    class Second(Endpoint):
        name = "second"

        async def stream_opened(self, session):
            events.append(("open", "second", session.endpoint))

    comm = StreamingCommunicator(endpoints=[First, Second])
    await comm.connect()
    await comm.send_message("first", Note(text="a"))
    await comm.send_message("first", Note(text="b"))
    assert (await comm.receive_message("first")).n == 1
    assert (await comm.receive_message("first")).n == 2
    await comm.disconnect()
    assert events == [
        ("open", "first", "first"),
        ("open", "second", "second"),
        ("close", "first", 2),
    ]


async def test_instances_are_per_connection():
    class Counter(Endpoint):
        count = 0

        async def handle_stream_message(self, session, message):
            self.count += 1
            await self.send_stream_message(session, Note(text="n", n=self.count))

    async with StreamingCommunicator(endpoints=[Counter]) as a, StreamingCommunicator(
        endpoints=[Counter]
    ) as b:
        await a.send_message("counter", Note(text="x"))
        await a.send_message("counter", Note(text="x"))
        await b.send_message("counter", Note(text="x"))
        assert [(await a.receive_message()).n for _ in range(2)] == [1, 2]
        assert (await b.receive_message()).n == 1


async def test_ping_does_not_wait_on_a_slow_hook():
    gate = asyncio.Event()

    class Slow(Endpoint):
        async def handle_stream_message(self, session, message):
            await gate.wait()
            await self.send_stream_message(session, message)

    async with StreamingCommunicator(endpoints=[Slow]) as comm:
        await comm.send_message("slow", Note(text="held"))
        await comm.ping()  # answered while the hook is blocked
        gate.set()
        assert (await comm.receive_message("slow")).text == "held"


async def test_endpoints_run_concurrently():
    gate = asyncio.Event()

    class Blocked(Endpoint):
        async def handle_stream_message(self, session, message):
            await gate.wait()

    async with StreamingCommunicator(endpoints=[Blocked, EchoEndpoint]) as comm:
        await comm.send_message("blocked", Note(text="x"))
        await comm.send_message("echo", Note(text="through"))
        assert (await comm.receive_message("echo")).text == "through"
        gate.set()


async def test_user_objects_and_sessions_leave_no_reference():
    sessions = []
    objects = []

    class Obj:
        pass

    class Keeper(Endpoint):
        async def stream_opened(self, session):
            obj = Obj()
            self.set_user_object(session, obj)
            session.messages.add_listener("room", lambda m: self.send_stream_message(session, m))
            sessions.append(weakref.ref(session))
            objects.append(weakref.ref(obj))

    for _ in range(30):
        comm = StreamingCommunicator(endpoints=[Keeper])
        await comm.connect()
        await comm.sync("keeper")
        await comm.disconnect()
    gc.collect()
    assert len(sessions) == 30
    assert all(ref() is None for ref in sessions)
    assert all(ref() is None for ref in objects)
    from streaming.messages import get_bus

    assert get_bus().listener_count("room") == 0


async def test_login_required_refuses_anonymous():
    opened = []

    class Private(Endpoint):
        login_required = True

        async def stream_opened(self, session):
            opened.append(session.auth.authenticated_user_id)

    async with StreamingCommunicator(endpoints=[Private], user=AnonymousUser()) as comm:
        await comm.send_message("private", Note(text="x"), frame_id="f1")
        err = await comm.receive_error("not_authenticated")
        assert err["endpoint"] == "private" and err["id"] == "f1"
    assert opened == []

    async with StreamingCommunicator(endpoints=[Private], user=_User(7)) as comm:
        assert await comm.sync("private") == "unknown_class"
    assert opened == [7]


async def test_has_permission_false_gives_forbidden():
    class Gated(Endpoint):
        async def has_permission(self, session):
            return False

        async def stream_opened(self, session):
            raise AssertionError("must not open")

    async with StreamingCommunicator(endpoints=[Gated]) as comm:
        await comm.send_message("gated", Note(text="x"))
        await comm.receive_error("forbidden")


async def test_failing_hooks_are_contained(caplog):
    closed = []

    class BrokenOpen(Endpoint):
        async def stream_opened(self, session):
            raise RuntimeError("boom in open")

        async def stream_closed(self, session):
            closed.append("broken")

    class BrokenHandler(Endpoint):
        async def handle_stream_message(self, session, message):
            raise RuntimeError("secret internals")

        async def stream_closed(self, session):
            closed.append("handler")

    async with StreamingCommunicator(endpoints=[BrokenOpen, BrokenHandler, EchoEndpoint]) as comm:
        await comm.send_message("broken_open", Note(text="x"))
        err = await comm.receive_error("internal_error")
        assert err["endpoint"] == "broken_open"
        await comm.send_message("broken_handler", Note(text="x"))
        err = await comm.receive_error("internal_error")
        assert "secret" not in err["message"]
        await comm.send_message("echo", Note(text="still alive"))
        assert (await comm.receive_message("echo")).text == "still alive"
    assert closed == ["handler"]
    assert "boom in open" in caplog.text and "secret internals" in caplog.text


@pytest.mark.parametrize(
    "frame",
    [
        "not json",
        "[1, 2]",
        '"a string"',
        "{}",
        '{"endpoint": 5, "object": {"className": "Note", "data": {}}}',
        '{"endpoint": "echo", "object": []}',
        '{"endpoint": "echo", "object": {"className": "Note"}}',
        '{"command": 1}',
        '{"command": "ping", "args": []}',
        "[" * 60000,
        '{"endpoint": "echo", "id": 5, "object": {"className": "Note", "data": {}}}',
    ],
)
async def test_malformed_frames(frame):
    async with StreamingCommunicator(endpoints=[EchoEndpoint]) as comm:
        await comm.send_to(text_data=frame)
        await comm.receive_error("malformed_frame")
        await comm.send_message("echo", Note(text="ok"))
        assert (await comm.receive_message("echo")).text == "ok"


async def test_binary_and_empty_frames_are_malformed():
    async with StreamingCommunicator(endpoints=[EchoEndpoint]) as comm:
        await comm.send_to(bytes_data=b"\x00\x01")
        await comm.receive_error("malformed_frame")
        await comm.send_input({"type": "websocket.receive", "text": ""})
        await comm.receive_error("malformed_frame")
        await comm.ping()


async def test_unknown_command_endpoint_class_and_invalid_fields():
    async with StreamingCommunicator(endpoints=[EchoEndpoint]) as comm:
        await comm.send_command("dance")
        await comm.receive_error("unknown_command")
        await comm.send_to(
            text_data='{"endpoint": "nope", "id": "q", "object": {"className": "Note", "data": {}}}'
        )
        err = await comm.receive_error("unknown_endpoint")
        assert err["endpoint"] == "nope" and err["id"] == "q"
        await comm.send_to(
            text_data='{"endpoint": "echo", "object": {"className": "Nope", "data": {}}}'
        )
        await comm.receive_error("unknown_class")
        await comm.send_to(
            text_data='{"endpoint": "echo", "object": {"className": "Note",'
            ' "data": {"text": 5, "n": "5", "extra": 1}}}'
        )
        err = await comm.receive_error("invalid_message")
        paths = {e["path"] for e in err["errors"]}
        assert paths == {"text", "n"}  # an unknown field is ignored, not refused
        await comm.assert_nothing_received()


async def test_unknown_top_level_keys_are_ignored():
    async with StreamingCommunicator(endpoints=[EchoEndpoint]) as comm:
        await comm.send_to(
            text_data='{"endpoint": "echo", "v": 2, "object": {"className": "Note",'
            ' "data": {"text": "x"}}}'
        )
        assert (await comm.receive_message("echo")).text == "x"


async def test_oversize_frame_gets_error_then_4009(settings):
    settings.STREAMING = {"MAX_MESSAGE_BYTES": 1000}
    async with StreamingCommunicator(endpoints=[EchoEndpoint]) as comm:
        await comm.send_message("echo", Note(text="é" * 400))  # 800 bytes: fits
        assert len((await comm.receive_message("echo")).text) == 400
        await comm.send_message("echo", Note(text="é" * 600))  # 1200 bytes
        await comm.receive_error("malformed_frame")
        assert await comm.receive_close() == 4009


async def test_full_lane_answers_rate_limited(settings):
    settings.STREAMING = {"MAX_PENDING_FRAMES": 2}
    gate = asyncio.Event()
    entered = asyncio.Event()

    class Slow(Endpoint):
        async def handle_stream_message(self, session, message):
            entered.set()
            await gate.wait()
            await self.send_stream_message(session, message)

    async with StreamingCommunicator(endpoints=[Slow]) as comm:
        await comm.send_message("slow", Note(text="x", n=0), frame_id="0")
        await entered.wait()  # the first one is in the hook
        for i in range(1, 4):  # two wait in the lane, the fourth is refused
            await comm.send_message("slow", Note(text="x", n=i), frame_id=str(i))
        err = await comm.receive_error("rate_limited")
        assert err["id"] == "3"
        gate.set()
        assert [(await comm.receive_message()).n for _ in range(3)] == [0, 1, 2]


async def test_flooding_closes_with_4008(settings):
    settings.STREAMING = {"RATE_LIMIT_PER_SECOND": 1, "RATE_LIMIT_BURST": 1, "FLOOD_CLOSE_AFTER": 5}
    async with StreamingCommunicator(endpoints=[EchoEndpoint]) as comm:
        for _ in range(10):
            await comm.send_command("ping")
        await comm.receive_command("pong")
        for _ in range(5):
            await comm.receive_error("rate_limited")
        assert await comm.receive_close() == 4008


async def test_full_send_queue_closes_with_4013(settings):
    settings.STREAMING = {"SEND_QUEUE_LIMIT": 5}

    class Burst(Endpoint):
        async def handle_stream_message(self, session, message):
            results = [await self.send_stream_message(session, message) for _ in range(50)]
            assert results.count(False) > 0

    # The communicator's send is not a server's own, so the outbox sends from its own
    # task: 50 frames queued in one turn overflow a queue of 5.
    async with StreamingCommunicator(endpoints=[Burst]) as comm:
        await comm.send_message("burst", Note(text="x"))
        # whatever was sent before the overflow, then the close: never 50 frames
        received = 0
        while True:
            output = await comm.receive_output(3)
            if output["type"] == "websocket.close":
                assert output["code"] == 4013
                break
            received += 1
        assert received < 50


async def test_serializable_datetimes_round_trip_in_utc():
    from datetime import datetime, timedelta, timezone

    class Stamp(SerializableEntity):
        at: datetime

    async with StreamingCommunicator(endpoints=[EchoEndpoint]) as comm:
        await comm.send_to(
            text_data='{"endpoint": "echo", "object": {"className": "Stamp",'
            ' "data": {"at": "2026-01-01T12:00:00+02:00"}}}'
        )
        text = await comm.receive_from()
        assert '"at":"2026-01-01T10:00:00Z"' in text
        await comm.send_to(
            text_data='{"endpoint": "echo", "object": {"className": "Stamp",'
            ' "data": {"at": "2026-01-01T12:00:00"}}}'
        )
        err = await comm.receive_error("invalid_message")
        assert err["errors"][0]["path"] == "at"
    assert Stamp(at=datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=1)))).at.tzinfo == UTC


async def test_unknown_commands_count_towards_flooding(settings):
    settings.STREAMING = {"FLOOD_CLOSE_AFTER": 5}
    async with StreamingCommunicator(endpoints=[EchoEndpoint]) as comm:
        for _ in range(5):
            await comm.send_command("dance")
        for _ in range(5):
            await comm.receive_error("unknown_command")
        assert await comm.receive_close() == 4008


async def test_rate_limited_frames_echo_their_id(settings):
    settings.STREAMING = {"RATE_LIMIT_PER_SECOND": 0.001, "RATE_LIMIT_BURST": 1}
    async with StreamingCommunicator(endpoints=[EchoEndpoint]) as comm:
        await comm.send_message("echo", Note(text="a"), frame_id="first")
        await comm.send_message("echo", Note(text="b"), frame_id="second")
        # the refusal is immediate; the accepted frame is answered from its lane
        frames = [await comm.receive_frame(), await comm.receive_frame()]
        errors = [f.args for f in frames if getattr(f, "command", None) == "error"]
        assert [(e["code"], e["id"]) for e in errors] == [("rate_limited", "second")]


async def test_sent_and_received_messages_compare_equal():
    async with StreamingCommunicator(endpoints=[EchoEndpoint]) as comm:
        sent = Note(text="same", n=3)
        await comm.send_message("echo", sent)  # encodes (and caches) `sent`
        assert await comm.receive_message("echo") == sent
