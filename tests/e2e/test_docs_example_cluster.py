"""Issue 3's example endpoint across two servers: alice on A, bob on B, one Redis."""

import json

import pytest

from streaming.messages import group_name
from tests.e2e.redis_support import assert_quiet, connect, recv_endpoint, wait_numsub

pytestmark = pytest.mark.redis


def chat(recipient_id, text):
    return json.dumps(
        {
            "endpoint": "example_chat",
            "object": {
                "className": "ExampleChatMessage",
                "data": {"recipient_id": recipient_id, "text": text},
            },
        }
    )


async def test_example_chat_between_two_servers(cluster, make_user):
    rs, a, b = cluster
    alice, alice_key = await make_user("alice")
    bob, bob_key = await make_user("bob")
    async with connect(a.ws_url, additional_headers={"Authorization": alice_key}) as on_a, \
            connect(b.ws_url, additional_headers={"Authorization": bob_key}) as on_b:
        # Each server has joined its user's group: delivery is cluster-wide from here.
        await wait_numsub(rs.url, f"user_{alice.pk}", 1)
        await wait_numsub(rs.url, f"user_{bob.pk}", 1)
        assert group_name(f"user_{bob.pk}") == f"user_{bob.pk}"
        for i in range(10):
            await on_a.send(chat(bob.pk, f"hi bob {i}"))
        for i in range(10):
            frame = await recv_endpoint(on_b, "example_chat")
            assert frame["object"] == {
                "className": "ExampleChatMessage",
                "data": {"recipient_id": bob.pk, "text": f"hi bob {i}"},
            }
        await on_b.send(chat(alice.pk, "hello alice"))
        frame = await recv_endpoint(on_a, "example_chat")
        assert frame["object"]["data"]["text"] == "hello alice"
        await assert_quiet(on_a)
        await assert_quiet(on_b)
