"""Several Redis servers as shards: ``REDIS_URL`` lists them, comma-separated (issue 15).

The channels-redis pub/sub layer takes several hosts and sends each channel to one of
them, by a consistent hash of the channel's Redis name; Streampod passes it every URL of
``REDIS_URL``. A post goes to the shard of its channel, and every server listening on that
channel joins it there, so a server holds a subscription on each shard that carries one
of its channels. Real processes throughout: three private redis-server processes, a
uvicorn and a daphne server sharding over them.

Contracts checked here:

* posts from one server to 24 user channels whose listeners are on the other all arrive,
  once each;
* each channel's subscription lives on the shard channels-redis' hash names, and on no
  other, and at least two of the three shards carry posts (before issue 15, every post
  went to the first URL);
* the REST API's throttle counts (Django's cache) live on the first URL only: Django's
  ``RedisCache`` reads a list as a primary and read replicas, not as shards;
* shards must share one database number (the layer has one prefix).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys

import httpx
import pytest
from django.core.exceptions import ImproperlyConfigured

from streampod_project.settings import _redis_prefix
from tests.e2e.redis_support import (
    key_count,
    publishes,
    redis_channel,
    shard_index,
    shard_urls,
    subscribed_channels,
)
from tests.e2e.test_chat_e2e import assert_quiet, chat_frame, connect, ready, recv_chat
from tests.support.nginx import start_all
from tests.support.servers import ROOT, DaphneServer, RedisServer, UvicornServer

pytestmark = pytest.mark.redis

SHARDS = 3
USERS = 24
GUARD = 30  # seconds: a failure guard on a wait, never a synchronisation


@pytest.fixture(scope="module")
def sharded(django_db_setup, django_db_blocker):
    """Three private redis-servers, and a uvicorn and a daphne server sharding over
    them: (shards, REDIS_URL, a, b)."""
    with contextlib.ExitStack() as stack:
        shards = [stack.enter_context(RedisServer()) for _ in range(SHARDS)]
        url = shard_urls(shards)
        a = UvicornServer(env={"REDIS_URL": url})
        b = DaphneServer(env={"REDIS_URL": url})
        stack.callback(b.stop)
        stack.callback(a.stop)
        start_all(a, b)
        yield shards, url, a, b


async def test_posts_to_24_user_channels_all_arrive_over_three_shards(sharded, make_user):
    shards, url, a, b = sharded
    # Two senders: the chat allows a user 20 messages in 10 s (chat.endpoints).
    senders = [await make_user(f"sender{n}", password=None) for n in range(2)]
    users = [await make_user(f"listener{n}", password=None) for n in range(USERS)]
    expected = {user.pk: shard_index(f"user_{user.pk}", url) for user, _ in users}
    # Twenty-four names over three shards: the hash spreads them (at least two shards).
    assert len(set(expected.values())) >= 2, expected

    async with contextlib.AsyncExitStack() as stack:
        listening = {}
        for user, key in users:  # every listener on a (uvicorn) ...
            ws = await stack.enter_async_context(connect(a.ws_url, key))
            await ready(ws, user.pk)  # joined user_<id> on its shard (the probe came back)
            listening[user.pk] = ws
        sockets = []
        for sender, key in senders:  # ... the senders on b (daphne)
            ws = await stack.enter_async_context(connect(b.ws_url, key))
            await ready(ws, sender.pk)
            sockets.append(ws)
        sent_by = {pk: n % 2 for n, pk in enumerate(listening)}

        # Each channel's subscription is on its shard, and only there.
        subscribed = [subscribed_channels(shard.url) for shard in shards]
        for pk, index in expected.items():
            name = redis_channel(f"user_{pk}", url)
            where = [n for n, names in enumerate(subscribed) if name in names]
            assert where == [index], (pk, where, index)

        before = [publishes(shard.url) for shard in shards]
        for pk in listening:
            await sockets[sent_by[pk]].send(chat_frame(pk, f"to {pk}"))
        for pk, ws in listening.items():
            frame = await recv_chat(ws, timeout=GUARD)
            data = frame["object"]["data"]
            assert (data["sender_id"], data["recipient_id"], data["text"]) == (
                senders[sent_by[pk]][0].pk,
                pk,
                f"to {pk}",
            )
        for n, ws in enumerate(sockets):
            mine = [pk for pk in listening if sent_by[pk] == n]
            acks = [await recv_chat(ws, timeout=GUARD) for _ in mine]
            assert [ack["object"]["data"]["recipient_id"] for ack in acks] == mine
        for ws in listening.values():
            await assert_quiet(ws)  # once each
        after = [publishes(shard.url) for shard in shards]

    carried = [after[n] - before[n] for n in range(SHARDS)]
    # Each post is one PUBLISH on the shard of its recipient's channel (the senders'
    # acks travel on their own channels).
    for n in range(SHARDS):
        posts = sum(1 for index in expected.values() if index == n)
        assert carried[n] >= posts, (n, carried, expected)
    assert sum(1 for count in carried if count > 0) >= 2, carried
    # The batched publisher sent them (one pipeline per shard), never falling back.
    for srv in (a, b):
        assert "batched publishing failed" not in srv.logs()
        assert "not batching publishes" not in srv.logs()
    print(f"\nPUBLISH per shard for {USERS} posts: {carried}", file=sys.stderr)


async def test_the_cache_throttle_and_rate_counts_lives_on_the_first_shard_only(sharded, make_user):
    shards, _, a, b = sharded
    _, key = await make_user("counted", password=None)
    async with httpx.AsyncClient(timeout=GUARD) as http:
        for srv in (a, b):
            response = await http.get(f"{srv.http_url}/api/users/", headers={"Authorization": key})
            assert response.status_code == 200
    # Pub/sub creates no keys: whatever is stored is the cache's.
    assert [key_count(shard.url) > 0 for shard in shards] == [True, False, False]


def test_shards_must_share_a_database_number():
    assert _redis_prefix("redis://127.0.0.1:7001/3,redis://127.0.0.1:7002/3") == "asgi_db3"
    with pytest.raises(ImproperlyConfigured, match="different database numbers"):
        _redis_prefix("redis://127.0.0.1:7001/0, redis://127.0.0.1:7002/1")


def test_every_url_is_a_shard_of_the_layer_and_the_cache_takes_the_first():
    """What a server process builds from a three-URL ``REDIS_URL`` (spaces tolerated)."""
    url = "redis://127.0.0.1:7001/0, redis://127.0.0.1:7002/0 ,redis://127.0.0.1:7003/0"
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "STREAMPOD_")) and key != "DATABASE_URL"
    }
    shown = subprocess.run(
        [
            sys.executable,
            "-c",
            "from django.conf import settings as s; import json; print(json.dumps(["
            "[h['address'] for h in s.CHANNEL_LAYERS['default']['CONFIG']['hosts']],"
            "s.CACHES['default']['LOCATION']]))",
        ],
        cwd=ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "streampod_project.settings", "REDIS_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    hosts, cache = json.loads(shown.stdout)
    assert hosts == [f"redis://127.0.0.1:{port}/0" for port in (7001, 7002, 7003)]
    assert cache == "redis://127.0.0.1:7001/0"


def test_a_channel_moves_shard_when_the_list_grows(sharded):
    """Why every server must switch lists together: the hash depends on the list's
    length, so a third of the channels (or more) change shard when a shard is added."""
    shards, url, _, _ = sharded
    two = shard_urls(shards[:2])
    names = [f"user_{n}" for n in range(1, 301)]
    moved = [name for name in names if shard_index(name, two) != shard_index(name, url)]
    assert len(moved) >= len(names) // 3, len(moved)


def test_the_documented_shard_list_is_three_shards_of_one_prefix():
    """docs/deployment.md, "Redis shards": its REDIS_URL is what these tests run, three
    URLs of one database number."""
    text = (ROOT / "docs" / "deployment.md").read_text()
    section = text.split("## Redis shards", 1)[1].split("\n## ", 1)[0]
    line = next(x for x in section.splitlines() if x.startswith("REDIS_URL="))
    url = line.split("=", 1)[1]
    assert len(url.split(",")) == SHARDS
    assert _redis_prefix(url) == "asgi"
