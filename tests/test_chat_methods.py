"""The chat endpoint's streaming methods in process (chat/endpoints.py, docs/chat.md
"Streaming methods"): ``history`` reads only the caller's conversation, ``typing`` streams
the other person's typing signals, ``notify_typing`` is rate-limited per user."""

import pytest
from asgiref.sync import sync_to_async

from chat.endpoints import ChatEndpoint
from chat.models import Message
from streaming.testing import StreamingCommunicator
from tests.test_chat_endpoint import _fast_passwords, _fresh_rate_counts  # noqa: F401 (autouse)
from tests.test_methods import reply, result

pytestmark = pytest.mark.django_db(transaction=True)


def chat_socket(user=None):
    return StreamingCommunicator(endpoints=[ChatEndpoint], user=user, timeout=10)


async def call(comm, method, call_id, **args):
    await comm.send_command(
        "call", {"id": call_id, "endpoint": "chat", "method": method, "args": args}
    )


async def next_value(comm, call_id):
    frame = await reply(comm)
    assert (frame.command, frame.id) == ("value", call_id), frame
    return frame.args["value"]


@sync_to_async
def write(sender, recipient, text):
    return Message.objects.create(sender=sender, recipient=recipient, text=text).pk


def texts(value):
    return [message["data"]["text"] for message in value]


async def test_history_is_the_callers_conversation_oldest_first(make_user):
    alice, _ = await make_user("alice")
    bob, _ = await make_user("bob")
    carol, _ = await make_user("carol")
    ids = []
    for i in range(5):
        ids.append(await write(alice, bob, f"a{i}"))
        ids.append(await write(bob, alice, f"b{i}"))
    await write(carol, bob, "carol to bob")
    await write(carol, alice, "carol to alice")
    async with chat_socket(alice) as comm:
        await call(comm, "history", "1", with_user=bob.pk)
        value = await result(comm, "1")
        assert texts(value) == [t for i in range(5) for t in (f"a{i}", f"b{i}")]
        first = value[0]
        assert first["className"] == "ChatMessage"
        assert (first["data"]["sender_id"], first["data"]["recipient_id"]) == (alice.pk, bob.pk)
        assert first["data"]["id"] == ids[0] and first["data"]["sent_at"].endswith("Z")

        await call(comm, "history", "2", with_user=bob.pk, limit=3)
        assert texts(await result(comm, "2")) == ["b3", "a4", "b4"]  # the newest three
        await call(comm, "history", "3", with_user=bob.pk, limit=2, before=ids[4])
        assert texts(await result(comm, "3")) == ["a1", "b1"]  # paging back
        await call(comm, "history", "4", with_user=bob.pk, limit=3, after=ids[1])
        assert texts(await result(comm, "4")) == ["a1", "b1", "a2"]  # catching up
        await call(comm, "history", "5", with_user=carol.pk)
        assert texts(await result(comm, "5")) == ["carol to alice"]  # not carol's to bob

        await call(comm, "history", "6", with_user="bob")
        frame = await reply(comm)
        assert (frame.command, frame.args["code"]) == ("fail", "invalid_message")
        assert frame.args["errors"][0]["path"] == "with_user"


@sync_to_async
def write_many(sender, recipient, text, count):
    Message.objects.bulk_create(
        Message(sender=sender, recipient=recipient, text=text) for _ in range(count)
    )
    return list(Message.objects.order_by("pk").values_list("pk", flat=True))


async def test_a_history_page_ends_early_rather_than_outgrow_the_send_limit(make_user, settings):
    """Helper "attacker7": 150 messages of 4,000 "é" made ``history(limit=200)`` a 1.2 MB
    answer; every call failed with ``message_too_large`` and the page could not load the
    conversation over the socket. A page now ends where the frame would outgrow the
    socket's limit; asking again from its end, until a page is empty, gets them all."""
    settings.STREAMING = {"MAX_SEND_BYTES": 200_000}
    alice, _ = await make_user("alice")
    bob, _ = await make_user("bob")
    ids = await write_many(bob, alice, "é" * 4000, 150)  # ~8 KB each, 1.2 MB in all
    async with chat_socket(alice) as comm:
        got, after, calls = [], 0, 0
        while True:
            calls += 1
            await call(comm, "history", f"h{calls}", with_user=bob.pk, after=after, limit=200)
            page = await result(comm, f"h{calls}")
            if not page:
                break
            got += [message["data"]["id"] for message in page]
            after = got[-1]
        assert got == ids and calls > 2  # in order, none missing, over several pages
        await call(comm, "history", "back", with_user=bob.pk, limit=200)  # the newest
        newest = [message["data"]["id"] for message in await result(comm, "back")]
        assert newest == ids[-len(newest) :] and 10 < len(newest) < 150


async def test_history_needs_a_signed_in_user(make_user):
    bob, _ = await make_user("bob")
    await write(bob, bob, "note to self")
    async with chat_socket() as comm:
        await call(comm, "history", "1", with_user=bob.pk)
        frame = await reply(comm)
        assert (frame.command, frame.args["code"]) == ("fail", "not_authenticated")


