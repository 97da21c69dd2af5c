"""The project's settings for deployment (issue 11).

* With the production environment of docs/deployment.md, ``manage.py check --deploy``
  is clean (a subprocess runs it with the block as documented).
* With ``DJANGO_DEBUG=0`` and no ``DJANGO_SECRET_KEY``, nothing starts: not
  ``manage.py``, not daphne, not uvicorn.
* The channel layer's prefix comes from the database number in ``REDIS_URL``, or from
  ``STREAMPOD_REDIS_PREFIX``; unreadable values stop the settings with a message.
"""

from __future__ import annotations

import os
import re
import runpy
import secrets
import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured

from tests.support.servers import ROOT, SERVERS, free_port

SETTINGS_FILE = ROOT / "streampod_project" / "settings.py"
DEPLOYMENT_DOC = ROOT / "docs" / "deployment.md"
SETTINGS_MODULE = "streampod_project.settings"


def _is_configuration(name: str) -> bool:
    return name.startswith(("DJANGO_", "STREAMPOD_")) or name in ("REDIS_URL", "DATABASE_URL")


def clean_env(**env: str) -> dict[str, str]:
    """This process's environment without the project's variables, plus ``env``."""
    base = {k: v for k, v in os.environ.items() if not _is_configuration(k)}
    return {**base, "PYTHONUNBUFFERED": "1", "DJANGO_SETTINGS_MODULE": SETTINGS_MODULE, **env}


