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

Streaming methods (docs/chat.md, "Streaming methods"), each for the signed-in caller only:

* ``history(with_user, limit=50, before=None, after=None) -> list[ChatMessage]``: the
  caller's conversation with ``with_user``, as the REST history API serves it.
* ``typing(with_user) -> AsyncIterator[TypingEvent]``: ``with_user`` typing to the caller,
  live (listening on ``typing_<caller>_<with_user>``) until the call is cancelled; the
  first value (``typing=False``) says the listener is in place.
* ``notify_typing(with_user, typing=True) -> bool``: tell ``with_user`` the caller is
  typing (or stopped); rate-limited per user, False when the signal was dropped.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import ClassVar

from streaming.endpoint import Endpoint, streaming_method
from streaming.exceptions import InvalidMessage, MessagingUnavailable, RateLimited
from streaming.messages import get_bus, publish_until_sent
from streaming.serialization import SerializableEntity, encode_object
from streaming.session import StreamingSession

from . import store
from .people import display_name
from .protocol import MAX_TEXT_LENGTH, ChatMessage, Id, TypingEvent, clean_text
from .ratelimit import SharedRateLimit

logger = logging.getLogger("chat")


#: Bytes of a method's answer beyond its values (the frame's command, id and brackets).
FRAME_MARGIN = 1024


def fit(page: list[ChatMessage], limit: int, *, keep_first: bool) -> list[ChatMessage]:
    """The longest run of ``page`` (from its start if ``keep_first``, else from its end)
    whose frame stays within ``limit`` bytes; at least one message, so that paging moves
    on (one message always fits: MAX_TEXT_LENGTH keeps it far below any send limit)."""
    budget = limit - FRAME_MARGIN
    ordered = page if keep_first else page[::-1]
    kept = 0
    for message in ordered:
        budget -= len(encode_object(message).encode("utf-8", "surrogatepass")) + 1
        if budget < 0 and kept:
            break
        kept += 1
    if kept == len(page):
        return page
    return page[:kept] if keep_first else page[len(page) - kept :]


def user_channel(user_id: int) -> str:
    """The message-bus channel every socket of ``user_id`` listens on."""
    return f"user_{user_id}"


def typing_channel(recipient_id: int, typist_id: int) -> str:
    """The message-bus channel of ``typist_id``'s typing signals to ``recipient_id``."""
    return f"typing_{recipient_id}_{typist_id}"


@dataclass(slots=True)
class ChatUser:
    """The endpoint's user object: per-connection state, gone when the stream closes."""

    user_id: int
    display_name: str
    typing_streams: int = 0  # typing() calls in progress on this socket


