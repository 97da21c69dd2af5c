"""Prometheus metrics of one server process, defined here and nowhere else.

The framework records through the functions below; ``GET /metrics``
(:mod:`streaming.health`) exposes them in Prometheus' text format from
``prometheus_client``'s default registry (with the process and GC collectors it
ships, and any metric the project registers itself). docs/deployment.md ("Health
checks and metrics") lists each metric's name, type, labels and meaning.

Contracts:

* Cheap on the frame path: each call is one dict lookup of the count bound to that
  endpoint (or code), cached, and one addition to a plain number; no lock, no dict
  built per frame (under 0.1 us a call here, where a ``prometheus_client`` label
  child's ``inc`` takes a lock and costs about 0.4 us). A ``prometheus_client``
  collector reads the numbers when ``/metrics`` is scraped. They are changed only on
  the event loop.
* ``STREAMING["METRICS"] = False`` turns recording off: the functions bind a count
  nobody reads, sockets are not tracked, and ``/metrics`` answers 404. The setting is
  read lazily; ``override_settings`` resets what was bound.
* Label values are bounded: endpoints are registered names (a frame for an unknown
  endpoint is not counted here, it is an ``unknown_endpoint`` error), error codes are
  the protocol's, and close codes outside the WebSocket range 1000-1015 and
  Streampod's own codes count as ``other``.
* Per process: under several worker processes (``uvicorn --workers N``, several
  servers) each process exposes its own figures; Prometheus sums them, or the admin's
  live page (:mod:`streaming.ops`) does.
"""

from __future__ import annotations

import gc
import os
import sys
from bisect import bisect_left
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from django.core.signals import setting_changed
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import REGISTRY, Collector

from . import tuning
from .conf import streaming_settings
from .protocol import CloseCode

if TYPE_CHECKING:
    from collections.abc import Callable

    from .consumer import StreamingConsumer

__all__ = [
    "PUBLISH_BUCKETS",
    "bus_delivered",
    "bus_post",
    "bus_publish_batch",
    "bus_publish_failed",
    "bus_published",
    "bus_received",
    "enabled",
    "error_sent",
    "frame_received",
    "frame_sent",
    "snapshot",
    "socket_close",
    "socket_closed",
    "socket_opened",
]

#: Upper bounds (seconds) of ``streampod_bus_publish_seconds``' buckets.
PUBLISH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

#: Close codes counted under their own label value; others count as "other".
_KNOWN_CLOSE_CODES = frozenset(range(1000, 1016)) | frozenset(int(c) for c in CloseCode)


class _Count:
    """One counter (or one label value's): a plain number, changed on the event loop.

    ``prometheus_client``'s own ``Counter.inc`` takes a lock per call (about 0.4 us
    here); these are read by the collector below at scrape time instead.
    """

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0


class _Histogram:
    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(PUBLISH_BUCKETS) + 1)  # the last one: above every bound
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        self.counts[bisect_left(PUBLISH_BUCKETS, amount)] += 1
        self.sum += amount


# What is recorded, read by _Collector. Label values map to their counts.
_received: dict[str, _Count] = {}
_sent: dict[str, _Count] = {}
_errors: dict[str, _Count] = {}
_closes: dict[str, _Count] = {}
_posts = _Count()
_deliveries = _Count()
_bus_received = _Count()
_publish_failures = _Count()
_publish_batches = _Count()
_bus_gaps = _Count()
_bus_stalls = _Count()
_bus_lags = _Count()
_publish_seconds = _Histogram()

# The counts each label value (or close code) is bound to: the ones above, or _IDLE
# while metrics are off. Cleared when STREAMING changes.
_bound_received: dict[str, _Count] = {}
_bound_sent: dict[str, _Count] = {}
_bound_errors: dict[str, _Count] = {}
_bound_closes: dict[int, _Count] = {}
_BOUND: tuple[dict[Any, _Count], ...] = (_bound_received, _bound_sent, _bound_errors, _bound_closes)
_IDLE = _Count()  # counts nobody reads (metrics off)
_state: list[bool] = []  # [enabled], read once


def enabled() -> bool:
    """``STREAMING["METRICS"]``, read once (again after ``override_settings``)."""
    if not _state:
        _state.append(bool(streaming_settings.METRICS))
    return _state[0]


def _bind(bound: dict[Any, _Count], key: Any, counts: dict[str, _Count], label: str) -> _Count:
    count = counts.setdefault(label, _Count()) if enabled() else _IDLE
    bound[key] = count
    return count


