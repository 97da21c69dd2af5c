"""Prometheus metrics (streaming/metrics.py) and GET /metrics (streaming/health.py).

Counters are process-wide, so each test reads a metric before and after what it does.
"""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from django.core.handlers.asgi import ASGIHandler
from django.test import AsyncClient, override_settings
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import REGISTRY

from streaming import metrics
from streaming.endpoint import Endpoint
from streaming.messages import get_bus, post_message, reset_bus
from streaming.serialization import SerializableEntity
from streaming.testing import StreamingCommunicator


class MetricsNote(SerializableEntity):
    text: str


class MetricsEchoEndpoint(Endpoint):
    async def handle_stream_message(self, session, message):
        await self.send_stream_message(session, message)


class _Owner:
    pass


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def scraped(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, labels): value}`` of a Prometheus text page."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_frames_errors_closes_and_connections_are_counted():
    name = MetricsEchoEndpoint.name
    received = value("streampod_frames_received_total", endpoint=name)
    sent = value("streampod_frames_sent_total", endpoint=name)
    unknown = value("streampod_errors_total", code="unknown_endpoint")
    closes = value("streampod_closes_total", code="1000")
    connections = value("streampod_connections")

    comm = StreamingCommunicator(endpoints=[MetricsEchoEndpoint])
    await comm.connect()
    assert value("streampod_connections") == connections + 1
    for i in range(3):
        await comm.send_message(name, MetricsNote(text=str(i)))
        assert await comm.receive_message(name) == MetricsNote(text=str(i))
    await comm.send_message("no_such_endpoint", MetricsNote(text="?"))
    await comm.receive_error("unknown_endpoint")
    await comm.disconnect(code=1000)

    assert value("streampod_frames_received_total", endpoint=name) == received + 3
    assert value("streampod_frames_sent_total", endpoint=name) == sent + 3
    assert value("streampod_errors_total", code="unknown_endpoint") == unknown + 1
    assert value("streampod_closes_total", code="1000") == closes + 1
    assert value("streampod_connections") == connections
    # A client-chosen endpoint name never becomes a label value.
    assert value("streampod_frames_received_total", endpoint="no_such_endpoint") == 0


async def test_a_server_close_counts_its_code_once():
    closes = value("streampod_closes_total", code="4009")
    comm = StreamingCommunicator(endpoints=[MetricsEchoEndpoint])
    await comm.connect()
    await comm.send_to(text_data="x" * 70_000)
    await comm.receive_error("malformed_frame")
    assert await comm.receive_close() == 4009
    await comm.disconnect()
    assert value("streampod_closes_total", code="4009") == closes + 1


async def test_close_codes_outside_the_known_ones_share_one_label():
    before = value("streampod_closes_total", code="other")
    comm = StreamingCommunicator(endpoints=[MetricsEchoEndpoint])
    await comm.connect()
    await comm.disconnect(code=4777)
    assert value("streampod_closes_total", code="other") == before + 1
    assert value("streampod_closes_total", code="4777") == 0


async def test_send_queue_gauges_read_the_open_sockets():
    comm = StreamingCommunicator(endpoints=[MetricsEchoEndpoint])
    await comm.connect()
    try:
        (consumer,) = [c for c in metrics._sockets if c.outbox is not None]
        outbox = consumer.outbox
        frames_before = value("streampod_send_queue_frames")
        # Hold a frame in the queue, as before the accept (or while the server pushes back).
        outbox._gated = True
        assert outbox.put('{"command":"pong","args":{}}')
        assert value("streampod_send_queue_frames") == frames_before + 1
        assert value("streampod_send_queue_bytes") >= len('{"command":"pong","args":{}}')
        outbox._gated = False
        outbox._queue.clear()
        outbox._bytes = 0
    finally:
        await comm.disconnect()


