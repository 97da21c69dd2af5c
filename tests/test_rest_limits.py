"""Limits of the REST API (issue 11).

* The token endpoint and the chat API are throttled (DRF's ScopedRateThrottle): over
  the rate, 429 with Retry-After. Checked on two real daphne servers that share a
  private redis-server, whose cache holds the counts: a client cannot multiply its
  allowance by the number of servers.
* Integer query parameters out of range (a 24-digit ``with`` was a 500) or not
  integers are a 400 naming the parameter; ``limit`` is capped at 200.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from chat.models import Message
from chat.pagination import MAX_ID, MAX_PAGE_SIZE
from tests.support.servers import DaphneServer, RedisServer

USERS_URL = "/api/users/"
MESSAGES_URL = "/api/chat/messages/"
TOKEN_URL = "/api/auth/token/"
HUGE = "1" * 24  # the 24-digit number

# Per day, so that no window ends while a test runs, however slow the machine.
TOKEN_RATE = 3
API_RATE = 4


@pytest.fixture(scope="module")
def throttled_cluster(django_db_setup, django_db_blocker):
    """Two daphne servers on a private redis-server (channel layer and cache), with
    small throttle rates: (a, b)."""
    env = {
        "STREAMPOD_THROTTLE_AUTH_TOKEN": f"{TOKEN_RATE}/day",
        "STREAMPOD_THROTTLE_CHAT_API": f"{API_RATE}/day",
    }
    with RedisServer() as rs, contextlib.ExitStack() as stack:
        servers = [DaphneServer(env={**env, "REDIS_URL": rs.url}) for _ in range(2)]
        for srv in servers:
            stack.callback(srv.stop)
        with ThreadPoolExecutor(2) as pool:
            for future in [pool.submit(srv.start) for srv in servers]:
                future.result()
        yield servers


def retry_after(response: httpx.Response) -> int:
    assert response.status_code == 429, (response.status_code, response.text)
    seconds = int(response.headers["Retry-After"])
    assert 0 < seconds <= 86400
    return seconds


def from_address(srv: DaphneServer, address: str) -> httpx.AsyncClient:
    """An HTTP client of ``srv`` whose connections come from ``address`` (127.x.y.z)."""
    transport = httpx.AsyncHTTPTransport(local_address=address)
    return httpx.AsyncClient(base_url=srv.http_url, transport=transport, timeout=30)


async def test_wrong_passwords_past_the_rate_get_429_on_every_server(throttled_cluster, make_user):
    a, b = throttled_cluster
    await make_user("victim", password="the-right-password-1")
    wrong = {"username": "victim", "password": "guess"}
    async with from_address(a, "127.0.0.2") as on_a, from_address(b, "127.0.0.2") as on_b:
        for n in range(TOKEN_RATE):  # alternating servers: they count together
            response = await (on_a, on_b)[n % 2].post(TOKEN_URL, data=wrong)
            assert response.status_code == 400, response.text
            assert "Unable to log in" in response.text

        for client in (on_a, on_b):
            response = await client.post(TOKEN_URL, data=wrong)
            retry_after(response)
            assert response.json()["detail"].startswith("Request was throttled")
        # The right password too: the address is throttled, not the guess.
        right = {"username": "victim", "password": "the-right-password-1"}
        retry_after(await on_a.post(TOKEN_URL, data=right))
        # A forged X-Forwarded-For does not buy a fresh allowance (STREAMPOD_NUM_PROXIES=0).
        retry_after(
            await on_b.post(TOKEN_URL, data=right, headers={"X-Forwarded-For": "203.0.113.9"})
        )

    # Counted per client address: another address signs in.
    async with from_address(a, "127.0.0.3") as elsewhere:
        response = await elsewhere.post(TOKEN_URL, data=right)
        assert response.status_code == 200, response.text
        assert response.json()["token"]


async def test_concurrent_guesses_get_no_more_than_the_rate(throttled_cluster, make_user):
    """An attacker's try (helper "attacker9", 2026-12-01): 200 wrong passwords sent at once
    from one address had 188 checked against a rate of 10 a minute (144 across two
    servers): DRF's throttle reads the request history from the cache and writes it back,
    and concurrent requests, each in a thread of its own under ASGI, all read the same
    history. The counts are now atomic (the cache's ``add`` and ``incr``)."""
    a, b = throttled_cluster
    await make_user("target", password="the-right-password-2")
    wrong = {"username": "target", "password": "guess"}
    async with from_address(a, "127.0.0.4") as on_a, from_address(b, "127.0.0.4") as on_b:
        responses = await asyncio.gather(
            *((on_a, on_b)[n % 2].post(TOKEN_URL, data=wrong) for n in range(40))
        )
    codes = [response.status_code for response in responses]
    assert set(codes) <= {400, 429}, codes
    assert codes.count(400) <= TOKEN_RATE, codes  # before: most of the 40 were checked
    retry_after(next(r for r in responses if r.status_code == 429))


async def test_chat_api_past_the_rate_gets_429_per_user(throttled_cluster, make_user):
    a, b = throttled_cluster
    alice, alice_key = await make_user("alice")
    _, bob_key = await make_user("bob")
    requests = [
        (a, USERS_URL, {}),
        (b, MESSAGES_URL, {"with": alice.pk}),
        (a, MESSAGES_URL, {"with": alice.pk, "limit": 5}),
        (b, USERS_URL, {"limit": 1}),
    ]
    assert len(requests) == API_RATE
    headers = {"Authorization": bob_key}
    for srv, url, params in requests:
        async with httpx.AsyncClient(base_url=srv.http_url, timeout=30) as http:
            response = await http.get(url, params=params, headers=headers)
        assert response.status_code == 200, response.text
    for srv, url in ((a, USERS_URL), (b, MESSAGES_URL)):
        async with httpx.AsyncClient(base_url=srv.http_url, timeout=30) as http:
            retry_after(await http.get(url, params={"with": alice.pk}, headers=headers))

    # Per user: alice, from the same address, is not throttled.
    async with httpx.AsyncClient(base_url=a.http_url, timeout=30) as http:
        response = await http.get(USERS_URL, headers={"Authorization": alice_key})
    assert response.status_code == 200
    assert [person["username"] for person in response.json()["results"]] == ["bob"]


async def test_huge_numbers_are_400_on_the_real_server(throttled_cluster, make_user):
    a, _ = throttled_cluster
    _, key = await make_user("carol")
    async with httpx.AsyncClient(base_url=a.http_url, timeout=30) as http:
        response = await http.get(
            MESSAGES_URL, params={"with": HUGE}, headers={"Authorization": key}
        )
        assert response.status_code == 400, response.text
        assert list(response.json()) == ["with"]
        response = await http.get(USERS_URL, params={"limit": HUGE}, headers={"Authorization": key})
        assert response.status_code == 400, response.text
        assert list(response.json()) == ["limit"]


# In process (the same views, the test database): the defaults and the validation matrix.


@pytest.fixture
def _fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def _private_cache(settings):
    """Throttle counts in a cache of this test's own (never the shared one: with
    REDIS_URL set that would be Redis, and clearing it would flush the database)."""
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": f"rest-limits-{uuid.uuid4().hex}",
        }
    }


