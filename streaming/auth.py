"""Socket authentication, the Origin check and revocation.

* :func:`StreamingAuthMiddlewareStack` wraps the WebSocket router: Origin check,
  Django session cookie, and DRF token (``Authorization: Token <key>``) in the
  handshake. Tokens in the URL are not read (they end up in logs).
* :class:`OriginValidator` refuses browser handshakes from foreign origins, reading
  settings per handshake. A handshake without ``Origin`` (non-browser) goes on.
* :func:`revoke` closes every live socket of a user in the whole cluster (4401).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import time
from importlib import import_module
from typing import Any
from urllib.parse import parse_qs, urlsplit

from channels.middleware import BaseMiddleware
from channels.sessions import CookieMiddleware, InstanceSessionWrapper, SessionMiddleware
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.http import parse_cookie
from django.utils.functional import LazyObject

from .db import HANDSHAKES, Owner, database_sync_to_async, owned_by
from .exceptions import MessagingUnavailable
from .serialization import SerializableEntity

logger = logging.getLogger("streaming.auth")

#: Scope key set to True when the handshake carried credentials that do not work.
AUTH_FAILED_KEY = "streaming.auth_failed"
#: Scope key: how the handshake's user was authenticated, ``"token"`` or ``"session"``
#: (absent for anonymous sockets).
AUTH_VIA_KEY = "streaming.auth_via"
#: Scope key: a digest of the credential that authenticated the socket (its session key
#: or its token), so that revoking one credential closes only its sockets.
CREDENTIAL_KEY = "streaming.credential"


def credential_digest(secret: str) -> str:
    """What identifies a session key or token in revocations (never the secret itself,
    which would travel through Redis)."""
    import hashlib

    return hashlib.sha256(secret.encode("utf-8")).hexdigest()[:32]


TOKEN_KEYWORD = "Token"


class RevokedAuthentication(SerializableEntity):
    """Internal bus message: close every socket of ``user_id`` with 4401.

    ``sessions_only``: the user's password changed. Only sockets authenticated by a
    session cookie whose session no longer holds close: its auth hash no longer matches
    the password, or (the browser that changed it: ``update_session_auth_hash`` cycles
    its key) the session is gone. Token sockets stay.
    """

    class_name = "streaming.RevokedAuthentication"
    user_id: int
    sessions_only: bool = False
    #: Only sockets authenticated by this credential (:func:`credential_digest`) close.
    credential: str | None = None
    #: Not a credential but a permission changed: each socket re-checks its open
    #: endpoints' ``required_permissions`` (only those requiring ``permission``, if
    #: given) and closes the endpoints the user no longer passes. The socket stays.
    permissions: bool = False
    permission: str | None = None
    #: When it was issued (``time.time()`` of the revoking server): a revocation of the
    #: whole user reaches only the sockets signed in before then (less
    #: ``REVOCATION_CLOCK_SKEW``), however late it is delivered.
    issued_at: float | None = None


#: Seconds a server's clock may be ahead of another's for revocations: a socket signed in
#: less than this after a whole-user revocation was issued is still closed by it.
REVOCATION_CLOCK_SKEW = 5.0


def revocation_channel(user_id: int) -> str:
    return f"streaming.revoked.{user_id}"


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            try:
                return value.decode("latin-1")
            except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
                return None
    return None


@database_sync_to_async
def _user_for_token(key: str) -> Any | None:
    """The active user of DRF token ``key``, else None: one query, for the user alone.

    Not ``Token.objects.select_related("user")``: that fills the one-to-one caches both
    ways (``token.user`` and ``user.auth_token``), a reference cycle, and Django compiles
    a select_related query with a self-referencing closure, another one. The user lives
    as long as its socket; with those cycles every authenticated socket left garbage
    that only the cyclic collector frees, which ``tune_gc()`` runs seldom.
    """
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    User = get_user_model()
    token_key = f"{Token._meta.get_field('user').related_query_name()}__key"  # auth_token__key
    try:
        user = User._default_manager.get(**{token_key: key})
    except (User.DoesNotExist, ValueError):
        return None
    return user if user.is_active else None


def token_of(key: str) -> str:
    """The token of an ``Authorization`` value ``"Token <key>"``."""
    return key.strip().partition(" ")[2].strip()


async def user_for_key(key: Any) -> Any | None:
    """The active user for an ``Authorization`` value (``"Token <key>"``), else None."""
    if not isinstance(key, str):
        return None
    keyword, _, token = key.strip().partition(" ")
    token = token.strip()
    if keyword != TOKEN_KEYWORD or not token or " " in token or len(token) > 256:
        return None
    return await _user_for_token(token)


class StreamingAuthMiddleware(BaseMiddleware):
    """Sets ``scope["user"]``: token user, else session user, else AnonymousUser.

    A handshake whose ``Authorization`` header does not resolve to an active user
    gets ``scope[AUTH_FAILED_KEY] = True``: the consumer accepts it, then closes it
    with 4401 so that the client knows to stop retrying with those credentials.
    """

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        scope = dict(scope)  # one copy, not BaseMiddleware's second: it lives as long as the socket
        await _authenticate(scope)
        return await self.inner(scope, receive, send)


_NO_KEY_ATTR = object()  # a session object that is not a Django session: read it anyway


async def _authenticate(scope: dict[str, Any]) -> None:
    """Set ``scope["user"]`` (and the ``streaming.*`` auth keys) in ``scope``, in place."""
    header = _header(scope, b"authorization")
    if header is not None:
        # Looked up in the credential's own database turn: one user's burst of handshakes
        # (200 sockets opened at once) queued ahead of everyone else's (streaming.db).
        with owned_by(Owner((HANDSHAKES, header))):
            user = await user_for_key(header)
        if user is None:
            scope[AUTH_FAILED_KEY] = True
            user = AnonymousUser()
        else:
            scope[AUTH_VIA_KEY] = "token"
            scope[CREDENTIAL_KEY] = credential_digest(token_of(header))
    elif "session" in scope:
        if getattr(scope["session"], "session_key", _NO_KEY_ATTR) is None:
            # No session cookie: a Django session without a key is empty
            # (SessionBase._get_session), so _session_user can only answer
            # AnonymousUser. Answering here spares every cookie-less handshake its
            # thread hop (database_sync_to_async): docs/performance.md, "Per connect".
            user = AnonymousUser()
        else:
            with owned_by(Owner((HANDSHAKES, getattr(scope["session"], "session_key", None)))):
                user = await _session_user(scope["session"])
        if getattr(user, "is_authenticated", False):
            scope[AUTH_VIA_KEY] = "session"
            key = getattr(scope["session"], "session_key", None)
            if key:
                scope[CREDENTIAL_KEY] = credential_digest(key)
    else:
        user = AnonymousUser()
    scope["user"] = user
    if not getattr(user, "is_authenticated", False) and requires_user(scope):
        scope[AUTH_FAILED_KEY] = True  # closed with 4401, not served anonymously


#: The handshake's query parameter by which a client asks to be signed in or refused:
#: ``?require_user=1``. streampod.js adds it when it reconnects after a 4401 with the
#: page's cookie, which the browser may have renewed (docs/protocol.md, "Handshake").
REQUIRE_USER_PARAM = "require_user"


def requires_user(scope: dict[str, Any]) -> bool:
    """Whether the handshake asked (``?require_user=1``) to be refused (4401) unless its
    credentials sign in a user, rather than be served as an anonymous socket."""
    query = scope.get("query_string") or b""
    if REQUIRE_USER_PARAM.encode() not in query:
        return False
    values = parse_qs(query.decode("latin-1")).get(REQUIRE_USER_PARAM, ())
    return "1" in values


@database_sync_to_async
def _session_user(session: Any) -> Any:
    """The user a session cookie signs in, as Django's ``get_user`` reads it for a request
    (the session's user and backend, ``backend.get_user``, the session auth hash), but for
    a socket, which cannot set a cookie: read-only.

    * A hash made with one of ``SECRET_KEY_FALLBACKS`` counts, as over HTTP. (channels'
      ``get_user`` ignores the fallbacks and flushes the session: seen, a review, after a
      key rotation every reconnecting socket came back anonymous and logged its browser
      out of the site.)
    * A stale hash (the password changed since) gives ``AnonymousUser``; the session is
      left for the next HTTP request to flush, as Django does.
    """
    from django.contrib.auth import (
        BACKEND_SESSION_KEY,
        HASH_SESSION_KEY,
        SESSION_KEY,
        get_user_model,
        load_backend,
    )
    from django.core.exceptions import ValidationError

    from .credentials import hash_verified

    try:
        user_id = get_user_model()._meta.pk.to_python(session[SESSION_KEY])
        backend_path = session[BACKEND_SESSION_KEY]
    except (KeyError, ValueError, ValidationError):
        return AnonymousUser()
    if backend_path not in settings.AUTHENTICATION_BACKENDS:
        return AnonymousUser()
    user = load_backend(backend_path).get_user(user_id)
    if user is None:
        return AnonymousUser()
    if hasattr(user, "get_session_auth_hash") and not hash_verified(
        session.get(HASH_SESSION_KEY), user
    ):
        return AnonymousUser()
    return user


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


def _normalise(origin: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return parts.scheme, parts.hostname.lower(), port or _default_port(parts.scheme)


def _request_scheme(scope: dict[str, Any]) -> str:
    proxy_header = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if proxy_header:
        name, expected = proxy_header
        # Django names it HTTP_X_FORWARDED_PROTO; the ASGI header is x-forwarded-proto.
        header = name.lower().removeprefix("http_").replace("_", "-").encode()
        if _header(scope, header) == expected:
            return "https"
    return "https" if scope.get("scheme") in ("wss", "https") else "http"


def origin_allowed(scope: dict[str, Any]) -> bool:
    """True when the handshake has no Origin, or one of the request's own or trusted."""
    origin = _header(scope, b"origin")
    if origin is None:
        return True  # not a browser: authentication decides
    wanted = _normalise(origin)
    if wanted is None:
        return False
    host = _header(scope, b"host")
    if host:
        scheme = _request_scheme(scope)
        own = _normalise(f"{scheme}://{host}")
        if own is not None and own == wanted:
            return True
    for trusted in getattr(settings, "CSRF_TRUSTED_ORIGINS", ()):
        if "*" in trusted:
            scheme, _, rest = trusted.partition("://")
            suffix = rest.removeprefix("*")  # "*.example.com" -> ".example.com"
            host_part = _normalise(f"{scheme}://x{suffix}")
            if (
                host_part is not None
                and wanted[0] == scheme
                and wanted[1].endswith(suffix.split(":")[0].lower())
                and wanted[2] == host_part[2]
            ):
                return True
        elif _normalise(trusted) == wanted:
            return True
    return False


def host_allowed(scope: dict[str, Any]) -> bool:
    """Whether the handshake's ``Host`` header is in ``ALLOWED_HOSTS``, as Django checks
    it for HTTP requests (with the same DEBUG defaults when ``ALLOWED_HOSTS`` is empty)."""
    host = _header(scope, b"host")
    if host is None:
        # As Django: without a Host header, the server's own name is checked. Only a
        # test harness (channels' communicator) sends neither.
        server = scope.get("server")
        if not server:
            return True
        host = str(server[0])
    allowed_hosts = tuple(settings.ALLOWED_HOSTS)  # read per handshake, as before
    if len(host) > MAX_CACHED_HOST:
        return _host_valid(host, allowed_hosts, settings.DEBUG)
    return _host_valid_cached(host, allowed_hosts, settings.DEBUG)


#: Longest ``Host`` value whose check is remembered (a DNS name has at most 253
#: characters, then a port): the cache holds at most 64 such answers.
MAX_CACHED_HOST = 270


def _host_valid(host: str, allowed_hosts: tuple[str, ...], debug: bool) -> bool:
    """Django's own check of ``host`` against ``allowed_hosts`` (and DEBUG's defaults)."""
    from django.http.request import split_domain_port, validate_host

    domain, _port = split_domain_port(host)
    allowed = list(allowed_hosts)
    if debug and not allowed:
        allowed = [".localhost", "127.0.0.1", "[::1]"]
    return bool(domain) and validate_host(domain, allowed)


# Each handshake of a server names the same few hosts: the matching is done once per
# (host, settings), not per socket.
_host_valid_cached = functools.lru_cache(maxsize=64)(_host_valid)


class OriginValidator:
    """Refuses (HTTP 403) WebSocket handshakes for hosts outside ``ALLOWED_HOSTS``
    and from foreign browser origins.

    Unlike channels' ``AllowedHostsOriginValidator`` it reads settings per
    handshake, lets Origin-less (non-browser) clients through, and is not widened
    by ``ALLOWED_HOSTS = ["*"]``: the session cookie would otherwise let any site
    drive a signed-in user's socket. The ``Host`` check is Django's own, so a socket
    is refused exactly where a plain HTTP request gets 400.
    """

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] == "websocket" and not _admitted(scope):
            return await _refuse(receive, send)
        return await self.application(scope, receive, send)


