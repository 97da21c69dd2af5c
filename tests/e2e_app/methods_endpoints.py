"""Streaming methods for the end-to-end and browser tests (tests/e2e/test_methods_e2e.py,
tests/browser/test_js_methods.py), served by the settings tests.e2e_methods_settings.

``stats(name)`` reports what the server's generators did, so that a client can assert
that a slow reader paused the generator (produced values stay within the credit) and that
a cancelled generator ran its ``finally``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

from streaming.endpoint import Endpoint, streaming_method
from streaming.methods import InputStreamFailed, SerializableException
from streaming.serialization import SerializableEntity


class Line(SerializableEntity):
    class_name = "e2e.methods.Line"
    text: str
    n: int


class Stroke(SerializableEntity):
    class_name = "e2e.methods.Stroke"
    x: int
    y: int


class OutOfInk(SerializableException):
    class_name = "e2e.methods.OutOfInk"


#: name -> [values produced, 1 once the generator's finally ran]
_generators: dict[str, list[int]] = {}


class MethodsEndpoint(Endpoint):
    @streaming_method
    async def history(self, session, with_user: int, limit: int = 3) -> list[Line]:
        return [Line(text=f"to {with_user}", n=i) for i in range(limit)]

    @streaming_method
    async def count(self, session, upto: int) -> AsyncIterator[int]:
        for i in range(upto):
            yield i

    @streaming_method
    async def endless(self, session, name: str) -> AsyncIterator[Line]:
        state = _generators[name] = [0, 0]
        try:
            while True:
                state[0] += 1
                yield Line(text=name, n=state[0])
        finally:
            state[1] = 1

    @streaming_method
    async def stats(self, session, name: str) -> list[int]:
        """[produced, finished] of the generator ``name``, and this process's RSS in KiB."""
        produced, finished = _generators.get(name, [0, 0])
        return [produced, finished, _rss_kib()]

    @streaming_method
    async def upload(self, session, strokes: AsyncIterator[Stroke]) -> int:
        total = 0
        try:
            async for stroke in strokes:
                total += stroke.x + stroke.y
        except InputStreamFailed:
            return -1
        return total

    @streaming_method
    async def out_of_ink(self, session, color: str) -> str:
        raise OutOfInk(f"No {color} ink.", color=color)

    @streaming_method
    async def stamp(self, session, at: datetime, counts: dict[str, int]) -> dict[str, Any]:
        """Other types travel as message fields of theirs do; a dict comes back as one."""
        return {"at": at, "counts": counts, "line": Line(text="stamped", n=len(counts))}

    @streaming_method
    async def schedule(
        self, session, start: datetime, every: timedelta, n: int
    ) -> AsyncIterator[datetime]:
        for i in range(n):
            yield start + i * every

    @streaming_method
    async def late(self, session, at: datetime) -> None:
        raise OutOfInk("Too late.", at=at, stock={"red": 0})

    @streaming_method
    async def broken(self, session) -> str:
        raise RuntimeError("internal detail: hunter2")

    @streaming_method(login_required=True)
    async def whoami(self, session) -> int | None:
        return session.auth.authenticated_user_id


def _rss_kib() -> int:
    with open(f"/proc/{os.getpid()}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0
