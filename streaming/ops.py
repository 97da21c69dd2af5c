"""The cluster's live figures, over Streampod itself: the admin's live page's endpoint.

Turn it on with ``STREAMING["ENDPOINTS"] = ["streaming.ops.ClusterMetricsEndpoint"]``
(the demo project does) and include ``streaming.urls`` (the page,
``/admin/streampod/live/``, is :func:`streaming.admin_live.live_view`).

::

    page --StreampodMetricsRequest--> ClusterMetricsEndpoint (the page's server)
            posts StreampodMetricsRequest(reply_channel) -----> channel "streampod_metrics"
    every server process's responder --StreampodProcessMetrics--> reply_channel
    the page's session listens on reply_channel ---------------> page (sums, lists)

Contracts:

* Staff only: the endpoint is ``login_required`` and opens for active staff users
  (``is_staff``, no database query); anyone else's frames get ``not_authenticated``
  or ``forbidden``. The page itself is an admin view (staff, else the admin login).
* Every server process with an open socket answers each request once with
  :func:`streaming.metrics.snapshot` and its identity; the page keeps the last answer
  of each process and drops a process silent for a while.
* Once this module is imported (registering the endpoint does it), a process listens
  on ``streampod_metrics`` while it has open sockets; one without sockets holds no
  subscription and is not listed (it has no connections, and its counters reappear
  with its next socket).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
import weakref
from typing import Any

from . import metrics
from .endpoint import Endpoint
from .messages import MessageBus, get_bus
from .serialization import SerializableEntity
from .session import StreamingSession

logger = logging.getLogger("streaming.ops")

#: The bus channel every server process listens on for metrics requests.
METRICS_CHANNEL = "streampod_metrics"

__all__ = [
    "METRICS_CHANNEL",
    "ClusterMetricsEndpoint",
    "StreampodMetricsRequest",
    "StreampodProcessMetrics",
]


class StreampodMetricsRequest(SerializableEntity):
    """Page -> endpoint: send every process's figures. Endpoint -> processes: the same,
    with the channel to answer on."""

    request_id: str
    reply_channel: str | None = None


class StreampodProcessMetrics(SerializableEntity):
    """One process's answer: who it is (``process`` is unique per event loop) and its
    figures (:func:`streaming.metrics.snapshot`)."""

    request_id: str
    process: str
    host: str
    pid: int
    figures: dict[str, Any]


class _Responder:
    """The listener that answers metrics requests (one per bus)."""

    __slots__ = ("process",)

    def __init__(self, bus: MessageBus) -> None:
        self.process = f"{socket.gethostname()}:{os.getpid()}:{bus.id[:6]}"

    def __call__(self, message: SerializableEntity) -> None:
        if not isinstance(message, StreampodMetricsRequest) or not message.reply_channel:
            return
        answer = StreampodProcessMetrics(
            request_id=message.request_id,
            process=self.process,
            host=socket.gethostname(),
            pid=os.getpid(),
            figures=metrics.snapshot(),
        )
        try:
            outcome = get_bus().post_message(message.reply_channel, answer)
        except Exception:
            logger.exception("answering a metrics request failed")
            return
        outcome.add_done_callback(_log_failure)


def _log_failure(outcome: asyncio.Future[bool]) -> None:
    if not outcome.cancelled() and outcome.exception() is not None:
        logger.warning("answering a metrics request failed: %s", outcome.exception())


_responders: weakref.WeakKeyDictionary[MessageBus, _Responder] = weakref.WeakKeyDictionary()


def responder_of(bus: MessageBus) -> _Responder:
    responder = _responders.get(bus)
    if responder is None:
        responder = _responders[bus] = _Responder(bus)
    return responder


def _watch(consumer: Any, opened: bool) -> None:
    """Listen on :data:`METRICS_CHANNEL` while this process has open sockets.

    Each socket owns the one listener (the bus calls it once per post however many own
    it), so the channel goes with the last socket and an idle process holds nothing.
    """
    bus = get_bus()
    responder = responder_of(bus)
    if opened:
        bus.add_listener(METRICS_CHANNEL, responder, owner=consumer.scope)
    else:
        bus.remove_listener(METRICS_CHANNEL, responder, owner=consumer.scope)


metrics.socket_watchers.append(_watch)


class ClusterMetricsEndpoint(Endpoint):
    """``streampod_metrics``: the live page's stream of every process's figures."""

    name = "streampod_metrics"
    login_required = True

    async def has_permission(self, session: StreamingSession) -> bool:
        user = session.user
        return bool(getattr(user, "is_active", False) and getattr(user, "is_staff", False))

    async def stream_opened(self, session: StreamingSession) -> None:
        channel = f"streampod_metrics_reply_{uuid.uuid4().hex}"
        self.set_user_object(session, channel)
        session.messages.add_listener(
            channel, lambda message: self.send_stream_message(session, message)
        )

    async def handle_stream_message(
        self, session: StreamingSession, message: SerializableEntity
    ) -> None:
        if not isinstance(message, StreampodMetricsRequest):
            return
        request = StreampodMetricsRequest(
            request_id=message.request_id, reply_channel=self.get_user_object(session)
        )
        await session.messages.post_message(METRICS_CHANNEL, request)
