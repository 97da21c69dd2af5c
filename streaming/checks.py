"""System checks: misconfiguration reported at start-up with stable ids.

* ``streaming.E001`` unknown key in ``STREAMING``
* ``streaming.E002`` a ``STREAMING`` value of the wrong type or range
* ``streaming.E003`` two endpoints under one name
* ``streaming.E004`` an entry of ``STREAMING["ENDPOINTS"]`` that cannot be used
* ``streaming.E005`` a channels-redis layer whose ``prefix`` is empty (an empty
  ``STREAMPOD_REDIS_PREFIX`` got past ``os.environ[...]``): it shares its channels with
  every deployment on the same Redis whose prefix is empty too
* ``streaming.W001`` daphne's message size limit is below ``MAX_MESSAGE_BYTES``
* ``streaming.W002`` the channel layer in ``STREAMING["CHANNEL_LAYER"]`` is missing
* ``streaming.W003`` the channel layer is channels-redis but redis-py has no hiredis:
  every Redis reply is parsed in Python
* ``streaming.W004`` the channel layer is in-memory (one process) while the environment
  says several processes serve: posts would not reach sockets of the other processes.
  Also logged at start-up by every server process (:func:`warn_if_split`).
* ``streaming.W006`` ``ALLOWED_HOSTS`` is empty with ``DEBUG`` off: Django answers every
  request 400 and every handshake is refused (403), while ``/healthz`` and ``/readyz``,
  answered before the host is checked, stay green. Django's own ``security.W020`` says so
  only under ``check --deploy``, which no server runs; this one is logged at start-up.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shlex
import sys
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from . import conf


@checks.register("streaming")
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    messages: list[checks.CheckMessage] = []
    for check_id, message, hint in conf.problems():
        messages.append(checks.Error(message, hint=hint, id=check_id))
    if messages:
        return messages
    max_bytes = conf.streaming_settings.MAX_MESSAGE_BYTES
    daphne_limit = getattr(settings, "DAPHNE_WEBSOCKET_MAX_MESSAGE_SIZE", 1024 * 1024)
    if daphne_limit <= max_bytes:
        messages.append(
            checks.Warning(
                f"DAPHNE_WEBSOCKET_MAX_MESSAGE_SIZE ({daphne_limit}) is not above "
                f"STREAMING['MAX_MESSAGE_BYTES'] ({max_bytes}): daphne drops oversize "
                "frames with 1006 before Streampod can answer them.",
                hint="Set DAPHNE_WEBSOCKET_MAX_MESSAGE_SIZE a little above MAX_MESSAGE_BYTES.",
                id="streaming.W001",
            )
        )
    alias = conf.streaming_settings.CHANNEL_LAYER
    if alias not in getattr(settings, "CHANNEL_LAYERS", {}):
        messages.append(
            checks.Warning(
                f"CHANNEL_LAYERS has no {alias!r} layer: messaging stays in one process.",
                hint="Configure CHANNEL_LAYERS (channels-redis for several servers).",
                id="streaming.W002",
            )
        )
    elif _is_redis_layer(settings.CHANNEL_LAYERS[alias]) and not hiredis_available():
        messages.append(
            checks.Warning(
                f"The {alias!r} channel layer uses Redis, but redis-py runs without hiredis: "
                "it parses every reply (each message between servers) in Python.",
                hint="pip install hiredis (a dependency of streampod; an install that "
                "skipped it, e.g. --no-deps, is missing it).",
                id="streaming.W003",
            )
        )
    layer = getattr(settings, "CHANNEL_LAYERS", {}).get(alias)
    config = layer.get("CONFIG") if isinstance(layer, dict) and _is_redis_layer(layer) else None
    prefix = config.get("prefix") if isinstance(config, dict) else None
    if isinstance(prefix, str) and not prefix.strip():
        messages.append(
            checks.Error(
                f"The {alias!r} channel layer's prefix is empty: its channels are shared "
                "with every deployment on the same Redis whose prefix is empty too (Redis "
                "pub/sub ignores database numbers).",
                hint="Give each deployment a prefix of its own (STREAMPOD_REDIS_PREFIX in "
                "the README's settings: set, and not empty).",
                id="streaming.E005",
            )
        )
    if _is_redis_layer(layer) and _hosts_without_user_timeout(layer):
        messages.append(
            checks.Warning(
                f"The {alias!r} channel layer's Redis connections have no TCP_USER_TIMEOUT: "
                "a Redis that vanishes without a reset (host down, partition, failover) "
                "stalls the message bus until the kernel gives up, ~15 minutes on Linux.",
                hint="Add **streaming.redis_options.KEEPALIVE_HOST_OPTIONS to each host "
                "dict (docs/deployment.md, 'A Redis that goes silent').",
                id="streaming.W005",
            )
        )
    if not settings.DEBUG and not settings.ALLOWED_HOSTS:
        messages.append(
            checks.Warning(
                "ALLOWED_HOSTS is empty and DEBUG is off: every request is answered 400 and "
                "every WebSocket handshake refused (403); the probes stay green.",
                hint="List the names clients use (DJANGO_ALLOWED_HOSTS in the project's settings).",
                id="streaming.W006",
            )
        )
    for sign in multi_process_signs():
        messages.append(
            checks.Warning(
                f"The {alias!r} channel layer is in-memory, which serves one process, but "
                f"{sign}: a post reaches only the sockets of the process it is made in.",
                hint="Use channels-redis' RedisPubSubChannelLayer (README, Scaling out).",
                id="streaming.W004",
            )
        )
    return messages


def multi_process_signs(environ: Mapping[str, str] | None = None) -> list[str]:
    """Why this process is likely one of several serving the project while its channel
    layer is in-memory (the layer under ``STREAMING["CHANNEL_LAYER"]``); [] when the
    layer shares messages between processes, or when nothing says there are several.

    The signs: ``WEB_CONCURRENCY`` above 1 (uvicorn's and gunicorn's worker count);
    ``REDIS_URL`` set (a Redis meant for the project, often the deployment's, that the
    settings do not use for messaging); a parent process of :mod:`multiprocessing`'s
    (``uvicorn --workers``); a gunicorn master whose command line (or
    ``GUNICORN_CMD_ARGS``) asks for more than one worker (gunicorn forks its workers:
    there is no :mod:`multiprocessing` parent to see; a worker count set only in a
    gunicorn config file is not seen)."""
    config = getattr(settings, "CHANNEL_LAYERS", {}).get(conf.streaming_settings.CHANNEL_LAYER)
    if _backend(config) != "channels.layers.InMemoryChannelLayer":
        return []
    env = os.environ if environ is None else environ
    signs = []
    concurrency = env.get("WEB_CONCURRENCY", "")
    if concurrency.isdigit() and int(concurrency) > 1:
        signs.append(f"WEB_CONCURRENCY is {concurrency}")
    if env.get("REDIS_URL"):
        signs.append("REDIS_URL is set")
    parent = multiprocessing.parent_process()
    if parent is not None and not _reloader(parent.pid):
        signs.append("this process was started by another (uvicorn --workers)")
    workers = _gunicorn_workers(os.getppid(), env)
    if workers > 1:
        signs.append(f"this process is one of {workers} gunicorn workers")
    return signs


#: What a server process's ``sys.argv[0]`` names (``uvicorn``, ``python -m uvicorn``...).
SERVERS = ("uvicorn", "daphne", "gunicorn", "hypercorn", "granian")


def _reloader(pid: int | None) -> bool:
    """Whether process ``pid`` is a development reloader (``uvicorn --reload`` runs the
    server through :mod:`multiprocessing` too: one process, nothing to warn about)."""
    if pid is None:
        return False
    # Unreadable (not Linux, or gone): taken as a server's supervisor.
    return any(arg == "--reload" or arg.startswith("--reload-") for arg in _cmdline(pid))


def _cmdline(pid: int) -> list[str]:
    """Process ``pid``'s arguments ([] when they cannot be read: not Linux, gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            raw = cmdline.read()
    except OSError:
        return []
    return [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]


