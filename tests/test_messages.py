"""The message bus on the in-memory layer: one process (unit level)."""

import asyncio
import gc
import weakref

import pytest

from streaming import messages
from streaming.endpoint import Endpoint
from streaming.exceptions import InvalidChannelName, MessagingNotGlobal
from streaming.messages import get_bus, group_name, post_message
from streaming.serialization import SerializableEntity
from streaming.testing import StreamingCommunicator


class Chat(SerializableEntity):
    recipient_id: int
    text: str


class Owner:
    pass


@pytest.fixture
async def bus():
    messages.reset_bus()
    yield get_bus()
    messages.reset_bus()


async def test_post_reaches_every_listener_once_in_order(bus):
    got_a, got_b = [], []
    owner = Owner()

    async def async_listener(m):
        got_b.append(m.text)

    bus.add_listener("user_1", got_a.append, owner=owner)
    bus.add_listener("user_1", got_a.append, owner=owner)  # same listener twice: once
    await bus.add_listener("user_1", async_listener, owner=owner)
    for i in range(5):
        assert await post_message("user_1", Chat(recipient_id=1, text=str(i))) is True
    assert [m.text for m in got_a] == ["0", "1", "2", "3", "4"]  # sync: called at once
    await bus.drain()  # async listeners run in their own lane, in order
    assert got_b == ["0", "1", "2", "3", "4"]


async def test_other_channels_do_not_receive(bus):
    got = []
    bus.add_listener("user_1", got.append, owner=Owner())
    await post_message("user_2", Chat(recipient_id=2, text="x"))
    assert got == []


async def test_a_raising_listener_does_not_stop_the_others(bus, caplog):
    got = []
    owner = Owner()

    def bad(m):
        raise ValueError("listener failure")

    bus.add_listener("c", bad, owner=owner)
    bus.add_listener("c", got.append, owner=owner)
    await post_message("c", Chat(recipient_id=1, text="x"))
    assert len(got) == 1
    assert "listener failure" in caplog.text


async def test_global_flags_on_an_in_process_layer(bus):
    got = []
    bus.add_listener("c", got.append, owner=Owner())
    await post_message("c", Chat(recipient_id=1, text="local"), global_=False)
    with pytest.raises(MessagingNotGlobal):
        await post_message("c", Chat(recipient_id=1, text="x"), global_=True)
    assert [m.text for m in got] == ["local"]


@pytest.mark.parametrize("bad", ["", "x" * 201, None, 5])
async def test_bad_channel_names_are_refused(bus, bad):
    with pytest.raises(InvalidChannelName):
        bus.add_listener(bad, print, owner=Owner())
    with pytest.raises(InvalidChannelName):
        await post_message(bad, Chat(recipient_id=1, text="x"))


async def test_posting_a_non_entity_is_a_type_error(bus):
    with pytest.raises(TypeError):
        await post_message("c", {"text": "x"})


def test_group_names():
    assert group_name("user_42") == "user_42"
    assert group_name("room-1") == "room-1"
    mapped = group_name("room:lobby")
    assert mapped.startswith("streaming.") and len(mapped) < 100
    assert group_name("room:lobby") == mapped != group_name("room:lobby2")
    assert group_name("ünïcode channel") != group_name("unicode channel")
    assert group_name("x" * 150).startswith("streaming.")


async def test_remove_listener_and_owner(bus):
    got = []
    owner = Owner()
    bus.add_listener("c", got.append, owner=owner)
    bus.remove_listener("c", got.append, owner=owner)
    await post_message("c", Chat(recipient_id=1, text="x"))
    assert got == [] and bus.listener_count("c") == 0
    bus.add_listener("c", got.append, owner=owner)
    bus.add_listener("d", got.append, owner=owner)
    bus.remove_owner(owner)
    assert bus.channels() == []


async def test_message_is_encoded_once_per_post(bus, monkeypatch):
    from streaming import serialization

    calls = []
    original = Chat.model_dump_json

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Chat, "model_dump_json", counting)

    class Listener(Endpoint):
        async def stream_opened(self, session):
            session.messages.add_listener("room", lambda m: self.send_stream_message(session, m))

    comms = [StreamingCommunicator(endpoints=[Listener]) for _ in range(10)]
    for comm in comms:
        await comm.connect()
        assert await comm.sync("listener") == "unknown_class"  # stream_opened has run
    assert bus.listener_count("room") == 10
    await post_message("room", Chat(recipient_id=1, text="hello"))
    for comm in comms:
        assert (await comm.receive_message("listener")).text == "hello"
        await comm.disconnect()
    assert len(calls) == 1
    assert serialization  # imported for the monkeypatch target's module


