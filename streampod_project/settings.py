"""Settings of the Streampod demo project.

Everything comes from the environment, with embedded defaults that need nothing
installed: SQLite and the in-memory channel layer. docs/settings.md lists every
variable; docs/deployment.md has the production environment.

* ``DATABASE_URL``: e.g. ``postgres://user@127.0.0.1:5432/streampod`` (default: SQLite).
* ``REDIS_URL``: e.g. ``redis://127.0.0.1:6379/0``; turns on channels-redis so that
  several server processes share messages, and a Redis cache so that they share
  throttle counts (default: in-memory, one process). ``STREAMPOD_REDIS_PREFIX``
  names the deployment's channels (default: from the database number).
* ``DJANGO_DEBUG`` (default on), ``DJANGO_SECRET_KEY`` (required when debug is off),
  ``DJANGO_ALLOWED_HOSTS`` (comma-separated), ``DJANGO_CSRF_TRUSTED_ORIGINS``
  (comma-separated), and the HTTPS settings ``DJANGO_SECURE_*``,
  ``DJANGO_SESSION_COOKIE_SECURE``, ``DJANGO_CSRF_COOKIE_SECURE``.
* ``STREAMPOD_THROTTLE_AUTH_TOKEN``, ``STREAMPOD_THROTTLE_CHAT_API``,
  ``STREAMPOD_NUM_PROXIES``: the REST API's throttling.
"""

import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from redis.connection import parse_url

from streaming.redis_options import KEEPALIVE_HOST_OPTIONS

BASE_DIR = Path(__file__).resolve().parent.parent

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def _flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    value = value.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={value!r}: use one of {', '.join(_TRUE + _FALSE[:-1])}")


def _int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise ImproperlyConfigured(f"{name}={value!r}: a whole number >= 0 is required")
    return number


def _list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = _flag("DJANGO_DEBUG", True)

# Public (it is in this file): only ever used with DEBUG on.
_DEVELOPMENT_SECRET_KEY = "django-insecure-streampod-dev-key-change-me-in-production-0123456789"
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "").strip() or _DEVELOPMENT_SECRET_KEY
# With DEBUG off and no key of its own, the server refuses to start rather than sign
# sessions and tokens with the public key; so does any settings module that extends
# this one (the end-to-end tests and the bench pass a key of their own).
if not DEBUG and SECRET_KEY == _DEVELOPMENT_SECRET_KEY:
    raise ImproperlyConfigured(
        "DJANGO_DEBUG is off and DJANGO_SECRET_KEY is not set (or is the development key): "
        "refusing to start with the public development key. Set DJANGO_SECRET_KEY to a long "
        "random string, the same on every server, e.g. "
        "python -c 'import secrets; print(secrets.token_urlsafe(50))' (or DJANGO_DEBUG=1 "
        "for development)."
    )
ALLOWED_HOSTS = _list("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]")
CSRF_TRUSTED_ORIGINS = _list("DJANGO_CSRF_TRUSTED_ORIGINS", "")

# HTTPS. All off by default, so that development and test servers work over plain
# HTTP; the production environment of docs/deployment.md turns them on (and then
# ``manage.py check --deploy`` is clean).
SECURE_SSL_REDIRECT = _flag("DJANGO_SECURE_SSL_REDIRECT", False)
SECURE_HSTS_SECONDS = _int("DJANGO_SECURE_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = _flag("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = _flag("DJANGO_SECURE_HSTS_PRELOAD", False)
SESSION_COOKIE_SECURE = _flag("DJANGO_SESSION_COOKIE_SECURE", False)
CSRF_COOKIE_SECURE = _flag("DJANGO_CSRF_COOKIE_SECURE", False)
# Behind a proxy that terminates TLS: the header it sets to "https" on HTTPS requests,
# e.g. X-Forwarded-Proto. The proxy must overwrite whatever clients send in it.
_PROXY_SSL_HEADER = os.environ.get("DJANGO_SECURE_PROXY_SSL_HEADER", "").strip()
if _PROXY_SSL_HEADER:
    if not re.fullmatch(r"[A-Za-z0-9-]+", _PROXY_SSL_HEADER):
        raise ImproperlyConfigured(
            f"DJANGO_SECURE_PROXY_SSL_HEADER={_PROXY_SSL_HEADER!r}: a header name is "
            "required, e.g. X-Forwarded-Proto"
        )
    SECURE_PROXY_SSL_HEADER = ("HTTP_" + _PROXY_SSL_HEADER.upper().replace("-", "_"), "https")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "channels",
    "streaming",
    "chat",
]

