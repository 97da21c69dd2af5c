"""The bench's Streampod message classes (import no Django, like every protocol module).

Every contender carries the same fields; only each framework's envelope differs:

* ``BenchRelay``: relayed to the listeners of ``user_<to>``; ``src``/``seq`` identify
  it (losses and duplicates), ``t`` is the sender's ``perf_counter()`` (latency: the
  load client sends and receives in one process).
* ``BenchEcho``: sent straight back to its sender.
* ``BenchReady``: the server's word that the connection listens on ``user_<uid>``.
"""

from __future__ import annotations

from streaming.serialization import SerializableEntity

__all__ = ["PAD", "BenchEcho", "BenchReady", "BenchRelay"]

#: Filler that brings a message to ~100 bytes of JSON, as in the perf anchors.
PAD = "x" * 32


class BenchRelay(SerializableEntity):
    to: int
    src: int
    seq: int
    t: float
    pad: str = ""


class BenchEcho(SerializableEntity):
    src: int
    seq: int
    t: float
    pad: str = ""


class BenchReady(SerializableEntity):
    uid: int
