"""Socket authentication and the Origin check, through channels' WebsocketCommunicator.

The application under test is the real stack (``StreamingAuthMiddlewareStack`` in
front of ``StreamingConsumer``) serving endpoints defined here. Settings are read per
handshake, so ``override_settings`` changes the answer without any re-import.
"""

import asyncio
import json

import pytest
from asgiref.sync import sync_to_async
from django.test import Client, override_settings

from streaming.auth import StreamingAuthMiddlewareStack, origin_allowed, user_for_key
from streaming.consumer import StreamingConsumer
from streaming.endpoint import Endpoint
from streaming.serialization import SerializableEntity
from streaming.testing import StreamingCommunicator


class Identity(SerializableEntity):
    user_id: int | None


class Knock(SerializableEntity):
    text: str


class WhoEndpoint(Endpoint):
    """Says who the session belongs to when it opens."""

    async def stream_opened(self, session):
        await self.send_stream_message(
            session, Identity(user_id=session.auth.authenticated_user_id)
        )


class MembersEndpoint(Endpoint):
    login_required = True

    async def stream_opened(self, session):
        await self.send_stream_message(
            session, Identity(user_id=session.auth.authenticated_user_id)
        )

    async def handle_stream_message(self, session, message):
        await self.send_stream_message(session, message)


def stack():
    return StreamingAuthMiddlewareStack(
        StreamingConsumer.as_asgi(endpoints=[WhoEndpoint, MembersEndpoint])
    )


def communicator(
    *, origin=None, host="testserver", authorization=None, cookie=None, path="/websocket/"
):
    headers = [(b"host", host.encode())]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    if authorization is not None:
        headers.append((b"authorization", authorization.encode()))
    if cookie is not None:
        headers.append((b"cookie", cookie.encode()))
    return StreamingCommunicator(stack(), path, headers=headers)


def scope(origin=None, host="example.com", scheme="ws", extra=()):
    headers = [(b"host", host.encode()), *extra]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    return {"type": "websocket", "scheme": scheme, "headers": headers}


# -- origin_allowed ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "host", "scheme", "allowed"),
    [
        (None, "example.com", "ws", True),  # not a browser: authentication decides
        ("http://example.com", "example.com", "ws", True),
        ("http://example.com:80", "example.com", "ws", True),  # default port spelled out
        ("http://EXAMPLE.com", "example.com", "ws", True),  # host names are case-insensitive
        ("http://example.com:8000", "example.com:8000", "ws", True),
        ("https://example.com", "example.com", "wss", True),
        ("https://example.com", "example.com", "ws", False),  # scheme differs
        ("http://example.com", "example.com", "wss", False),
        ("http://example.com:8001", "example.com:8000", "ws", False),  # port differs
        ("http://example.com", "example.com:8000", "ws", False),
        ("http://sub.example.com", "example.com", "ws", False),
        ("http://evil.example", "example.com", "ws", False),
        ("null", "example.com", "ws", False),
        ("file://", "example.com", "ws", False),
        ("http://[bad", "example.com", "ws", False),
        ("http://example.com", "", "ws", False),  # no Host to compare with
    ],
)
def test_origin_must_be_the_requests_own(origin, host, scheme, allowed):
    assert origin_allowed(scope(origin, host, scheme)) is allowed


def test_csrf_trusted_origins_are_read_per_handshake():
    handshake = scope("https://app.example.com")
    assert origin_allowed(handshake) is False
    with override_settings(CSRF_TRUSTED_ORIGINS=["https://app.example.com"]):
        assert origin_allowed(handshake) is True
        assert origin_allowed(scope("http://app.example.com")) is False  # scheme counts
        assert origin_allowed(scope("https://app.example.com:8443")) is False  # so does the port
    assert origin_allowed(handshake) is False


def test_csrf_trusted_origins_wildcards_match_subdomains_only():
    with override_settings(CSRF_TRUSTED_ORIGINS=["https://*.example.org"]):
        assert origin_allowed(scope("https://chat.example.org")) is True
        assert origin_allowed(scope("https://a.b.example.org")) is True
        assert origin_allowed(scope("https://evilexample.org")) is False
        assert origin_allowed(scope("https://example.org.evil.test")) is False
        assert origin_allowed(scope("http://chat.example.org")) is False
        assert origin_allowed(scope("https://chat.example.org:8443")) is False


