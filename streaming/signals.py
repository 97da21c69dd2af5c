"""Revocation triggers, each acted on in the whole cluster once the transaction commits
(``streaming.auth.revoke``), at Serverpod's granularity:

* deactivating or deleting a user: every socket of the user;
* logging out: the sockets of that session only; deleting a DRF token: the sockets of
  that token only;
* changing a password: the cookie sockets whose session it invalidated;
* removing a permission from a user or a group, or a user from a group: the endpoints
  whose ``required_permissions`` the user no longer has.

Changes that send no signal (``QuerySet.update``) are caught by the periodic re-check
(``streaming.connections``).
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.contrib.auth.signals import user_logged_out
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_save
from django.dispatch import receiver

from .auth import revoke_soon
from .credentials import has_field


@receiver(user_logged_out)
def _logged_out(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    if user is None or user.pk is None:
        return
    session_key = getattr(getattr(request, "session", None), "session_key", None)
    if session_key:
        revoke_soon(user.pk, session_key=session_key)  # this browser, not the others
    else:
        revoke_soon(user.pk)


@receiver(pre_save)
def _remember_active(sender: Any, instance: Any, **kwargs: Any) -> None:
    if sender is not get_user_model() or instance.pk is None:
        return
    if has_field(sender, "is_active"):
        before = (
            sender._default_manager.filter(pk=instance.pk)
            .values_list("is_active", "password")
            .first()
        )
    else:  # a custom user model without the field (AbstractBaseUser's is True): always active
        password = sender._default_manager.filter(pk=instance.pk).values_list("password").first()
        before = None if password is None else (True, password[0])
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
    if was_active and not getattr(instance, "is_active", True):
        revoke_soon(instance.pk)
    elif old_password != instance.password:
        revoke_soon(instance.pk, sessions_only=True)


@receiver(post_delete)
def _deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    from rest_framework.authtoken.models import Token

    if sender is get_user_model() and instance.pk is not None:
        revoke_soon(instance.pk)
    elif sender is Token:
        revoke_soon(instance.user_id, token=instance.key)


_REMOVALS = ("post_remove", "post_clear")


@receiver(m2m_changed)
def _permissions_changed(
    sender: Any, instance: Any, action: str, reverse: bool, pk_set: Any, **kwargs: Any
) -> None:
    """A user lost permissions (directly, or through a group): re-check their endpoints.

    ``reverse``: the change was made from the other side (``permission.user_set``,
    ``group.user_set``...), and ``pk_set`` holds the users (or groups).
    """
    if action not in _REMOVALS:
        return
    user_model = get_user_model()
    direct = getattr(user_model, "user_permissions", None)
    membership = getattr(user_model, "groups", None)
    removed = list(pk_set or ())
    permission = None
    if direct is not None and sender is direct.through:
        users = removed if reverse else [instance.pk]
        if not reverse and len(removed) == 1:
            permission = _permission_names(removed)[0]
        elif reverse:
            permission = _permission_names([instance.pk])[0]
    elif membership is not None and sender is membership.through:
        users = removed if reverse else [instance.pk]
    elif sender is Group.permissions.through:
        groups = removed if reverse else [instance.pk]
        users = list(
            user_model._default_manager.filter(groups__in=groups)
            .values_list("pk", flat=True)
            .distinct()
        )
    else:
        return
    for user_id in users:
        if user_id is not None:
            revoke_soon(user_id, permission=permission, permissions=True)


def _permission_names(pks: Any) -> list[str]:
    return [
        f"{app_label}.{codename}"
        for app_label, codename in Permission.objects.filter(pk__in=pks).values_list(
            "content_type__app_label", "codename"
        )
    ]
