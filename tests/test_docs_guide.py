"""docs/guide.md runs as written, and does what its text says.

Convention (also stated in the guide): every fenced ```python block of docs/guide.md is
preceded by one of

* ``<!-- test: NAME -->``: executed by this file (``guide.load("NAME")``) and checked by a
  test below; every NAME must be in :data:`TESTED`, and every name there in the guide;
* ``<!-- untested: REASON -->``: only compiled, so at least its syntax is right.

A block whose first line is ``# <path>.py`` (``# myapp/endpoints.py``) is executed as that
module (``myapp.endpoints``) in ``sys.modules``, so a later snippet can import it as the
guide shows. Code is compiled with the guide's file name and line numbers: a traceback
points at the line of docs/guide.md that failed.

Endpoint snippets are driven through ``streaming.testing.StreamingCommunicator``; messaging
snippets run on the in-memory channel layer; the client snippet talks to a real daphne
process that serves the guide's own ``myapp``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import re
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

from streaming import messages
from streaming.exceptions import InvalidMessage, MessagingNotGlobal
from streaming.serialization import decode_object, decode_object_json, encode_object
from streaming.testing import StreamingCommunicator

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "guide.md"

#: The snippet names this file runs; must equal the ``<!-- test: NAME -->`` marks of the guide.
TESTED = {
    "protocol",
    "endpoint",
    "user_object",
    "chat",
    "notify",
    "global",
    "inbox",
    "rooms",
    "testing",
    "client",
    "unawaited",
    "scopes",
    "methods",
}

_FENCE = re.compile(r"^```python\n(?P<code>.*?)^```[ \t]*$", re.M | re.S)
_MARK = re.compile(r"^<!--\s*(?P<kind>test|untested):\s*(?P<name>.*?)\s*-->$")
_HEADER = re.compile(r"^# (?P<path>[A-Za-z_][\w/]*)\.py\b")


@dataclass(frozen=True)
class Snippet:
    kind: str | None  # "test", "untested", or None when unmarked
    name: str  # the snippet's name, or the reason it is not tested
    code: str
    line: int  # line of docs/guide.md where the code starts
    module: str | None  # "myapp.endpoints" for a "# myapp/endpoints.py" header

    def compile(self) -> types.CodeType:
        # Padding keeps the guide's line numbers in tracebacks.
        return compile("\n" * (self.line - 1) + self.code, str(GUIDE), "exec")


def parse_guide(text: str) -> list[Snippet]:
    snippets = []
    for match in _FENCE.finditer(text):
        before = text[: match.start()].rstrip().rsplit("\n", 1)[-1].strip()
        mark = _MARK.match(before)
        code = match.group("code")
        header = _HEADER.match(code)
        snippets.append(
            Snippet(
                kind=mark.group("kind") if mark else None,
                name=mark.group("name") if mark else "",
                code=code,
                line=text.count("\n", 0, match.start("code")) + 1,
                module=header.group("path").replace("/", ".") if header else None,
            )
        )
    return snippets


SNIPPETS = parse_guide(GUIDE.read_text(encoding="utf-8"))


class Guide:
    """Loads the guide's snippets as modules; forgets them afterwards."""

    def __init__(self) -> None:
        self.added: list[str] = []

    def snippet(self, name: str) -> Snippet:
        found = [s for s in SNIPPETS if s.kind == "test" and s.name == name]
        assert len(found) == 1, f"docs/guide.md has {len(found)} snippets marked 'test: {name}'"
        return found[0]

    def load(self, name: str) -> types.ModuleType:
        snippet = self.snippet(name)
        module_name = snippet.module or f"guide_snippet_{name}"
        parts = module_name.split(".")
        for depth in range(1, len(parts)):
            package_name = ".".join(parts[:depth])
            if package_name not in sys.modules:
                package = types.ModuleType(package_name)
                package.__path__ = []
                self._add(package_name, package)
        module = types.ModuleType(module_name)
        module.__file__ = str(GUIDE)
        self._add(module_name, module)
        exec(snippet.compile(), module.__dict__)
        return module

    def _add(self, name: str, module: types.ModuleType) -> None:
        sys.modules[name] = module
        if name not in self.added:
            self.added.append(name)
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)

    def forget(self) -> None:
        for name in reversed(self.added):
            sys.modules.pop(name, None)


