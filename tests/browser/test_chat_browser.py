"""The chat page in real headless Chromium: alice and bob in two browser contexts chat
live; bob drops offline, alice writes, bob comes back and sees what he missed.

Screenshots go to test-artifacts/ (chat-alice-desktop.png, chat-bob-phone.png...).
"""

import asyncio

import websockets

from tests.conftest import ARTIFACTS
from tests.e2e.test_chat_e2e import chat_frame, ready, recv_chat
from tests.support.servers import RedisServer, UvicornServer

PASSWORD = "secret-pass-1"  # make_user's default
DESKTOP = {"width": 1200, "height": 780}
PHONE = {"width": 390, "height": 780}


class Network:
    """Bob's WebSocket link, switchable: every socket the page opens goes through
    Playwright's WebSocket routing to the real server, until ``go_offline`` cuts them
    (both sides) and refuses new ones; ``go_online`` lets the next retry through."""

    def __init__(self):
        self.online = True
        self.links = []

    async def route(self, ws):
        if not self.online:
            await ws.close(code=4000, reason="offline")  # not 4401/4403: the client retries
            return
        server = ws.connect_to_server()
        self.links.append((ws, server))

    async def go_offline(self):
        self.online = False
        for ws, server in self.links:
            await server.close(code=1001, reason="offline")
            await ws.close(code=4000, reason="offline")
        self.links.clear()

    def go_online(self):
        self.online = True


