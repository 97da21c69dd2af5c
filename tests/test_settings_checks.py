"""The ``STREAMING`` settings namespace and the system checks that report misconfiguration.

Checks are run the way ``manage.py check`` runs them (``run_checks`` with the
``streaming`` tag), so a check that is not registered fails these tests too.
"""

import copy
import json
import os
import subprocess
import sys

import pytest
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

import streaming.registry
from streaming import checks as checks_module
from streaming.conf import DEFAULTS, streaming_settings
from streaming.endpoint import Endpoint
from streaming.redis_options import KEEPALIVE_HOST_OPTIONS
from streaming.registry import EndpointRegistry
from tests.support.servers import ROOT


class EchoLike(Endpoint):
    pass


def streaming_checks():
    return checks.run_checks(tags=["streaming"])


def ids(messages):
    return [m.id for m in messages]


def test_the_shipped_settings_pass_every_check():
    assert streaming_checks() == []


def test_defaults_apply_and_the_project_value_wins():
    assert streaming_settings.SEND_QUEUE_LIMIT == DEFAULTS["SEND_QUEUE_LIMIT"]
    with override_settings(STREAMING={"SEND_QUEUE_LIMIT": 7}):
        assert streaming_settings.SEND_QUEUE_LIMIT == 7
        assert streaming_settings.MAX_MESSAGE_BYTES == DEFAULTS["MAX_MESSAGE_BYTES"]
    with pytest.raises(AttributeError):
        streaming_settings.NO_SUCH_SETTING  # noqa: B018


def test_override_settings_takes_effect_and_is_undone():
    before = streaming_settings.MAX_MESSAGE_BYTES  # cached now
    with override_settings(STREAMING={"MAX_MESSAGE_BYTES": 1000}):
        assert streaming_settings.MAX_MESSAGE_BYTES == 1000
        with override_settings(STREAMING={"MAX_MESSAGE_BYTES": 2000}):
            assert streaming_settings.MAX_MESSAGE_BYTES == 2000
        assert streaming_settings.MAX_MESSAGE_BYTES == 1000
    assert streaming_settings.MAX_MESSAGE_BYTES == before


def test_the_settings_fixture_takes_effect(settings):
    settings.STREAMING = {"FLOOD_CLOSE_AFTER": 3}
    assert streaming_settings.FLOOD_CLOSE_AFTER == 3


def test_unknown_key_is_e001_and_improperly_configured():
    with override_settings(STREAMING={"MAX_MESAGE_BYTES": 1000}):
        messages = streaming_checks()
        assert ids(messages) == ["streaming.E001"]
        assert isinstance(messages[0], checks.Error)
        assert "MAX_MESAGE_BYTES" in messages[0].msg
        assert "MAX_MESSAGE_BYTES" in messages[0].hint  # the hint lists the known keys
        with pytest.raises(ImproperlyConfigured, match="MAX_MESAGE_BYTES"):
            streaming_settings.MAX_MESSAGE_BYTES  # noqa: B018
        with pytest.raises(ImproperlyConfigured):
            streaming_settings.SEND_QUEUE_LIMIT  # noqa: B018 - any key: the namespace is wrong


def test_every_unknown_key_is_reported():
    with override_settings(STREAMING={"A": 1, "B": 2, "MAX_MESSAGE_BYTES": 1000}):
        messages = streaming_checks()
    assert ids(messages) == ["streaming.E001", "streaming.E001"]
    assert "'A'" in messages[0].msg and "'B'" in messages[1].msg


@pytest.mark.parametrize(
    "value",
    [
        {"MAX_MESSAGE_BYTES": "65536"},
        {"MAX_MESSAGE_BYTES": 65536.0},
        {"MAX_MESSAGE_BYTES": True},
        {"MAX_MESSAGE_BYTES": 0},
        {"SEND_QUEUE_LIMIT": -1},
        {"MAX_SEND_BYTES": 4095},  # the answer to a frame too large to send must fit
        {"RATE_LIMIT_PER_SECOND": "fast"},
        {"RATE_LIMIT_BURST": None},
        {"PUBLISH_TIMEOUT": "2"},
        {"CHANNEL_LAYER": 1},
        {"ENDPOINTS": "myapp.endpoints.ChatEndpoint"},
        {"ENDPOINTS": [5]},
        {"ENDPOINTS": [EchoLike]},  # the class itself instead of its dotted path
    ],
)
def test_wrong_type_or_range_is_e002_and_improperly_configured(value):
    (key,) = value
    with override_settings(STREAMING=value):
        messages = streaming_checks()
        assert ids(messages) == ["streaming.E002"]
        assert key in messages[0].msg
        with pytest.raises(ImproperlyConfigured):
            streaming_settings.MAX_MESSAGE_BYTES  # noqa: B018