def _admitted(scope: dict[str, Any]) -> bool:
    """The ``Host`` and ``Origin`` checks of a WebSocket handshake; a refusal is logged."""
    if not host_allowed(scope):
        logger.warning(
            "refused WebSocket handshake for host %r (not in ALLOWED_HOSTS)",
            (_header(scope, b"host") or "")[:100],
        )
        return False
    if not origin_allowed(scope):
        logger.info(
            "refused WebSocket handshake from origin %r",
            (_header(scope, b"origin") or "")[:100],
        )
        return False
    return True


async def _refuse(receive: Any, send: Any) -> None:
    await receive()  # websocket.connect
    await send({"type": "websocket.close", "code": 4403})


class StreamingSessionMiddleware(SessionMiddleware):
    """channels' ``SessionMiddleware`` (``scope["session"]`` from the cookie) for sockets.

    channels wraps ``send`` so that an HTTP response can save the session and set
    its cookie; a WebSocket frame can do neither, yet the wrapper inspects the
    session on every frame sent (about 10 us a frame). Here ``send`` goes to the
    server untouched. As with channels, a socket that changes the session saves it
    itself (``await scope["session"].asave()``).
    """

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] != "websocket":
            return await super().__call__(scope, receive, send)
        wrapper = InstanceSessionWrapper(scope, send)
        await wrapper.resolve_session()
        return await self.inner(wrapper.scope, receive, send)


