"""Settings of the Streampod demo project.

Everything comes from the environment, with embedded defaults that need nothing
installed: SQLite and the in-memory channel layer.

* ``DATABASE_URL``: e.g. ``postgres://user@127.0.0.1:5432/streampod`` (default: SQLite).
* ``REDIS_URL``: e.g. ``redis://127.0.0.1:6379/0``; turns on channels-redis so that
  several server processes share messages (default: in-memory, one process).
* ``DJANGO_DEBUG`` (default on), ``DJANGO_SECRET_KEY``, ``DJANGO_ALLOWED_HOSTS``
  (comma-separated), ``DJANGO_CSRF_TRUSTED_ORIGINS`` (comma-separated).
"""

import os
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent


def _flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def _list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = _flag("DJANGO_DEBUG", True)
SECRET_KEY = os.environ.get(
    "DJANGO_SECRET_KEY", "django-insecure-streampod-dev-key-change-me-in-production-0123456789"
)
ALLOWED_HOSTS = _list("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]")
CSRF_TRUSTED_ORIGINS = _list("DJANGO_CSRF_TRUSTED_ORIGINS", "")

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

REDIS_URL = os.environ.get("REDIS_URL", "")
# "pubsub" (default) or "core": see docs/architecture.md for why pubsub.
REDIS_LAYER = os.environ.get("STREAMPOD_REDIS_LAYER", "pubsub")
_REDIS_HOST = {
    "address": REDIS_URL,
    # redis-py 8's 5 s default kills idle subscribers (channels_redis#422).
    "socket_timeout": None,
    # A dead Redis must fail fast, not hang a publish.
    "socket_connect_timeout": 2,
    # The default cap of 100 gives HTTP 500 on connect storms.
    "max_connections": 2000,
    "health_check_interval": 15,
    "retry_on_timeout": True,
}
if REDIS_URL and REDIS_LAYER == "core":
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [_REDIS_HOST],
                # The bus's one channel per process carries all cross-server traffic:
                # the default capacity of 100 drops silently under load.
                "channel_capacity": {"streaming.bus.*": 100_000},
            },
        }
    }
elif REDIS_URL:
    # The pub/sub layer: measured faster than the core layer here and, unlike it, it
    # never drops past a per-process capacity (docs/architecture.md).
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [_REDIS_HOST]},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

STREAMING = {
    "MAX_MESSAGE_BYTES": 65536,
}
# daphne drops frames above its own limit with 1006: keep it just above ours so that
# Streampod answers oversize frames with an error and 4009.
DAPHNE_WEBSOCKET_MAX_MESSAGE_SIZE = STREAMING["MAX_MESSAGE_BYTES"] + 1024

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.TokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
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
STATIC_ROOT = BASE_DIR / "staticfiles"
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
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {"streaming": {"handlers": ["console"], "level": "INFO", "propagate": False}},
}
