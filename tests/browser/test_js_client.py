"""streampod.js in headless Chromium against a real daphne server: connect, send,
receive, buffering, errors and status listeners."""

import httpx

from .support import states, wait_received, wait_states

ECHO_DEFAULTS = {"n": 0, "at": None}


async def test_module_is_served_by_whitenoise_under_daphne(server):
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        response = await http.get("/static/streaming/streampod.js")
    assert response.status_code == 200
    assert "javascript" in response.headers["content-type"]
    assert "export class Client" in response.text


async def test_connects_and_reports_connecting_then_connected(server, open_page):
    page = await open_page(server.http_url)
    url = await page.evaluate("window.start()")
    assert url == server.ws_url  # default: the page's own origin
    await page.wait_for_function("window.openResult === 'connected'")
    assert await states(page) == ["connecting", "connected"]
    assert await page.evaluate("window.client.status.state") == "connected"


async def test_send_and_receive_through_echo(server, open_page):
    page = await open_page(server.http_url)
    await page.evaluate("window.start(); window.pump('echo')")
    await wait_states(page, "connected")
    for i in range(3):
        sent = await page.evaluate(
            "(i) => window.send('echo', 'Echo', {text: `hello ${i}`, n: i})", i
        )
        assert sent == "sent"
    # A Date is sent as UTC ISO 8601, which the server's strict datetime accepts.
    await page.evaluate(
        "window.send('echo', 'Echo', {text: 'dated', at: new Date(Date.UTC(2026, 0, 2, 3, 4, 5))})"
    )
    received = await wait_received(page, "echo", 4)
    assert received == [
        {"className": "Echo", "data": {"text": "hello 0", "n": 0, "at": None}},
        {"className": "Echo", "data": {"text": "hello 1", "n": 1, "at": None}},
        {"className": "Echo", "data": {"text": "hello 2", "n": 2, "at": None}},
        {"className": "Echo", "data": {"text": "dated", "n": 0, "at": "2026-01-02T03:04:05Z"}},
    ]


async def test_whoami_sent_on_open_is_kept_until_the_page_iterates(server, open_page):
    page = await open_page(server.http_url)
    await page.evaluate("window.start()")
    await wait_states(page, "connected")
    # The server sent WhoAmI while the socket opened; nobody has asked for it yet.
    await page.wait_for_function("window.client.endpoint('whoami').buffered === 1")
    await page.evaluate("window.pump('whoami')")
    received = await wait_received(page, "whoami", 1)
    assert received == [{"className": "WhoAmI", "data": {"user_id": None, "endpoint": "whoami"}}]


async def test_sending_when_not_connected_throws_not_connected(server, open_page):
    page = await open_page(server.http_url)
    result = await page.evaluate(
        """async () => {
            const {Client, NotConnected} = window.streampod;
            const client = new Client();
            const attempt = () => {
                try {
                    const message = {className: 'Echo', data: {text: 'x'}};
                    client.endpoint('echo').sendStreamMessage(message);
                    return 'sent';
                } catch (error) {
                    return error instanceof NotConnected ? error.name : `other: ${error}`;
                }
            };
            const before = attempt();
            await client.openStreamingConnection();
            const during = attempt();
            client.closeStreamingConnection();
            return [before, during, attempt(), client.status.state, client.status.reason];
        }"""
    )
    assert result == ["NotConnected", "sent", "NotConnected", "disconnected", "closed"]


async def test_error_frames_reach_the_errors_stream_and_on_error(server, open_page):
    page = await open_page(server.http_url)
    await page.evaluate("window.start(); window.pump('echo')")
    await wait_states(page, "connected")
    await page.evaluate("window.send('echo', 'NoSuchClass', {}, 'f1')")
    await page.evaluate("window.send('echo', 'Echo', {text: 5}, 'f2')")
    await page.evaluate("window.send('private', 'Echo', {text: 'hi'}, 'f3')")
    await page.wait_for_function("window.errorsLog.length >= 3")
    errors = await page.evaluate("window.errorsLog")
    by_id = {error["id"]: error for error in errors}
    assert by_id["f1"]["name"] == "ServerError"
    assert (by_id["f1"]["code"], by_id["f1"]["endpoint"]) == ("unknown_class", "echo")
    assert (by_id["f2"]["code"], by_id["f2"]["endpoint"]) == ("invalid_message", "echo")
    assert [entry["path"] for entry in by_id["f2"]["errors"]] == ["text"]
    assert (by_id["f3"]["code"], by_id["f3"]["endpoint"]) == ("not_authenticated", "private")
    assert await page.evaluate("window.callbackErrors") == errors
    # The connection goes on.
    await page.evaluate("window.send('echo', 'Echo', {text: 'still here'})")
    received = await wait_received(page, "echo", 1)
    assert received == [{"className": "Echo", "data": {"text": "still here", **ECHO_DEFAULTS}}]
    assert await states(page) == ["connecting", "connected"]


