"""Health checks and metrics of real servers: daphne and uvicorn, each on a private
redis-server (channel layer and cache), scraped over HTTP as Prometheus would.

* /metrics moves with traffic: frames per endpoint, errors, closes, bus posts and
  deliveries, the publish latency histogram; served to loopback, refused to a request
  that came through a proxy unless it has the bearer token.
* /readyz: 200 while Redis and the database answer; 503 naming the Redis that stopped,
  or the database that is unreachable.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.redis_support import connect, join, recv_endpoint, recv_json, room_post
from tests.support.servers import ROOT, SERVERS, DaphneServer, RedisServer, free_port

pytestmark = pytest.mark.redis

TOKEN = "e2e-metrics-" + "t" * 20
#: What nginx adds (deploy/nginx/streampod.conf): the request came through a proxy.
PROXIED = {"X-Forwarded-For": "203.0.113.7"}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module", params=["daphne", "uvicorn"])
def stack(request, django_db_setup) -> Iterator[tuple[RedisServer, DaphneServer]]:
    """A private redis-server and one server using it (layer and cache), with a token."""
    with RedisServer() as rs:
        env = {"REDIS_URL": rs.url, "STREAMPOD_METRICS_TOKEN": TOKEN}
        with SERVERS[request.param](env=env) as srv:
            yield rs, srv


async def scrape(srv: DaphneServer, headers: dict[str, str] | None = None) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.get(srv.http_url + "/metrics", headers=headers)


async def samples(srv: DaphneServer) -> Samples:
    response = await scrape(srv)
    assert response.status_code == 200, response.text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def get(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


async def wait_for(srv: DaphneServer, name: str, expected: float, timeout: float = 30) -> None:
    """Scrape until ``name`` reads ``expected`` (a state reached after a close)."""
    deadline = time.monotonic() + timeout
    while True:
        value = get(await samples(srv), name)
        if value == expected:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} = {value}, expected {expected}")
        await asyncio.sleep(0.1)


async def test_counters_move_with_traffic(stack):
    _, srv = stack
    before = await samples(srv)
    room = f"m{uuid.uuid4().hex[:8]}"
    async with connect(srv.ws_url) as ws:
        during = await samples(srv)
        assert get(during, "streampod_connections") == get(before, "streampod_connections") + 1
        await join(ws, room)  # one frame in, one out; listens on room:<name> cluster-wide
        for i in range(5):
            await ws.send(room_post(room, f"post {i}"))
        for i in range(5):  # each post comes back through the bus to this listener
            frame = await recv_endpoint(ws, "room")
            assert frame["object"]["data"]["text"] == f"post {i}"
        await ws.send(json.dumps({"endpoint": "nowhere", "object": {"className": "Echo",
                                                                     "data": {"text": "?"}}}))
        error = await recv_json(ws)
        assert error["args"]["code"] == "unknown_endpoint"
        after = await samples(srv)
    await wait_for(srv, "streampod_connections", get(before, "streampod_connections"))
    final = await samples(srv)

    def moved(name: str, **labels: str) -> float:
        return get(after, name, **labels) - get(before, name, **labels)

    assert moved("streampod_frames_received_total", endpoint="room") == 6
    assert moved("streampod_frames_sent_total", endpoint="room") == 6
    assert moved("streampod_errors_total", code="unknown_endpoint") == 1
    assert moved("streampod_bus_posts_total") == 5
    assert moved("streampod_bus_deliveries_total") == 5
    # Each post was published to Redis: the latency histogram counted them.
    assert moved("streampod_bus_publish_seconds_count") >= 5
    assert moved("streampod_bus_publish_seconds_sum") > 0
    assert get(after, "streampod_bus_publish_batches_total") >= 1
    assert get(final, "streampod_closes_total", code="1000") == (
        get(before, "streampod_closes_total", code="1000") + 1
    )
    assert get(final, "streampod_send_queue_frames") == 0


async def test_metrics_access_and_health(stack):
    _, srv = stack
    assert (await scrape(srv)).status_code == 200  # loopback
    refused = await scrape(srv, PROXIED)
    assert refused.status_code == 401
    wrong = await scrape(srv, {**PROXIED, "Authorization": "Bearer not-the-token"})
    assert wrong.status_code == 401
    allowed = await scrape(srv, {**PROXIED, "Authorization": f"Bearer {TOKEN}"})
    assert allowed.status_code == 200
    assert "streampod_connections " in allowed.text
    async with httpx.AsyncClient(timeout=30) as client:
        health = await client.get(srv.http_url + "/healthz")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})


def documented_metrics() -> set[str]:
    """The metric names of the table in docs/deployment.md, "Health checks and metrics"."""
    text = (ROOT / "docs" / "deployment.md").read_text()
    section = text[text.index("## Health checks and metrics") :]
    section = section[: section.index("\n## ", 1)]
    return set(re.findall(r"^\| `(streampod_[a-z_]+)` \|", section, re.MULTILINE))


async def test_the_docs_list_every_metric_a_server_exposes(stack):
    _, srv = stack
    response = await scrape(srv)
    exposed = set()
    for family in text_string_to_metric_families(response.text):
        if family.name.startswith("streampod_"):
            exposed.add(family.name + ("_total" if family.type == "counter" else ""))
    assert documented_metrics() == exposed


def test_the_metrics_cost_bench_runs(django_db_setup):
    """The command docs/deployment.md gives, at the size the tests run: nothing is lost."""
    result = subprocess.run(
        [sys.executable, "-m", "bench.metrics_cost", "--size", "tiny", "--rounds", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "median server_cpu_us_per_msg: on " in result.stdout
    assert "recording calls per relayed message: " in result.stdout


async def test_readyz_names_the_redis_that_stopped(stack):
    """Last in this module: it stops the module's Redis."""
    rs, srv = stack
    async with httpx.AsyncClient(timeout=30) as client:
        ready = await client.get(srv.http_url + "/readyz")
        assert ready.status_code == 200, ready.text
        name = f"redis 127.0.0.1:{rs.port}/0 (channel layer, cache)"
        assert ready.json()["checks"] == {"database": "ok", name: "ok", "bus": "ok"}
        await asyncio.to_thread(rs.stop)
        down = await client.get(srv.http_url + "/readyz")
        healthy = await client.get(srv.http_url + "/healthz")
    assert down.status_code == 503
    body = down.json()
    assert body["status"] == "unavailable"
    assert body["failed"] == [name]
    assert "ConnectionError" in body["checks"][name]
    assert body["checks"]["database"] == "ok"
    assert healthy.status_code == 200  # alive, only not ready


