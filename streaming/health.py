"""Health checks and the metrics page: ``/healthz``, ``/readyz``, ``/metrics``.

Include them with ``path("", include("streaming.urls"))`` (docs/deployment.md,
"Health checks and metrics"), and put :class:`ProbeMiddleware` first in
``MIDDLEWARE`` so that probes and scrapes get them whatever ``Host`` they send and over
plain HTTP (before ``ALLOWED_HOSTS`` and ``SECURE_SSL_REDIRECT`` apply). All three are
async views: nothing here blocks the event loop.

* ``GET /healthz``: 200 ``{"status": "ok"}`` whenever the process serves requests
  (liveness). It checks nothing else, so a Redis outage never gets servers killed.
* ``GET /readyz``: 200 when the database and every Redis the process uses answer,
  else 503; the JSON body names each check and what failed (readiness). The Redis
  servers are every host of the bus's channel layer (``STREAMING["CHANNEL_LAYER"]``)
  and the default cache's servers when it is Django's ``RedisCache``. The checks run
  concurrently, each bounded by ``STREAMING["HEALTH_TIMEOUT"]`` seconds: Redis with
  ``redis.asyncio``'s ``PING``, the database with ``SELECT 1`` in
  ``database_sync_to_async``'s thread. Where the bus spans processes, a ``bus`` check
  fails while its heartbeats have not come back for ``BUS_STALL_TIMEOUT`` (a stalled
  subscription, streaming/watch.py).
* ``GET /metrics``: the Prometheus text format (:mod:`streaming.metrics`), to
  loopback clients, or to anyone sending ``Authorization: Bearer <token>`` with the
  token of ``STREAMING["METRICS_TOKEN"]`` (else the ``STREAMPOD_METRICS_TOKEN``
  environment variable), compared in constant time. A request carrying
  ``X-Forwarded-For``, ``X-Real-IP`` or ``Forwarded`` came through a proxy, so it is
  not a loopback client whatever its address. Others get 401 (no or another
  ``Authorization``) or 403 (no token configured). 404 while ``STREAMING["METRICS"]``
  is off.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from asgiref.sync import markcoroutinefunction
from channels.db import database_sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_safe
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import REGISTRY

from . import conf, metrics
from .conf import streaming_settings
from .exceptions import MessagingUnavailable

if TYPE_CHECKING:
    from .messages import MessageBus

__all__ = ["ProbeMiddleware", "healthz", "metrics_view", "readyz", "redis_urls"]

#: Headers a proxy adds: a request with one is not a loopback client's.
_PROXY_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_X_REAL_IP", "HTTP_FORWARDED")


@require_safe  # GET and HEAD: load balancers probe with either
@never_cache
async def healthz(request: HttpRequest) -> HttpResponse:
    """Liveness: the process serves."""
    return JsonResponse({"status": "ok"})


@require_safe
@never_cache
async def readyz(request: HttpRequest) -> HttpResponse:
    """Readiness: 200 if every check passed, else 503 with the failures named."""
    from .messages import get_bus

    problems = [(i, m) for i, m, _ in conf.problems() if i in ("streaming.E001", "streaming.E002")]
    if problems:
        # Every handshake fails with such settings (they raise ImproperlyConfigured); say
        # why rather than answer 500 (helper "operator10").
        why = "; ".join(f"{check_id}: {message}" for check_id, message in problems)
        body = {"status": "unavailable", "checks": {"settings": why}, "failed": ["settings"]}
        return JsonResponse(body, status=503)
    checks: dict[str, Awaitable[None]] = {"database": _check_database()}
    for name, url in redis_urls():
        checks[name] = _check_redis(url)
    bus = get_bus()
    if bus.cross_process:
        checks["bus"] = _check_bus(bus)
    timeout = streaming_settings.HEALTH_TIMEOUT
    outcomes = await asyncio.gather(*(_bounded(check, timeout) for check in checks.values()))
    results = dict(zip(checks, outcomes, strict=True))
    failed = sorted(name for name, outcome in results.items() if outcome != "ok")
    body = {"status": "unavailable" if failed else "ok", "checks": results, "failed": failed}
    return JsonResponse(body, status=503 if failed else 200)


@require_GET
@never_cache
async def metrics_view(request: HttpRequest) -> HttpResponse:
    """This process's metrics in Prometheus' text format, to the clients allowed."""
    if not metrics.enabled():
        return HttpResponse("Metrics are off (STREAMING['METRICS']).\n", status=404)
    refusal = _refusal(request)
    if refusal is not None:
        return refusal
    # Runs on the event loop on purpose: the socket gauges read the loop's sockets.
    return HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)


class ProbeMiddleware:
    """Answers ``/healthz``, ``/readyz`` and ``/metrics`` before the rest of the chain.

    Orchestrators and Prometheus address a server by its IP (``Host: 10.0.0.11:8001``),
    which ``ALLOWED_HOSTS`` refuses with 400, and over plain HTTP, which
    ``SECURE_SSL_REDIRECT`` answers with a redirect a probe would take for success.
    First in ``MIDDLEWARE``, this serves the three views at those paths (under
    ``FORCE_SCRIPT_NAME``'s prefix, if any) before either applies; nothing they return
    depends on the host. Other requests pass through untouched.
    """

    async_capable = True
    sync_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], Awaitable[HttpResponse]]) -> None:
        self.get_response = get_response
        markcoroutinefunction(self)

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        view = _PROBES.get(request.path_info)
        if view is not None:
            return await view(request)
        return await self.get_response(request)


def metrics_token() -> str | None:
    """The bearer token of ``/metrics``: the setting, else the environment; None: none."""
    token = streaming_settings.METRICS_TOKEN
    if token is None:
        token = os.environ.get("STREAMPOD_METRICS_TOKEN", "").strip() or None
    return token or None


def _refusal(request: HttpRequest) -> HttpResponse | None:
    """None if ``request`` may read ``/metrics``, else the response refusing it."""
    if _is_loopback(request):
        return None
    token = metrics_token()
    header = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _, given = header.partition(" ")
    if token is not None and scheme.lower() == "bearer":
        if hmac.compare_digest(given.strip().encode(), token.encode()):
            return None
    if token is None:
        return HttpResponse(
            "Metrics are served to loopback clients only (no STREAMPOD_METRICS_TOKEN).\n",
            status=403,
        )
    response = HttpResponse("A valid bearer token is required.\n", status=401)
    response["WWW-Authenticate"] = 'Bearer realm="metrics"'
    return response


def _is_loopback(request: HttpRequest) -> bool:
    if any(request.META.get(header) for header in _PROXY_HEADERS):
        return False
    try:
        return ipaddress.ip_address(request.META.get("REMOTE_ADDR") or "").is_loopback
    except ValueError:
        return False


_PROBES: dict[str, Callable[[HttpRequest], Awaitable[HttpResponse]]] = {
    "/healthz": healthz,
    "/readyz": readyz,
    "/metrics": metrics_view,
}


# -- the checks ------------------------------------------------------------------------


async def _bounded(check: Awaitable[None], timeout: float) -> str:
    """``"ok"``, or why ``check`` failed (a timeout included)."""
    try:
        async with asyncio.timeout(timeout):
            await check
    except TimeoutError:
        return f"timed out after {timeout:g}s"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"[:300]
    return "ok"


@database_sync_to_async
def _select_one() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


async def _check_database() -> None:
    await _select_one()


async def _check_bus(bus: MessageBus) -> None:
    """The bus's own subscription: failed while its heartbeats stopped coming back for
    ``BUS_STALL_TIMEOUT`` (streaming/watch.py), which a connection of the check's own
    cannot see (a path that stalled for the bus's connections only), or while they wait
    in a backlog that old (the process is behind the posts coming in)."""
    silent = bus.stalled_for()
    if silent is not None:
        raise MessagingUnavailable(
            f"no heartbeat of the bus came back for {silent:.0f}s: "
            + (
                "it is that far behind the posts coming in"
                if bus.is_behind()
                else "its subscription is stalled"
            )
        )


async def _check_redis(url: str) -> None:
    from redis.asyncio import Redis

    timeout = streaming_settings.HEALTH_TIMEOUT
    client = Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        await client.ping()
    finally:
        await client.aclose()


def redis_urls() -> list[tuple[str, str]]:
    """``(check name, URL)`` of each Redis server this process uses.

    One check per server, named with what uses it and no password:
    ``redis <host>:<port>/<db> (channel layer, cache)``.
    """
    found: dict[str, list[str]] = {}
    layer = settings.CHANNEL_LAYERS.get(streaming_settings.CHANNEL_LAYER, {})
    if str(layer.get("BACKEND", "")).startswith("channels_redis."):
        for host in layer.get("CONFIG", {}).get("hosts", ["redis://localhost:6379"]):
            url = _host_url(host)
            if url is not None:
                found.setdefault(url, []).append("channel layer")
    cache = settings.CACHES.get("default", {})
    if cache.get("BACKEND") == "django.core.cache.backends.redis.RedisCache":
        location: Any = cache.get("LOCATION", [])
        if isinstance(location, str):
            location = location.replace(";", ",").split(",")
        for url in location:
            if url.strip():
                roles = found.setdefault(url.strip(), [])
                if "cache" not in roles:
                    roles.append("cache")
    return [
        (f"redis {_display(url)} ({', '.join(dict.fromkeys(roles))})", url)
        for url, roles in found.items()
    ]


def _host_url(host: Any) -> str | None:
    """A channels-redis ``hosts`` entry as a URL (None: a Sentinel entry, not checked)."""
    if isinstance(host, str):
        return host
    if isinstance(host, list | tuple) and len(host) == 2:
        return f"redis://{host[0]}:{host[1]}"
    if isinstance(host, dict) and isinstance(host.get("address"), str):
        return host["address"]
    if isinstance(host, dict) and isinstance(host.get("address"), list | tuple):
        address = host["address"]
        return f"redis://{address[0]}:{address[1]}"
    return None


def _display(url: str) -> str:
    """``url`` as a check's name: host, port and path, never its password (what follows
    the last ``@`` of a URL that does not parse, helper "operator10": ``/readyz`` named a
    mistyped ``redis//:password@host`` whole, twice)."""
    bare = url.split("?", 1)[0].split("#", 1)[0]  # ?password= is redis-py's way too
    try:
        parts = urlsplit(bare)
        host, port = parts.hostname, parts.port
    except ValueError:  # a port that is not a number, an unclosed "["
        host = port = None
    if host is None:
        return bare.rpartition("@")[2] or "?"
    return f"{host}{f':{port}' if port else ''}{parts.path or ''}"
