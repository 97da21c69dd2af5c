"""The chat end to end against real daphne processes: plain ``websockets`` clients, the
Python client, the terminal client (``manage.py chat_client``), and two servers
sharing a real Redis."""

import asyncio
import json
import os
import sys

import httpx
import pytest
import websockets

from chat.protocol import ChatMessage
from chat.terminal import run
from streaming.client import Client, ServerError
from tests.support.servers import ROOT

PASSWORD = "secret-pass-1"  # make_user's default


def chat_frame(recipient_id, text, **extra):
    data = {"recipient_id": recipient_id, "text": text, **extra}
    return json.dumps({"endpoint": "chat", "object": {"className": "ChatMessage", "data": data}})


async def recv_chat(ws, timeout=10):
    """The next frame of the chat endpoint (data or error), skipping other endpoints'."""
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if frame.get("endpoint") == "chat" or frame.get("args", {}).get("endpoint") == "chat":
            return frame


async def assert_quiet(ws):
    """Nothing waits for this socket on ``chat``: the pong is the next frame that is not
    another endpoint's (the e2e server also serves test endpoints, some on ``user_<id>``)."""
    await ws.send(json.dumps({"command": "ping", "args": {}}))
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if frame.get("endpoint", "chat") != "chat":
            continue
        assert frame == {"command": "pong", "args": {}}, frame
        return


async def ready(ws, user_id):
    """Return once the socket's chat stream is open: its frames are handled after
    ``stream_opened``, which joined ``user_<id>`` cluster-wide."""
    await ws.send(chat_frame(user_id, ""))
    frame = await recv_chat(ws)
    assert frame["args"]["code"] == "invalid_message", frame


async def next_server_error(client):
    """The next error frame (skipping test endpoints' classes this process lacks)."""
    async with asyncio.timeout(10):
        async for error in client.errors:
            if isinstance(error, ServerError):
                return error
    raise AssertionError("the client closed")


def connect(url, key=None):
    headers = {"Authorization": key} if key else None
    return websockets.connect(url, additional_headers=headers, open_timeout=10)


async def test_two_socket_clients_chat_and_the_conversation_is_stored(server, make_user):
    alice, alice_key = await make_user("alice")
    bob, bob_key = await make_user("bob")
    async with connect(server.ws_url, alice_key) as alices, connect(server.ws_url, bob_key) as bobs:
        await ready(bobs, bob.pk)
        await alices.send(chat_frame(bob.pk, "hello bob", sender_id=bob.pk))
        delivered = await recv_chat(bobs)
        ack = await recv_chat(alices)
        assert delivered == ack
        data = delivered["object"]["data"]
        assert delivered["object"]["className"] == "ChatMessage"
        assert (data["sender_id"], data["recipient_id"], data["text"]) == (
            alice.pk,
            bob.pk,
            "hello bob",
        )
        assert data["sent_at"].endswith("Z")
        await assert_quiet(bobs)

    async with httpx.AsyncClient(base_url=server.http_url) as http:
        response = await http.get(
            "/api/chat/messages/", params={"with": alice.pk}, headers={"Authorization": bob_key}
        )
    assert response.status_code == 200
    assert response.json()["results"] == [data]


async def test_anonymous_socket_gets_not_authenticated(server, make_user):
    bob, _ = await make_user("bob")
    async with connect(server.ws_url) as anonymous:
        await anonymous.send(
            json.dumps(
                {
                    "endpoint": "chat",
                    "id": "n1",
                    "object": {
                        "className": "ChatMessage",
                        "data": {"recipient_id": bob.pk, "text": "hi"},
                    },
                }
            )
        )
        frame = await recv_chat(anonymous)
        assert frame["command"] == "error"
        assert (frame["args"]["code"], frame["args"]["id"]) == ("not_authenticated", "n1")


async def test_python_client_send_receive_and_validation_errors(server, make_user):
    alice, _ = await make_user("alice")
    bob, bob_key = await make_user("bob")
    async with Client(server.http_url) as alices, Client(server.http_url, auth_key=bob_key) as bobs:
        await alices.sign_in("alice", PASSWORD)
        await alices.open_streaming_connection()
        await bobs.open_streaming_connection()

        # An invalid message: a ServerError naming the field, for the frame's id.
        await bobs.chat.send_stream_message(ChatMessage(recipient_id=alice.pk, text="  "), id="e1")
        error = await next_server_error(bobs)
        assert (error.code, error.id, [e["path"] for e in error.errors]) == (
            "invalid_message",
            "e1",
            ["text"],
        )  # and, handled after stream_opened: bob's listener is in place

        await alices.chat.send_stream_message(ChatMessage(recipient_id=bob.pk, text="typed!"))
        received = await asyncio.wait_for(anext(bobs.chat.stream), 10)
        assert isinstance(received, ChatMessage)
        assert (received.sender_id, received.text) == (alice.pk, "typed!")
        assert await asyncio.wait_for(anext(alices.chat.stream), 10) == received