class _WebSocketAuthStack:
    """``OriginValidator(CookieMiddleware(StreamingSessionMiddleware(StreamingAuthMiddleware(
    inner))))`` for WebSocket scopes, in one step: the same checks, the same scope keys
    (``cookies``, ``session``, ``user`` and the ``streaming.*`` auth keys), the same
    refusals, but one copy of the scope and one coroutine frame where the chain keeps
    four copies and five frames alive for as long as each socket is open (about 2.5 KB
    a socket, docs/performance.md "Connections per process"). Other scope types go
    through the chain itself.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.chain = OriginValidator(
            CookieMiddleware(StreamingSessionMiddleware(StreamingAuthMiddleware(inner)))
        )

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] != "websocket":
            return await self.chain(scope, receive, send)
        if not _admitted(scope):
            return await _refuse(receive, send)
        if "headers" not in scope:
            raise ValueError(
                "CookieMiddleware was passed a scope that did not have a headers key "
                "(make sure it is only passed HTTP or WebSocket connections)"
            )
        scope = dict(scope, cookies=_cookies(scope))
        if "session" not in scope:  # as channels' InstanceSessionWrapper.resolve_session
            session = scope["session"] = LazyObject()
            store = import_module(settings.SESSION_ENGINE).SessionStore
            session._wrapped = store(scope["cookies"].get(settings.SESSION_COOKIE_NAME))
        await _authenticate(scope)
        return await self.inner(scope, receive, send)


def _cookies(scope: dict[str, Any]) -> dict[str, str]:
    """As channels' ``CookieMiddleware``: the first ``cookie`` header, parsed by Django."""
    for name, value in scope["headers"]:
        if name == b"cookie":
            return parse_cookie(value.decode("latin1"))
    return {}


