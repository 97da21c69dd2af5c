"""The chat page's UI in headless Chromium, at desktop and phone widths (issue 13):

1. your own long messages stay in view above the message box, however tall it grows;
2. a text over the limit is never cut: a counter near the limit, and over it Send is
   off and the page offers to send it as several messages;
3. "Reconnecting in N s…" counts down each second, "Retry now" reconnects at once, and
   what was written while offline is sent by itself once Live;
4. the people list leaves out staff and superusers (unless one talked with them), the
   phone's top bar shows the user's name, and a deactivated user's page goes to the
   sign-in page.

Screenshots: test-artifacts/chat-<what>-<desktop|phone>.png.
"""

import asyncio
import json
import re
import time

import pytest
import websockets
from asgiref.sync import sync_to_async

from chat.protocol import MAX_TEXT_LENGTH
from tests.conftest import ARTIFACTS

PASSWORD = "secret-pass-1"  # make_user's default
DESKTOP = {"width": 1200, "height": 780}
PHONE = {"width": 390, "height": 780}
VIEWPORTS = pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])


def width_name(viewport):
    return "phone" if viewport["width"] < 720 else "desktop"


async def sign_in(browser, page_errors, base_url, username, viewport, path="/"):
    context = await browser.new_context(viewport=viewport, locale="en-US")
    page = await context.new_page()
    page.on("pageerror", lambda exc: page_errors.append(f"{username}: {exc}"))
    await page.goto(base_url + path)
    await page.fill("#id_username", username)
    await page.fill("#id_password", PASSWORD)
    await page.click("button[type=submit]")
    if path == "/":
        await page.wait_for_selector(".status[data-status=connected]")
    return context, page


async def wait_bubbles(page, texts, timeout=30_000):
    """Wait until the stored messages shown are exactly ``texts``, in order."""
    await page.wait_for_function(
        "(texts) => JSON.stringify([...document.querySelectorAll('.message[data-id] .bubble')]"
        ".map((b) => b.textContent)) === JSON.stringify(texts)",
        arg=texts,
        timeout=timeout,
    )


async def status_text(page):
    return await page.locator("#status .status-text").inner_text()


async def say_over_socket(server, key, recipient_id, text):
    """Send a chat message as another user, from a plain WebSocket (token auth), and
    wait for the server's stored copy."""
    headers = {"Authorization": key}
    async with websockets.connect(server.ws_url, additional_headers=headers, open_timeout=20) as ws:
        frame = {
            "endpoint": "chat",
            "object": {
                "className": "ChatMessage",
                "data": {"recipient_id": recipient_id, "text": text},
            },
        }
        await ws.send(json.dumps(frame))
        async with asyncio.timeout(20):
            while True:
                reply = json.loads(await ws.recv())
                if reply.get("endpoint") == "chat":
                    assert reply["object"]["data"]["text"] == text
                    return
                assert reply.get("command") != "error", reply


# -- 1. the newest message stays in view ----------------------------------------------------

NEWEST_VISIBLE = """() => {
  const items = document.querySelectorAll('#messages > .message');
  if (!items.length) return false;
  const m = items[items.length - 1].getBoundingClientRect();
  const list = document.getElementById('messages').getBoundingClientRect();
  const composer = document.getElementById('composer').getBoundingClientRect();
  return m.top >= list.top - 1 && m.bottom <= composer.top + 1 && m.bottom <= list.bottom + 1;
}"""


async def assert_newest_fully_visible(page, viewport):
    """The last message (bubble and time) lies inside the list, above the composer."""
    try:
        await page.wait_for_function(NEWEST_VISIBLE, timeout=5_000)
    except Exception:
        pass  # the assertions below say what is wrong
    newest = await page.locator("#messages > .message").last.bounding_box()
    visible = await page.locator("#messages").bounding_box()
    composer = await page.locator("#composer").bounding_box()
    where = f"newest {newest}, list {visible}, composer {composer}"
    assert newest["y"] >= visible["y"] - 1, "the newest message starts above the list: " + where
    assert newest["y"] + newest["height"] <= composer["y"] + 1, "hidden under the box: " + where
    assert composer["y"] + composer["height"] <= viewport["height"] + 1, where


