"""The browser client's documented examples run as written, in Chromium, against a real
daphne server: each ```js block of the "Browser client" docs, as a module script of a
page of the server, signed in (session cookie) or anonymous as the docs say (the token
example signs in itself)."""

import asyncio
import re
from pathlib import Path

from . import test_js_token_auth

DOCS = Path(__file__).resolve().parents[2] / "docs"

# The fixture of a server whose token endpoint is not throttled.
unthrottled_server = test_js_token_auth.unthrottled_server


def browser_docs() -> str:
    """The "Browser client" section of docs/clients.md."""
    text = (DOCS / "clients.md").read_text()
    start = text.index("## Browser client")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def examples() -> list[str]:
    return re.findall(r"```js\n(.*?)```", browser_docs(), flags=re.S)


async def signed_in_context(browser, base_url: str, username: str, password: str):
    """A browser context holding a session of ``username``, made by the server itself
    (Django's admin login form): a session made in the test process would be signed with
    this process's SECRET_KEY, which the test servers do not share."""
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(f"{base_url}/admin/login/?next=/admin/")
    await page.fill("#id_username", username)
    await page.fill("#id_password", password)
    await page.click("input[type=submit]")
    await page.wait_for_url(f"{base_url}/admin/")
    await page.close()
    return context


async def run_example(page, code: str, expected: list[str], timeout: float = 20) -> list[str]:
    """Run ``code`` as a module script; wait until it logged ``expected``, in order."""
    lines: list[str] = []
    seen = asyncio.Event()

    def on_console(message):
        lines.append(message.text)
        remaining = iter(lines)
        if all(any(line == want for line in remaining) for want in expected):
            seen.set()

    page.on("console", on_console)
    await page.add_script_tag(content=code, type="module")
    try:
        await asyncio.wait_for(seen.wait(), timeout)
    except TimeoutError:
        raise AssertionError(f"expected {expected} in the console; got {lines}") from None
    return lines


async def test_the_documented_examples_run(
    server, unthrottled_server, browser, open_page, make_user
):
    blocks = examples()
    assert len(blocks) == 7, "update this test with the docs' examples"
    quick_start, token, read_forever, errors, reconnect, handler, classes = blocks
    alice, _ = await make_user("alice", password="streampod", is_staff=True)  # admin login
    bob, _ = await make_user("bob")

    signed_in = await signed_in_context(browser, server.http_url, "alice", "streampod")

    def with_bob(code: str) -> str:
        assert "const BOB_ID = 2;" in code
        return code.replace("const BOB_ID = 2;", f"const BOB_ID = {bob.pk};")

    page = await open_page(server.http_url, context=signed_in)
    await run_example(
        page,
        with_bob(quick_start),
        ["status: connecting", "status: connected", f"ChatMessage {alice.pk} -> {bob.pk}: Hello"],
    )

    # Signing in posts to /api/auth/token/: on a server that does not throttle it, so
    # that the suite's other sign-ins do not count against these.
    page = await open_page(unthrottled_server.http_url)  # anonymous
    await run_example(
        page,
        token,
        [
            "refused: 400",
            f"signed in, user id {alice.pk}",
            "again: true",
            "refused key: null",
            "now: null",
        ],
    )

    page = await open_page(server.http_url, context=signed_in)
    await run_example(page, with_bob(read_forever), ["received: Hi Bob"])

    page = await open_page(server.http_url)  # anonymous
    await run_example(
        page,
        errors,
        [
            "not sent: The streaming connection is not connected.",
            "onError: not_authenticated",
            "true not_authenticated chat m1",
        ],
    )

    page = await open_page(server.http_url, context=signed_in)
    await run_example(page, reconnect, ["connecting", "connected"])

    page = await open_page(server.http_url, context=signed_in)
    await run_example(
        page,
        handler,
        [
            "handler: connecting null",
            "handler: connected null",
            "handler: disconnected null",
            "disposed: disconnected false",
        ],
    )

    page = await open_page(server.http_url, context=signed_in)
    await run_example(page, with_bob(classes), ["true true Hello, class", "sent in this era"])
