"""``kill -9`` of the server holding a browser's socket, through nginx (issue 11).

Two uvicorn servers share a private redis-server behind nginx (deploy/nginx/streampod.conf).
bob, signed in in headless Chromium, chats from the streampod.js test page; alice from
the Python client on the other server. bob's server is killed with SIGKILL: the page's
client reconnects by itself, through nginx, to the server that is left; what alice
wrote meanwhile is in the history API (fetched by the page with its session cookie);
nothing saved is lost, and the chat goes on live.
"""

from __future__ import annotations

import asyncio
import time

from chat.protocol import ChatMessage
from streaming.client import Client
from tests.e2e.test_faults import Inbox, connect_on, report
from tests.support.nginx import ACCEPTED, count_lines, nginx_cluster, wait_lines

from .support import wait_received, wait_states
from .test_js_auth import PASSWORD, log_in

GUARD = 30  # seconds: a failure guard on a wait, never a synchronisation
FAST_RETRY = "{min: 0.2, max: 1, factor: 2, jitter: 0.5}"


async def test_kill_9_the_browsers_server_it_reconnects_through_nginx_and_loses_nothing(
    browser, open_page, make_user
):
    alice, alice_key = await make_user("alice")
    bob, _ = await make_user("bob", password=PASSWORD, is_staff=True)  # admin login
    with nginx_cluster() as (nginx, _, a, b):
        context = await browser.new_context()
        await log_in(await context.new_page(), nginx.http_url, "bob")
        page = await open_page(nginx.http_url, context=context)

        # bob's page connects through nginx: which server took the socket?
        before = [count_lines(srv.output, ACCEPTED) for srv in (a, b)]
        await page.evaluate(f"window.start({{retry: {FAST_RETRY}}}); window.pump('chat')")
        await wait_states(page, "connected")
        assert await asyncio.to_thread(
            wait_lines, [a.output, b.output], ACCEPTED, sum(before) + 1, GUARD
        )
        doomed = a if count_lines(a.output, ACCEPTED) > before[0] else b
        survivor = b if doomed is a else a

        alices = Client(nginx.http_url, alice_key, connect_timeout=GUARD)
        alice_in = Inbox(alices)
        try:
            await connect_on(alices, [a, b], survivor)
            await alices.chat.send_stream_message(ChatMessage(recipient_id=bob.pk, text="hi bob"))
            await wait_received(page, "chat", 1)
            await page.evaluate(
                "(to) => window.send('chat', 'ChatMessage', {recipient_id: to, text: 'hi alice'})",
                alice.pk,
            )
            await alice_in.wait_for(lambda m: m.text == "hi alice")

            # The last message the page had before the gap: it catches up after it.
            had = await page.evaluate("window.received.chat.map((m) => m.data.id)")
            killed_at = time.monotonic()
            await asyncio.to_thread(doomed.kill)
            await wait_states(page, "waitingToRetry")
            # alice, on the other server, writes while bob's page is away; each is saved.
            away = [f"while bob is away {n}" for n in range(3)]
            for text in away:
                await alices.chat.send_stream_message(ChatMessage(recipient_id=bob.pk, text=text))
                await alice_in.wait_for(lambda m, t=text: m.text == t and m.sender_id == alice.pk)
            await wait_states(page, "connected", 2, timeout=GUARD * 1000)
            reconnected_in = time.monotonic() - killed_at
            assert doomed.proc.returncode == -9

            # The page catches up from the history API, after the last id it had before
            # the gap (what arrived live since may be newer than what it missed).
            live = await page.evaluate("window.received.chat.map((m) => m.data)")
            last_id = max(had)
            missed = await page.evaluate(
                """async ([peer, after]) => {
                    const response = await fetch(`/api/chat/messages/?with=${peer}&after=${after}`);
                    return {status: response.status, body: await response.json()};
                }""",
                [alice.pk, last_id],
            )
            assert missed["status"] == 200, missed
            seen = {m["text"] for m in live} | {m["text"] for m in missed["body"]["results"]}
            assert set(away) <= seen

            # And live again, both ways, on the server that is left.
            await page.evaluate(
                "(to) => window.send('chat', 'ChatMessage', {recipient_id: to, text: 'back'})",
                alice.pk,
            )
            await alice_in.wait_for(lambda m: m.text == "back")
            count = len(live)
            await alices.chat.send_stream_message(ChatMessage(recipient_id=bob.pk, text="welcome"))
            received = await wait_received(page, "chat", count + 1)
            while received[-1]["data"]["text"] != "welcome":
                received = await wait_received(page, "chat", len(received) + 1)

            # Nothing saved is lost: the whole conversation, in order.
            everything = await page.evaluate(
                """async (peer) => (await (await fetch(
                    `/api/chat/messages/?with=${peer}&limit=200`)).json()).results""",
                alice.pk,
            )
            assert [m["text"] for m in everything] == [
                "hi bob",
                "hi alice",
                *away,
                "back",
                "welcome",
            ]
            assert await page.evaluate("window.errorsLog") == []
            report(
                "kill -9 (browser)",
                {
                    "reconnected_in_s": round(reconnected_in, 2),
                    "states": [s["state"] for s in await page.evaluate("window.statusLog")],
                },
            )
            await page.evaluate("window.client.closeStreamingConnection()")
        finally:
            await alices.close()
            await alice_in.aclose()
            await context.close()
