"""Streaming methods: typed calls to an endpoint that return a value or a stream, or take
streams, with credit flow control both ways.

::

    class ChatEndpoint(Endpoint):
        @streaming_method
        async def history(self, session, with_user: int, limit: int = 50) -> list[ChatMessage]:
            ...

        @streaming_method
        async def watch_typing(self, session, with_user: int) -> AsyncIterator[Typing]:
            async for event in session.messages.listen(f"typing_{with_user}"):
                yield event

        @streaming_method
        async def upload(self, session, strokes: AsyncIterator[Stroke]) -> int:
            return sum([1 async for _ in strokes])

This module holds the whole machinery; ``streaming.endpoint`` re-exports the decorator
and ``streaming.consumer`` hands it the call frames (``MethodFrame``). It imports no
Django and no channels: the Python client shares its value codec and
:class:`SerializableException`. The frames are in docs/protocol.md, "Streaming methods".

Contract:

* Type hints are read once, when the endpoint class is created. Arguments and values
  may be message classes, ``str``/``int``/``float``/``bool``/``None``, lists of those,
  optional values and unions; a method returns a value, None, or ``AsyncIterator[T]``
  (a stream); a parameter typed ``AsyncIterator[T]`` is an input stream.
* Arguments are validated strictly, as message fields are (``"5"`` is not an int);
  unknown argument names are ignored; an invalid call gets ``fail`` ``invalid_message``
  naming each field, and the socket stays open.
* Each call runs in a task of its own (a :class:`~streaming.lane.Lane`), owned by the
  socket. It ends when the method returns or raises, when the client cancels it (a
  generator is closed at once: its ``finally`` runs, its session's listeners go), when
  its endpoint closes on the socket (identity change, lost permission: ``fail``), and
  when the socket closes.
* Flow control: the server never sends a call more ``value`` frames than the client
  granted (``credit``, :data:`DEFAULT_CREDIT` at first); a generator waits for credit
  (it is paused, not buffered). The same holds for input streams the other way.
"""

from __future__ import annotations

import asyncio
import collections.abc
import datetime
import decimal
import enum
import functools
import inspect
import json
import logging
import math
import sys
import types
import typing
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from pydantic import Field, ValidationError
from pydantic_core import PydanticSerializationError, SchemaError

from .exceptions import InvalidMessage, StreamingError, UnknownClass
from .fairness import turn_due
from .lane import Lane
from .protocol import ErrorCode, MethodFrame, echo, encode_method
from .serialization import (
    MAX_ERRORS,
    SerializableEntity,
    check_distinct,
    check_unions,
    decode_object,
    encode_object,
    to_utc,
    type_name,
    value_adapter,
    value_errors,
    wire_kinds,
)
from .session import StreamingSession

if TYPE_CHECKING:
    from .consumer import EndpointSlot, StreamingConsumer

logger = logging.getLogger("streaming.methods")

__all__ = [
    "DEFAULT_CREDIT",
    "MAX_CALLS",
    "MAX_CREDIT",
    "InputStreamFailed",
    "MethodSpec",
    "SerializableException",
    "ValueReader",
    "from_wire",
    "streaming_method",
    "value_json",
]

#: Values a receiver grants a stream when it starts (``call.credit``, or the server's
#: first ``credit`` for an input stream); it grants more as its reader takes values.
DEFAULT_CREDIT = 64
#: Most credit a stream may hold at once: more is capped to this.
MAX_CREDIT = 1024
#: Calls one socket may have in progress; the next gets ``fail`` ``rate_limited``.
MAX_CALLS = 256

_WIRE_CODES = frozenset(code.value for code in ErrorCode)


# -- exceptions that travel --------------------------------------------------------------


_exceptions: dict[str, type[SerializableException]] = {}


