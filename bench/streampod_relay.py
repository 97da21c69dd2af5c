"""Contender (a): the relay written with Streampod's public API, no database.

Issue 3's example as a user writes it: each session listens on ``user_<uid>`` and
posts what it receives to ``user_<to>``; ``BenchEcho`` goes straight back. The user
id comes from ``?uid=`` (:mod:`bench.identity`), not from a token lookup.
"""

from __future__ import annotations

from streaming.endpoint import Endpoint
from streaming.serialization import SerializableEntity
from streaming.session import StreamingSession

from .identity import uid_from_query
from .protocol import BenchEcho, BenchReady, BenchRelay


class RelayEndpoint(Endpoint):
    name = "relay"

    async def stream_opened(self, session: StreamingSession) -> None:
        uid = uid_from_query(session.scope.get("query_string", b""))
        # `await` the handle: on two servers the cluster-wide join is done before
        # the client is told it is ready, so no post can miss it.
        await session.messages.add_listener(
            f"user_{uid}", lambda message: self.send_stream_message(session, message)
        )
        await self.send_stream_message(session, BenchReady(uid=uid))

    async def handle_stream_message(
        self, session: StreamingSession, message: SerializableEntity
    ) -> None:
        if isinstance(message, BenchRelay):
            await session.messages.post_message(f"user_{message.to}", message)
        elif isinstance(message, BenchEcho):
            await self.send_stream_message(session, message)
