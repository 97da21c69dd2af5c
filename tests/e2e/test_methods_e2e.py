"""Streaming methods end to end: the Python client against real daphne and uvicorn
processes serving tests/e2e_app/methods_endpoints.py."""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
import websockets

from streaming.client import CallFailed, Client, UndecodableMessage
from tests.e2e_app.methods_endpoints import Line, OutOfInk, Stroke
from tests.support.servers import SERVERS

WAIT = 30  # seconds: a safety net for awaits on real signals, never a measurement
PASSWORD = "secret-pass-1"


@pytest.fixture(scope="module", params=["daphne", "uvicorn"])
def server(request, django_db_setup, django_db_blocker):
    env = {"DJANGO_SETTINGS_MODULE": "tests.e2e_methods_settings"}
    with SERVERS[request.param](env=env) as srv:
        yield srv


async def connected(server) -> Client:
    client = Client(server.http_url)
    await client.open_streaming_connection()
    return client


async def until_finished(client, name):
    """Ask the server until the generator ``name`` ran its finally; its stats."""
    async with asyncio.timeout(WAIT):
        while True:
            stats = await client.methods.stats(name=name)
            if stats[1]:
                return stats


async def test_values_streams_and_input_streams(server):
    async with await connected(server) as client:
        assert await client.methods.history(with_user=2) == [
            Line(text="to 2", n=i) for i in range(3)
        ]
        assert [v async for v in client.methods.count(upto=40)] == list(range(40))
        assert await client.methods.count(upto=3) == [0, 1, 2]  # awaited: the list
        # A value iterated: said, not dropped (helper "serverpod12": an empty loop).
        with pytest.raises(TypeError, match=r"methods\.history returns a value, not a stream"):
            [v async for v in client.methods.history(with_user=2)]

        async def strokes():
            for i in range(200):  # past the first credit of 64
                yield Stroke(x=i, y=1)

        assert await client.methods.upload(strokes=strokes()) == sum(range(200)) + 200
        assert await client.endpoint("methods").call("history", with_user=3, limit=1) == [
            Line(text="to 3", n=0)
        ]
        # Other types travel as message fields of theirs do; the client, which does not
        # know the hints, returns their JSON form, a dict as a dict (helper "reviewer10":
        # a dict result failed in the client), a message in it as its class.
        at = datetime(2026, 12, 1, 13, 30, tzinfo=timezone(timedelta(hours=1)))
        assert await client.methods.stamp(at=at, counts={"a": 1, "b": 2}) == {
            "at": "2026-12-01T12:30:00Z",
            "counts": {"a": 1, "b": 2},
            "line": Line(text="stamped", n=2),
        }
        with pytest.raises(OutOfInk) as late:
            await client.methods.late(at=at)
        assert (late.value.at, late.value.stock) == ("2026-12-01T12:30:00Z", {"red": 0})


