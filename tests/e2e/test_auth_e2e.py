"""Socket authentication and the Origin check against real daphne and uvicorn processes.

Credentials: none (anonymous), ``Authorization: Token <key>`` in the handshake, the
``auth`` command, and the Django session cookie of a browser that logged in through
the admin's login form. Tokens in the URL are not read. The Origin of a browser
handshake must be the request's own or listed in ``CSRF_TRUSTED_ORIGINS``, whatever
``ALLOWED_HOSTS`` holds.

On connect ``whoami`` (every session) and then ``private`` (signed-in sessions only)
send a WhoAmI frame from ``stream_opened``, in registration order: those frames are
how these tests see which user a socket belongs to and which endpoints were opened.
"""

import json
import re

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from tests.e2e.test_protocol_e2e import (
    PING,
    PONG,
    TIMEOUT,
    assert_usable,
    close_code,
    connect,
    data,
    echoed,
    expect_error,
    opened_anonymous,
    recv,
    whoami,
)
from tests.support.servers import DaphneServer

TRUSTED = "https://app.example.com"


@pytest.fixture
def server(each_server):
    """Every test here runs against daphne and against uvicorn."""
    return each_server


@pytest.fixture(scope="module")
def open_hosts_server(django_db_setup, django_db_blocker):
    """ALLOWED_HOSTS = "*" and a trusted origin, from the environment the settings read."""
    env = {
        "DJANGO_ALLOWED_HOSTS": "*",
        "DJANGO_CSRF_TRUSTED_ORIGINS": f"{TRUSTED},https://*.trusted.example",
    }
    with DaphneServer(env=env) as srv:
        yield srv


def private(user_id):
    return {
        "endpoint": "private",
        "object": {"className": "WhoAmI", "data": {"user_id": user_id, "endpoint": "private"}},
    }


def auth_reply(user_id):
    return {"command": "auth", "args": {"user_id": user_id}}


def auth_command(key):
    return json.dumps({"command": "auth", "args": {"key": key}})


async def opened_as(ws, user_id):
    """A signed-in socket's first frames: whoami, then private (registration order)."""
    assert await recv(ws) == whoami(user_id)
    assert await recv(ws) == private(user_id)


async def assert_nothing_received(ws):
    await ws.send(PING)
    assert await recv(ws) == PONG


def own_origin(srv):
    return f"http://127.0.0.1:{srv.port}"


async def refused(url, origin, **kwargs):
    """The handshake is rejected with HTTP 403."""
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, origin=origin, **kwargs):
            pass
    assert info.value.response.status_code == 403


async def browser_login(srv, username, password, path="/admin/login/"):
    """Log in through a Django login form as a browser would; the session cookie."""
    async with httpx.AsyncClient(base_url=srv.http_url, trust_env=False, timeout=TIMEOUT) as http:
        page = await http.get(path)
        assert page.status_code == 200
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
        response = await http.post(
            path,
            data={
                "username": username,
                "password": password,
                "csrfmiddlewaretoken": token,
                "next": "/admin/",
            },
        )
        assert response.status_code == 302, response.text[:500]
        return http.cookies["sessionid"], http.cookies["csrftoken"]


# -- anonymous and the handshake token -------------------------------------------------------


async def test_no_credentials_is_anonymous(server):
    async with connect(server.ws_url) as ws:
        await opened_anonymous(ws)
        await assert_nothing_received(ws)  # `private` was not opened: it sent nothing
        await ws.send(data("private", "Echo", text="x"))
        await expect_error(ws, "not_authenticated", endpoint="private")


async def test_token_header_authenticates_the_socket(server, make_user):
    user, key = await make_user("alice", password=None)
    async with connect(server.ws_url, additional_headers={"Authorization": key}) as ws:
        await opened_as(ws, user.pk)
        await ws.send(data("private", "Echo", text="hello"))
        reply = await recv(ws)
        assert reply["endpoint"] == "private" and reply["object"]["data"]["text"] == "hello"
        # signed in but not staff: has_permission says no
        await ws.send(data("staff_only", "Echo", frame_id="s", text="x"))
        await expect_error(ws, "forbidden", endpoint="staff_only", frame_id="s")


