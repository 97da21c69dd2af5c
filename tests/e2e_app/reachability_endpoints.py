"""A test-only endpoint for tests/e2e/test_reachability.py (tests/e2e_reachability_settings.py).

``probe`` listens, in ``stream_opened``, on ``probe_<name>`` where ``<name>`` is the
socket's ``?probe=<name>`` query parameter; it does not await the handle, as the
docs' messaging example does not. A ``ProbePost`` sent to it is posted with
``session.messages.post_message`` to ``probe_<ProbePost.to>``, from whichever server
the sender is on: the bus alone, no database, no other endpoint. Once the post has
returned (published cluster-wide), the sender gets the ``ProbePost`` back as its
acknowledgement.
"""

from __future__ import annotations

from urllib.parse import parse_qs

from streaming.endpoint import Endpoint
from streaming.serialization import SerializableEntity


class ProbePost(SerializableEntity):
    class_name = "ReachProbePost"

    to: str
    text: str


def probe_channel(name: str) -> str:
    return f"probe_{name}"


class ProbeEndpoint(Endpoint):
    """Name on the wire: ``probe``."""

    async def stream_opened(self, session):
        query = parse_qs(session.scope.get("query_string", b"").decode("latin-1"))
        names = query.get("probe")
        if names:
            session.messages.add_listener(
                probe_channel(names[0]),
                lambda message: self.send_stream_message(session, message),
            )

    async def handle_stream_message(self, session, message):
        if isinstance(message, ProbePost):
            await session.messages.post_message(probe_channel(message.to), message)
            await self.send_stream_message(session, message)  # the sender's acknowledgement