def test_streaming_must_be_a_dict():
    with override_settings(STREAMING=[("MAX_MESSAGE_BYTES", 1)]):
        assert ids(streaming_checks()) == ["streaming.E002"]
        with pytest.raises(ImproperlyConfigured):
            streaming_settings.MAX_MESSAGE_BYTES  # noqa: B018


@pytest.mark.parametrize(
    "value",
    [
        {"RATE_LIMIT_PER_SECOND": None},  # None turns the limit off
        {"RATE_LIMIT_PER_SECOND": 10},
        {"PUBLISH_TIMEOUT": 1},
        {"ENDPOINTS": ("tests.e2e_app.endpoints.EchoEndpoint",)},
    ],
)
def test_accepted_values_pass(value):
    with override_settings(STREAMING=value):
        assert streaming_checks() == []


@pytest.mark.parametrize(("daphne_limit", "warned"), [(65536, True), (1000, True), (65537, False)])
def test_w001_when_daphnes_limit_is_not_above_max_message_bytes(daphne_limit, warned):
    with override_settings(DAPHNE_WEBSOCKET_MAX_MESSAGE_SIZE=daphne_limit):
        messages = streaming_checks()
    assert ids(messages) == (["streaming.W001"] if warned else [])
    if warned:
        assert isinstance(messages[0], checks.Warning)
        assert str(daphne_limit) in messages[0].msg


def test_w001_follows_max_message_bytes():
    with override_settings(STREAMING={"MAX_MESSAGE_BYTES": 2_000_000}):
        assert ids(streaming_checks()) == ["streaming.W001"]  # daphne's own default is 1 MiB


def test_w002_when_the_channel_layer_alias_is_missing():
    with override_settings(STREAMING={"CHANNEL_LAYER": "nope"}):
        assert ids(streaming_checks()) == ["streaming.W002"]


REDIS_LAYER = {
    "default": {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": [{"address": "redis://r:6379/0", **KEEPALIVE_HOST_OPTIONS}]},
    }
}


@pytest.mark.parametrize(
    "hosts",
    [
        None,  # channels-redis' default: localhost, redis-py's options
        ["redis://r:6379/0"],
        [{"address": "redis://r:6379/0", "socket_keepalive": True}],  # redis-py's defaults
        [{"address": "redis://a/0", **KEEPALIVE_HOST_OPTIONS}, {"address": "redis://b/0"}],
        [{"address": "redis://r/0", **KEEPALIVE_HOST_OPTIONS, "socket_keepalive": False}],
    ],
)
def test_w005_when_the_layers_redis_connections_have_no_user_timeout(hosts):
    """Helper "operator7": a Redis that vanished without a reset stalled the bus for 16
    minutes (tests/e2e/test_redis_partition.py); settings without the options say so."""
    layer = {"BACKEND": "channels_redis.core.RedisChannelLayer"}
    if hosts is not None:
        layer["CONFIG"] = {"hosts": hosts}
    with override_settings(CHANNEL_LAYERS={"default": layer}):
        messages = streaming_checks()
    assert ids(messages) == ["streaming.W005"]
    assert "KEEPALIVE_HOST_OPTIONS" in messages[0].hint


def test_hiredis_is_installed_with_streampod_and_a_redis_layer_passes():
    import hiredis  # noqa: F401  (a dependency in pyproject.toml)

    with override_settings(CHANNEL_LAYERS=REDIS_LAYER):
        assert streaming_checks() == []


