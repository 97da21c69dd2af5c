"""Process tuning for a streaming server: call :func:`tune_gc` from ``asgi.py``.

CPython's cyclic garbage collector stops the whole process while it runs. A
streaming server holds many long-lived objects (every connection's protocol,
consumer, scope, tasks), so a full collection scans all of them: on 2,000 sockets
that was a 150-350 ms pause, which every message in flight waited for (the relay
benchmark's p99 was a GC pause). Most garbage a message path makes is freed by
reference counting at once; only cycles need the collector.

:func:`tune_gc` moves everything alive at start-up (Django, the app registry,
modules) out of the collector's sight with :func:`gc.freeze`, and makes
collections rarer, so that young collections scan a few milliseconds' worth of
objects and full ones come seldom. It changes the whole process: call it once,
from the ASGI module, after ``get_asgi_application()``.

It also installs a :class:`SocketFreezer`: the objects of open sockets (about 60 a
socket under uvicorn) are frozen in batches as sockets open, so that no collection
scans them again while they live. CPython runs a full collection whenever what
survived the last one has grown by a quarter, which a process gaining thousands of
sockets does again and again, each one scanning every socket's objects (in the
reconnect herd at 8,000 sockets, 3 s of the first 10 were collections, the longest
about 1 s, and they freed nothing). Frozen objects are still freed by reference
counting when their socket closes; only a reference cycle among them would wait, and
the freezer bounds that (see the class).
"""

from __future__ import annotations

import gc

#: Allocations (net of frees) between young collections; CPython's default is 700.
GEN0_THRESHOLD = 10_000
#: Young collections per middle one, middle ones per full one (CPython: 10 and 10).
#:
#: Every closed socket leaves reference cycles (under daphne, daphne's, Twisted's and
#: autobahn's per-connection objects; whatever an endpoint's hooks tie together) and a
#: young collection moves what is alive at that instant, the sockets open then, to the
#: middle generation, where their garbage waits for the next middle collection. At
#: (50,000, 20, 20) that was about 9,000 short-lived sockets later: RSS grew 5 MB per
#: 1,000 authenticated sockets and did not level off (issue 10). Here garbage waits for
#: at most two young collections. Full collections stay rare: CPython runs one only
#: once what was promoted since the last one exceeds a quarter of what survived it.
OLDER_THRESHOLDS = (1, 1)


#: Sockets opened between two freezes of the young objects.
FREEZE_BATCH = 500
#: Bounds of :attr:`SocketFreezer.turnover`: full collections come once this many times
#: the open sockets have closed since the last one.
MIN_TURNOVER = 0.25
MAX_TURNOVER = 4.0