async def test_bob_sees_alice_typing_to_him_and_nobody_elses(make_user):
    alice, _ = await make_user("alice")
    bob, _ = await make_user("bob")
    carol, _ = await make_user("carol")
    async with chat_socket(alice) as alices, chat_socket(bob) as bobs, chat_socket(carol) as carols:
        await call(bobs, "typing", "t", with_user=alice.pk)
        listening = await next_value(bobs, "t")  # the listener is in place
        assert listening["className"] == "TypingEvent"
        assert listening["data"]["typing"] is False

        await call(carols, "notify_typing", "c", with_user=bob.pk)  # carol, not alice
        assert await result(carols, "c") is True
        await call(alices, "notify_typing", "n1", with_user=carol.pk)  # alice, to carol
        assert await result(alices, "n1") is True
        await call(alices, "notify_typing", "n2", with_user=bob.pk)
        assert await result(alices, "n2") is True
        event = await next_value(bobs, "t")
        assert event == {
            "className": "TypingEvent",
            "data": {"user_id": alice.pk, "recipient_id": bob.pk, "typing": True,
                     "expires_in": 5.0},
        }  # fmt: skip
        await call(alices, "notify_typing", "n3", with_user=bob.pk, typing=False)
        assert await result(alices, "n3") is True
        assert (await next_value(bobs, "t"))["data"]["typing"] is False

        await bobs.send_command("cancel", {"id": "t"})  # nothing more comes for it
        await call(alices, "notify_typing", "n4", with_user=bob.pk)
        assert await result(alices, "n4") is True
        await bobs.assert_nothing_received()


async def test_typing_signals_are_rate_limited_per_user(make_user, monkeypatch):
    monkeypatch.setattr(ChatEndpoint, "typing_rate_signals", 3)
    monkeypatch.delattr(ChatEndpoint, "_typing_rate_limit", raising=False)
    alice, _ = await make_user("alice")
    bob, _ = await make_user("bob")
    async with chat_socket(alice) as phone, chat_socket(alice) as laptop:
        outcomes = []
        for i, comm in enumerate([phone, laptop, phone, laptop, phone]):
            await call(comm, "notify_typing", f"n{i}", with_user=bob.pk)
            outcomes.append(await result(comm, f"n{i}"))
        assert outcomes == [True, True, True, False, False]  # both sockets count together
        # Stopping is never refused: the indicator goes away.
        await call(phone, "notify_typing", "stop", with_user=bob.pk, typing=False)
        assert await result(phone, "stop") is True


async def test_ids_no_database_can_hold_are_invalid_arguments(make_user, caplog):
    """Helper "attacker11": ``with_user=2**63`` failed with ``internal_error`` and logged a
    traceback each call (``OverflowError: Python int too large to convert to SQLite
    INTEGER``). An id outside a database's 64-bit range is an invalid argument, named;
    the same holds for a data frame's ``recipient_id``."""
    from tests.test_methods import failure

    alice, _ = await make_user("alice")
    async with chat_socket(alice) as comm:
        for n, (method, args) in enumerate(
            [
                ("history", {"with_user": 2**63}),
                ("history", {"with_user": 1, "before": -(2**63) - 1}),
                ("history", {"with_user": 1, "after": 2**64}),
                ("notify_typing", {"with_user": 2**63}),
                ("typing", {"with_user": 2**63}),
            ]
        ):
            await call(comm, method, str(n), **args)
            errors = (await failure(comm, str(n), "invalid_message"))["errors"]
            assert [e["path"] for e in errors] == [next(k for k, v in args.items() if v != 1)]
        await comm.send_json_to(
            {
                "endpoint": "chat",
                "object": {
                    "className": "ChatMessage",
                    "data": {"recipient_id": 2**63, "text": "x"},
                },
            }
        )
        error = await comm.receive_error("invalid_message")
        assert [e["path"] for e in error["errors"]] == ["recipient_id"]
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


async def test_typing_streams_are_for_active_users_and_a_few_per_socket(make_user, monkeypatch):
    """Helper "attacker13": each typing call listened on a channel of its own, for any
    made-up id: 100 sockets of one user with 255 calls each were 25,500 channels (and
    Redis subscriptions), and two such users stalled the process for minutes. A typing
    stream is now for an active user, and a socket holds a few at once."""
    from tests.test_methods import failure

    monkeypatch.setattr(ChatEndpoint, "typing_streams_per_socket", 2)
    alice, _ = await make_user("alice")
    bob, _ = await make_user("bob")
    carol, _ = await make_user("carol")
    async with chat_socket(alice) as comm:
        await call(comm, "typing", "nobody", with_user=carol.pk + 1000)
        errors = (await failure(comm, "nobody", "invalid_message"))["errors"]
        assert errors == [{"path": "with_user", "reason": "no active user has this id"}]
        for n, other in enumerate([bob, carol]):
            await call(comm, "typing", f"t{n}", with_user=other.pk)
            assert (await next_value(comm, f"t{n}"))["data"]["typing"] is False
        await call(comm, "typing", "third", with_user=bob.pk)
        await failure(comm, "third", "rate_limited")
    async with chat_socket(alice) as other_socket:  # per socket: another has room
        await call(other_socket, "typing", "t", with_user=bob.pk)
        assert (await next_value(other_socket, "t"))["data"]["typing"] is False
