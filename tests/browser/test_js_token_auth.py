"""streampod.js with a DRF token (docs/clients.md, "Token authentication"): the `auth`
command on every socket, `authenticate()`, `signIn()`, a refused key, the token sent again
after a reconnect and before any frame of the page; and the StreamingConnectionHandler.

Against real daphne servers, except where a bare WebSocket server has to hold an answer
back (the status stays "connecting" until `auth` is answered; one `auth` at a time)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

from .support import states, wait_received, wait_states, ws_server

FAST_RETRY = "{min: 0.05, max: 0.4, factor: 2, jitter: 0}"
PASSWORD = "secret-pass-1"
BAD_KEY = "Token " + "f" * 40
PING = {"command": "ping", "args": {}}
PONG = json.dumps({"command": "pong", "args": {}})


@pytest.fixture(scope="module")
def unthrottled_server(django_db_setup: Any, django_db_blocker: Any) -> Iterator[Any]:
    """A daphne whose POST /api/auth/token/ is not throttled (10/min per address by
    default, which the whole suite's sign-ins share on the session's server)."""
    from tests.support.servers import DaphneServer

    with DaphneServer(env={"STREAMPOD_THROTTLE_AUTH_TOKEN": "off"}) as srv:
        yield srv


def record_sockets(page: Any) -> list[dict[str, list[Any]]]:
    """Every socket the page opens: ``{"sent": [frames], "received": [frames]}``, in order."""
    sockets: list[dict[str, list[Any]]] = []

    def on_socket(ws: Any) -> None:
        log: dict[str, list[Any]] = {"sent": [], "received": []}
        sockets.append(log)
        ws.on("framesent", lambda payload: log["sent"].append(json.loads(payload)))
        ws.on("framereceived", lambda payload: log["received"].append(json.loads(payload)))

    page.on("websocket", on_socket)
    return sockets


async def test_auth_key_opens_login_required_endpoints_and_gives_the_user_id(
    server, open_page, make_user
):
    user, key = await make_user("tokenuser")
    page = await open_page(server.http_url)  # no session cookie: only the token
    sockets = record_sockets(page)
    await page.evaluate(
        "(key) => { window.start({authKey: key}); window.pump('whoami'); window.pump('private'); }",
        key,
    )
    await page.wait_for_function("window.openResult === 'connected'")
    assert await page.evaluate("window.client.userId") == user.pk
    assert await page.evaluate("window.client.authKey") == key
    assert await states(page) == ["connecting", "connected"]

    # The ping, then the token, before anything else.
    assert sockets[0]["sent"][:2] == [PING, {"command": "auth", "args": {"key": key}}]
    # login_required: opened for the token's user (its stream_opened sent WhoAmI).
    private = await wait_received(page, "private", 1)
    assert private == [{"className": "WhoAmI", "data": {"user_id": user.pk, "endpoint": "private"}}]
    # An endpoint open to anyone opened twice: anonymous at the handshake, then as the user.
    whoami = await wait_received(page, "whoami", 2)
    assert [message["data"]["user_id"] for message in whoami] == [None, user.pk]

    assert await page.evaluate("window.send('private', 'Echo', {text: 'by token'})") == "sent"
    private = await wait_received(page, "private", 2)
    assert private[1] == {"className": "Echo", "data": {"text": "by token", "n": 0, "at": None}}
    assert await page.evaluate("window.errorsLog") == []


async def test_authenticate_an_open_socket_then_a_refused_key_makes_it_anonymous(
    server, open_page, make_user
):
    user, key = await make_user("switcher")
    page = await open_page(server.http_url)
    await page.evaluate("window.start(); window.pump('whoami'); window.pump('private')")
    await page.wait_for_function("window.openResult === 'connected'")
    assert await page.evaluate("window.client.userId === undefined")  # the cookie decides

    assert await page.evaluate("(key) => window.client.authenticate(key)", key) == user.pk
    assert await page.evaluate("window.client.userId") == user.pk
    private = await wait_received(page, "private", 1)
    assert private[0]["data"] == {"user_id": user.pk, "endpoint": "private"}
    await page.evaluate("window.send('private', 'Echo', {text: 'signed in'})")
    assert (await wait_received(page, "private", 2))[1]["data"]["text"] == "signed in"

    # A refused key: null, and the socket is anonymous but open.
    assert await page.evaluate("(key) => window.client.authenticate(key)", BAD_KEY) is None
    assert await page.evaluate("window.client.userId") is None
    whoami = await wait_received(page, "whoami", 3)
    assert [message["data"]["user_id"] for message in whoami] == [None, user.pk, None]
    await page.evaluate("window.send('private', 'Echo', {text: 'anonymous now'}, 'p1')")
    await page.wait_for_function("window.errorsLog.length >= 1")
    errors = await page.evaluate("window.errorsLog")
    assert [(e["name"], e["code"], e["id"]) for e in errors] == [
        ("ServerError", "not_authenticated", "p1")
    ]  # authenticate() said null: no AuthenticationFailed on top of it
    assert await states(page) == ["connecting", "connected"]
    assert await page.evaluate("window.client.authKey") == BAD_KEY


async def test_a_refused_auth_key_leaves_an_anonymous_socket_and_is_reported(server, open_page):
    page = await open_page(server.http_url)
    await page.evaluate("(key) => window.start({authKey: key})", BAD_KEY)
    await page.wait_for_function("window.openResult === 'connected'")
    assert await page.evaluate("window.client.userId") is None
    assert await states(page) == ["connecting", "connected"]
    errors = await page.evaluate("window.errorsLog")
    assert [(e["name"], e["code"]) for e in errors] == [
        ("AuthenticationFailed", "authentication_failed")
    ]
    assert await page.evaluate("window.callbackErrors") == errors
    await page.evaluate("window.send('private', 'Echo', {text: 'x'}, 'p1')")
    await page.wait_for_function("window.errorsLog.length >= 2")
    assert (await page.evaluate("window.errorsLog[1].code")) == "not_authenticated"


async def test_sign_in_posts_for_a_token_and_authenticates(
    unthrottled_server, open_page, make_user
):
    user, key = await make_user("signer", password=PASSWORD)
    page = await open_page(unthrottled_server.http_url)
    await page.evaluate("window.start(); window.pump('private')")
    await page.wait_for_function("window.openResult === 'connected'")
    result = await page.evaluate(
        """async (password) => {
            const {Client, SignInFailed} = window.streampod;
            const client = window.client;
            let refused = "no error";
            try {
                await client.signIn("signer", "not the password");
            } catch (error) {
                refused = [error.name, error.code, error.statusCode, error instanceof SignInFailed,
                           error.message];
            }
            const afterRefusal = client.authKey;
            const userId = await client.signIn("signer", password);
            // Before any socket: null at once; the token goes with the first socket.
            const later = new Client();
            const early = await later.signIn("signer", password);
            await later.openStreamingConnection();
            const lateId = later.userId;
            later.closeStreamingConnection();
            return {refused, afterRefusal, userId, authKey: client.authKey, authUrl: client.authUrl,
                    early, lateId, laterKey: later.authKey};
        }""",
        PASSWORD,
    )
    name, code, status, is_sign_in_failed, message = result["refused"]
    assert (name, code, status, is_sign_in_failed) == ("SignInFailed", "sign_in_failed", 400, True)
    assert "Unable to log in" in message  # DRF's words
    assert result["afterRefusal"] is None  # nothing changed
    assert result["userId"] == user.pk
    assert result["authKey"] == result["laterKey"] == key  # the user's one token
    assert result["authUrl"] == unthrottled_server.http_url + "/api/auth/token/"
    assert (result["early"], result["lateId"]) == (None, user.pk)
    private = await wait_received(page, "private", 1)
    assert private[0]["data"] == {"user_id": user.pk, "endpoint": "private"}


async def test_the_token_is_sent_again_after_a_restart_before_any_frame(
    own_daphne, open_page, make_user
):
    user, key = await make_user("returner")
    srv = await asyncio.to_thread(own_daphne)
    port = srv.port
    page = await open_page(srv.http_url)
    sockets = record_sockets(page)
    await page.evaluate(
        """([key, retry]) => {
            window.userIdWhenConnected = [];
            window.start({authKey: key, retry});
            // The page sends as soon as it may: under the token's user, every time.
            window.client.addStreamingConnectionStatusListener((status) => {
                if (status.state !== "connected") return;
                window.userIdWhenConnected.push(window.client.userId);
                const count = window.userIdWhenConnected.length;
                window.send("private", "Echo", {text: `hello ${count}`});
            });
            window.pump("private");
        }""",
        [key, {"min": 0.05, "max": 0.4, "factor": 2, "jitter": 0}],
    )
    await wait_states(page, "connected")
    assert [m["className"] for m in await wait_received(page, "private", 2)] == ["WhoAmI", "Echo"]

    await asyncio.to_thread(srv.stop)
    await wait_states(page, "waitingToRetry")
    srv = await asyncio.to_thread(own_daphne, port)
    await wait_states(page, "connected", 2, timeout=30_000)

    private = await wait_received(page, "private", 4)
    assert [(m["className"], m["data"].get("user_id"), m["data"].get("text")) for m in private] == [
        ("WhoAmI", user.pk, None),
        ("Echo", None, "hello 1"),
        ("WhoAmI", user.pk, None),
        ("Echo", None, "hello 2"),
    ]
    assert await page.evaluate("window.userIdWhenConnected") == [user.pk, user.pk]
    assert await page.evaluate("window.errorsLog") == []
    # Every socket that opened: the ping, the token, and only then the page's frames.
    opened = [log for log in sockets if log["sent"]]
    assert len(opened) == 2
    for log in opened:
        sent = log["sent"]
        assert sent[:2] == [PING, {"command": "auth", "args": {"key": key}}]
        data = [frame for frame in sent if "endpoint" in frame]
        assert data and sent.index(data[0]) > 1
    await page.evaluate("window.client.closeStreamingConnection()")


async def test_connecting_until_auth_is_answered_and_one_auth_at_a_time(server, open_page):
    """A bare server holds the `auth` answers back, so what the page does meanwhile shows."""
    connections: list[Any] = []
    auths: list[tuple[int, str | None]] = []  # (connection number, key)
    data: list[tuple[int, str]] = []  # (connection number, endpoint)
    arrived = asyncio.Condition()

    async def handler(ws: Any) -> None:
        connections.append(ws)
        number = len(connections)
        async for raw in ws:
            frame = json.loads(raw)
            if frame.get("command") == "ping":
                await ws.send(PONG)
            async with arrived:
                if frame.get("command") == "auth":
                    auths.append((number, frame["args"]["key"]))
                elif "endpoint" in frame:
                    data.append((number, frame["endpoint"]))
                arrived.notify_all()

    async def wait_for(predicate: Any) -> None:
        async with arrived:
            await asyncio.wait_for(arrived.wait_for(predicate), 20)

    async def answer(number: int, args: dict[str, Any], command: str = "auth") -> None:
        await connections[number - 1].send(json.dumps({"command": command, "args": args}))

    async with ws_server(handler) as base_url:
        page = await open_page(server.http_url)
        await page.evaluate(
            f"(url) => window.start({{authKey: 'Token a', retry: {FAST_RETRY}}}, url)", base_url
        )
        await wait_for(lambda: auths == [(1, "Token a")])
        # The pong came (a data frame after it was read too), yet the status waits for `auth`.
        await connections[0].send(
            json.dumps({"endpoint": "probe", "object": {"className": "P", "data": {}}})
        )
        await page.wait_for_function("window.client.endpoint('probe').buffered === 1")
        assert await page.evaluate("window.client.status.state") == "connecting"
        assert await page.evaluate("window.send('echo', 'Echo', {text: 'too early'})") == (
            "NotConnected"
        )
        await answer(1, {"user_id": 7})
        await page.wait_for_function("window.openResult === 'connected'")
        assert await page.evaluate("window.client.userId") == 7

        # Two authenticate() calls: the second auth waits for the first answer.
        await page.evaluate(
            "window.p1 = window.client.authenticate('Token b');"
            "window.p2 = window.client.authenticate('Token c');"
            "window.send('echo', 'Echo', {text: 'after both'})"
        )
        await wait_for(lambda: (1, "echo") in data)  # sent after both calls, read after them
        assert auths == [(1, "Token a"), (1, "Token b")]
        await answer(1, {"user_id": 8})
        await wait_for(lambda: len(auths) == 3)
        assert auths[2] == (1, "Token c")
        await answer(1, {"user_id": None})
        assert await page.evaluate("Promise.all([window.p1, window.p2])") == [8, None]
        assert await page.evaluate("window.client.userId") is None

        # The server failing on an auth: that call rejects, the next one goes out.
        await page.evaluate(
            "window.p3 = window.client.authenticate('Token d')"
            ".then((id) => ['resolved', id], (e) => [e.name, e.code]); null"
        )  # (evaluate would wait for a promise it is given back)
        await wait_for(lambda: len(auths) == 4)
        await answer(
            1,
            {"code": "internal_error", "message": "The server failed to authenticate."},
            command="error",
        )
        assert await page.evaluate("window.p3") == ["ServerError", "internal_error"]
        # The socket closes before the answers: NotConnected for both calls; the next socket
        # sends the key of now (Token f) right after its ping, and waits for its answer again.
        await page.evaluate(
            "const outcome = (p) => p.then((id) => ['resolved', id], (e) => [e.name, e.code]);"
            "window.p4 = outcome(window.client.authenticate('Token e'));"
            "window.p5 = outcome(window.client.authenticate('Token f'));"
            "window.send('echo', 'Echo', {text: 'after e and f'})"
        )
        await wait_for(lambda: data.count((1, "echo")) == 2)
        assert auths[3:] == [(1, "Token d"), (1, "Token e")]  # Token f waits behind Token e
        await connections[0].close(1001)
        assert await page.evaluate("Promise.all([window.p4, window.p5])") == [
            ["NotConnected", "not_connected"],
            ["NotConnected", "not_connected"],
        ]
        await wait_for(lambda: any(number == 2 for number, _ in auths))
        assert auths[-1] == (2, "Token f")
        assert await page.evaluate("window.client.status.state") == "connecting"
        await answer(2, {"user_id": 9})
        await wait_states(page, "connected", 2)
        assert await page.evaluate("window.client.userId") == 9
        await page.evaluate("window.client.closeStreamingConnection()")
    assert await states(page) == [
        "connecting",
        "connected",
        "waitingToRetry",
        "connecting",
        "connected",
        "disconnected",
    ]


async def test_handler_listener_counts_down_whole_seconds_and_dispose_stops(server, open_page):
    """Serverpod's shape: listener(state) on each change and each second of the wait."""
    connections: list[Any] = []

    async def handler(ws: Any) -> None:
        connections.append(ws)
        async for raw in ws:
            if json.loads(raw).get("command") == "ping":
                await ws.send(PONG)
                if len(connections) == 1:
                    await ws.close(1001)  # lost right after connecting: a retry follows

    async with ws_server(handler) as base_url:
        page = await open_page(server.http_url)
        await page.evaluate(
            """(url) => {
                const {Client, StreamingConnectionHandler, StreamingConnectionHandlerState} =
                    window.streampod;
                window.handlerLog = [];
                const client = new Client(url, {retry: false}); // the handler makes it retry
                window.handler = new StreamingConnectionHandler(client, {
                    minDelay: 2.5, jitter: 0,
                    listener: (state) => window.handlerLog.push(
                        [state.status, state.retryInSeconds,
                         state instanceof StreamingConnectionHandlerState]),
                });
                window.handler.connect();
            }""",
            base_url,
        )
        await page.wait_for_function(
            "window.handlerLog.filter(([s]) => s === 'connected').length === 2", timeout=20_000
        )
        assert await page.evaluate("window.handler.running") is True
        assert await page.evaluate("window.handler.state.status") == "connected"
        stopped = await page.evaluate("window.handler.dispose().then(() => window.handler.running)")
        assert stopped is False
        await page.evaluate("window.handler.waitClosed()")
    log = await page.evaluate("window.handlerLog")
    assert all(is_state for _, _, is_state in log)
    told = [(status, seconds) for status, seconds, _ in log]
    waits = [seconds for status, seconds in told if status == "waitingToRetry"]
    # [3, 2, 1]: the whole seconds of the 2.5 s wait, each told once, counting down, the
    # first at once. (A page whose timer fires late skips a second: Chromium's timers
    # stall on a busy machine, and a quiet run once skipped 2. Never one told twice.)
    assert waits[0] == 3 and len(waits) >= 2, told
    assert waits == sorted(set(waits), reverse=True) and set(waits) <= {3, 2, 1}, told
    assert told == [
        ("connecting", None),
        ("connected", None),
        *[("waitingToRetry", seconds) for seconds in waits],
        ("connecting", None),
        ("connected", None),
        ("disconnected", None),
    ]


async def test_handler_stops_when_the_server_refuses_the_credentials(server, open_page):
    async def handler(ws: Any) -> None:
        await ws.close(4401)

    async with ws_server(handler) as base_url:
        page = await open_page(server.http_url)
        result = await page.evaluate(
            """async (url) => {
                const {Client, StreamingConnectionHandler} = window.streampod;
                const client = new Client(url);
                const handler = new StreamingConnectionHandler(client, {minDelay: 0.05});
                handler.start();
                await handler.waitClosed();
                const reason = client.disconnectReason;
                return [handler.running, client.status.state, client.status.reason,
                        reason.code, reason.isAuthFailure, reason.byClient, reason.message];
            }""",
            base_url,
        )
    assert result == [
        False,
        "disconnected",
        "unauthorized",
        4401,
        True,
        False,
        "credentials invalid or revoked (close code 4401)",
    ]
