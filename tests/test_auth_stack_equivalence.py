"""``StreamingAuthMiddlewareStack`` (one step, one scope copy per socket) against the
chain it replaces, ``OriginValidator(CookieMiddleware(StreamingSessionMiddleware(
StreamingAuthMiddleware(inner))))``: for each handshake the inner application sees the
same scope keys and values, the client the same refusals, and a bad scope the same error.

The stack re-implements channels' ``CookieMiddleware`` and the session resolution of its
``InstanceSessionWrapper`` (docs/performance.md, "Connections per process"): a channels
release that changes either makes these cases differ.
"""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.sessions import CookieMiddleware
from django.contrib.auth import get_user_model
from django.contrib.sessions.backends.db import SessionStore
from django.utils.functional import LazyObject
from rest_framework.authtoken.models import Token

from streaming.auth import (
    OriginValidator,
    StreamingAuthMiddleware,
    StreamingAuthMiddlewareStack,
    StreamingSessionMiddleware,
)

pytestmark = pytest.mark.django_db(transaction=True)


def chain(inner: Any) -> Any:
    return OriginValidator(
        CookieMiddleware(StreamingSessionMiddleware(StreamingAuthMiddleware(inner)))
    )


def seen_value(value: Any) -> Any:
    """A scope value in a comparable form (sessions and users by identity of content)."""
    if isinstance(value, LazyObject):
        wrapped = value._wrapped
        return ("session", type(wrapped).__name__, getattr(wrapped, "session_key", None))
    if hasattr(value, "is_authenticated"):
        return ("user", type(value).__name__, getattr(value, "pk", None))
    return value


async def through(factory: Any, scope: dict[str, Any]) -> Any:
    """What the inner app saw and what was sent, or the error raised."""
    seen: dict[str, Any] = {}
    sent: list[dict[str, Any]] = []

    async def inner(s: dict[str, Any], receive: Any, send: Any) -> None:
        seen.update(s)

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    try:
        await factory(inner)(dict(scope), receive, send)
    except Exception as exc:
        return ("raised", type(exc).__name__, str(exc))
    return {key: seen_value(value) for key, value in seen.items()}, sent


@pytest.fixture
async def credentials() -> tuple[str, str]:
    """A signed-in session's key and a DRF token, of one user."""

    def make() -> tuple[str, str]:
        user = get_user_model().objects.create_user("equivalence", password="x")
        session = SessionStore()
        session["_auth_user_id"] = str(user.pk)
        session["_auth_user_backend"] = "django.contrib.auth.backends.ModelBackend"
        session["_auth_user_hash"] = user.get_session_auth_hash()
        session.save()
        return session.session_key, Token.objects.create(user=user).key

    return await sync_to_async(make)()


BASE = {
    "type": "websocket",
    "path": "/websocket/",
    "query_string": b"",
    "client": ("127.0.0.1", 1),
    "server": ("127.0.0.1", 8000),
}


def cases(session_key: str, token: str) -> dict[str, dict[str, Any]]:
    def with_headers(*headers: tuple[bytes, bytes]) -> dict[str, Any]:
        return {**BASE, "headers": [(b"host", b"localhost"), *headers]}

    cookie = f"sessionid={session_key}".encode()
    return {
        "no credentials": with_headers(),
        "session cookie": with_headers((b"cookie", cookie)),
        "unknown session cookie": with_headers((b"cookie", b"sessionid=" + b"z" * 32)),
        "token": with_headers((b"authorization", f"Token {token}".encode())),
        "bad token": with_headers((b"authorization", b"Token abc")),
        "token and cookie": with_headers(
            (b"authorization", f"Token {token}".encode()), (b"cookie", cookie)
        ),
        "two cookie headers": with_headers((b"cookie", b"a=1"), (b"cookie", cookie)),
        "foreign origin": with_headers((b"origin", b"http://evil.example")),
        "own origin": with_headers((b"origin", b"http://localhost"), (b"cookie", cookie)),
        "host not allowed": {**BASE, "headers": [(b"host", b"evil.example")]},
        "no headers": dict(BASE),
        "session already in the scope": {
            **with_headers((b"cookie", cookie)),
            "session": SessionStore(session_key=None),
        },
        "http": {**with_headers(), "type": "http", "method": "GET"},
    }


@pytest.mark.parametrize(
    "case",
    list(cases("k", "t")),
)
async def test_the_one_step_stack_equals_the_chain(case, credentials):
    scope = cases(*credentials)[case]
    expected = await through(chain, scope)
    assert await through(StreamingAuthMiddlewareStack, scope) == expected


async def test_the_cases_cover_every_outcome(credentials):
    """The matrix is not vacuous: it holds a session user, a token user, an anonymous
    user, a refusal and an error."""
    outcomes = {name: await through(chain, scope) for name, scope in cases(*credentials).items()}
    assert outcomes["session cookie"][0]["streaming.auth_via"] == "session"
    assert outcomes["token"][0]["streaming.auth_via"] == "token"
    assert outcomes["no credentials"][0]["user"] == ("user", "AnonymousUser", None)
    assert outcomes["foreign origin"][1] == [{"type": "websocket.close", "code": 4403}]
    assert outcomes["no headers"][0] == "raised"
