"""Prometheus metrics of one server process, defined here and nowhere else.

The framework records through the functions below; ``GET /metrics``
(:mod:`streaming.health`) exposes them in Prometheus' text format from
``prometheus_client``'s default registry (with the process and GC collectors it
ships, and any metric the project registers itself). docs/deployment.md ("Health
checks and metrics") lists each metric's name, type, labels and meaning.

Contracts:

* Cheap on the frame path: each call is one dict lookup of a label child bound once
  per endpoint (or code) and cached, then ``prometheus_client``'s own increment. No
  dict is built per frame and nothing else locks.
* ``STREAMING["METRICS"] = False`` turns recording off: the functions bind a no-op
  instead of a child, sockets are not tracked, and ``/metrics`` answers 404. The
  setting is read lazily; ``override_settings`` resets the bound children.
* Label values are bounded: endpoints are registered names (a frame for an unknown
  endpoint is not counted here, it is an ``unknown_endpoint`` error), error codes are
  the protocol's, and close codes outside the WebSocket range 1000-1015 and
  Streampod's own codes count as ``other``.
* Per process: under several worker processes (``uvicorn --workers N``, several
  servers) each process exposes its own figures; Prometheus sums them, or the admin's
  live page (:mod:`streaming.ops`) does.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from django.core.signals import setting_changed
from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

from .conf import streaming_settings
from .protocol import CloseCode

if TYPE_CHECKING:
    from .consumer import StreamingConsumer

__all__ = [
    "FRAMES_RECEIVED",
    "FRAMES_SENT",
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
    "socket_closed",
    "socket_opened",
]

FRAMES_RECEIVED = Counter(
    "streampod_frames_received",
    "Data frames received for a registered endpoint (handed to its hook's lane).",
    ["endpoint"],
)
FRAMES_SENT = Counter(
    "streampod_frames_sent",
    "Data frames an endpoint queued for its client (send_stream_message).",
    ["endpoint"],
)
ERRORS = Counter(
    "streampod_errors", "Error frames sent to clients, by protocol error code.", ["code"]
)
CLOSES = Counter(
    "streampod_closes",
    "Sockets closed, by close code (the server's, or the client's when it closed first).",
    ["code"],
)
BUS_POSTS = Counter("streampod_bus_posts", "Messages posted to the message bus by this process.")
BUS_DELIVERIES = Counter(
    "streampod_bus_deliveries",
    "Listener calls: bus messages delivered to this process's listeners.",
)
BUS_RECEIVED = Counter(
    "streampod_bus_received", "Bus messages received from other processes through the broker."
)
BUS_PUBLISH_FAILURES = Counter(
    "streampod_bus_publish_failures",
    "Cluster publishes that failed or timed out (MessagingUnavailable).",
)
BUS_PUBLISH_BATCHES = Counter(
    "streampod_bus_publish_batches", "Round trips of the batched publisher (one pipeline each)."
)
BUS_PUBLISH_SECONDS = Histogram(
    "streampod_bus_publish_seconds",
    "Seconds from a cluster post to its publish being written to the broker.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)

#: Close codes counted under their own label value; others count as "other".
_KNOWN_CLOSE_CODES = frozenset(range(1000, 1016)) | frozenset(int(c) for c in CloseCode)


class _Noop:
    """What a recording function binds while metrics are off."""

    __slots__ = ()

    def inc(self, amount: float = 1) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass


_NOOP = _Noop()

# Bound label children (or _NOOP), by label value; cleared when STREAMING changes.
_received: dict[str, Any] = {}
_sent: dict[str, Any] = {}
_errors: dict[str, Any] = {}
_closes: dict[int, Any] = {}
_plain: dict[str, Any] = {}
_CACHES: tuple[dict[Any, Any], ...] = (_received, _sent, _errors, _closes, _plain)
_state: list[bool] = []  # [enabled], read once


def enabled() -> bool:
    """``STREAMING["METRICS"]``, read once (again after ``override_settings``)."""
    if not _state:
        _state.append(bool(streaming_settings.METRICS))
    return _state[0]


def _bind(cache: dict[Any, Any], key: Any, make: Callable[[], Any]) -> Any:
    child = make() if enabled() else _NOOP
    cache[key] = child
    return child


def frame_received(endpoint: str) -> None:
    """A data frame for registered ``endpoint`` was queued for its hook."""
    child = _received.get(endpoint)
    if child is None:
        child = _bind(_received, endpoint, lambda: FRAMES_RECEIVED.labels(endpoint))
    child.inc()


def frame_sent(endpoint: str) -> None:
    """``endpoint`` queued a data frame for its client."""
    child = _sent.get(endpoint)
    if child is None:
        child = _bind(_sent, endpoint, lambda: FRAMES_SENT.labels(endpoint))
    child.inc()


def error_sent(code: str) -> None:
    """An ``error`` frame with ``code`` was queued for a client."""
    child = _errors.get(code)
    if child is None:
        child = _bind(_errors, code, lambda: ERRORS.labels(str(code)))
    child.inc()


def socket_close(code: int) -> None:
    """A socket closed with ``code`` (counted once per socket)."""
    child = _closes.get(code)
    if child is None:
        label = str(code) if code in _KNOWN_CLOSE_CODES else "other"
        child = _bind(_closes, code, lambda: CLOSES.labels(label))
    child.inc()


def _plain_metric(name: str, metric: Any) -> Any:
    child = _plain.get(name)
    if child is None:
        child = _bind(_plain, name, lambda: metric)
    return child


def bus_post() -> None:
    _plain_metric("posts", BUS_POSTS).inc()


def bus_delivered(listeners: int) -> None:
    if listeners:
        _plain_metric("deliveries", BUS_DELIVERIES).inc(listeners)


def bus_received() -> None:
    _plain_metric("received", BUS_RECEIVED).inc()


def bus_published(seconds: float) -> None:
    """A cluster publish was written to the broker ``seconds`` after its post."""
    _plain_metric("publish_seconds", BUS_PUBLISH_SECONDS).observe(seconds)


def bus_publish_failed() -> None:
    _plain_metric("publish_failures", BUS_PUBLISH_FAILURES).inc()


def bus_publish_batch() -> None:
    _plain_metric("publish_batches", BUS_PUBLISH_BATCHES).inc()


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


def _open_sockets() -> list[StreamingConsumer]:
    # Sockets of another event loop (a thread) may come and go meanwhile: retry.
    while True:
        try:
            return list(_sockets)
        except RuntimeError:
            continue


def _queues() -> tuple[int, int, int]:
    """(open sockets, frames queued, bytes queued) over this process's sockets."""
    sockets = _open_sockets()
    frames = queued = 0
    for consumer in sockets:
        outbox = consumer.outbox
        if outbox is not None:
            frames += len(outbox)
            queued += outbox.queued_bytes
    return len(sockets), frames, queued