def _gunicorn_workers(pid: int, env: Mapping[str, str]) -> int:
    """How many workers the gunicorn master ``pid`` runs, from its ``-w``/``--workers``
    (or ``GUNICORN_CMD_ARGS``'); 1 when ``pid`` is not gunicorn or says nothing."""
    args = _cmdline(pid)
    named = [os.path.basename(arg) for arg in args[:3]]
    if "gunicorn" not in named and not ("-m" in args[:3] and "gunicorn" in args[:3]):
        return 1
    workers = 1
    for source in (shlex.split(env.get("GUNICORN_CMD_ARGS", "")), args):
        for i, arg in enumerate(source):  # the command line wins over the variable
            value = None
            if arg in ("-w", "--workers") and i + 1 < len(source):
                value = source[i + 1]
            elif arg.startswith("--workers="):
                value = arg.partition("=")[2]
            elif arg.startswith("-w") and arg[2:].isdigit():
                value = arg[2:]
            if value is not None and value.isdigit():
                workers = int(value)
    return workers


def _serving() -> bool:
    """Whether this process is an ASGI server's (its workers keep its ``sys.argv``), not a
    ``manage.py`` command, a shell or a task worker, which have no sockets to lose."""
    program = os.path.normpath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return any(name in program.split(os.sep) or os.path.basename(program) == name
               for name in SERVERS)  # fmt: skip


