"""The ``chat`` endpoint through channels' communicator: validation, identity, rate
limit, delivery and storage. Real users in the test database; no server process."""

from datetime import UTC, datetime

import pytest
from asgiref.sync import sync_to_async

from chat.endpoints import ChatEndpoint
from chat.models import Message
from chat.protocol import MAX_TEXT_LENGTH, ChatMessage
from streaming.serialization import SerializableEntity
from streaming.testing import StreamingCommunicator

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    # Nobody signs in with a password here: skip the slow default hasher.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _fresh_rate_counts():
    # The chat's rate limit counts in the cache, which outlives a test.
    from django.core.cache import cache

    cache.clear()


def chat_socket(user=None, endpoint=ChatEndpoint):
    return StreamingCommunicator(endpoints=[endpoint], user=user)


async def ready(comm, user):
    """Return once the socket's chat stream is open (its listener is in place).

    Frames of an endpoint are handled after its ``stream_opened``, so the answer to
    one (here: the error for an empty text) proves it ran.
    """
    await comm.send_message("chat", ChatMessage(recipient_id=user.pk, text=""))
    await comm.receive_error("invalid_message")


@sync_to_async
def stored():
    return list(Message.objects.order_by("id").values("id", "sender_id", "recipient_id", "text"))


async def test_message_is_saved_then_delivered_to_recipient_and_all_sender_devices(make_user):
    alice, _ = await make_user("alice")
    bob, _ = await make_user("bob")
    carol, _ = await make_user("carol")
    async with (
        chat_socket(alice) as phone,
        chat_socket(alice) as laptop,
        chat_socket(bob) as bobs,
        chat_socket(carol) as carols,
    ):
        for comm, user in ((phone, alice), (laptop, alice), (bobs, bob), (carols, carol)):
            await ready(comm, user)

        await phone.send_message("chat", ChatMessage(recipient_id=bob.pk, text="  hi bob \n"))

        received = await bobs.receive_message("chat")
        assert isinstance(received, ChatMessage)
        assert (received.sender_id, received.recipient_id, received.text) == (
            alice.pk,
            bob.pk,
            "hi bob",
        )
        assert received.id is not None and received.sent_at.tzinfo is not None
        # The sending socket's copy is the acknowledgement; the other device sees it too.
        assert await phone.receive_message("chat") == received
        assert await laptop.receive_message("chat") == received
        await carols.assert_nothing_received()
        for comm in (phone, laptop, bobs):
            await comm.assert_nothing_received()

    assert await stored() == [
        {"id": received.id, "sender_id": alice.pk, "recipient_id": bob.pk, "text": "hi bob"}
    ]


async def test_sender_id_and_id_sent_by_the_client_are_ignored(make_user):
    alice, _ = await make_user("alice")
    bob, _ = await make_user("bob")
    carol, _ = await make_user("carol")
    long_ago = datetime(2001, 1, 1, tzinfo=UTC)
    async with chat_socket(alice) as alices, chat_socket(bob) as bobs:
        await ready(bobs, bob)
        await alices.send_message(
            "chat",
            ChatMessage(
                recipient_id=bob.pk, text="it's carol", sender_id=carol.pk, id=999, sent_at=long_ago
            ),
        )
        received = await bobs.receive_message("chat")
    assert received.sender_id == alice.pk
    assert received.id != 999 and received.sent_at > long_ago
    assert await stored() == [
        {"id": received.id, "sender_id": alice.pk, "recipient_id": bob.pk, "text": "it's carol"}
    ]


@pytest.mark.parametrize("text", ["", "   \n\t ", "x" * (MAX_TEXT_LENGTH + 1)])
async def test_bad_text_is_invalid_message_naming_text(make_user, text):
    alice, _ = await make_user("alice")
    bob, _ = await make_user("bob")
    async with chat_socket(alice) as alices, chat_socket(bob) as bobs:
        await ready(bobs, bob)
        await alices.send_message(
            "chat", ChatMessage(recipient_id=bob.pk, text=text), frame_id="f1"
        )
        error = await alices.receive_error("invalid_message")
        assert error["endpoint"] == "chat" and error["id"] == "f1"
        assert [e["path"] for e in error["errors"]] == ["text"]
        await bobs.assert_nothing_received()
        await alices.assert_nothing_received()
    assert await stored() == []


async def test_text_of_the_maximum_length_after_stripping_is_accepted(make_user):
    alice, _ = await make_user("alice")
    bob, _ = await make_user("bob")
    text = "y" * MAX_TEXT_LENGTH
    async with chat_socket(alice) as alices:
        await alices.send_message("chat", ChatMessage(recipient_id=bob.pk, text=f"  {text}  "))
        assert (await alices.receive_message("chat")).text == text


@pytest.mark.parametrize("who", ["missing", "inactive"])
async def test_unknown_or_inactive_recipient_is_invalid_message_naming_recipient(make_user, who):
    alice, _ = await make_user("alice")
    dave, _ = await make_user("dave", is_active=False)
    recipient_id = dave.pk if who == "inactive" else dave.pk + 1000
    async with chat_socket(alice) as alices:
        await alices.send_message(
            "chat", ChatMessage(recipient_id=recipient_id, text="hello"), frame_id="r"
        )
        error = await alices.receive_error("invalid_message")
        assert error["id"] == "r"
        assert [e["path"] for e in error["errors"]] == ["recipient_id"]
        await alices.assert_nothing_received()
    assert await stored() == []


