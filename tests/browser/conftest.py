"""Fixtures of the browser tests: Debian's Chromium driven by Playwright (async API).

Chromium comes from the system (``/usr/bin/chromium``, or ``STREAMPOD_CHROMIUM``), not
from Playwright's download. When it is missing the tests fail under ``CI=true`` and
are skipped elsewhere, with the reason.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.servers import IN_CI

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]
PAGE_PATH = "/e2e/js-client/"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/browser/" in str(item.fspath):
            item.add_marker(pytest.mark.browser)
            item.add_marker(pytest.mark.e2e)


def chromium_path() -> str:
    """The Chromium binary; fail (CI) or skip (elsewhere) when there is none."""
    candidate = os.environ.get("STREAMPOD_CHROMIUM", "/usr/bin/chromium")
    found = candidate if Path(candidate).is_file() else shutil.which("chromium")
    if found is None:
        message = f"Chromium not found at {candidate} nor on PATH (`make browser` installs it)"
        if IN_CI:
            pytest.fail(message + "; CI=true needs it")
        pytest.skip(message)
    return found


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """A headless Chromium, closed after the test."""
    executable = chromium_path()
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        instance = await playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            await instance.close()


class PageErrors(list[str]):
    """Uncaught exceptions of the pages a test opened; any fails the test."""


@pytest.fixture
async def page_errors() -> AsyncIterator[PageErrors]:
    errors = PageErrors()
    yield errors
    assert not errors, f"uncaught errors in the page: {errors}"


@pytest.fixture
def open_page(
    browser: Any, page_errors: PageErrors
) -> Callable[..., Awaitable[Any]]:
    """``await open_page(base_url, context=None, query="")``: the test page, loaded.

    Waits until the page's module ran (``window.pageReady``), which also proves that
    ``streampod.js`` loaded from the server's static files.
    """

    async def open_(base_url: str, context: Any = None, query: str = "") -> Any:
        context = context or await browser.new_context()
        page = await context.new_page()
        page.on("pageerror", lambda exc: page_errors.append(str(exc)))
        await page.goto(base_url + PAGE_PATH + query)
        await page.wait_for_function("window.pageReady === true")
        return page

    return open_


@pytest.fixture
def own_daphne(django_db_setup: Any) -> Iterator[Callable[..., Any]]:
    """``srv = await asyncio.to_thread(own_daphne, port)``: a daphne of the test's own
    (to stop, freeze or restart on the same port), stopped after the test."""
    from tests.support.servers import DaphneServer

    started: list[DaphneServer] = []

    def start(port: int | None = None) -> DaphneServer:
        srv = DaphneServer(port=port)
        started.append(srv)
        return srv.start()

    yield start
    for srv in started:
        if srv.proc is not None and srv.proc.poll() is None:
            os.kill(srv.proc.pid, signal.SIGCONT)  # a test may have frozen it
        srv.stop()