@pytest.mark.parametrize("prefix", ["", "  "])
def test_e005_for_a_redis_layer_with_an_empty_prefix(prefix):
    """Helper "operator10": the README's settings read ``os.environ["STREAMPOD_REDIS_PREFIX"]``
    so that a deployment without one does not start; an empty value (``PREFIX=`` in an env
    file) got past it and shared its channels with any other such deployment."""
    layer = copy.deepcopy(REDIS_LAYER)
    layer["default"]["CONFIG"]["prefix"] = prefix
    with override_settings(CHANNEL_LAYERS=layer):
        messages = streaming_checks()
    assert ids(messages) == ["streaming.E005"]
    assert "STREAMPOD_REDIS_PREFIX" in messages[0].hint


def test_w006_when_no_host_is_allowed_with_debug_off():
    """Helper "operator10": ``DJANGO_ALLOWED_HOSTS=`` with debug off started a server that
    answered every page 400 and every handshake 403, its probes green, nothing logged."""
    with override_settings(DEBUG=False, ALLOWED_HOSTS=[]):
        messages = streaming_checks()
    assert ids(messages) == ["streaming.W006"]
    with override_settings(DEBUG=True, ALLOWED_HOSTS=[]):  # Django allows localhost then
        assert streaming_checks() == []


def test_w003_when_a_redis_layer_runs_without_hiredis(monkeypatch):
    """redis-py decides at import whether hiredis is there (``HIREDIS_AVAILABLE``); an
    install without it is simulated by that flag, which is what the check reads."""
    import redis.utils

    monkeypatch.setattr(redis.utils, "HIREDIS_AVAILABLE", False)
    with override_settings(CHANNEL_LAYERS=REDIS_LAYER):
        messages = streaming_checks()
    assert ids(messages) == ["streaming.W003"]
    assert "hiredis" in messages[0].msg
    in_memory = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    with override_settings(CHANNEL_LAYERS=in_memory):
        assert streaming_checks() == []


IN_MEMORY = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


@pytest.mark.parametrize(
    "env, sign",
    [
        ({"WEB_CONCURRENCY": "4"}, "WEB_CONCURRENCY is 4"),
        ({"REDIS_URL": "redis://r/0"}, "REDIS_URL is set"),
    ],
)
def test_w004_when_an_in_memory_layer_meets_signs_of_several_processes(monkeypatch, env, sign):
    """A newcomer followed deployment.md in their own project: four processes, REDIS_URL
    set, the README's in-memory layer kept; posts stayed in the process they were made in
    and nothing said so."""
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with override_settings(CHANNEL_LAYERS=IN_MEMORY):
        messages = streaming_checks()
    assert ids(messages) == ["streaming.W004"]
    assert sign in messages[0].msg and "RedisPubSubChannelLayer" in messages[0].hint
    with override_settings(CHANNEL_LAYERS=REDIS_LAYER):  # the layer that shares: no warning
        assert streaming_checks() == []


def test_w004_is_not_logged_when_silenced(monkeypatch, caplog):
    """One process on purpose, with REDIS_URL for a cache only: SILENCED_SYSTEM_CHECKS
    quiets the check and the server's start-up line alike."""
    monkeypatch.setenv("REDIS_URL", "redis://r/0")
    monkeypatch.setattr(sys, "argv", ["/srv/venv/bin/uvicorn", "myproject.asgi:application"])
    with override_settings(CHANNEL_LAYERS=IN_MEMORY):
        with caplog.at_level("WARNING", logger="streaming"):
            checks_module.warn_if_split()
        assert "streaming.W004" in caplog.text
        caplog.clear()
        with override_settings(SILENCED_SYSTEM_CHECKS=["streaming.W004"]):
            with caplog.at_level("WARNING", logger="streaming"):
                checks_module.warn_if_split()
            assert caplog.text == ""


def test_a_server_logs_a_typo_in_streaming_at_start_up(monkeypatch, caplog):
    """Helper "operator7": a server started with ``"RESTART_RAT"`` in STREAMING said
    nothing; /healthz was green and every handshake got HTTP 500. It now logs E001 at
    start-up, at ERROR."""
    monkeypatch.setattr(sys, "argv", ["/srv/venv/bin/uvicorn", "myproject.asgi:application"])
    with override_settings(STREAMING={"RESTART_RAT": 10.0}, CHANNEL_LAYERS=REDIS_LAYER):
        with caplog.at_level("WARNING", logger="streaming"):
            checks_module.warn_if_split()
    [record] = caplog.records
    assert record.levelname == "ERROR"
    assert "streaming.E001" in record.message and "'RESTART_RAT'" in record.message