async def test_staff_token_may_use_the_staff_endpoint(server, make_user):
    user, key = await make_user("staffer", password=None, is_staff=True)
    async with connect(server.ws_url, additional_headers={"Authorization": key}) as ws:
        await opened_as(ws, user.pk)
        await ws.send(data("staff_only", "Echo", text="staff"))
        reply = await recv(ws)
        assert reply["endpoint"] == "staff_only" and reply["object"]["data"]["text"] == "staff"


@pytest.mark.parametrize(
    "header",
    ["Token {raw}x", "Token 0000000000000000000000000000000000000000", "Bearer {raw}", "{raw}",
     "Token", "Token {raw} extra"],
)
async def test_invalid_token_header_is_accepted_then_closed_4401(server, make_user, header):
    _, key = await make_user("alice", password=None)
    raw = key.removeprefix("Token ")
    headers = {"Authorization": header.format(raw=raw)}
    async with connect(server.ws_url, additional_headers=headers) as ws:
        # The handshake succeeded (no InvalidStatus): the close code tells the client why.
        assert await close_code(ws) == 4401


async def test_inactive_users_token_is_closed_4401(server, make_user):
    _, key = await make_user("sleeper", password=None, is_active=False)
    async with connect(server.ws_url, additional_headers={"Authorization": key}) as ws:
        assert await close_code(ws) == 4401
    async with connect(server.ws_url) as ws:  # and the auth command refuses it too
        await opened_anonymous(ws)
        await ws.send(auth_command(key))
        assert await recv(ws) == auth_reply(None)


@pytest.mark.parametrize(
    "query",
    ["token={raw}", "key=Token%20{raw}", "authorization=Token%20{raw}", "access_token={raw}",
     "Authorization=Token+{raw}"],
)
async def test_token_in_the_url_is_not_accepted(server, make_user, query):
    _, key = await make_user("alice", password=None)
    raw = key.removeprefix("Token ")
    async with connect(f"{server.ws_url}?{query.format(raw=raw)}") as ws:
        await opened_anonymous(ws)
        await assert_nothing_received(ws)


async def test_token_from_the_api_works_on_the_socket(server, make_user):
    user, _ = await make_user("bob", password="bob-pass-123")
    async with httpx.AsyncClient(
        base_url=server.http_url, trust_env=False, timeout=TIMEOUT
    ) as http:
        wrong = await http.post("/api/auth/token/", data={"username": "bob", "password": "nope"})
        assert wrong.status_code == 400
        response = await http.post(
            "/api/auth/token/", data={"username": "bob", "password": "bob-pass-123"}
        )
    assert response.status_code == 200
    token = response.json()["token"]
    async with connect(server.ws_url, additional_headers={"Authorization": f"Token {token}"}) as ws:
        await opened_as(ws, user.pk)


# -- the auth command ----------------------------------------------------------------------------


async def test_auth_command_with_a_good_key_opens_login_required_endpoints(server, make_user):
    user, key = await make_user("alice", password=None)
    async with connect(server.ws_url) as ws:
        await opened_anonymous(ws)
        await ws.send(auth_command(key))
        # every endpoint is reopened for the new identity, `private` for the first time;
        # the answer comes once they are open
        await opened_as(ws, user.pk)
        assert await recv(ws) == auth_reply(user.pk)
        await ws.send(data("private", "Echo", text="now in"))
        assert (await recv(ws))["object"]["data"]["text"] == "now in"
        # the same key again: same identity, nothing closed or reopened
        await ws.send(auth_command(key))
        assert await recv(ws) == auth_reply(user.pk)
        await assert_nothing_received(ws)


