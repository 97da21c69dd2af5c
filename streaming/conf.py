"""The ``STREAMING`` settings namespace, read lazily in this one module.

``streaming_settings.MAX_MESSAGE_BYTES`` reads ``settings.STREAMING`` on first use
and caches it; the cache is reset on Django's ``setting_changed`` signal, so
``override_settings(STREAMING=...)`` works. Unknown keys are rejected: reading any
setting raises ``ImproperlyConfigured``, and system check ``streaming.E001`` reports
them at start-up.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed

#: Every key of ``STREAMING`` with its default. See docs/settings.md.
DEFAULTS: dict[str, Any] = {
    # Dotted paths of Endpoint classes to register besides each app's endpoints module.
    "ENDPOINTS": [],
    # Largest text frame accepted, in UTF-8 bytes; larger ones close the socket with 4009.
    "MAX_MESSAGE_BYTES": 65536,
    # Most JSON values in one inbound frame, and deepest nesting; more: error malformed_frame.
    "MAX_FRAME_VALUES": 10_000,
    "MAX_FRAME_DEPTH": 32,
    # Frames waiting to be handed to the server per connection; past it: close 4013.
    "SEND_QUEUE_LIMIT": 1024,
    # The same queue in bytes (memory of the queued strings); past it: close 4013.
    "SEND_QUEUE_BYTES": 8 * 1024 * 1024,
    # Largest outbound frame in UTF-8 bytes (daphne refuses more than its own limit too);
    # a larger message is not sent and the client gets error message_too_large.
    "MAX_SEND_BYTES": 1024 * 1024,
    # Frames waiting for one endpoint's hook (or for an auth) per connection; past it:
    # error rate_limited.
    "MAX_PENDING_FRAMES": 256,
    # Estimated memory of all the frames waiting on one connection; past it: rate_limited.
    "MAX_PENDING_BYTES": 4 * 1024 * 1024,
    # Seconds the handshake waits for stream_opened hooks (and their channels' cluster
    # joins) before accepting anyway; a hook still running then is logged.
    "OPEN_TIMEOUT": 3.0,
    # Seconds hooks still running when a socket closes get to finish before they are
    # cancelled (logged by name).
    "CLOSE_GRACE_PERIOD": 5.0,
    # Seconds a SIGTERM'd process (streaming.shutdown) waits for its sockets, closed with
    # 1012, to finish their teardown (their stream_closed hooks) before the server exits.
    "SHUTDOWN_GRACE_PERIOD": 10.0,
    # Reconnects per second a process's 1012s (a shutdown, a bus gap, late joins) ask their
    # clients to spread to: N sockets closed at once are told to come back within N / rate
    # seconds (the close reason, docs/protocol.md). None: no advice.
    "RESTART_RATE": 200.0,
    # Inbound frames per second per connection (token bucket), None to turn off.
    "RATE_LIMIT_PER_SECOND": 500.0,
    # Bucket size: frames a connection may send in one burst.
    "RATE_LIMIT_BURST": 1000,
    # Inbound UTF-8 bytes per second per connection (a second token bucket), None to turn
    # off; and that bucket's size. Parsing and validating costs 8 to 32 ns a byte, so the
    # default keeps one connection under about 1% of a core.
    "RATE_LIMIT_BYTES_PER_SECOND": 256 * 1024,
    "RATE_LIMIT_BYTES_BURST": 1024 * 1024,
    # Refused frames within FLOOD_WINDOW seconds after which the socket is closed with 4008
    # (flooding), however many good frames come in between.
    "FLOOD_CLOSE_AFTER": 200,
    "FLOOD_WINDOW": 10.0,
    # Sockets one user may hold on one server process; the next is closed with 4029.
    # None: no limit.
    "MAX_SOCKETS_PER_USER": 100,
    # Seconds a socket may stay open without a signed-in user (handshake credentials or an
    # auth command); then it is closed with 4401. None: anonymous sockets stay.
    "ANONYMOUS_TIMEOUT": None,
    # Seconds between re-checks that the users of open sockets are still active (catches
    # changes made without signals, such as QuerySet.update); None turns it off.
    "USER_RECHECK_INTERVAL": 60.0,
    # Seconds a cross-server publish (or `await handle`) may take before MessagingUnavailable.
    "PUBLISH_TIMEOUT": 2.0,
    # Messages buffered per `session.messages.listen()` iterator.
    "LISTEN_QUEUE_LIMIT": 1024,
    "MAX_LISTENERS_PER_SOCKET": 1024,
    # Alias in CHANNEL_LAYERS that carries messages between servers.
    "CHANNEL_LAYER": "default",
    # Seconds between re-joins of the bus's groups (channel-layer memberships expire).
    "GROUP_REFRESH_INTERVAL": 3600.0,
    # Seconds between the bus's heartbeats to itself (streaming/watch.py): they show a
    # stalled subscription, and a lost one where the bus cannot watch its connections.
    "BUS_HEARTBEAT_INTERVAL": 1.0,
    # Seconds without a heartbeat of the bus coming back after which its subscription
    # counts as stalled (streaming/watch.py): listening sockets get 1012, /readyz fails.
    "BUS_STALL_TIMEOUT": 10.0,
    # Prometheus metrics (streaming/metrics.py) recorded, and served on /metrics.
    "METRICS": True,
    # Bearer token that lets a non-loopback client read /metrics; None: the
    # STREAMPOD_METRICS_TOKEN environment variable, and without it loopback only.
    "METRICS_TOKEN": None,
    # Seconds each /readyz check (database, each Redis) may take before it counts as failed.
    "HEALTH_TIMEOUT": 2.0,
}

#: Lower bounds beyond "positive", and why.
_MINIMUMS = {"MAX_SEND_BYTES": 4096}
_MINIMUM_WHY = {
    "MAX_SEND_BYTES": "The answer to a frame too large to send (message_too_large, with an "
    "id of up to 128 characters) must itself fit.",
}

_TYPES: dict[str, tuple[type, ...]] = {
    "ENDPOINTS": (list, tuple),
    "MAX_MESSAGE_BYTES": (int,),
    "MAX_FRAME_VALUES": (int,),
    "MAX_FRAME_DEPTH": (int,),
    "SEND_QUEUE_LIMIT": (int,),
    "SEND_QUEUE_BYTES": (int,),
    "MAX_SEND_BYTES": (int,),
    "MAX_PENDING_FRAMES": (int,),
    "MAX_PENDING_BYTES": (int,),
    "OPEN_TIMEOUT": (int, float),
    "CLOSE_GRACE_PERIOD": (int, float),
    "SHUTDOWN_GRACE_PERIOD": (int, float),
    "RESTART_RATE": (int, float, type(None)),
    "RATE_LIMIT_PER_SECOND": (int, float, type(None)),
    "RATE_LIMIT_BURST": (int,),
    "RATE_LIMIT_BYTES_PER_SECOND": (int, float, type(None)),
    "RATE_LIMIT_BYTES_BURST": (int,),
    "FLOOD_CLOSE_AFTER": (int,),
    "FLOOD_WINDOW": (int, float),
    "MAX_SOCKETS_PER_USER": (int, type(None)),
    "ANONYMOUS_TIMEOUT": (int, float, type(None)),
    "USER_RECHECK_INTERVAL": (int, float, type(None)),
    "PUBLISH_TIMEOUT": (int, float),
    "LISTEN_QUEUE_LIMIT": (int,),
    "MAX_LISTENERS_PER_SOCKET": (int, type(None)),
    "CHANNEL_LAYER": (str,),
    "GROUP_REFRESH_INTERVAL": (int, float),
    "BUS_HEARTBEAT_INTERVAL": (int, float),
    "BUS_STALL_TIMEOUT": (int, float),
    "METRICS": (bool,),
    "METRICS_TOKEN": (str, type(None)),
    "HEALTH_TIMEOUT": (int, float),
}


def user_settings() -> dict[str, Any]:
    value = getattr(settings, "STREAMING", None)
    return dict(value) if isinstance(value, dict) else {}


def problems() -> list[tuple[str, str, str]]:
    """``(check id, message, hint)`` for each thing wrong with ``settings.STREAMING``."""
    found: list[tuple[str, str, str]] = []
    raw = getattr(settings, "STREAMING", {})
    if not isinstance(raw, dict):
        return [("streaming.E002", "STREAMING must be a dict.", "STREAMING = {...}")]
    for key in sorted(set(raw) - set(DEFAULTS)):
        found.append(
            (
                "streaming.E001",
                f"Unknown key {key!r} in STREAMING.",
                "Known keys: " + ", ".join(sorted(DEFAULTS)),
            )
        )
    for key, value in raw.items():
        types = _TYPES.get(key)
        if types is None:
            continue
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            found.append(
                (
                    "streaming.E002",
                    f"STREAMING[{key!r}] has the wrong type ({type(value).__name__}).",
                    f"Default: {DEFAULTS[key]!r}",
                )
            )
        elif isinstance(value, list | tuple) and not all(isinstance(p, str) for p in value):
            # import_string() would fail on them with an AttributeError at start-up.
            found.append(
                (
                    "streaming.E002",
                    "STREAMING['ENDPOINTS'] must list dotted paths (strings).",
                    'For example ["myapp.endpoints.ChatEndpoint"].',
                )
            )
        elif key in _MINIMUMS and isinstance(value, int) and value < _MINIMUMS[key]:
            found.append(
                (
                    "streaming.E002",
                    f"STREAMING[{key!r}] must be at least {_MINIMUMS[key]}.",
                    _MINIMUM_WHY[key],
                )
            )
        elif isinstance(value, int | float) and not isinstance(value, bool) and value <= 0:
            found.append(
                (
                    "streaming.E002",
                    f"STREAMING[{key!r}] must be positive.",
                    f"Default: {DEFAULTS[key]!r}",
                )
            )
    return found


class StreamingSettings:
    """Attribute access to the merged ``STREAMING`` settings (defaults + project)."""

    def __init__(self) -> None:
        self._cache: dict[str, Any] | None = None

    def _load(self) -> dict[str, Any]:
        errors = [p for p in problems() if p[0] in ("streaming.E001", "streaming.E002")]
        if errors:
            raise ImproperlyConfigured("; ".join(message for _, message, _ in errors))
        merged = dict(DEFAULTS)
        merged.update(user_settings())
        return merged

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if self._cache is None:
            self._cache = self._load()
        try:
            return self._cache[name]
        except KeyError:
            raise AttributeError(f"No STREAMING setting {name!r}.") from None

    def reload(self) -> None:
        self._cache = None


streaming_settings = StreamingSettings()


def setting_or_default(name: str) -> Any:
    """``streaming_settings.<name>``, or its default while ``STREAMING`` is broken (E001,
    E002): for what must run even then (a SIGTERM's drain), where the setting itself would
    raise ``ImproperlyConfigured``."""
    try:
        return getattr(streaming_settings, name)
    except ImproperlyConfigured:
        return DEFAULTS[name]


def _reload(*, setting: str, **kwargs: Any) -> None:
    if setting == "STREAMING":
        streaming_settings.reload()


setting_changed.connect(_reload)