def test_w004_is_logged_by_servers_only(monkeypatch, caplog):
    """A review: migrate, shell and task workers logged it too, with no socket to lose
    (manage.py runs the check itself)."""
    monkeypatch.setenv("REDIS_URL", "redis://r/0")
    with override_settings(CHANNEL_LAYERS=IN_MEMORY):
        for argv, logged in [
            (["manage.py", "migrate"], False),
            (["/srv/venv/bin/celery", "-A", "myproject", "worker"], False),
            (["/srv/venv/bin/uvicorn", "myproject.asgi:application"], True),
            (["/srv/venv/lib/python3.11/site-packages/uvicorn/__main__.py", "x:app"], True),
            (["/srv/venv/bin/daphne", "myproject.asgi:application"], True),
        ]:
            monkeypatch.setattr(sys, "argv", argv)
            caplog.clear()
            with caplog.at_level("WARNING", logger="streaming"):
                checks_module.warn_if_split()
            assert ("streaming.W004" in caplog.text) is logged, argv


def test_a_reloader_parent_is_not_a_sign_of_several_processes():
    """A review: ``uvicorn --reload`` runs its one server process through multiprocessing,
    as ``--workers`` does; its parent's command line tells them apart."""
    child = "import sys; print('up', flush=True); sys.stdin.read()"
    with subprocess.Popen([sys.executable, "-c", child, "--reload"], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE) as reloader:  # fmt: skip
        try:
            assert reloader.stdout.readline() == b"up\n"  # running its own command line
            assert checks_module._reloader(reloader.pid)
        finally:
            reloader.stdin.close()
    assert not checks_module._reloader(os.getpid())


#: Run by the fake gunicorn master below: the signs a worker of it sees.
GUNICORN_WORKER = """
import django, json, os
os.environ["DJANGO_SETTINGS_MODULE"] = "streampod_project.settings"
os.environ.pop("REDIS_URL", None)
django.setup()
from streaming.checks import multi_process_signs
print(json.dumps(multi_process_signs({"GUNICORN_CMD_ARGS": os.environ.get("CMD_ARGS", "")})))
"""


@pytest.mark.parametrize(
    "args, cmd_args, sign",
    [
        (["-w", "3", "myproject.asgi:application"], "", "one of 3 gunicorn workers"),
        (["--workers=2", "-k", "uvicorn_worker.UvicornWorker"], "", "one of 2 gunicorn workers"),
        (["-w4"], "", "one of 4 gunicorn workers"),
        ([], "--workers 5 --bind 0.0.0.0:8000", "one of 5 gunicorn workers"),
        (["-w", "1"], "--workers 5", None),  # the command line wins
        ([], "", None),  # gunicorn's default: one worker
    ],
)
def test_w004_sees_a_worker_of_a_gunicorn_master_with_several(tmp_path, args, cmd_args, sign):
    """Left open on 2026-11-30: gunicorn forks its workers, so ``gunicorn -w 3`` with
    the in-memory layer went unwarned (no multiprocessing parent, no
    WEB_CONCURRENCY). A stand-in master named ``gunicorn`` runs a worker; the worker reads
    its parent's command line."""
    master = tmp_path / "gunicorn"
    master.write_text(
        f"#!{sys.executable}\n"
        "import subprocess, sys\n"
        f"sys.exit(subprocess.run([sys.executable, '-c', {GUNICORN_WORKER!r}]).returncode)\n"
    )
    master.chmod(0o755)
    env = {**os.environ, "CMD_ARGS": cmd_args}
    done = subprocess.run([str(master), *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    signs = json.loads(done.stdout)
    assert signs == ([f"this process is {sign}"] if sign else []), signs


def test_w004_reads_nothing_into_one_worker_or_an_empty_redis_url():
    with override_settings(CHANNEL_LAYERS=IN_MEMORY):
        assert checks_module.multi_process_signs({"WEB_CONCURRENCY": "1", "REDIS_URL": ""}) == []
        assert checks_module.multi_process_signs({"WEB_CONCURRENCY": "auto"}) == []
        assert checks_module.multi_process_signs({}) == []


@pytest.fixture
def fresh_registry(monkeypatch):
    """The registry the checks read, swapped for an empty one for this test."""
    registry = EndpointRegistry()
    monkeypatch.setattr(streaming.registry, "endpoints", registry)
    return registry


def test_two_endpoints_with_one_name_is_e003_naming_both(fresh_registry):
    class FirstEndpoint(Endpoint):
        name = "dup"

    class SecondEndpoint(Endpoint):
        name = "dup"

    fresh_registry.register(FirstEndpoint)
    fresh_registry.register(SecondEndpoint)
    messages = streaming_checks()
    assert ids(messages) == ["streaming.E003"]
    assert "'dup'" in messages[0].msg
    assert f"{__name__}.{FirstEndpoint.__qualname__}" in messages[0].msg
    assert f"{__name__}.{SecondEndpoint.__qualname__}" in messages[0].msg
    # the first one keeps the name
    assert fresh_registry.get("dup") is FirstEndpoint


def test_registering_the_same_class_twice_is_not_a_conflict(fresh_registry):
    class OnceEndpoint(Endpoint):
        pass

    fresh_registry.register(OnceEndpoint)
    fresh_registry.register(OnceEndpoint)
    assert fresh_registry.all() == [OnceEndpoint]
    assert streaming_checks() == []


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("no_such_module.SomeEndpoint", "No module named"),
        ("streaming.endpoint.NoSuchEndpoint", "does not define"),
        ("streaming.endpoint.Endpoint", "not a concrete Endpoint subclass"),  # abstract
        ("streaming.conf.DEFAULTS", "not a concrete Endpoint subclass"),
        ("streaming.serialization.SerializableEntity", "not a concrete Endpoint subclass"),
    ],
)
def test_bad_endpoints_entry_is_e004(fresh_registry, path, reason):
    with override_settings(STREAMING={"ENDPOINTS": [path]}):
        fresh_registry.autodiscover()
        messages = streaming_checks()
    assert ids(messages) == ["streaming.E004"]
    assert path in messages[0].msg and reason in messages[0].msg
    assert fresh_registry.get("endpoint") is None


