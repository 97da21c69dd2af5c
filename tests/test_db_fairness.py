"""``streaming.db``: database work takes turns by owner, so one user's backlog of queries
does not hold up another user's handshake and calls.

Seen (helper "attacker7", 2026-12-01): one user keeping 256 ``chat.history`` calls in
flight on each of 16 sockets made another user's token handshake time out after 20 s, and
his own ``history`` call take 30 s: every query waited, first come first served, in
asgiref's one thread for the ORM.
"""

from __future__ import annotations

import asyncio
import itertools
import time

from streaming import db
from streaming.auth import StreamingAuthMiddlewareStack
from streaming.consumer import StreamingConsumer
from streaming.endpoint import Endpoint, streaming_method
from streaming.testing import StreamingCommunicator

_order = itertools.count()
_ran = [0]


@db.database_sync_to_async
def _query() -> int:
    """Stands for a query: the ORM's thread busy for 5 ms; returns when it ran, in order."""
    time.sleep(0.005)
    _ran[0] += 1
    return next(_order)


class Queries(Endpoint):
    name = "queries"
    entered = 0  # calls that reached their query
    backlog = asyncio.Event()  # set once BACKLOG have
    BACKLOG = 150

    @streaming_method
    async def query(self, session) -> int:
        Queries.entered += 1
        if Queries.entered == Queries.BACKLOG:
            Queries.backlog.set()
        return await _query()

    @streaming_method
    async def nested(self, session) -> int:
        async with db.fair_database():  # gated code calling gated code: no deadlock
            return await _query()


def signed_in(key: str) -> StreamingCommunicator:
    app = StreamingAuthMiddlewareStack(StreamingConsumer.as_asgi(endpoints=[Queries]))
    headers = [(b"host", b"testserver"), (b"authorization", key.encode())]
    return StreamingCommunicator(app, "/websocket/", headers=headers, timeout=30)


async def call(comm: StreamingCommunicator, call_id: str, method: str = "query") -> None:
    fields = {"id": call_id, "endpoint": "queries", "method": method, "args": {}}
    await comm.send_command("call", fields)


async def done(comm: StreamingCommunicator) -> tuple[str, int]:
    frame = await comm.receive_frame()
    assert frame.command == "done", frame
    return frame.id, frame.args["value"]


async def backlog_queued() -> None:
    """Until ``Queries.BACKLOG`` calls wait for the database (in their owner's queue; in
    asgiref's, first come first served, without the turns)."""
    Queries.entered = 0
    Queries.backlog = asyncio.Event()
    async with asyncio.timeout(30):
        await Queries.backlog.wait()


async def test_one_users_backlog_does_not_hold_up_another_users_handshake_and_call(make_user):
    _, alice_key = await make_user("alice")
    _, bob_key = await make_user("bob")
    async with signed_in(alice_key) as alices:
        queued = asyncio.ensure_future(backlog_queued())
        for i in range(200):
            await call(alices, f"a{i}")
        await queued
        async with signed_in(bob_key) as bobs:  # its token lookup takes a turn too
            await call(bobs, "b")
            _, bobs_turn = await done(bobs)
        alices_turns = [turn for _, turn in [await done(alices) for _ in range(200)]]
    # Bob's handshake and call each waited for one of Alice's queries, not for her 150
    # or more waiting (first come, first served, they ran after all of them).
    assert sum(turn > bobs_turn for turn in alices_turns) >= 140, (bobs_turn, alices_turns)


async def test_turns_survive_cancelled_waiters_and_nested_gates(make_user):
    _, alice_key = await make_user("alice")
    _, bob_key = await make_user("bob")
    alices = signed_in(alice_key)
    await alices.connect()
    queued = asyncio.ensure_future(backlog_queued())
    for i in range(Queries.BACKLOG + 10):
        await call(alices, f"a{i}")
    await queued
    await alices.disconnect()  # her waiting calls are cancelled where they wait
    async with signed_in(bob_key) as bobs:
        await call(bobs, "b", "nested")
        assert (await done(bobs))[0] == "b"
    assert db.waiting() == 0


async def test_the_re_check_takes_the_shared_turn_not_the_first_users(make_user, settings):
    """The re-check loop starts in the context of the first signed-in socket, so its
    queries took that user's turn: her own backlog then held up every revocation check
    of the process. It takes the shared turn."""
    from streaming.connections import get_connections

    settings.STREAMING = {"USER_RECHECK_INTERVAL": 0.05}
    _, alice_key = await make_user("alice")
    async with signed_in(alice_key) as alices:  # the first socket: it starts the loop
        queued = asyncio.ensure_future(backlog_queued())
        for i in range(200):
            await call(alices, f"a{i}")
        await queued
        ran_before = _ran[0]
        connections = get_connections()
        rounds = connections.rounds
        async with asyncio.timeout(30):
            await connections.wait_rounds(rounds + 2)  # a whole round after the backlog
        # Two rounds waited for a few of her queries, not for her 150 or more waiting.
        assert _ran[0] - ran_before < 100, _ran[0] - ran_before
        for _ in range(200):
            await done(alices)


async def test_one_users_burst_of_handshakes_does_not_hold_up_another_users(make_user):
    """An attacker's try (helper "attacker9", 2026-12-01): 200 sockets of two users opened
    at once on a busy server; their token lookups queued in the one shared turn that
    handshakes took, and another user's handshakes waited behind all of them (6 to 22 s).
    A handshake's lookup now takes the turn of the credential it presents."""
    _, alice_key = await make_user("alice")
    _, bob_key = await make_user("bob")
    order: list[str] = []

    async def open_socket(who: str, key: str) -> StreamingCommunicator:
        comm = signed_in(key)
        await comm.connect()
        order.append(who)
        return comm

    alices = [asyncio.ensure_future(open_socket("alice", alice_key)) for _ in range(100)]
    async with asyncio.timeout(30):  # a failure guard
        while db.waiting() < 50:  # noqa: ASYNC110 (a state: her lookups are queued)
            await asyncio.sleep(0)
    bob = await open_socket("bob", bob_key)
    sockets = [bob, *await asyncio.gather(*alices)]
    ahead = order.index("bob")
    for comm in sockets:
        await comm.disconnect()
    # Bob's lookup waited for about one of hers, not for the 50 or more queued before it.
    assert ahead < 50, order


async def test_handshakes_with_made_up_tokens_take_one_turn_a_round(make_user):
    """A review of the fix above: with a turn per presented credential, 100 handshakes with
    100 made-up tokens were 100 owners, and a signed-in user's query waited behind all
    their lookups. Handshakes are one owner, whose turns go round their credentials."""
    _, alice_key = await make_user("alice")
    closed: list[int] = []

    async def made_up(n: int) -> None:
        comm = signed_in(f"Token madeup{n:036d}")
        await comm.connect()
        closed.append(await comm.receive_close())

    async with signed_in(alice_key) as alices:
        attempts = [asyncio.ensure_future(made_up(n)) for n in range(100)]
        async with asyncio.timeout(30):  # a failure guard
            while db.waiting() < 50:  # noqa: ASYNC110 (a state: their lookups are queued)
                await asyncio.sleep(0)
        await call(alices, "a")
        await done(alices)
        ahead = len(closed)
        await asyncio.gather(*attempts)
    assert set(closed) == {4401}
    assert ahead < 10, ahead  # one lookup a round, not one per made-up token
