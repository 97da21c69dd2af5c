"""Database connections under async load, on PostgreSQL (issue 15).

The project keeps ``CONN_MAX_AGE = 0`` (settings.py): every ORM call of a hook runs in
``database_sync_to_async``, which closes the connection it used when the call ends. Under
ASGI that is what Django asks for (a persistent connection belongs to a thread, and
request threads come and go); what it costs is one connection setup per call. This
module shows the contract on a real server: a burst of chat over 20 sockets opens only a
few connections at a time, saves every message, and leaves no connection behind.
(``CONN_HEALTH_CHECKS`` only matters for connections kept between calls: with
``CONN_MAX_AGE = 0`` every call starts on a fresh one, so a restarted database is met
with a new connection.)

A real restart: a private PostgreSQL (``initdb`` on a port of its own) is shut down and
started again while sockets are open: a message sent meanwhile gets an error frame for
its id, the sockets stay open, and afterwards they chat again, with nothing saved lost
and nothing half-saved. (tests/e2e/test_faults.py makes the machine's database refuse
connections instead; that one cannot be restarted under other tests.)

Every test here runs on a throw-away PostgreSQL database of its own, whatever database
the test session uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time

import psycopg
import pytest

from tests.e2e.redis_support import recv_json
from tests.e2e.test_chat_e2e import chat_frame, connect, ready, recv_chat
from tests.e2e.test_faults import (  # noqa: F401 (throwaway_pg: a fixture)
    _PG_SETUP,
    history,
    pg_admin,
    throwaway_pg,
)
from tests.support.servers import IN_CI, ROOT, PostgresServer, UvicornServer

GUARD = 60  # seconds: a failure guard on a wait, never a synchronisation
SOCKETS_PER_USER = 10
MESSAGES_PER_SOCKET = 2  # 20 per user: the chat's allowance in 10 s (chat.endpoints)


def _backends(admin, name: str) -> int:
    return admin.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (name,)
    ).fetchone()[0]


async def _wait_no_backends(name: str) -> int:
    """Wait until no connection to database ``name`` is open (a state, polled); 0."""
    deadline = time.monotonic() + GUARD
    with pg_admin() as admin:
        while True:
            left = await asyncio.to_thread(_backends, admin, name)
            if left == 0 or time.monotonic() > deadline:
                assert left == 0, f"{left} connections still open"
                return left
            await asyncio.sleep(0.05)


class BackendSampler:
    """Samples the database's open connections in a thread until stopped: the peak."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with pg_admin() as admin:
            while not self._stop.wait(0.005):
                self.peak = max(self.peak, _backends(admin, self.name))
                self.samples += 1

    def __enter__(self) -> BackendSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


async def test_a_chat_burst_opens_few_connections_saves_everything_and_keeps_none(
    throwaway_pg,  # noqa: F811
):
    url, name, users = throwaway_pg
    (alice_id, alice_key), (bob_id, bob_key) = users["alice"], users["bob"]
    srv = UvicornServer(env={"DATABASE_URL": url})
    await asyncio.to_thread(srv.start)
    try:
        async with contextlib.AsyncExitStack() as stack:
            sockets = {alice_id: [], bob_id: []}
            for user_id, key in ((alice_id, alice_key), (bob_id, bob_key)):
                for _ in range(SOCKETS_PER_USER):
                    ws = await stack.enter_async_context(connect(srv.ws_url, key))
                    await ready(ws, user_id)
                    sockets[user_id].append(ws)
            peer = {alice_id: bob_id, bob_id: alice_id}

            with BackendSampler(name) as sampler:
                # Every socket sends at once: 40 messages, each saved by a hook.
                await asyncio.gather(
                    *(
                        ws.send(chat_frame(peer[user_id], f"{user_id}-{n}-{m}"))
                        for user_id, group in sockets.items()
                        for n, ws in enumerate(group)
                        for m in range(MESSAGES_PER_SOCKET)
                    )
                )
                # Each socket of both users sees all 40 (its own user's as acks).
                total = 2 * SOCKETS_PER_USER * MESSAGES_PER_SOCKET
                for group in sockets.values():
                    for ws in group:
                        got = [await recv_chat(ws, timeout=GUARD) for _ in range(total)]
                        assert all(frame.get("command") != "error" for frame in got), got
                        assert len({f["object"]["data"]["text"] for f in got}) == total

        saved = await history(srv.http_url, alice_key, bob_id)
        assert len(saved) == total
        # Nothing is kept between calls: the server's connections all close.
        left = await _wait_no_backends(name)
        assert sampler.samples > 0
        assert sampler.peak <= 4, sampler.peak
        print(
            f"\n{total} messages over {2 * SOCKETS_PER_USER} sockets on PostgreSQL: "
            f"at most {sampler.peak} connections at once ({sampler.samples} samples), "
            f"{left} left after",
            file=sys.stderr,
        )
    finally:
        await asyncio.to_thread(srv.stop)


