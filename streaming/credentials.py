"""Whether the credentials of open sockets still hold, read from where Django keeps them.

A revocation travels the message bus (``streaming.auth.revoke``) and acts at once. When
the bus cannot carry it (the revoking process cannot reach Redis, or it has no bus: a
``manage.py shell``, a cron job), or when no signal is sent (``QuerySet.update``, raw
SQL, a session that expires), the database still says what holds. The periodic re-check
(``USER_RECHECK_INTERVAL``, :mod:`streaming.connections`) asks it here, for all the open
sockets of the process in a few queries:

* the user still exists and is active (for a cookie socket: or the backend that signed its
  session in still signs the user in, as ``AllowAllUsersModelBackend`` does inactive ones,
  which the handshake and Django over HTTP honour too);
* a cookie socket's session still exists, has not expired, names the user, and carries the
  user's current session auth hash (a password change rotates it), as Django checks for
  each HTTP request;
* a token socket's DRF token still exists.

Sessions are read from where their engine keeps them (``db`` and ``cached_db``: the table;
``cache``: the cache; ``file``: the files; ``signed_cookies``: the key itself, so a deleted
session cannot be seen); a third-party engine, whose reads may not tell a missing session
from a failed read, has its sessions taken as holding, and only their user is re-checked. A
read that fails raises: the re-check closes nothing on a store it cannot read.

Everything here is synchronous and reads the database: call it through
``database_sync_to_async``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any

from django.conf import settings

#: Ids per ``IN (...)`` query: below every database's limit on query parameters.
CHUNK = 500


@dataclass
class Standing:
    """What still holds, for the users, sessions and tokens asked about."""

    active: set[Any] = field(default_factory=set)  # user ids, active and existing
    sessions: set[str] = field(default_factory=set)  # session keys that still authenticate
    tokens: dict[Any, set[str]] = field(default_factory=dict)  # user id -> token digests


def standing(
    user_ids: Iterable[Any],
    sessions: dict[str, Any],
    token_users: Iterable[Any],
    *,
    loads_decide: bool = False,
) -> Standing:
    """What still holds of ``user_ids``, of ``sessions`` (session key -> the user id the
    socket was authenticated as) and of the tokens of ``token_users``.

    A read that fails raises (the re-check logs it and closes nothing): a session store
    that cannot be read is not a session that ended. Sessions of an engine that cannot
    tell a missing session from a failed read (third-party engines) are taken
    as holding, only their user re-checked; with ``loads_decide``, their ``load()``
    decides instead (a password change: a session it cannot read closes, as it did)."""
    from django.contrib.auth import get_user_model

    from .auth import credential_digest

    model = get_user_model()
    users = model._default_manager
    active_field = has_field(model, "is_active")
    out = Standing()
    session_users = set(sessions.values())
    everyone: dict[Any, Any] = {}  # user id -> the user, for its sessions' checks
    for chunk in _chunks(session_users):
        everyone.update((each.pk, each) for each in users.filter(pk__in=chunk))
    holders = {pk: each for pk, each in everyone.items() if getattr(each, "is_active", True)}
    out.active.update(holders)
    rest = [pk for pk in set(user_ids) if pk not in session_users]
    for chunk in _chunks(rest):
        query = users.filter(pk__in=chunk, **({"is_active": True} if active_field else {}))
        out.active.update(query.values_list("pk", flat=True))
    found = _session_data(list(sessions), loads_decide)
    if found is None:  # an engine that cannot tell: the user's standing decides
        out.sessions.update(key for key, pk in sessions.items() if pk in holders)
    else:
        for key, data in found:
            user = everyone.get(sessions[key])
            if user is None or not _authenticates(data, user):
                continue
            if user.pk in holders or _backend_signs_in(data, user):
                out.sessions.add(key)
    token_holders = [pk for pk in set(token_users) if pk in out.active]
    if token_holders:
        from rest_framework.authtoken.models import Token

        for chunk in _chunks(token_holders):
            for user_id, key in Token.objects.filter(user_id__in=chunk).values_list(
                "user_id", "key"
            ):
                out.tokens.setdefault(user_id, set()).add(credential_digest(key))
    return out


def session_still_valid(session_key: str | None, user_id: Any) -> bool:
    """Whether the session ``session_key`` still authenticates ``user_id``."""
    if not session_key:
        return False
    found = standing([user_id], {session_key: user_id}, (), loads_decide=True)
    return session_key in found.sessions


def hash_verified(stored: Any, user: Any) -> bool:
    """Whether session auth hash ``stored`` is ``user``'s: made with ``SECRET_KEY`` or one
    of ``SECRET_KEY_FALLBACKS`` (Django's ``get_user``; channels' ignores the fallbacks)."""
    from django.utils.crypto import constant_time_compare

    if not stored:
        return False
    if constant_time_compare(stored, user.get_session_auth_hash()):
        return True
    fallbacks = getattr(user, "get_session_auth_fallback_hash", None)
    return fallbacks is not None and any(
        constant_time_compare(stored, each) for each in fallbacks()
    )


def has_field(model: Any, name: str) -> bool:
    """Whether ``model`` has a database field ``name`` (``is_active`` may be a plain class
    attribute: ``AbstractBaseUser`` sets it to True, and a custom user model may keep it)."""
    from django.core.exceptions import FieldDoesNotExist

    try:
        model._meta.get_field(name)
    except FieldDoesNotExist:
        return False
    return True


def _chunks(items: Iterable[Any]) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == CHUNK:
            yield batch
            batch = []
    if batch:
        yield batch


def _session_data(
    keys: list[str], loads_decide: bool = False
) -> Iterator[tuple[str, dict[str, Any]]] | None:
    """(key, data) of each of ``keys`` that exists and has not expired; None for an engine
    whose reads cannot tell a missing session from a failed read.

    * ``db``, ``cached_db``: the table, in bulk (the cache of ``cached_db`` may outlive a
      deleted row); expired rows do not count.
    * ``cache``: the cache, ``get_many`` per chunk, read directly: the engine's own
      ``load()`` answers {} when the cache fails (a Redis failover), which would read as
      every session gone (seen, a review: every cookie socket closed with 4401).
    * ``file``: the files, read directly (the engine's ``load()`` answers {} on any
      ``OSError``, descriptors run out included): a missing file is a session gone.
    * ``signed_cookies``: the key is the data (decoding checks its age); a deleted session
      cannot be seen.
    """
    from django.contrib.sessions.backends import cache, file, signed_cookies
    from django.utils import timezone

    store_class = import_module(settings.SESSION_ENGINE).SessionStore
    model_class = getattr(store_class, "get_model_class", None)
    if model_class is not None:
        model = model_class()
        decoder = store_class()
        now = timezone.now()

        def from_table() -> Iterator[tuple[str, dict[str, Any]]]:
            for chunk in _chunks(keys):
                rows = model.objects.filter(session_key__in=chunk, expire_date__gt=now)
                for key, raw in rows.values_list("session_key", "session_data"):
                    yield key, decoder.decode(raw)

        return from_table()
    if issubclass(store_class, cache.SessionStore):
        store = store_class()
        prefix = store.cache_key_prefix

        def from_cache() -> Iterator[tuple[str, dict[str, Any]]]:
            for chunk in _chunks(keys):
                found = store._cache.get_many([prefix + key for key in chunk])
                for key in chunk:
                    data = found.get(prefix + key)
                    if data:
                        yield key, data

        return from_cache()
    if issubclass(store_class, file.SessionStore):
        return _from_files(store_class, keys)
    if issubclass(store_class, signed_cookies.SessionStore) or loads_decide:
        return ((key, data) for key in keys if (data := store_class(key).load()))
    return None


def _from_files(store_class: Any, keys: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    from django.core.exceptions import SuspiciousOperation

    for key in keys:
        store = store_class(key)
        try:
            with open(store._key_to_file(key), encoding="ascii") as session_file:
                raw = session_file.read()
        except FileNotFoundError:
            continue  # deleted (a logout, clearsessions): it no longer holds
        except SuspiciousOperation:  # not a key this engine could have made
            continue
        data = store.decode(raw) if raw else {}
        expiry = data.get("_session_expiry")
        if store.get_expiry_age(modification=store._last_modification(), expiry=expiry) > 0:
            yield key, data


def _backend_signs_in(data: dict[str, Any], user: Any) -> bool:
    """Whether the backend session ``data`` names signs inactive ``user`` in, as Django's
    ``get_user`` asks it (``backend.get_user``: ``user_can_authenticate`` for the model
    backends; ``AllowAllUsersModelBackend`` says yes)."""
    from django.contrib.auth import BACKEND_SESSION_KEY, load_backend

    path = data.get(BACKEND_SESSION_KEY)
    if not isinstance(path, str) or path not in settings.AUTHENTICATION_BACKENDS:
        return False
    backend = load_backend(path)
    can = getattr(backend, "user_can_authenticate", None)
    if can is not None:
        return bool(can(user))
    return backend.get_user(user.pk) is not None


def _authenticates(data: dict[str, Any], user: Any) -> bool:
    """Whether session ``data`` authenticates ``user``: Django's ``get_user`` check (the
    user's id, and its session auth hash or one made with a ``SECRET_KEY_FALLBACKS``)."""
    from django.contrib.auth import HASH_SESSION_KEY, SESSION_KEY

    if str(data.get(SESSION_KEY)) != str(user.pk):
        return False
    return hash_verified(data.get(HASH_SESSION_KEY), user)
