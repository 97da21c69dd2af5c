"""Fair turns at the database: the ORM's one thread, taken in turns by user.

Django's ORM is synchronous; channels' ``database_sync_to_async`` and Django's async ORM
run it in asgiref's one thread for thread-sensitive code, first come, first served. A
client that keeps many database-bound calls in flight (256 streaming-method calls a
socket, 100 sockets a user) queued thousands of queries ahead of everyone else: seen (a
review, ``chat.history`` flooded from 16 sockets of one user), another user's handshake,
whose token lookup waited behind them, timed out after 20 s.

Here database work waits for its turn in a queue of its owner's, and the thread is handed
to the owners in turn. The owner is the user a socket is signed in as (all of the user's
sockets share one turn), the socket itself while it is anonymous, the handshakes (one
owner, whose turns go round the credentials they present: a burst of one user's handshakes
waits behind itself, not in front of everyone's, and made-up credentials by the thousand
still take one turn a round from the others), and one shared owner for work that runs for
no socket (the re-check, bus listeners). So a call
waits for at most one call of each other owner with work waiting, never for another
owner's backlog.

* :func:`database_sync_to_async`: channels' decorator, taking its turn. Streampod's own
  database work (handshakes, ``auth``, the re-check) uses it; so should endpoints.
* :func:`fair_database`: ``async with fair_database():`` around async-ORM work (``async
  for`` over a queryset, ``await qs.acount()``). Hold it around database work only: other
  owners wait while it is held.
* Re-entrant: gated code that calls gated code (in the same task, or in tasks it starts)
  passes straight through, so nesting cannot deadlock.
* Work that bypasses it (channels' own ``database_sync_to_async``, ``sync_to_async``)
  still runs, in asgiref's order: it is not held up, only not counted.

Per event loop: one gate for each loop that uses it (a server has one).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import weakref
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterator
from typing import Any, ParamSpec, TypeVar

from channels.db import database_sync_to_async as _channels_database_sync_to_async

__all__ = [
    "HANDSHAKES",
    "Owner",
    "database_sync_to_async",
    "fair_database",
    "owned_by",
    "set_owner",
    "waiting",
]

P = ParamSpec("P")
R = TypeVar("R")


class Owner:
    """Whose turn a task's database work takes: a socket keeps one (:func:`set_owner` puts
    it in the socket's context) and sets ``key`` to its user's while signed in; with
    ``key`` None the owner is this object itself (an anonymous socket)."""

    __slots__ = ("key",)

    def __init__(self, key: Hashable | None = None) -> None:
        self.key = key


#: The owner of the running task's database work; None: the shared owner.
_owner: contextvars.ContextVar[Owner | None] = contextvars.ContextVar(
    "streaming_db_owner", default=None
)
#: True inside a turn: gated code called from gated code passes through.
_inside: contextvars.ContextVar[bool] = contextvars.ContextVar("streaming_db_inside", default=False)

_SHARED = ("shared",)
#: The owner whose turns handshakes take, by credential (``Owner((HANDSHAKES, credential))``).
HANDSHAKES = "handshakes"


def set_owner(owner: Owner | None) -> None:
    """Make ``owner`` the owner of the database work of the current task and of the tasks
    it starts from now on."""
    _owner.set(owner)


@contextlib.contextmanager
def owned_by(owner: Owner | None) -> Iterator[None]:
    """Make ``owner`` the owner of the current task's database work for the body only."""
    token = _owner.set(owner)
    try:
        yield
    finally:
        _owner.reset(token)


class _Gate:
    """One turn at a time, handed to the owners with work waiting in round-robin order.

    A key is an owner's, or ``(HANDSHAKES, credential)``: handshakes share one owner's
    place in the round, and take its turns by credential among themselves. A burst of one
    user's handshakes then waits behind itself, and handshakes with any number of
    made-up credentials still take one turn a round, as one owner, from everyone else.
    """

    def __init__(self) -> None:
        self.busy = False
        # owner -> (sub-key -> its waiters, in arrival order): owners in the order of their
        # turns, and within an owner its sub-keys (credentials) in the order of theirs
        self._waiting: OrderedDict[Hashable, OrderedDict[Hashable, deque[asyncio.Future[None]]]]
        self._waiting = OrderedDict()

    def waiting(self) -> int:
        return sum(len(queue) for subs in self._waiting.values() for queue in subs.values())

    @staticmethod
    def _split(key: Hashable) -> tuple[Hashable, Hashable]:
        if isinstance(key, tuple) and len(key) == 2 and key[0] is HANDSHAKES:
            return HANDSHAKES, key[1]
        return key, None

    async def acquire(self, key: Hashable) -> None:
        if not self.busy and not self._waiting:
            self.busy = True
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        owner, sub = self._split(key)
        subs = self._waiting.get(owner)
        if subs is None:
            subs = self._waiting[owner] = OrderedDict()
        queue = subs.get(sub)
        if queue is None:
            queue = subs[sub] = deque()
        queue.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed the turn just as it was cancelled: pass it on
            else:
                self._forget(owner, sub, waiter)
            raise

    def release(self) -> None:
        """End the current turn: the next owner in order gets the next one."""
        while self._waiting:
            owner, subs = self._waiting.popitem(last=False)
            sub, queue = subs.popitem(last=False)
            waiter = queue.popleft()
            if queue:
                subs[sub] = queue  # back of its owner's line
            if subs:
                self._waiting[owner] = subs  # back of the line, behind the others
            if not waiter.done():
                waiter.set_result(None)  # busy stays True: the turn passes to it
                return
        self.busy = False

    def _forget(self, owner: Hashable, sub: Hashable, waiter: asyncio.Future[None]) -> None:
        subs = self._waiting.get(owner)
        queue = subs.get(sub) if subs is not None else None
        if subs is None or queue is None:
            return
        with contextlib.suppress(ValueError):
            queue.remove(waiter)
        if not queue:
            del subs[sub]
        if not subs:
            del self._waiting[owner]


_gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Gate] = weakref.WeakKeyDictionary()


def _gate() -> _Gate:
    loop = asyncio.get_running_loop()
    gate = _gates.get(loop)
    if gate is None:
        gate = _gates[loop] = _Gate()
    return gate


@contextlib.asynccontextmanager
async def fair_database() -> AsyncIterator[None]:
    """Take this owner's turn at the database for the body of the ``async with``."""
    if _inside.get():
        yield
        return
    owner = _owner.get()
    gate = _gate()
    if owner is None:
        key: Hashable = _SHARED
    else:
        key = owner.key if owner.key is not None else owner
    await gate.acquire(key)
    token = _inside.set(True)
    try:
        yield
    finally:
        _inside.reset(token)
        gate.release()


def database_sync_to_async(func: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """channels' ``database_sync_to_async`` (the ORM in asgiref's thread, stale
    connections closed around it), each call taking its owner's turn."""
    call: Any = _channels_database_sync_to_async(func)

    @functools.wraps(func)
    async def in_turn(*args: P.args, **kwargs: P.kwargs) -> R:
        async with fair_database():
            result: R = await call(*args, **kwargs)
            return result

    return in_turn


def waiting() -> int:
    """Database calls of this event loop waiting for their turn (tests, diagnostics)."""
    gate = _gates.get(asyncio.get_running_loop())
    return gate.waiting() if gate is not None else 0
