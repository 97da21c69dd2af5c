"""streampod.js authenticates with the page's Django session cookie."""

from .support import states, wait_received, wait_states

PASSWORD = "secret-pass-1"


async def log_in(page, base_url, username):
    """Sign in through Django's admin login form, as a person would."""
    await page.goto(f"{base_url}/admin/login/?next=/admin/")
    await page.fill("#id_username", username)
    await page.fill("#id_password", PASSWORD)
    await page.click("input[type=submit]")
    await page.wait_for_url(f"{base_url}/admin/")


async def signed_in_pages(server, browser, open_page, username, endpoint):
    """The admin signed in as ``username`` in one tab, and a page of the same browser
    whose client (retrying at once) has read the first message of ``endpoint``."""
    context = await browser.new_context()
    admin = await context.new_page()
    await log_in(admin, server.http_url, username)
    page = await open_page(server.http_url, context=context)
    await page.evaluate(
        f"window.start({{retry: {{min: 0.05, jitter: 0}}}}); window.pump('{endpoint}')"
    )
    await wait_received(page, endpoint, 1)
    return admin, page


async def test_session_cookie_identifies_the_user_on_the_socket(
    server, browser, open_page, make_user
):
    user, _ = await make_user("staffer", password=PASSWORD, is_staff=True)
    context = await browser.new_context()
    await log_in(await context.new_page(), server.http_url, "staffer")

    page = await open_page(server.http_url, context=context)
    await page.evaluate("window.start(); window.pump('whoami'); window.pump('private')")
    await wait_states(page, "connected")
    whoami = await wait_received(page, "whoami", 1)
    assert whoami == [{"className": "WhoAmI", "data": {"user_id": user.pk, "endpoint": "whoami"}}]
    # login_required endpoint: opened for this session, and it echoes.
    private = await wait_received(page, "private", 1)
    assert private[0]["data"] == {"user_id": user.pk, "endpoint": "private"}
    await page.evaluate("window.send('private', 'Echo', {text: 'secret'})")
    private = await wait_received(page, "private", 2)
    assert private[1] == {"className": "Echo", "data": {"text": "secret", "n": 0, "at": None}}
    assert await page.evaluate("window.errorsLog") == []


async def test_logging_out_elsewhere_closes_with_4401_and_stops_retrying(
    server, browser, open_page, make_user
):
    await make_user("leaver", password=PASSWORD, is_staff=True)
    admin, page = await signed_in_pages(server, browser, open_page, "leaver", "whoami")

    # Log out in another tab: the server revokes the user's sockets (close code 4401).
    # The client tries again with the browser's cookie (it may have been renewed), asking
    # to be signed in or refused, at once and a second later (the cookie's renewal may be
    # on its way): refused twice, it stops.
    await admin.click("#logout-form button")
    await wait_states(page, "disconnected")
    assert await states(page) == [
        "connecting", "connected", "connecting", "waitingToRetry", "connecting", "disconnected"
    ]  # fmt: skip
    assert await page.evaluate("window.client.status") == {
        "state": "disconnected",
        "code": 4401,
        "reason": "unauthorized",
    }


async def test_a_password_changed_in_this_browser_keeps_its_socket_signed_in(
    server, browser, open_page, make_user
):
    """Django gives the session a new key when its user changes the password in it
    (``update_session_auth_hash``): the old key's sockets are closed with 4401. Before, the
    page's socket stayed down ("unauthorized") though the browser was still signed in;
    now the client connects once more with the renewed cookie and goes on as the user."""
    user, _ = await make_user("changer", password=PASSWORD, is_staff=True)
    admin, page = await signed_in_pages(server, browser, open_page, "changer", "private")

    await admin.goto(f"{server.http_url}/admin/password_change/")
    await admin.fill("#id_old_password", PASSWORD)
    await admin.fill("#id_new_password1", "another-pass-2")
    await admin.fill("#id_new_password2", "another-pass-2")
    await admin.click("input[type=submit]")
    await admin.wait_for_url(f"{server.http_url}/admin/password_change/done/")

    await wait_states(page, "connected", 2)
    # The server revokes the old session's sockets before the response that renews the
    # cookie reaches the browser: the first try may still carry the old cookie (refused),
    # the second, a second later, carries the new one.
    assert await states(page) in (
        ["connecting", "connected", "connecting", "connected"],
        ["connecting", "connected", "connecting", "waitingToRetry", "connecting", "connected"],
    )
    private = await wait_received(page, "private", 2)  # opened again: signed in
    assert private[1]["data"] == {"user_id": user.pk, "endpoint": "private"}
    await page.evaluate("window.send('private', 'Echo', {text: 'still me'})")
    private = await wait_received(page, "private", 3)
    assert private[2]["data"]["text"] == "still me"
    assert await page.evaluate("window.client.status") == {"state": "connected"}


async def test_a_renewal_that_fails_on_the_way_is_tried_again_as_a_renewal(
    server, browser, open_page, make_user
):
    """A review: the one try with ``?require_user=1`` after a 4401 could fail for another
    reason (the network, a draining server); the retries after it went without it, and
    the server served the logged-out page as an anonymous socket: "connected". Once a
    renewal has begun, every try asks for a signed-in user, until the page closes."""
    await make_user("leaver2", password=PASSWORD, is_staff=True)
    context = await browser.new_context()
    admin = await context.new_page()
    await log_in(admin, server.http_url, "leaver2")
    urls: list[str] = []

    async def route(ws):
        urls.append(ws.url)
        if "require_user=1" in ws.url and sum("require_user=1" in u for u in urls) == 1:
            await ws.close(code=4000, reason="lost on the way")  # not the server's answer
            return
        ws.connect_to_server()

    await context.route_web_socket("**/websocket/**", route)  # the page's sockets
    page = await open_page(server.http_url, context=context)
    await page.evaluate("window.start({retry: {min: 0.05, jitter: 0}}); window.pump('whoami')")
    await wait_received(page, "whoami", 1)

    await admin.click("#logout-form button")
    await wait_states(page, "disconnected")
    assert await page.evaluate("window.client.status") == {
        "state": "disconnected",
        "code": 4401,
        "reason": "unauthorized",
    }  # before: "connected", as an anonymous socket
    assert [u.endswith("?require_user=1") for u in urls] == [False, True, True, True], urls