@pytest.fixture
def guide():
    """Loads snippets; the guide's ``myapp`` stands alone, as it would in a real project.

    Other test apps imported into this process register message classes too
    (``tests.e2e_app`` has its own ``MyChatMessage``): while a guide test runs, only
    Streampod's own classes and the guide's are registered. The conftest's autouse
    ``isolated_registry`` restores the registry afterwards.
    """
    from streaming import serialization

    serialization._registry = {
        name: cls
        for name, cls in serialization._registry.items()
        if cls.__module__.startswith("streaming.")
    }
    loader = Guide()
    yield loader
    loader.forget()


@pytest.fixture
async def bus(settings):
    """The guide's messaging snippets run on the in-memory layer: one process."""
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    messages.reset_bus()
    yield messages.get_bus()
    messages.reset_bus()


def user(pk: int, username: str):
    """A signed-in Django user (unsaved: these tests need no database)."""
    from django.contrib.auth import get_user_model

    return get_user_model()(pk=pk, username=username)


def hello(protocol):
    # A new object for each comparison: an encoded message does not compare equal to a
    # decoded one (streaming.serialization's cache is part of pydantic's equality).
    return protocol.MyChatMessage(recipient_id=2, text="Hello")


def live(cls: type) -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, cls))


# -- the guide itself --------------------------------------------------------------------------


def test_every_python_block_is_marked_and_every_marked_block_is_tested():
    assert SNIPPETS, "no ```python blocks found in docs/guide.md"
    unmarked = [s.line for s in SNIPPETS if s.kind is None]
    assert not unmarked, f"python blocks of docs/guide.md without a test mark, at lines {unmarked}"
    names = [s.name for s in SNIPPETS if s.kind == "test"]
    assert len(names) == len(set(names)), f"duplicate test marks: {names}"
    assert set(names) == TESTED
    for snippet in SNIPPETS:
        snippet.compile()  # untested ones too: at least valid Python


def test_readme_python_blocks_compile():
    readme = ROOT / "README.md"
    blocks = [m.group("code") for m in _FENCE.finditer(readme.read_text(encoding="utf-8"))]
    assert blocks
    for code in blocks:
        compile(code, str(readme), "exec")


# -- Messages ------------------------------------------------------------------------------------


