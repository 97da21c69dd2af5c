"""What reading one streaming-method argument costs, in-process (``methods._decode``
through :class:`streaming.methods.ValueReader`, the server's own reading of arguments).

    DJANGO_SETTINGS_MODULE=streampod_project.settings .venv/bin/python -m bench.method_values

Prints the best of five readings of each value, with its size as JSON. Valid and invalid
lists of 10,000 items: an invalid one must cost no more than a valid one of its size
(docs/reliability.md, "Values that cost more than their bytes").
"""

from __future__ import annotations

import datetime
import decimal
import json
import time
from typing import Annotated, Any

import django
from pydantic import Field

django.setup()

from streaming.exceptions import InvalidMessage  # noqa: E402  (after django.setup())
from streaming.methods import ValueReader  # noqa: E402
from streaming.serialization import SerializableEntity  # noqa: E402


class Note(SerializableEntity):
    class_name = "bench.method_values.Note"
    text: str
    n: int = 0


def cost_ms(hint: Any, value: Any, runs: int = 5) -> float:
    reader = ValueReader(hint)
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        try:
            reader.value(value)
        except InvalidMessage:
            pass
        best = min(best, time.perf_counter() - started)
    return best * 1000


CASES: list[tuple[str, Any, Any]] = [
    ("list[datetime | int | Note], 10k 'x'", list[datetime.datetime | int | Note], ["x"] * 10000),
    (
        "list[datetime | int | Note], 10k notes",
        list[datetime.datetime | int | Note],
        [{"text": "a"}] * 10000,
    ),
    ("list[Decimal], 10k invalid", list[decimal.Decimal], ["x"] * 10000),
    ("list[Decimal], 10k valid", list[decimal.Decimal], ["1.5"] * 10000),
    ("list[int], 10k", list[int], [1] * 10000),
    ("list[timedelta], 10k", list[datetime.timedelta], [1500] * 10000),
    ("list[datetime], 10k", list[datetime.datetime], ["2026-01-02T03:04:05Z"] * 10000),
    (
        "list[Annotated[int, Field(ge=0)]], 10k",
        list[Annotated[int, Field(ge=0)]],
        [7] * 10000,
    ),
]


def main() -> None:
    for name, hint, value in CASES:
        size = len(json.dumps(value))
        print(f"{name:42s} {cost_ms(hint, value):8.2f} ms  ({size} bytes)")


if __name__ == "__main__":
    main()