async def test_the_docs_example_user_to_user(bus):
    class ChatEndpoint(Endpoint):
        login_required = True

        async def stream_opened(self, session):
            session.messages.add_listener(
                f"user_{session.auth.authenticated_user_id}",
                lambda message: self.send_stream_message(session, message),
            )

        async def handle_stream_message(self, session, message):
            if isinstance(message, Chat):
                await session.messages.post_message(f"user_{message.recipient_id}", message)

    class U:
        is_authenticated = True

        def __init__(self, pk):
            self.pk = pk

    async with (
        StreamingCommunicator(endpoints=[ChatEndpoint], user=U(1)) as alice,
        StreamingCommunicator(endpoints=[ChatEndpoint], user=U(2)) as bob,
    ):
        await alice.sync("chat")
        await bob.sync("chat")
        await alice.send_message("chat", Chat(recipient_id=2, text="hi bob"))
        assert (await bob.receive_message("chat")).text == "hi bob"
        await alice.assert_nothing_received()


async def test_listen_iterates_and_ends_when_the_session_closes(bus):
    seen = []
    ended = asyncio.Event()

    class Listening(Endpoint):
        async def stream_opened(self, session):
            stream = session.messages.listen("news")

            async def consume():
                async for message in stream:
                    seen.append(message.text)
                ended.set()

            asyncio.get_running_loop().create_task(consume())

    comm = StreamingCommunicator(endpoints=[Listening])
    await comm.connect()
    await comm.sync("listening")
    await post_message("news", Chat(recipient_id=0, text="one"))
    await post_message("news", Chat(recipient_id=0, text="two"))
    await comm.disconnect()
    await asyncio.wait_for(ended.wait(), 3)
    assert seen == ["one", "two"]
    assert bus.listener_count("news") == 0


async def test_listeners_die_with_their_session(bus):
    refs = []

    class Holder(Endpoint):
        async def stream_opened(self, session):
            refs.append(weakref.ref(session))
            session.messages.add_listener("user_5", lambda m: self.send_stream_message(session, m))
            session.messages.add_listener("room:a", lambda m: None)

    for _ in range(5):
        comm = StreamingCommunicator(endpoints=[Holder])
        await comm.connect()
        await comm.sync("holder")
        await comm.disconnect()
    gc.collect()
    assert len(refs) == 5
    assert bus.channels() == []
    assert all(ref() is None for ref in refs)


class Join(SerializableEntity):
    room: str


async def test_the_listeners_of_one_socket_are_bounded(bus, settings):
    """An endpoint that listens to whatever channel its client names (a room to join):
    an attacker's review had one anonymous socket join 5,000 channels (5,000 Redis
    subscriptions, 10 MB of server memory), without end. Expected: past
    MAX_LISTENERS_PER_SOCKET, counted across the socket's sessions (its endpoints' and its
    calls'), add_listener and listen raise RateLimited, which the client gets as
    ``rate_limited``; the listeners go with the socket, and a new socket starts afresh."""
    settings.STREAMING = {"MAX_LISTENERS_PER_SOCKET": 3}

    class Rooms(Endpoint):
        async def handle_stream_message(self, session, message):
            if message.room.startswith("listen:"):
                session.messages.listen(message.room)
            else:
                session.messages.add_listener(message.room, lambda message: None)
            await self.send_stream_message(session, message)

    class Other(Endpoint):
        async def stream_opened(self, session):
            session.messages.add_listener("other", lambda message: None)

    async with StreamingCommunicator(endpoints=[Rooms, Other]) as comm:
        await comm.sync("rooms")
        for room in ("a", "listen:b"):  # with Other's, 3
            await comm.send_message("rooms", Join(room=room))
            assert (await comm.receive_message("rooms")).room == room
        for room in ("c", "listen:d"):
            await comm.send_message("rooms", Join(room=room))
            error = await comm.receive_error("rate_limited")
            assert "MAX_LISTENERS_PER_SOCKET" in error["message"]
        assert bus.listener_count("c") == bus.listener_count("listen:d") == 0
    assert bus.channels() == []
    async with StreamingCommunicator(endpoints=[Rooms]) as comm:
        await comm.send_message("rooms", Join(room="c"))
        assert (await comm.receive_message("rooms")).room == "c"


def test_failed_joins_and_leaves_are_logged_a_line_an_interval(monkeypatch, caplog):
    """Helper "attacker13": with 50,000 channels every join or leave that failed logged a
    line per channel per retry (974,000 lines, 132 MB in 12 minutes). One line at once,
    then one an interval saying how many failed meanwhile."""
    import logging

    from streaming import messages

    now = [1000.0]
    monkeypatch.setattr(messages.time, "monotonic", lambda: now[0])
    log = messages._FailureLog()
    with caplog.at_level(logging.WARNING, logger="streaming.messages"):
        for n in range(50_000):
            log.note(f"typing_{n}", "leave", TimeoutError(), 0.05)
        now[0] += messages.FAILURE_LOG_INTERVAL
        log.note("typing_0", "leave", TimeoutError(), 0.1)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "channel 'typing_0': group leave failed" in lines[0]
    assert "(49999 more failed since the last such line)" in lines[1]