def test_allowed_hosts_star_does_not_widen_the_origin_check():
    with override_settings(ALLOWED_HOSTS=["*"]):
        assert origin_allowed(scope("http://evil.example")) is False
        assert origin_allowed(scope("http://example.com")) is True


def test_secure_proxy_ssl_header_makes_the_request_https():
    proxied = scope("https://example.com", extra=[(b"x-forwarded-proto", b"https")])
    assert origin_allowed(proxied) is False  # the header is not trusted by default
    with override_settings(SECURE_PROXY_SSL_HEADER=("HTTP_X_FORWARDED_PROTO", "https")):
        assert origin_allowed(proxied) is True
        assert origin_allowed(scope("https://example.com")) is False  # header absent


# -- the Origin check through the stack ------------------------------------------------------


async def test_foreign_origin_handshake_is_refused():
    comm = communicator(origin="http://evil.example")
    connected, code = await comm.connect()
    assert connected is False and code == 4403
    await comm.disconnect()


async def test_own_origin_and_missing_origin_handshakes_are_accepted():
    for origin in ("http://testserver", None):
        async with communicator(origin=origin) as comm:
            assert await comm.receive_message("who") == Identity(user_id=None)


async def test_trusted_origin_is_accepted_without_reimport():
    with override_settings(CSRF_TRUSTED_ORIGINS=["https://app.example.com"]):
        async with communicator(origin="https://app.example.com") as comm:
            assert await comm.receive_message("who") == Identity(user_id=None)
    comm = communicator(origin="https://app.example.com")
    connected, _ = await comm.connect()
    assert connected is False
    await comm.disconnect()


# -- credentials -------------------------------------------------------------------------------


async def test_anonymous_without_credentials():
    async with communicator() as comm:
        assert await comm.receive_message("who") == Identity(user_id=None)
        await comm.assert_nothing_received()  # `members` was not opened
        await comm.send_message("members", Knock(text="x"), frame_id="k")
        err = await comm.receive_error("not_authenticated")
        assert err["endpoint"] == "members" and err["id"] == "k"


async def test_token_header_sets_the_user(make_user):
    user, key = await make_user("alice", password=None)
    async with communicator(authorization=key) as comm:
        assert await comm.receive_message("who") == Identity(user_id=user.pk)
        assert await comm.receive_message("members") == Identity(user_id=user.pk)
        await comm.send_message("members", Knock(text="in"))
        assert await comm.receive_message("members") == Knock(text="in")


@pytest.mark.parametrize(
    "header", ["Token nope", "Bearer {raw}", "{raw}", "Token {raw} x", "Token"]
)
async def test_invalid_token_header_is_accepted_then_closed_4401(make_user, header):
    _, key = await make_user("alice", password=None)
    comm = communicator(authorization=header.format(raw=key.removeprefix("Token ")))
    connected, _ = await comm.connect()
    assert connected is True
    assert await comm.receive_close() == 4401
    await comm.disconnect()


async def test_inactive_users_token_is_closed_4401(make_user):
    _, key = await make_user("sleeper", password=None, is_active=False)
    comm = communicator(authorization=key)
    connected, _ = await comm.connect()
    assert connected is True
    assert await comm.receive_close() == 4401
    await comm.disconnect()


async def test_token_in_the_query_string_is_ignored(make_user):
    _, key = await make_user("alice", password=None)
    raw = key.removeprefix("Token ")
    async with communicator(path=f"/websocket/?token={raw}&authorization=Token%20{raw}") as comm:
        assert await comm.receive_message("who") == Identity(user_id=None)
        await comm.assert_nothing_received()


async def session_of(user) -> str:
    """The session key of a fresh login of ``user`` (what a browser's cookie carries)."""

    def log_in():
        client = Client()
        client.force_login(user)
        return client.cookies["sessionid"].value

    return await sync_to_async(log_in)()


async def test_require_user_refuses_an_anonymous_handshake_with_4401():
    """``?require_user=1`` (streampod.js after a 4401 with the page's cookie): a handshake
    that signs in no user is closed with 4401, not served anonymously."""
    comm = communicator(path="/websocket/?require_user=1")
    connected, _ = await comm.connect()
    assert connected is True
    assert await comm.receive_close() == 4401
    await comm.disconnect()