def test_protocol_snippet_validates_strictly_and_imports_no_django(guide):
    protocol = guide.load("protocol")
    wire = encode_object(protocol.MyChatMessage(recipient_id=2, text="Hi"))
    assert json.loads(wire) == {
        "className": "MyChatMessage",
        "data": {"recipient_id": 2, "text": "Hi"},
    }
    assert decode_object_json(wire) == protocol.MyChatMessage(recipient_id=2, text="Hi")

    with pytest.raises(InvalidMessage) as info:
        decode_object("MyChatMessage", {"recipient_id": "2", "text": "Hi", "sender": 1})
    # Unknown fields ("sender") are ignored; the known ones stay strict.
    assert {error["path"] for error in info.value.errors} == {"recipient_id"}
    with pytest.raises(InvalidMessage) as info:
        decode_object("JoinRoom", {"room": ""})
    assert [error["path"] for error in info.value.errors] == ["room"]

    # "imports no Django": run it where Django and channels cannot be imported.
    blocker = "import sys\nsys.modules['django'] = None\nsys.modules['channels'] = None\n"
    result = subprocess.run(
        [sys.executable, "-c", blocker + guide.snippet("protocol").code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


# -- Handling streams server-side ----------------------------------------------------------------


async def test_endpoint_snippet_echoes_and_runs_its_hooks(guide, caplog):
    caplog.set_level(logging.INFO, logger="myapp.endpoints")
    protocol = guide.load("protocol")
    endpoints = guide.load("endpoint")
    assert endpoints.MyEndpoint.name == "my"
    async with StreamingCommunicator(endpoints=[endpoints.MyEndpoint]) as comm:
        await comm.send_message("my", hello(protocol))
        assert await comm.receive_message("my") == hello(protocol)
        await comm.assert_nothing_received()
    logged = [r.getMessage() for r in caplog.records if r.name == "myapp.endpoints"]
    assert logged == ["stream opened: my", "stream closed: my"]


async def test_testing_snippet_passes(guide):
    guide.load("protocol")
    guide.load("endpoint")
    tests = guide.load("testing")
    await tests.test_my_endpoint_echoes()


# -- The user object -----------------------------------------------------------------------------


async def test_user_object_snippet_keeps_state_per_connection_and_then_drops_it(guide, caplog):
    caplog.set_level(logging.INFO, logger="myapp.endpoints")
    protocol = guide.load("protocol")
    endpoints = guide.load("user_object")
    async with (
        StreamingCommunicator(endpoints=[endpoints.MyEndpoint]) as a,
        StreamingCommunicator(endpoints=[endpoints.MyEndpoint]) as b,
    ):
        for _ in range(3):
            await a.send_message("my", hello(protocol))
            assert await a.receive_message("my") == hello(protocol)
        await b.send_message("my", hello(protocol))
        assert await b.receive_message("my") == hello(protocol)
        assert live(endpoints.MyUserObject) == 2
    logged = sorted(r.getMessage() for r in caplog.records if r.name == "myapp.endpoints")
    assert logged == ["my closed after 1 messages", "my closed after 3 messages"]
    assert live(endpoints.MyUserObject) == 0  # discarded, no reference left


# -- Internal server messaging -------------------------------------------------------------------


async def note_to_self(comm, endpoint, protocol, user_id):
    """Send a message to oneself and get it back: proves the user's listener is in place."""
    await comm.send_message(endpoint, protocol.MyChatMessage(recipient_id=user_id, text="note"))
    assert await comm.receive_message(endpoint) == protocol.MyChatMessage(
        recipient_id=user_id, text="note"
    )


async def test_chat_snippet_forwards_to_the_recipient_only(guide, bus):
    protocol = guide.load("protocol")
    endpoints = guide.load("chat")
    chat = [endpoints.ChatEndpoint]
    Message = protocol.MyChatMessage
    async with (
        StreamingCommunicator(endpoints=chat, user=user(1, "alice")) as alice,
        StreamingCommunicator(endpoints=chat, user=user(2, "bob")) as bob,
        StreamingCommunicator(endpoints=chat) as anonymous,
    ):
        await note_to_self(alice, "chat", protocol, 1)
        await note_to_self(bob, "chat", protocol, 2)

        for i in range(5):
            await bob.send_message("chat", Message(recipient_id=1, text=f"Hi Alice {i}"))
        for i in range(5):  # every post, in order
            expected = Message(recipient_id=1, text=f"Hi Alice {i}")
            assert await alice.receive_message("chat") == expected
        await bob.assert_nothing_received()

        await anonymous.send_message("chat", Message(recipient_id=1, text="hello?"), frame_id="x")
        error = await anonymous.receive_error("not_authenticated")
        assert (error["endpoint"], error["id"]) == ("chat", "x")
        await alice.assert_nothing_received()
    assert bus.channels() == []  # the listeners went with their streams


async def test_notify_snippet_reaches_every_stream_of_the_user(guide, bus):
    protocol = guide.load("protocol")
    endpoints = guide.load("chat")
    notifications = guide.load("notify")
    chat = [endpoints.ChatEndpoint]
    note = protocol.MyChatMessage(recipient_id=1, text="note")
    async with (
        StreamingCommunicator(endpoints=chat, user=user(1, "alice")) as phone,
        StreamingCommunicator(endpoints=chat, user=user(2, "bob")) as bob,
    ):
        await note_to_self(phone, "chat", protocol, 1)
        await note_to_self(bob, "chat", protocol, 2)
        laptop = StreamingCommunicator(endpoints=chat, user=user(1, "alice"))
        async with laptop:
            await note_to_self(laptop, "chat", protocol, 1)
            assert await phone.receive_message("chat") == note  # alice's other device
            await notifications.notify(1, "Your export is ready")
            expected = protocol.MyChatMessage(recipient_id=1, text="Your export is ready")
            assert await laptop.receive_message("chat") == expected
        assert await phone.receive_message("chat") == expected
        await bob.assert_nothing_received()


async def test_global_snippet_on_the_in_memory_layer(guide, bus):
    protocol = guide.load("protocol")
    announcements = guide.load("global")
    got = []

    class Owner:
        pass

    owner = Owner()
    bus.add_listener("user_updates", got.append, owner=owner)
    update = protocol.UserUpdate(user_id=1, name="Alice")
    await announcements.announce(update)
    await announcements.announce_here(update)
    assert got == [update, update]
    with pytest.raises(MessagingNotGlobal):
        await announcements.announce_everywhere(update)
    assert got == [update, update]  # raised before delivering anything
    bus.remove_owner(owner)


async def test_inbox_snippet_relays_and_its_iteration_ends_with_the_stream(guide, bus):
    protocol = guide.load("protocol")
    endpoints = guide.load("inbox")
    inbox = [endpoints.InboxEndpoint]
    async with (
        StreamingCommunicator(endpoints=inbox, user=user(1, "alice")) as alice,
        StreamingCommunicator(endpoints=inbox, user=user(2, "bob")) as bob,
    ):
        await note_to_self(alice, "inbox", protocol, 1)
        await note_to_self(bob, "inbox", protocol, 2)
        await alice.send_message("inbox", protocol.MyChatMessage(recipient_id=2, text="Hi Bob"))
        assert await bob.receive_message("inbox") == protocol.MyChatMessage(
            recipient_id=2, text="Hi Bob"
        )
        await alice.assert_nothing_received()
        relays = [
            task
            for task in asyncio.all_tasks()
            if task.get_coro().__qualname__ == "InboxEndpoint.relay_messages"
        ]
        assert len(relays) == 2
    # "ends when the stream closes": the relay tasks finish on their own, not cancelled.
    async with asyncio.timeout(3):
        await asyncio.gather(*relays)
    assert bus.channels() == []


async def test_rooms_snippet_joins_leaves_and_validates(guide, bus):
    protocol = guide.load("protocol")
    endpoints = guide.load("rooms")
    rooms = [endpoints.RoomsEndpoint]
    Join, Leave, Say = protocol.JoinRoom, protocol.LeaveRoom, protocol.RoomMessage
    async with (
        StreamingCommunicator(endpoints=rooms) as a,
        StreamingCommunicator(endpoints=rooms) as b,
    ):
        await a.send_message("rooms", Join(room="lobby"))
        await a.send_message("rooms", Join(room="lobby"))  # twice: still once per post
        await a.send_message("rooms", Say(room="lobby", text="a is here"))
        assert await a.receive_message("rooms") == Say(room="lobby", text="a is here")
        await a.assert_nothing_received()

        await b.send_message("rooms", Join(room="lobby"))
        await b.send_message("rooms", Say(room="lobby", text="b is here"))
        assert await b.receive_message("rooms") == Say(room="lobby", text="b is here")
        assert await a.receive_message("rooms") == Say(room="lobby", text="b is here")

        await b.send_message("rooms", Leave(room="lobby"))
        await b.send_message("rooms", Say(room="lobby", text="b has left"))
        assert await a.receive_message("rooms") == Say(room="lobby", text="b has left")
        await b.assert_nothing_received()

        await a.send_message("rooms", Say(room="kitchen", text="anyone?"))
        await a.assert_nothing_received()  # not a member of that room

        empty_room = {"className": "JoinRoom", "data": {"room": ""}}
        frame = {"endpoint": "rooms", "id": "j1", "object": empty_room}
        await a.send_to(text_data=json.dumps(frame))
        error = await a.receive_error("invalid_message")
        assert [e["path"] for e in error["errors"]] == ["room"]
        assert error["id"] == "j1"
    assert bus.channels() == []


# -- Streaming methods ---------------------------------------------------------------------------


async def test_methods_snippet_answers_streams_and_takes_a_stream(guide, bus):
    from streaming.protocol import MethodFrame

    protocol = guide.load("protocol")
    methods = guide.load("methods")

    async def call(comm, call_id, method, args):
        fields = {"id": call_id, "endpoint": "chat_methods", "method": method, "args": args}
        await comm.send_command("call", fields)

    async def reply(comm):
        frame = await comm.receive_frame()
        assert isinstance(frame, MethodFrame), frame
        return frame

    async with StreamingCommunicator(
        endpoints=[methods.ChatMethodsEndpoint], user=user(1, "alice")
    ) as comm:
        await call(comm, "h", "history", {"with_user": 2, "limit": 2})
        done = await reply(comm)
        assert done.command == "done"
        assert [decode_object(v["className"], v["data"]) for v in done.args["value"]] == [
            protocol.MyChatMessage(recipient_id=2, text="#0"),
            protocol.MyChatMessage(recipient_id=2, text="#1"),
        ]
        await call(comm, "bad", "history", {"with_user": "2"})
        failed = await reply(comm)
        assert failed.args["code"] == "invalid_message"
        assert [e["path"] for e in failed.args["errors"]] == ["with_user"]
        await call(comm, "me", "history", {"with_user": 1})
        failed = await reply(comm)
        assert failed.args["code"] == "exception"
        assert failed.args["exception"] == {"className": "NotAFriend", "data": {"user_id": 1}}

        await call(comm, "w", "watch_updates", {"user_id": 2})
        await comm.ping()  # the call started: its listener is in place
        async with asyncio.timeout(3):
            while messages.get_bus().listener_count("user_updates_2") == 0:
                await comm.ping()
        await messages.get_bus().post_message(
            "user_updates_2", protocol.UserUpdate(user_id=2, name="Bo")
        )
        value = await reply(comm)
        assert (value.command, value.args["value"]["data"]) == (
            "value",
            {"user_id": 2, "name": "Bo"},
        )
        await comm.send_command("cancel", {"id": "w"})
        await comm.ping()
        async with asyncio.timeout(3):
            while messages.get_bus().listener_count("user_updates_2"):
                await comm.ping()

        await call(comm, "u", "upload", {})
        assert (await reply(comm)).command == "credit"
        for text in ("a", "b", "c"):
            value = {"className": "MyChatMessage", "data": {"recipient_id": 2, "text": text}}
            await comm.send_command(
                "stream_value", {"id": "u", "stream": "messages", "value": value}
            )
        await comm.send_command("stream_end", {"id": "u", "stream": "messages"})
        done = await reply(comm)
        assert (done.command, done.args["value"]) == ("done", 3)


# -- Handling streams in your app ----------------------------------------------------------------


@pytest.fixture
def guide_app(tmp_path, guide):
    """The guide's ``myapp`` (protocol and the echoing endpoint) as files an app server loads."""
    app = tmp_path / "myapp"
    app.mkdir()
    (app / "__init__.py").write_text("")
    (app / "protocol.py").write_text(guide.snippet("protocol").code)
    (app / "endpoints.py").write_text(guide.snippet("endpoint").code)
    (tmp_path / "guide_settings.py").write_text(
        "from tests.e2e_settings import *  # noqa: F403\n"
        "from tests.e2e_settings import INSTALLED_APPS\n"
        'INSTALLED_APPS = [*INSTALLED_APPS, "myapp"]\n'
    )
    return tmp_path


@pytest.mark.e2e
async def test_client_snippet_against_a_real_server(guide, guide_app, make_user, capsys):
    from tests.support.servers import DaphneServer

    await make_user("alice", password="streampod")
    guide.load("protocol")
    client = guide.load("client")
    env = {"PYTHONPATH": f"{guide_app}:{ROOT}", "DJANGO_SETTINGS_MODULE": "guide_settings"}
    server = await asyncio.to_thread(DaphneServer(env=env).start)
    try:
        await client.main(f"{server.http_url}/")
    finally:
        await asyncio.to_thread(server.stop)
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "status: connecting",
        "status: connected",
        "received: MyChatMessage(recipient_id=2, text='Hello')",
        "status: disconnected",
    ]


# -- Calls that start at once; permissions -------------------------------------------------------


async def test_unawaited_snippet_sends_and_posts_without_await(guide, bus):
    protocol = guide.load("protocol")
    endpoints = guide.load("unawaited")
    async with StreamingCommunicator(endpoints=[endpoints.RelayEndpoint]) as comm:
        await comm.send_message("relay", hello(protocol))
        assert await comm.receive_message("relay") == hello(protocol)  # sent bare
        assert await comm.receive_message("relay") == hello(protocol)  # posted bare
        await bus.drain()
        await comm.assert_nothing_received()


async def test_scopes_snippet_opens_only_for_users_with_the_permission(guide, make_user):
    from asgiref.sync import sync_to_async
    from django.contrib.auth.models import Permission

    protocol = guide.load("protocol")
    endpoints = guide.load("scopes")
    moderator, _ = await make_user("moderator", password=None)
    plain, _ = await make_user("plain", password=None)
    await sync_to_async(moderator.user_permissions.add)(
        await Permission.objects.aget(codename="change_user")
    )
    moderator = await type(moderator).objects.aget(pk=moderator.pk)  # fresh permission cache
    for who, expected in ((moderator, None), (plain, "forbidden")):
        async with StreamingCommunicator(
            endpoints=[endpoints.ModerationEndpoint], user=who
        ) as comm:
            await comm.send_message("moderation", hello(protocol), frame_id="f")
            if expected is None:
                assert await comm.receive_message("moderation") == hello(protocol)
            else:
                assert (await comm.receive_error(expected))["id"] == "f"
