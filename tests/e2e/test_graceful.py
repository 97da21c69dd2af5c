"""Graceful restarts against real servers (streaming/shutdown.py, docs/deployment.md).

* SIGTERM to a daphne or uvicorn process with open sockets: every client sees close
  code 1012 (not 1006 or 1001), a ``stream_closed`` hook still running finishes (it
  writes a marker file the test reads), a new handshake during the drain is refused,
  and the process exits within ``SHUTDOWN_GRACE_PERIOD`` plus a margin.
* A rolling restart: two servers sharing a private Redis behind nginx, Python clients
  chatting through it all along; server A gets SIGTERM and A' starts on its port. The
  clients that were on A are back (through nginx, on B) at once, every message the
  database holds reached its recipient, and the reconnect times are measured and
  printed (the issue's bound is 2 s; the assertion is generous, CI is loaded).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from urllib.parse import parse_qs, quote

import pytest
import websockets

from streaming.endpoint import Endpoint
from tests.support.servers import SERVERS

#: Seconds the ``linger`` endpoint's stream_closed takes (within CLOSE_GRACE_PERIOD, 5 s).
LINGER = 1.0
SHUTDOWN_GRACE = 10.0  # SHUTDOWN_GRACE_PERIOD's default
MARGIN = 30.0  # process start-up and exit on a loaded CI machine
WAIT = 30  # seconds: a safety net for awaits on real signals, never a measurement


class LingerEndpoint(Endpoint):
    """Wire name ``linger``. For a socket opened with ``?marker=<path>``, stream_closed
    takes ``LINGER`` seconds, then writes "finished" to that path."""

    async def stream_closed(self, session):
        query = parse_qs(session.scope.get("query_string", b"").decode("latin-1"))
        marker = query.get("marker")
        if marker:
            await asyncio.sleep(LINGER)  # a hook still busy when its socket closes
            await asyncio.to_thread(Path(marker[0]).write_text, "finished")


@pytest.fixture(params=["daphne", "uvicorn"])
def graceful_server(request, django_db_setup, django_db_blocker):
    """A fresh server (this test stops it) with the ``linger`` endpoint."""
    srv = SERVERS[request.param](env={"DJANGO_SETTINGS_MODULE": "tests.e2e_graceful_settings"})
    with srv:
        yield srv


async def ping(ws) -> None:
    await ws.send(json.dumps({"command": "ping", "args": {}}))
    async with asyncio.timeout(WAIT):
        while json.loads(await ws.recv()) != {"command": "pong", "args": {}}:
            pass  # greetings of the e2e endpoints on open


async def close_code(ws) -> int | None:
    """The close code the server sent (waits for the close)."""
    await asyncio.wait_for(ws.wait_closed(), WAIT)
    return ws.close_code


async def test_sigterm_closes_with_1012_lets_hooks_finish_refuses_new_sockets_and_exits(
    graceful_server, tmp_path
):
    srv = graceful_server
    marker = tmp_path / "stream_closed"
    lingering = await websockets.connect(
        f"{srv.ws_url}?marker={quote(str(marker))}", open_timeout=WAIT
    )
    others = [await websockets.connect(srv.ws_url, open_timeout=WAIT) for _ in range(2)]
    sockets = [lingering, *others]
    for ws in sockets:
        await ping(ws)
    # uvicorn: at the first socket (its handler is installed after the application loads).
    assert await asyncio.to_thread(srv.output.wait_for, "graceful shutdown installed", WAIT), (
        srv.logs()
    )

    signalled = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    codes = await asyncio.gather(*(close_code(ws) for ws in sockets))
    assert codes == [1012, 1012, 1012], srv.logs()

    # The lingering hook holds the drain open: a new handshake now is refused (the
    # listening socket is closed: refused at TCP; or, if one got through, HTTP 503/403).
    assert not marker.exists()
    with pytest.raises((OSError, websockets.InvalidStatus)) as refused:
        late = await websockets.connect(srv.ws_url, open_timeout=WAIT)
        await late.close()
    if isinstance(refused.value, websockets.InvalidStatus):
        assert refused.value.response.status_code in (503, 403)

    returncode = await asyncio.to_thread(srv.proc.wait, SHUTDOWN_GRACE + MARGIN)
    elapsed = time.monotonic() - signalled
    assert marker.read_text() == "finished"  # the hook finished before the exit
    logs = srv.logs()
    assert "drained: 3 sockets closed with 1012" in logs, logs
    if srv.name == "uvicorn":
        # uvicorn re-raises the signal once its own shutdown is done: "killed by SIGTERM".
        assert returncode == -signal.SIGTERM, logs
        assert "Finished server process" in logs
    else:
        assert returncode == 0, logs
    assert elapsed < SHUTDOWN_GRACE + MARGIN
    print(f"\n{srv.name}: SIGTERM to exit {elapsed:.2f}s (stream_closed took {LINGER}s)")