async def test_frames_sent_right_after_auth_wait_for_it(server, make_user):
    user, key = await make_user("alice", password=None)
    async with connect(server.ws_url) as ws:
        await opened_anonymous(ws)
        await ws.send(auth_command(key))
        await ws.send(data("private", "Echo", frame_id="early", text="early"))
        await opened_as(ws, user.pk)
        assert await recv(ws) == auth_reply(user.pk)
        reply = await recv(ws)  # handled as alice, not refused as anonymous
        assert reply["endpoint"] == "private" and reply["object"]["data"]["text"] == "early"


@pytest.mark.parametrize("bad", ["Token nope", "nope", None, 5, {"key": "x"}, ""])
async def test_auth_command_with_a_bad_key_makes_the_socket_anonymous(server, make_user, bad):
    user, key = await make_user("alice", password=None)
    async with connect(server.ws_url, additional_headers={"Authorization": key}) as ws:
        await opened_as(ws, user.pk)
        await ws.send(json.dumps({"command": "auth", "args": {"key": bad}}))
        assert await recv(ws) == whoami(None)  # reopened as anonymous; `private` is closed
        assert await recv(ws) == auth_reply(None)
        await ws.send(data("private", "Echo", frame_id="p", text="x"))
        await expect_error(ws, "not_authenticated", endpoint="private", frame_id="p")
        await assert_usable(ws)


async def test_auth_command_without_a_key_is_anonymous(server):
    async with connect(server.ws_url) as ws:
        await opened_anonymous(ws)
        await ws.send(json.dumps({"command": "auth", "args": {}}))
        assert await recv(ws) == auth_reply(None)
        await assert_nothing_received(ws)  # anonymous before and after: nothing reopened


async def test_switching_identity_closes_and_reopens_sessions(server, make_user):
    alice, alice_key = await make_user("alice", password=None)
    bob, bob_key = await make_user("bob", password=None)
    room = {"room": "switch", "text": "/join"}
    async with connect(server.ws_url, additional_headers={"Authorization": alice_key}) as ws, \
            connect(server.ws_url) as poster:
        await opened_as(ws, alice.pk)
        await opened_anonymous(poster)
        await ws.send(data("room", "RoomPost", **room))
        assert (await recv(ws))["object"]["data"]["text"] == "joined switch"
        await poster.send(data("room", "RoomPost", room="switch", text="to alice"))
        assert (await recv(ws))["object"]["data"]["text"] == "to alice"

        await ws.send(auth_command(bob_key))
        await opened_as(ws, bob.pk)
        assert await recv(ws) == auth_reply(bob.pk)

        # Alice's room session was closed with its listener: a post no longer arrives.
        await poster.send(data("room", "RoomPost", room="switch", text="after the switch"))
        # The poster's next frame to `room` runs after that post was delivered (one lane).
        await poster.send(data("room", "RoomPost", room="ack", text="/join"))
        assert (await recv(poster))["object"]["data"]["text"] == "joined ack"
        await assert_nothing_received(ws)


# -- the session cookie ----------------------------------------------------------------------------


async def test_session_cookie_from_the_admin_login_authenticates(server, make_user):
    staff, _ = await make_user("admin", password="admin-pass-123", is_staff=True)
    session_id, _ = await browser_login(server, "admin", "admin-pass-123")
    headers = {"Cookie": f"sessionid={session_id}"}
    async with connect(server.ws_url, origin=own_origin(server), additional_headers=headers) as ws:
        await opened_as(ws, staff.pk)
        await ws.send(data("staff_only", "Echo", text="cookie"))
        assert (await recv(ws))["object"]["data"]["text"] == "cookie"
    # the cookie from a foreign page: refused before it can be used
    await refused(server.ws_url, "http://evil.example", additional_headers=headers)


async def test_a_bad_session_cookie_is_anonymous(server):
    headers = {"Cookie": "sessionid=not-a-session"}
    async with connect(server.ws_url, origin=own_origin(server), additional_headers=headers) as ws:
        await opened_anonymous(ws)


