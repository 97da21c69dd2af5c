"""Who is who in the chat: display names and the people one can write to."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.db.models import Exists, OuterRef, Q, QuerySet

from .models import Message


def display_name(user: Any) -> str:
    """``"Alice Liddell"``, or the username when the user has no name."""
    return user.get_full_name() or user.get_username()


def _is_account_manager() -> Q:
    """Staff and superusers: people who run the site (the demo's ``admin``), not people
    one chats with. A user model without these fields has none."""
    field_names = {field.name for field in get_user_model()._meta.get_fields()}
    condition = Q(pk__in=[])  # matches nobody
    for flag in ("is_staff", "is_superuser"):
        if flag in field_names:
            condition |= Q(**{flag: True})
    return condition


def chat_partners(user: Any) -> QuerySet[Any]:
    """Whom ``user`` can chat with, by username: active users other than ``user``,
    except staff and superusers, who are listed only once they share a conversation
    with ``user`` (so that a message from an admin is never hidden)."""
    User = get_user_model()
    talked = Message.objects.filter(
        Q(sender_id=user.pk, recipient_id=OuterRef("pk"))
        | Q(sender_id=OuterRef("pk"), recipient_id=user.pk)
    )
    return (
        User.objects.filter(is_active=True)
        .exclude(pk=user.pk)
        .filter(~_is_account_manager() | Exists(talked))
        .order_by(User.USERNAME_FIELD)
    )
