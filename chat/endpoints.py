"""The ``chat`` endpoint: the streaming docs' chat example, for real users.

::

    client                    server (this endpoint)                 message bus
    ChatMessage(recipient_id, text)
      ──────────────────────▶ rate limit, validate, save
                              post the stored ChatMessage ─────────▶ user_<recipient_id>
                                                          ─────────▶ user_<sender_id>
    ◀──── every socket of the recipient and of the sender (this one too: its ack)

Each socket listens on ``user_<its user id>`` from ``stream_opened`` on, so a user's
every device, on any server of the cluster, sees what they send and receive.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import ClassVar

from streaming.endpoint import Endpoint
from streaming.exceptions import InvalidMessage, MessagingUnavailable, RateLimited
from streaming.serialization import SerializableEntity
from streaming.session import StreamingSession

from . import store
from .people import display_name
from .protocol import MAX_TEXT_LENGTH, ChatMessage, clean_text
from .ratelimit import SharedRateLimit

logger = logging.getLogger("chat")


def user_channel(user_id: int) -> str:
    """The message-bus channel every socket of ``user_id`` listens on."""
    return f"user_{user_id}"


@dataclass(slots=True)
class ChatUser:
    """The endpoint's user object: per-connection state, gone when the stream closes."""

    user_id: int
    display_name: str


class ChatEndpoint(Endpoint):
    """Direct messages between signed-in users. Its name on the wire is ``chat``."""

    login_required = True

    #: At most this many messages per user in any ``rate_limit_period`` seconds, counted
    #: over all the user's sockets on every server (see chat/ratelimit.py); more get
    #: error ``rate_limited`` and are not saved.
    rate_limit_messages: ClassVar[int] = 20
    rate_limit_period: ClassVar[float] = 10.0

    @classmethod
    def rate_limit(cls) -> SharedRateLimit:
        limit = cls.__dict__.get("_rate_limit")
        if limit is None:
            limit = SharedRateLimit(
                cls.rate_limit_messages, cls.rate_limit_period, prefix=f"chat:rate:{cls.name}"
            )
            cls._rate_limit = limit  # type: ignore[attr-defined]
        return limit

    async def stream_opened(self, session: StreamingSession) -> None:
        user_id = session.auth.authenticated_user_id
        assert user_id is not None  # login_required: never opened for anonymous sessions
        self.set_user_object(
            session,
            ChatUser(user_id=user_id, display_name=display_name(session.user)),
        )
        handle = session.messages.add_listener(
            user_channel(user_id),
            lambda message: self.send_stream_message(session, message),
        )
        try:
            # Frames of this endpoint wait for this hook, so once the client gets an
            # answer to one, posts from every server of the cluster reach this socket.
            await handle
        except MessagingUnavailable:
            # The broker is down: this server's posts still arrive, and the bus joins
            # the cluster by itself when the broker is back.
            logger.warning("user %s: chat listener is local-only for now", user_id)

    async def handle_stream_message(
        self, session: StreamingSession, message: SerializableEntity
    ) -> None:
        if not isinstance(message, ChatMessage):
            raise InvalidMessage(
                f"The chat endpoint accepts ChatMessage, not {type(message).class_name}.",
                errors=[{"path": "(root)", "reason": "expected a ChatMessage"}],
            )
        me: ChatUser = self.get_user_object(session)
        limit = self.rate_limit()
        if not await limit.allow(me.user_id):
            logger.info("rate limit: %s (user %s)", me.display_name, me.user_id)
            retry = await limit.retry_after(me.user_id)
            raise RateLimited(
                f"At most {limit.limit} messages per {limit.period:g} s; "
                f"try again in {math.ceil(retry)} s."
            )
        text = clean_text(message.text)
        if text is None:
            raise InvalidMessage(
                "Invalid ChatMessage: text.",
                errors=[
                    {
                        "path": "text",
                        "reason": f"must be 1 to {MAX_TEXT_LENGTH} characters "
                        "once surrounding whitespace is stripped",
                    }
                ],
            )
        # The sender is whoever is signed in on this socket; a client's sender_id or id
        # is never read.
        stored = await store.save_message(me.user_id, message.recipient_id, text)
        if stored is None:
            raise InvalidMessage(
                "Invalid ChatMessage: recipient_id.",
                errors=[{"path": "recipient_id", "reason": "no active user has this id"}],
            )
        channels = [user_channel(stored.recipient_id)]
        if stored.recipient_id != me.user_id:  # a note to oneself is posted once
            channels.append(user_channel(me.user_id))
        for channel in channels:
            try:
                await session.messages.post_message(channel, stored)
            except MessagingUnavailable:
                # Stored, and delivered to this server's listeners: the others fetch it
                # (GET /api/chat/messages/?after=) when their socket comes back.
                logger.warning("message %s saved but not published to %s", stored.id, channel)
