"""streaming.shutdown in one process: the drain closes every socket with 1012 after its
queued frames and waits for its hooks, a draining process refuses handshakes, and the
SIGTERM hook is installed only over a handler it recognises (else the server's own
shutdown applies). Against real daphne and uvicorn processes: tests/e2e/test_graceful.py.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from channels.testing import ApplicationCommunicator

from streaming import shutdown
from streaming.connections import get_connections
from streaming.consumer import StreamingConsumer
from streaming.endpoint import Endpoint
from streaming.protocol import CloseCode, restart_advice, restart_reason
from streaming.serialization import SerializableEntity
from streaming.testing import StreamingCommunicator


class Note(SerializableEntity):
    class_name = "tests.shutdown.Note"
    text: str


async def test_drain_closes_with_1012_after_queued_frames_and_waits_for_stream_closed():
    closing, finish = asyncio.Event(), asyncio.Event()
    finished: list[str] = []

    class LingerEndpoint(Endpoint):
        async def stream_closed(self, session):
            closing.set()
            await finish.wait()  # a hook still running when the socket closes
            finished.append("stream_closed")

    comm = StreamingCommunicator(endpoints=[LingerEndpoint])
    assert (await comm.connect(timeout=5))[0]
    (consumer,) = get_connections().live()
    consumer.send_text('{"command":"pong","args":{}}')  # queued before the drain
    draining = asyncio.ensure_future(shutdown.drain(grace=30))
    assert await comm.receive_command("pong", timeout=5) == {}
    assert await comm.receive_close(timeout=5) == CloseCode.SERVICE_RESTART == 1012
    await comm.send_input({"type": "websocket.disconnect", "code": 1012})
    await asyncio.wait_for(closing.wait(), 5)
    assert not draining.done()  # the drain waits for the hook
    finish.set()
    assert await asyncio.wait_for(draining, 5) == 0
    assert finished == ["stream_closed"]
    await comm.wait(5)


async def test_a_draining_process_refuses_handshakes_503_where_the_server_can_say_it():
    get_connections().start_draining()
    # uvicorn offers the websocket.http.response extension: HTTP 503, Retry-After: 0.
    app = StreamingConsumer.as_asgi(endpoints=[])
    scope = {
        "type": "websocket",
        "path": "/websocket/",
        "headers": [],
        "query_string": b"",
        "extensions": {"websocket.http.response": {}},
    }
    comm = ApplicationCommunicator(app, scope)
    await comm.send_input({"type": "websocket.connect"})
    start = await comm.receive_output(5)
    assert start["type"] == "websocket.http.response.start"
    assert start["status"] == 503
    assert (b"retry-after", b"0") in start["headers"]
    body = await comm.receive_output(5)
    assert body["type"] == "websocket.http.response.body"
    await comm.send_input({"type": "websocket.disconnect", "code": 1006})
    await comm.wait(5)
    # Without it (daphne): accepted and closed at once, not refused (daphne's refusal is an
    # HTTP 403, which clients take as final); here no daphne protocol is behind ``send``,
    # so the close is 1000 (under daphne it is 1012: tests/e2e/test_graceful.py).
    plain = StreamingCommunicator(endpoints=[])
    connected, _ = await plain.connect(timeout=5)
    assert connected
    assert await plain.receive_close(timeout=5) == 1000
    await plain.disconnect()
    assert get_connections().live() == []


async def test_drain_gives_up_after_the_grace_period_and_says_how_many_are_left(caplog):
    class StuckEndpoint(Endpoint):
        async def stream_closed(self, session):
            await asyncio.Event().wait()

    comm = StreamingCommunicator(endpoints=[StuckEndpoint])
    assert (await comm.connect(timeout=5))[0]
    with caplog.at_level(logging.WARNING, logger="streaming.shutdown"):
        draining = asyncio.ensure_future(shutdown.drain(grace=0.2))
        assert await comm.receive_close(timeout=5) == 1012
        await comm.send_input({"type": "websocket.disconnect", "code": 1012})
        assert await asyncio.wait_for(draining, 10) == 1
    assert "1 sockets still closing" in caplog.text
    await comm.wait(30)  # the consumer's own CLOSE_GRACE_PERIOD cancels the hook


def test_only_uvicorn_and_twisted_handlers_are_recognised():
    class Server:
        def handle_exit(self, sig, frame):
            pass

    Server.__module__ = "uvicorn.server"

    class Reactor:
        def sigTerm(self, sig, frame):
            pass

    Reactor.__module__ = "twisted.internet.asyncioreactor"
    assert shutdown.server_of(Server().handle_exit) == "uvicorn"
    assert shutdown.server_of(Reactor().sigTerm) == "daphne"
    assert shutdown.server_of(signal.SIG_DFL) is None
    assert shutdown.server_of(lambda sig, frame: None) is None


async def test_an_unrecognised_sigterm_handler_is_left_alone(caplog):
    """The fallback: another server (or a test process) keeps its own SIGTERM handling."""

    def own_handler(sig, frame):
        pass

    previous = signal.signal(signal.SIGTERM, own_handler)
    try:
        with caplog.at_level(logging.INFO, logger="streaming.shutdown"):
            shutdown.install_graceful_shutdown()
            assert signal.getsignal(signal.SIGTERM) is own_handler
            # What runs at the first socket (or once daphne's reactor starts).
            shutdown._install_pending()
        assert signal.getsignal(signal.SIGTERM) is own_handler
        assert "graceful shutdown not installed" in caplog.text
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_uvicorn_listeners_not_found_fall_back_to_refusing(caplog):
    """uvicorn's ``Server.servers`` is not public: without it the drain goes on."""
    with caplog.at_level(logging.WARNING, logger="streaming.shutdown"):
        shutdown._close_uvicorn_listeners(object())
    assert "handshakes get 503 instead" in caplog.text