def warn_if_split() -> None:
    """Log what the settings checks find, once per process, in server processes: servers
    do not run the system checks. Errors (``streaming.E001``/``E002``: a typo in a
    ``STREAMING`` key, a value of the wrong type; every handshake will fail) at ERROR;
    warnings (``W004``: several processes on an in-memory layer, ``W005``: Redis
    connections that would wait 15 minutes for a silent Redis, ...) at WARNING.
    ``SILENCED_SYSTEM_CHECKS`` quiets each, as it does the check (one process on purpose,
    ``REDIS_URL`` for a cache). Seen (helper "operator7"): a server started with
    ``"RESTART_RAT"`` said nothing until the first handshake got HTTP 500."""
    if not _serving():
        return  # manage.py commands run the checks themselves
    silenced = set(getattr(settings, "SILENCED_SYSTEM_CHECKS", ()))
    logger = logging.getLogger("streaming")
    try:
        found = check_settings()
    except ImproperlyConfigured:  # settings Django itself refuses: it says so
        return
    for message in found:
        if message.id in silenced:
            continue
        level = logging.ERROR if message.is_serious() else logging.WARNING
        logger.log(level, "%s: %s %s", message.id, message.msg, message.hint or "")


def _backend(config: Any) -> Any:
    """A CHANNEL_LAYERS entry's ``BACKEND`` ("" when the entry is not a dict)."""
    return config.get("BACKEND", "") if isinstance(config, dict) else ""


def _is_redis_layer(config: Any) -> bool:
    backend = _backend(config)
    return isinstance(backend, str) and backend.startswith("channels_redis.")


def _hosts_without_user_timeout(config: Any) -> bool:
    """Whether a channels-redis layer's hosts lack ``TCP_USER_TIMEOUT`` among their
    ``socket_keepalive_options`` (False where the platform has no such option)."""
    import socket

    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    if option is None:
        return False
    hosts = (config.get("CONFIG") or {}).get("hosts") or [None]  # channels-redis: localhost
    for host in hosts:
        if not isinstance(host, dict) or not host.get("socket_keepalive", True):
            return True
        if option not in (host.get("socket_keepalive_options") or {}):
            return True
    return False


def hiredis_available() -> bool:
    """Whether redis-py parses replies with hiredis (its own flag, read at each check)."""
    try:
        from redis import utils
    except ImportError:  # no redis-py: no channels-redis either, nothing to parse
        return True
    return bool(getattr(utils, "HIREDIS_AVAILABLE", False))


@checks.register("streaming")
def check_endpoints(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    from .registry import endpoints

    messages: list[checks.CheckMessage] = []
    for first, second in endpoints.conflicts:
        messages.append(
            checks.Error(
                f"Two endpoints are named {first.name!r}: "
                f"{first.__module__}.{first.__qualname__} and "
                f"{second.__module__}.{second.__qualname__}.",
                hint="Set a distinct `name` on one of them.",
                id="streaming.E003",
            )
        )
    for path, reason in endpoints.import_errors:
        messages.append(
            checks.Error(
                f"STREAMING['ENDPOINTS'] entry {path!r} cannot be used: {reason}.",
                id="streaming.E004",
            )
        )
    return messages