async def test_terminal_chat_signs_in_prints_live_and_sends(server, make_user):
    alice, _ = await make_user("alice")
    bob, bob_key = await make_user("bob")
    lines: asyncio.Queue = asyncio.Queue()
    output: list[str] = []
    changed = asyncio.Event()

    def write(line):
        output.append(line)
        changed.set()

    async def wait_printed(predicate):
        async with asyncio.timeout(15):
            while not any(map(predicate, output)):
                changed.clear()
                await changed.wait()

    async def typed():
        while (line := await lines.get()) is not None:
            yield line

    async with connect(server.ws_url, bob_key) as bobs:
        await ready(bobs, bob.pk)
        await bobs.send(chat_frame(alice.pk, "before you came"))
        await recv_chat(bobs)  # stored
        terminal = asyncio.create_task(
            run(server.http_url, "alice", password=PASSWORD, lines=typed(), write=write)
        )
        await wait_printed(lambda line: line == "· connected")
        assert "Recent messages:" in output
        assert any(line.endswith("] bob: before you came") for line in output)

        await bobs.send(chat_frame(alice.pk, "ping from bob"))
        await wait_printed(lambda line: line.endswith("] bob: ping from bob"))

        await lines.put("@bob hello from the terminal\n")
        frame = await recv_chat(bobs)
        while frame["object"]["data"]["sender_id"] != alice.pk:  # skip bob's own ack
            frame = await recv_chat(bobs)
        assert frame["object"]["data"]["text"] == "hello from the terminal"
        await wait_printed(lambda line: line.endswith("] you → bob: hello from the terminal"))

        await lines.put("and a reply without @\n")
        frame = await recv_chat(bobs)
        assert frame["object"]["data"]["text"] == "and a reply without @"

        await lines.put("@nobody hi\n")
        await wait_printed(lambda line: line.startswith("! no such person: @nobody"))
        await lines.put("/quit\n")
        assert await asyncio.wait_for(terminal, 15) == 0


async def test_terminal_prints_what_arrived_while_its_server_was_down(make_user, django_db_setup):
    from asgiref.sync import sync_to_async

    from chat.models import Message
    from tests.support.servers import DaphneServer

    alice, alice_key = await make_user("alice")
    bob, _ = await make_user("bob")
    output: list[str] = []
    changed = asyncio.Event()

    def write(line):
        output.append(line)
        changed.set()

    async def wait_printed(predicate, count=1):
        async with asyncio.timeout(60):
            while sum(map(predicate, output)) < count:
                changed.clear()
                await changed.wait()

    quit_ = asyncio.Event()

    async def typed():
        await quit_.wait()
        yield "/quit\n"

    srv = await asyncio.to_thread(DaphneServer().start)
    port = srv.port
    try:
        terminal = asyncio.create_task(
            run(srv.http_url, None, auth_key=alice_key, lines=typed(), write=write)
        )
        await wait_printed(lambda line: line == "· connected")
        await asyncio.to_thread(srv.stop)
        await wait_printed(lambda line: line.startswith("· connection lost"))
        await sync_to_async(Message.objects.create)(
            sender=bob, recipient=alice, text="while you were away"
        )
        srv = await asyncio.to_thread(DaphneServer(port=port).start)
        await wait_printed(lambda line: line == "· connected", count=2)
        await wait_printed(lambda line: line.endswith("] bob: while you were away"))
        quit_.set()
        assert await asyncio.wait_for(terminal, 15) == 0
    finally:
        await asyncio.to_thread(srv.stop)


async def test_chat_client_command_is_a_client_that_never_touches_the_database(server, make_user):
    """``manage.py chat_client`` in a process whose database cannot be reached."""
    alice, alice_key = await make_user("alice")
    bob, bob_key = await make_user("bob")
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "DJANGO_SETTINGS_MODULE": "streampod_project.settings",
        # Port 1: any query would fail loudly.
        "DATABASE_URL": "postgres://nobody:nothing@127.0.0.1:1/nowhere",
        "REDIS_URL": "",
    }
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "manage.py", "chat_client", "--url", server.http_url],
        *["--token", alice_key],
        cwd=ROOT,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    printed: list[str] = []

    async def wait_printed(text):
        async with asyncio.timeout(30):
            while not any(text in line for line in printed):
                line = await proc.stdout.readline()
                assert line, f"the command ended; it printed: {printed}"
                printed.append(line.decode().rstrip("\n"))

    async def type_line(line):
        proc.stdin.write(line.encode() + b"\n")
        await proc.stdin.drain()

    try:
        async with connect(server.ws_url, bob_key) as bobs:
            await ready(bobs, bob.pk)
            await wait_printed("· connected")
            await type_line("@bob sent from manage.py")
            frame = await recv_chat(bobs)
            assert frame["object"]["data"]["sender_id"] == alice.pk
            assert frame["object"]["data"]["text"] == "sent from manage.py"
            await bobs.send(chat_frame(alice.pk, "bob answers"))
            await wait_printed("] bob: bob answers")
        await type_line("/quit")
        rest, _ = await asyncio.wait_for(proc.communicate(), 15)
        printed += rest.decode().splitlines()
        assert proc.returncode == 0, printed
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert not any("Traceback" in line for line in printed), printed


@pytest.mark.redis
async def test_chat_across_two_servers_sharing_redis(cluster, make_user):
    _, a, b = cluster
    alice, alice_key = await make_user("alice")
    bob, bob_key = await make_user("bob")
    async with (
        connect(a.ws_url, alice_key) as alice_phone,
        connect(b.ws_url, alice_key) as alice_laptop,
        connect(b.ws_url, bob_key) as bobs,
    ):
        for ws, user in ((alice_phone, alice), (alice_laptop, alice), (bobs, bob)):
            await ready(ws, user.pk)
        for n in range(5):
            await alice_phone.send(chat_frame(bob.pk, f"across {n}"))
        for ws in (bobs, alice_laptop, alice_phone):
            texts = [(await recv_chat(ws))["object"]["data"]["text"] for _ in range(5)]
            assert texts == [f"across {n}" for n in range(5)]  # once each, in order
            await assert_quiet(ws)

        await bobs.send(chat_frame(alice.pk, "back from b"))
        for ws in (alice_phone, alice_laptop, bobs):
            assert (await recv_chat(ws))["object"]["data"]["text"] == "back from b"