async def test_under_daphne_a_send_that_hides_daphne_closes_with_1000_not_a_refused_1012():
    """The fallback when daphne's protocol is not found behind ``send`` (a middleware
    wraps it): daphne's ASGI close would refuse 1012 and leave the socket open."""
    comm = StreamingCommunicator(endpoints=[])
    assert (await comm.connect(timeout=5))[0]
    draining = asyncio.ensure_future(shutdown.drain(grace=30, server="daphne"))
    assert await comm.receive_close(timeout=5) == CloseCode.NORMAL
    await comm.send_input({"type": "websocket.disconnect", "code": 1000})
    assert await asyncio.wait_for(draining, 5) == 0
    await comm.wait(5)


def test_a_1012s_close_reason_round_trips_and_bad_advice_is_ignored():
    assert restart_reason(5) == "restart spread=5"
    assert restart_reason(0.015, 2.5) == "restart after=2.5 spread=0.015"
    assert restart_advice("restart after=2.5 spread=0.015") == (2.5, 0.015)
    assert restart_advice(restart_reason(12.25)) == (0.0, 12.25)
    for other in ("", "going away", "restart spread=-1", "restart spread=nan", "spread=1e9"):
        assert restart_advice(other) == (0.0, 0.0), other
    # A figure past MAX_RESTART_ADVICE (600 s, after first) is taken as that.
    assert restart_advice("restart after=700 spread=5") == (600.0, 0.0)
    assert restart_advice("restart after=100 spread=9000") == (100.0, 500.0)


def test_1012_advice_paces_the_processs_clients_at_restart_rate(settings, monkeypatch):
    """N sockets closed with 1012 at once are told to come back within N / RESTART_RATE
    seconds; 1012s while that window lasts (a late join, a second gap) are told to come
    back after it, so that the process's clients return at RESTART_RATE a second."""
    monkeypatch.setattr(shutdown, "_advised_until", 0.0)
    settings.STREAMING = {"RESTART_RATE": 100.0}
    after, spread = restart_advice(shutdown.restart_advice_for(50))
    assert (after, spread) == (0.0, 0.5)
    after, spread = restart_advice(shutdown.restart_advice_for(1))
    assert 0.49 < after <= 0.5 and spread == 0.01
    settings.STREAMING = {"RESTART_RATE": None}  # no advice: the clients' own spread
    assert shutdown.restart_advice_for(1000) == ""


async def test_the_drains_1012_carries_the_advice_for_every_socket_it_closes(settings, monkeypatch):
    monkeypatch.setattr(shutdown, "_advised_until", 0.0)
    settings.STREAMING = {"RESTART_RATE": 50.0}
    comms = [StreamingCommunicator(endpoints=[]) for _ in range(3)]
    for comm in comms:
        assert (await comm.connect(timeout=5))[0]
    draining = asyncio.ensure_future(shutdown.drain(grace=30))
    for comm in comms:
        while (output := await comm.receive_output(5))["type"] != "websocket.close":
            pass
        assert output == {"type": "websocket.close", "code": 1012, "reason": "restart spread=0.06"}
        await comm.send_input({"type": "websocket.disconnect", "code": 1012})
    assert await asyncio.wait_for(draining, 5) == 0
    for comm in comms:
        await comm.wait(5)


async def test_the_drain_runs_with_broken_settings():
    """Helper "operator10": with a mistyped ``STREAMING`` key, SIGTERM's drain raised
    ``ImproperlyConfigured`` (reading ``SHUTDOWN_GRACE_PERIOD``). It drains with the
    defaults instead."""
    from django.test import override_settings

    advised_until = shutdown._advised_until
    try:
        with override_settings(STREAMING={"SHUTDOWN_GRACE_PERIOD_S": 1}):
            assert await shutdown.drain() == 0
            assert shutdown.restart_advice_for(10).startswith("restart")
    finally:
        shutdown._advised_until = advised_until  # the next tests' advice starts afresh