def StreamingAuthMiddlewareStack(inner: Any) -> Any:
    """Origin check, session cookie, DRF token: what ``/websocket/`` needs in front of it.

    Equivalent to ``OriginValidator(CookieMiddleware(StreamingSessionMiddleware(
    StreamingAuthMiddleware(inner))))``, with one scope copy per socket instead of four.
    """
    return _WebSocketAuthStack(inner)


@database_sync_to_async
def session_still_valid(session_key: str | None, user_id: Any) -> bool:
    """Whether the session ``session_key`` still authenticates ``user_id``: it exists, has
    not expired, and carries the user's current session auth hash, as Django checks for
    each HTTP request (a password change invalidates every other session of the user).
    """
    from .credentials import session_still_valid as holds

    return holds(session_key, user_id)


async def revoke(
    user_id: int,
    *,
    session_key: str | None = None,
    token: str | None = None,
    permission: str | None = None,
    permissions: bool = False,
    sessions_only: bool = False,
    issued_at: float | None = None,
) -> None:
    """Revoke, in the whole cluster, what ``user_id``'s sockets may do.

    Serverpod's granularity (``authenticationRevoked``):

    * nothing else given: the user; every socket closes with 4401;
    * ``session_key`` or ``token``: one credential; only the sockets it authenticated
      close (logging out in one browser leaves the user's other browsers connected);
    * ``permission`` (``"app_label.codename"``), or ``permissions=True`` for any: the
      endpoints whose ``required_permissions`` the user no longer has close (they get
      ``stream_closed``; their frames get ``forbidden``); the sockets stay;
    * ``sessions_only``: the password changed; cookie sockets whose session it
      invalidated close.

    Published through the message bus: every server acts on its own sockets. Raises
    ``MessagingUnavailable`` if the cluster cannot be reached. ``issued_at`` (default:
    now) stamps it: a whole-user revocation closes only the sockets signed in before it
    (:data:`REVOCATION_CLOCK_SKEW` allowed), so that one delivered late (tried again
    while Redis was unreachable) spares the sockets of a user made active again since.
    """
    from .messages import post_message

    secret = session_key if session_key is not None else token
    await post_message(
        revocation_channel(user_id),
        RevokedAuthentication(
            user_id=user_id,
            sessions_only=sessions_only,
            credential=credential_digest(secret) if secret is not None else None,
            permissions=permissions or permission is not None,
            permission=permission,
            issued_at=time.time() if issued_at is None else issued_at,
        ),
    )


