"""Serverpod's ``requiredScopes`` as ``Endpoint.required_permissions``, and revocation
at Serverpod's granularity: a user, one session or token, or a permission."""

from __future__ import annotations

import asyncio
import re

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.test import Client
from rest_framework.authtoken.models import Token

from streaming.auth import StreamingAuthMiddlewareStack
from streaming.consumer import StreamingConsumer
from streaming.endpoint import Endpoint
from streaming.serialization import SerializableEntity
from streaming.testing import StreamingCommunicator


class Say(SerializableEntity):
    class_name = "tests.scopes.Say"
    text: str


class PublicEndpoint(Endpoint):
    async def handle_stream_message(self, session, message):
        await self.send_stream_message(session, message)


class ModerateEndpoint(Endpoint):
    required_permissions = ("chat.delete_message",)
    opened: list[int] = []
    closed: list[int] = []
    closing: asyncio.Event

    async def stream_opened(self, session):
        type(self).opened.append(session.auth.authenticated_user_id)

    async def handle_stream_message(self, session, message):
        await self.send_stream_message(session, Say(text=f"moderated {message.text}"))

    async def stream_closed(self, session):
        type(self).closed.append(session.auth.authenticated_user_id)
        type(self).closing.set()


@pytest.fixture(autouse=True)
def _reset():
    ModerateEndpoint.opened, ModerateEndpoint.closed = [], []
    ModerateEndpoint.closing = asyncio.Event()


async def stream_closed():
    async with asyncio.timeout(10):  # a failure guard, not a synchronisation
        await ModerateEndpoint.closing.wait()


def socket(*, authorization=None, cookie=None):
    headers = [(b"host", b"testserver")]
    if authorization:
        headers.append((b"authorization", authorization.encode()))
    if cookie:
        headers += [(b"origin", b"http://testserver"), (b"cookie", cookie.encode())]
    app = StreamingAuthMiddlewareStack(
        StreamingConsumer.as_asgi(endpoints=[PublicEndpoint, ModerateEndpoint])
    )
    return StreamingCommunicator(app, "/websocket/", headers=headers)


@sync_to_async
def grant(user, codename="delete_message"):
    user.user_permissions.add(Permission.objects.get(codename=codename))


async def moderated(comm) -> str:
    await comm.send_message("moderate", Say(text="x"), frame_id="m")
    frame = await comm.receive_frame()
    if hasattr(frame, "command"):
        return frame.args["code"]
    return "ok"


def test_required_permissions_must_be_permission_names():
    with pytest.raises(TypeError, match=re.escape("chat.add_message")):
        type("Bad", (Endpoint,), {"required_permissions": "chat.add_message"})
    with pytest.raises(TypeError):
        type("Bad", (Endpoint,), {"required_permissions": ["no_dot"]})


async def test_an_endpoint_opens_only_for_users_with_its_permissions(make_user):
    alice, alice_key = await make_user("alice", password=None)
    _, bob_key = await make_user("bob", password=None)
    await grant(alice)
    async with socket(authorization=alice_key) as a, socket(authorization=bob_key) as b:
        assert await moderated(a) == "ok"
        assert await moderated(b) == "forbidden"  # the stream was not opened for bob
        # bob's other endpoints are unaffected
        await b.send_message("public", Say(text="hi"))
        assert await b.receive_message("public") == Say(text="hi")
    async with socket() as anonymous:
        assert await moderated(anonymous) == "not_authenticated"
    assert ModerateEndpoint.opened == [alice.pk]


async def test_removing_a_permission_closes_only_the_endpoints_that_require_it(make_user):
    alice, alice_key = await make_user("alice", password=None)
    await grant(alice)
    async with socket(authorization=alice_key) as a:
        assert await moderated(a) == "ok"

        @sync_to_async
        def remove():
            user = get_user_model().objects.get(pk=alice.pk)
            user.user_permissions.remove(Permission.objects.get(codename="delete_message"))

        await remove()
        # The stream closes (stream_closed runs) and its frames are now refused...
        await stream_closed()
        assert await moderated(a) == "forbidden"
        assert ModerateEndpoint.closed == [alice.pk]
        # ...while the socket and the other endpoints go on.
        await a.send_message("public", Say(text="still here"))
        assert await a.receive_message("public") == Say(text="still here")


async def test_leaving_a_group_that_granted_the_permission_closes_the_endpoint(make_user):
    alice, alice_key = await make_user("alice", password=None)

    @sync_to_async
    def join():
        group = Group.objects.create(name="moderators")
        group.permissions.add(Permission.objects.get(codename="delete_message"))
        get_user_model().objects.get(pk=alice.pk).groups.add(group)
        return group

    group = await join()
    async with socket(authorization=alice_key) as a:
        assert await moderated(a) == "ok"
        user = await get_user_model().objects.aget(pk=alice.pk)
        await sync_to_async(user.groups.remove)(group)
        await stream_closed()
        assert await moderated(a) == "forbidden"


async def test_logging_out_one_browser_leaves_the_others_connected(make_user):
    alice, alice_key = await make_user("alice", password="pw-alice-1")

    def browser():
        client = Client()
        client.force_login(get_user_model().objects.get(pk=alice.pk))
        return client

    first, second = await sync_to_async(browser)(), await sync_to_async(browser)()
    one = socket(cookie=f"sessionid={first.cookies['sessionid'].value}")
    two = socket(cookie=f"sessionid={second.cookies['sessionid'].value}")
    token = socket(authorization=alice_key)
    for comm in (one, two, token):
        await comm.connect()
    await sync_to_async(first.post)("/logout/")  # Django's LogoutView
    assert await one.receive_close() == 4401
    for comm in (two, token):
        await comm.ping()
        await comm.assert_nothing_received()
        await comm.disconnect()


async def test_deleting_a_token_closes_only_its_sockets(make_user):
    alice, alice_key = await make_user("alice", password=None)

    @sync_to_async
    def second_credential():
        client = Client()
        client.force_login(get_user_model().objects.get(pk=alice.pk))
        return client.cookies["sessionid"].value

    session = await second_credential()
    by_token = socket(authorization=alice_key)
    by_cookie = socket(cookie=f"sessionid={session}")
    for comm in (by_token, by_cookie):
        await comm.connect()
    await sync_to_async(lambda: Token.objects.filter(user_id=alice.pk).delete())()
    assert await by_token.receive_close() == 4401
    await by_cookie.ping()
    await by_cookie.assert_nothing_received()
    await by_cookie.disconnect()