@pytest.mark.parametrize("query", ["require_user=0", "require_user=", "x=require_user"])
async def test_require_user_is_asked_only_by_its_value_1(query):
    async with communicator(path=f"/websocket/?{query}") as comm:
        assert await comm.receive_message("who") == Identity(user_id=None)


async def test_require_user_serves_a_handshake_that_signs_in(make_user):
    user, _ = await make_user("alice", password=None)
    session_id = await session_of(user)
    async with communicator(
        path="/websocket/?require_user=1",
        origin="http://testserver",
        cookie=f"sessionid={session_id}",
    ) as comm:
        assert await comm.receive_message("who") == Identity(user_id=user.pk)


async def test_session_cookie_sets_the_user(make_user):
    user, _ = await make_user("alice", password=None)
    session_id = await session_of(user)
    async with communicator(origin="http://testserver", cookie=f"sessionid={session_id}") as comm:
        assert await comm.receive_message("who") == Identity(user_id=user.pk)
        assert await comm.receive_message("members") == Identity(user_id=user.pk)


async def test_auth_command_switches_identity_and_reopens_endpoints(make_user):
    alice, alice_key = await make_user("alice", password=None)
    bob, bob_key = await make_user("bob", password=None)
    async with communicator() as comm:
        assert await comm.receive_message("who") == Identity(user_id=None)
        # The answer comes once the endpoints are open for the new identity, after
        # what their stream_opened hooks sent.
        await comm.send_command("auth", {"key": alice_key})
        assert await comm.receive_message("who") == Identity(user_id=alice.pk)
        assert await comm.receive_message("members") == Identity(user_id=alice.pk)
        assert await comm.receive_command("auth") == {"user_id": alice.pk}
        await comm.send_command("auth", {"key": bob_key})
        assert await comm.receive_message("who") == Identity(user_id=bob.pk)
        assert await comm.receive_message("members") == Identity(user_id=bob.pk)
        assert await comm.receive_command("auth") == {"user_id": bob.pk}
        await comm.send_command("auth", {"key": "Token wrong"})
        assert await comm.receive_message("who") == Identity(user_id=None)
        assert await comm.receive_command("auth") == {"user_id": None}
        await comm.send_message("members", Knock(text="x"))
        await comm.receive_error("not_authenticated")
        await comm.assert_nothing_received()


async def test_anonymous_timeout_closes_sockets_that_sign_in_no_user(make_user, settings):
    """``ANONYMOUS_TIMEOUT``: an app whose every socket is a user's closes the others, so
    that nobody holds anonymous sockets (helper "attacker13": 5,000 from one address, each
    with a message begun and never finished, held 390 MB). A socket signed in at the
    handshake, or by an ``auth`` command in time, stays; one whose ``auth`` fails is timed
    again from its answer."""
    settings.STREAMING = {"ANONYMOUS_TIMEOUT": 0.3}
    alice, alice_key = await make_user("alice", password=None)
    async with (
        communicator(authorization=alice_key) as signed_in,
        communicator() as signs_in_later,
    ):
        assert await signed_in.receive_message("who") == Identity(user_id=alice.pk)
        assert await signed_in.receive_message("members") == Identity(user_id=alice.pk)
        assert await signs_in_later.receive_message("who") == Identity(user_id=None)
        await signs_in_later.send_command("auth", {"key": alice_key})
        assert await signs_in_later.receive_message("who") == Identity(user_id=alice.pk)
        assert await signs_in_later.receive_message("members") == Identity(user_id=alice.pk)
        assert await signs_in_later.receive_command("auth") == {"user_id": alice.pk}
        anonymous = communicator()  # opened after both: its timer fires after theirs would
        connected, _ = await anonymous.connect()
        assert connected
        assert await anonymous.receive_message("who") == Identity(user_id=None)
        assert await anonymous.receive_close() == 4401
        await anonymous.disconnect()
        for comm in (signed_in, signs_in_later):  # both still open
            await comm.send_command("ping", {})
            assert await comm.receive_command("pong") == {}
        await signs_in_later.send_command("auth", {"key": "Token wrong"})  # signed out
        assert await signs_in_later.receive_message("who") == Identity(user_id=None)
        assert await signs_in_later.receive_command("auth") == {"user_id": None}
        assert await signs_in_later.receive_close() == 4401


