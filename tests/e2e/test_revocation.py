"""`streaming.auth.revoke` and what calls it close a user's sockets on every server (4401)."""

import asyncio

import pytest
from asgiref.sync import sync_to_async
from websockets.exceptions import ConnectionClosed

from streaming.auth import revocation_channel, revoke
from tests.e2e.redis_support import assert_quiet, connect, wait_numsub

pytestmark = pytest.mark.redis


async def expect_close(ws, code):
    with pytest.raises(ConnectionClosed) as info:
        while True:
            await asyncio.wait_for(ws.recv(), 10)  # skips frames before the close
    assert info.value.rcvd is not None and info.value.rcvd.code == code, info.value


async def sockets_of(user, key, cluster):
    rs, a, b = cluster
    on_a = await connect(a.ws_url, additional_headers={"Authorization": key}).__aenter__()
    on_b = await connect(b.ws_url, additional_headers={"Authorization": key}).__aenter__()
    # Both servers have subscribed to the user's revocation channel.
    await wait_numsub(rs.url, revocation_channel(user.pk), 2)
    return on_a, on_b


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
        page = await http.get("/admin/login/")
        csrf = http.cookies["csrftoken"]
        response = await http.post(
            "/admin/login/",
            data={"username": "dave", "password": "pw-for-dave-1",
                  "csrfmiddlewaretoken": csrf, "next": "/admin/"},
            headers={"Referer": f"{a.http_url}/admin/login/"},
        )
        assert response.status_code == 302, page.text[:200]
        cookie = f"sessionid={http.cookies['sessionid']}"
        browser = {"Cookie": cookie}
        on_a = await connect(
            a.ws_url, origin=f"http://127.0.0.1:{a.port}", additional_headers=browser
        ).__aenter__()
        on_b = await connect(
            b.ws_url, origin=f"http://127.0.0.1:{b.port}", additional_headers=browser
        ).__aenter__()
        by_token = await connect(
            b.ws_url, additional_headers={"Authorization": key}
        ).__aenter__()
        await wait_numsub(rs.url, revocation_channel(user.pk), 2)
        response = await http.post(
            "/admin/logout/",
            data={"csrfmiddlewaretoken": http.cookies["csrftoken"]},
            headers={"Referer": f"{a.http_url}/admin/"},
        )
        assert response.status_code in (200, 302)
    await expect_close(on_b, 4401)
    await expect_close(on_a, 4401)
    await assert_quiet(by_token)  # the token was not logged out
    await by_token.close()