@pytest.mark.parametrize("server", ["daphne", "uvicorn"])
async def test_readyz_names_an_unreachable_database(server, django_db_setup):
    dead = f"postgres://postgres@127.0.0.1:{free_port()}/streampod_nowhere"
    srv = SERVERS[server](env={"DATABASE_URL": dead})
    await asyncio.to_thread(srv.start)
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            response = await client.get(srv.http_url + "/readyz")
    finally:
        await asyncio.to_thread(srv.stop)
    assert response.status_code == 503
    assert response.json()["failed"] == ["database"]
    assert "OperationalError" in response.json()["checks"]["database"]


async def test_a_server_error_on_http_is_logged_with_its_traceback(django_db_setup):
    """With DEBUG off, Django logs a 500's traceback only to ADMINS by mail: the log had
    the access line alone, and nothing under --no-access-log (helper "operator13")."""
    dead = f"postgres://postgres@127.0.0.1:{free_port()}/streampod_nowhere"
    srv = SERVERS["uvicorn"](env={"DATABASE_URL": dead})
    await asyncio.to_thread(srv.start)
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            response = await client.post(
                srv.http_url + "/api/auth/token/", data={"username": "a", "password": "b"}
            )
    finally:
        await asyncio.to_thread(srv.stop)
    assert response.status_code == 500
    logs = srv.logs()
    assert "ERROR django.request: Internal Server Error: /api/auth/token/" in logs
    assert "OperationalError" in logs and "Traceback" in logs


@pytest.mark.parametrize("server", ["daphne", "uvicorn"])
async def test_probes_reach_a_production_server_by_its_address(server, django_db_setup):
    """Only chat.example.com allowed and HTTPS enforced, as in production: a probe or a
    scrape addressing the server as 127.0.0.1:<port> over HTTP still gets its answer."""
    env = {"DJANGO_ALLOWED_HOSTS": "chat.example.com", "DJANGO_SECURE_SSL_REDIRECT": "1"}
    srv = SERVERS[server](env=env)
    await asyncio.to_thread(srv.start)
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            answers = {
                path: (await client.get(srv.http_url + path)).status_code
                for path in ("/healthz", "/readyz", "/metrics", "/login/")
            }
    finally:
        await asyncio.to_thread(srv.stop)
    assert answers == {"/healthz": 200, "/readyz": 200, "/metrics": 200, "/login/": 400}
