"""The endpoint registry: which ``Endpoint`` classes ``/websocket/`` serves, in order.

Filled at start-up (``StreamingConfig.ready``) from every installed app's
``endpoints`` module, then ``STREAMING["ENDPOINTS"]``. Two classes under one name
are kept out of the registry's way and reported by system check ``streaming.E003``.
"""

from __future__ import annotations

import importlib
import inspect
from typing import TYPE_CHECKING

from django.apps import apps
from django.utils.module_loading import import_string, module_has_submodule

from .conf import user_settings

if TYPE_CHECKING:
    from .endpoint import Endpoint


class EndpointRegistry:
    def __init__(self) -> None:
        self._endpoints: dict[str, type[Endpoint]] = {}
        self.conflicts: list[tuple[type[Endpoint], type[Endpoint]]] = []
        self.import_errors: list[tuple[str, str]] = []
        self.discovered = False

    def register(self, cls: type[Endpoint]) -> None:
        existing = self._endpoints.get(cls.name)
        if existing is None or _same_class(existing, cls):
            self._endpoints[cls.name] = cls
        else:
            self.conflicts.append((existing, cls))

    def get(self, name: str) -> type[Endpoint] | None:
        return self._endpoints.get(name)

    def all(self) -> list[type[Endpoint]]:
        """Registered endpoints in registration order."""
        return list(self._endpoints.values())

    def clear(self) -> None:
        self._endpoints.clear()
        self.conflicts.clear()
        self.import_errors.clear()
        self.discovered = False

    def autodiscover(self) -> None:
        """Import each app's ``protocol`` and ``endpoints`` modules; register the endpoints."""
        from .endpoint import Endpoint

        for app_config in apps.get_app_configs():
            # An app's message classes register when their module is imported: import
            # each app's `protocol` module too, so that a class no endpoint imports
            # still decodes.
            if module_has_submodule(app_config.module, "protocol"):
                importlib.import_module(f"{app_config.name}.protocol")
            if not module_has_submodule(app_config.module, "endpoints"):
                continue
            module_name = f"{app_config.name}.endpoints"
            module = importlib.import_module(module_name)
            # vars() keeps definition order, which is the registration order.
            for obj in list(vars(module).values()):
                if (
                    inspect.isclass(obj)
                    and issubclass(obj, Endpoint)
                    and obj.__module__ == module_name
                    and not obj.abstract
                ):
                    self.register(obj)
        # Read as given, not through streaming_settings: this runs in the app's ready(),
        # and a bad STREAMING (a typo'd key) must reach the system check as E001/E002,
        # not stop django.setup() with a traceback before checks can run.
        paths = user_settings().get("ENDPOINTS", [])
        if not isinstance(paths, list | tuple):
            paths = []  # E002
        for path in paths:
            if not isinstance(path, str):
                continue  # E002
            try:
                cls = import_string(path)
            except ImportError as exc:
                self.import_errors.append((path, str(exc)))
                continue
            if not (inspect.isclass(cls) and issubclass(cls, Endpoint)) or cls.abstract:
                self.import_errors.append((path, "not a concrete Endpoint subclass"))
                continue
            self.register(cls)
        self.discovered = True


def _same_class(a: type, b: type) -> bool:
    return a is b or (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


#: The registry ``/websocket/`` serves.
endpoints = EndpointRegistry()
