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

import base64
import binascii
import collections.abc
import enum
import functools
import json
import re
import secrets
import types
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Annotated, Any, ClassVar
from uuid import UUID

from pydantic import (
    BaseModel,
    ConfigDict,
    PlainSerializer,
    PydanticSchemaGenerationError,
    TypeAdapter,
    ValidationError,
    WrapSerializer,
    WrapValidator,
    field_validator,
)
from pydantic_core import PydanticCustomError, SchemaValidator, core_schema

from .exceptions import InvalidMessage, UnknownClass
from .protocol import echo

#: Most per-field entries an ``invalid_message`` error lists (the count is in its message).
MAX_ERRORS = 20

#: The key that names a nested object's class when it is not the declared one (Serverpod's).
CLASS_NAME_KEY = "__className__"
#: How the key looks in JSON text that json.dumps wrote (inside a string it would be escaped).
_TAG = json.dumps(CLASS_NAME_KEY)

__all__ = [
    "CLASS_NAME_KEY",
    "SerializableEntity",
    "check_distinct",
    "check_unions",
    "decode_object",
    "encode_object",
    "get_class",
    "registered_classes",
    "type_name",
    "wire_kinds",
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
        try:
            return value.astimezone(UTC)
        except OverflowError:  # 0001-01-01T00:00:00+01:00 is before year 1 in UTC
            raise ValueError("datetime must be within year 1 to 9999 in UTC") from None
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
        extra="ignore",  # a later version may add fields: ignore them, as Serverpod does
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
    #: True once the class's fields follow the wire rules (see ``_finish_class``).
    _wire_ready: ClassVar[bool] = False
    #: (JSON key, shape) of the fields that hold nested messages (see ``_Nested``).
    _shapes: ClassVar[tuple[tuple[str, tuple[Any, ...]], ...]] = ()
    #: (core schema, validator) cached by ``_plain_validator``.
    _plain_cache: ClassVar[tuple[Any, Any] | None] = None

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if "class_name" not in cls.__dict__:
            cls.class_name = cls.__name__
        if not isinstance(cls.class_name, str) or not cls.class_name:
            raise TypeError(f"{cls.__qualname__}.class_name must be a non-empty string.")
        cls._wire_ready = False
        if cls.__pydantic_complete__:
            _finish_class(cls)
        # else a forward reference is pending: model_rebuild() finishes the class.
        _register(cls)

    @classmethod
    def model_rebuild(
        cls,
        *,
        force: bool = False,
        raise_errors: bool = True,
        _parent_namespace_depth: int = 2,
        _types_namespace: Any = None,
    ) -> bool | None:
        # Pydantic calls this too, to complete a class whose forward references can now
        # be resolved (on first use); the class then gets the wire rules.
        result = super().model_rebuild(
            force=force,
            raise_errors=raise_errors,
            # one frame more between pydantic and the caller whose names it resolves
            _parent_namespace_depth=_parent_namespace_depth + 1 if _parent_namespace_depth else 0,
            _types_namespace=_types_namespace,
        )
        if cls.__pydantic_complete__ and not cls.__dict__.get("_wire_ready", False):
            _finish_class(cls)
        return result

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


# -- the wire rules: how a class's fields are finished -----------------------------------------
#
# Pydantic is told about the wire types by rewriting field annotations once, when a class is
# complete: each position (a field, a list item, a dict value, a union member...) typed as a
# message class, ``timedelta`` or ``bytes`` becomes ``Annotated[T, <validator>, <serializer>]``,
# and a required field whose type admits None gets the default None. The class is then
# rebuilt. Classes with none of these pay nothing at run time.
#
# A wrap validator sees JSON input converted to Python objects, and whatever it hands on is
# validated with *Python* semantics (a datetime string would be refused in strict mode).
# So the validators below never hand JSON input on: they convert it themselves, or validate
# the nested object from JSON text (``_validate_nested``).


def _wire_function(function: Callable[..., Any]) -> Callable[..., Any]:
    function._streampod_wire = True  # type: ignore[attr-defined]
    return function


def _is_wired(annotation: Any) -> bool:
    return typing.get_origin(annotation) is Annotated and any(
        getattr(getattr(meta, "func", None), "_streampod_wire", False)
        for meta in annotation.__metadata__
    )


def _validate_milliseconds(value: Any, handler: Any, info: Any) -> timedelta:
    if info.mode == "json":
        if type(value) is not int:  # bool is not a duration either
            raise PydanticCustomError(
                "duration_type", "Input should be an integer number of milliseconds"
            )
        try:
            value = timedelta(milliseconds=value)
        except OverflowError:
            raise PydanticCustomError(
                "duration_range", "Input should be a duration within timedelta's range"
            ) from None
    return _whole_milliseconds(handler(value))


def _milliseconds(value: timedelta) -> int:
    """Whole milliseconds, truncated toward zero (Dart's ``Duration.inMilliseconds``)."""
    micro = value // _MICROSECOND
    return micro // 1000 if micro >= 0 else -(-micro // 1000)


def _whole_milliseconds(value: timedelta) -> timedelta:
    if value.microseconds % 1000 == 0:
        return value
    return timedelta(milliseconds=_milliseconds(value))


_MICROSECOND = timedelta(microseconds=1)

#: What pydantic's datetime parser would read as a Unix time (``"1700000000"``, ``"-5"``,
#: ``"1.5"``): on the wire a datetime is an ISO 8601 string, never a number in a string.
#: One way only to match each string (``\d+\.?\d*`` split a run of digits every way it
#: could before failing: 16,000 digits and an ``x`` held the event loop 10 s, helper
#: "attacker11"), so a string that is not one fails in time linear in its length.
_TIMESTAMP_STRING = re.compile(r"\s*[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\s*")
#: pydantic's own strict datetime parsing, for the strings the validator below lets through.
_DATETIME_STRINGS = SchemaValidator(core_schema.datetime_schema(strict=True))
_DATE_STRINGS = SchemaValidator(core_schema.date_schema(strict=True))


def _iso_string(value: Any, kind: str, strings: SchemaValidator, form: str) -> Any:
    """JSON ``value`` parsed as ISO 8601 by ``strings`` (pydantic's strict parsing of a
    ``kind``): never a number, nor a number in a string, which pydantic would read as a
    Unix time (``"0"``: 1970-01-01)."""
    if not isinstance(value, str):
        raise PydanticCustomError(f"{kind}_type", f"Input should be a valid {kind} string")
    if _TIMESTAMP_STRING.fullmatch(value):
        raise PydanticCustomError(
            f"{kind}_parsing", f"Input should be an ISO 8601 {form}, not a Unix time"
        )
    try:
        return strings.validate_strings(value)  # type: ignore[arg-type]  # a str is one
    except ValidationError as exc:
        error = exc.errors()[0]
        raise PydanticCustomError(error["type"], error["msg"]) from None


def _validate_iso_datetime(value: Any, handler: Any, info: Any) -> datetime:
    if info.mode == "json":
        value = _iso_string(value, "datetime", _DATETIME_STRINGS, "datetime with a timezone")
    value = handler(value)
    try:  # here, not only in _aware_datetimes, so that an error names its list item
        return _to_utc(value)  # type: ignore[no-any-return]
    except ValueError as exc:
        raise PydanticCustomError("datetime_range", str(exc)) from None


def _validate_iso_date(value: Any, handler: Any, info: Any) -> date:
    if info.mode == "json":  # "0" was 1970-01-01 (helper "attacker12")
        value = _iso_string(value, "date", _DATE_STRINGS, "date (2026-01-02)")
    return handler(value)  # type: ignore[no-any-return]


def _validate_base64(value: Any, handler: Any, info: Any) -> bytes:
    if info.mode == "json":
        if not isinstance(value, str):
            raise PydanticCustomError("bytes_type", "Input should be a base64 string")
        text = value.rstrip("=")
        padding = -len(text) % 4
        try:
            if len(value) - len(text) not in (0, padding):  # unpadded, or padded right
                raise ValueError
            if "-" in text or "_" in text:  # the URL-safe alphabet, not mixed with the other
                if "+" in text or "/" in text:
                    raise ValueError
                text = text.replace("-", "+").replace("_", "/")
            value = base64.b64decode(text + "=" * padding, validate=True)
        except (binascii.Error, ValueError):
            raise PydanticCustomError(
                "bytes_invalid_encoding", "Data should be valid base64"
            ) from None
    return handler(value)  # type: ignore[no-any-return]


def _base64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


_MILLISECONDS = (
    WrapValidator(_wire_function(_validate_milliseconds)),
    PlainSerializer(_wire_function(_milliseconds), return_type=int, when_used="json"),
)
_ISO_DATETIME = (WrapValidator(_wire_function(_validate_iso_datetime)),)
_ISO_DATE = (WrapValidator(_wire_function(_validate_iso_date)),)
_BASE64 = (
    WrapValidator(_wire_function(_validate_base64)),
    PlainSerializer(_wire_function(_base64), return_type=str, when_used="json"),
)


class _Nested:
    """The nested objects of one decode, held aside while their parents validate.

    A wrap validator gets JSON input as Python objects and must validate a nested
    message from JSON text again (see above). So that each object is turned into JSON
    text once, not once per enclosing level, the objects at message-typed positions are
    replaced by ``{<key>: <index>}`` before their parent is turned into JSON text, and
    the validator at that position takes the object back from here. The key is random
    per decode: a client cannot forge a reference.
    """

    __slots__ = ("key", "objects")

    def __init__(self) -> None:
        self.key = "\x00" + secrets.token_hex(6)
        self.objects: list[dict[str, Any]] = []

    def hold(self, value: dict[str, Any]) -> dict[str, int]:
        self.objects.append(value)
        return {self.key: len(self.objects) - 1}

    def take(self, value: dict[str, Any]) -> dict[str, Any] | None:
        if len(value) == 1:
            index = value.get(self.key)
            if type(index) is int:
                return self.objects[index]
        return None


def _validate_json(
    target: type[SerializableEntity], value: Any, nested: _Nested | None
) -> SerializableEntity:
    """Parsed JSON ``value`` validated as ``target`` with strict JSON semantics."""
    validator = target.__pydantic_validator__
    if target._json_native:
        return validator.validate_python(value)  # type: ignore[no-any-return]  # alike here
    if target._shapes and isinstance(value, dict):
        nested = nested or _Nested()
        text = json.dumps(_hold_nested(target, value, nested))
        return validator.validate_json(text, context=nested)  # type: ignore[no-any-return]
    return validator.validate_json(json.dumps(value))  # type: ignore[no-any-return]


def _entity_validator(declared: type[SerializableEntity]) -> Callable[..., Any]:
    def validate(value: Any, handler: Any, info: Any) -> Any:
        json_mode = info.mode == "json"
        nested = info.context if type(info.context) is _Nested else None
        if not isinstance(value, dict):
            if json_mode:  # not an object: refused with JSON mode's words
                return _validate_json(declared, value, None)
            return handler(value)  # an instance (kept as it is) or an error
        if json_mode and nested is not None:
            held = nested.take(value)
            if held is not None:
                value = held
        target = declared
        name = value.get(CLASS_NAME_KEY)
        if name is not None:
            target = _nested_class(declared, name)
        if not json_mode:
            return handler(value) if target is declared else target.model_validate(value)
        if target is declared and declared._json_native:
            return handler(value)  # Python validation of parsed JSON is JSON validation here
        return _validate_json(target, value, nested)

    validate._streampod_message = True  # type: ignore[attr-defined]  # see _plain_validator
    return _wire_function(validate)


def _plain_validator(cls: type[SerializableEntity]) -> SchemaValidator:
    """``cls``'s validator without the validators of its message-typed positions.

    For JSON text that holds no ``"__className__"``: every nested object is then of its
    declared class, and pydantic validates it from the JSON text itself, as fast as
    before nested messages had validators. Built once per class schema.
    """
    schema = cls.__pydantic_core_schema__
    cached = cls.__dict__.get("_plain_cache")
    if cached is not None and cached[0] is schema:
        return cached[1]  # type: ignore[no-any-return]
    plain = _without_message_validators(schema)
    try:
        # Nested classes from the schema, not their own (wired) validators.
        validator = SchemaValidator(plain, _use_prebuilt=False)  # type: ignore[call-arg]
    except TypeError:  # an older pydantic-core, which does not reuse them
        validator = SchemaValidator(plain)
    cls._plain_cache = (schema, validator)
    return validator


def _without_message_validators(node: Any) -> Any:
    if isinstance(node, dict):
        if node.get("type") == "function-wrap":
            function = node.get("function")
            if isinstance(function, dict) and getattr(
                function.get("function"), "_streampod_message", False
            ):
                return _without_message_validators(node["schema"])
        return {key: _without_message_validators(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_without_message_validators(value) for value in node]
    return node


# Where message-typed positions are in a class's fields, to hold nested objects aside:
# ("e",) a message; ("l", item) a list; ("t", items) a fixed tuple; ("d", value) a dict;
# ("u", members) a union; ("s",) a scalar or None; ("o",) anything else.
_Shape = tuple[Any, ...]
_SCALAR: _Shape = ("s",)
_OTHER: _Shape = ("o",)
_MESSAGE: _Shape = ("e",)
_SEQUENCES = (list, set, frozenset, collections.abc.Sequence)


def _shape(annotation: Any) -> _Shape:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Annotated:
        return _shape(args[0])
    if isinstance(annotation, type) and origin is None:
        if issubclass(annotation, SerializableEntity):
            return _MESSAGE
        if annotation in _JSON_SCALARS or annotation in (bytes, datetime, timedelta):
            return _SCALAR
        return _OTHER
    if annotation is None:
        return _SCALAR
    if origin in (typing.Union, types.UnionType):
        return ("u", tuple(_shape(arg) for arg in args))
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return ("l", _shape(args[0]))
        return ("t", tuple(_shape(arg) for arg in args))
    if origin in _SEQUENCES and len(args) == 1:
        return ("l", _shape(args[0]))
    if origin in (dict, collections.abc.Mapping) and len(args) == 2:
        return ("d", _shape(args[1]))
    return _OTHER


def _holds_messages(shape: _Shape) -> bool:
    kind = shape[0]
    if kind == "e":
        return True
    if kind in ("l", "d"):
        return _holds_messages(shape[1])
    if kind in ("t", "u"):
        return any(_holds_messages(member) for member in shape[1])
    return False


def _hold(shape: _Shape, value: Any, nested: _Nested) -> Any:
    """``value`` with the objects at message positions held aside in ``nested``."""
    kind = shape[0]
    if kind == "e":
        return nested.hold(value) if type(value) is dict else value
    if kind == "l":
        if type(value) is list:
            return [_hold(shape[1], item, nested) for item in value]
        return value
    if kind == "d":
        if type(value) is dict:
            return {key: _hold(shape[1], item, nested) for key, item in value.items()}
        return value
    if kind == "t":
        if type(value) is list and len(value) == len(shape[1]):
            return [
                _hold(member, item, nested) for member, item in zip(shape[1], value, strict=True)
            ]
        return value
    if kind == "u":
        # Only when the value's JSON type leaves no doubt about the member it is for;
        # otherwise it stays inline (its validator then turns it into JSON text again).
        if type(value) is dict:
            takers = [m for m in shape[1] if m[0] in ("e", "d", "o")]
            if takers and all(m[0] == "e" for m in takers):
                return nested.hold(value)
            if len(takers) == 1 and takers[0][0] == "d":
                return _hold(takers[0], value, nested)
        elif type(value) is list:
            takers = [m for m in shape[1] if m[0] in ("l", "t", "o")]
            if len(takers) == 1 and takers[0][0] != "o":
                return _hold(takers[0], value, nested)
    return value


def _hold_nested(cls: type[SerializableEntity], data: dict[str, Any], nested: _Nested) -> Any:
    held = None
    for key, shape in cls._shapes:
        if key in data:
            value = data[key]
            new = _hold(shape, value, nested)
            if new is not value:
                if held is None:
                    held = dict(data)
                held[key] = new
    return data if held is None else held


def _nested_class(declared: type[SerializableEntity], name: Any) -> type[SerializableEntity]:
    """The class ``"__className__": name`` selects where ``declared`` is expected."""
    if not isinstance(name, str):
        _refuse_class_name("class_name_type", "__className__ should be a string", name)
    named = _registry.get(name)
    if named is None or named is declared:
        return declared  # a subclass this side does not know: read what it knows
    if not issubclass(named, declared):
        _refuse_class_name(
            "class_name_mismatch",
            "{class_name} is not a {expected}",
            name,
            {"class_name": echo(name), "expected": echo(declared.class_name)},
        )
    return named


def _refuse_class_name(
    kind: str, message: str, name: Any, context: dict[str, Any] | None = None
) -> typing.NoReturn:
    # A ValidationError raised in a validator keeps its locations: the error's path
    # ends in ".__className__".
    raise ValidationError.from_exception_data(
        "SerializableEntity",
        [
            {
                "type": PydanticCustomError(kind, message, context),
                "loc": (CLASS_NAME_KEY,),
                "input": name,
            }
        ],
    )


def _entity_serializer(declared: type[SerializableEntity], always: bool) -> Callable[..., Any]:
    def serialize(value: Any, handler: Any, info: Any) -> Any:
        cls = type(value)
        if not isinstance(value, SerializableEntity):
            return handler(value)
        if cls is declared and not always:
            # For JSON, pydantic serializes the instance by its class in Rust.
            return value if info.mode == "json" else handler(value)
        # Another class (or a union, where the declared one is not known): its own
        # fields, and its name beside them.
        fields = cls.__pydantic_serializer__.to_python(
            value,
            mode=info.mode,
            by_alias=info.by_alias,
            exclude_unset=info.exclude_unset,
            exclude_defaults=info.exclude_defaults,
            exclude_none=info.exclude_none,
            round_trip=info.round_trip,
        )
        return {CLASS_NAME_KEY: cls.class_name, **fields}

    return _wire_function(serialize)


def _entity_class(annotation: Any) -> type[SerializableEntity] | None:
    if typing.get_origin(annotation) is Annotated:
        return _entity_class(typing.get_args(annotation)[0])
    if isinstance(annotation, type) and issubclass(annotation, SerializableEntity):
        return annotation
    return None


_CONTAINERS = (
    list,
    tuple,
    set,
    frozenset,
    dict,
    collections.abc.Sequence,
    collections.abc.Mapping,
)


def _wire_annotation(annotation: Any, always_tag: bool = False) -> Any:
    """``annotation`` with the wire rules applied, or None when it needs none."""
    if _is_wired(annotation):
        return None
    if isinstance(annotation, type):
        if issubclass(annotation, SerializableEntity):
            return Annotated[  # type: ignore[valid-type]
                annotation,
                WrapValidator(_entity_validator(annotation)),
                WrapSerializer(_entity_serializer(annotation, always_tag)),
            ]
        if annotation is timedelta:
            return Annotated[(timedelta, *_MILLISECONDS)]
        if annotation is bytes:
            return Annotated[(bytes, *_BASE64)]
        if annotation is datetime:
            return Annotated[(datetime, *_ISO_DATETIME)]
        if annotation is date:
            return Annotated[(date, *_ISO_DATE)]
        return None
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Annotated:
        inner = _wire_annotation(args[0], always_tag)
        return None if inner is None else Annotated[(inner, *annotation.__metadata__)]
    if origin in (typing.Union, types.UnionType):
        # Among several message classes the declared class is not known: always tag.
        several = sum(_entity_class(arg) is not None for arg in args) > 1
        members = [_wire_annotation(arg, several) for arg in args]
        if all(member is None for member in members):
            return None
        return typing.Union[  # noqa: UP007
            tuple(arg if new is None else new for arg, new in zip(args, members, strict=True))
        ]
    if origin in _CONTAINERS and args:
        if origin in (dict, collections.abc.Mapping):
            value = _wire_annotation(args[1]) if len(args) == 2 else None
            return None if value is None else origin[args[0], value]
        items = [arg if arg is Ellipsis else _wire_annotation(arg) for arg in args]
        if all(item is None or item is Ellipsis for item in items):
            return None
        return origin[
            tuple(arg if new is None else new for arg, new in zip(args, items, strict=True))
        ]
    return None


def _admits_none(annotation: Any) -> bool:
    if annotation is None or annotation is type(None):
        return True
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Annotated:
        return _admits_none(args[0])
    if origin in (typing.Union, types.UnionType):
        return any(_admits_none(arg) for arg in args)
    if origin is typing.Literal:
        return None in args
    return False


def _entity_refs(annotation: Any, found: set[type[SerializableEntity]]) -> None:
    """Add the message classes ``annotation`` mentions to ``found``."""
    if isinstance(annotation, type):
        if issubclass(annotation, SerializableEntity):
            found.add(annotation)
        return
    for arg in typing.get_args(annotation):
        _entity_refs(arg, found)


def _json_key(name: str, field: Any) -> str:
    for alias in (field.validation_alias, field.alias):
        if isinstance(alias, str):
            return alias
    return name


def _ensure_finished(cls: type[SerializableEntity]) -> None:
    if cls.__dict__.get("_wire_ready", False):
        return
    if cls.__pydantic_complete__:
        _finish_class(cls)
    else:
        cls.model_rebuild(raise_errors=False)  # finishes it if it can be completed now


#: The classes being finished together, and those of them whose fields changed.
_finishing: tuple[list[type[SerializableEntity]], list[type[SerializableEntity]]] | None = None
#: Unfinished class -> classes whose schema holds a copy of it made before it was finished
#: (pydantic builds a class still waiting for a forward reference into the schemas of the
#: classes that use it). They are rebuilt once it is finished.
_waiting: dict[type[SerializableEntity], set[type[SerializableEntity]]] = {}


# -- unions whose members could not be told apart --------------------------------------


def wire_kinds(annotation: Any) -> frozenset[str]:
    """The JSON a value of ``annotation`` may travel as, as far as a union's members
    could be mistaken for each other: ``string`` (any string), ``iso`` (a date, time or
    datetime string, told apart from each other), ``integer``, ``float`` (any number),
    ``bool``, ``message``, ``object``; empty for what is not checked (lists, Any...)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return wire_kinds(args[0])
    if origin is typing.Literal:
        return frozenset().union(*(_value_kinds(value) for value in args))
    if origin in (dict, collections.abc.Mapping):
        return frozenset({"object"})
    if not isinstance(annotation, type) or origin is not None:
        return frozenset()
    if issubclass(annotation, SerializableEntity):
        return frozenset({"message"})
    if issubclass(annotation, enum.Enum):
        return frozenset().union(*(_value_kinds(member.value) for member in annotation))
    if issubclass(annotation, (date, time)):  # datetime is a date
        return frozenset({"iso"})
    if issubclass(annotation, Decimal):
        return frozenset({"string", "float"})  # "1.5" and 1.5 alike
    if issubclass(annotation, timedelta):
        return frozenset({"integer"})  # milliseconds
    if issubclass(annotation, (str, UUID, bytes)):
        return frozenset({"string"})
    return frozenset({_PLAIN_KINDS[annotation]}) if annotation in _PLAIN_KINDS else frozenset()


_PLAIN_KINDS = {bool: "bool", int: "integer", float: "float"}


def type_name(annotation: Any) -> str:
    """``annotation`` as a person writes it: ``int``, ``list[int]``."""
    return annotation.__qualname__ if isinstance(annotation, type) else repr(annotation)


def _value_kinds(value: Any) -> frozenset[str]:
    if isinstance(value, enum.Enum):  # Literal[Color.RED] travels as its value
        value = value.value
    if isinstance(value, bool):
        return frozenset({"bool"})
    if isinstance(value, int):
        return frozenset({"integer"})
    if isinstance(value, float):
        return frozenset({"float"})
    if isinstance(value, str):
        return frozenset({"string"})
    return frozenset()


#: Kinds of JSON one value could be read as either of (the same string, the same number).
_CLASHES = {
    ("string", "string"), ("string", "iso"), ("integer", "integer"), ("integer", "float"),
    ("float", "float"), ("bool", "bool"), ("message", "object"),
}  # fmt: skip


def check_distinct(annotation: Any, members: tuple[Any, ...], where: str) -> None:
    """``TypeError`` for a union two of whose members travel as the same JSON: a value of
    one would be read as whichever is tried first (helper "reviewer11": ``bytes | str``
    read the string ``"abcd"`` as bytes, ``int | timedelta`` a ``timedelta`` as an int).
    ``int | float`` is allowed: an integer is read as the int."""
    kinds = [(member, wire_kinds(member)) for member in members]
    for i, (first, first_kinds) in enumerate(kinds):
        for second, second_kinds in kinds[i + 1 :]:
            if {_unwrapped(first), _unwrapped(second)} == {int, float}:
                continue
            values, others = _wire_values(first), _wire_values(second)
            if values is not None and others is not None:
                # Literals and enums: told apart by value, or not (True == 1 == 1.0)
                clash = bool(values & others)
            elif _literal_of(first, second) or _literal_of(second, first):
                clash = False  # Literal["auto"] | str: the same value, whichever reads it
            else:
                clash = any(
                    (a, b) in _CLASHES or (b, a) in _CLASHES
                    for a in first_kinds
                    for b in second_kinds
                )
            if clash:
                raise TypeError(
                    f"{where}: {annotation!r}: {type_name(first)} and {type_name(second)} "
                    "may travel as the same JSON, so a value of one could arrive as the "
                    "other; use one of them, or a message class with a field for each"
                )


def _unwrapped(annotation: Any) -> Any:
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _wire_values(annotation: Any) -> frozenset[Any] | None:
    """The values a ``Literal`` or an enum travels as; None for any other type (or values
    that cannot be compared so). Compared as pydantic matches them, by equality: ``1``,
    ``1.0`` and ``True`` are one value (helper "reviewer12": ``Literal[1] | Literal[1.0]``
    read 1.0 as 1)."""
    annotation = _unwrapped(annotation)
    try:
        if typing.get_origin(annotation) is typing.Literal:
            return frozenset(
                v.value if isinstance(v, enum.Enum) else v for v in typing.get_args(annotation)
            )
        if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
            return frozenset(m.value for m in annotation)
    except TypeError:  # an unhashable value
        return None
    return None


def _literal_of(literal: Any, scalar: Any) -> bool:
    """Whether ``literal`` is a ``Literal`` of values of exactly the plain type ``scalar``
    (``Literal["auto"] | str``: either member reads "auto" as the same ``str``), or of
    floats with a fraction beside ``int`` (which never reads them)."""
    literal, scalar = _unwrapped(literal), _unwrapped(scalar)
    if typing.get_origin(literal) is not typing.Literal or scalar not in (str, int, float, bool):
        return False
    values = typing.get_args(literal)
    if all(type(v) is scalar for v in values):
        return True
    return scalar is int and all(type(v) is float and not v.is_integer() for v in values)


def check_unions(annotation: Any, where: str) -> None:
    """:func:`check_distinct` for every union in ``annotation``, at any depth (a message
    field's ``list[bytes | str]``); message classes named in it check their own."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        check_unions(args[0], where)
        return
    if origin is typing.Literal:
        return
    if origin in (typing.Union, types.UnionType):
        check_distinct(annotation, args, where)
    for arg in args:
        if arg is not Ellipsis:
            check_unions(arg, where)


def _finish_class(cls: type[SerializableEntity]) -> None:
    """Apply the wire rules to ``cls``'s fields (once the class is complete).

    The message classes it refers to are finished first, in the same batch. At the end
    of the batch, every class whose schema must change is rebuilt, none of them reusing
    another's old schema.
    """
    global _finishing
    outermost = _finishing is None
    if outermost:
        _finishing = ([], [])
    finished, changed = _finishing  # type: ignore[misc]
    try:
        # A union whose members travel alike would change a value's type on the way
        # (helper "serverpod12": "abcd" for ``x: bytes | str`` arrived as bytes).
        for name, info in cls.model_fields.items():
            check_unions(info.annotation, f"{cls.__qualname__}.{name}")
        cls._wire_ready = True  # first: a class that refers to itself is finished once
        finished.append(cls)
        refs: set[type[SerializableEntity]] = set()
        for field in cls.model_fields.values():
            _entity_refs(field.annotation, refs)
        for ref in refs:
            _ensure_finished(ref)
        for ref in refs:
            if not ref.__dict__.get("_wire_ready", False):
                _waiting.setdefault(ref, set()).add(cls)
            else:  # a finished class that still holds an unfinished copy of another
                for holders in _waiting.values():
                    if ref in holders:
                        holders.add(cls)
        fields_changed = False
        for field in cls.model_fields.values():
            wired = _wire_annotation(field.annotation)
            if wired is not None:
                field.annotation = wired
                fields_changed = True
            if field.is_required() and _admits_none(field.annotation):
                # A missing nullable field is None (Serverpod leaves nulls out).
                field.default = None
                attributes_set = getattr(field, "_attributes_set", None)
                if isinstance(attributes_set, dict):
                    attributes_set["default"] = None
                fields_changed = True
        if fields_changed:
            changed.append(cls)
        cls._datetime_fields = frozenset(
            name for name, f in cls.model_fields.items() if _mentions_datetime(f.annotation)
        )
        cls._json_native = all(_json_native(f.annotation) for f in cls.model_fields.values())
        cls._shapes = tuple(
            (_json_key(name, f), shape)
            for name, f in cls.model_fields.items()
            if _holds_messages(shape := _shape(f.annotation))
        )
    finally:
        if outermost:
            _finishing = None
    if not outermost:
        return
    rebuild = dict.fromkeys(changed)
    for member in finished:
        rebuild.update(dict.fromkeys(_waiting.pop(member, ())))
    for member in rebuild:
        # Pydantic reuses a complete class's schema only when the class holds one itself.
        if "__pydantic_core_schema__" in member.__dict__:
            delattr(member, "__pydantic_core_schema__")
    for member in rebuild:
        BaseModel.model_rebuild.__func__(  # type: ignore[attr-defined]
            member, force=True, _parent_namespace_depth=0
        )


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


@functools.lru_cache(maxsize=512)
def value_adapter(annotation: Any) -> TypeAdapter[Any]:
    """A strict pydantic adapter for one value of ``annotation`` (not a message class) by
    the wire rules of message fields: ``datetime`` ISO 8601 (sent in UTC), ``timedelta`` in
    milliseconds, ``bytes`` base64, decimals, UUIDs, enums and the rest as pydantic's
    JSON. Validate with ``validate_json`` (the JSON rules); ``TypeError`` for a type
    pydantic cannot handle. Streaming methods' values of such types use it."""
    wired = _wire_annotation(annotation) or annotation
    try:
        return TypeAdapter(wired, config=ConfigDict(strict=True, ser_json_inf_nan="strings"))
    except (PydanticSchemaGenerationError, TypeError) as exc:
        raise TypeError(f"{annotation!r} has no wire form ({exc.__class__.__name__})") from None


def value_errors(exc: ValidationError, path: str) -> list[dict[str, Any]]:
    """``exc``'s errors as ``{"path", "reason"}``, under ``path``."""
    return [
        {"path": echo(f"{path}.{err['path']}" if err["path"] != "(root)" else path),
         "reason": err["reason"]}
        for err in _error_list(exc)
    ]  # fmt: skip


def to_utc(value: datetime) -> datetime:
    """``value`` in UTC, as a message field holds it; ``ValueError`` if it is naive or
    falls outside years 1 to 9999 in UTC."""
    return _to_utc(value)  # type: ignore[no-any-return]


def decode_object(class_name: str, data: dict[str, Any]) -> SerializableEntity:
    """Validate ``data`` as an instance of the class registered as ``class_name``.

    Raises :class:`UnknownClass` or :class:`InvalidMessage` (with ``errors``, one
    ``{"path", "reason"}`` per failing field); never a pydantic error.
    """
    cls = get_class(class_name)
    try:
        if cls._json_native:
            return cls.model_validate(data)  # already parsed: no JSON round trip
        text = json.dumps(data)
        if cls._shapes:  # nested messages
            if _TAG not in text:  # all of their declared classes (see _plain_validator)
                return _plain_validator(cls).validate_json(text)  # type: ignore[no-any-return]
            return _validate_json(cls, data, None)  # see _Nested
        return cls.model_validate_json(text)
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