class SerializableException(Exception):
    """An exception a streaming method raises that reaches its caller as its own class.

    ::

        class OutOfStock(SerializableException):
            pass

        raise OutOfStock("No red pens left.", item="red pen", left=0)

    The caller gets ``fail`` ``exception`` with ``{"className": "OutOfStock", "data":
    {...fields}}``; the Python client raises ``OutOfStock`` (``.message``, ``.item``,
    ``.fields``) when the class is defined on its side too. Fields are values as
    streaming methods take them (:func:`value_json`: messages, JSON scalars, lists, dicts,
    datetimes...; the client holds what is not a message in its JSON form). Registered by
    ``class_name`` (default: the class name).
    """

    class_name: ClassVar[str] = "SerializableException"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "class_name" not in cls.__dict__:
            cls.class_name = cls.__name__
        _exceptions[cls.class_name] = cls

    def __init__(self, message: str = "", **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields
        for name, value in fields.items():
            setattr(self, name, value)

    @classmethod
    def exception_class(cls, class_name: str) -> type[SerializableException] | None:
        """The class registered as ``class_name``, or None."""
        return _exceptions.get(class_name)

    def to_wire(self) -> str:
        """``{"className": ..., "data": {...}}`` as JSON text."""
        data = ",".join(f"{json.dumps(k)}:{value_json(v)}" for k, v in self.fields.items())
        return '{"className":' + json.dumps(self.class_name) + ',"data":{' + data + "}}"

    @classmethod
    def from_wire(cls, message: str, obj: dict[str, Any]) -> SerializableException | None:
        """The exception ``obj`` (as :meth:`to_wire` writes it) describes, if its class is
        registered here and its fields decode; else None."""
        exc_cls = _exceptions.get(obj.get("className"))  # type: ignore[arg-type]
        data = obj.get("data")
        if exc_cls is None or not isinstance(data, dict):
            return None
        try:
            fields = {str(k): from_wire(v) for k, v in data.items()}
        except StreamingError:
            return None
        exc = exc_cls.__new__(exc_cls)
        SerializableException.__init__(exc, message, **fields)
        return exc


class InputStreamFailed(StreamingError):
    """What an input stream raises in the method when the client failed it
    (``stream_error``). Left uncaught, the call fails with ``stream_failed``."""

    code = ErrorCode.STREAM_FAILED.value
    default_detail = "The client failed the input stream."


# -- values on the wire ------------------------------------------------------------------


def value_json(value: Any) -> str:
    """``value`` as a streaming method's value travels: a message as ``{"className",
    "data"}``, lists, tuples and sets as arrays, a ``dict`` with ``str`` keys as an object,
    JSON scalars as themselves, and other values as a message's field of their type would
    travel (``datetime`` ISO 8601 in UTC, ``timedelta`` in milliseconds, ``bytes`` base64,
    ``Decimal`` and ``UUID`` as strings, an enum as its value: docs/protocol.md, "Types on
    the wire"). ``TypeError`` for a value with no wire form (a naive ``datetime``, an
    arbitrary object)."""
    if isinstance(value, SerializableEntity):
        return encode_object(value)
    if value is None or isinstance(value, str | int | float):  # bool is an int
        if isinstance(value, float) and not math.isfinite(value):
            raise TypeError("a streaming method's value must be a finite number")
        return json.dumps(value.value if isinstance(value, enum.Enum) else value)
    if isinstance(value, list | tuple | set | frozenset):
        return "[" + ",".join(value_json(item) for item in value) + "]"
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise TypeError("a streaming method's dict must have str keys")
        pairs = (f"{json.dumps(key)}:{value_json(item)}" for key, item in value.items())
        return "{" + ",".join(pairs) + "}"
    if isinstance(value, enum.Enum):
        return value_json(value.value)
    if isinstance(value, bytearray | memoryview):
        value = bytes(value)
    leaf = next((kind for kind in _LEAVES if isinstance(value, kind)), None)
    if leaf is None:
        raise TypeError(
            "a streaming method's value must be a message, a JSON scalar, a list, a set, a "
            "dict, a datetime, date, time, timedelta, Decimal, UUID, bytes or an enum, "
            f"not {type(value).__name__}"
        )
    if leaf is datetime.datetime:
        try:
            value = to_utc(value)
        except ValueError as exc:
            raise TypeError(f"a streaming method's datetime: {exc}") from None
    elif leaf is decimal.Decimal and not value.is_finite():
        raise TypeError("a streaming method's Decimal must be finite")
    try:  # by the type it is an instance of: a subclass (a test clock's datetime) too
        return value_adapter(leaf).dump_json(value).decode()
    except PydanticSerializationError as exc:
        raise TypeError(f"a streaming method's {leaf.__name__}: {exc}") from None


#: The types a value may be beyond messages, JSON scalars and containers, most specific
#: first (a datetime is a date).
_LEAVES: tuple[type, ...] = (
    datetime.datetime,
    datetime.date,
    datetime.time,
    datetime.timedelta,
    decimal.Decimal,
    uuid.UUID,
    bytes,
)


def from_wire(obj: Any) -> Any:
    """The inverse of :func:`value_json` without type hints (what a client does):
    ``{"className", "data"}`` objects become messages, other objects dicts (their values
    decoded the same way), the rest stays as it is on the wire. Raises ``UnknownClass`` or
    ``InvalidMessage``. (A ``dict`` whose only keys are ``className`` and ``data``, the
    latter an object, reads as a message.)"""
    if isinstance(obj, list):
        return [from_wire(item) for item in obj]
    if isinstance(obj, dict):
        class_name, data = obj.get("className"), obj.get("data")
        if isinstance(class_name, str) and isinstance(data, dict) and len(obj) == 2:
            return decode_object(class_name, data)
        return {key: from_wire(value) for key, value in obj.items()}  # a dict[str, T]
    return obj


# -- type hints -> shapes ----------------------------------------------------------------

# ("e", cls) a message; ("s", type) a scalar; ("l", item) a list; ("set", item, set or
# frozenset); ("d", value) a dict with str keys; ("p", adapter) another type, as a message
# field of that type travels; ("u", members, their JSON types, their names) a union;
# ("a",) anything (typing.Any): plain JSON, not validated; ("w",) the same as a client
# reads it (messages decoded).
_Shape = tuple[Any, ...]
_SCALARS: dict[Any, str] = {
    str: "a valid string",
    int: "a valid integer",
    float: "a valid number",
    bool: "a valid boolean",
    type(None): "None",
}
_STREAMS = (
    collections.abc.AsyncIterator,
    collections.abc.AsyncIterable,
    collections.abc.AsyncGenerator,
)
_BAD = object()
#: Types whose every instance (of the type itself) a client reads back as one: a result
#: of one of them is taken as it is, not read again (an aware datetime: value_json
#: refuses a naive one). Not Decimal (NaN) or time.
_EXACT = (datetime.datetime, datetime.date, datetime.timedelta, uuid.UUID, bytes)
#: A list's validation stops at its first error (one object: value_adapter caches by it).
_FAIL_FAST = Field(fail_fast=True)


def _shape(annotation: Any, where: str) -> _Shape:
    if annotation is None:
        return ("s", type(None))
    if annotation is typing.Any:
        return ("a",)
    if isinstance(annotation, type) and typing.get_origin(annotation) is None:
        if issubclass(annotation, SerializableEntity):
            return ("e", annotation)
        if annotation in _SCALARS:
            return ("s", annotation)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        inner = _shape(args[0], where)
        if not _constrains(annotation.__metadata__):
            return inner  # notes for people or other tools (a docstring, a "units")
        if _holds_messages(inner):
            raise TypeError(
                f"{where}: {annotation!r}: constraints on a message class, or on a type "
                "that holds one, are not checked here: put them on the message's fields"
            )
        # pydantic's constraints (Field(ge=1), max_length, a validator) on a value, a list,
        # a dict, X | None...: checked as a message field of that type is (helper
        # "attacker12": on anything but a scalar they were dropped without a word).
        check_unions(annotation, where)
        return ("p", _adapter(annotation, where))
    if origin in (typing.Union, types.UnionType):
        check_distinct(annotation, args, where)
        # With each member, the JSON types it may take (None: any), so that a value is tried
        # as the members that may take it only; an int before a float (3 is an int, 3.5 a
        # float), whichever the hint names first.
        pairs = sorted(
            ((_shape(arg, where), _json_types(arg)) for arg in args),
            key=lambda pair: pair[0] == ("s", float),
        )
        named = ", ".join(type_name(arg) for arg in args if arg is not type(None))
        return ("u", tuple(m for m, _ in pairs), tuple(a for _, a in pairs), named)
    if origin in (list, collections.abc.Sequence) and len(args) == 1:
        item = _shape(args[0], where)
        if item[0] == "p":
            # The whole list in one pass of pydantic's (the first error stops it), not one
            # JSON round trip an item: 10,000 Decimals 18 ms -> 3 ms (helper "attacker12").
            whole = _adapter(Annotated[list[args[0]], _FAIL_FAST], where)  # type: ignore[valid-type]
            return ("l", item, whole)
        return ("l", item)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return ("l", _shape(args[0], where))
    if origin in (set, frozenset, collections.abc.Set) and len(args) == 1:
        item = _shape(args[0], where)
        if item[0] in ("e", "l", "d", "set"):
            raise TypeError(f"{where}: {annotation!r}: a set's items must be hashable values")
        return ("set", item, frozenset if origin is frozenset else set)
    if origin in (dict, collections.abc.Mapping) and len(args) == 2 and args[0] is str:
        return ("d", _shape(args[1], where))
    leaf = isinstance(annotation, type) and issubclass(annotation, (*_LEAVES, enum.Enum))
    if leaf or origin is typing.Literal:
        # datetime, date, time, timedelta, Decimal, UUID, bytes, an enum, a Literal: as a
        # message's field of that type travels (streaming.serialization.value_adapter).
        # With the type whose every instance a result may be as it is (_conform).
        exact = leaf and (annotation in _EXACT or issubclass(annotation, enum.Enum))
        return (
            ("p", value_adapter(annotation), annotation)
            if exact
            else ("p", value_adapter(annotation))
        )
    raise TypeError(
        f"{where}: {annotation!r} is not a streaming method type (a message class, str, "
        "int, float, bool, None, Any, datetime, date, time, timedelta, Decimal, UUID, bytes, "
        "an enum, a Literal, list[...], tuple[..., ...], set[...], frozenset[...], "
        "dict[str, ...], a union or X | None)"
    )


#: The Python types of the JSON values of each kind of ``serialization.wire_kinds``.
_KIND_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "iso": (str,), "integer": (int,), "float": (int, float),
    "bool": (bool,), "message": (dict,), "object": (dict,), "null": (type(None),),
}  # fmt: skip
_ARRAYS = (list, tuple, set, frozenset, collections.abc.Sequence, collections.abc.Set)