async def sign_in(browser, page_errors, base_url, username, viewport, network=None):
    context = await browser.new_context(viewport=viewport)
    page = await context.new_page()
    page.on("pageerror", lambda exc: page_errors.append(f"{username}: {exc}"))
    if network is not None:
        await page.route_web_socket("**/websocket/", network.route)
    await page.goto(base_url + "/")
    await page.fill("#id_username", username)
    await page.fill("#id_password", PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_selector(".status[data-status=connected]")
    return context, page


async def bubbles(page):
    return await page.locator(".message .bubble").all_inner_texts()


async def wait_bubbles(page, texts, timeout=30_000):
    await page.wait_for_function(
        "(texts) => JSON.stringify([...document.querySelectorAll('.message[data-id] .bubble')]"
        ".map((b) => b.textContent)) === JSON.stringify(texts)",
        arg=texts,
        timeout=timeout,
    )


async def say(page, text):
    await page.fill("#composer-text", text)
    await page.press("#composer-text", "Enter")


async def test_alice_and_bob_chat_live_and_bob_catches_up_after_being_offline(
    browser, page_errors, own_daphne, make_user
):
    await make_user("alice", first_name="Alice")
    await make_user("bob", first_name="Bob")
    srv = await asyncio.to_thread(own_daphne)
    bobs_network = Network()
    alice_ctx, alice = await sign_in(browser, page_errors, srv.http_url, "alice", DESKTOP)
    bob_ctx, bob = await sign_in(
        browser, page_errors, srv.http_url, "bob", PHONE, network=bobs_network
    )
    try:
        # Alice opens Bob's conversation and writes; her message is acknowledged (stored).
        await alice.click(".person[data-username=bob]")
        await say(alice, "Hi Bob, are you there?")
        await wait_bubbles(alice, ["Hi Bob, are you there?"])
        assert await alice.locator(".message.pending").count() == 0

        # Bob, on a phone, sees an unread badge live, opens the conversation, answers.
        await bob.wait_for_selector(".person[data-username=alice] .unread >> text=1")
        await bob.screenshot(path=ARTIFACTS / "chat-bob-phone-people.png")
        await bob.click(".person[data-username=alice]")
        await wait_bubbles(bob, ["Hi Bob, are you there?"])
        await say(bob, "Yes! Right here.")
        await wait_bubbles(alice, ["Hi Bob, are you there?", "Yes! Right here."])

        # Bob drops offline; Alice writes twice (both stored: acknowledged on her page).
        await bobs_network.go_offline()
        await bob.wait_for_selector(".status:not([data-status=connected])")
        await say(alice, "You missed this one")
        await say(alice, "and this one too")
        everything = [
            "Hi Bob, are you there?",
            "Yes! Right here.",
            "You missed this one",
            "and this one too",
        ]
        await wait_bubbles(alice, everything)
        assert await bubbles(bob) == everything[:2]  # nothing reached him live

        # Back online: the client reconnects by itself and the page fetches what it missed.
        bobs_network.go_online()
        await bob.wait_for_selector(".status[data-status=connected]", timeout=60_000)
        await wait_bubbles(bob, everything)

        # And live delivery works again after the reconnect.
        await say(bob, "Got them all.")
        await wait_bubbles(alice, [*everything, "Got them all."])
        await wait_bubbles(bob, [*everything, "Got them all."])
        assert await alice.locator(".message.mine").count() == 3
        assert await bob.locator(".message.mine").count() == 2

        await alice.screenshot(path=ARTIFACTS / "chat-alice-desktop.png")
        await bob.screenshot(path=ARTIFACTS / "chat-bob-phone.png")
    finally:
        await alice_ctx.close()
        await bob_ctx.close()



async def test_bob_sees_a_message_sent_as_redis_came_back(browser, page_errors, make_user):
    """Two servers on one private redis-server, restarted. alice (on server A) writes the
    moment Redis is back, before server B has subscribed again: B does not hear of it
    live (a PUBLISH to no subscriber), and before 2026-11-30 bob's page (on B) stayed
    open and never showed it. Now B sees that its subscription was down and closes bob's
    socket with 1012; the page reconnects at once and fetches what it missed."""
    alice, alice_key = await make_user("alice", first_name="Alice")
    bob_user, _ = await make_user("bob", first_name="Bob")
    rs = RedisServer().start()
    redis_servers = [rs]
    a, b = UvicornServer(env={"REDIS_URL": rs.url}), UvicornServer(env={"REDIS_URL": rs.url})
    bob_ctx = None
    try:
        await asyncio.gather(asyncio.to_thread(a.start), asyncio.to_thread(b.start))
        bob_ctx, bob = await sign_in(browser, page_errors, b.http_url, "bob", PHONE)
        await bob.click(".person[data-username=alice]")
        async with alices_socket(a, alice_key) as alices:
            await ready(alices, alice.pk)
            await alices.send(chat_frame(bob_user.pk, "Before the restart"))
            assert (await recv_chat(alices))["object"]["data"]["text"] == "Before the restart"
            await wait_bubbles(bob, ["Before the restart"])

            await asyncio.to_thread(rs.stop)
            rs = RedisServer(port=rs.port)
            redis_servers.append(rs)
            await asyncio.to_thread(rs.start)
            await alices.send(chat_frame(bob_user.pk, "As Redis came back"))
            ack = await recv_chat(alices, timeout=30)
            assert ack["object"]["data"]["text"] == "As Redis came back", ack  # saved
        await wait_bubbles(bob, ["Before the restart", "As Redis came back"])
        await bob.wait_for_selector(".status[data-status=connected]", timeout=30_000)

        # Live again, both ways (alice on a new socket: A closed hers with 1012 too).
        async with alices_socket(a, alice_key) as alices:
            await ready(alices, alice.pk)
            await alices.send(chat_frame(bob_user.pk, "And after"))
            await wait_bubbles(bob, ["Before the restart", "As Redis came back", "And after"])
            await say(bob, "Got all three")
            while (await recv_chat(alices, timeout=30))["object"]["data"]["text"] != (
                "Got all three"
            ):
                pass
        await bob.screenshot(path=ARTIFACTS / "chat-bob-after-redis-restart.png")
        assert page_errors == []
    finally:
        if bob_ctx is not None:
            await bob_ctx.close()
        await asyncio.gather(asyncio.to_thread(a.stop), asyncio.to_thread(b.stop))
        for each in redis_servers:
            each.__exit__(None, None, None)  # stopped, its directory removed


def alices_socket(server, key):
    return websockets.connect(
        server.ws_url, additional_headers={"Authorization": key}, open_timeout=30
    )