def _private_postgres() -> PostgresServer:
    """A private PostgreSQL, started; fail (CI) or skip (elsewhere) without one."""
    if PostgresServer.bin_dir() is None:
        message = "PostgreSQL's server programs (initdb, postgres) are not installed"
        if IN_CI:
            pytest.fail(message + "; CI=true needs them")
        pytest.skip(message)
    return PostgresServer().start()


async def test_a_database_restart_mid_chat_error_frames_sockets_kept_nothing_lost():
    pg = await asyncio.to_thread(_private_postgres)
    srv = None
    try:
        with psycopg.connect(pg.admin_url, autocommit=True) as admin:
            admin.execute('CREATE DATABASE "streampod"')
        url = pg.url("streampod")
        setup = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", _PG_SETUP],
            cwd=ROOT,
            env={**os.environ, "DATABASE_URL": url, "REDIS_URL": "",
                 "DJANGO_SETTINGS_MODULE": "tests.e2e_settings", "DJANGO_DEBUG": "1"},
            capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip
        assert setup.returncode == 0, setup.stderr
        users = json.loads(setup.stdout.strip().splitlines()[-1])
        (alice_id, alice_key), (bob_id, bob_key) = users["alice"], users["bob"]
        srv = UvicornServer(env={"DATABASE_URL": url})
        await asyncio.to_thread(srv.start)
        async with connect(srv.ws_url, alice_key) as alices, connect(srv.ws_url, bob_key) as bobs:
            await ready(alices, alice_id)
            await ready(bobs, bob_id)
            await alices.send(chat_frame(bob_id, "before"))
            assert (await recv_chat(bobs, timeout=GUARD))["object"]["data"]["text"] == "before"
            await recv_chat(alices, timeout=GUARD)  # the ack: saved

            await asyncio.to_thread(pg.stop)  # fast shutdown: connections cut
            for n in range(2):
                await alices.send(
                    json.dumps(
                        {
                            "endpoint": "chat",
                            "id": f"down-{n}",
                            "object": {
                                "className": "ChatMessage",
                                "data": {"recipient_id": bob_id, "text": f"down {n}"},
                            },
                        }
                    )
                )
                error = await recv_chat(alices, timeout=GUARD)
                assert error.get("command") == "error", error
                args = error["args"]
                assert (args["code"], args["id"]) == ("internal_error", f"down-{n}")
                assert "Traceback" not in args["message"]
            for ws in (alices, bobs):  # both sockets are still open
                await ws.send(json.dumps({"command": "ping", "args": {}}))
                while (await recv_json(ws, GUARD)).get("command") != "pong":
                    pass

            await asyncio.to_thread(pg.start)  # the same data directory and port
            await alices.send(chat_frame(bob_id, "after"))
            assert (await recv_chat(bobs, timeout=GUARD))["object"]["data"]["text"] == "after"
            assert (await recv_chat(alices, timeout=GUARD))["object"]["data"]["text"] == "after"
        stored = [m["text"] for m in await history(srv.http_url, alice_key, bob_id)]
        assert stored == ["before", "after"]  # nothing lost, nothing half-saved
        assert srv.proc.poll() is None
    finally:
        if srv is not None:
            await asyncio.to_thread(srv.stop)
        await asyncio.to_thread(pg.__exit__, None, None, None)