def _json_types(annotation: Any) -> frozenset[type] | None:
    """The types of the JSON values (``json.loads``'s) a value of ``annotation`` may
    travel as; None: not known, any."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _json_types(typing.get_args(annotation)[0])
    if annotation is None or annotation is type(None):
        return frozenset({type(None)})
    if origin in _ARRAYS:
        return frozenset({list})
    kinds = wire_kinds(annotation)
    if origin is typing.Literal and None in typing.get_args(annotation):
        kinds = kinds | {"null"}  # Literal[None, "a"] takes a null
    if not kinds:
        return None
    return frozenset(t for kind in kinds for t in _KIND_TYPES[kind])


def _constrains(metadata: tuple[Any, ...]) -> bool:
    """Whether ``Annotated``'s ``metadata`` holds something pydantic checks (``Field``,
    ``annotated_types``' constraints, a validator, or another library's or the app's own
    object that speaks pydantic's protocol, ``__get_pydantic_core_schema__``), not notes
    for people."""
    return any(
        type(item).__module__.split(".")[0] in ("pydantic", "annotated_types")
        or hasattr(item, "__get_pydantic_core_schema__")
        for item in metadata
    )


def _holds_messages(shape: _Shape) -> bool:
    kind = shape[0]
    if kind == "e":
        return True
    if kind in ("l", "d", "set"):
        return _holds_messages(shape[1])
    if kind == "u":
        return any(_holds_messages(member) for member in shape[1])
    return False


def _adapter(annotation: Any, where: str) -> Any:
    """:func:`value_adapter`, its failures a ``TypeError`` that names ``where``."""
    try:
        return value_adapter(annotation)
    except (TypeError, SchemaError) as exc:
        raise TypeError(f"{where}: {annotation!r}: {exc}") from None


def _stream_item(annotation: Any) -> Any:
    """``T`` of ``AsyncIterator[T]`` (or AsyncIterable, AsyncGenerator), else ``_BAD``."""
    if typing.get_origin(annotation) is typing.Annotated:  # the hints keep their extras
        return _stream_item(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in _STREAMS:
        args = typing.get_args(annotation)
        return args[0] if args else typing.Any
    return _BAD


def _decode(shape: _Shape, value: Any, path: str, errors: list[dict[str, Any]]) -> Any:
    """``value`` validated as ``shape``; ``_BAD`` (with ``errors`` added) if it is not."""
    kind = shape[0]
    if kind == "s":
        expected = shape[1]
        if type(value) is expected or (expected is float and type(value) is int):
            if expected is not float:
                return value
            try:
                return float(value)
            except OverflowError:  # 10**309 (helper "attacker11": the call went unanswered)
                errors.append({"path": echo(path), "reason": "Input should be a finite number"})
                return _BAD
        errors.append({"path": echo(path), "reason": f"Input should be {_SCALARS[expected]}"})
        return _BAD
    if kind == "e":
        return _decode_entity(shape[1], value, path, errors)
    if kind == "l":
        if type(value) is not list:
            errors.append({"path": echo(path), "reason": "Input should be a valid list"})
            return _BAD
        start = 0
        if len(shape) > 2:  # items of one pydantic type: the list in one pass
            try:
                return shape[2].validate_json(json.dumps(value))
            except ValidationError as exc:  # stopped at its first error: read on from there
                first = exc.errors()[0]["loc"]
                start = first[0] if first and isinstance(first[0], int) else 0
        items = []
        for i, item in enumerate(value[start:], start):
            if len(errors) >= MAX_ERRORS:  # enough said: the rest is not read (attacker11)
                return _BAD
            items.append(_decode(shape[1], item, f"{path}.{i}", errors))
        return _BAD if any(item is _BAD for item in items) else items
    if kind == "d":
        if type(value) is not dict:
            errors.append({"path": echo(path), "reason": "Input should be a valid dictionary"})
            return _BAD
        decoded = {}
        for key, item in value.items():
            if len(errors) >= MAX_ERRORS:
                return _BAD
            decoded[key] = _decode(shape[1], item, f"{path}.{key}", errors)
        return _BAD if any(item is _BAD for item in decoded.values()) else decoded
    if kind == "set":
        items = _decode(("l", shape[1]), value, path, errors)
        if items is _BAD:
            return _BAD
        try:
            return shape[2](items)
        except TypeError:  # an unhashable item (a message)
            errors.append({"path": echo(path), "reason": "Input should hold hashable items"})
            return _BAD
    if kind == "p":
        try:
            return shape[1].validate_json(json.dumps(value))
        except ValidationError as exc:
            errors.extend(value_errors(exc, path))
            return _BAD
    if kind == "u":
        pairs = [p for p in zip(shape[1], shape[2], strict=True) if p[0] != ("s", type(None))]
        if value is None and len(pairs) < len(shape[1]):
            return None
        if len(pairs) == 1:  # X | None: X's own errors
            return _decode(pairs[0][0], value, path, errors)
        json_type = type(value)
        for member, takes in pairs:
            if takes is not None and json_type not in takes:
                continue  # a member this JSON cannot be: not tried (attacker11)
            attempt: list[dict[str, Any]] = []
            result = _decode(member, value, path, attempt)
            if result is not _BAD:
                return result
        errors.append({"path": echo(path), "reason": f"Input should be one of: {shape[3]}"})
        return _BAD
    if kind == "w":  # any JSON, messages decoded (a client's Any: ValueReader)
        try:
            return from_wire(value)
        except StreamingError as exc:
            errors.append({"path": echo(path), "reason": exc.detail})
            return _BAD
    return value  # "a": any JSON value


def result_errors(shape: _Shape, value: Any, path: str = "result") -> list[dict[str, Any]]:
    """Why ``value``, returned (or yielded) by a method whose return hint is ``shape``,
    is not of that type: what a client told the method's type
    (``returns=``, :class:`ValueReader`) would refuse; empty when it is. Checked on the
    Python value, so a message instance costs an ``isinstance``: a message is validated
    when it is made. Values of types pydantic reads (``datetime``, ``Decimal``, an enum,
    a constrained ``Annotated`` type) are checked in their wire form, as the client reads
    them. An enum where its value's type is declared is taken (it travels as its value)."""
    errors: list[dict[str, Any]] = []
    _conform(shape, value, path, errors)
    return errors


