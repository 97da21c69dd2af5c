"""How a bench client says who it is: ``?uid=<int>`` in the WebSocket URL.

Every contender reads the user id the same way, so no contender pays for a
per-connection database lookup (DRF token auth is not what the bench measures). A
real deployment authenticates instead (``Authorization: Token``, the session cookie).
"""

from __future__ import annotations

from urllib.parse import parse_qs


def uid_from_query(query: bytes | str) -> int:
    """The ``uid`` query parameter as an int; ``ValueError`` when absent or not a number."""
    text = query.decode("latin-1") if isinstance(query, bytes) else query
    values = parse_qs(text).get("uid")
    if not values:
        raise ValueError("missing ?uid=")
    return int(values[0])
