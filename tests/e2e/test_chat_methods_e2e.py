"""The chat's streaming methods end to end: the Python client against a real daphne process
(docs/chat.md, "Streaming methods")."""

import asyncio

from chat.protocol import ChatMessage, TypingEvent
from streaming.client import CallFailed, Client

WAIT = 30  # seconds: a safety net for awaits on real signals, never a measurement


async def test_history_and_typing_through_the_python_client(server, make_user):
    alice, alice_key = await make_user("alice")
    bob, bob_key = await make_user("bob")
    carol, carol_key = await make_user("carol")
    async with (
        Client(server.http_url, auth_key=alice_key) as alices,
        Client(server.http_url, auth_key=bob_key) as bobs,
        Client(server.http_url, auth_key=carol_key) as carols,
    ):
        for client in (alices, bobs, carols):
            await client.open_streaming_connection()
        for text in ("one", "two", "three"):
            await alices.chat.send_stream_message(ChatMessage(recipient_id=bob.pk, text=text))
        await carols.chat.send_stream_message(ChatMessage(recipient_id=bob.pk, text="carol's"))

        async with asyncio.timeout(WAIT):
            for _ in range(4):  # stored, then delivered live: now in the history too
                await anext(bobs.chat.stream)
            history = await bobs.chat.history(with_user=alice.pk)
            assert [m.text for m in history] == ["one", "two", "three"]
            assert all(isinstance(m, ChatMessage) and m.sender_id == alice.pk for m in history)
            newest = await bobs.chat.history(with_user=alice.pk, limit=1)
            assert [m.text for m in newest] == ["three"]
            assert [
                m.text for m in await bobs.chat.history(with_user=alice.pk, before=newest[0].id)
            ] == ["one", "two"]
            assert await alices.chat.history(with_user=carol.pk) == []  # carol wrote to bob

            async with bobs.chat.typing(with_user=alice.pk) as watching:
                events = aiter(watching)
                listening = await anext(events)  # the listener is in place
                assert listening == TypingEvent(user_id=alice.pk, recipient_id=bob.pk, typing=False)
                assert await carols.chat.notify_typing(with_user=bob.pk) is True
                assert await alices.chat.notify_typing(with_user=bob.pk) is True
                event = await anext(events)
                assert (event.user_id, event.recipient_id, event.typing) == (alice.pk, bob.pk, True)
                assert event.expires_in > 0

        async with Client(server.http_url) as anonymous:
            await anonymous.open_streaming_connection()
            try:
                await anonymous.chat.history(with_user=bob.pk)
            except CallFailed as failed:
                assert failed.code == "not_authenticated"
            else:
                raise AssertionError("an anonymous caller read a conversation")