async def test_returns_reads_the_values_as_the_methods_type(server):
    """``returns=`` gives the client what the method returned, not its JSON form."""
    at = datetime(2026, 12, 1, 13, 30, tzinfo=timezone(timedelta(hours=1)))
    every = timedelta(minutes=5)
    expected = [at + i * every for i in range(3)]
    async with await connected(server) as client:
        # Without it, a datetime is its ISO 8601 string; with it, a datetime (in UTC).
        assert await client.methods.schedule(start=at, every=every, n=1) == ["2026-12-01T12:30:00Z"]
        awaited = await client.methods.schedule(
            start=at, every=every, n=3, returns=AsyncIterator[datetime]
        )
        assert awaited == expected and all(v.tzinfo == UTC for v in awaited)
        # A stream's item type alone does too.
        schedule = client.methods.schedule(start=at, every=every, n=3, returns=datetime)
        assert [v async for v in schedule] == expected
        # The server's own hint, Any in it: what is not typed is read as without returns=
        # (helper "reviewer11": a message in it came back as its JSON form).
        stamped = await client.methods.stamp(at=at, counts={"a": 1}, returns=dict[str, Any])
        assert stamped == {
            "at": "2026-12-01T12:30:00Z",
            "counts": {"a": 1},
            "line": Line(text="stamped", n=1),
        }
        assert await client.methods.history(with_user=2, limit=1, returns=list[Line]) == [
            Line(text="to 2", n=0)
        ]

        # What is not of the type fails the call, naming the path; the socket goes on.
        with pytest.raises(UndecodableMessage) as wrong:
            await client.methods.history(with_user=2, limit=2, returns=list[int])
        assert wrong.value.code == "invalid_message"
        assert [e["path"] for e in wrong.value.errors] == ["value.0", "value.1"]
        assert "(value.0: Input should be a valid integer; value.1: " in str(wrong.value)
        counted = client.methods.count(upto=3, returns=AsyncIterator[Line])
        with pytest.raises(UndecodableMessage) as wrong_item:
            [v async for v in counted]
        assert [e["path"] for e in wrong_item.value.errors] == ["value"]
        with pytest.raises(TypeError):
            client.methods.count(upto=3, returns=object)  # at once: no such method type
        with pytest.raises(TypeError, match="pass the arguments by name"):
            client.methods.count(3)  # as Serverpod's client would (helper "serverpod12")
        assert await client.methods.count(upto=2) == [0, 1]


async def test_fifty_concurrent_calls_on_one_socket(server):
    async with await connected(server) as client:

        async def stream(i):
            return [v async for v in client.methods.count(upto=i % 7)]

        results = await asyncio.wait_for(
            asyncio.gather(
                *(client.methods.history(with_user=i, limit=1) for i in range(25)),
                *(stream(i) for i in range(25)),
            ),
            WAIT,
        )
        assert results[:25] == [[Line(text=f"to {i}", n=0)] for i in range(25)]
        assert results[25:] == [list(range(i % 7)) for i in range(25)]


async def test_bad_calls_raise_and_the_connection_stays_open(server):
    async with await connected(server) as client:
        for call, code in [
            (client.nope.history(with_user=1), "unknown_endpoint"),
            (client.methods.nope(), "unknown_method"),
            (client.methods.whoami(), "not_authenticated"),
        ]:
            with pytest.raises(CallFailed) as failed:
                await call
            assert failed.value.code == code
        with pytest.raises(CallFailed) as failed:
            await client.methods.history(with_user="2")
        assert failed.value.code == "invalid_message"
        assert failed.value.errors[0]["path"] == "with_user"
        # An input stream left out, or given as a list (not an async iterable): refused
        # (helper "serverpod10": both waited for ever).
        for strokes in ({}, {"strokes": [Stroke(x=1, y=1)]}):
            with pytest.raises(CallFailed) as failed:
                await asyncio.wait_for(client.methods.upload(**strokes), WAIT)
            assert failed.value.code == "invalid_message"
            assert failed.value.errors[0]["path"] == "strokes"
        with pytest.raises(OutOfInk) as typed:
            await client.methods.out_of_ink(color="red")
        assert (typed.value.message, typed.value.color) == ("No red ink.", "red")
        with pytest.raises(CallFailed) as failed:
            await client.methods.broken()
        assert failed.value.code == "internal_error" and "hunter2" not in failed.value.message
        assert client.is_connected
        assert await client.methods.history(with_user=1, limit=0) == []
    # Logged on the server, not sent (its output is read by a thread: wait for the line).
    assert await asyncio.to_thread(server.output.wait_for, "hunter2", 30), server.logs()


async def test_login_required_applies_per_call(server, make_user):
    user, _ = await make_user("alice", password=PASSWORD)
    async with await connected(server) as client:
        await client.sign_in("alice", PASSWORD)
        assert await client.methods.whoami() == user.pk


