"""Classes of plain JSON fields skip the JSON round trip; they must decide exactly alike.

``decode_object`` validates an already-parsed frame with strict Python validation when
every field is a JSON type, and from JSON text otherwise. For every input here the
fast path must accept and refuse exactly as strict JSON validation does, naming the
same fields for the same reasons (pydantic says "list" where JSON mode says "array", and
"a valid dictionary" where it says "an object").

A nested object of a JSON-native class (a field, list item or dict value, declared or named by
``"__className__"``) is validated the same way inside a class that is not JSON-native: the
cases are also run nested, against strict JSON validation of the nested class.
"""

from __future__ import annotations

import enum
import json
from datetime import datetime, timedelta
from typing import Any, Literal

import pytest
from pydantic import Field, ValidationError

from streaming import serialization
from streaming.exceptions import InvalidMessage
from streaming.serialization import SerializableEntity, _error_list, decode_object


class Plain(SerializableEntity):
    class_name = "tests.fast.Plain"
    n: int
    x: float
    s: str = Field(max_length=5)
    flag: bool = False
    tags: list[str] = []
    scores: dict[str, float] = {}
    maybe: int | None = None
    any_: Any = None
    note: str | None  # nullable without a default: may be left out


class PlainChild(Plain):
    """A JSON-native subclass: named by "__className__" where Plain is declared."""

    class_name = "tests.fast.PlainChild"
    more: list[int] = []


class Colour(enum.Enum):
    RED = "red"


class Inner(SerializableEntity):
    class_name = "tests.fast.Inner"
    n: int


@pytest.mark.parametrize(
    "cls",
    [
        type("T1", (SerializableEntity,), {"__annotations__": {"t": tuple[int, int]}}),
        type("T2", (SerializableEntity,), {"__annotations__": {"c": Colour}}),
        type("T3", (SerializableEntity,), {"__annotations__": {"k": Literal["a", "b"]}}),
        type("T4", (SerializableEntity,), {"__annotations__": {"at": datetime}}),
        type("T5", (SerializableEntity,), {"__annotations__": {"inner": Inner}}),
        type("T6", (SerializableEntity,), {"__annotations__": {"m": dict[int, str]}}),
        type("T7", (SerializableEntity,), {"__annotations__": {"b": bytes}}),
        type("T8", (SerializableEntity,), {"__annotations__": {"d": timedelta | None}}),
        type("T9", (SerializableEntity,), {"__annotations__": {"items": list[Inner]}}),
        type("T10", (SerializableEntity,), {"__annotations__": {"m": dict[str, Inner | None]}}),
    ],
    ids=[
        "tuple", "enum", "literal", "datetime", "nested", "int-keys", "bytes", "timedelta",
        "nested-list", "nested-dict",
    ],
)  # fmt: skip
def test_classes_with_non_json_fields_take_the_json_path(cls):
    assert cls._json_native is False


def test_plain_json_fields_take_the_fast_path(monkeypatch):
    assert Plain._json_native is True
    assert PlainChild._json_native is True
    assert Inner._json_native is True

    def no_json_round_trip(*args, **kwargs):
        raise AssertionError("the fast path validates parsed JSON: no JSON text")

    monkeypatch.setattr(Plain, "model_validate_json", no_json_round_trip)
    # A missing nullable field and unknown fields keep it on the fast path.
    assert decode_object(Plain.class_name, {"n": 1, "x": 1.0, "s": "a", "v2": 1}).note is None


class Holder(SerializableEntity):
    """Not JSON-native (message-typed fields): validated from JSON text, with Plain nested."""

    class_name = "tests.fast.Holder"
    item: Plain | None = None
    items: list[Plain] = []
    by_key: dict[str, Plain] = {}


def test_nested_json_native_objects_are_not_turned_into_json_again(monkeypatch):
    dumps = []

    class CountingJson:
        @staticmethod
        def dumps(value, **kwargs):
            dumps.append(value)
            return json.dumps(value, **kwargs)

    monkeypatch.setattr(serialization, "json", CountingJson)
    case = {"n": 1, "x": 1.0, "s": "a"}
    holder = decode_object(Holder.class_name, {"item": case, "items": [case]})
    assert len(dumps) == 1  # no "__className__": the frame's data once, nested objects within
    assert holder == Holder(item=Plain(**case), items=[Plain(**case)])

    dumps.clear()
    tagged = {"__className__": PlainChild.class_name, **case, "more": [1]}
    holder = decode_object(
        Holder.class_name, {"item": case, "items": [case, tagged], "by_key": {"k": tagged}}
    )
    assert type(holder.items[1]) is PlainChild and holder.by_key["k"].more == [1]
    # The frame's data (looked at, then with the nested objects held aside); never a
    # nested object on its own.
    assert len(dumps) == 2 and all("items" in value for value in dumps)