@pytest.mark.parametrize(
    ("streaming", "expected"),
    [
        ({"ENDPOINT": []}, "streaming.E001"),  # a typo
        ({"MAX_MESSAGE_BYTES": "65536"}, "streaming.E002"),
        ({"ENDPOINTS": "myapp.endpoints.Chat"}, "streaming.E002"),  # not a list
    ],
)
def test_manage_py_check_reports_a_bad_streaming_setting_instead_of_crashing(
    tmp_path, streaming, expected
):
    """Seen (a newcomer's try): with a typo in ``STREAMING`` every ``manage.py`` command,
    ``check`` included, died in ``django.setup()`` (the app's ``ready()`` read the
    settings) with a traceback, where docs/settings.md promises the system check's
    error and its hint (E001 lists the known keys)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    (tmp_path / "bad_settings.py").write_text(
        "from streampod_project.settings import *  # noqa\n"
        f"STREAMING = {{**STREAMING, **{streaming!r}}}\n"
    )
    env = {
        **__import__("os").environ,
        "DJANGO_SETTINGS_MODULE": "bad_settings",
        "PYTHONPATH": f"{tmp_path}:{root}",
    }
    done = subprocess.run(
        [sys.executable, str(root / "manage.py"), "check"],
        cwd=root, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert expected in done.stderr, done.stderr
    if expected == "streaming.E001":
        assert "HINT: Known keys: " in done.stderr and "MAX_MESSAGE_BYTES" in done.stderr


@pytest.mark.django_db
def test_the_admins_live_page_says_how_to_enable_it_when_its_endpoint_is_not_registered(
    admin_client, fresh_registry
):
    """Seen (a newcomer's try): in a project that does not register
    ``streaming.ops.ClusterMetricsEndpoint``, the admin index links the live page, and the
    page showed only "Refused: Unknown endpoint 'streampod_metrics'"."""
    page = admin_client.get("/admin/streampod/live/").content.decode()
    assert "Not enabled" in page and "streaming.ops.ClusterMetricsEndpoint" in page
    assert "streampod.js" not in page  # no socket that would be refused
    from streaming.ops import ClusterMetricsEndpoint

    fresh_registry.register(ClusterMetricsEndpoint)
    page = admin_client.get("/admin/streampod/live/").content.decode()
    assert "Not enabled" not in page and "streampod.js" in page
