"""GET /healthz and /readyz (streaming/health.py), against real Redis servers.

A Redis that is down is a port nothing listens on (refused at once) or a server that
accepts and never answers (only the timeout ends the check).
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from django.core.handlers.asgi import ASGIHandler
from django.test import AsyncClient, override_settings

from streaming.health import redis_urls
from tests.support.servers import free_port, require_redis


def layer(*hosts: object) -> dict:
    return {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": list(hosts)},
        }
    }


def redis_cache(location: object) -> dict:
    return {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": location,
        }
    }


async def test_healthz():
    response = await AsyncClient().get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert "no-cache" in response["Cache-Control"]


@pytest.mark.django_db
async def test_the_probes_answer_head_as_get():
    """Load balancers often probe with HEAD: it was 405 (the views took GET only), so every
    server looked down to them (an operator's try). Expected: the status a GET gets."""
    for path in ("/healthz", "/readyz"):
        response = await AsyncClient().head(path)
        assert response.status_code == 200, (path, response.status_code)
    assert (await AsyncClient().post("/healthz")).status_code == 405


async def test_readyz_names_broken_settings():
    """Helper "operator10": with a mistyped ``STREAMING`` key every handshake fails, and
    ``/readyz`` answered an HTML 500. Expected: 503 naming the problem."""
    with override_settings(STREAMING={"SEND_QUEUE_LIMT": 5}):
        response = await AsyncClient().get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["failed"] == ["settings"]
    assert "streaming.E001" in body["checks"]["settings"]
    assert "SEND_QUEUE_LIMT" in body["checks"]["settings"]


@pytest.mark.django_db
async def test_readyz_with_the_database_and_no_redis():
    response = await AsyncClient().get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok"}, "failed": []}


@pytest.mark.django_db
async def test_readyz_checks_every_redis_and_names_the_one_down():
    url = require_redis()
    down = f"redis://127.0.0.1:{free_port()}/0"
    with override_settings(CHANNEL_LAYERS=layer({"address": url}, {"address": down})):
        response = await AsyncClient().get("/readyz")
    assert response.status_code == 503
    body = response.json()
    name = f"redis 127.0.0.1:{down.split(':')[2]} (channel layer)"
    assert body["failed"] == [name]
    assert body["status"] == "unavailable"
    assert "ConnectionError" in body["checks"][name]
    assert body["checks"]["database"] == "ok"
    up = next(key for key in body["checks"] if key not in (name, "database"))
    assert body["checks"][up] == "ok"


@pytest.mark.django_db
async def test_readyz_ok_with_a_redis_layer_and_cache():
    url = require_redis()
    with override_settings(CHANNEL_LAYERS=layer(url), CACHES=redis_cache(url)):
        response = await AsyncClient().get("/readyz")
    assert response.status_code == 200, response.json()
    name = f"redis {url[8:]} (channel layer, cache)"  # the same Redis is checked once
    # "bus": the bus's own subscription (not stalled: tests/e2e/test_bus_stall.py)
    assert response.json()["checks"] == {"database": "ok", name: "ok", "bus": "ok"}


@pytest.mark.django_db
async def test_readyz_names_a_redis_cache_that_is_down():
    down = f"redis://127.0.0.1:{free_port()}/1"
    with override_settings(CACHES=redis_cache(down)):
        response = await AsyncClient().get("/readyz")
    assert response.status_code == 503
    assert response.json()["failed"] == [f"redis {down[8:]} (cache)"]


@pytest.mark.django_db
async def test_a_redis_that_never_answers_times_out_without_blocking_the_loop():
    accepted = asyncio.Event()
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accept, read nothing, answer nothing
        accepted.set()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        await accepted.wait()
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    try:
        with override_settings(
            CHANNEL_LAYERS=layer(f"redis://127.0.0.1:{port}/0"),
            STREAMING={"HEALTH_TIMEOUT": 0.5},
        ):
            response = await AsyncClient().get("/readyz")
    finally:
        task.cancel()
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
    assert response.status_code == 503
    name = f"redis 127.0.0.1:{port}/0 (channel layer)"
    assert response.json()["checks"][name] == "timed out after 0.5s"
    assert ticks > 0  # the loop ran other tasks while the check waited


def test_redis_urls_of_every_host_form_without_passwords():
    hosts = [
        "redis://:pw@10.0.0.1:6379/0",
        ("10.0.0.2", 6380),
        {"address": "redis://10.0.0.3:6379/2"},
        {"address": ("10.0.0.4", 6381)},
        {"sentinels": [("10.0.0.9", 26379)], "master_name": "mymaster"},  # not checked
    ]
    with override_settings(
        CHANNEL_LAYERS=layer(*hosts),
        CACHES=redis_cache("redis://10.0.0.3:6379/2,redis://10.0.0.5:6379/0"),
    ):
        names = [name for name, _ in redis_urls()]
    assert names == [
        "redis 10.0.0.1:6379/0 (channel layer)",
        "redis 10.0.0.2:6380 (channel layer)",
        "redis 10.0.0.3:6379/2 (channel layer, cache)",
        "redis 10.0.0.4:6381 (channel layer)",
        "redis 10.0.0.5:6379/0 (cache)",
    ]
    assert not any("pw" in name for name in names)


def test_a_url_that_does_not_parse_is_named_without_its_password():
    """Helper "operator10": ``/readyz`` named a mistyped URL (``redis//:password@host``,
    no scheme) whole, password included, twice. The project's settings refuse such URLs
    at start-up (tests/test_deploy_settings.py); a project of one's own may not."""
    hosts = [
        "redis//:s3cretpw@127.0.0.1:6379/0",
        "redis://:s3cretpw@127.0.0.1:x/0",
        "unix:///tmp/redis.sock?password=s3cretpw",  # redis-py's way for a socket
    ]
    with override_settings(CHANNEL_LAYERS=layer(*hosts)):
        names = [name for name, _ in redis_urls()]
    assert not any("s3cretpw" in name for name in names), names


@pytest.mark.django_db
async def test_probes_answer_any_host_over_plain_http():
    """As production runs (docs/deployment.md): only chat.example.com allowed, HTTPS
    enforced. A probe addressing the server by its IP still gets the answers."""

    def client(host: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=ASGIHandler(), client=("127.0.0.1", 40000))
        return httpx.AsyncClient(transport=transport, base_url=f"http://{host}")

    with override_settings(ALLOWED_HOSTS=["chat.example.com"], SECURE_SSL_REDIRECT=True):
        async with client("10.0.0.11:8001") as probe:
            assert (await probe.get("/healthz")).status_code == 200
            assert (await probe.get("/readyz")).status_code == 200
            assert (await probe.get("/metrics")).status_code == 200
            assert (await probe.get("/login/")).status_code == 400  # the rest: Host checked
        async with client("chat.example.com") as browser:
            assert (await browser.get("/login/")).status_code == 301  # and HTTPS enforced
