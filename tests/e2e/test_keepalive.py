"""Server pings: an idle socket is pinged, and a client that never answers is dropped.

Each server runs with a 1 s ping interval and a 2 s ping timeout (the defaults are
20 s and 30 s for daphne, 20 s and 20 s for uvicorn; docs/deployment.md). The client
speaks WebSocket through websockets' sans-I/O protocol over a raw socket, so the test
sees every frame the server sends and decides itself what goes back: here, nothing,
not even the pong the protocol would queue.
"""

from __future__ import annotations

import socket
from collections import deque

import pytest
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from tests.support.servers import SERVERS

GUARD = 15  # seconds: a failure guard on each socket read, never a synchronisation

PING_ARGS = {
    "daphne": ["--ping-interval", "1", "--ping-timeout", "2"],
    "uvicorn": ["--ws-ping-interval", "1", "--ws-ping-timeout", "2"],
}


@pytest.fixture(params=["daphne", "uvicorn"], scope="module")
def pinging_server(request, django_db_setup, django_db_blocker):
    with SERVERS[request.param](args=PING_ARGS[request.param]) as srv:
        yield srv


class RawClient:
    """A WebSocket client that never sends anything after the handshake."""

    def __init__(self, url: str) -> None:
        self.protocol = ClientProtocol(parse_uri(url))
        host, port = url.split("//")[1].split("/")[0].split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=GUARD)
        self.protocol.send_request(self.protocol.connect())
        self.sock.sendall(b"".join(self.protocol.data_to_send()))
        self.events: deque[Frame | Response] = deque()

    def next_event(self) -> Frame | Response | None:
        """The next handshake response or frame; None once the server ends the TCP stream.

        A read that waits longer than GUARD raises ``TimeoutError``: the test fails.
        """
        while not self.events:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                return None
            self.protocol.receive_data(data)
            self.events.extend(self.protocol.events_received())
            self.protocol.data_to_send()  # dropped: no pong, no close reply
        return self.events.popleft()

    def close(self) -> None:
        self.sock.close()


def test_an_idle_socket_is_pinged_and_dropped_when_it_never_answers(pinging_server):
    client = RawClient(pinging_server.ws_url)
    try:
        response = client.next_event()
        assert isinstance(response, Response) and response.status_code == 101
        seen: list[Opcode] = []
        while True:
            event = client.next_event()
            if event is None:
                break  # the server hung up
            assert isinstance(event, Frame)
            seen.append(event.opcode)
            if event.opcode is Opcode.CLOSE:
                break
        # What the endpoints sent on open, at least one ping, then the server ended it
        # (uvicorn with a 1011 close frame, daphne by dropping the connection).
        assert Opcode.PING in seen, seen
    finally:
        client.close()