def _conform(shape: _Shape, value: Any, path: str, errors: list[dict[str, Any]]) -> None:
    if len(errors) >= MAX_ERRORS:
        return
    kind = shape[0]
    if kind == "s":
        expected = shape[1]
        if isinstance(value, enum.Enum):
            value = value.value  # as value_json sends it
        # Subclasses travel as their base: Django's SafeString (format_html, a template's
        # render) for str, numpy.float64 for float (helper "reviewer13"); bool is no int.
        if expected is bool or expected is type(None):
            if type(value) is expected:
                return
        elif isinstance(value, expected) and not isinstance(value, bool):
            return
        elif expected is float and isinstance(value, int) and not isinstance(value, bool):
            return
        reason = f"Should be {_SCALARS[expected]}, not {type(value).__name__}"
    elif kind == "e":
        if isinstance(value, shape[1]):
            return
        reason = f"Should be a {shape[1].class_name}, not {type(value).__name__}"
    elif kind in ("l", "set"):
        if not isinstance(value, list | tuple | set | frozenset):
            reason = f"Should be a list, not {type(value).__name__}"
        elif kind == "l" and len(shape) > 2 and len(shape[1]) < 3:  # pydantic's, in one pass
            _conform(("p", shape[2]), value, path, errors)
            return
        else:
            item_shape = shape[1]
            if item_shape[0] == "e" and all(isinstance(item, item_shape[1]) for item in value):
                return  # messages (the common list): no call an item
            for i, item in enumerate(value):
                _conform(item_shape, item, f"{path}.{i}", errors)
            return
    elif kind == "d":
        if not isinstance(value, dict):
            reason = f"Should be a dict, not {type(value).__name__}"
        else:
            for key, item in value.items():
                _conform(shape[1], item, f"{path}.{key}", errors)
            return
    elif kind == "p":
        exact = shape[2] if len(shape) > 2 else None
        if exact is not None and (
            type(value) is exact or (isinstance(value, enum.Enum) and isinstance(value, exact))
        ):
            return  # an instance of a type taken as it is (_EXACT), an enum's member
        try:
            shape[1].validate_json(value_json(value))
        except ValidationError as exc:
            errors.extend(value_errors(exc, path))
        return
    elif kind == "u":
        for member in shape[1]:
            attempt: list[dict[str, Any]] = []
            _conform(member, value, path, attempt)
            if not attempt:
                return
        reason = f"Should be one of: {shape[3]}, not {type(value).__name__}"
    else:  # "a", "w": any value
        return
    errors.append({"path": path, "reason": reason})


def _decode_entity(
    cls: type[SerializableEntity], value: Any, path: str, errors: list[dict[str, Any]]
) -> Any:
    if type(value) is not dict:
        errors.append({"path": echo(path), "reason": f"Input should be a {cls.class_name}"})
        return _BAD
    class_name, data = value.get("className"), value.get("data")
    if not (isinstance(class_name, str) and isinstance(data, dict)):
        class_name, data = cls.class_name, value  # its fields alone: the declared class
    try:
        obj = decode_object(class_name, data)
    except UnknownClass as exc:
        errors.append({"path": echo(f"{path}.className"), "reason": exc.detail})
        return _BAD
    except InvalidMessage as exc:
        for err in exc.errors or [{"path": "(root)", "reason": exc.detail}]:
            inner = err.get("path")
            errors.append(
                {
                    "path": echo(path if inner == "(root)" else f"{path}.{inner}"),
                    "reason": err.get("reason", ""),
                }
            )
        return _BAD
    if not isinstance(obj, cls):
        errors.append({"path": echo(f"{path}.className"), "reason": f"Expected {cls.class_name}"})
        return _BAD
    return obj


class ValueReader:
    """Reads a streaming method's values as the type hint ``annotation``, as the server
    reads its arguments: what a client does when told the method's return type
    (``client.<endpoint>.<method>(returns=...)``).

    ``annotation`` is the method's return annotation as the server writes it
    (``datetime``, ``list[Post]``, ``dict[str, Decimal]``, ``AsyncIterator[Post]``): a
    stream's values are read as its item type, a method's one value as the whole. A
    non-stream annotation given for a method that streams is taken as its item type.
    ``TypeError`` (at once) for a hint that is not a streaming method type; :meth:`value`
    and :meth:`item` raise ``InvalidMessage`` (its ``errors`` name each failing path) for
    what the server sent that is not of it.
    """

    __slots__ = ("_item", "_value", "annotation")

    def __init__(self, annotation: Any) -> None:
        self.annotation = annotation
        item = _stream_item(annotation)
        if item is _BAD:
            self._value = self._item = _reading(_shape(annotation, "returns"))
        else:
            self._item = _reading(_shape(item, "returns"))
            self._value = ("l", self._item)

    def __repr__(self) -> str:
        return f"<ValueReader {self.annotation!r}>"

    def value(self, obj: Any) -> Any:
        """The method's value ``obj`` (its ``done`` frame's ``value``) as the type."""
        return self._read(self._value, obj)

    def item(self, obj: Any) -> Any:
        """One of a stream's values (a ``value`` frame's) as the item type."""
        return self._read(self._item, obj)

    @staticmethod
    def _read(shape: _Shape, obj: Any) -> Any:
        errors: list[dict[str, Any]] = []
        decoded = _decode(shape, obj, "value", errors)
        if decoded is _BAD:
            raise InvalidMessage(
                f"The value is not of the type asked for: {len(errors)} field(s) failed "
                "validation.",
                errors=errors[:MAX_ERRORS],
            )
        return decoded


def _reading(shape: _Shape) -> _Shape:
    """``shape`` with each ``Any`` read as a client without hints reads it (``"w"``:
    messages as their classes), not left as plain JSON as the server leaves an argument."""
    kind = shape[0]
    if kind == "a":
        return ("w",)
    if kind in ("l", "d"):
        return (kind, _reading(shape[1]), *shape[2:])
    if kind == "set":
        return ("set", _reading(shape[1]), shape[2])
    if kind == "u":
        return ("u", tuple(_reading(member) for member in shape[1]), *shape[2:])
    return shape


# -- the decorator and the per-method spec -----------------------------------------------


@dataclass(frozen=True)
class _Options:
    login_required: bool = False
    required_permissions: tuple[str, ...] = ()


@dataclass
class _Param:
    name: str
    shape: _Shape
    required: bool
    none_if_missing: bool = False


