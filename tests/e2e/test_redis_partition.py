"""A Redis that goes silent, without a reset, is given up on within seconds.

Seen (helper "operator7", 2026-12-01, a partition in a network namespace): after the Redis
primary's host vanished, no post crossed between servers for 16 minutes (until Linux gave up
retransmitting, ``tcp_retries2``), every post took 4 s to fail, no bus gap was seen and no
socket was told; ``/readyz`` stayed green. The layer's connections now carry TCP keepalive
and ``TCP_USER_TIMEOUT`` (``streaming.redis_options``): the kernel fails a silent connection
within about 11 s, channels-redis connects again, and the bus sees the gap.

Here the silence is real: ``tc`` holds back every packet to and from the private
redis-server's port on the loopback device (root only), so the connections stay open and
nothing answers. Once the server has given up on its subscriber connection the packets
flow again; the socket that listens is closed with 1012 (the gap), and a new one is served.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest
import websockets

from tests.e2e.redis_support import connect, join, join_once_served, recv_endpoint
from tests.support.servers import RedisServer, UvicornServer

pytestmark = pytest.mark.redis

IN_CI = os.environ.get("CI") == "true"
#: channels-redis' receive task logs this when its subscriber connection fails.
GAVE_UP = "Unexpected exception in receive task"


def _tc(*args: str) -> None:
    subprocess.run(["tc", *args], check=True, capture_output=True, text=True)


@contextlib.contextmanager
def silenced(port: int) -> Iterator[None]:
    """Every packet to or from 127.0.0.1:``port`` held back, none delivered (an HTB class
    of 8 bit/s on the loopback device, for the duration; everything else goes through a
    10 Gbit/s class). The packets held are dropped with the qdisc at the end. (This
    machine's kernel has neither tc's ``drop`` action nor ``netem``.)"""
    _tc("qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "10")
    try:
        _tc("class", "add", "dev", "lo", "parent", "1:", "classid", "1:10", "htb",
            "rate", "10gbit")  # fmt: skip
        _tc("class", "add", "dev", "lo", "parent", "1:", "classid", "1:20", "htb",
            "rate", "8bit", "ceil", "8bit")  # fmt: skip
        for field in ("dport", "sport"):
            _tc("filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", "1",
                "u32", "match", "ip", field, str(port), "0xffff", "flowid", "1:20")  # fmt: skip
        yield
    finally:
        _tc("qdisc", "del", "dev", "lo", "root")


@pytest.fixture
def can_partition() -> None:
    if os.geteuid() != 0 or shutil.which("tc") is None:
        message = "dropping packets needs root and tc (iproute2)"
        if IN_CI:
            pytest.fail(message + "; CI=true needs them")
        pytest.skip(message)


async def test_a_silent_redis_is_given_up_on_and_the_gap_is_told(can_partition, django_db_setup):
    with RedisServer() as rs, UvicornServer(env={"REDIS_URL": rs.url}) as srv:
        room = f"p{uuid.uuid4().hex[:8]}"
        async with connect(srv.ws_url) as listener:
            await join(listener, room)  # subscribed: its server's bus listens on Redis
            assert srv.output is not None
            with silenced(rs.port):
                # Before: nothing for ~15 minutes (the kernel's retransmissions).
                gave_up = await asyncio.to_thread(srv.output.wait_for, GAVE_UP, 40)
                assert gave_up, srv.logs()[-3000:]
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:  # the gap: it may have missed posts, so it is closed
                    await recv_endpoint(listener, "room", timeout=30)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012, closed.value
        # The bus joins again through the new connection. A join under way while the
        # bus tells the gap of the reconnection gets 1012 too (when the listener's 1012
        # came from the stall, told before the reconnection: seen on Python 3.12 under
        # load), and a client joins again, as join_once_served does.
        again = await join_once_served(srv.ws_url, room, within=60)
        await again.close()
