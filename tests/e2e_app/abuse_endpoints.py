"""A test-only endpoint for tests/e2e/test_abuse_memory.py (tests/e2e_abuse_settings.py).

``oversize`` answers an ``AbuseBigRequest(size=n)`` with one ``AbuseBigReply`` whose
text is ``n`` characters long: an outgoing frame as large as a test wants, for
example above daphne's limit on the frames it sends (autobahn's
``maxMessagePayloadSize``, 1 MiB by default).
"""

from __future__ import annotations

from streaming.endpoint import Endpoint
from streaming.serialization import SerializableEntity


class BigRequest(SerializableEntity):
    class_name = "AbuseBigRequest"

    size: int


class BigReply(SerializableEntity):
    class_name = "AbuseBigReply"

    text: str


class OversizeEndpoint(Endpoint):
    """Name on the wire: ``oversize``."""

    async def handle_stream_message(self, session, message):
        if isinstance(message, BigRequest):
            await self.send_stream_message(session, BigReply(text="x" * message.size))