def _admits_none(shape: _Shape) -> bool:
    if shape[0] == "u":
        return any(_admits_none(member) for member in shape[1])
    return shape == ("s", type(None)) or shape[0] == "a"


@dataclass
class MethodSpec:
    """One streaming method of an endpoint class, as its type hints define it."""

    name: str
    function: Callable[..., Any]
    params: list[_Param] = field(default_factory=list)
    #: Input stream parameters: name -> item shape.
    streams: dict[str, _Shape] = field(default_factory=dict)
    #: The result's shape (of each value, for a stream).
    result: _Shape = ("a",)
    returns_stream: bool = False
    login_required: bool = False
    required_permissions: tuple[str, ...] = ()

    def decode_args(self, raw: dict[str, Any], opened: list[Any] | None = None) -> dict[str, Any]:
        """Validated keyword arguments (stream parameters aside); ``InvalidMessage`` naming
        each failing field otherwise. Unknown names are ignored, as unknown fields are.

        ``opened`` is the call's ``streams``: the input streams the client opens. Each of
        the method's must be in it (a stream the client never opens would be waited for
        for ever), and nothing else; None (a client of the earlier protocol, which did
        not name them) takes every one as opened. An argument named as an input stream
        is refused either way: its values come as ``stream_value`` frames."""
        errors: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {}
        for name in self.streams:
            if name in raw:
                errors.append({"path": name, "reason": "An input stream: send it as stream values"})
            elif opened is not None and name not in opened:
                errors.append({"path": name, "reason": "Input stream not opened"})
        for name in opened or ():
            if not isinstance(name, str) or name not in self.streams:
                errors.append({"path": echo(str(name)), "reason": "No such input stream"})
        for param in self.params:
            if param.name not in raw:
                if param.required:
                    errors.append({"path": echo(param.name), "reason": "Field required"})
                elif param.none_if_missing:
                    kwargs[param.name] = None
                continue
            value = _decode(param.shape, raw[param.name], param.name, errors)
            if value is not _BAD:
                kwargs[param.name] = value
        if errors:
            raise InvalidMessage(
                f"Invalid arguments for {echo(self.name)}: {len(errors)} field(s) failed "
                "validation.",
                errors=errors[:MAX_ERRORS],
            )
        return kwargs


def streaming_method(
    function: Callable[..., Any] | None = None,
    *,
    login_required: bool = False,
    required_permissions: tuple[str, ...] | list[str] = (),
) -> Any:
    """Mark an endpoint method as callable by clients by name (see the module docstring).

    ``@streaming_method`` or ``@streaming_method(login_required=True,
    required_permissions=("app.perm",))``: these apply to this method on top of the
    endpoint's own ``login_required``/``required_permissions``, checked at every call.
    The method is ``async def name(self, session, <typed parameters>) -> <type>`` (an
    async generator for a stream result).
    """
    options = _Options(login_required, tuple(required_permissions))

    def mark(func: Callable[..., Any]) -> Callable[..., Any]:
        if not (inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func)):
            raise TypeError(
                f"@streaming_method {func.__qualname__} must be an async def "
                "(or an async generator)."
            )
        func.__streaming_method__ = options  # type: ignore[attr-defined]
        return func

    return mark(function) if function is not None else mark


def _caller_namespace() -> dict[str, Any]:
    """The locals of the frame defining the class (an endpoint inside a test function
    refers to message classes defined there)."""
    frame = sys._getframe(1)
    package = __name__.rpartition(".")[0]
    while frame is not None and (
        frame.f_globals.get("__name__", "").startswith(package + ".")
        or frame.f_code.co_filename.startswith("<frozen")
        or "pydantic" in frame.f_code.co_filename
    ):
        frame = frame.f_back  # type: ignore[assignment]
    return dict(frame.f_locals) if frame is not None else {}


def collect_methods(cls: type) -> dict[str, MethodSpec]:
    """The streaming methods of ``cls`` (an ``Endpoint`` subclass), inherited ones included.

    Raises ``TypeError`` naming the method and parameter for a hint that is not allowed.
    """
    specs: dict[str, MethodSpec] = {}
    namespace: dict[str, Any] | None = None
    for name in dir(cls):
        func = getattr(cls, name, None)
        options = getattr(func, "__streaming_method__", None)
        if not isinstance(options, _Options):
            continue
        if namespace is None:
            namespace = {**_caller_namespace(), cls.__name__: cls}
        specs[name] = _spec(cls, name, func, options, namespace)  # type: ignore[arg-type]
    return specs


def _spec(
    cls: type, name: str, func: Callable[..., Any], options: _Options, namespace: dict[str, Any]
) -> MethodSpec:
    where = f"{cls.__qualname__}.{name}"
    try:
        hints = typing.get_type_hints(
            func, globalns=func.__globals__, localns=namespace, include_extras=True
        )
    except NameError as exc:
        raise TypeError(f"{where}: cannot resolve a type hint ({exc}).") from None
    spec = MethodSpec(
        name,
        func,
        login_required=options.login_required,
        required_permissions=options.required_permissions,
    )
    parameters = list(inspect.signature(func).parameters.values())
    if len(parameters) < 2:
        raise TypeError(f"{where} must take (self, session, ...).")
    for param in parameters[2:]:
        if param.kind not in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
            raise TypeError(f"{where}: *args and **kwargs are not allowed ({param.name}).")
        if param.name not in hints:
            raise TypeError(f"{where}: parameter {param.name!r} needs a type hint.")
        item = _stream_item(hints[param.name])
        if item is not _BAD:
            spec.streams[param.name] = _shape(item, f"{where}({param.name})")
            continue
        shape = _shape(hints[param.name], f"{where}({param.name})")
        # As a message's nullable field may be left out (it is then None), so may such
        # an argument without a default.
        nullable = param.default is param.empty and _admits_none(shape)
        required = param.default is param.empty and not nullable
        spec.params.append(_Param(param.name, shape, required, nullable))
    if "return" not in hints:
        raise TypeError(f"{where}: the return type needs a hint (None, a type, AsyncIterator).")
    item = _stream_item(hints["return"])
    if item is not _BAD:
        spec.returns_stream = True
        spec.result = _shape(item, f"{where}'s result")
    elif inspect.isasyncgenfunction(func):
        raise TypeError(f"{where} is an async generator: annotate it -> AsyncIterator[T].")
    else:
        spec.result = _shape(hints["return"], f"{where}'s result")
    return spec


# -- the server side: calls on one socket ------------------------------------------------


class CallSession(StreamingSession):
    """The ``session`` a call gets: the endpoint's user and stream, with listeners of its
    own, which go when the call ends (the endpoint's user object stays)."""

    __slots__ = ()

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._end()
        self._connection = None