async def test_bus_posts_and_deliveries():
    reset_bus()
    bus = get_bus()
    posts = value("streampod_bus_posts_total")
    deliveries = value("streampod_bus_deliveries_total")
    got: list[SerializableEntity] = []
    owner = _Owner()
    bus.add_listener("metrics_test", got.append, owner=owner)
    bus.add_listener("metrics_test", lambda m: None, owner=owner)
    await post_message("metrics_test", MetricsNote(text="a"))
    await post_message("metrics_nobody", MetricsNote(text="b"))
    bus.remove_owner(owner)
    assert len(got) == 1
    assert value("streampod_bus_posts_total") == posts + 2
    assert value("streampod_bus_deliveries_total") == deliveries + 2  # two listeners, one post


async def test_label_children_are_bound_once():
    metrics.frame_received("metrics_bound")
    count = metrics._bound_received["metrics_bound"]
    metrics.frame_received("metrics_bound")
    assert metrics._bound_received["metrics_bound"] is count
    assert metrics._received["metrics_bound"] is count
    assert value("streampod_frames_received_total", endpoint="metrics_bound") == 2


async def test_metrics_off_records_nothing_and_hides_the_page():
    name = MetricsEchoEndpoint.name
    received = value("streampod_frames_received_total", endpoint=name)
    with override_settings(STREAMING={"METRICS": False}):
        async with StreamingCommunicator(endpoints=[MetricsEchoEndpoint]) as comm:
            await comm.send_message(name, MetricsNote(text="off"))
            await comm.receive_message(name)
            assert not any(c.scope is comm.scope for c in metrics._sockets)
        response = await AsyncClient().get("/metrics")
        assert response.status_code == 404
    assert value("streampod_frames_received_total", endpoint=name) == received
    assert metrics.enabled()


# -- GET /metrics --------------------------------------------------------------------------


@pytest.mark.django_db
async def test_metrics_page_for_a_loopback_client():
    name = MetricsEchoEndpoint.name
    async with StreamingCommunicator(endpoints=[MetricsEchoEndpoint]) as comm:
        await comm.send_message(name, MetricsNote(text="scraped"))
        await comm.receive_message(name)
        response = await AsyncClient().get("/metrics")  # the test client is 127.0.0.1
        assert response.status_code == 200
        assert response["Content-Type"].startswith("text/plain; version=")
        samples = scraped(response.content.decode())
        assert samples[("streampod_connections", ())] >= 1
    assert samples[("streampod_frames_received_total", (("endpoint", name),))] >= 1
    for family in (
        "streampod_frames_sent_total",
        "streampod_bus_posts_total",
        "streampod_bus_deliveries_total",
        "streampod_send_queue_frames",
        "streampod_send_queue_bytes",
        "streampod_bus_publish_seconds_count",
    ):
        assert any(key[0] == family for key in samples), family