class SocketFreezer:
    """Keeps the objects of open sockets out of the collector's scans.

    :func:`tune_gc` installs one for the process; :class:`~streaming.connections.Connections`
    tells it of every socket that opens (:meth:`opened`) and closes (:meth:`closed`).
    Both run on the event loop and cost an addition, except:

    * Every ``batch`` sockets opened, while at least ``batch`` are open, a collection of
      what is not frozen (about ``batch`` sockets' worth of objects: a few milliseconds)
      frees the young cycles, and :func:`gc.freeze` then moves the survivors, the new
      sockets among them, out of every later collection's sight. Below ``batch`` open
      sockets a full collection is cheap (a few tens of milliseconds) and nothing is
      frozen: garbage that a frozen socket leaves waits longer than the collector's, so
      a process of few sockets is left to the collector alone.
    * A frozen object is still freed by reference counting; a frozen *cycle* (an
      endpoint that ties its objects in a loop, daphne's and Twisted's per-connection
      objects) stays until the next full collection, which unfreezes everything and
      collects. It does not freeze again: what it left (a socket just closed whose
      objects daphne lets go of within a second) is collected, then frozen, by the
      next batch freeze. It comes once the sockets closed since a batch was frozen
      reach ``turnover`` times the most sockets open at once since the last one (at
      least ``batch``): after a reconnect herd, once the old sockets are gone. With no
      batch frozen since, none comes (the frozen set is start-up's, as ``tune_gc``
      left it). When that
      collection freed less than one object per socket closed, the sockets leave no
      cycles and ``turnover`` doubles, up to :data:`MAX_TURNOVER`; when it freed more,
      it drops to :data:`MIN_TURNOVER`, where garbage waits no longer than under
      CPython's own rule (a full collection per quarter of growth).

    So memory stays bounded by the open sockets (frozen garbage is at most a few
    populations' worth of a socket's cycles, and a quarter of one once cycles are
    seen), and a process whose sockets leave no cycles pays a full collection only
    after its sockets have turned over several times.
    """

    def __init__(self, batch: int = FREEZE_BATCH) -> None:
        if batch < 1:
            raise ValueError("batch must be positive")
        self.batch = batch
        self.open = 0  # sockets open now (as far as this freezer was told)
        self.turnover = 1.0
        self.freezes = 0  # batch freezes done
        self.full_collections = 0  # unfreeze, collect, freeze: done
        self.last_found = 0  # unreachable objects the last full collection found
        self._opened = 0  # since the last freeze
        self._closed = 0  # since the last full collection, while something is frozen
        self._holding = False  # whether a batch was frozen since the last full collection
        self._peak = 0  # most sockets open at once since the last full collection

    def opened(self) -> None:
        """A socket opened."""
        self.open += 1
        self._peak = max(self._peak, self.open)
        self._opened += 1
        if self._opened >= self.batch and self.open >= self.batch:
            self.freeze()

    def closed(self) -> None:
        """A socket closed."""
        if self.open > 0:
            self.open -= 1
        if not self._holding:
            return  # nothing of a socket is frozen: the collector sees all it leaves
        self._closed += 1
        if self._closed >= self.turnover * max(self._peak, self.batch):
            self.collect()

    def freeze(self) -> None:
        """Collect what is not frozen, then freeze the survivors."""
        self._opened = 0
        gc.collect()
        gc.freeze()
        self._holding = True
        self.freezes += 1

    def collect(self) -> int:
        """The full collection: unfreeze and collect everything; returns the unreachable
        objects found. The next batch freeze freezes the survivors."""
        closed, self._closed = self._closed, 0
        self._holding = False
        gc.unfreeze()
        found = gc.collect()
        self._peak = self.open
        self.full_collections += 1
        self.last_found = found
        if found < closed:
            self.turnover = min(self.turnover * 2, MAX_TURNOVER)
        else:
            self.turnover = MIN_TURNOVER
        return found


_freezer: SocketFreezer | None = None


def socket_freezer() -> SocketFreezer | None:
    """The process's freezer, once :func:`tune_gc` installed one."""
    return _freezer


def socket_opened() -> None:
    if _freezer is not None:
        _freezer.opened()


def socket_closed() -> None:
    if _freezer is not None:
        _freezer.closed()


def tune_gc(
    gen0: int = GEN0_THRESHOLD,
    older: tuple[int, int] = OLDER_THRESHOLDS,
    *,
    freeze: bool = True,
    freeze_sockets: bool = True,
) -> tuple[int, int, int]:
    """Set the collector's thresholds (and freeze start-up objects); returns the old ones.

    ``freeze_sockets`` installs the process's :class:`SocketFreezer` (once; a later
    call with ``False`` removes it and unfreezes nothing it froze). Idempotent.
    ``gen0=0`` would disable collection: refused, since a server that never collects
    cycles grows without bound.
    """
    global _freezer
    if gen0 < 1 or min(older) < 1:
        raise ValueError("GC thresholds must be positive; disabling the collector leaks cycles.")
    if not freeze_sockets:
        _freezer = None
    elif _freezer is None:
        _freezer = SocketFreezer()
    previous = gc.get_threshold()
    if freeze:
        gc.collect()  # what start-up left as garbage goes now, not into the frozen set
        gc.freeze()
        # CPython runs a full collection only once the objects promoted since the last
        # one exceed a quarter of what that one left. The collection above counted every
        # start-up object; the frozen ones are out of sight now, and this (cheap: nothing
        # else is left to scan) one counts what remains. Without it the first full
        # collection waited for a quarter of start-up's objects to pile up as garbage.
        gc.collect()
    gc.set_threshold(gen0, *older)
    return previous
