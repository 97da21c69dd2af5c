"""streampod.js on a graceful restart: close code 1012 means "retry soon", at a random
moment of ``retry.restartSpread`` (so that one server's clients do not all return in the
same instant), with no backoff delay and no failure counted; other codes keep the backoff.
The Python client's twin is tests/test_client_restart.py; the servers' side,
tests/e2e/test_graceful.py."""

import asyncio
import json
import signal

from tests.support.fake_servers import advising_restarts, credit_ignoring

from .support import wait_states, ws_server

#: A minimum delay far beyond the test's waits: only "no backoff" reconnects in time.
SLOW_RETRY = "{min: 60, max: 120, factor: 2, jitter: 0, restartSpread: 0}"
PONG = json.dumps({"command": "pong", "args": {}})


async def test_a_1012_close_reconnects_within_the_spread_and_1001_still_backs_off(
    server, open_page
):
    codes = iter([1012, 1012, 1001])
    accepted = 0

    async def handler(ws):
        nonlocal accepted
        accepted += 1
        await ws.recv()  # the first ping
        await ws.send(PONG)
        code = next(codes, None)
        if code is None:
            await ws.wait_closed()
            return
        await ws.close(code)

    async with ws_server(handler) as base_url:
        page = await open_page(server.http_url)
        # The page's random draws are fixed at a quarter: each 1012 waits 0.1 s of 0.4.
        await page.evaluate("Math.random = () => 0.25")
        # Every connection counts as one that held (stableAfter 0): each 1012 is free.
        retry = "{min: 60, max: 120, factor: 2, jitter: 0, restartSpread: 0.4, stableAfter: 0}"
        await page.evaluate(f"(url) => window.start({{retry: {retry}}}, url)", base_url)
        await wait_states(page, "waitingToRetry", 3)
        log = await page.evaluate("window.statusLog")
        waits = [(s["code"], s["retryInSeconds"]) for s in log if s["state"] == "waitingToRetry"]
        assert waits == [(1012, 0.1), (1012, 0.1), (1001, 60)]  # no failure counted for 1012
        assert accepted == 3
        assert [s["state"] for s in log] == [
            "connecting",
            "connected",
            "waitingToRetry",
            "connecting",
            "connected",
            "waitingToRetry",
            "connecting",
            "connected",
            "waitingToRetry",
        ]
        reason = await page.evaluate(
            "[window.client.disconnectReason.message,"
            " window.client.disconnectReason.isServiceRestart]"
        )
        assert reason == ["the server is going away (close code 1001)", False]
        await page.evaluate("window.client.closeStreamingConnection()")


async def _waits_closed_once_up(open_page, server, code: int, count: int) -> list[float]:
    """The first ``count`` waits of a page whose every connection the server closes with
    ``code`` right after its pong (min 0.05 s, doubling up to 0.4 s, no jitter)."""

    async def closing(ws):
        await ws.recv()
        await ws.send(PONG)
        await ws.close(code)

    async with ws_server(closing) as base_url:
        page = await open_page(server.http_url)
        retry = "{min: 0.05, max: 0.4, factor: 2, jitter: 0, restartSpread: 0}"
        await page.evaluate(f"(url) => window.start({{retry: {retry}}}, url)", base_url)
        await wait_states(page, "waitingToRetry", count)
        log = await page.evaluate("window.statusLog")
        await page.evaluate("window.client.closeStreamingConnection()")
    return [s["retryInSeconds"] for s in log if s["state"] == "waitingToRetry"][:count]


async def test_1012s_in_a_row_on_connections_that_did_not_hold_back_off(server, open_page):
    """A server that closes every connection with 1012 right after its pong. Seen (a client
    review): Chromium came back 75 times a second with restartSpread 0, twice a second at
    the default, for ever. Expected: the first 1012 is free, the next ones back off."""
    waits = await _waits_closed_once_up(open_page, server, 1012, 6)
    assert waits == [0, 0.05, 0.1, 0.2, 0.4, 0.4]


async def test_connections_closed_once_up_back_off(server, open_page):
    """The Python client's twin: a server that closes every connection right after its
    pong with another code (4013: shedding load). Seen (helper "chaos10"): the backoff
    started over at each connection that came up, so Chromium came back about 3 times a
    second, for ever. Expected: one that did not hold for stableAfter is a failure."""
    waits = await _waits_closed_once_up(open_page, server, 4013, 5)
    assert waits == [0.05, 0.1, 0.2, 0.4, 0.4]