class _SocketCollector(Collector):
    """The gauges read at scrape time: open sockets and their send queues."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
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


REGISTRY.register(_SocketCollector())


def _total(metric: Any) -> float:
    return sum(
        sample.value
        for family in metric.collect()
        for sample in family.samples
        if sample.name.endswith("_total") or sample.name.endswith("_count")
    )


def _by_label(metric: Any, label: str) -> dict[str, float]:
    return {
        sample.labels[label]: sample.value
        for family in metric.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    }


def snapshot() -> dict[str, Any]:
    """This process's figures as plain values (for the admin's live page)."""
    sockets, frames, queued = _queues()
    publish_sum = sum(
        sample.value
        for family in BUS_PUBLISH_SECONDS.collect()
        for sample in family.samples
        if sample.name.endswith("_sum")
    )
    return {
        "pid": os.getpid(),
        "python": sys.version.split()[0],
        "connections": sockets,
        "send_queue_frames": frames,
        "send_queue_bytes": queued,
        "frames_received": _by_label(FRAMES_RECEIVED, "endpoint"),
        "frames_sent": _by_label(FRAMES_SENT, "endpoint"),
        "errors": _by_label(ERRORS, "code"),
        "closes": _by_label(CLOSES, "code"),
        "bus_posts": _total(BUS_POSTS),
        "bus_deliveries": _total(BUS_DELIVERIES),
        "bus_received": _total(BUS_RECEIVED),
        "bus_publish_failures": _total(BUS_PUBLISH_FAILURES),
        "bus_publishes": _total(BUS_PUBLISH_SECONDS),
        "bus_publish_seconds_sum": publish_sum,
    }


def _reset(*, setting: str, **kwargs: Any) -> None:
    if setting == "STREAMING":
        for cache in _CACHES:
            cache.clear()
        _state.clear()


setting_changed.connect(_reset)