def long_text(n, length=320):
    words = f"Message {n}: a long one, written on a phone, that wraps over many lines. "
    return (words * (length // len(words) + 1))[:length].strip()


@VIEWPORTS
async def test_own_long_messages_stay_in_view_whatever_the_box_height(
    browser, page_errors, server, make_user, viewport
):
    alice, _ = await make_user("alice", first_name="Alice")
    _, bob_key = await make_user("bob", first_name="Bob")
    context, page = await sign_in(browser, page_errors, server.http_url, "alice", viewport)
    try:
        await page.click(".person[data-username=bob]")
        await page.wait_for_selector("#composer-text")
        one_line = (await page.locator("#composer").bounding_box())["height"]
        sent = []
        for n in range(3):
            text = long_text(n)
            await page.fill("#composer-text", text)
            grown = (await page.locator("#composer").bounding_box())["height"]
            assert grown > one_line + 40, "the box grows with a long draft"
            await page.press("#composer-text", "Enter")
            sent.append(text)
            await wait_bubbles(page, sent)
            await assert_newest_fully_visible(page, viewport)

        # A long draft makes the box as tall as it gets: the newest message moves up.
        await page.fill("#composer-text", long_text(9, 900))
        tallest = (await page.locator("#composer").bounding_box())["height"]
        assert tallest > one_line + 100
        await assert_newest_fully_visible(page, viewport)

        # Bob answers while the box is tall: his message is in view too.
        await say_over_socket(server, bob_key, alice.pk, "Got it, " + long_text(5, 200))
        await wait_bubbles(page, [*sent, "Got it, " + long_text(5, 200)])
        await assert_newest_fully_visible(page, viewport)
        await page.screenshot(path=ARTIFACTS / f"chat-long-messages-{width_name(viewport)}.png")

        # Scrolled up on purpose, the conversation stays put when something arrives...
        # The page decides to stop following in its scroll listener, which runs at the
        # next frame, not when scrollTop is set: wait for the scroll event itself (this
        # listener comes after the page's). Waiting for scrollTop alone let a message
        # arrive first on a loaded machine (CI: scrolled back down, 279 px).
        await page.locator("#messages").evaluate(
            """(list) => new Promise((scrolled) => {
                list.addEventListener("scroll", () => scrolled(), {once: true});
                list.scrollTop = 0;
            })"""
        )
        assert await page.locator("#messages").evaluate("(list) => list.scrollTop") == 0
        await say_over_socket(server, bob_key, alice.pk, "Are you reading?")
        await wait_bubbles(page, [*sent, "Got it, " + long_text(5, 200), "Are you reading?"])
        assert await page.locator("#messages").evaluate("(list) => list.scrollTop") == 0
        # ... and sending one's own message brings the newest back into view.
        await page.fill("#composer-text", "Yes, " + long_text(7))
        await page.press("#composer-text", "Enter")
        await page.wait_for_selector(".message[data-id] >> text=Yes, Message 7")
        await assert_newest_fully_visible(page, viewport)
    finally:
        await context.close()


# -- 2. the length limit: a counter, and nothing cut silently ---------------------------------


@VIEWPORTS
async def test_a_long_paste_is_kept_counted_and_can_be_sent_as_several_messages(
    browser, page_errors, server, make_user, viewport
):
    await make_user("alice", first_name="Alice")
    await make_user("bob", first_name="Bob")
    context, page = await sign_in(browser, page_errors, server.http_url, "alice", viewport)
    limit = page.locator("#composer-limit")
    try:
        await page.click(".person[data-username=bob]")
        box = page.locator("#composer-text")
        assert await box.get_attribute("maxlength") is None  # nothing is cut by the browser

        # Well below the limit: no counter.
        await box.fill("x" * 3000)
        assert await limit.is_hidden()

        # Near it: "3,700 / 4,000" and how many are left; Send works.
        await box.fill("y" * 3700)
        await limit.wait_for(state="visible")
        assert await limit.get_attribute("data-count") == "3700"
        assert "3,700 / 4,000" in await limit.inner_text()
        assert "300 characters left" in await limit.inner_text()
        assert await page.locator("#send").is_enabled()

        # A paste of 10,000 characters is kept whole; the page says what happens.
        words = "".join(f"word{n} " for n in range(2000))[:10_000]
        await box.fill("")
        await box.focus()
        await page.keyboard.insert_text(words)  # what a paste does
        assert len(await box.input_value()) == 10_000
        await page.wait_for_function(
            "document.getElementById('composer-limit').dataset.state === 'over'"
        )
        text = await limit.inner_text()
        assert "10,000 / 4,000" in text and "Too long for one message (6,000 over)" in text, text
        assert await page.locator("#send").is_disabled()
        assert await box.get_attribute("aria-invalid") == "true"
        await page.screenshot(path=ARTIFACTS / f"chat-too-long-{width_name(viewport)}.png")

        # Enter does not send it (nor cut it).
        await box.press("Enter")
        assert await page.locator(".message.mine").count() == 0
        assert len(await box.input_value()) == 10_000

        # "Send it as 3 messages": each at most the limit, together the whole text.
        split = page.locator("#composer-split")
        assert await split.inner_text() == "send it as 3 messages"
        await split.click()
        await page.wait_for_function(
            "document.querySelectorAll('.message.mine[data-id]').length === 3", timeout=30_000
        )
        assert await page.locator(".message.pending, .message.failed").count() == 0
        parts = await page.locator(".message[data-id] .bubble").all_text_contents()
        assert all(len(part) <= MAX_TEXT_LENGTH for part in parts)
        assert " ".join(parts) == words.strip()
        assert await box.input_value() == "" and await limit.is_hidden()

        # The counter counts like the server: characters (not UTF-16 units), stripped.
        exact = "  " + "😀" * 10 + "z" * (MAX_TEXT_LENGTH - 10) + "\n"
        await box.fill(exact)
        assert await limit.get_attribute("data-count") == str(MAX_TEXT_LENGTH)
        assert await limit.get_attribute("data-state") == "near"
        assert "0 characters left" in await limit.inner_text()
        await box.press("Enter")
        await page.wait_for_function(
            "document.querySelectorAll('.message.mine[data-id]').length === 4", timeout=30_000
        )
        stored = await page.locator(".message[data-id] .bubble").last.text_content()
        assert stored == exact.strip()  # the server took all 4,000 characters
    finally:
        await context.close()


# -- 3. the countdown, "Retry now", and what was written offline -----------------------------

COUNTDOWN = re.compile(r"^Reconnecting in (\d+) s…$")


async def countdown(page):
    match = COUNTDOWN.match(await status_text(page))
    return int(match[1]) if match else None


async def wait_countdown_at_least(page, seconds, timeout):
    await page.wait_for_function(
        """(n) => {
          const m = /^Reconnecting in (\\d+) s…$/.exec(
            document.querySelector('#status .status-text').textContent);
          return m !== null && Number(m[1]) >= n;
        }""",
        arg=seconds,
        timeout=timeout,
    )


async def assert_name_in_top_bar(page, viewport, name, whole=True):
    """The signed-in user's name is shown in the top bar, on a phone too, beside the
    status badge and the sign-out button without overlapping them; ``whole``: not cut
    short either."""
    me = page.locator("#me-name")
    assert await me.is_visible()
    assert await me.inner_text() == name
    if whole:
        assert await me.evaluate("(el) => el.scrollWidth <= el.clientWidth"), "the name is cut"
    box = await me.bounding_box()
    badge = await page.locator("#status").bounding_box()
    sign_out = await page.locator(".me button[type=submit]").bounding_box()
    assert box["width"] >= 30, box
    assert badge["x"] + badge["width"] <= box["x"], (badge, box)
    assert box["x"] + box["width"] <= sign_out["x"], (box, sign_out)
    assert sign_out["x"] + sign_out["width"] <= viewport["width"], sign_out


@VIEWPORTS
async def test_countdown_each_second_retry_now_and_the_offline_message_goes_out(
    browser, page_errors, own_daphne, make_user, viewport
):
    await make_user("alice", first_name="Alice")
    await make_user("bob", first_name="Bob")
    srv = await asyncio.to_thread(own_daphne)
    port = srv.port
    context, page = await sign_in(browser, page_errors, srv.http_url, "alice", viewport)
    banner = page.locator("#connection-banner")
    try:
        await page.click(".person[data-username=bob]")
        await page.fill("#composer-text", "Before the restart")
        await page.press("#composer-text", "Enter")
        await wait_bubbles(page, ["Before the restart"])
        assert await banner.is_hidden()

        await asyncio.to_thread(srv.stop)
        # The client backs off (0.5 s, 1 s, 2 s... each minus up to half, at most 30 s):
        # wait for a wait long enough to watch (and to restart the server during it).
        await wait_countdown_at_least(page, 12, timeout=120_000)
        await banner.wait_for(state="visible")
        assert "Connection lost" in await banner.inner_text()
        assert await page.locator("#connection-action").inner_text() == "Retry now"

        # Written while offline: shown as queued, and the banner says it will go out.
        await page.fill("#composer-text", "Written while offline")
        await page.press("#composer-text", "Enter")
        queued = page.locator(".message.queued")
        await queued.wait_for()
        assert "Sends when Live" in await queued.inner_text()
        assert "1 message will be sent once Live" in await banner.inner_text()
        # A queued message can be taken back into the box instead.
        await page.fill("#composer-text", "Oops, not this")
        await page.press("#composer-text", "Enter")
        await page.locator(".message.queued >> text=Oops, not this").click()
        assert await page.locator("#composer-text").input_value() == "Oops, not this"
        assert await queued.count() == 1
        await page.fill("#composer-text", "")

        # The badge counts down, one second at a time; the server restarts meanwhile.
        restart = asyncio.create_task(asyncio.to_thread(own_daphne, port))
        seen = [await countdown(page)]
        for _ in range(2):
            await page.wait_for_selector(
                f"#status .status-text >> text='Reconnecting in {seen[-1] - 1} s…'",
                timeout=5_000,
            )
            seen.append(seen[-1] - 1)
        await assert_name_in_top_bar(page, viewport, "Alice")
        await page.screenshot(path=ARTIFACTS / f"chat-reconnecting-{width_name(viewport)}.png")
        await restart

        # "Retry now" connects at once instead of at the end of the countdown.
        left = await countdown(page)
        assert left is not None and left >= 3, f"the countdown is at {left}"
        started = time.monotonic()
        await page.click("#connection-action")
        assert await page.locator("#status").get_attribute("data-status") in (
            "connecting",
            "connected",
        )
        await page.wait_for_selector(".status[data-status=connected]", timeout=left * 1000)
        assert time.monotonic() - started < left
        await banner.wait_for(state="hidden")

        # The queued message went out by itself, once.
        await wait_bubbles(page, ["Before the restart", "Written while offline"])
        assert await page.locator(".message.queued, .message.pending").count() == 0
        await page.screenshot(path=ARTIFACTS / f"chat-back-live-{width_name(viewport)}.png")
    finally:
        await context.close()


# -- 4. the people list, the top bar, a deactivated user -------------------------------------


@sync_to_async
def make_account(username, **fields):
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    user = get_user_model().objects.create_user(username, password=PASSWORD, **fields)
    return user, f"Token {Token.objects.create(user=user).key}"


@VIEWPORTS
async def test_people_leaves_out_staff_and_inactive_users_until_they_write(
    browser, page_errors, server, make_user, viewport
):
    alice, _ = await make_user("alice", first_name="Alice", last_name="Liddell")
    await make_user("bob", first_name="Bob")
    await make_account("carol", first_name="Carol", is_active=False)
    _, admin_key = await make_account("admin", is_staff=True, is_superuser=True)
    await make_account("ops", first_name="Ops", is_staff=True)
    context, page = await sign_in(browser, page_errors, server.http_url, "alice", viewport)
    try:
        await page.wait_for_selector(".person")
        people = page.locator(".person")
        assert await people.evaluate_all("(els) => els.map((e) => e.dataset.username)") == ["bob"]
        await assert_name_in_top_bar(page, viewport, "Alice Liddell")
        await page.screenshot(path=ARTIFACTS / f"chat-people-{width_name(viewport)}.png")

        # Once the admin writes, the conversation is listed (nothing arrives unseen).
        await say_over_socket(server, admin_key, alice.pk, "Your account is ready.")
        await page.wait_for_selector(".person[data-username=admin] .unread >> text=1")
        assert await people.evaluate_all("(els) => els.map((e) => e.dataset.username)") == [
            "admin",
            "bob",
        ]
    finally:
        await context.close()


@VIEWPORTS
async def test_a_long_name_fits_the_top_bar(browser, page_errors, server, make_user, viewport):
    name = "Bartholomew Featherstonehaugh-Cholmondeley"
    await make_user("bart", first_name="Bartholomew", last_name="Featherstonehaugh-Cholmondeley")
    context, page = await sign_in(browser, page_errors, server.http_url, "bart", viewport)
    try:
        await assert_name_in_top_bar(page, viewport, name, whole=False)
        me = page.locator("#me-name")
        assert name in await me.get_attribute("title")  # the whole name, when cut short
        topbar = await page.locator(".topbar").evaluate("(el) => el.scrollWidth <= el.clientWidth")
        assert topbar, "the top bar overflows"
        await page.screenshot(path=ARTIFACTS / f"chat-long-name-{width_name(viewport)}.png")
    finally:
        await context.close()


@VIEWPORTS
async def test_a_deactivated_users_page_goes_to_the_sign_in_page(
    browser, page_errors, own_daphne, make_user, viewport
):
    await make_user("alice", first_name="Alice")
    bob, _ = await make_user("bob", first_name="Bob")
    await make_account("root", is_staff=True, is_superuser=True)
    # A server of its own: the admin's log entries need content types, which the
    # database flush between tests recreates under new ids (a shared server caches them).
    server = await asyncio.to_thread(own_daphne)
    bob_ctx, bob_page = await sign_in(browser, page_errors, server.http_url, "bob", viewport)
    admin_ctx, admin_page = await sign_in(
        browser,
        page_errors,
        server.http_url,
        "root",
        DESKTOP,
        path=f"/login/?next=/admin/auth/user/{bob.pk}/change/",
    )
    try:
        await bob_page.click(".person[data-username=alice]")
        await bob_page.wait_for_function("window.location.hash === '#@alice'")

        # An administrator deactivates Bob in the admin.
        await admin_page.wait_for_selector("#id_is_active")
        await admin_page.uncheck("#id_is_active")
        await admin_page.click("input[name=_save]")
        await admin_page.wait_for_selector(".messagelist .success")

        # Bob's page leaves the chat for the sign-in page, which says why and leads back
        # to the conversation he had open.
        await bob_page.wait_for_url("**/login/**", timeout=30_000)
        notice = bob_page.locator(".form-notice")
        assert "You were signed out" in await notice.inner_text()
        assert await bob_page.locator("input[name=next]").input_value() == "/#@alice"
        await bob_page.screenshot(path=ARTIFACTS / f"chat-deactivated-{width_name(viewport)}.png")
    finally:
        await bob_ctx.close()
        await admin_ctx.close()