class ChatEndpoint(Endpoint):
    """Direct messages between signed-in users. Its name on the wire is ``chat``."""

    login_required = True

    #: At most this many messages per user in any ``rate_limit_period`` seconds, counted
    #: over all the user's sockets on every server (see chat/ratelimit.py); more get
    #: error ``rate_limited`` and are not saved.
    rate_limit_messages: ClassVar[int] = 20
    rate_limit_period: ClassVar[float] = 10.0

    #: At most this many typing signals per user in any ``typing_rate_period`` seconds
    #: (all sockets, all servers); more are dropped (``notify_typing`` returns False).
    #: The page sends one every 2 s at most while the user types.
    typing_rate_signals: ClassVar[int] = 10
    typing_rate_period: ClassVar[float] = 10.0

    #: At most this many ``typing`` streams at once per socket (the page has one, for the
    #: conversation open); more fail with ``rate_limited``. Each listens on a channel of
    #: its own: 100 sockets of one user with 255 each were 25,500 channels, and two such
    #: users stalled the process for minutes (helper "attacker13").
    typing_streams_per_socket: ClassVar[int] = 8

    @classmethod
    def rate_limit(cls) -> SharedRateLimit:
        limit = cls.__dict__.get("_rate_limit")
        if limit is None:
            limit = SharedRateLimit(
                cls.rate_limit_messages, cls.rate_limit_period, prefix=f"chat:rate:{cls.name}"
            )
            cls._rate_limit = limit  # type: ignore[attr-defined]
        return limit

    @classmethod
    def typing_rate_limit(cls) -> SharedRateLimit:
        limit = cls.__dict__.get("_typing_rate_limit")
        if limit is None:
            limit = SharedRateLimit(
                cls.typing_rate_signals,
                cls.typing_rate_period,
                prefix=f"chat:typing:{cls.name}",
            )
            cls._typing_rate_limit = limit  # type: ignore[attr-defined]
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
        text = clean_text(message.text)
        if text is None:  # refused before it counts against the rate limit
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
        limit = self.rate_limit()
        if not await limit.allow(me.user_id):
            logger.info("rate limit: %s (user %s)", me.display_name, me.user_id)
            retry = await limit.retry_after(me.user_id)
            raise RateLimited(
                f"At most {limit.limit} messages per {limit.period:g} s; "
                f"try again in {math.ceil(retry)} s."
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
                # Stored, and delivered to this server's listeners; the other servers'
                # get it late rather than never (helper "attacker13": a recipient whose
                # socket stayed open on another server never saw it, nothing told its
                # page to catch up). A page shows each message id once, in order.
                logger.warning(
                    "message %s saved but not published to %s yet: trying again",
                    stored.id,
                    channel,
                )
                publish_until_sent(channel, stored)

    # -- streaming methods ---------------------------------------------------------------

    @streaming_method
    async def history(
        self,
        session: StreamingSession,
        with_user: Id,
        limit: int = 50,
        before: Id | None = None,
        after: Id | None = None,
    ) -> list[ChatMessage]:
        """The caller's conversation with ``with_user``, oldest first (chat.store.conversation:
        the newest ``limit`` below ``before``, or the first ``limit`` above ``after``).

        At most what fits in one frame to this socket (``session.max_send_bytes``): past
        it, the page ends early, keeping the messages next to ``after`` (or, paging back,
        the newest), and the client asks again from where it ended, until a page is
        empty. (Seen, helper "attacker7": 200 messages of 4,000 characters were 1.2 MB,
        every call failed with ``message_too_large``, and the page could not load the
        conversation over the socket.)"""
        me = session.auth.authenticated_user_id
        assert me is not None  # login_required
        page = await store.conversation(me, with_user, limit=limit, before=before, after=after)
        return fit(page, session.max_send_bytes, keep_first=after is not None)

    @streaming_method
    async def typing(self, session: StreamingSession, with_user: Id) -> AsyncIterator[TypingEvent]:
        """``with_user`` typing to the caller, as it happens, until the call is cancelled.

        The first value is ``TypingEvent(typing=False)``, sent once the listener is in
        place (cluster-wide when the broker is up): every signal from then on arrives.
        """
        me = session.auth.authenticated_user_id
        assert me is not None  # login_required
        mine: ChatUser = self.get_user_object(session)
        if mine.typing_streams >= self.typing_streams_per_socket:
            raise RateLimited(
                f"At most {self.typing_streams_per_socket} typing streams at once per socket."
            )
        mine.typing_streams += 1
        try:
            if not await store.is_active_user(with_user):  # a channel per made-up id: no
                raise InvalidMessage(
                    "Invalid call: with_user.",
                    errors=[{"path": "with_user", "reason": "no active user has this id"}],
                )
            channel = typing_channel(me, with_user)
            events = session.messages.listen(channel)
            try:
                await get_bus().wait_joined({channel})
            except MessagingUnavailable:
                logger.warning("user %s: typing listener is local-only for now", me)
            yield TypingEvent(user_id=with_user, recipient_id=me, typing=False)
            async for event in events:
                if isinstance(event, TypingEvent):
                    yield event
        finally:
            mine.typing_streams -= 1

    @streaming_method
    async def notify_typing(
        self, session: StreamingSession, with_user: Id, typing: bool = True
    ) -> bool:
        """Tell ``with_user`` that the caller is typing to them (``typing=False``: stopped).

        False when the signal was dropped: over the per-user typing rate limit, or the
        message bus is unavailable. Nothing is stored.
        """
        me = session.auth.authenticated_user_id
        assert me is not None  # login_required
        if typing and not await self.typing_rate_limit().allow(me):
            return False
        event = TypingEvent(user_id=me, recipient_id=with_user, typing=typing)
        try:
            await session.messages.post_message(typing_channel(with_user, me), event)
        except MessagingUnavailable:
            return False
        return True
