"""Database connections under async load, on PostgreSQL (issue 15).

The project keeps ``CONN_MAX_AGE = 0`` (settings.py): every ORM call of a hook runs in
``database_sync_to_async``, which closes the connection it used when the call ends. Under
ASGI that is what Django asks for (a persistent connection belongs to a thread, and
request threads come and go); what it costs is one connection setup per call. This
module shows the contract on a real server: a burst of chat over 20 sockets opens only a
few connections at a time, saves every message, and leaves no connection behind.
(``CONN_HEALTH_CHECKS`` only matters for connections kept between calls: with
``CONN_MAX_AGE = 0`` every call starts on a fresh one, so a restarted database is met
with a new connection. tests/e2e/test_faults.py covers the database going away and
coming back while sockets stay open.)

Every test here runs on a throw-away PostgreSQL database of its own (the fault tests'
fixture), whatever database the test session uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time

from tests.e2e.test_chat_e2e import chat_frame, connect, ready, recv_chat
from tests.e2e.test_faults import history, pg_admin, throwaway_pg  # noqa: F401 (a fixture)
from tests.support.servers import UvicornServer

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