async def test_a_1012_waits_as_long_as_the_servers_close_reason_advises(server, open_page):
    """The Python client's twin (tests/test_client_restart.py): a 1012's close reason
    ("restart after=A spread=S", the server's RESTART_RATE) delays the reconnect to A
    plus a random moment of the larger of S and the page's own restartSpread."""
    advising = advising_restarts(["restart after=0.3 spread=2", "restart spread=0.1"])

    async with ws_server(advising) as base_url:
        page = await open_page(server.http_url)
        await page.evaluate("Math.random = () => 0.5")
        retry = "{min: 60, max: 120, factor: 2, jitter: 0, restartSpread: 0.4, stableAfter: 0}"
        await page.evaluate(f"(url) => window.start({{retry: {retry}}}, url)", base_url)
        await wait_states(page, "waitingToRetry", 2)
        log = await page.evaluate("window.statusLog")
        waits = [s["retryInSeconds"] for s in log if s["state"] == "waitingToRetry"]
        # 0.3 + 2 x 0.5; then the page's own 0.4 (larger than the advised 0.1) x 0.5.
        assert waits == [1.3, 0.2]
        advice = await page.evaluate(
            "['restart after=2.5 spread=4', 'restart after=700 spread=5', 'bye', '']"
            ".map((r) => window.streampod.restartAdvice(r))"
        )
        assert advice == [
            {"after": 2.5, "spread": 4},
            {"after": 600, "spread": 0},
            {"after": 0, "spread": 0},
            {"after": 0, "spread": 0},
        ]
        await page.evaluate("window.client.closeStreamingConnection()")


async def test_a_1012_before_the_connection_is_up_is_backed_off(server, open_page):
    """A draining server may accept a handshake and close it at once with 1012 (daphne's,
    streaming/shutdown.py). Seen (a client robustness review): Chromium retried every such
    close at once, 256 attempts in 3 s. Expected: a 1012 before the first pong is a failed
    attempt, backed off like any other."""
    accepted = 0

    async def refusing(ws):
        nonlocal accepted
        accepted += 1
        await ws.close(1012)  # before any pong

    async with ws_server(refusing) as base_url:
        page = await open_page(server.http_url)
        await page.evaluate(f"(url) => window.start({{retry: {SLOW_RETRY}}}, url)", base_url)
        await wait_states(page, "waitingToRetry")
        log = await page.evaluate("window.statusLog")
        waits = [(s["code"], s["retryInSeconds"]) for s in log if s["state"] == "waitingToRetry"]
        assert waits == [(1012, 60)]
        assert accepted == 1
        await page.evaluate("window.client.closeStreamingConnection()")


async def test_a_server_shut_down_by_sigterm_closes_the_page_with_1012(own_daphne, open_page):
    srv = await asyncio.to_thread(own_daphne)
    page = await open_page(srv.http_url)
    await page.evaluate(f"window.start({{retry: {SLOW_RETRY}}})")
    await wait_states(page, "connected")
    srv.proc.send_signal(signal.SIGTERM)
    await wait_states(page, "waitingToRetry")
    log = await page.evaluate("window.statusLog")
    first_loss = next(s for s in log if s["state"] == "waitingToRetry")
    # At most the server's advice for its one socket: 1 / RESTART_RATE (200) seconds.
    assert first_loss["code"] == 1012 and first_loss["retryInSeconds"] <= 0.005, first_loss
    reason = await page.evaluate(
        "(() => { const r = new window.streampod.DisconnectReason(1012, 'lost');"
        " return [r.message, r.isServiceRestart]; })()"
    )
    assert reason == ["the server is restarting (close code 1012)", True]
    await page.evaluate("window.client.closeStreamingConnection()")


async def test_values_past_the_credit_fail_the_call_instead_of_filling_memory(server, open_page):
    """A server that ignores the credit the page granted. Seen (a client robustness
    review): 100,000 values waited in the page for a reader that had stopped. Expected:
    the call rejects with CallFailed ``rate_limited`` at the first value past the credit,
    the page sends ``cancel``, and at most the credit waits."""
    cancelled = asyncio.get_running_loop().create_future()

    flooding = credit_ignoring(cancelled)

    async with ws_server(flooding) as base_url:
        page = await open_page(server.http_url)
        await page.evaluate("(url) => window.start({}, url)", base_url)
        await wait_states(page, "connected")
        await page.evaluate(
            """async () => {
                window.theCall = window.client.endpoint('numbers').call('count', {}, {credit: 64});
                const iterator = window.theCall[Symbol.asyncIterator]();
                window.first = (await iterator.next()).value;  // then reads nothing more
            }"""
        )
        await page.wait_for_function("window.theCall._outcome !== null", timeout=20_000)
        first, name, code, call_id, waiting = await page.evaluate(
            """() => {
                const error = window.theCall._outcome.error;
                return [window.first, error && error.name, error && error.code,
                        window.theCall.id, window.theCall._values.length];
            }"""
        )
        assert (first, name, code) == (0, "CallFailed", "rate_limited")
        assert await asyncio.wait_for(cancelled, 20) == call_id
        assert waiting <= 64
