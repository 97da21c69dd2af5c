"""This process's live sockets: all of them, and the authenticated ones by user.

One :class:`Connections` per event loop (:func:`get_connections`), like the bus.

* Every socket is :meth:`~Connections.track`-ed from its connect until its teardown has
  finished (its ``stream_closed`` hooks have returned or were cancelled), so a graceful
  shutdown (``streaming.shutdown``) can close them all and wait for their hooks. While the
  process drains (:meth:`~Connections.start_draining`), ``track`` refuses new sockets.

* ``MAX_SOCKETS_PER_USER``: a user may hold at most that many sockets on one server
  process; the consumer closes the next with 4029. The limit is per process on
  purpose: what it protects is the process's memory and file descriptors, and it
  needs no shared state that a crashed server could leave behind.
* ``USER_RECHECK_INTERVAL``: while authenticated sockets are open, a few queries per
  interval re-read whether their credentials still hold (:mod:`streaming.credentials`:
  the user active, the session alive and unchanged, the token there). What the bus could
  not carry (the revoking process could not reach Redis, or had no bus) and what sends
  no signal (``QuerySet.update``, raw SQL, an expired session) closes the socket (4401)
  within the interval. Signals still act at once (``streaming.signals``); this is the
  backstop.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import TYPE_CHECKING, Any

from . import credentials, sparse, tuning
from .conf import streaming_settings
from .db import database_sync_to_async, set_owner

if TYPE_CHECKING:
    from .consumer import StreamingConsumer

logger = logging.getLogger("streaming.connections")


@database_sync_to_async
def _standing(
    user_ids: list[Any], sessions: dict[str, Any], token_users: list[Any]
) -> credentials.Standing:
    return credentials.standing(user_ids, sessions, token_users)


def _credential(consumer: StreamingConsumer) -> tuple[str | None, str | None]:
    """How ``consumer`` was authenticated (``"session"``, ``"token"`` or None) and with
    what: its session key, or its token's digest."""
    from .auth import AUTH_VIA_KEY, CREDENTIAL_KEY

    via = consumer.scope.get(AUTH_VIA_KEY)
    if via == "session":
        return via, getattr(consumer.scope.get("session"), "session_key", None)
    if via == "token":
        return via, consumer.scope.get(CREDENTIAL_KEY)
    return None, None