@pytest.mark.django_db
@pytest.mark.usefixtures("_fast_passwords", "_private_cache")
def test_the_default_token_rate_is_ten_a_minute():
    from django.conf import settings

    assert settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"] == {
        "auth_token": "10/min",
        "chat_api": "300/min",
        "sign_in": "10/min",
    }
    get_user_model().objects.create_user("dana", password="pw-dana-1")
    client = APIClient()
    for _ in range(10):
        assert client.post(TOKEN_URL, {"username": "dana", "password": "nope"}).status_code == 400
    response = client.post(TOKEN_URL, {"username": "dana", "password": "nope"})
    assert response.status_code == 429
    assert 0 < int(response["Retry-After"]) <= 60


@pytest.mark.django_db
@pytest.mark.usefixtures("_fast_passwords", "_private_cache")
def test_the_sign_in_forms_share_the_token_views_allowance():
    """Helper "reviewer13": the chat's sign-in form and the admin's had no throttle (50
    wrong guesses of 50 were checked on each, then the right password signed in). One
    allowance per address for both: 10 a minute, then 429 with Retry-After (the token
    view has its own)."""
    from django.test import Client

    get_user_model().objects.create_superuser("root", "root@example.com", "pw-root-1")
    client = Client()
    codes = [
        client.post("/login/", {"username": "root", "password": "nope"}).status_code
        for _ in range(4)
    ]
    codes += [
        client.post("/admin/login/", {"username": "root", "password": "nope"}).status_code
        for _ in range(6)
    ]
    assert codes == [200] * 10  # wrong passwords, each checked
    form = client.post("/login/", {"username": "root", "password": "pw-root-1"})
    assert form.status_code == 429 and b"Too many sign-in attempts" in form.content
    assert 0 < int(form["Retry-After"]) <= 60
    admin = client.post("/admin/login/", {"username": "root", "password": "pw-root-1"})
    assert admin.status_code == 429
    assert client.get("/admin/login/").status_code == 200  # the page itself is not limited


