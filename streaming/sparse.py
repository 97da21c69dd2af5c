"""Tables whose keys mostly hold one value: the value itself, a set once there are two.

An empty ``set`` costs about 216 bytes; a table entry per idle socket (the bus's
listener owners, an owner's (channel, listener) pairs, a user's sockets) pays that
for each key, though nearly every key holds one value. These helpers keep a lone
value as itself and make a set only for a second one.

Contract: values are hashable and are never sets themselves (the bus's ids and
``(channel, listener)`` tuples, consumers). Equality decides "the same value", as a
set does.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

__all__ = ["add", "discard", "values"]


def add(table: dict[Any, Any], key: Hashable, value: Hashable) -> None:
    """Put ``value`` under ``key`` (no-op if it is there)."""
    held = table.get(key)
    if held is None:
        table[key] = value
    elif type(held) is set:
        held.add(value)
    elif held != value:
        table[key] = {held, value}


def discard(table: dict[Any, Any], key: Hashable, value: Hashable) -> bool:
    """Take ``value`` from ``key``; the key goes with its last value. True if the key is
    gone now (or was never there)."""
    held = table.get(key)
    if held is None:
        return True
    if type(held) is set:
        held.discard(value)
        if held:
            return False
    elif held != value:
        return False
    del table[key]
    return True


def values(held: Any) -> set[Any] | tuple[Any, ...]:
    """What a table holds under one key (``table.get(key)``), as a collection."""
    if held is None:
        return ()
    return held if type(held) is set else (held,)
