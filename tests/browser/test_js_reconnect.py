"""streampod.js keeping its connection up: heartbeat, dead-connection detection,
reconnects with backoff, and the close codes that stop it."""

import asyncio
import json
import os
import signal

from tests.conftest import ARTIFACTS

from .support import states, wait_received, wait_states, ws_server

#: Exact delays: no jitter, a 1012 retried at once (restartSpread 0), and every connection
#: counted as one that held (stableAfter 0), so each 1012 is free.
FAST_RETRY = "{min: 0.05, max: 0.4, factor: 2, jitter: 0, restartSpread: 0, stableAfter: 0}"


async def test_pings_on_a_timer_and_stays_connected(server, open_page):
    page = await open_page(server.http_url)
    sockets, pings, pongs = [], [], []
    three_pongs = asyncio.Event()

    def on_socket(ws):
        sockets.append(ws.url)
        ws.on("framesent", lambda payload: pings.append(payload) if "ping" in payload else None)

        def received(payload):
            if json.loads(payload).get("command") == "pong":
                pongs.append(payload)
                if len(pongs) >= 3:
                    three_pongs.set()

        ws.on("framereceived", received)

    page.on("websocket", on_socket)
    await page.evaluate("window.start({pingInterval: 0.2, silenceTimeout: 5})")
    await asyncio.wait_for(three_pongs.wait(), 20)
    assert sockets == [server.ws_url]  # one socket: nothing was dropped and retried
    assert {json.loads(p)["command"] for p in pings} == {"ping"}
    assert await states(page) == ["connecting", "connected"]


async def test_connected_only_after_the_first_pong(server, open_page):
    """A server that accepts the socket but never answers: "connecting", never "connected"."""
    opened, first_frames = [], []

    async def handler(ws):
        opened.append(ws)
        first = await ws.recv()
        first_frames.append(json.loads(first))
        if len(opened) == 1:
            await ws.wait_closed()  # never answer the first connection
            return
        await ws.send(json.dumps({"command": "pong", "args": {}}))
        await ws.wait_closed()

    async with ws_server(handler) as base_url:
        page = await open_page(server.http_url)
        await page.evaluate(
            "(url) => window.start({connectTimeout: 1, retry: {min: 0.05, jitter: 0}}, url)",
            base_url,
        )
        await wait_states(page, "connected")
        assert await states(page) == ["connecting", "waitingToRetry", "connecting", "connected"]
        # The client pings as soon as the socket opens, on both attempts.
        assert first_frames == [{"command": "ping", "args": {}}] * 2
        await page.evaluate("window.client.closeStreamingConnection()")


async def test_reconnects_after_a_restart_on_the_same_port(own_daphne, open_page):
    srv = await asyncio.to_thread(own_daphne)
    port = srv.port
    page = await open_page(srv.http_url)
    # The server's 1012 advises a moment within 1 / RESTART_RATE s for its one socket
    # (docs/protocol.md): the page's draws are 0 so the waits are exact.
    await page.evaluate("Math.random = () => 0")
    await page.evaluate(f"window.start({{retry: {FAST_RETRY}}}); window.pump('echo')")
    await wait_states(page, "connected")
    await page.evaluate("window.send('echo', 'Echo', {text: 'before'})")
    await wait_received(page, "echo", 1)

    await asyncio.to_thread(srv.stop)
    await wait_states(page, "waitingToRetry", 5)
    await page.screenshot(path=str(ARTIFACTS / "js_client_reconnecting.png"), full_page=True)
    srv = await asyncio.to_thread(own_daphne, port)
    await wait_states(page, "connected", 2, timeout=30_000)

    # The same stream, read by the same loop since before the restart, goes on.
    await page.evaluate("window.send('echo', 'Echo', {text: 'after'})")
    received = await wait_received(page, "echo", 2)
    assert [message["data"]["text"] for message in received] == ["before", "after"]

    log = await page.evaluate("window.statusLog")
    connected = [i for i, status in enumerate(log) if status["state"] == "connected"]
    outage = log[connected[0] + 1 : connected[1]]
    # The stop is graceful (close 1012, streaming/shutdown.py): one attempt at once, then,
    # the server being gone, exponential backoff capped at max (jitter 0 makes it exact).
    assert outage[0]["code"] == 1012
    delays = [s["retryInSeconds"] for s in outage if s["state"] == "waitingToRetry"]
    assert delays[:6] == [0, 0.05, 0.1, 0.2, 0.4, 0.4]
    assert all(delay == 0.4 for delay in delays[5:])
    assert {s["state"] for s in outage} == {"waitingToRetry", "connecting"}

    # After a success the backoff starts over (after the immediate retry on 1012).
    await asyncio.to_thread(srv.stop)
    await wait_states(page, "waitingToRetry", len(delays) + 2)
    log = await page.evaluate("window.statusLog")
    waits = [s for s in log[connected[1] + 1 :] if s["state"] == "waitingToRetry"]
    assert [s["retryInSeconds"] for s in waits[:2]] == [0, 0.05]
    await page.evaluate("window.client.closeStreamingConnection()")