def frame_received(endpoint: str) -> None:
    """A data frame for registered ``endpoint`` was queued for its hook."""
    count = _bound_received.get(endpoint) or _bind(_bound_received, endpoint, _received, endpoint)
    count.value += 1


def frame_sent(endpoint: str) -> None:
    """``endpoint`` queued a data frame for its client."""
    count = _bound_sent.get(endpoint) or _bind(_bound_sent, endpoint, _sent, endpoint)
    count.value += 1


def error_sent(code: str) -> None:
    """An ``error`` frame with ``code`` was queued for a client."""
    count = _bound_errors.get(code) or _bind(_bound_errors, code, _errors, str(code))
    count.value += 1


def socket_close(code: int) -> None:
    """A socket closed with ``code`` (counted once per socket)."""
    count = _bound_closes.get(code)
    if count is None:
        label = str(code) if code in _KNOWN_CLOSE_CODES else "other"
        count = _bind(_bound_closes, code, _closes, label)
    count.value += 1


def bus_post() -> None:
    if enabled():
        _posts.value += 1


def bus_delivered(listeners: int) -> None:
    if enabled():
        _deliveries.value += listeners


def bus_received() -> None:
    if enabled():
        _bus_received.value += 1


def bus_published(seconds: float) -> None:
    """A cluster publish was written to the broker ``seconds`` after its post."""
    if enabled():
        _publish_seconds.observe(seconds)


def bus_publish_failed() -> None:
    if enabled():
        _publish_failures.value += 1


def bus_gap() -> None:
    if enabled():
        _bus_gaps.value += 1


def bus_stall() -> None:
    if enabled():
        _bus_stalls.value += 1


def bus_lag() -> None:
    if enabled():
        _bus_lags.value += 1


def bus_publish_batch() -> None:
    if enabled():
        _publish_batches.value += 1


# -- open sockets and their send queues, read when scraped ---------------------------------

_sockets: set[StreamingConsumer] = set()

#: Called with ``(consumer, opened)`` as sockets open and close while metrics are on
#: (:mod:`streaming.ops` answers the cluster's metrics requests while sockets are open).
socket_watchers: list[Callable[[StreamingConsumer, bool], None]] = []


def socket_opened(consumer: StreamingConsumer) -> None:
    """Track ``consumer`` as an open socket of this process (until :func:`socket_closed`)."""
    if enabled():
        _sockets.add(consumer)
        for watcher in socket_watchers:
            watcher(consumer, True)


def socket_closed(consumer: StreamingConsumer) -> None:
    if consumer in _sockets:
        _sockets.discard(consumer)
        for watcher in socket_watchers:
            watcher(consumer, False)


def _copy(items: Any) -> list[Any]:
    # Another event loop's thread (tests) may change them meanwhile: retry.
    while True:
        try:
            return list(items)
        except RuntimeError:
            continue


def _queues() -> tuple[int, int, int]:
    """(open sockets, frames queued, bytes queued) over this process's sockets."""
    sockets = _copy(_sockets)
    frames = queued = 0
    for consumer in sockets:
        outbox = consumer.outbox
        if outbox is not None:
            frames += len(outbox)
            queued += outbox.queued_bytes
    return len(sockets), frames, queued


def _by_label(counts: dict[str, _Count]) -> dict[str, float]:
    return {label: count.value for label, count in _copy(counts.items())}


def _labelled(name: str, doc: str, label: str, counts: dict[str, _Count]) -> Metric:
    family = CounterMetricFamily(name, doc, labels=[label])
    for value, total in _by_label(counts).items():
        family.add_metric([value], total)
    return family