async def test_a_slow_reader_pauses_the_generator_and_keeps_its_connection(server):
    name = f"slow-{server.name}"
    CREDIT = 8  # smaller than the 40 values read: the generator must wait for the reader
    async with await connected(server) as client:
        rss_before = (await client.methods.stats(name=name))[2]
        consumed = 0
        async for line in client.methods.endless(name=name, credit=CREDIT):
            consumed += 1
            assert line == Line(text=name, n=consumed)
            produced = (await client.methods.stats(name=name))[0]
            assert produced - consumed <= CREDIT, (produced, consumed)
            if consumed == 40:
                break
            await asyncio.sleep(0.05)  # the slow reader (not a synchronisation)
        assert client.is_connected
        produced, finished, rss_after = await until_finished(client, name)
        assert finished == 1 and produced <= consumed + CREDIT
        assert rss_after - rss_before < 20 * 1024  # KiB: the generator waited, nothing piled up


async def test_cancelling_the_awaiting_task_stops_the_generator(server):
    name = f"cancel-{server.name}"
    async with await connected(server) as client:
        task = asyncio.ensure_future(client.methods.endless(name=name))
        async with asyncio.timeout(WAIT):
            while (await client.methods.stats(name=name))[0] == 0:
                pass
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await until_finished(client, name)
        assert client.is_connected


async def test_an_input_stream_failed_by_the_client(server):
    async with await connected(server) as client:

        async def broken():
            yield Stroke(x=1, y=2)
            raise ValueError("pen broke")

        assert await client.methods.upload(strokes=broken()) == -1


async def test_closing_the_connection_ends_the_calls(server):
    name = f"close-{server.name}"
    async with await connected(server) as client:
        calls = client.methods.endless(name=name)
        async with calls:
            iterator = aiter(calls)
            assert (await anext(iterator)).n == 1
            await client.close_streaming_connection()
        await client.open_streaming_connection()
        await until_finished(client, name)


async def queued_frames(server) -> int:
    """``streampod_send_queue_frames`` from the server's /metrics (we are on loopback)."""
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        text = (await http.get("/metrics")).text
    match = re.search(r"^streampod_send_queue_frames (\S+)$", text, re.M)
    assert match, text[:2000]
    return int(float(match.group(1)))


async def test_streams_whose_credit_exceeds_the_send_queue_wait_for_the_network(server):
    """20 streams granted 1,024 values each (20,480 frames of 2 KB) against a send queue
    of 1,024 frames, to a client that reads nothing until the server has had to queue:
    the generators wait for the network, the socket stays open, and every granted value
    arrives. Before, the queue overflowed and the socket was closed with 4013."""
    calls = {f"c{i}": f"crowd-{server.name}-{i}-" + "x" * 2000 for i in range(20)}
    async with (
        websockets.connect(
            server.ws_url, max_queue=1, max_size=2**20, compression=None, ping_interval=None
        ) as ws,
        await connected(server) as observer,
    ):
        for call_id, name in calls.items():
            frame = {"endpoint": "methods", "method": "endless", "id": call_id,
                     "args": {"name": name}, "credit": 1024}  # fmt: skip
            await ws.send(json.dumps({"command": "call", "args": frame}))
        # Until the server has had to queue frames (the client's and the kernel's
        # buffers are full), or a generator ended (its socket was closed).
        async with asyncio.timeout(WAIT):
            while await queued_frames(server) < 512:
                stats = [await observer.methods.stats(name=name) for name in calls.values()]
                if any(finished for _, finished, _ in stats):
                    break
        values: Counter[str] = Counter()
        closed = None
        async with asyncio.timeout(WAIT * 4):
            while sum(values.values()) < 1024 * len(calls):
                try:
                    frame = json.loads(await ws.recv())
                except websockets.ConnectionClosed as exc:
                    closed = exc.rcvd.code if exc.rcvd else None
                    break
                if frame.get("command") == "value":
                    values[frame["args"]["id"]] += 1
        assert closed is None, f"closed with {closed} after {sum(values.values())} values"
        assert values == dict.fromkeys(calls, 1024)


