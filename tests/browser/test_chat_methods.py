"""The chat page's streaming methods in real headless Chromium: the conversation's history
arrives through the socket's ``history`` method (the REST history API is blocked for the
page), and "Alice is typing…" shows on Bob's page while Alice types, goes away when her
message arrives, and expires a few seconds after she stops.

Screenshots: test-artifacts/chat-typing-phone.png (390 px), chat-typing-desktop.png (1200 px).
"""

import asyncio

from asgiref.sync import sync_to_async

from chat.models import Message
from tests.browser.test_chat_browser import DESKTOP, PHONE, say, sign_in, wait_bubbles
from tests.conftest import ARTIFACTS


@sync_to_async
def write(sender, recipient, text):
    Message.objects.create(sender=sender, recipient=recipient, text=text)


async def test_history_through_the_method_and_each_sees_the_other_typing(
    browser, page_errors, server, make_user
):
    alice, _ = await make_user("alice", first_name="Alice")
    bob, _ = await make_user("bob", first_name="Bob")
    earlier = ["Lunch tomorrow?", "Sure, noon?", "Noon it is."]
    for i, text in enumerate(earlier):
        await write(*((alice, bob) if i % 2 == 0 else (bob, alice)), text)

    alice_ctx, alice_page = await sign_in(browser, page_errors, server.http_url, "alice", DESKTOP)
    bob_ctx, bob_page = await sign_in(browser, page_errors, server.http_url, "bob", PHONE)
    rest_history = []

    async def refuse(route):
        rest_history.append(route.request.url)
        await route.abort()

    try:
        # Bob's page may not read history over REST: what he sees came through the socket.
        await bob_page.route("**/api/chat/messages/**", refuse)
        await bob_page.click(".person[data-username=alice]")
        await wait_bubbles(bob_page, earlier)
        assert rest_history == []
        await bob_page.wait_for_selector(f"#typing[data-watching='{alice.pk}']", state="attached")

        await alice_page.click(".person[data-username=bob]")
        await wait_bubbles(alice_page, earlier)
        await alice_page.wait_for_selector(f"#typing[data-watching='{bob.pk}']", state="attached")

        # Alice types (without sending): Bob sees it.
        await alice_page.locator("#composer-text").press_sequentially("See you the")
        indicator = bob_page.locator("#typing")
        await indicator.wait_for(state="visible", timeout=30_000)
        assert await indicator.inner_text() == "Alice is typing…"
        assert await alice_page.locator("#typing").is_hidden()  # not her own typing
        await bob_page.screenshot(path=ARTIFACTS / "chat-typing-phone.png")

        # Her message arrives: the indicator goes at once.
        await alice_page.locator("#composer-text").press_sequentially("re!")
        await alice_page.press("#composer-text", "Enter")
        await wait_bubbles(bob_page, [*earlier, "See you there!"])
        assert await indicator.is_hidden()

        # Bob types; Alice sees it, and it expires a few seconds after he stops.
        await bob_page.locator("#composer-text").press_sequentially("Bring")
        alice_indicator = alice_page.locator("#typing")
        await alice_indicator.wait_for(state="visible", timeout=30_000)
        assert await alice_indicator.inner_text() == "Bob is typing…"
        await alice_page.screenshot(path=ARTIFACTS / "chat-typing-desktop.png")
        await alice_indicator.wait_for(state="hidden", timeout=30_000)  # expired (5 s)

        # Still live after all that.
        await say(bob_page, "Bring the umbrella")
        await wait_bubbles(alice_page, [*earlier, "See you there!", "Bring the umbrella"])
        assert rest_history == []
    finally:
        await asyncio.gather(alice_ctx.close(), bob_ctx.close())
