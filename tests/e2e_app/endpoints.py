"""Endpoints served by the end-to-end test servers (tests/e2e_settings.py)."""

import asyncio

from streaming.endpoint import Endpoint
from streaming.messages import post_message

from .protocol import Echo, Flood, FloodReport, MyChatMessage, RoomPost, WhoAmI


class EchoEndpoint(Endpoint):
    """Sends every message back."""

    async def handle_stream_message(self, session, message):
        await self.send_stream_message(session, message)


class WhoamiEndpoint(Endpoint):
    """On open, tells the client who the session belongs to."""

    async def stream_opened(self, session):
        await self.send_stream_message(
            session, WhoAmI(user_id=session.auth.authenticated_user_id, endpoint=session.endpoint)
        )


class PrivateEndpoint(Endpoint):
    """login_required: echoes, with the user id."""

    login_required = True

    async def stream_opened(self, session):
        await self.send_stream_message(
            session, WhoAmI(user_id=session.auth.authenticated_user_id, endpoint=session.endpoint)
        )

    async def handle_stream_message(self, session, message):
        await self.send_stream_message(session, message)


class StaffOnlyEndpoint(Endpoint):
    """has_permission: staff only; others get `forbidden`."""

    async def has_permission(self, session):
        return bool(getattr(session.user, "is_staff", False))

    async def handle_stream_message(self, session, message):
        await self.send_stream_message(session, message)


class BrokenOpenEndpoint(Endpoint):
    """stream_opened raises: its frames get internal_error."""

    async def stream_opened(self, session):
        raise RuntimeError("broken on purpose (stream_opened)")


class BrokenHandlerEndpoint(Endpoint):
    """handle_stream_message raises: internal_error, connection goes on."""

    async def handle_stream_message(self, session, message):
        raise RuntimeError("broken on purpose (handle_stream_message)")


class RoomEndpoint(Endpoint):
    """Messaging: listens on `room:<name>` for rooms it is told to join; posts RoomPost."""

    async def stream_opened(self, session):
        self.set_user_object(session, set())

    async def handle_stream_message(self, session, message):
        if isinstance(message, RoomPost):
            joined = self.get_user_object(session)
            channel = f"room:{message.room}"
            if message.text == "/join":
                if channel not in joined:
                    joined.add(channel)
                    await session.messages.add_listener(
                        channel, lambda m: self.send_stream_message(session, m)
                    )
                await self.send_stream_message(session, Echo(text=f"joined {message.room}"))
            else:
                message.sender_id = session.auth.authenticated_user_id
                await session.messages.post_message(channel, message)


class ExampleChatEndpoint(Endpoint):
    """Issue 3's example, as written in the docs (name: example_chat)."""

    login_required = True

    async def stream_opened(self, session):
        session.messages.add_listener(
            f"user_{session.auth.authenticated_user_id}",
            lambda message: self.send_stream_message(session, message),
        )

    async def handle_stream_message(self, session, message):
        if isinstance(message, MyChatMessage):
            await session.messages.post_message(f"user_{message.recipient_id}", message)


class BurstEndpoint(Endpoint):
    """On a ``Flood``, sends its ``count`` frames at once, without yielding between them
    (a history replayed when a stream opens, say)."""

    async def handle_stream_message(self, session, message):
        if isinstance(message, Flood):
            text = "x" * message.size
            for n in range(message.count):
                self.send_stream_message(session, Echo(text=text, n=n))


class FloodEndpoint(Endpoint):
    """Sends as fast as the server takes frames; reports how many were accepted.

    Yields to the event loop between frames, as any producer does, so that the
    server writes to the socket until the client's buffers are full. Stops at the
    first frame ``send_stream_message`` refuses (the send queue is full).
    """

    async def handle_stream_message(self, session, message):
        if not isinstance(message, Flood):
            return
        self.set_user_object(session, message.report_to)  # told again when the socket ends
        text = "x" * message.size
        accepted = 0
        for n in range(message.count):
            if not await self.send_stream_message(session, Echo(text=text, n=n)):
                break
            accepted += 1
            await asyncio.sleep(0)
        await post_message(
            message.report_to, FloodReport(accepted=accepted, requested=message.count)
        )

    async def stream_closed(self, session):
        report_to = self.get_user_object(session)
        if report_to:
            await post_message(report_to, Echo(text="flood socket closed", n=-1))
