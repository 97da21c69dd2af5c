"""The admin's live page in real headless Chromium, over a two-server cluster.

Two daphne servers share a private redis-server. A staff user opens the page (linked
from the admin index) on server A; it lists each process that has sockets and the
cluster's totals, asked over the message bus. A socket opening on server B shows up
on the page. A signed-in user who is not staff gets the admin's login page instead,
and the ``streampod_metrics`` endpoint answers their socket ``forbidden``.

Screenshot: test-artifacts/admin-live.png.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.conftest import ARTIFACTS
from tests.e2e.redis_support import connect, recv_json
from tests.support.servers import DaphneServer, RedisServer

pytestmark = pytest.mark.redis

PASSWORD = "secret-pass-1"  # make_user's default


@pytest.fixture
def two_servers(transactional_db) -> Iterator[tuple[DaphneServer, DaphneServer]]:
    with RedisServer() as rs:
        env = {"REDIS_URL": rs.url}
        with DaphneServer(env=env) as a, DaphneServer(env=env) as b:
            yield a, b


async def sign_in(browser, page_errors, url: str, username: str):
    context = await browser.new_context(viewport={"width": 1400, "height": 700})
    page = await context.new_page()
    page.on("pageerror", lambda exc: page_errors.append(f"{username}: {exc}"))
    await page.goto(url)
    await page.fill("#id_username", username)
    await page.fill("#id_password", PASSWORD)
    await page.click("[type=submit]")
    await page.wait_for_load_state()
    return context, page


async def wait_totals(page, condition: str, timeout: float = 30_000) -> dict:
    """Wait until the page's cluster totals satisfy ``condition`` (JS, over ``t``)."""
    await page.wait_for_function(
        f"(() => {{ const t = window.streampodLive && window.streampodLive.totals;"
        f" return !!t && ({condition}); }})()",
        timeout=timeout,
    )
    return await page.evaluate("window.streampodLive.totals")


async def test_staff_see_the_cluster_live(browser, page_errors, two_servers, make_user):
    a, b = two_servers
    await make_user("ops", is_staff=True)
    context, page = await sign_in(browser, page_errors, a.http_url + "/admin/login/?next=/admin/",
                                  "ops")
    await page.click("#streampod-live-link a")
    await page.wait_for_url("**/admin/streampod/live/")
    # Server B has a socket too, so both processes answer.
    async with connect(b.ws_url) as first_on_b:
        before = await wait_totals(page, "t.processes === 2")
        row_count = await page.locator("#streampod-live tbody tr[data-process]").count()
        assert row_count == 2
        async with connect(b.ws_url) as second_on_b:
            after = await wait_totals(page, f"t.connections === {before['connections'] + 1}")
            assert after["processes"] == 2
            await page.screenshot(path=str(ARTIFACTS / "admin-live.png"), full_page=True)
            total_cell = page.locator("#streampod-live-total td").nth(1)
            assert await total_cell.inner_text() == str(after["connections"])
            await second_on_b.close()
        await wait_totals(page, f"t.connections === {before['connections']}")
        await first_on_b.close()
    await context.close()


async def test_a_user_who_is_not_staff_is_refused(browser, page_errors, two_servers, make_user):
    a, _ = two_servers
    await make_user("bob")
    context, page = await sign_in(browser, page_errors, a.http_url + "/login/", "bob")
    response = await page.goto(a.http_url + "/admin/streampod/live/")
    assert response is not None and response.ok
    assert "/admin/login/" in page.url  # the admin's login page, not the live page
    assert await page.locator("#streampod-live").count() == 0
    # The endpoint itself refuses bob's socket.
    code = await page.evaluate(
        """async () => {
            const {Client} = await import("/static/streaming/streampod.js");
            let refused = null;
            const client = new Client(undefined, {onError: (error) => { refused = error; }});
            await client.openStreamingConnection();
            const ref = client.endpoint("streampod_metrics");
            ref.sendStreamMessage(
                {className: "StreampodMetricsRequest", data: {request_id: "1"}});
            while (refused === null) await new Promise((r) => setTimeout(r, 20));
            client.closeStreamingConnection?.();
            return refused.code;
        }"""
    )
    assert code == "forbidden"
    await context.close()


async def test_an_anonymous_socket_is_refused(two_servers):
    a, _ = two_servers
    async with connect(a.ws_url) as ws:
        await ws.send(
            '{"endpoint": "streampod_metrics", "object": {"className": '
            '"StreampodMetricsRequest", "data": {"request_id": "1"}}}'
        )
        while True:
            frame = await asyncio.wait_for(recv_json(ws), 30)
            if frame.get("command") == "error":
                break
    assert frame["args"]["code"] == "not_authenticated"
