"""The browser client's documented examples run as written, in Chromium, against a real
daphne server: each ```js block of the "Browser client" docs, as a module script of a
page of the server, signed in (session cookie) or anonymous as the docs say."""

import asyncio
import re
from pathlib import Path

from asgiref.sync import sync_to_async

DOCS = Path(__file__).resolve().parents[2] / "docs"


def browser_docs() -> str:
    """The "Browser client" section of docs/clients.md."""
    text = (DOCS / "clients.md").read_text()
    start = text.index("## Browser client")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def examples() -> list[str]:
    return re.findall(r"```js\n(.*?)```", browser_docs(), flags=re.S)


async def session_cookie(user, url: str) -> dict[str, str]:
    """A browser cookie of a signed-in session for ``user`` (django.test's force_login)."""
    from django.conf import settings
    from django.test import Client

    def login() -> str:
        client = Client()
        client.force_login(user)
        return client.cookies[settings.SESSION_COOKIE_NAME].value

    return {"name": settings.SESSION_COOKIE_NAME, "value": await sync_to_async(login)(), "url": url}


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


async def test_the_documented_examples_run(server, browser, open_page, make_user):
    blocks = examples()
    assert len(blocks) == 4, "update this test with the docs' examples"
    quick_start, read_forever, errors, reconnect = blocks
    alice, _ = await make_user("alice")
    bob, _ = await make_user("bob")

    signed_in = await browser.new_context()
    await signed_in.add_cookies([await session_cookie(alice, server.http_url)])

    def with_bob(code: str) -> str:
        assert "const BOB_ID = 2;" in code
        return code.replace("const BOB_ID = 2;", f"const BOB_ID = {bob.pk};")

    page = await open_page(server.http_url, context=signed_in)
    await run_example(
        page,
        with_bob(quick_start),
        ["status: connecting", "status: connected", f"ChatMessage {alice.pk} -> {bob.pk}: Hello"],
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
