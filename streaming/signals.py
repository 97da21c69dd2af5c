"""Revocation triggers: logging out, deactivating or deleting a user, deleting a token,
changing a password.

Each closes the user's live sockets in the whole cluster (``streaming.auth.revoke``)
once the transaction commits; a password change closes only the cookie-authenticated
sockets whose session it invalidated. Changes that send no signal
(``QuerySet.update``) are caught by the periodic re-check (``streaming.connections``).
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_out
from django.db.models.signals import post_delete, post_save, pre_save
from django.dispatch import receiver

from .auth import revoke_soon


@receiver(user_logged_out)
def _logged_out(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    if user is not None and user.pk is not None:
        revoke_soon(user.pk)


@receiver(pre_save)
def _remember_active(sender: Any, instance: Any, **kwargs: Any) -> None:
    if sender is not get_user_model() or instance.pk is None:
        return
    before = (
        sender._default_manager.filter(pk=instance.pk)
        .values_list("is_active", "password")
        .first()
    )
    instance._streaming_before = before


@receiver(post_save)
def _deactivated(sender: Any, instance: Any, created: bool, **kwargs: Any) -> None:
    if sender is not get_user_model() or created:
        return
    before = getattr(instance, "_streaming_before", None)
    instance._streaming_before = None
    if before is None:
        return
    was_active, old_password = before
    if was_active and not instance.is_active:
        revoke_soon(instance.pk)
    elif old_password != instance.password:
        revoke_soon(instance.pk, sessions_only=True)


@receiver(post_delete)
def _deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    from rest_framework.authtoken.models import Token

    if sender is get_user_model() and instance.pk is not None:
        revoke_soon(instance.pk)
    elif sender is Token:
        revoke_soon(instance.user_id)
