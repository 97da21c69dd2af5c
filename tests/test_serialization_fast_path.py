"""Classes of plain JSON fields skip the JSON round trip; they must decide exactly alike.

``decode_object`` validates an already-parsed frame with strict Python validation when
every field is a JSON type, and from JSON text otherwise. For every input here the
fast path must accept and refuse exactly as strict JSON validation does, naming the
same fields for the same reasons (pydantic says "list" where JSON mode says "array").
"""

from __future__ import annotations

import enum
import json
from datetime import datetime
from typing import Any, Literal

import pytest
from pydantic import Field, ValidationError

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
    ],
    ids=["tuple", "enum", "literal", "datetime", "nested", "int-keys"],
)
def test_classes_with_non_json_fields_take_the_json_path(cls):
    assert cls._json_native is False


def test_plain_json_fields_take_the_fast_path():
    assert Plain._json_native is True


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


def _same_words(errors):
    if errors is None:
        return None
    return [{**e, "reason": e["reason"].replace("a valid array", "a valid list")} for e in errors]


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