MIDDLEWARE = [
    # /healthz, /readyz and /metrics for probes and Prometheus, which address a server by
    # its IP and over plain HTTP: answered before ALLOWED_HOSTS and the HTTPS redirect.
    "streaming.health.ProbeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "streampod_project.urls"
ASGI_APPLICATION = "streampod_project.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.config(
        default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}", conn_max_age=0
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Concurrent sockets write from several threads: wait for the lock instead of failing.
    DATABASES["default"].setdefault("OPTIONS", {})["timeout"] = 20
    # A file, not memory, so that the daphne processes the end-to-end tests start
    # read the users the tests create.
    DATABASES["default"]["TEST"] = {
        "NAME": os.environ.get(
            "STREAMPOD_TEST_DB", str(BASE_DIR / "test-artifacts" / "test.sqlite3")
        )
    }

REDIS_URL = os.environ.get("REDIS_URL", "").strip()
# Several Redis servers, comma-separated, are shards: channels-redis spreads the channels
# over them by a consistent hash of each channel's name (docs/deployment.md, "Redis
# shards"). Every server of a deployment must list the same URLs in the same order.
REDIS_URLS = [url.strip() for url in REDIS_URL.split(",") if url.strip()]


def _redacted(url: str) -> str:
    """``url`` for messages: without what comes before its last ``@`` and without its
    query (either may hold a password: ``?password=`` is redis-py's way for a socket)."""
    bare = url.split("?", 1)[0].split("#", 1)[0]
    scheme, _, rest = bare.rpartition("://")
    after = rest.rpartition("@")[2]
    return f"{scheme}://{after}" if scheme else after


def _check_redis_urls(urls: list[str]) -> None:
    """Each a ``redis://`` or ``rediss://`` URL naming a host, or ``unix://`` a path: a
    typo (``redis//host``, ``redis:/host``) would otherwise start the server on a Redis
    of redis-py's choosing (localhost), or none, its health check green."""
    for url in urls:
        try:
            parts = urlsplit(url)
            scheme = parts.scheme.lower()
            named = parts.path if scheme == "unix" else parts.hostname
        except ValueError:  # an unclosed "[" of an IPv6 address
            scheme, named = "", None
        if scheme not in ("redis", "rediss", "unix") or not named:
            raise ImproperlyConfigured(
                f"REDIS_URL={_redacted(url)!r}: not a Redis URL; "
                "redis://[:password@]host[:port][/db], rediss://... or unix:///path"
            )


_check_redis_urls(REDIS_URLS)
# "pubsub" (default) or "core": see docs/architecture.md for why pubsub.
REDIS_LAYER = os.environ.get("STREAMPOD_REDIS_LAYER", "pubsub")


def _redis_prefix(url: str) -> str:
    """The channel layer's prefix: ``STREAMPOD_REDIS_PREFIX``, else from the database number.

    Redis pub/sub ignores database numbers: two deployments on one Redis server, on
    databases 1 and 2, would publish to the same ``asgi__group__user_<id>`` and hear
    each other. So the prefix is ``asgi`` on database 0 (channels-redis' default: the
    names deployments have always used) and ``asgi_db<n>`` on database ``n``.

    ``url`` may list several shards, comma-separated: the layer has one prefix, so they
    must all name the same database number (``ImproperlyConfigured`` otherwise).
    """
    explicit = os.environ.get("STREAMPOD_REDIS_PREFIX", "").strip()
    if explicit:
        # It starts every channel name, which channels allows only these characters in.
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,40}", explicit):
            raise ImproperlyConfigured(
                f"STREAMPOD_REDIS_PREFIX={explicit!r}: 1 to 40 letters, digits, '_', '.' or '-'"
            )
        return explicit
    urls = [part.strip() for part in url.split(",") if part.strip()]
    if not urls:
        return "asgi"
    dbs = set()
    for each in urls:
        try:
            dbs.add(int(parse_url(each).get("db") or 0))
        except ValueError as exc:
            raise ImproperlyConfigured(f"REDIS_URL={_redacted(each)!r}: {exc}") from exc
    if len(dbs) > 1:
        raise ImproperlyConfigured(
            f"REDIS_URL={','.join(map(_redacted, urls))!r}: the shards name different "
            "database numbers "
            f"({sorted(dbs)}); give them all the same one"
        )
    db = dbs.pop()
    return "asgi" if db == 0 else f"asgi_db{db}"