@pytest.fixture(scope="module")
def limited_server(django_db_setup, django_db_blocker):
    env = {"DJANGO_SETTINGS_MODULE": "tests.e2e_methods_settings", "STREAMPOD_E2E_RATE_LIMIT": "20"}
    with SERVERS["daphne"](env=env) as srv:
        yield srv


async def test_calls_refused_by_the_rate_limit_fail_instead_of_hanging(limited_server):
    async with await connected(limited_server) as client:
        outcomes = []
        for i in range(60):  # three times the burst, as fast as the server answers
            try:
                await asyncio.wait_for(client.methods.history(with_user=i, limit=1), WAIT)
                outcomes.append("ok")
            except CallFailed as exc:
                outcomes.append(exc.code)
        assert "ok" in outcomes and "rate_limited" in outcomes
        assert set(outcomes) == {"ok", "rate_limited"}
        # A stream whose credit frames are refused ends too, instead of waiting for ever.
        name = "limited-stream"
        with pytest.raises(CallFailed) as failed:
            async with asyncio.timeout(WAIT):
                async for _ in client.methods.endless(name=name, credit=2):
                    pass
        assert failed.value.code == "rate_limited"


@pytest.fixture(scope="module")
def redis_server(django_db_setup, django_db_blocker):
    """A private redis-server, and a uvicorn serving the methods on it: (redis, server)."""
    from tests.support.servers import RedisServer

    with RedisServer() as rs:
        env = {"DJANGO_SETTINGS_MODULE": "tests.e2e_methods_settings", "REDIS_URL": rs.url}
        with SERVERS["uvicorn"](env=env) as srv:
            yield rs, srv


@pytest.mark.redis
async def test_deactivating_the_user_ends_their_call_in_progress(redis_server, make_user, settings):
    """The signal path: the user is deactivated in this process (post_save -> revoke ->
    Redis); the server closes the user's socket with 4401, the call in progress fails on
    the client, and the server's generator ran its ``finally``."""
    from asgiref.sync import sync_to_async
    from django.contrib.auth import get_user_model

    from streaming import messages
    from streaming.auth import revocation_channel
    from streaming.client import NotConnected
    from tests.e2e.redis_support import wait_numsub

    rs, srv = redis_server
    settings.CHANNEL_LAYERS = {  # this process posts the revocation on the server's Redis
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [{"address": rs.url, "socket_timeout": None,
                                  "socket_connect_timeout": 2}]},
        }
    }  # fmt: skip
    messages.reset_bus()
    user, key = await make_user("erin")
    name = "revoked-mid-call"
    try:
        async with (
            Client(srv.http_url, auth_key=key) as client,
            await connected(srv) as observer,
        ):
            await client.open_streaming_connection()
            assert await client.methods.whoami() == user.pk
            await wait_numsub(rs.url, revocation_channel(user.pk), 1)
            # A large credit: with 4 the client granted more every 2 values read, and read
            # as fast as it could that passed RATE_LIMIT_PER_SECOND (500 frames/s), so the
            # call failed rate_limited before the revocation came (helper "reviewer12").
            async with client.methods.endless(name=name, credit=1024) as call:
                iterator = aiter(call)
                assert (await anext(iterator)).n == 1  # the call is in progress

                def deactivate():
                    fresh = get_user_model().objects.get(pk=user.pk)
                    fresh.is_active = False
                    fresh.save()

                await sync_to_async(deactivate)()
                with pytest.raises(NotConnected):
                    async with asyncio.timeout(WAIT):
                        while True:
                            await anext(iterator)
            assert client.disconnect_reason is not None
            assert client.disconnect_reason.code == 4401
            assert client.disconnect_reason.is_auth_failure
            produced, finished, _ = await until_finished(observer, name)
            assert finished == 1 and produced >= 1
    finally:
        await messages.get_bus().aclose()
        messages.reset_bus()
