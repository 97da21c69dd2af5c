"""The chat's database access for async code, in one place.

Each function is a coroutine: it runs its ORM work in a worker thread
(``database_sync_to_async``, which also closes stale connections around it) or uses
Django's async ORM, so the endpoint never blocks the event loop on the database. Both take
their owner's turn (:mod:`streaming.db`): one user's flood of history calls queues behind
its own turns, not ahead of every other user's.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db.models import Q

from streaming.db import database_sync_to_async, fair_database

from .models import Message
from .protocol import ChatMessage


@database_sync_to_async
def save_message(sender_id: int, recipient_id: int, text: str) -> ChatMessage | None:
    """Store a message and return it as it travels on the wire.

    Returns None, and stores nothing, when the recipient does not exist or is
    inactive. One thread hop for both the check and the insert.
    """
    if not get_user_model().objects.filter(pk=recipient_id, is_active=True).exists():
        return None
    message = Message.objects.create(sender_id=sender_id, recipient_id=recipient_id, text=text)
    return message.to_chat_message()


async def is_active_user(user_id: int) -> bool:
    """Whether ``user_id`` is an active user (the async ORM, in its owner's turn)."""
    async with fair_database():
        return await get_user_model().objects.filter(pk=user_id, is_active=True).aexists()


#: The most messages one ``conversation`` call returns (the REST API's page size cap).
MAX_HISTORY = 200


async def conversation(
    me: int, other: int, *, limit: int, before: int | None = None, after: int | None = None
) -> list[ChatMessage]:
    """Messages between ``me`` and ``other`` (both directions), oldest first, with the
    Django async ORM.

    Only ``me``'s own conversation is ever read: there is no way to name two other users.
    With ``after``: the first ``limit`` messages whose id is above it (the page's catch-up,
    like ``GET /api/chat/messages/?after=``). Otherwise the newest ``limit`` messages,
    below ``before`` when given (paging back). ``limit`` is capped at :data:`MAX_HISTORY`.
    """
    limit = max(0, min(limit, MAX_HISTORY))
    if limit == 0:
        return []
    rows = Message.objects.filter(
        Q(sender_id=me, recipient_id=other) | Q(sender_id=other, recipient_id=me)
    )
    if before is not None:
        rows = rows.filter(pk__lt=before)
    async with fair_database():
        if after is not None:
            later = rows.filter(pk__gt=after).order_by("pk")[:limit]
            return [m.to_chat_message() async for m in later]
        newest = [m.to_chat_message() async for m in rows.order_by("-pk")[:limit]]
    newest.reverse()
    return newest