async def test_full_buffer_drops_the_oldest_and_the_next_read_reports_the_gap(
    server, open_page
):
    page = await open_page(server.http_url)
    await page.evaluate("window.start({bufferSize: 3})")
    await wait_states(page, "connected")
    await page.evaluate(
        "for (let i = 0; i < 5; i++) window.send('echo', 'Echo', {text: String(i)})"
    )
    await page.wait_for_function("window.client.endpoint('echo').dropped === 2")
    assert await page.evaluate("window.client.endpoint('echo').buffered") == 3
    # The page's reader catches StreamOverflow, notes it and iterates again.
    await page.evaluate("window.pump('echo')")
    received = await wait_received(page, "echo", 3)
    assert [message["data"]["text"] for message in received] == ["2", "3", "4"]
    assert await page.evaluate("window.gaps") == {"echo": [2]}
    # Reported once: later messages flow without another gap.
    await page.evaluate("window.send('echo', 'Echo', {text: '5'})")
    received = await wait_received(page, "echo", 4)
    assert received[-1]["data"]["text"] == "5"
    assert await page.evaluate("window.gaps") == {"echo": [2]}
    assert await page.evaluate("window.errorsLog") == []


async def test_status_listeners_fire_on_changes_only_and_can_be_removed(server, open_page):
    page = await open_page(server.http_url)
    seen = await page.evaluate(
        """async () => {
            const client = new window.streampod.Client();
            const first = [], second = [];
            const a = (s) => first.push(s.state), b = (s) => second.push(s.state);
            client.addStreamingConnectionStatusListener(a);
            client.addStreamingConnectionStatusListener(b);
            await client.openStreamingConnection();
            await client.openStreamingConnection();   // already connected: no change
            client.removeStreamingConnectionStatusListener(b);
            client.closeStreamingConnection();
            client.closeStreamingConnection();        // already disconnected: no change
            return [first, second, client.status];
        }"""
    )
    assert seen == [
        ["connecting", "connected", "disconnected"],
        ["connecting", "connected"],
        {"state": "disconnected", "code": 1000, "reason": "closed"},
    ]


async def test_the_page_sends_typed_text_and_renders_it(server, open_page):
    """The page's own form, as a user drives it; the screenshot is in test-artifacts/."""
    from tests.conftest import ARTIFACTS

    page = await open_page(server.http_url, query="?autostart=1")
    await page.wait_for_function("window.openResult === 'connected'")
    await page.fill("#echo-text", "hello from Chromium")
    await page.click("#echo-send")
    await page.wait_for_selector("#received-log li:has-text('hello from Chromium')")
    assert await page.text_content("#status") == "connected"
    assert await page.text_content("#send-result") == "sent"
    await page.screenshot(path=str(ARTIFACTS / "js_client.png"), full_page=True)


async def test_socket_urls_backoff_and_option_checks(server, open_page):
    page = await open_page(server.http_url)
    result = await page.evaluate(
        """() => {
            const {Client, backoffDelay, socketUrl} = window.streampod;
            const policy = {min: 0.5, max: 30, factor: 2, jitter: 0.5};
            const refused = (options) => {
                try { new Client(undefined, options); return 'accepted'; }
                catch (error) { return error.name; }
            };
            return {
                urls: [socketUrl('https://example.com'), socketUrl('http://h:81/app/'),
                       socketUrl('ws://h/websocket/'), new Client('/').url],
                // min * factor ** attempt, capped at max, shortened by up to jitter.
                longest: [0, 1, 2, 6, 7].map((n) => backoffDelay(n, policy, () => 0)),
                shortest: [0, 1, 2, 6, 7].map((n) => backoffDelay(n, policy, () => 1)),
                refused: [refused({pingIntervall: 1}), refused({retry: {minimum: 1}}),
                          refused({pingInterval: 50}), refused({retry: false}),
                          refused({retry: {restartSpread: -1}}),
                          refused({retry: {restartSpread: 0}}),
                          refused({retry: {restartSpread: Infinity}}),
                          refused({retry: {stableAfter: NaN}})],
            };
        }"""
    )
    assert result == {
        "urls": [
            "wss://example.com/websocket/",
            "ws://h:81/app/websocket/",
            "ws://h/websocket/",
            server.ws_url,
        ],
        "longest": [0.5, 1, 2, 30, 30],
        "shortest": [0.25, 0.5, 1, 15, 15],
        "refused": [
            "TypeError", "TypeError", "TypeError", "accepted",
            "TypeError", "accepted", "TypeError", "TypeError",
        ],
    }


async def test_messages_for_ever_new_endpoint_names_do_not_fill_the_page(server, open_page):
    """A server that sends each message to another endpoint name. Seen (a client robustness
    review): 50,000 names made 50,001 endpoint streams in the page. Expected: past
    MAX_ENDPOINTS streams, a message for a new name is dropped and reported on ``errors``
    (``unknown_endpoint``)."""
    from tests.support.fake_servers import many_endpoints

    from .support import ws_server

    async with ws_server(many_endpoints(356)) as base_url:
        page = await open_page(server.http_url)
        await page.evaluate("(url) => window.start({}, url)", base_url)
        result = await page.evaluate(
            """async () => {
                for await (const message of window.client.endpoint('e0').stream) {
                    if (message.data.n === -1) break;
                }
                return [window.client._endpoints.size, window.streampod.MAX_ENDPOINTS];
            }"""
        )
        assert result == [256, 256]
        await page.wait_for_function("window.errorsLog.length >= 100", timeout=20_000)
        codes = await page.evaluate("window.errorsLog.map((e) => e.code)")
        assert set(codes) == {"unknown_endpoint"}