async def test_other_message_classes_are_refused(make_user):
    class Sticker(SerializableEntity):
        recipient_id: int
        sticker: str

    alice, _ = await make_user("alice")
    async with chat_socket(alice) as alices:
        await alices.send_message("chat", Sticker(recipient_id=alice.pk, sticker="cat"))
        error = await alices.receive_error("invalid_message")
        assert "ChatMessage" in error["message"]
    assert await stored() == []


async def test_anonymous_socket_gets_not_authenticated_and_nothing_is_saved(make_user):
    bob, _ = await make_user("bob")
    async with chat_socket() as anonymous, chat_socket(bob) as bobs:
        await ready(bobs, bob)
        await anonymous.send_message(
            "chat", ChatMessage(recipient_id=bob.pk, text="psst"), frame_id="a"
        )
        error = await anonymous.receive_error("not_authenticated")
        assert (error["endpoint"], error["id"]) == ("chat", "a")
        await bobs.assert_nothing_received()
    assert await stored() == []


async def test_rate_limit_refuses_and_saves_nothing_past_the_limit(make_user):
    class TightChat(ChatEndpoint):
        name = "chat"
        rate_limit_messages = 3
        rate_limit_period = 3600.0  # no message leaves the window during the test

    alice, _ = await make_user("alice")
    bob, _ = await make_user("bob")
    async with chat_socket(alice, TightChat) as alices:
        for n in range(3):
            await alices.send_message("chat", ChatMessage(recipient_id=bob.pk, text=f"m{n}"))
            assert (await alices.receive_message("chat")).text == f"m{n}"
        await alices.send_message("chat", ChatMessage(recipient_id=bob.pk, text="m3"), frame_id="x")
        error = await alices.receive_error("rate_limited")
        assert (error["endpoint"], error["id"]) == ("chat", "x")
        await alices.assert_nothing_received()
    assert [row["text"] for row in await stored()] == ["m0", "m1", "m2"]

    # The limit is per user: a new socket does not start with a fresh budget...
    async with chat_socket(alice, TightChat) as again:
        await again.send_message("chat", ChatMessage(recipient_id=bob.pk, text="more"))
        await again.receive_error("rate_limited")
    # ...while another user has a budget of their own.
    async with chat_socket(bob, TightChat) as bobs:
        await bobs.send_message("chat", ChatMessage(recipient_id=alice.pk, text="hi"))
        assert (await bobs.receive_message("chat")).text == "hi"


async def test_the_rate_limit_is_shared_by_all_sockets_of_a_user(make_user):
    class TightChat(ChatEndpoint):
        name = "chat"
        rate_limit_messages = 4
        rate_limit_period = 3600.0

    alice, _ = await make_user("alice")
    bob, _ = await make_user("bob")
    async with chat_socket(alice, TightChat) as first, chat_socket(alice, TightChat) as second:
        # Alternating sockets: each alone would stay under the limit.
        for n in range(4):
            sock = (first, second)[n % 2]
            await sock.send_message("chat", ChatMessage(recipient_id=bob.pk, text=f"m{n}"))
            for each in (first, second):  # every socket of alice sees her message
                assert (await each.receive_message("chat")).text == f"m{n}"
        await first.send_message("chat", ChatMessage(recipient_id=bob.pk, text="5th"))
        await first.receive_error("rate_limited")
        await second.send_message("chat", ChatMessage(recipient_id=bob.pk, text="6th"))
        await second.receive_error("rate_limited")
    assert len(await stored()) == 4


def test_default_rate_limit_is_20_messages_per_10_seconds():
    assert (ChatEndpoint.rate_limit_messages, ChatEndpoint.rate_limit_period) == (20, 10.0)
    assert ChatEndpoint.name == "chat" and ChatEndpoint.login_required


async def test_a_note_to_oneself_arrives_once(make_user):
    alice, _ = await make_user("alice")
    async with chat_socket(alice) as alices:
        await alices.send_message("chat", ChatMessage(recipient_id=alice.pk, text="remember milk"))
        assert (await alices.receive_message("chat")).text == "remember milk"
        await alices.assert_nothing_received()


async def test_after_close_nothing_is_delivered_and_no_listener_is_left(make_user):
    from streaming.messages import get_bus

    alice, _ = await make_user("alice")
    bob, _ = await make_user("bob")
    bobs = chat_socket(bob)
    await bobs.connect()
    await ready(bobs, bob)
    assert get_bus().listener_count(f"user_{bob.pk}") == 1
    await bobs.disconnect()
    assert get_bus().listener_count(f"user_{bob.pk}") == 0
    async with chat_socket(alice) as alices:
        await alices.send_message("chat", ChatMessage(recipient_id=bob.pk, text="later"))
        assert (await alices.receive_message("chat")).text == "later"  # stored for later
    assert [row["text"] for row in await stored()] == ["later"]


async def test_full_stack_token_socket_finds_the_chat_endpoint(make_user):
    """Through the project's ASGI application: autodiscovery, token auth, the endpoint."""
    from streampod_project.asgi import application

    alice, key = await make_user("alice")
    bob, _ = await make_user("bob")
    comm = StreamingCommunicator(application, headers=[(b"authorization", key.encode())])
    async with comm:
        await comm.send_message("chat", ChatMessage(recipient_id=bob.pk, text="via token"))
        message = await comm.receive_message("chat")
        assert (message.sender_id, message.text) == (alice.pk, "via token")
    async with StreamingCommunicator(application) as anonymous:
        await anonymous.send_message("chat", ChatMessage(recipient_id=bob.pk, text="x"))
        await anonymous.receive_error("not_authenticated")