def revoke_soon(user_id: int, **what: Any) -> None:
    """:func:`revoke` from sync code (signal handlers), after the transaction commits.

    Returns at once where an event loop outlives the call (a signal sent in async code,
    or in a sync view of an ASGI server: asgiref runs it in a thread on behalf of the
    server's loop), and the revocation is sent from that loop, tried again while the bus
    cannot carry it (:func:`_revoke_until_sent`). Elsewhere (a management command, a
    shell) it is sent in place, once; :class:`~streaming.connections.Connections`'
    re-check closes what it could not reach within ``USER_RECHECK_INTERVAL``.
    """
    from asgiref.sync import async_to_sync
    from django.db import transaction

    def run() -> None:
        stamped = {**what, "issued_at": time.time()}  # once: every try carries it
        try:
            loop = _server_loop()
            if loop is None:
                async_to_sync(revoke)(user_id, **stamped)
            elif _running_in(loop):
                _keep_trying(user_id, stamped)
            else:
                loop.call_soon_threadsafe(_keep_trying, user_id, stamped)
        except Exception:
            logger.exception("could not revoke the sockets of user %s", user_id)

    transaction.on_commit(run)


#: Seconds between the tries of a revocation the bus could not carry (the last one
#: repeats), and for how long it is tried: the re-check is the backstop after that.
RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
RETRY_FOR = 600.0
#: Revocations being tried again at most, per process; more are logged and dropped.
MAX_RETRYING = 10_000