def _client(address: str) -> httpx.AsyncClient:
    """Requests to the project's ASGI app in this process, from client ``address``."""
    transport = httpx.ASGITransport(app=ASGIHandler(), client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1")


async def test_metrics_refused_to_others_without_a_token(monkeypatch):
    monkeypatch.delenv("STREAMPOD_METRICS_TOKEN", raising=False)
    response = await _client("203.0.113.9").get("/metrics")
    assert response.status_code == 403
    # Through a proxy on this machine: not a loopback client either.
    response = await _client("127.0.0.1").get(
        "/metrics", headers={"X-Forwarded-For": "203.0.113.9"}
    )
    assert response.status_code == 403
    response = await _client("::1").get("/metrics")
    assert response.status_code == 200


async def test_metrics_with_the_bearer_token_from_the_environment(monkeypatch):
    monkeypatch.setenv("STREAMPOD_METRICS_TOKEN", "s3cret-token")
    outsider = _client("203.0.113.9")
    assert (await outsider.get("/metrics")).status_code == 401
    wrong = await outsider.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert wrong.headers["WWW-Authenticate"].startswith("Bearer")
    right = await outsider.get("/metrics", headers={"Authorization": "Bearer s3cret-token"})
    assert right.status_code == 200
    assert "streampod_connections" in right.text


async def test_metrics_token_setting_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv("STREAMPOD_METRICS_TOKEN", "from-env")
    with override_settings(STREAMING={"METRICS_TOKEN": "from-settings"}):
        outsider = _client("203.0.113.9")
        env = await outsider.get("/metrics", headers={"Authorization": "Bearer from-env"})
        assert env.status_code == 401
        ok = await outsider.get("/metrics", headers={"Authorization": "Bearer from-settings"})
        assert ok.status_code == 200


# -- the live page's endpoint (streaming/ops.py) ----------------------------------------


class _Person:
    is_authenticated = True
    is_active = True

    def __init__(self, pk: int, *, is_staff: bool) -> None:
        self.pk = pk
        self.is_staff = is_staff


async def test_the_cluster_endpoint_answers_staff_with_this_process_figures():
    from streaming.ops import (
        ClusterMetricsEndpoint,
        StreampodMetricsRequest,
        StreampodProcessMetrics,
    )

    name = ClusterMetricsEndpoint.name
    staff = _Person(1, is_staff=True)
    async with StreamingCommunicator(endpoints=[ClusterMetricsEndpoint], user=staff) as comm:
        await comm.send_message(name, StreampodMetricsRequest(request_id="r1"))
        answer = await comm.receive_message(name)
        assert isinstance(answer, StreampodProcessMetrics)
        assert answer.request_id == "r1"
        assert answer.figures["connections"] >= 1
        assert answer.figures["frames_received"][name] >= 1
        await comm.assert_nothing_received()  # one process here: one answer
    assert get_bus().listener_count("streampod_metrics") == 0  # gone with the last socket


async def test_the_cluster_endpoint_refuses_others():
    from streaming.ops import ClusterMetricsEndpoint, StreampodMetricsRequest

    name = ClusterMetricsEndpoint.name
    for user, code in ((_Person(2, is_staff=False), "forbidden"), (None, "not_authenticated")):
        async with StreamingCommunicator(endpoints=[ClusterMetricsEndpoint], user=user) as comm:
            await comm.send_message(name, StreampodMetricsRequest(request_id="x"))
            await comm.receive_error(code)



@pytest.mark.redis
def test_publish_seconds_are_timed_finer_than_uvloops_clock(monkeypatch):
    """uvloop's ``loop.time()`` counts whole milliseconds: a publish to a local Redis
    shorter than one was observed as 0 s, and ``streampod_bus_publish_seconds_sum``
    stayed 0 after five posts (CI, tests/e2e/test_metrics_e2e.py under uvicorn)."""
    import uvloop
    from channels_redis.pubsub import RedisPubSubChannelLayer

    from streaming.messages import MessageBus
    from tests.support.servers import require_redis

    observed: list[float] = []
    record = metrics.bus_published
    monkeypatch.setattr(metrics, "bus_published", lambda s: (observed.append(s), record(s)))

    async def post_twenty() -> None:
        host = {"address": require_redis(), "socket_timeout": None}
        layer = RedisPubSubChannelLayer(hosts=[host], prefix=f"t{uuid.uuid4().hex[:10]}")
        bus = MessageBus(layer)
        try:
            for n in range(20):
                await bus.post_message("metrics_clock", MetricsNote(text=str(n)), global_=True)
        finally:
            await bus.aclose()
            await layer.flush()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(post_twenty())
    assert len(observed) == 20
    assert all(seconds > 0 for seconds in observed), observed


async def test_a_client_closing_while_a_restart_close_waits_is_counted():
    """daphne's 1012 seals the socket's queue and waits for it to drain. Seen: a client
    that closed meanwhile was counted nowhere in ``streampod_closes_total``."""
    from streaming.connections import get_connections

    closes = value("streampod_closes_total", code="1001")
    comm = StreamingCommunicator(endpoints=[MetricsEchoEndpoint])
    await comm.connect()
    (consumer,) = get_connections().live()
    consumer.outbox.seal()  # as streaming.shutdown does before daphne's 1012
    await comm.disconnect(code=1001)
    assert value("streampod_closes_total", code="1001") == closes + 1
