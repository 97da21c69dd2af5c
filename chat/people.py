"""Who is who in the chat: display names and the people one can write to."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.db.models import QuerySet


def display_name(user: Any) -> str:
    """``"Alice Liddell"``, or the username when the user has no name."""
    return user.get_full_name() or user.get_username()


def chat_partners(user: Any) -> QuerySet[Any]:
    """Active users other than ``user``, by username: whom ``user`` can chat with."""
    User = get_user_model()
    return User.objects.filter(is_active=True).exclude(pk=user.pk).order_by(User.USERNAME_FIELD)