class _Collector(Collector):
    """Every Streampod metric, read when scraped."""

    def describe(self) -> list[Metric]:
        # Registering calls this at import; without it the registry would collect, and
        # so read STREAMING while django.setup() runs: a bad setting would stop it with
        # a traceback before the system check could report it (E001/E002).
        return []

    def collect(self) -> Iterator[Metric]:
        if not enabled():
            return
        sockets, frames, queued = _queues()
        yield GaugeMetricFamily(
            "streampod_connections", "Open WebSocket connections on this process.", sockets
        )
        yield GaugeMetricFamily(
            "streampod_send_queue_frames",
            "Frames waiting in the send queues of this process's sockets (all sockets).",
            frames,
        )
        yield GaugeMetricFamily(
            "streampod_send_queue_bytes",
            "Memory of the frames waiting in those send queues (sys.getsizeof), bytes.",
            queued,
        )
        yield _labelled(
            "streampod_frames_received",
            "Data frames received for a registered endpoint (handed to its hook's lane).",
            "endpoint",
            _received,
        )
        yield _labelled(
            "streampod_frames_sent",
            "Data frames an endpoint queued for its client (send_stream_message).",
            "endpoint",
            _sent,
        )
        yield _labelled(
            "streampod_errors", "Error frames sent to clients, by protocol error code.", "code",
            _errors,
        )  # fmt: skip
        yield _labelled(
            "streampod_closes",
            "Sockets closed, by close code (the server's, or the client's when it closed "
            "first; 'other' for codes outside 1000-1015 and Streampod's own).",
            "code",
            _closes,
        )
        for name, doc, count in (
            ("streampod_bus_posts", "Messages posted to the message bus by this process.",
             _posts),
            ("streampod_bus_deliveries",
             "Listener calls: bus messages delivered to this process's listeners.", _deliveries),
            ("streampod_bus_received",
             "Bus messages received from other processes through the broker.", _bus_received),
            ("streampod_bus_publish_failures",
             "Cluster publishes that failed or timed out (MessagingUnavailable).",
             _publish_failures),
            ("streampod_bus_publish_batches",
             "Round trips of the batched publisher (one pipeline each).", _publish_batches),
            ("streampod_bus_gaps",
             "Times this process's bus subscription was lost (Redis restarted, the "
             "connection was cut): its sockets that listen were closed with 1012.", _bus_gaps),
            ("streampod_bus_stalls",
             "Times no heartbeat of this process's bus came back for BUS_STALL_TIMEOUT (a "
             "path to Redis that acknowledges and never answers); each is also a gap.",
             _bus_stalls),
            ("streampod_bus_lags",
             "Times no heartbeat of this process's bus came back for BUS_STALL_TIMEOUT while "
             "its subscription delivered (posts come in faster than its listeners take "
             "them); each is also a gap.", _bus_lags),
        ):  # fmt: skip
            yield CounterMetricFamily(name, doc, value=count.value)
        yield GaugeMetricFamily(
            "streampod_gc_frozen_objects",
            "Objects gc.freeze() keeps out of the garbage collector's scans: start-up's, "
            "and the open sockets' once tune_gc()'s socket freezer froze them.",
            gc.get_freeze_count(),
        )
        freezer = tuning.socket_freezer()
        if freezer is not None:
            yield CounterMetricFamily(
                "streampod_gc_socket_freezes",
                "Batch freezes of tune_gc()'s socket freezer (a collection of the objects "
                "not frozen, then gc.freeze()).",
                value=freezer.freezes,
            )
            yield CounterMetricFamily(
                "streampod_gc_full_collections",
                "Full collections of the socket freezer (unfreeze, collect, freeze), "
                "which free the cycles of closed sockets that were frozen.",
                value=freezer.full_collections,
            )
        cumulative, buckets = 0, []
        bounds = (*PUBLISH_BUCKETS, float("inf"))
        for bound, in_bucket in zip(bounds, list(_publish_seconds.counts), strict=True):
            cumulative += in_bucket
            buckets.append((_bound_label(bound), cumulative))
        yield HistogramMetricFamily(
            "streampod_bus_publish_seconds",
            "Seconds from a cluster post to its publish being written to the broker.",
            buckets=buckets,
            sum_value=_publish_seconds.sum,
        )


def _bound_label(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


REGISTRY.register(_Collector())


def snapshot() -> dict[str, Any]:
    """This process's figures as plain values (for the admin's live page)."""
    sockets, frames, queued = _queues()
    return {
        "pid": os.getpid(),
        "python": sys.version.split()[0],
        "connections": sockets,
        "send_queue_frames": frames,
        "send_queue_bytes": queued,
        "frames_received": _by_label(_received),
        "frames_sent": _by_label(_sent),
        "errors": _by_label(_errors),
        "closes": _by_label(_closes),
        "bus_posts": _posts.value,
        "bus_deliveries": _deliveries.value,
        "bus_received": _bus_received.value,
        "bus_publish_failures": _publish_failures.value,
        "bus_publishes": sum(_publish_seconds.counts),
        "bus_publish_seconds_sum": _publish_seconds.sum,
    }


def _reset(*, setting: str, **kwargs: Any) -> None:
    if setting == "STREAMING":
        for bound in _BOUND:
            bound.clear()
        _state.clear()


setting_changed.connect(_reset)