async def test_a_silent_server_is_dropped_and_retried(own_daphne, open_page):
    """A frozen server (SIGSTOP) keeps its TCP connections but answers nothing."""
    srv = await asyncio.to_thread(own_daphne)
    page = await open_page(srv.http_url)
    await page.evaluate(
        "window.start({pingInterval: 0.5, silenceTimeout: 2, connectTimeout: 2,"
        f" retry: {FAST_RETRY}}}); window.pump('echo')"
    )
    await wait_states(page, "connected")
    os.kill(srv.proc.pid, signal.SIGSTOP)
    try:
        # Silence -> dead -> retry; the retry's handshake gets no answer either.
        await wait_states(page, "waitingToRetry", 2)
        log = await page.evaluate("window.statusLog")
        assert [s["state"] for s in log[:3]] == ["connecting", "connected", "waitingToRetry"]
    finally:
        os.kill(srv.proc.pid, signal.SIGCONT)
    await wait_states(page, "connected", 2, timeout=30_000)
    await page.evaluate("window.send('echo', 'Echo', {text: 'thawed'})")
    received = await wait_received(page, "echo", 1)
    assert received[0]["data"]["text"] == "thawed"
    await page.evaluate("window.client.closeStreamingConnection()")


async def test_close_code_4403_stops_retrying(server, open_page):
    connections = []

    async def handler(ws):
        connections.append(ws)
        await ws.close(4403)

    async with ws_server(handler) as base_url:
        page = await open_page(server.http_url)
        await page.evaluate(
            "(url) => window.start({retry: {min: 0.05, jitter: 0}}, url)", base_url
        )
        await page.wait_for_function("window.openResult !== null")
        assert await page.evaluate("window.openResult") == "rejected: forbidden 4403"
        assert await page.evaluate("window.statusLog") == [
            {"state": "connecting"},
            {"state": "disconnected", "code": 4403, "reason": "forbidden"},
        ]
        assert len(connections) == 1


async def test_without_retry_a_lost_connection_is_final(own_daphne, open_page):
    srv = await asyncio.to_thread(own_daphne)
    page = await open_page(srv.http_url)
    await page.evaluate("window.start({retry: false})")
    await wait_states(page, "connected")
    await asyncio.to_thread(srv.stop)
    await wait_states(page, "disconnected")
    log = await page.evaluate("window.statusLog")
    assert [s["state"] for s in log] == ["connecting", "connected", "disconnected"]
    assert log[-1]["reason"] == "lost"


async def test_a_server_that_talks_but_never_reads_is_dropped_and_retried(server, open_page):
    """A server that keeps sending frames but reads nothing (its loop stuck on reading, a
    proxy forwarding one way only). Before 2026-11-30 any frame counted as life: the page
    stayed "connected" for ever while what it sent piled up in the browser
    (`bufferedAmount`) and went nowhere. Now a page whose frames have not left the
    browser for `silenceTimeout` drops the link and retries."""
    from tests.support.fake_servers import deaf_chatter

    async with await deaf_chatter() as chatter:
        base_url = f"http://127.0.0.1:{chatter.sockets[0].getsockname()[1]}"
        page = await open_page(server.http_url)
        await page.evaluate(
            "(url) => window.start({pingInterval: 0.2, silenceTimeout: 1, retry: {min: 5}},"
            " url)",
            base_url,
        )
        await wait_states(page, "connected")
        # 16 MB: more than the socket buffers on both sides hold.
        await page.evaluate(
            "() => { for (let i = 0; i < 256; i++)"
            " window.send('chat', 'Nx', {text: 'x'.repeat(65000)}); }"
        )
        await wait_states(page, "waitingToRetry", timeout=15_000)  # a guard: it never came
        assert (await states(page))[:3] == ["connecting", "connected", "waitingToRetry"]
        await page.evaluate("window.client.closeStreamingConnection()")

