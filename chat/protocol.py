"""The chat's message class, shared by the server and every Python client.

Imports no Django (a test proves it): ``streaming.client`` users import it as it is.

One class travels both ways::

    client -> server   ChatMessage(recipient_id=2, text="Hello")
    server -> clients  ChatMessage(id=7, sender_id=1, recipient_id=2, text="Hello",
                                   sent_at=datetime(..., tzinfo=UTC))

What the client sends is a request; what the server sends is a stored message, so
``id``, ``sender_id`` and ``sent_at`` are optional and set only by the server. A
``sender_id`` or ``id`` a client sends is ignored: the server takes the sender from
the socket's authenticated user and the id from the database.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import Field

from streaming.serialization import SerializableEntity

__all__ = [
    "MAX_ID",
    "MAX_TEXT_LENGTH",
    "TYPING_SECONDS",
    "ChatMessage",
    "Id",
    "TypingEvent",
    "clean_text",
]

#: The largest id any database Django supports holds (a signed 64-bit integer).
MAX_ID = 2**63 - 1
#: An id a database can hold: a larger one is an invalid value, named, not a query that
#: fails (helper "attacker11": SQLite's OverflowError, an internal_error a call).
Id = Annotated[int, Field(ge=-MAX_ID - 1, le=MAX_ID)]

#: Longest message text, counted after stripping surrounding whitespace.
MAX_TEXT_LENGTH = 4000

#: How long a typing indicator shows after the last signal (``TypingEvent.expires_in``).
TYPING_SECONDS = 5.0


class ChatMessage(SerializableEntity):
    """A direct message from one user to another.

    Clients fill ``recipient_id`` and ``text``. Messages from the server also carry
    ``id`` (the stored message's primary key, increasing), ``sender_id`` and
    ``sent_at`` (UTC); receiving one with your own ``sender_id`` is the
    acknowledgement that the server stored what you sent.
    """

    recipient_id: Id
    text: str
    id: int | None = None
    sender_id: int | None = None
    sent_at: datetime | None = None

    @property
    def stored(self) -> bool:
        """True for a message the server has saved (it has an ``id``)."""
        return self.id is not None


class TypingEvent(SerializableEntity):
    """``user_id`` is typing a message to ``recipient_id`` (sent by the server only).

    The chat endpoint's ``typing(with_user)`` method streams these to ``recipient_id``.
    The indicator is shown for ``expires_in`` seconds and then hidden unless another
    event renews it; ``typing=False`` hides it at once (the text was sent or cleared).
    """

    user_id: int
    recipient_id: int
    typing: bool = True
    expires_in: float = TYPING_SECONDS


def clean_text(text: str) -> str | None:
    """``text`` stripped, or None when that is empty or over :data:`MAX_TEXT_LENGTH`.

    The server enforces this rule; clients may call it to refuse early.
    """
    stripped = text.strip()
    if not stripped or len(stripped) > MAX_TEXT_LENGTH:
        return None
    return stripped