class InputStream:
    """What a stream parameter receives: an async iterator of the client's values.

    Ends (``StopAsyncIteration``) at the client's ``stream_end``; raises
    :class:`InputStreamFailed` at its ``stream_error``. The server grants the client
    credit as the method takes values: at most :data:`DEFAULT_CREDIT` wait here.
    """

    __slots__ = (
        "_allowed",
        "_call",
        "_changed",
        "_ended",
        "_failure",
        "_items",
        "_taken",
        "index",
        "name",
        "shape",
    )

    def __init__(self, call: Call, name: str, shape: _Shape) -> None:
        self._call = call
        self.name = name
        self.shape = shape
        self._items: deque[tuple[Any, int]] = deque()
        self._changed = asyncio.Event()
        self._ended = False
        self._failure: InputStreamFailed | None = None
        self._allowed = 0  # values the client may still send
        self._taken = 0  # values taken since the last grant
        self.index = 0  # values received (for error paths)

    def __aiter__(self) -> InputStream:
        return self

    async def __anext__(self) -> Any:
        while not self._items:
            if self._failure is not None:
                raise self._failure
            if self._ended:
                raise StopAsyncIteration
            self._changed.clear()
            await self._changed.wait()
        value, size = self._items.popleft()
        self._call.calls.release(size)
        self._taken += 1
        if self._taken >= max(1, DEFAULT_CREDIT // 2) and not self._ended:
            self.grant(self._taken)
        return value

    def grant(self, n: int) -> None:
        self._allowed += n
        self._taken = 0
        self._call.send(encode_method("credit", self._call.id, n=n, stream=self.name))

    def _push(self, frame: MethodFrame) -> str | None:
        """Take one frame of the client's; an error (code) to fail the call with, or None."""
        if self._ended or self._failure is not None:
            return ErrorCode.MALFORMED_FRAME  # a value after the end
        command = frame.command
        if command == "stream_end":
            self._ended = True
        elif command == "stream_error":
            message = frame.args.get("message") or "The client failed the input stream."
            self._failure = InputStreamFailed(f"{self.name}: {echo(message)}")
        else:
            if self._allowed <= 0:
                return ErrorCode.RATE_LIMITED
            self._allowed -= 1
            errors: list[dict[str, Any]] = []
            value = _decode(self.shape, frame.args["value"], f"{self.name}.{self.index}", errors)
            self.index += 1
            if value is _BAD:
                self._call.invalid = errors[:MAX_ERRORS]
                return ErrorCode.INVALID_MESSAGE
            if not self._call.calls.reserve(frame.size):
                return ErrorCode.RATE_LIMITED
            self._items.append((value, frame.size))
        self._changed.set()
        return None

    def _release(self) -> None:
        while self._items:
            self._call.calls.release(self._items.popleft()[1])


class Call:
    """One call in progress on one socket."""

    def __init__(
        self,
        calls: Calls,
        call_id: str,
        slot: EndpointSlot,
        spec: MethodSpec,
        credit: int,
        held: int = 0,
    ) -> None:
        self.calls = calls
        self.id = call_id
        #: Bytes of the call frame counted in the connection's waiting memory until the
        #: call ends (its arguments live as long: Calls.reserve).
        self.held = held
        self.slot = slot
        self.spec = spec
        self.endpoint: str = slot.cls.name
        self.lane = Lane(f"{self.endpoint}.{spec.name}")
        self.credit = min(credit, MAX_CREDIT)
        self._credit_changed = asyncio.Event()
        # Made now, not when the call starts in its lane: a stream frame that comes first
        # gets the protocol's answer (a stream_end is taken, a stream_value is past its
        # credit), not "no such stream" (seen, helper "attacker7").
        self.inputs: dict[str, InputStream] = {
            name: InputStream(self, name, shape) for name, shape in spec.streams.items()
        }
        self.session: CallSession | None = None
        self.ended = False  # no frame is sent for it any more
        self.started = False  # its task began running the method
        self.invalid: list[dict[str, Any]] | None = None

    def send(self, text: str) -> bool:
        """Queue one of the call's frames; False if it was not (the call ended, the socket
        is closing). A frame larger than the server may send fails the call instead,
        ``message_too_large`` with its id, and ends it: a stream stops at that value."""
        if self.ended:
            return False
        consumer = self.calls.consumer
        size = consumer.oversize(text)
        if size:
            limit = consumer._max_send
            logger.warning(
                "%s.%s: a %d-byte frame is larger than the server may send (%d bytes); "
                "the call fails",
                self.slot.cls.__qualname__,
                self.spec.name,
                size,
                limit,
            )
            self.end()  # first: the answer below is sent once, whatever its own size
            consumer.send_text(
                encode_method(
                    "fail",
                    self.id,
                    code=str(ErrorCode.MESSAGE_TOO_LARGE),
                    message=f"A frame of {size} bytes is larger than the server may send "
                    f"({limit} bytes).",
                ),
                self.endpoint,
            )
            return False
        return consumer.queue_text(text, self.endpoint)  # its size checked just above

    def fail(
        self,
        code: str,
        message: str,
        *,
        errors: list[dict[str, Any]] | None = None,
        exception: str | None = None,
    ) -> None:
        """Send ``fail`` (unless the call already ended) and end the call."""
        fields: dict[str, Any] = {"code": str(code), "message": message}
        if errors is not None:
            fields["errors"] = errors
        if exception is not None:
            fields["exception"] = json.loads(exception)
        self.send(encode_method("fail", self.id, **fields))
        self.end()

    def end(self) -> None:
        """No more frames for this call; it leaves the socket's table (its id is free)."""
        if self.ended:
            return
        self.ended = True
        self.calls.forget(self)
        for stream in self.inputs.values():
            stream._release()
        if not self.started:  # else its task holds its arguments until it ends (_run)
            self._release_held()

    def _release_held(self) -> None:
        if self.held:
            self.calls.release(self.held)
            self.held = 0

    def cancel(self) -> None:
        """End the call and stop its task (a generator is closed: its ``finally`` runs)."""
        self.end()
        self.lane.cancel()
        if not self.started:  # its task never ran (or never will): close its session here
            self._close_session()

    def add_credit(self, n: int) -> None:
        self.credit = min(MAX_CREDIT, self.credit + n)
        self._credit_changed.set()

    def _close_session(self) -> None:
        if self.session is not None:
            self.session._close()
        self.calls.live.discard(self)

    async def start(self, raw_args: dict[str, Any], opened: list[Any] | None = None) -> None:
        """Check the caller and the arguments, then run the method in the call's task.

        Runs in the endpoint's lane: after ``stream_opened``, and under the identity the
        endpoint is open for. Whatever fails on the way (a permission check whose backend
        is down) fails the call with ``internal_error``: a call is always answered."""
        try:
            await self._start(raw_args, opened)
        except Exception:
            self._internal_error()

    async def _start(self, raw_args: dict[str, Any], opened: list[Any] | None) -> None:
        from .consumer import EndpointStatus

        if self.ended:
            return  # cancelled before it started
        slot, spec, name = self.slot, self.spec, f"{self.endpoint}.{self.spec.name}"
        status = slot.status
        if status is EndpointStatus.NOT_AUTHENTICATED:
            self.fail(ErrorCode.NOT_AUTHENTICATED, f"{echo(name)} requires a signed-in user.")
            return
        if status is EndpointStatus.FORBIDDEN:
            self.fail(ErrorCode.FORBIDDEN, f"You may not call {echo(name)}.")
            return
        if status is not EndpointStatus.OPEN or slot.session is None:
            self.fail(
                ErrorCode.INTERNAL_ERROR,
                f"Endpoint {self.endpoint!r} is not available on this connection.",
            )
            return
        user = slot.session.user
        if spec.login_required or spec.required_permissions:
            if not getattr(user, "is_authenticated", False):
                self.fail(ErrorCode.NOT_AUTHENTICATED, f"{echo(name)} requires a signed-in user.")
                return
            if spec.required_permissions and not await _has_perms(user, spec.required_permissions):
                self.fail(ErrorCode.FORBIDDEN, f"You may not call {echo(name)}.")
                return
        try:
            kwargs = spec.decode_args(raw_args, opened)
        except InvalidMessage as exc:
            self.fail(exc.code, exc.detail, errors=exc.errors)
            return
        except Exception:  # a defect of the decoding: answered, never a call left hanging
            self._internal_error()
            return
        if self.ended:
            return
        self.session = CallSession(self.calls.consumer, self.endpoint, user)
        kwargs.update(self.inputs)
        self.calls.live.add(self)
        instance = slot.instance
        self.lane.submit(functools.partial(self._run, instance, kwargs), name)
        for stream in self.inputs.values():
            if not stream._ended and stream._failure is None:
                stream.grant(DEFAULT_CREDIT)

    async def _run(self, instance: Any, kwargs: dict[str, Any]) -> None:
        spec = self.spec
        self.started = True
        try:
            result = spec.function(instance, self.session, **kwargs)
            if spec.returns_stream:
                if inspect.isawaitable(result):
                    result = await result
                await self._stream(result)
                self.send(encode_method("done", self.id))
            else:
                value = await result
                wire = value_json(value)
                self._check_result(value, "result")
                self.send(encode_method("done", self.id, wire))
        except asyncio.CancelledError:
            raise
        except SerializableException as exc:
            try:
                wire = exc.to_wire()
            except Exception:  # a field that is no wire value: a bug of the method's
                self._internal_error()
            else:
                self.fail(ErrorCode.EXCEPTION, exc.message, exception=wire)
        except StreamingError as exc:
            if exc.code in _WIRE_CODES:  # on purpose: InvalidMessage, Forbidden, ...
                self.fail(exc.code, exc.detail, errors=getattr(exc, "errors", None))
            else:
                self._internal_error()
        except Exception:
            self._internal_error()
        finally:
            self.end()
            self._close_session()
            self._release_held()

    def _check_result(self, value: Any, path: str) -> None:
        """``TypeError`` (the call fails with ``internal_error``, logged with what is
        wrong) for a value the method's return hint does not take: a client reading it
        as that type would fail, and one reading it without would get the wrong thing."""
        if self.spec.result[0] == "a":
            return
        errors = result_errors(self.spec.result, value, path)
        if errors:
            where = f"{self.slot.cls.__qualname__}.{self.spec.name}"
            described = "; ".join(f"{e['path']}: {e['reason']}" for e in errors[:3])
            raise TypeError(f"{where} returned a value its return type does not take: {described}")

    def _internal_error(self) -> None:
        logger.exception("%s.%s raised", self.slot.cls.__qualname__, self.spec.name)
        self.fail(ErrorCode.INTERNAL_ERROR, "The server failed to handle this call.")

    async def _stream(self, iterator: Any) -> None:
        """Send the iterator's values, never past the client's credit: without credit the
        iterator is not advanced. The iterator is closed however this ends.

        Fair: with credit, a generator that does not await and a send that does not wait
        (a client reading as fast) never suspend; the loop yields to the event loop every
        ``FAIR_SLICE`` of busy time in the process (``streaming.fairness``), and resumes
        in its socket's turn (:meth:`Calls.take_turn`)."""
        loop = asyncio.get_running_loop()
        calls = self.calls
        sent = 0
        try:
            while True:
                while self.credit <= 0:
                    self._credit_changed.clear()
                    await self._credit_changed.wait()
                outbox = self.calls.consumer.outbox
                if outbox is not None and outbox.crowded():
                    # Credit says the client can take more; the network says not yet.
                    # Many streams' credit together may exceed the send queue's room.
                    await outbox.wait_room()
                try:
                    value = await iterator.__anext__()
                except StopAsyncIteration:
                    return
                self.credit -= 1
                wire = value_json(value)
                self._check_result(value, f"value {sent}")
                sent += 1
                if not self.send(encode_method("value", self.id, wire)):
                    return  # the socket is closing, or the call failed
                if turn_due(loop.time()):  # the other sockets' turn (FAIR_SLICE)
                    await calls.take_turn()
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                await aclose()

    def receive(self, frame: MethodFrame) -> None:
        command = frame.command
        if command == "credit":
            if frame.args.get("stream") is None:
                self.add_credit(frame.args["n"])
            return
        # stream_value, stream_end, stream_error
        stream = self.inputs.get(frame.args["stream"])
        if stream is None:
            self.cancel_with(
                ErrorCode.INVALID_MESSAGE,
                f"{echo(frame.args['stream'])!r} is not an input stream of this call.",
            )
            return
        try:
            code = stream._push(frame)
        except Exception:  # a defect of the decoding: the call fails, not the socket (1011)
            logger.exception(
                "%s.%s: reading an input stream's value", self.endpoint, self.spec.name
            )
            self.cancel_with(ErrorCode.INTERNAL_ERROR, "The server failed to read that value.")
            return
        if code == ErrorCode.INVALID_MESSAGE:
            self.cancel_with(
                code, f"Invalid value in input stream {stream.name!r}.", errors=self.invalid
            )
        elif code == ErrorCode.RATE_LIMITED:
            self.cancel_with(
                code, f"Input stream {stream.name!r} sent past its credit (or memory limit)."
            )
        elif code is not None:
            self.cancel_with(code, f"A value after the end of input stream {stream.name!r}.")

    def cancel_with(self, code: str, message: str, **extra: Any) -> None:
        self.fail(code, message, **extra)
        self.cancel()


async def _has_perms(user: Any, permissions: tuple[str, ...]) -> bool:
    """Whether ``user`` holds ``permissions`` now: read afresh at each call (the socket's
    user object caches what it held when the socket opened)."""
    from django.contrib.auth import get_user_model

    fresh: Any = await get_user_model()._default_manager.filter(pk=user.pk).afirst()
    return fresh is not None and fresh.is_active and bool(await fresh.ahas_perms(permissions))


class Calls:
    """The calls of one socket (``consumer._calls``), by the id the client chose."""

    def __init__(self, consumer: StreamingConsumer) -> None:
        self.consumer = consumer
        self.table: dict[str, Call] = {}
        self.live: set[Call] = set()  # started, task not yet finished
        # Streams waiting for this socket's next turn (take_turn), while any wait: a deque
        # costs 760 bytes, and this object lives as long as its socket.
        self._turns: deque[asyncio.Future[None]] | None = None

    async def take_turn(self) -> None:
        """Yield the event loop (a stream whose ``FAIR_SLICE`` is over), then resume in
        this socket's turn: its streams resume one per turn of the event loop, in the
        order they yielded.

        Each stream that yielded with ``asyncio.sleep(0)`` was ready again at the loop's
        next turn, only to find the slice over and yield again: 256 streams a socket that
        a client kept in credit and never read (helper "chaos10", 100 sockets) cost every
        turn of the loop 25,600 such wake-ups, and another socket's pong took 1.5 s. Now a
        turn wakes at most one stream a socket, and a socket's share of the streams' time
        does not grow with its number of streams."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        if self._turns is None:  # no hand-out scheduled: schedule one
            self._turns = deque()
            loop.call_soon(self._hand_out)
        self._turns.append(waiter)
        await waiter

    def _hand_out(self) -> None:
        """Wake the first stream still waiting for a turn (a cancelled one is skipped),
        and come back at the loop's next turn while others wait."""
        turns = self._turns
        while turns:
            waiter = turns.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break
        if turns:
            asyncio.get_running_loop().call_soon(self._hand_out)
        else:
            self._turns = None

    def forget(self, call: Call) -> None:
        if self.table.get(call.id) is call:
            del self.table[call.id]

    def reserve(self, size: int) -> bool:
        """Count ``size`` bytes of input values in the connection's waiting memory."""
        consumer = self.consumer
        if consumer._pending_bytes + size > consumer._max_pending_bytes:
            return False
        consumer._pending_bytes += size
        return True

    def release(self, size: int) -> None:
        self.consumer._pending_bytes -= size

    def receive(self, frame: MethodFrame) -> None:
        command = frame.command
        if command == "call":
            self._call(frame)
            return
        if command in ("value", "done", "fail"):
            self.consumer._refuse(
                ErrorCode.MALFORMED_FRAME,
                f"'{command}' is sent by the server only.",
                frame.id,
            )
            return
        call = self.table.get(frame.id)
        if call is None:
            return  # a call that has ended: its late frames are ignored
        if command == "cancel":
            call.cancel()
        else:
            call.receive(frame)

    def _call(self, frame: MethodFrame) -> None:
        consumer, args = self.consumer, frame.args
        endpoint, method = args["endpoint"], args["method"]
        if frame.id in self.table:
            consumer._refuse(
                ErrorCode.MALFORMED_FRAME,
                f"Call id {echo(frame.id)!r} is in use by a call in progress.",
                frame.id,
            )
            return

        def refuse(code: str, message: str, endpoint: str | None = None) -> None:
            fields = {"code": str(code), "message": message}
            if endpoint is not None:
                fields["endpoint"] = endpoint
            consumer.send_text(encode_method("fail", frame.id, **fields))

        slot = consumer._slots.get(endpoint)
        if slot is None:
            refuse(
                ErrorCode.UNKNOWN_ENDPOINT, f"Unknown endpoint {echo(endpoint)!r}.", echo(endpoint)
            )
            return
        spec = getattr(slot.cls, "_streaming_methods", {}).get(method)
        if spec is None:
            refuse(
                ErrorCode.UNKNOWN_METHOD,
                f"Endpoint {endpoint!r} has no streaming method {echo(method)!r}.",
            )
            return
        # Calls cancelled whose task has not ended yet (a finally that awaits) still count
        # (helper "attacker12": 1,000 such tasks on one socket, past MAX_CALLS).
        ending = sum(1 for call in self.live if call.ended)
        if len(self.table) + ending >= MAX_CALLS or len(slot.lane) >= consumer._max_pending:
            refuse(ErrorCode.RATE_LIMITED, f"Too many calls in progress (at most {MAX_CALLS}).")
            return
        # Its arguments live until it ends: counted with the frames and stream values that
        # wait (helper "attacker11": 256 calls of 50 KB lists held 150 MiB, uncounted).
        if not self.reserve(frame.size):
            refuse(
                ErrorCode.RATE_LIMITED,
                "The arguments of the calls in progress fill this connection's memory "
                f"({consumer._max_pending_bytes} bytes); wait for a call to end.",
            )
            return
        call = Call(self, frame.id, slot, spec, args.get("credit", DEFAULT_CREDIT), frame.size)
        self.table[frame.id] = call
        start = functools.partial(call.start, args.get("args", {}), args.get("streams"))
        slot.lane.submit(start, "call")

    async def end_endpoint(self, endpoint: str, forbidden: bool) -> None:
        """The endpoint closed on the socket: end its calls (``fail`` ``forbidden`` when the
        user lost a permission, else ``call_ended``) and wait for their tasks."""
        for call in [c for c in self.table.values() if c.endpoint == endpoint]:
            if forbidden:
                call.fail(ErrorCode.FORBIDDEN, "You may no longer call this endpoint.")
            else:
                call.fail(ErrorCode.CALL_ENDED, f"Endpoint {endpoint!r} closed on this socket.")
            call.cancel()
        for call in [c for c in self.live if c.endpoint == endpoint]:
            call.cancel()
            try:
                await call.lane.join()
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise

    def cancel_all(self) -> None:
        """The socket is gone: stop every call at once (no frames)."""
        for call in [*self.table.values(), *self.live]:
            call.cancel()


# -- the consumer's hooks ----------------------------------------------------------------


def calls_of(consumer: StreamingConsumer) -> Calls:
    calls: Calls | None = consumer._calls
    if calls is None:
        calls = consumer._calls = Calls(consumer)
    return calls


def receive(consumer: StreamingConsumer, frame: MethodFrame) -> None:
    """Handle one streaming-method frame from the client (called by the consumer)."""
    calls_of(consumer).receive(frame)


async def end_calls(consumer: StreamingConsumer, endpoint: str, forbidden: bool) -> None:
    """The endpoint is closing on ``consumer``'s socket: its calls end (see Calls)."""
    if consumer._calls is not None:
        await consumer._calls.end_endpoint(endpoint, forbidden)


def cancel_calls(consumer: StreamingConsumer) -> None:
    """The socket closed: every call stops."""
    if consumer._calls is not None:
        consumer._calls.cancel_all()
