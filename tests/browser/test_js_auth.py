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
    # The client tries once more with the browser's cookie (it may have been renewed),
    # asking to be signed in or refused: refused, it stops.
    await admin.click("#logout-form button")
    await wait_states(page, "disconnected")
    assert await states(page) == ["connecting", "connected", "connecting", "disconnected"]
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
    assert await states(page) == ["connecting", "connected", "connecting", "connected"]
    private = await wait_received(page, "private", 2)  # opened again: signed in
    assert private[1]["data"] == {"user_id": user.pk, "endpoint": "private"}
    await page.evaluate("window.send('private', 'Echo', {text: 'still me'})")
    private = await wait_received(page, "private", 3)
    assert private[2]["data"]["text"] == "still me"
    assert await page.evaluate("window.client.status") == {"state": "connected"}