@pytest.fixture
def _redis_down(settings):
    """The cache is a Redis that refuses connections (a port nothing listens on), and
    the throttles' memory of outages starts and ends empty."""
    import socket

    from streaming.throttling import AtomicSimpleRateThrottle

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{port}/0",
            "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
        }
    }
    AtomicSimpleRateThrottle._outages.clear()
    AtomicSimpleRateThrottle._local.clear()
    yield
    AtomicSimpleRateThrottle._outages.clear()
    AtomicSimpleRateThrottle._local.clear()


@pytest.mark.django_db
@pytest.mark.usefixtures("_fast_passwords", "_redis_down")
def test_the_token_rate_holds_while_redis_is_down(caplog):
    """Passwords cannot be guessed at full speed because Redis is down: the sign-in's
    throttle counts in this process's memory while its cache fails (helper "operator13":
    30 guesses of 30 were checked, the throttle let everything through). The chat's API
    stays open meanwhile (its throttle lets requests through)."""
    get_user_model().objects.create_user("erin", password="pw-erin-1")
    client = APIClient()
    with caplog.at_level("WARNING", logger="streaming.throttling"):
        codes = [
            client.post(TOKEN_URL, {"username": "erin", "password": "nope"}).status_code
            for _ in range(14)
        ]
    assert codes == [400] * 10 + [429] * 4
    assert "counting in this process's memory" in caplog.text
    token = client.post(TOKEN_URL, {"username": "erin", "password": "pw-erin-1"})
    assert token.status_code == 429  # the limit holds for the right password too
    client.force_authenticate(get_user_model().objects.get(username="erin"))
    assert all(client.get(USERS_URL).status_code == 200 for _ in range(3))


@pytest.fixture
def people(_fast_passwords, _private_cache):
    User = get_user_model()
    return [User.objects.create_user(f"user{n}", password="pw-user-1") for n in range(3)]


def signed_in(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


@pytest.mark.django_db
@pytest.mark.parametrize(
    "url, query, field",
    [
        (MESSAGES_URL, {"with": HUGE}, "with"),
        (MESSAGES_URL, {"with": MAX_ID + 1}, "with"),
        (MESSAGES_URL, {"with": "-1"}, "with"),
        (MESSAGES_URL, {"with": "1e3"}, "with"),
        (MESSAGES_URL, {"with": 1, "after": HUGE}, "after"),
        (MESSAGES_URL, {"with": 1, "limit": HUGE}, "limit"),
        (MESSAGES_URL, {"with": 1, "limit": 0}, "limit"),
        (USERS_URL, {"limit": HUGE}, "limit"),
        (USERS_URL, {"limit": "x"}, "limit"),
        (USERS_URL, {"limit": 0}, "limit"),
        (USERS_URL, {"offset": HUGE}, "offset"),
        (USERS_URL, {"offset": -1}, "offset"),
        (USERS_URL, {"offset": "two"}, "offset"),
    ],
)
def test_bad_integers_are_400_naming_the_parameter(people, url, query, field):
    response = signed_in(people[0]).get(url, query)
    assert response.status_code == 400, response.content
    body = response.json()
    assert list(body) == [field]
    assert isinstance(body[field], list) and body[field][0]


@pytest.mark.django_db
def test_the_largest_id_is_a_valid_question_with_an_empty_answer(people):
    client = signed_in(people[0])
    response = client.get(MESSAGES_URL, {"with": MAX_ID, "after": MAX_ID})
    assert response.status_code == 200
    assert response.json() == {"next": None, "results": []}
    response = client.get(USERS_URL, {"offset": MAX_ID, "limit": MAX_ID})
    assert response.status_code == 200
    assert response.json()["results"] == []


@pytest.mark.django_db
def test_limit_is_capped_on_both_lists(people):
    User = get_user_model()
    me, other = people[0], people[1]
    User.objects.bulk_create(
        User(username=f"extra{n}", password="!") for n in range(MAX_PAGE_SIZE + 5)
    )
    Message.objects.bulk_create(
        Message(sender=other, recipient=me, text=f"m{n}") for n in range(MAX_PAGE_SIZE + 5)
    )
    client = signed_in(me)
    body = client.get(USERS_URL, {"limit": 10**6}).json()
    assert len(body["results"]) == MAX_PAGE_SIZE
    assert f"limit={MAX_PAGE_SIZE}" in body["next"]
    body = client.get(MESSAGES_URL, {"with": other.pk, "limit": 10**6}).json()
    assert len(body["results"]) == MAX_PAGE_SIZE
    assert body["next"] is not None