async def test_failed_auth_commands_do_not_extend_the_anonymous_timeout(settings):
    """Helper "reviewer13": each failed ``auth`` restarted the clock, so a socket sending a
    wrong key a little more often than the timeout stayed open for good. One deadline
    from the open: the wrong keys are answered, and the socket is closed at it."""
    settings.STREAMING = {"ANONYMOUS_TIMEOUT": 0.5}
    comm = communicator()
    connected, _ = await comm.connect()
    assert connected
    assert await comm.receive_message("who") == Identity(user_id=None)
    frames = []
    async with asyncio.timeout(10):  # a failure guard: before, answered for ever
        while True:  # a wrong key as fast as they are answered, until the close
            await comm.send_command("auth", {"key": "Token wrong"})
            frame = await comm.receive_output(timeout=5)
            frames.append(frame)
            if frame["type"] == "websocket.close":
                break
            assert json.loads(frame["text"]) == {"command": "auth", "args": {"user_id": None}}
    assert frames[-1]["code"] == 4401
    await comm.disconnect()


async def test_auth_is_answered_while_a_hook_is_blocked():
    gate, entered = asyncio.Event(), asyncio.Event()

    class SlowEndpoint(Endpoint):
        async def handle_stream_message(self, session, message):
            entered.set()
            await gate.wait()

    async with StreamingCommunicator(endpoints=[SlowEndpoint]) as comm:
        await comm.send_message("slow", Knock(text="x"))
        await entered.wait()  # the hook holds the `slow` lane
        await comm.send_command("auth", {"key": None})
        assert await comm.receive_command("auth") == {"user_id": None}
        gate.set()


@pytest.mark.parametrize("key", [None, 5, ["Token x"], "", "Token " + "a" * 300, "Token a b"])
async def test_user_for_key_refuses_malformed_keys(key):
    assert await user_for_key(key) is None


# -- revocations sent from sync code (streaming.auth.revoke_soon) ------------------------------


async def test_sync_code_run_for_the_server_finds_its_loop_for_revocations():
    """A sync view runs in asgiref's thread on behalf of the server's loop: a revocation it
    makes is handed to that loop (tried again there), and the view does not wait for it."""
    from streaming.auth import _server_loop

    assert await sync_to_async(_server_loop)() is asyncio.get_running_loop()


async def test_without_asgirefs_threadlocal_revocations_are_sent_in_place(monkeypatch, caplog):
    """If asgiref no longer has the thread-local it reads, one warning says so and the
    revocation is sent in place, once, as from a management command."""
    import logging

    from asgiref.sync import SyncToAsync

    from streaming import auth

    monkeypatch.delattr(SyncToAsync, "threadlocal")
    monkeypatch.setattr(auth, "_no_threadlocal_logged", False)
    with caplog.at_level(logging.WARNING, logger="streaming.auth"):
        assert await asyncio.to_thread(auth._server_loop) is None
        assert await asyncio.to_thread(auth._server_loop) is None
    assert caplog.text.count("has no threadlocal") == 1


async def test_a_whole_user_revocation_issued_before_a_socket_signed_in_spares_it(make_user):
    """A review (helper "reviewer9"): a revocation tried again for minutes while Redis was
    unreachable closed the sockets the user opened after it was issued, however late it
    came (a user deactivated, then made active again and signed in). It is stamped when
    issued; sockets signed in after that (by more than REVOCATION_CLOCK_SKEW) keep going."""
    import time

    from streaming.auth import REVOCATION_CLOCK_SKEW, revoke

    user, key = await make_user("alice", password=None)
    async with communicator(authorization=key) as comm:
        assert await comm.receive_message("who") == Identity(user_id=user.pk)
        await comm.receive_message("members")
        await revoke(user.pk, issued_at=time.time() - REVOCATION_CLOCK_SKEW - 60)
        await comm.assert_nothing_received()  # before: closed with 4401
        await revoke(user.pk)  # issued now: for this socket
        assert await comm.receive_close() == 4401
