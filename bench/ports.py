"""Ports for the servers that the bench and the tests start on 127.0.0.1.

A port the kernel picks (``bind(("127.0.0.1", 0))``) comes from the ephemeral range,
the same range every outgoing connection takes its source port from. Between the
moment it is handed out and the moment the server binds it, one of the thousands of
client sockets a test or a bench opens can take it ("address already in use": seen in
the bench smoke test and the install test under load). So the port is picked below
that range (``net.ipv4.ip_local_port_range``), where only servers bind, and never
handed out twice by one process.
"""

from __future__ import annotations

import random
import socket

_handed_out: set[int] = set()


def _ephemeral_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ports:
            return int(ports.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on, outside the ephemeral range."""
    high = _ephemeral_start()
    low = max(1024, high - 12000)
    for _ in range(200):
        port = random.randrange(low, high)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as sock:  # a crowded range: let the kernel choose
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
