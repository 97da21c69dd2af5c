"""Datetimes on the wire: ISO 8601 strings with a timezone, nothing else (docs/protocol.md).

Two fuzzer findings (issue 11) are pinned here: a datetime whose UTC value is out of range
got an ``invalid_message`` without ``errors`` (an ``OverflowError`` escaped validation),
and a Unix time in a string (``"1700000000"``) was read as a datetime.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from streaming.exceptions import InvalidMessage
from streaming.serialization import SerializableEntity, decode_object, encode_object


class Stamped(SerializableEntity):
    class_name = "tests.datetimes.Stamped"
    at: datetime
    maybe: datetime | None = None
    many: list[datetime] = []
    by_name: dict[str, datetime] = {}


def errors_of(data: dict) -> list[dict]:
    with pytest.raises(InvalidMessage) as caught:
        decode_object(Stamped.class_name, data)
    return caught.value.errors


@pytest.mark.parametrize(
    "text",
    ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "0001-01-01T00:30:00+00:31"],
)
def test_a_datetime_out_of_range_in_utc_names_its_field(text):
    errors = errors_of({"at": text})
    assert [e["path"] for e in errors] == ["at"]
    assert "year 1 to 9999" in errors[0]["reason"]


@pytest.mark.parametrize("text", ["1700000000", "-5", "1.5", "+5", ".5", "17.", "1.5e3", " 42 "])
def test_a_unix_time_in_a_string_is_refused(text):
    errors = errors_of({"at": text})
    assert [e["path"] for e in errors] == ["at"]
    assert "ISO 8601" in errors[0]["reason"]


@pytest.mark.timeout(60)  # the guard: a quadratic check takes about 40 minutes here
@pytest.mark.parametrize("tail", ["x", ".x", "e", " x"])
def test_a_long_run_of_digits_is_refused_in_time_linear_in_its_length(tail):
    """Helper "attacker11": the Unix-time check's pattern (``\\d+\\.?\\d*``) tried every
    split of a run of digits before failing, so one 16 KB datetime field held the event
    loop 10 s (quadratic: 200,000 digits, 40 minutes). Now it fails in a pass."""
    errors = errors_of({"at": "1" * 200_000 + tail})
    assert [e["path"] for e in errors] == ["at"]


def test_the_rule_holds_at_every_position():
    errors = errors_of(
        {
            "at": "2026-01-01T00:00:00Z",
            "maybe": "1700000000",
            "many": ["2026-01-01T00:00:00Z", "1700000000"],
            "by_name": {"a": "0001-01-01T00:00:00+01:00"},
        }
    )
    assert [e["path"] for e in errors] == ["maybe", "many.1", "by_name.a"]


@pytest.mark.parametrize(
    "value", [1700000000, 1.5, True, None, [], {}, "", "2026-01-01", "2026-01-01T12:00:00"]
)
def test_other_non_datetimes_are_refused(value):
    assert [e["path"] for e in errors_of({"at": value})] == ["at"]


@pytest.mark.parametrize(
    ("text", "utc"),
    [
        ("2026-01-02T03:04:05Z", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2026-01-02T03:04:05.123456+02:00", datetime(2026, 1, 2, 1, 4, 5, 123456, tzinfo=UTC)),
        ("2026-01-02 03:04:05-01:30", datetime(2026, 1, 2, 4, 34, 5, tzinfo=UTC)),
        ("0001-01-01T00:00:00Z", datetime(1, 1, 1, tzinfo=UTC)),
        ("9999-12-31T23:59:59+01:00", datetime(9999, 12, 31, 22, 59, 59, tzinfo=UTC)),
    ],
)
def test_iso_datetimes_with_a_timezone_decode_in_utc(text, utc):
    message = decode_object(
        Stamped.class_name, {"at": text, "maybe": text, "many": [text], "by_name": {"k": text}}
    )
    assert message.at == message.maybe == message.many[0] == message.by_name["k"] == utc
    assert message.at.tzinfo is UTC
    wire = json.loads(encode_object(message))["data"]["at"]
    assert wire == utc.isoformat().replace("+00:00", "Z")


def test_python_construction_takes_aware_datetimes_and_refuses_the_rest():
    local = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    assert Stamped(at=local).at == datetime(2026, 1, 2, 1, 4, 5, tzinfo=UTC)
    for bad in (datetime(2026, 1, 2), "2026-01-02T03:04:05Z", 1700000000):
        with pytest.raises(ValidationError):
            Stamped(at=bad)
    with pytest.raises(ValidationError, match="year 1 to 9999"):
        Stamped(at=datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1))))


class Dated(SerializableEntity):
    class_name = "tests.datetimes.Dated"
    on: date
    days: list[date] = []


@pytest.mark.parametrize("text", ["0", "1700000000", "0" * 60_000, "1.5", " 42 "])
def test_a_unix_time_in_a_string_is_no_date_either(text):
    """Helper "attacker12": a ``date`` took ``"0"`` (and 60,000 zeros) as 1970-01-01,
    the number-in-a-string a datetime already refused."""
    with pytest.raises(InvalidMessage) as caught:
        decode_object(Dated.class_name, {"on": "2026-01-02", "days": [text]})
    assert [(e["path"], "Unix time" in e["reason"]) for e in caught.value.errors] == [
        ("days.0", True)
    ]
    assert decode_object(Dated.class_name, {"on": "2026-01-02"}).on == date(2026, 1, 2)
