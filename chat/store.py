"""The chat's database access for async code, in one place.

Each function is a coroutine that runs its ORM work in a worker thread
(``database_sync_to_async``, which also closes stale connections around it), so
the endpoint never touches the ORM on the event loop.
"""

from __future__ import annotations

from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model

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