class Connections:
    """Live sockets of one event loop: all of them, and the authenticated ones by user id."""

    def __init__(self) -> None:
        self._all: set[StreamingConsumer] = set()
        self._emptied: asyncio.Event | None = None  # set when the last tracked socket goes
        self.draining = False
        # user id -> its socket, or a set of its sockets once it has several (most users
        # hold one: a set per user would cost ~200 bytes a socket)
        self._by_user: dict[Any, StreamingConsumer | set[StreamingConsumer]] = {}
        self._checker: asyncio.Task[None] | None = None
        self.checks = 0  # re-checks run (tests, metrics)
        self.rounds = 0  # rounds of the re-check loop, failed ones included (tests)
        self._round_done: asyncio.Event | None = None  # set at the end of each round

    # -- every socket -------------------------------------------------------------------

    def track(self, consumer: StreamingConsumer) -> bool:
        """Register a socket that is connecting; False while the process drains."""
        if self.draining:
            return False
        self._all.add(consumer)
        tuning.socket_opened()
        return True

    def untrack(self, consumer: StreamingConsumer) -> None:
        """The socket's teardown is over (idempotent)."""
        if consumer not in self._all:
            return
        self._all.remove(consumer)
        tuning.socket_closed()
        if not self._all and self._emptied is not None:
            self._emptied.set()

    def live(self) -> list[StreamingConsumer]:
        """Every tracked socket (a copy)."""
        return list(self._all)

    def start_draining(self) -> None:
        """Refuse new sockets from now on (``track`` returns False). One-way."""
        self.draining = True

    async def wait_empty(self, timeout: float) -> bool:
        """Wait until no socket is tracked; False if some still are after ``timeout`` s."""
        if not self._all:
            return True
        if self._emptied is None or self._emptied.is_set():
            self._emptied = asyncio.Event()
        try:
            async with asyncio.timeout(timeout):
                await self._emptied.wait()
        except TimeoutError:
            return not self._all
        return True

    # -- authenticated sockets, by user -------------------------------------------------

    def add(self, user_id: Any, consumer: StreamingConsumer) -> bool:
        """Register ``consumer`` as a socket of ``user_id``; False past the limit."""
        sockets = sparse.values(self._by_user.get(user_id))
        limit = streaming_settings.MAX_SOCKETS_PER_USER
        if limit is not None and len(sockets) >= limit and consumer not in sockets:
            return False
        sparse.add(self._by_user, user_id, consumer)
        if self._checker is None and streaming_settings.USER_RECHECK_INTERVAL:
            self._checker = asyncio.get_running_loop().create_task(self._check_loop())
        return True

    def discard(self, user_id: Any, consumer: StreamingConsumer) -> None:
        sparse.discard(self._by_user, user_id, consumer)

    def of_user(self, user_id: Any) -> list[StreamingConsumer]:
        return list(sparse.values(self._by_user.get(user_id)))

    def count(self, user_id: Any = None) -> int:
        """Sockets of ``user_id``, or of every authenticated user."""
        if user_id is not None:
            return len(sparse.values(self._by_user.get(user_id)))
        return sum(len(sparse.values(held)) for held in self._by_user.values())

    async def check_now(self) -> None:
        """Close (4401) the sockets whose credentials no longer hold: their user is gone or
        inactive, their session ended (logged out, expired, deleted, or invalidated by a
        password change), their token was deleted (:mod:`streaming.credentials`).

        ``credentials.CHUNK`` sockets per database call: the calls share one thread with
        every handshake's and hook's database work, which thus waits for one chunk at
        most (about 40 ms), not for the whole check (seconds at 20,000 sockets)."""
        held = [(uid, c, _credential(c)) for uid in self._by_user for c in self.of_user(uid)]
        for start in range(0, len(held), credentials.CHUNK):
            part = held[start : start + credentials.CHUNK]
            sessions = {key: uid for uid, _, (via, key) in part if via == "session" and key}
            token_users = list({uid for uid, _, (via, _key) in part if via == "token"})
            found = await _standing(list({uid for uid, _, _ in part}), sessions, token_users)
            for user_id, consumer, (via, credential) in part:
                if _credential(consumer) != (via, credential):
                    continue  # re-authenticated meanwhile: checked next time
                if via == "session" and credential in found.sessions:
                    continue  # its session signs its user in (inactive ones, by some backends)
                if user_id not in found.active:
                    consumer.revoked(f"user {user_id} is no longer active")
                elif via == "session" and credential not in found.sessions:
                    consumer.revoked(f"the session of user {user_id} no longer holds")
                elif via == "token" and credential not in found.tokens.get(user_id, ()):
                    consumer.revoked(f"the token of user {user_id} no longer exists")
        if held:
            self.checks += 1

    async def wait_rounds(self, count: int) -> None:
        """Return once the re-check loop has made ``count`` rounds in all (:attr:`rounds`:
        checks done, and checks that failed, such as on a database that is down)."""
        while self.rounds < count:
            if self._round_done is None:
                self._round_done = asyncio.Event()
            await self._round_done.wait()

    async def _check_loop(self) -> None:
        # Started from whichever socket came first, whose context names its user as the
        # owner of its database work: the re-check takes the shared turn instead, so that
        # no user's backlog of queries holds up the revocations (streaming.db).
        set_owner(None)
        try:
            while self._by_user:
                await asyncio.sleep(streaming_settings.USER_RECHECK_INTERVAL)
                try:
                    await self.check_now()
                except Exception:
                    # A store that cannot be read (the database, the session cache) closes
                    # nothing: a failed read is not a revoked credential.
                    logger.exception("re-checking the users of open sockets failed")
                self.rounds += 1
                if self._round_done is not None:
                    self._round_done.set()
                    self._round_done = None
        finally:
            if self._checker is asyncio.current_task():
                self._checker = None


_registries: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Connections] = (
    weakref.WeakKeyDictionary()
)


# The last loop asked for (a weak reference) and its registry: a server has one loop,
# and a WeakKeyDictionary lookup makes a weak reference per call (several per connect).
_last: tuple[weakref.ref[asyncio.AbstractEventLoop], Connections] | None = None


def get_connections() -> Connections:
    """The running event loop's registry, created on first use."""
    global _last
    loop = asyncio.get_running_loop()
    last = _last
    if last is not None and last[0]() is loop:
        return last[1]
    registry = _registries.get(loop)
    if registry is None:
        registry = _registries[loop] = Connections()
    _last = (weakref.ref(loop), registry)
    return registry