async def test_logging_out_closes_that_sessions_sockets_with_4401(server, make_user):
    """Logging out closes the sockets of that browser session; the user's token is not
    logged out, so its socket stays (Serverpod's per-credential revocation)."""
    user, key = await make_user("leaver", password="leaver-pass-123", is_staff=True)
    session_id, csrf = await browser_login(server, "leaver", "leaver-pass-123")
    cookie = {"Cookie": f"sessionid={session_id}"}
    async with connect(
        server.ws_url, origin=own_origin(server), additional_headers=cookie
    ) as ws, connect(server.ws_url, additional_headers={"Authorization": key}) as by_token:
        await opened_as(ws, user.pk)
        await opened_as(by_token, user.pk)
        async with httpx.AsyncClient(
            base_url=server.http_url, trust_env=False, timeout=TIMEOUT,
            cookies={"sessionid": session_id, "csrftoken": csrf},
        ) as http:
            response = await http.post("/admin/logout/", data={"csrfmiddlewaretoken": csrf})
            assert response.status_code in (200, 302)
        assert await close_code(ws) == 4401
        await assert_usable(by_token)


# -- Origin --------------------------------------------------------------------------------------


async def test_own_origin_and_no_origin_are_accepted(server):
    async with connect(server.ws_url, origin=own_origin(server)) as ws:
        await opened_anonymous(ws)
    async with connect(server.ws_url) as ws:  # no Origin: not a browser
        await opened_anonymous(ws)


@pytest.mark.parametrize(
    "origin",
    [
        "http://evil.example",
        "http://localhost:{port}",  # another host name for the same server
        "https://127.0.0.1:{port}",  # another scheme
        "http://127.0.0.1:{other}",  # another port
        "http://127.0.0.1",  # the default port
        "null",
        "file://",
    ],
)
async def test_foreign_origins_are_refused(server, origin):
    other = server.port + 1 if server.port < 65535 else server.port - 1
    await refused(server.ws_url, origin.format(port=server.port, other=other))


@pytest.mark.parametrize("origin", [TRUSTED, "https://chat.trusted.example"])
async def test_origins_in_csrf_trusted_origins_are_accepted(open_hosts_server, origin):
    async with connect(open_hosts_server.ws_url, origin=origin) as ws:
        await opened_anonymous(ws)


@pytest.mark.parametrize(
    "origin",
    [
        "http://evil.example",
        "http://app.example.com",  # trusted host, wrong scheme
        "https://app.example.com.evil.example",
        "https://trusted.example.evil",
    ],
)
async def test_allowed_hosts_star_does_not_widen_the_origin_check(open_hosts_server, origin):
    await refused(open_hosts_server.ws_url, origin)
    # while its own origin is accepted as on any server
    async with connect(open_hosts_server.ws_url, origin=own_origin(open_hosts_server)) as ws:
        await opened_anonymous(ws)


async def test_token_header_with_a_foreign_origin_is_refused(server, make_user):
    _, key = await make_user("alice", password=None)
    await refused(server.ws_url, "http://evil.example", additional_headers={"Authorization": key})


async def test_an_accepted_socket_is_fully_usable(server):
    async with connect(server.ws_url, origin=own_origin(server)) as ws:
        await opened_anonymous(ws)
        await ws.send(data("echo", "Echo", text="hi"))
        assert await recv(ws) == echoed("hi")


# -- ALLOWED_HOSTS applies to sockets as it does to HTTP ---------------------------------------


async def test_a_host_outside_allowed_hosts_is_refused_like_plain_http(server):
    # A matching Origin does not help: the Host itself is not served.
    evil = f"evil.com:{server.port}"
    await refused(
        f"ws://{evil}/websocket/", f"http://{evil}", host="127.0.0.1", port=server.port
    )
    async with httpx.AsyncClient(trust_env=False, timeout=TIMEOUT) as http:
        response = await http.get(server.http_url + "/", headers={"Host": "evil.com"})
    assert response.status_code == 400  # what Django answers over HTTP
    # The server's own host is still served.
    async with connect(server.ws_url, origin=own_origin(server)) as ws:
        await opened_anonymous(ws)
