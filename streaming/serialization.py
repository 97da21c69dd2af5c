"""Typed message classes: :class:`SerializableEntity` and the class registry.

Imports no Django and no channels; the Python client reuses this module as it is.

A message class is a pydantic v2 model registered under ``class_name`` (default:
the Python class name) when the class is defined::

    class ChatMessage(SerializableEntity):
        recipient_id: int
        text: str

Contract (the wire rules are in docs/protocol.md, "Types on the wire"):

* Input from the wire is validated in pydantic's *strict JSON* mode: ``"5"`` is not
  an ``int``, datetimes are ISO 8601 strings.
* Messages survive versions, as Serverpod's do: fields a class does not know are
  ignored (the known ones stay strict), and a field whose type admits ``None``
  (``note: str | None``) may be left out: it is then ``None``, as if declared
  ``= None``. Encoding still writes ``null`` for ``None``.
* A nested message (a field, list item or dict value typed as a message class) whose
  class is not the declared one travels with ``"__className__"`` beside its fields,
  and decodes as that class when it is a registered subclass of the declared one
  (a name this side does not know decodes as the declared class).
* ``bytes`` travel as standard base64 text; ``timedelta`` as an integer number of
  milliseconds (Serverpod's ``Duration``), and holds whole milliseconds.
* Datetimes must be timezone-aware; they are stored and sent in UTC with ``Z``.
* A second class with the same ``class_name`` from another module or qualname
  raises ``TypeError`` naming both; redefining the same module and qualname (a
  reload) replaces the entry.
* :func:`encode_object` caches the JSON of an instance until a field is assigned,
  so a message posted to many recipients is encoded once. Treat a posted message as
  immutable: in-place changes to nested lists or dicts are not seen by the cache.
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from .exceptions import InvalidMessage, UnknownClass
from .protocol import echo

#: Most per-field entries an ``invalid_message`` error lists (the count is in its message).
MAX_ERRORS = 20

__all__ = [
    "SerializableEntity",
    "decode_object",
    "encode_object",
    "get_class",
    "registered_classes",
]

_registry: dict[str, type[SerializableEntity]] = {}


def _mentions_datetime(annotation: Any) -> bool:
    if annotation is datetime:
        return True
    args = getattr(annotation, "__args__", None) or ()
    return any(_mentions_datetime(arg) for arg in args)


def _to_utc(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("datetime must be timezone-aware (for example 2026-01-01T12:00:00Z)")
        return value.astimezone(UTC)
    if isinstance(value, list):
        return [_to_utc(item) for item in value]
    if isinstance(value, dict):
        return {key: _to_utc(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return tuple(_to_utc(item) for item in value)
    return value


class SerializableEntity(BaseModel):
    """Base class of every typed message that crosses the socket or the message bus."""

    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        validate_assignment=True,
        ser_json_inf_nan="strings",
    )

    # The wire-JSON cache (see encode_object) lives in a slot, not a pydantic private
    # attribute: private attributes cost ~2 us per instance to set up, and reading an
    # unset one goes through pydantic's __getattr__.
    __slots__ = ("_wire_cache",)

    #: The name this class travels under (``object.className`` on the wire).
    class_name: ClassVar[str]
    #: Names of the fields whose type mentions ``datetime`` (computed per class).
    _datetime_fields: ClassVar[frozenset[str]] = frozenset()
    #: True when every field is a JSON type (str, int, float, bool, None, and lists,
    #: str-keyed dicts and unions of those): strict Python validation of parsed JSON
    #: then accepts and refuses exactly what strict JSON validation does.
    _json_native: ClassVar[bool] = False

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if "class_name" not in cls.__dict__:
            cls.class_name = cls.__name__
        if not isinstance(cls.class_name, str) or not cls.class_name:
            raise TypeError(f"{cls.__qualname__}.class_name must be a non-empty string.")
        cls._datetime_fields = frozenset(
            name for name, field in cls.model_fields.items() if _mentions_datetime(field.annotation)
        )
        cls._json_native = all(_json_native(f.annotation) for f in cls.model_fields.values())
        _register(cls)

    @field_validator("*", mode="after")
    @classmethod
    def _aware_datetimes(cls, value: Any, info: Any) -> Any:
        # Every field, every class: a per-class validator on datetime fields alone
        # would miss inherited fields and aliased or string annotations.
        if info.field_name in cls._datetime_fields:
            return _to_utc(value)
        return value

    def __eq__(self, other: object) -> bool:
        # The wire cache is not part of a message's value.
        if not isinstance(other, SerializableEntity):
            return NotImplemented
        return type(self) is type(other) and self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]  # mutable, like pydantic models

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if not name.startswith("_"):
            _WIRE.__set__(self, None)  # a field changed: encode again


_WIRE = SerializableEntity.__dict__["_wire_cache"]  # the slot's descriptor


_JSON_SCALARS = (str, int, float, bool, type(None))


def _json_native(annotation: Any) -> bool:
    """Whether values of ``annotation`` validate alike from parsed JSON and from JSON text.

    Not so for tuples, enums, literals, datetimes, models... (strict Python mode wants
    instances of those): such classes validate from JSON text.
    """
    if annotation in _JSON_SCALARS or annotation is typing.Any:
        return True
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is list:
        return len(args) == 1 and _json_native(args[0])
    if origin is dict:
        return len(args) == 2 and args[0] is str and _json_native(args[1])
    if origin in (typing.Union, types.UnionType):
        return all(_json_native(arg) for arg in args)
    return False


def _register(cls: type[SerializableEntity]) -> None:
    existing = _registry.get(cls.class_name)
    if existing is not None and existing is not cls:
        same_place = (existing.__module__, existing.__qualname__) == (
            cls.__module__,
            cls.__qualname__,
        )
        if not same_place:
            raise TypeError(
                f"class_name {cls.class_name!r} is taken: "
                f"{existing.__module__}.{existing.__qualname__} and "
                f"{cls.__module__}.{cls.__qualname__} both use it. "
                "Set a distinct class_name on one of them."
            )
    _registry[cls.class_name] = cls


def get_class(class_name: str) -> type[SerializableEntity]:
    """The registered class for ``class_name``; :class:`UnknownClass` if there is none."""
    try:
        return _registry[class_name]
    except KeyError:
        raise UnknownClass(f"Unknown class {echo(class_name)!r}.") from None


def registered_classes() -> dict[str, type[SerializableEntity]]:
    """A copy of the registry: ``class_name`` -> class."""
    return dict(_registry)


@contextmanager
def _swapped_registry() -> Iterator[None]:
    global _registry
    saved = _registry
    _registry = dict(saved)
    try:
        yield
    finally:
        _registry = saved


def _error_list(exc: ValidationError) -> list[dict[str, Any]]:
    # Paths hold the client's keys: each is cut short, and so is the list.
    return [
        {
            "path": echo(".".join(str(part) for part in err["loc"])) or "(root)",
            "reason": echo(err["msg"]),
        }
        for err in exc.errors(include_url=False, include_input=False)[:MAX_ERRORS]
    ]


def decode_object(class_name: str, data: dict[str, Any]) -> SerializableEntity:
    """Validate ``data`` as an instance of the class registered as ``class_name``.

    Raises :class:`UnknownClass` or :class:`InvalidMessage` (with ``errors``, one
    ``{"path", "reason"}`` per failing field); never a pydantic error.
    """
    cls = get_class(class_name)
    try:
        if cls._json_native:
            return cls.model_validate(data)  # already parsed: no JSON round trip
        return cls.model_validate_json(json.dumps(data))
    except ValidationError as exc:
        raise InvalidMessage(
            f"Invalid {echo(class_name)}: {exc.error_count()} field(s) failed validation.",
            errors=_error_list(exc),
        ) from None
    except (ValueError, RecursionError) as exc:
        raise InvalidMessage(f"Invalid {echo(class_name)}: {echo(str(exc))}") from None


def decode_object_json(object_json: str | bytes) -> SerializableEntity:
    """Decode a ``{"className", "data"}`` JSON text, as :func:`encode_object` makes."""
    try:
        obj = json.loads(object_json)
    except (ValueError, RecursionError):
        raise InvalidMessage("Not a JSON object.") from None
    if (
        not isinstance(obj, dict)
        or not isinstance(obj.get("className"), str)
        or not isinstance(obj.get("data"), dict)
    ):
        raise InvalidMessage("Expected {'className': str, 'data': object}.")
    return decode_object(obj["className"], obj["data"])


def encode_object(entity: SerializableEntity) -> str:
    """``{"className": ..., "data": ...}`` as JSON text, computed once per instance state."""
    try:
        wire = _WIRE.__get__(entity)
    except AttributeError:  # never encoded
        wire = None
    if wire is None:
        wire = (
            '{"className":'
            + json.dumps(type(entity).class_name)
            + ',"data":'
            + entity.model_dump_json()
            + "}"
        )
        _WIRE.__set__(entity, wire)
    return wire


def cache_wire(entity: SerializableEntity, wire: str) -> None:
    """Record that ``wire`` (as :func:`encode_object` makes) is ``entity``'s encoding."""
    _WIRE.__set__(entity, wire)
