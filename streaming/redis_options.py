"""Connection options for the Redis behind the channel layer: give up on a silent one.

A Redis that vanishes without a reset (its host down, a network partition, a failover that
moves the name to another primary) leaves its TCP connections open: without a socket
timeout (which Streampod's settings leave off, since an idle subscriber must not be cut)
redis-py waits for an answer as long as the kernel keeps retransmitting, on Linux about
15 minutes (``tcp_retries2``). Seen (helper "operator7", 2026-12-01, a partition in a
network namespace): for 16 minutes after the primary vanished no post crossed between
servers, every post took 4 s to fail, no bus gap was seen and no socket was told.

:func:`tcp_keepalive_options` makes the kernel give up within seconds: keepalive probes
after ``idle`` seconds of silence (``count`` of them, ``interval`` apart) for an idle
connection, and ``TCP_USER_TIMEOUT`` for one waiting for its data to be acknowledged. The
connection then fails, channels-redis reconnects (to whatever the name points at now) and
the message bus sees the gap (1012 to the sockets that listen). Pass them to redis-py with
``socket_keepalive=True`` in each ``CHANNEL_LAYERS`` host (the README and
docs/deployment.md show it); the system check ``streaming.W005`` warns when a channels-redis
host goes without.
"""

from __future__ import annotations

import socket

__all__ = ["KEEPALIVE_HOST_OPTIONS", "tcp_keepalive_options"]


def tcp_keepalive_options(
    idle: int = 5, interval: int = 2, count: int = 3, user_timeout: float = 10.0
) -> dict[int, int]:
    """redis-py's ``socket_keepalive_options``: the TCP options this platform has of
    ``TCP_KEEPIDLE`` (``idle`` s), ``TCP_KEEPINTVL`` (``interval`` s), ``TCP_KEEPCNT``
    (``count``) and ``TCP_USER_TIMEOUT`` (``user_timeout`` s, in milliseconds)."""
    wanted = {
        "TCP_KEEPIDLE": idle,
        "TCP_KEEPINTVL": interval,
        "TCP_KEEPCNT": count,
        "TCP_USER_TIMEOUT": int(user_timeout * 1000),
    }
    return {getattr(socket, name): value for name, value in wanted.items() if hasattr(socket, name)}


#: What to add to each ``CHANNEL_LAYERS`` host dict.
KEEPALIVE_HOST_OPTIONS = {
    "socket_keepalive": True,
    "socket_keepalive_options": tcp_keepalive_options(),
}