_retrying: set[asyncio.Task[None]] = set()
_no_threadlocal_logged = False


def _running_in(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _server_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop a revocation made in this thread can go on trying from: the
    thread's running loop, else the loop of the ASGI server whose sync code this thread
    runs (asgiref's ``SyncToAsync.threadlocal``, which ``async_to_sync`` reads too).
    None: no loop outlives the call. If asgiref no longer has that thread-local, one
    warning says so and revocations from sync views are sent in place, once."""
    global _no_threadlocal_logged
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        pass
    from asgiref.sync import SyncToAsync

    local = getattr(SyncToAsync, "threadlocal", None)
    if local is None:
        if not _no_threadlocal_logged:
            _no_threadlocal_logged = True
            logger.warning(
                "asgiref.sync.SyncToAsync has no threadlocal: revocations made in sync "
                "views are sent once, in place, and not tried again"
            )
        return None
    loop = getattr(local, "main_event_loop", None)
    if (
        isinstance(loop, asyncio.AbstractEventLoop)
        and getattr(local, "main_event_loop_pid", None) == os.getpid()
        and loop.is_running()
    ):
        return loop
    return None


def _keep_trying(user_id: int, what: dict[str, Any]) -> None:
    """On the loop: send the revocation in a task of its own, tried again until sent."""
    if len(_retrying) >= MAX_RETRYING:
        logger.error(
            "could not revoke the sockets of user %s: %d revocations are being tried "
            "already; the re-check will close them",
            user_id,
            len(_retrying),
        )
        return
    task = asyncio.get_running_loop().create_task(_revoke_until_sent(user_id, what))
    _retrying.add(task)
    task.add_done_callback(_retrying.discard)


async def _revoke_until_sent(user_id: int, what: dict[str, Any]) -> None:
    """:func:`revoke`, tried again after ``RETRY_DELAYS`` for ``RETRY_FOR`` seconds while
    the bus cannot carry it (``MessagingUnavailable``: Redis unreachable from here). A
    revocation that arrives twice closes nothing twice."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RETRY_FOR
    for attempt in itertools.count():
        try:
            await revoke(user_id, **what)
        except MessagingUnavailable as exc:
            delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
            if loop.time() + delay > deadline:
                logger.error(
                    "could not revoke the sockets of user %s in %.0fs (%s): the re-check "
                    "(USER_RECHECK_INTERVAL) closes them if their credentials are gone",
                    user_id,
                    RETRY_FOR,
                    exc,
                )
                return
            if attempt == 0:
                logger.warning(
                    "could not revoke the sockets of user %s yet (%s): trying again",
                    user_id,
                    exc,
                )
            await asyncio.sleep(delay)
        except Exception:
            logger.exception("could not revoke the sockets of user %s", user_id)
            return
        else:
            if attempt:
                logger.warning("revoked the sockets of user %s at try %d", user_id, attempt + 1)
            return