REDIS_PREFIX = _redis_prefix(REDIS_URL)
_REDIS_HOST = {
    "address": REDIS_URL,  # one shard's: the layers get one of these per URL
    # redis-py 8's 5 s default kills idle subscribers (channels_redis#422).
    "socket_timeout": None,
    # A dead Redis must fail fast, not hang a publish.
    "socket_connect_timeout": 2,
    # The default cap of 100 gives HTTP 500 on connect storms.
    "max_connections": 2000,
    "health_check_interval": 15,
    "retry_on_timeout": True,
    # A Redis that vanishes without a reset (host down, partition, failover) is given up
    # on in ~11 s, not after Linux's 15 minutes of retransmissions (streaming.redis_options).
    **KEEPALIVE_HOST_OPTIONS,
}
_REDIS_HOSTS = [{**_REDIS_HOST, "address": url} for url in REDIS_URLS]
if REDIS_URLS and REDIS_LAYER == "core":
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": _REDIS_HOSTS,
                "prefix": REDIS_PREFIX,
                # The bus's one channel per process carries all cross-server traffic:
                # the default capacity of 100 drops silently under load.
                "channel_capacity": {"streaming.bus.*": 100_000},
            },
        }
    }
elif REDIS_URLS:
    # The pub/sub layer: measured faster than the core layer here and, unlike it, it
    # never drops past a per-process capacity (docs/architecture.md).
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": _REDIS_HOSTS, "prefix": REDIS_PREFIX},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# The cache holds the REST API's throttle counts: with REDIS_URL, in Redis, so that
# every server of a cluster counts the same requests (a client cannot multiply its
# allowance by the number of servers); otherwise per process. With several shards, on
# the first: Django's RedisCache reads a list of LOCATIONs as one primary (the first,
# which takes every write) and read replicas (the rest), not as shards, so it gets one.
if REDIS_URLS:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URLS[0],
            "KEY_PREFIX": REDIS_PREFIX,
            # An unreachable Redis fails the request quickly instead of hanging it.
            "OPTIONS": {"socket_connect_timeout": 2, "socket_timeout": 2},
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

_MAX_MESSAGE_BYTES = 65536
STREAMING = {
    "MAX_MESSAGE_BYTES": _MAX_MESSAGE_BYTES,
    # The admin's live page of the cluster's figures (streaming/ops.py, /admin/streampod/live/).
    "ENDPOINTS": ["streaming.ops.ClusterMetricsEndpoint"],
}
# daphne drops frames above its own limit with 1006: keep it just above ours so that
# Streampod answers oversize frames with an error and 4009.
DAPHNE_WEBSOCKET_MAX_MESSAGE_SIZE = _MAX_MESSAGE_BYTES + 1024


def _rate(name: str, default: str) -> str | None:
    """A DRF throttle rate ("<n>/<second|minute|hour|day>") from the environment;
    ``off`` turns that throttle off."""
    value = os.environ.get(name, "").strip().lower() or default
    if value in ("off", "none"):
        return None
    if not re.fullmatch(r"[0-9]+/(s|sec|second|m|min|minute|h|hour|d|day)", value):
        raise ImproperlyConfigured(
            f"{name}={value!r}: a rate like 10/min (per second, minute, hour or day), or off"
        )
    return value


REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.TokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
    # Scopes of DRF's ScopedRateThrottle (chat/api.py): over a rate, 429 with Retry-After.
    "DEFAULT_THROTTLE_RATES": {
        # POST /api/auth/token/, per client address: password guessing.
        "auth_token": _rate("STREAMPOD_THROTTLE_AUTH_TOKEN", "10/min"),
        # GET /api/users/ and /api/chat/messages/, per user.
        "chat_api": _rate("STREAMPOD_THROTTLE_CHAT_API", "300/min"),
        # POST /login/ and /admin/login/, per client address (chat/throttling.py).
        "sign_in": _rate("STREAMPOD_THROTTLE_SIGN_IN", "10/min"),
    },
    # The client address the throttle counts by: REMOTE_ADDR (0), or the address that
    # many proxies back in X-Forwarded-For. DRF's default (None) believes any
    # X-Forwarded-For a client sends, which would let it pick a fresh address per guess.
    "NUM_PROXIES": _int("STREAMPOD_NUM_PROXIES", 0),
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# Where `collectstatic` writes: outside the code with DJANGO_STATIC_ROOT (a read-only
# deployment of the code; helper "operator13").
STATIC_ROOT = Path(os.environ.get("DJANGO_STATIC_ROOT", "").strip() or BASE_DIR / "staticfiles")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "login"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "filters": {"require_debug_false": {"()": "django.utils.log.RequireDebugFalse"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain"},
        # Django's own, which a logger of its own here would otherwise leave out.
        "mail_admins": {
            "level": "ERROR",
            "filters": ["require_debug_false"],
            "class": "django.utils.log.AdminEmailHandler",
        },
    },
    "loggers": {
        "streaming": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "chat": {"handlers": ["console"], "level": "INFO", "propagate": False},
        # A 500's traceback: with DEBUG off Django only mails it to ADMINS (helper
        # "operator13": the log had the access line alone).
        "django.request": {
            "handlers": ["console", "mail_admins"],
            "level": "ERROR",
            "propagate": False,
        },
    },
}
