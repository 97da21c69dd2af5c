"""Two deployments on one Redis server stay apart (issue 11).

Redis pub/sub ignores database numbers: with channels-redis' default prefix, servers
on ``redis://host/1`` and on ``redis://host/2`` both publish to
``asgi__group__user_<id>``, so a post in one deployment reached a listener of the same
user id in the other. The project now derives the channel layer's prefix from the
database number (``asgi_db1``, ``asgi_db2``; ``asgi`` on database 0), and
``STREAMPOD_REDIS_PREFIX`` sets it: equal prefixes make one deployment again.

Real daphne processes (the demo ``chat`` endpoint) and a private redis-server.
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from tests.e2e.test_chat_e2e import assert_quiet, chat_frame, connect, ready, recv_chat
from tests.support.servers import DaphneServer, RedisServer

pytestmark = pytest.mark.redis


@contextlib.contextmanager
def running(*servers: DaphneServer):
    """Start ``servers`` side by side (each start waits for its "Listening" line), and
    stop them all afterwards."""
    with contextlib.ExitStack() as stack:
        for srv in servers:
            stack.callback(srv.stop)
        with ThreadPoolExecutor(len(servers)) as pool:
            for future in [pool.submit(srv.start) for srv in servers]:
                future.result()
        yield servers


@pytest.fixture(scope="module")
def shared_redis():
    with RedisServer() as rs:
        yield rs


def on_db(rs: RedisServer, db: int, **env: str) -> DaphneServer:
    return DaphneServer(env={"REDIS_URL": f"redis://127.0.0.1:{rs.port}/{db}", **env})


@pytest.fixture(scope="module")
def deployments(shared_redis, django_db_setup, django_db_blocker):
    """Deployment A (two servers on database 1) and B (two on database 2) of one
    redis-server, with the default prefixes: (redis, (a1, a2), (b1, b2))."""
    rs = shared_redis
    with running(on_db(rs, 1), on_db(rs, 1), on_db(rs, 2), on_db(rs, 2)) as (a1, a2, b1, b2):
        yield rs, (a1, a2), (b1, b2)


def subscribed(rs: RedisServer, channel: str) -> set[str]:
    """The Redis pub/sub channels any server subscribes to for bus channel ``channel``."""
    client = redis.Redis(port=rs.port)
    try:
        return {name.decode() for name in client.pubsub_channels(f"*__group__{channel}")}
    finally:
        client.close()


def text(frame: dict) -> str:
    assert frame.get("command") is None, frame  # a ChatMessage, not an error
    return frame["object"]["data"]["text"]


async def test_two_deployments_on_one_redis_do_not_hear_each_other(deployments, make_user):
    rs, (a1, a2), (b1, b2) = deployments
    alice, alice_key = await make_user("alice")
    bob, bob_key = await make_user("bob")
    carol, carol_key = await make_user("carol")
    async with (
        connect(a1.ws_url, alice_key) as alice_a,
        connect(a2.ws_url, bob_key) as bob_a,
        connect(b1.ws_url, bob_key) as bob_b,  # the same user id, in the other deployment
        connect(b2.ws_url, carol_key) as carol_b,
    ):
        # Once ready, each socket's server has joined user_<id> on Redis.
        for ws, user in ((alice_a, alice), (bob_a, bob), (bob_b, bob), (carol_b, carol)):
            await ready(ws, user.pk)

        await alice_a.send(chat_frame(bob.pk, "only for deployment A"))
        # Delivered across A's two servers: Redis has published it to every subscriber.
        assert text(await recv_chat(bob_a)) == "only for deployment A"
        assert text(await recv_chat(alice_a)) == "only for deployment A"

        # B posts to the same user id afterwards. Redis delivers a subscriber's messages
        # in publish order, so had B's server subscribed to A's channel, bob's socket in
        # B would get A's message first.
        await carol_b.send(chat_frame(bob.pk, "only for deployment B"))
        assert text(await recv_chat(bob_b)) == "only for deployment B"
        assert text(await recv_chat(carol_b)) == "only for deployment B"

        # And the other way: A's next message is the next thing bob sees in A.
        await alice_a.send(chat_frame(bob.pk, "A again"))
        assert text(await recv_chat(bob_a)) == "A again"
        assert text(await recv_chat(alice_a)) == "A again"
        for ws in (alice_a, bob_a, bob_b, carol_b):
            await assert_quiet(ws)

        # The prefixes the deployments derived from their database numbers.
        assert await asyncio.to_thread(subscribed, rs, f"user_{bob.pk}") == {
            f"asgi_db1__group__user_{bob.pk}",
            f"asgi_db2__group__user_{bob.pk}",
        }


async def test_the_same_prefix_on_two_databases_is_one_deployment(
    shared_redis, make_user, django_db_setup
):
    """STREAMPOD_REDIS_PREFIX names the deployment: set equal on databases 1 and 2, the
    servers hear each other (so the setting, not the database, decides)."""
    rs = shared_redis
    prefix = {"STREAMPOD_REDIS_PREFIX": "isolation_shared"}
    alice, alice_key = await make_user("alice")
    bob, bob_key = await make_user("bob")
    with running(on_db(rs, 1, **prefix), on_db(rs, 2, **prefix)) as (on_1, on_2):
        async with connect(on_1.ws_url, alice_key) as alices, connect(on_2.ws_url, bob_key) as bobs:
            await ready(alices, alice.pk)
            await ready(bobs, bob.pk)
            assert await asyncio.to_thread(subscribed, rs, f"user_{bob.pk}") == {
                f"isolation_shared__group__user_{bob.pk}"
            }

            await alices.send(chat_frame(bob.pk, "from database 1"))
            assert text(await recv_chat(bobs)) == "from database 1"
            assert text(await recv_chat(alices)) == "from database 1"
            await bobs.send(chat_frame(alice.pk, "from database 2"))
            assert text(await recv_chat(alices)) == "from database 2"
            assert text(await recv_chat(bobs)) == "from database 2"
            await assert_quiet(alices)
            await assert_quiet(bobs)