def documented_production_env() -> dict[str, str]:
    """The ``sh`` block under "The production environment" in docs/deployment.md."""
    text = DEPLOYMENT_DOC.read_text(encoding="utf-8")
    section = text.split("### The production environment", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "docs/deployment.md: no sh block under 'The production environment'"
    env = {}
    for line in block.group(1).splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            env[name.strip()] = value.strip()
    return env


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_is_clean_with_the_documented_production_environment():
    documented = documented_production_env()
    assert documented["DJANGO_DEBUG"] == "0"
    assert documented["DJANGO_SECRET_KEY"].startswith("<")  # a placeholder to replace
    env = clean_env(**{**documented, "DJANGO_SECRET_KEY": secrets.token_urlsafe(50)})
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout, result.stdout

    # And each of the documented HTTPS variables is needed: without it, a warning.
    for name, warning in [
        ("DJANGO_SECURE_SSL_REDIRECT", "security.W008"),
        ("DJANGO_SECURE_HSTS_SECONDS", "security.W004"),
        ("DJANGO_SESSION_COOKIE_SECURE", "security.W012"),
        ("DJANGO_CSRF_COOKIE_SECURE", "security.W016"),
    ]:
        partial = {k: v for k, v in env.items() if k != name}
        result = manage("check", "--deploy", "--fail-level", "WARNING", env=partial)
        assert result.returncode != 0 and warning in result.stderr, (name, result.stderr)


def test_without_a_secret_key_manage_py_refuses_when_debug_is_off():
    result = manage("check", env=clean_env(DJANGO_DEBUG="0"))
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "DJANGO_SECRET_KEY is not set" in result.stderr
    # An empty key is no key.
    result = manage("check", env=clean_env(DJANGO_DEBUG="0", DJANGO_SECRET_KEY=" "))
    assert result.returncode != 0 and "DJANGO_SECRET_KEY is not set" in result.stderr


@pytest.mark.parametrize("name", sorted(SERVERS))
def test_without_a_secret_key_no_server_starts(name):
    """The production servers import the settings first, and stop there."""
    command = SERVERS[name](port=free_port()).command()
    result = subprocess.run(
        command,
        cwd=ROOT,
        env=clean_env(DJANGO_DEBUG="0"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,  # it would serve forever if it started
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "DJANGO_SECRET_KEY is not set" in output, output


def test_development_needs_no_key():
    """``make run``: debug on by default, and then the development key is fine."""
    result = manage("check", env=clean_env())
    assert result.returncode == 0, result.stderr
    result = manage("check", env=clean_env(DJANGO_DEBUG="0", DJANGO_SECRET_KEY="k" * 60))
    assert result.returncode == 0, result.stderr


# The settings file itself, read in this process with a chosen environment (a plain
# module: reading it changes nothing in the running Django).


@pytest.fixture
def load(monkeypatch):
    def load(**env: str) -> dict:
        for name in list(os.environ):
            if _is_configuration(name):
                monkeypatch.delenv(name)
        monkeypatch.setenv("DJANGO_SETTINGS_MODULE", SETTINGS_MODULE)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return runpy.run_path(str(SETTINGS_FILE), run_name=SETTINGS_MODULE)

    return load


def test_settings_that_extend_the_project_refuse_the_public_key_too(load, monkeypatch):
    with pytest.raises(ImproperlyConfigured, match="DJANGO_SECRET_KEY is not set"):
        load(DJANGO_DEBUG="0")
    development_key = load()["_DEVELOPMENT_SECRET_KEY"]
    with pytest.raises(ImproperlyConfigured, match="DJANGO_SECRET_KEY is not set"):
        load(DJANGO_DEBUG="0", DJANGO_SECRET_KEY=development_key)
    # A module that imports this one (tests.e2e_settings, bench.settings, a user's own)
    # gets no exemption: it must pass a key of its own.
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "tests.e2e_settings")
    with pytest.raises(ImproperlyConfigured, match="DJANGO_SECRET_KEY is not set"):
        runpy.run_path(str(SETTINGS_FILE), run_name=SETTINGS_MODULE)


def layer(settings: dict) -> tuple[str, str]:
    config = settings["CHANNEL_LAYERS"]["default"]
    return config["BACKEND"].rsplit(".", 1)[1], config["CONFIG"]["prefix"]


@pytest.mark.parametrize(
    "url, prefix",
    [
        ("redis://127.0.0.1:6379", "asgi"),
        ("redis://127.0.0.1:6379/0", "asgi"),
        ("redis://127.0.0.1:6379/14", "asgi_db14"),
        ("redis://:password@redis.internal:6379/3", "asgi_db3"),
        ("redis://127.0.0.1:6379?db=2", "asgi_db2"),
        ("unix:///run/redis.sock?db=5", "asgi_db5"),
    ],
)
def test_the_prefix_comes_from_the_database_number(load, url, prefix):
    settings = load(REDIS_URL=url)
    assert layer(settings) == ("RedisPubSubChannelLayer", prefix)
    cache = settings["CACHES"]["default"]
    assert cache["BACKEND"] == "django.core.cache.backends.redis.RedisCache"
    assert (cache["LOCATION"], cache["KEY_PREFIX"]) == (url, prefix)
    core = load(REDIS_URL=url, STREAMPOD_REDIS_LAYER="core")
    assert layer(core) == ("RedisChannelLayer", prefix)


def test_streampod_redis_prefix_sets_it(load):
    settings = load(REDIS_URL="redis://127.0.0.1:6379/7", STREAMPOD_REDIS_PREFIX="staging")
    assert layer(settings) == ("RedisPubSubChannelLayer", "staging")
    assert settings["CACHES"]["default"]["KEY_PREFIX"] == "staging"


def test_static_root_may_be_outside_the_code(load, tmp_path):
    assert load()["STATIC_ROOT"] == SETTINGS_FILE.parent.parent / "staticfiles"
    assert load(DJANGO_STATIC_ROOT=str(tmp_path))["STATIC_ROOT"] == tmp_path


def test_without_redis_one_process(load):
    settings = load()
    assert settings["CHANNEL_LAYERS"]["default"]["BACKEND"].endswith("InMemoryChannelLayer")
    assert settings["CACHES"]["default"]["BACKEND"].endswith("LocMemCache")
    assert settings["SECURE_SSL_REDIRECT"] is False
    assert "SECURE_PROXY_SSL_HEADER" not in settings


def test_the_https_variables(load):
    settings = load(
        DJANGO_SECURE_PROXY_SSL_HEADER="X-Forwarded-Proto",
        DJANGO_SECURE_SSL_REDIRECT="yes",
        DJANGO_SECURE_HSTS_SECONDS="300",
        DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS="true",
        DJANGO_SECURE_HSTS_PRELOAD="0",
        DJANGO_SESSION_COOKIE_SECURE="on",
        DJANGO_CSRF_COOKIE_SECURE="1",
        STREAMPOD_THROTTLE_AUTH_TOKEN="5/hour",
        STREAMPOD_THROTTLE_CHAT_API="off",
        STREAMPOD_NUM_PROXIES="2",
    )
    assert settings["SECURE_PROXY_SSL_HEADER"] == ("HTTP_X_FORWARDED_PROTO", "https")
    assert settings["SECURE_SSL_REDIRECT"] is True
    assert settings["SECURE_HSTS_SECONDS"] == 300
    assert settings["SECURE_HSTS_INCLUDE_SUBDOMAINS"] is True
    assert settings["SECURE_HSTS_PRELOAD"] is False
    assert settings["SESSION_COOKIE_SECURE"] is settings["CSRF_COOKIE_SECURE"] is True
    rest = settings["REST_FRAMEWORK"]
    assert rest["DEFAULT_THROTTLE_RATES"] == {
        "auth_token": "5/hour",
        "chat_api": None,
        "sign_in": "10/min",
    }
    assert rest["NUM_PROXIES"] == 2


@pytest.mark.parametrize(
    "env, named",
    [
        ({"DJANGO_DEBUG": "maybe"}, "DJANGO_DEBUG"),
        ({"DJANGO_SECURE_SSL_REDIRECT": "ture"}, "DJANGO_SECURE_SSL_REDIRECT"),
        ({"DJANGO_SECURE_HSTS_SECONDS": "a year"}, "DJANGO_SECURE_HSTS_SECONDS"),
        ({"DJANGO_SECURE_HSTS_SECONDS": "-1"}, "DJANGO_SECURE_HSTS_SECONDS"),
        ({"DJANGO_SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto: https"}, "PROXY_SSL_HEADER"),
        ({"STREAMPOD_THROTTLE_AUTH_TOKEN": "lots"}, "STREAMPOD_THROTTLE_AUTH_TOKEN"),
        ({"STREAMPOD_THROTTLE_CHAT_API": "10/fortnight"}, "STREAMPOD_THROTTLE_CHAT_API"),
        ({"STREAMPOD_NUM_PROXIES": "one"}, "STREAMPOD_NUM_PROXIES"),
        ({"STREAMPOD_REDIS_PREFIX": "my deployment"}, "STREAMPOD_REDIS_PREFIX"),
        ({"REDIS_URL": "redis://127.0.0.1:6379?db=x"}, "REDIS_URL"),
        ({"REDIS_URL": "http://127.0.0.1:6379/1"}, "REDIS_URL"),
        # Mistyped (helper "operator10"): one started on no Redis, the other on redis-py's
        # choice (localhost), its /readyz green. Refused, the password left out.
        ({"REDIS_URL": "redis//:s3cretpw@127.0.0.1:6379/0"}, "REDIS_URL"),
        ({"REDIS_URL": "redis:/:s3cretpw@127.0.0.1:6379/0"}, "REDIS_URL"),
        ({"REDIS_URL": "redis://10.0.0.1:6379/0,redis//10.0.0.2"}, "REDIS_URL"),
        ({"REDIS_URL": "unix://"}, "REDIS_URL"),
        ({"REDIS_URL": "redis:/host?password=s3cretpw"}, "REDIS_URL"),
        ({"REDIS_URL": "redis://[::1"}, "REDIS_URL"),
    ],
)
def test_unreadable_values_stop_the_settings(load, env, named):
    with pytest.raises(ImproperlyConfigured, match=named) as refused:
        load(**env)
    assert "s3cretpw" not in str(refused.value)
