"""A socket is reachable from the whole cluster as soon as its handshake completes.

Contract: once a client sees the WebSocket handshake complete, every post, from any
server, to a channel its endpoints' ``stream_opened`` hooks listened on reaches it.

Issue: two servers share Redis. Bob's socket opens on server B; the moment its
handshake completes, Alice (already connected to server A) sends him a message
through an endpoint that listens on ``user_<id>`` in ``stream_opened``. Repeated 150
times with a fresh socket for Bob each time, with both CPU cores busy, some messages
never arrive: the server accepts the socket before the endpoints' ``stream_opened``
hooks have run, so B may not have joined the channel's group when A publishes.

Two checks, each 150 repetitions with every core kept busy by processes this module
starts (and kills), on two fresh daphne servers, then on two fresh uvicorn servers:

* the demo ``chat`` endpoint: a ChatMessage from Alice on A to Bob on B, each time on
  a new socket of Bob's (the previous one closed). "Alice" is one of several users,
  15 messages each, to stay under the chat's rate limit. Repetition 0 is the first
  socket server B ever serves (as after a restart), while Alice has been chatting on A.
* the bus alone: the ``probe`` endpoint of tests/e2e_app/reachability_endpoints.py,
  which posts with ``session.messages.post_message`` and listens in ``stream_opened``
  without awaiting the handle, as the docs' example does; a new channel each time.

The sender gets its acknowledgement once the post has been published; only then is
the recipient's copy awaited, for at most DELIVERY_TIMEOUT seconds. A message that
has not arrived by then is lost: Redis pub/sub does not redeliver.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from contextlib import contextmanager

import pytest
import websockets

from tests.support.servers import SERVERS, RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.timeout(900)]

REPETITIONS = 150
#: Seconds the recipient's copy may take once the sender's post has been published
#: (a failure guard, never a synchronisation). Generous: the cores are kept busy.
DELIVERY_TIMEOUT = 5.0
#: ChatEndpoint allows 20 messages per 10 s (per connection, or per user): each sender
#: sends this many to Bob (after one note to itself), then the next sender takes over.
PER_SENDER = 15
#: Seconds a CPU burner runs at most, even if this process dies without killing it.
BURN_SECONDS = 600

BURN = (
    "import sys, time\n"
    "end = time.monotonic() + float(sys.argv[1])\n"
    "while time.monotonic() < end:\n"
    "    pass\n"
)


@contextmanager
def busy_cores():
    """One busy-looping process per core (at least 2), killed on the way out."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 2
    procs = [
        subprocess.Popen([sys.executable, "-c", BURN, str(BURN_SECONDS)])
        for _ in range(max(2, cores))
    ]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait(10)


@pytest.fixture(params=sorted(SERVERS))
def reach_cluster(request, django_db_setup, django_db_blocker):
    """A private redis-server and two fresh servers using it (daphne, then uvicorn),
    with the ``probe`` endpoint. Fresh for each test: server B has joined nothing
    before the test's first repetition, as after a restart."""
    server = SERVERS[request.param]
    with RedisServer() as rs:
        env = {"REDIS_URL": rs.url, "DJANGO_SETTINGS_MODULE": "tests.e2e_reachability_settings"}
        with server(env=env) as a, server(env=env) as b:
            yield rs, a, b


def connect(url, key=None):
    headers = {"Authorization": key} if key else None
    return websockets.connect(url, additional_headers=headers, open_timeout=30, proxy=None)


def chat_frame(recipient_id, text):
    data = {"recipient_id": recipient_id, "text": text}
    return json.dumps({"endpoint": "chat", "object": {"className": "ChatMessage", "data": data}})


def probe_frame(to, text):
    data = {"to": to, "text": text}
    return json.dumps(
        {"endpoint": "probe", "object": {"className": "ReachProbePost", "data": data}}
    )


async def next_of(ws, endpoint, timeout):
    """The next frame of ``endpoint`` (data, or an error about it); others are skipped."""
    async with asyncio.timeout(timeout):
        while True:
            frame = json.loads(await ws.recv())
            if frame.get("endpoint") == endpoint:
                return frame
            if frame.get("command") == "error" and frame["args"].get("endpoint") == endpoint:
                return frame


async def arrives(ws, endpoint, text) -> bool:
    """Whether ``endpoint``'s frame with ``text`` reaches ``ws`` within DELIVERY_TIMEOUT."""
    try:
        async with asyncio.timeout(DELIVERY_TIMEOUT):
            while True:
                frame = await next_of(ws, endpoint, DELIVERY_TIMEOUT)
                assert frame.get("command") != "error", frame
                if frame["object"]["data"].get("text") == text:
                    return True
    except TimeoutError:
        return False


def report(lost, what):
    return (
        f"{len(lost)} of {REPETITIONS} {what} never reached a socket whose handshake had "
        f"completed before the post (repetitions {lost})"
    )


async def test_chat_message_reaches_a_socket_the_instant_its_handshake_completes(
    reach_cluster, make_user
):
    _, a, b = reach_cluster
    bob, bob_key = await make_user("bob")
    senders = [await make_user(f"alice{n}") for n in range(-(-REPETITIONS // PER_SENDER))]
    lost: list[int] = []
    alices = None
    with busy_cores():
        try:
            for i in range(REPETITIONS):
                if i % PER_SENDER == 0:
                    if alices is not None:
                        await alices.close()
                    alice, alice_key = senders[i // PER_SENDER]
                    alices = await connect(a.ws_url, alice_key)
                    # A note to herself: once it is back, Alice's chat stream is open and
                    # server A has published before (Alice is an active user).
                    await alices.send(chat_frame(alice.pk, f"note {i}"))
                    note = await next_of(alices, "chat", 30)
                    assert note.get("command") != "error", note
                    assert note["object"]["data"]["text"] == f"note {i}", note
                text = f"reach {i} {uuid.uuid4().hex[:6]}"
                async with connect(b.ws_url, bob_key) as bobs:
                    # The handshake has completed: Alice sends at once.
                    await alices.send(chat_frame(bob.pk, text))
                    # Alice's own copy comes after the post to user_<bob> was published.
                    ack = await next_of(alices, "chat", 30)
                    assert ack.get("command") != "error", ack
                    assert ack["object"]["data"]["text"] == text, ack
                    if not await arrives(bobs, "chat", text):
                        lost.append(i)
        finally:
            if alices is not None:
                await alices.close()
    assert not lost, report(lost, "chat messages from Alice on server A to Bob on server B")


async def test_bus_post_reaches_a_socket_the_instant_its_handshake_completes(reach_cluster):
    _, a, b = reach_cluster
    lost: list[int] = []
    with busy_cores():
        async with connect(a.ws_url) as sender:
            for i in range(REPETITIONS):
                name = uuid.uuid4().hex
                text = f"probe {i}"
                async with connect(f"{b.ws_url}?probe={name}") as recipient:
                    # The handshake has completed: post to its channel from server A.
                    await sender.send(probe_frame(name, text))
                    ack = await next_of(sender, "probe", 30)
                    assert ack.get("command") != "error", ack
                    assert ack["object"]["data"]["text"] == text, ack
                    if not await arrives(recipient, "probe", text):
                        lost.append(i)
    assert not lost, report(lost, "bus posts from server A to a socket on server B")
