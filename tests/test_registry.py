"""Endpoint discovery: each installed app's ``endpoints`` module, then ``STREAMING["ENDPOINTS"]``.

A throwaway app is written to a temporary directory and installed with
``override_settings(INSTALLED_APPS=...)``; each test reads it with a fresh
``EndpointRegistry``. Installing an app re-runs every ``AppConfig.ready()``, which fills
the project's registry too: the fixture rebuilds that registry afterwards.
"""

import sys
import textwrap

import pytest
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.test import override_settings

import streaming.registry
from streaming.endpoint import Endpoint
from streaming.registry import EndpointRegistry
from streaming.serialization import SerializableEntity
from streaming.testing import StreamingCommunicator

APP = "streampod_registry_probe"
OTHER = "streampod_registry_probe_other"

ENDPOINTS_MODULE = f'''
from streaming.endpoint import Endpoint

# Imported, not defined here: registered only where it is defined (or listed).
from {OTHER} import ImportedEndpoint


class BaseEndpoint(Endpoint):
    abstract = True


class ZuluEndpoint(BaseEndpoint):
    pass


class AlphaEndpoint(Endpoint):
    name = "alpha"


class ChatRoomEndpoint(ZuluEndpoint):
    pass


class AbstractMixinEndpoint(ZuluEndpoint):
    abstract = True


class NotAnEndpoint:
    name = "not_an_endpoint"
'''

OTHER_MODULE = """
from streaming.endpoint import Endpoint


class ImportedEndpoint(Endpoint):
    pass


class OtherAlphaEndpoint(Endpoint):
    name = "alpha"
"""

PROBE_NAMES = ["zulu", "alpha", "chat_room"]


@pytest.fixture
def probe_app(tmp_path, monkeypatch):
    """Install an app whose ``endpoints`` module is ENDPOINTS_MODULE."""
    package = tmp_path / APP
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "endpoints.py").write_text(textwrap.dedent(ENDPOINTS_MODULE))
    (tmp_path / f"{OTHER}.py").write_text(textwrap.dedent(OTHER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    project_registry = streaming.registry.endpoints
    before = project_registry.all()
    try:
        with override_settings(INSTALLED_APPS=[*settings.INSTALLED_APPS, APP]):
            yield sys.modules
    finally:
        for name in (APP, f"{APP}.endpoints", OTHER):
            sys.modules.pop(name, None)
        project_registry.clear()
        project_registry.autodiscover()
        assert project_registry.all() == before


def names(registry):
    return [cls.name for cls in registry.all()]


def test_concrete_endpoints_are_registered_in_definition_order(probe_app):
    registry = EndpointRegistry()
    registry.autodiscover()
    # The probe app is installed last, so its endpoints come last, as defined (then the
    # ones STREAMING["ENDPOINTS"] lists: the project's live metrics endpoint).
    found = names(registry)[: len(names(registry)) - len(settings.STREAMING.get("ENDPOINTS", []))]
    assert found[-3:] == PROBE_NAMES
    module = probe_app[f"{APP}.endpoints"]
    assert registry.get("zulu") is module.ZuluEndpoint
    assert registry.get("chat_room") is module.ChatRoomEndpoint
    for left_out in ("base", "abstract_mixin", "imported", "not_an_endpoint"):
        assert registry.get(left_out) is None, left_out
    assert registry.conflicts == [] and registry.import_errors == []
    assert registry.discovered is True


def test_the_project_registry_is_filled_when_apps_are_ready(probe_app):
    # Installing the app ran StreamingConfig.ready(), which discovers endpoints.
    assert names(streaming.registry.endpoints)[-3:] == PROBE_NAMES


def test_streaming_endpoints_setting_adds_classes_after_the_apps(probe_app):
    with override_settings(STREAMING={"ENDPOINTS": [f"{OTHER}.ImportedEndpoint"]}):
        registry = EndpointRegistry()
        registry.autodiscover()
    assert names(registry)[-4:] == [*PROBE_NAMES, "imported"]
    assert registry.get("imported") is probe_app[OTHER].ImportedEndpoint


def test_a_class_found_twice_is_registered_once(probe_app):
    with override_settings(STREAMING={"ENDPOINTS": [f"{APP}.endpoints.AlphaEndpoint"]}):
        registry = EndpointRegistry()
        registry.autodiscover()
    assert names(registry).count("alpha") == 1
    assert registry.conflicts == []


def test_two_classes_under_one_name_are_kept_as_a_conflict(probe_app):
    with override_settings(STREAMING={"ENDPOINTS": [f"{OTHER}.OtherAlphaEndpoint"]}):
        registry = EndpointRegistry()
        registry.autodiscover()
    first = probe_app[f"{APP}.endpoints"].AlphaEndpoint
    second = probe_app[OTHER].OtherAlphaEndpoint
    assert registry.conflicts == [(first, second)]
    assert registry.get("alpha") is first  # the first one keeps the name


def test_bad_entries_are_recorded_not_raised(probe_app):
    paths = [f"{OTHER}.Missing", f"{APP}.endpoints.BaseEndpoint", "no_such_module.X"]
    with override_settings(STREAMING={"ENDPOINTS": paths}):
        registry = EndpointRegistry()
        registry.autodiscover()
    assert [path for path, _ in registry.import_errors] == paths
    assert names(registry)[-3:] == PROBE_NAMES


async def test_an_endpoint_can_be_served_alone_at_a_path_of_its_own():
    """Outside the registry: ``MyEndpoint.as_asgi()``, as with any channels consumer."""

    class Shout(SerializableEntity):
        text: str

    class SoloEndpoint(Endpoint):
        async def handle_stream_message(self, session, message):
            await self.send_stream_message(session, Shout(text=message.text.upper()))

    assert issubclass(SoloEndpoint, AsyncJsonWebsocketConsumer)
    async with StreamingCommunicator(SoloEndpoint.as_asgi(), "/solo/") as comm:
        await comm.send_message("solo", Shout(text="hi"))
        assert (await comm.receive_message("solo")).text == "HI"
        await comm.send_message("chat", Shout(text="hi"))  # only that endpoint is served
        await comm.receive_error("unknown_endpoint")
