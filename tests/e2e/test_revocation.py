"""`streaming.auth.revoke` and what calls it close a user's sockets on every server (4401)."""

import asyncio

import pytest
from asgiref.sync import sync_to_async
from websockets.exceptions import ConnectionClosed

from streaming.auth import revocation_channel, revoke
from tests.e2e.redis_support import assert_quiet, connect, wait_numsub

pytestmark = pytest.mark.redis

GUARD = 10  # s: a bound on what takes milliseconds here


async def expect_close(ws, code):
    with pytest.raises(ConnectionClosed) as info:
        while True:
            await asyncio.wait_for(ws.recv(), 10)  # skips frames before the close
    assert info.value.rcvd is not None and info.value.rcvd.code == code, info.value


async def sockets_of(user, key, cluster):
    rs, a, b = cluster
    on_a, on_b = await token_socket(a, key), await token_socket(b, key)
    # Both servers have subscribed to the user's revocation channel.
    await wait_numsub(rs.url, revocation_channel(user.pk), 2)
    return on_a, on_b


async def admin_login(http, username: str, password: str) -> dict[str, str]:
    """Sign in through the admin's login form on ``http``'s server: the browser's headers."""
    page = await http.get("/admin/login/")
    response = await http.post(
        "/admin/login/",
        data={"username": username, "password": password,
              "csrfmiddlewaretoken": http.cookies["csrftoken"], "next": "/admin/"},
        headers={"Referer": f"{http.base_url}admin/login/"},
    )  # fmt: skip
    assert response.status_code == 302, page.text[:200]
    return {"Cookie": f"sessionid={http.cookies['sessionid']}"}


async def browser_socket(server, headers: dict[str, str]):
    """A socket to ``server`` as its own page opens it (its Origin, the browser's cookie)."""
    origin = f"http://127.0.0.1:{server.port}"
    return await connect(server.ws_url, origin=origin, additional_headers=headers).__aenter__()


async def token_socket(server, key: str):
    return await connect(server.ws_url, additional_headers={"Authorization": key}).__aenter__()


async def admin_logout(http) -> None:
    response = await http.post(
        "/admin/logout/",
        data={"csrfmiddlewaretoken": http.cookies["csrftoken"]},
        headers={"Referer": f"{http.base_url}admin/"},
    )
    assert response.status_code in (200, 302)


async def test_revoke_closes_sockets_on_both_servers(cluster, cluster_layer, make_user):
    alice, key = await make_user("alice")
    _bob, bob_key = await make_user("bob")
    on_a, on_b = await sockets_of(alice, key, cluster)
    async with connect(cluster[2].ws_url, additional_headers={"Authorization": bob_key}) as other:
        await revoke(alice.pk)
        await expect_close(on_a, 4401)
        await expect_close(on_b, 4401)
        await assert_quiet(other)  # bob's socket is untouched


@pytest.mark.parametrize("trigger", ["delete_token", "deactivate", "delete_user"])
async def test_account_changes_revoke(cluster, cluster_layer, make_user, trigger):
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    user, key = await make_user("carol")
    on_a, on_b = await sockets_of(user, key, cluster)

    def act():
        if trigger == "delete_token":
            Token.objects.filter(user=user).delete()
        elif trigger == "deactivate":
            fresh = get_user_model().objects.get(pk=user.pk)
            fresh.is_active = False
            fresh.save()
        else:
            get_user_model().objects.filter(pk=user.pk).delete()

    await sync_to_async(act)()
    await expect_close(on_a, 4401)
    await expect_close(on_b, 4401)


async def test_logout_over_http_closes_that_sessions_sockets_on_the_other_server(
    cluster, make_user
):
    """Logging out closes the sockets of that browser's session, on every server; the
    user's other credentials (a token, another browser) keep their sockets."""
    import httpx

    rs, a, b = cluster
    user, key = await make_user("dave", password="pw-for-dave-1", is_staff=True)
    async with httpx.AsyncClient(base_url=a.http_url) as http:
        browser = await admin_login(http, "dave", "pw-for-dave-1")
        on_a = await browser_socket(a, browser)
        on_b = await browser_socket(b, browser)
        by_token = await token_socket(b, key)
        await wait_numsub(rs.url, revocation_channel(user.pk), 2)
        await admin_logout(http)
    await expect_close(on_b, 4401)
    await expect_close(on_a, 4401)
    await assert_quiet(by_token)  # the token was not logged out
    await by_token.close()


async def test_a_logout_made_while_redis_is_down_closes_the_socket_on_the_other_server(
    django_db_setup, make_user
):
    """An attacker's try: with Redis down (or only the revoking server cut off from it),
    a logout on server A could not reach server B, whose socket kept chatting as the
    logged-out user until Redis came back (a partition: for good). B's re-check reads the
    session from the database: it closes the socket with 4401 while Redis is still down."""
    import httpx

    from tests.support.servers import RedisServer, UvicornServer

    user, key = await make_user("erin", password="pw-for-erin-1", is_staff=True)
    with RedisServer() as rs:
        env = {"REDIS_URL": rs.url, "DJANGO_SETTINGS_MODULE": "tests.e2e_recheck_settings"}
        with UvicornServer(env=env) as a, UvicornServer(env=env) as b:
            async with httpx.AsyncClient(base_url=a.http_url) as http:
                browser = await admin_login(http, "erin", "pw-for-erin-1")
                on_b = await browser_socket(b, browser)
                by_token = await token_socket(b, key)
                await wait_numsub(rs.url, revocation_channel(user.pk), 1)
                rs.stop()
                await admin_logout(http)  # A logs: could not revoke the sockets of user N
            await expect_close(on_b, 4401)
            assert b.output.wait_for("the session of user", GUARD), b.logs()
            await assert_quiet(by_token)  # her token still holds
            await by_token.close()


async def test_a_logout_on_a_server_cut_off_from_redis_is_sent_once_it_is_back(
    django_db_setup, make_user
):
    """Server A reaches Redis through a proxy that stalls (nothing else is cut off), and
    B's re-check is off: only the bus can close B's socket. Before, the logout made on A
    failed to publish its revocation once (logged) and was never sent again: B's socket
    chatted on as the logged-out user. A now tries again, and sends it once the path is
    back (a new connection gets through)."""
    import httpx

    from tests.support.servers import RedisServer, UvicornServer
    from tests.support.stall_proxy import StallProxy

    user, _ = await make_user("fay", password="pw-for-fay-1", is_staff=True)
    settings = {"DJANGO_SETTINGS_MODULE": "tests.e2e_norecheck_settings"}
    with RedisServer() as rs, StallProxy(rs.port) as proxy:
        via_proxy = {**settings, "REDIS_URL": f"redis://127.0.0.1:{proxy.port}/0"}
        with (
            UvicornServer(env=via_proxy) as a,
            UvicornServer(env={**settings, "REDIS_URL": rs.url}) as b,
        ):
            async with httpx.AsyncClient(base_url=a.http_url) as http:
                browser = await admin_login(http, "fay", "pw-for-fay-1")
                on_b = await browser_socket(b, browser)
                await wait_numsub(rs.url, revocation_channel(user.pk), 1)
                proxy.stall()
                await admin_logout(http)
            assert a.output is not None
            failed = "could not revoke the sockets of user"
            assert await asyncio.to_thread(a.output.wait_for, failed, 30), a.logs()[-3000:]
            await assert_quiet(on_b)  # still open: nothing told B
            proxy.heal()
            with pytest.raises(ConnectionClosed) as closed:
                while True:  # before: open for good
                    await asyncio.wait_for(on_b.recv(), 60)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401, closed.value