CASES = [
    {"n": 1, "x": 2.5, "s": "abc"},
    {"n": 1, "x": 2, "s": "abc"},  # int for float: accepted by both
    {"n": True, "x": 1.0, "s": "a"},  # bool for int: refused by both
    {"n": 1.0, "x": 1.0, "s": "a"},  # float for int
    {"n": "1", "x": 1.0, "s": "a"},  # string for int
    {"n": 1, "x": "1.5", "s": "a"},
    {"n": 1, "x": 1.0, "s": "toolong"},
    {"n": 1, "x": 1.0, "s": "a", "flag": 1},
    {"n": 1, "x": 1.0, "s": "a", "tags": ["a", 1]},
    {"n": 1, "x": 1.0, "s": "a", "tags": "abc"},
    {"n": 1, "x": 1.0, "s": "a", "scores": {"a": 1, "b": "2"}},
    {"n": 1, "x": 1.0, "s": "a", "maybe": None},
    {"n": 1, "x": 1.0, "s": "a", "any_": {"deep": [1, None, "x"]}},
    {"n": 1, "x": 1.0, "s": "a", "extra": 1},
    {"n": None, "x": 1.0, "s": "a"},
    {"x": 1.0},
    {"n": 10**30, "x": 1e308, "s": ""},
    # unknown fields: ignored, beside good and bad known ones
    {"n": 1, "x": 1.0, "s": "a", "v2": {"deep": [1, {"x": None}]}, "v3": None},
    {"n": "1", "x": 1.0, "s": "a", "v2": "x"},
    {"n": 1, "x": 1.0, "s": "a", "__className__": "tests.fast.Other"},
    # nullable fields: missing, null, a value, a wrong value
    {"n": 1, "x": 1.0, "s": "a", "note": None, "maybe": None},
    {"n": 1, "x": 1.0, "s": "a", "note": "hi", "maybe": 3},
    {"n": 1, "x": 1.0, "s": "a", "note": 5, "maybe": "3"},
    {"note": None},
    # the same words for a non-object or a non-array
    {"n": 1, "x": 1.0, "s": "a", "scores": "abc", "tags": {"a": 1}},
    {"n": 1, "x": 1.0, "s": "a", "scores": [], "tags": None},
]


@pytest.mark.parametrize("data", CASES, ids=[json.dumps(c)[:40] for c in CASES])
def test_fast_path_decides_like_strict_json(data):
    try:
        expected = Plain.model_validate_json(json.dumps(data))
        expected_errors = None
    except ValidationError as exc:
        expected, expected_errors = None, _error_list(exc)
    try:
        got = decode_object(Plain.class_name, data)
        got_errors = None
    except InvalidMessage as exc:
        got, got_errors = None, exc.errors
    assert got == expected
    # Same fields, same reasons; pydantic words one of them differently per mode.
    assert _same_words(got_errors) == _same_words(expected_errors)


#: How a case sits in a Holder: (wrap the case, prefix of the error paths, class expected).
NESTINGS = {
    "field": (lambda c: {"item": c}, "item.", Plain),
    "list item": (lambda c: {"items": [{"n": 0, "x": 0.0, "s": ""}, c]}, "items.1.", Plain),
    "dict value": (lambda c: {"by_key": {"k": c}}, "by_key.k.", Plain),
    "tagged": (
        lambda c: {"item": {**c, "__className__": PlainChild.class_name}},
        "item.",
        PlainChild,
    ),
    "tagged item": (
        lambda c: {"items": [{**c, "__className__": PlainChild.class_name, "more": [1, 2]}]},
        "items.0.",
        PlainChild,
    ),
}  # fmt: skip


@pytest.mark.parametrize("nesting", list(NESTINGS))
@pytest.mark.parametrize("data", CASES, ids=[json.dumps(c)[:40] for c in CASES])
def test_nested_objects_decide_like_strict_json(data, nesting):
    wrap, prefix, cls = NESTINGS[nesting]
    nested = wrap(data)
    inner_data = {k: v for k, v in _innermost(nested).items() if k != "__className__"}
    try:
        expected = cls.model_validate_json(json.dumps(inner_data))
        expected_errors = None
    except ValidationError as exc:
        expected, expected_errors = None, _error_list(exc)
    try:
        got = _innermost_value(decode_object(Holder.class_name, nested))
        got_errors = None
    except InvalidMessage as exc:
        got, got_errors = None, exc.errors
    assert got == expected
    if expected_errors is not None:
        expected_errors = [{**e, "path": prefix + e["path"]} for e in expected_errors]
    assert _same_words(got_errors) == _same_words(expected_errors)
    # Without "__className__" decode_object skips the nested validators (_plain_validator);
    # with them (what a frame holding a tag elsewhere gets) the result is the same.
    try:
        wired = _innermost_value(serialization._validate_json(Holder, nested, None))
        wired_errors = None
    except ValidationError as exc:
        wired, wired_errors = None, _error_list(exc)
    assert wired == expected
    assert _same_words(wired_errors) == _same_words(expected_errors)


def _innermost(nested):
    if "item" in nested:
        return nested["item"]
    if "by_key" in nested:
        return nested["by_key"]["k"]
    return nested["items"][-1]


def _innermost_value(holder):
    if holder.item is not None:
        return holder.item
    if holder.by_key:
        return holder.by_key["k"]
    return holder.items[-1]


def _same_words(errors):
    if errors is None:
        return None
    return [
        {
            **e,
            "reason": e["reason"]
            .replace("a valid array", "a valid list")
            .replace("an object", "a valid dictionary"),
        }
        for e in errors
    ]


# -- datetimes: aware and in UTC, inherited and aliased fields included -----------------------

Stamp = datetime | None


class StampedBase(SerializableEntity):
    class_name = "tests.fast.StampedBase"
    ts: datetime


class StampedChild(StampedBase):
    class_name = "tests.fast.StampedChild"
    other: Stamp = None  # an alias: the annotation never says "datetime"


@pytest.mark.parametrize("field", ["ts", "other"])
def test_inherited_and_aliased_datetime_fields_must_be_aware_and_become_utc(field):
    data = {"ts": "2026-01-01T12:00:00+02:00", "other": "2026-01-01T12:00:00+02:00"}
    decoded = decode_object(StampedChild.class_name, data)
    assert getattr(decoded, field).utcoffset().total_seconds() == 0
    assert getattr(decoded, field).hour == 10
    with pytest.raises(InvalidMessage) as info:
        decode_object(StampedChild.class_name, {**data, field: "2026-01-01T12:00:00"})
    assert [error["path"] for error in info.value.errors] == [field]
