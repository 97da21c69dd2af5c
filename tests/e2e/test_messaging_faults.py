"""Redis stops and comes back: local messaging goes on, cross-server posts fail fast
with a clear error, sockets stay up, subscriptions return by themselves."""

import pytest

from tests.e2e.redis_support import (
    assert_quiet,
    connect,
    join,
    recv_endpoint,
    room_post,
    wait_numsub,
)
from tests.support.servers import DaphneServer, RedisServer

pytestmark = pytest.mark.redis


async def test_redis_outage_and_return(django_db_setup):
    rs = RedisServer().start()
    try:
        env = {"REDIS_URL": rs.url}
        with DaphneServer(env=env) as a, DaphneServer(env=env) as b:
            async with connect(a.ws_url) as a1, connect(a.ws_url) as a2, connect(b.ws_url) as b1:
                await join(a1, "outage")
                await join(a2, "outage")
                await join(b1, "outage")

                rs.stop()

                # Local delivery keeps working; the failed cross-server half is reported
                # to the poster (after its own local copy), within the receive timeout.
                await a2.send(room_post("outage", "local while down"))
                frame = await recv_endpoint(a1, "room")
                assert frame["object"]["data"]["text"] == "local while down"
                frame = await recv_endpoint(a2, "room")
                assert frame["object"]["data"]["text"] == "local while down"
                error = await recv_endpoint(a2, "room")
                assert error["command"] == "error"
                assert error["args"]["code"] == "internal_error"
                assert "unavailable" in error["args"]["message"]

                # The servers keep serving sockets, new ones included.
                async with connect(b.ws_url) as fresh:
                    await assert_quiet(fresh)

                # Redis comes back on the same port: subscriptions return by themselves.
                rs = RedisServer(port=rs.port).start()
                await wait_numsub(rs.url, "room:outage", 2, timeout=30)
                await b1.send(room_post("outage", "after the return"))
                for ws in (a1, a2, b1):
                    frame = await recv_endpoint(ws, "room")
                    assert frame["object"]["data"]["text"] == "after the return", frame
    finally:
        rs.stop()


async def test_post_outside_a_session_raises_messaging_unavailable(settings):
    """`streaming.messages.post_message` with Redis unreachable: MessagingUnavailable, bounded."""
    from streaming import messages
    from streaming.exceptions import MessagingUnavailable
    from streaming.serialization import SerializableEntity
    from tests.support.servers import free_port

    class Ping(SerializableEntity):
        n: int

    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {
                "hosts": [
                    {
                        "address": f"redis://127.0.0.1:{free_port()}/0",  # nothing listens
                        "socket_connect_timeout": 1,
                        "socket_timeout": None,
                    }
                ]
            },
        }
    }
    settings.STREAMING = {"PUBLISH_TIMEOUT": 1.0}
    messages.reset_bus()
    try:
        bus = messages.get_bus()
        assert bus.cross_process
        got = []
        handle = bus.add_listener("local", got.append, owner=bus)
        with pytest.raises(MessagingUnavailable):
            await messages.post_message("local", Ping(n=1))
        assert [m.n for m in got] == [1]  # the local listener had it
        with pytest.raises(MessagingUnavailable):
            await handle  # cannot be assured cluster-wide
        await messages.post_message("local", Ping(n=2), global_=False)  # local only: fine
        assert [m.n for m in got] == [1, 2]
        bus.remove_owner(bus)
        await bus.aclose()
    finally:
        messages.reset_bus()
