"""``RawObject``: a message as it travels, for clients without the message classes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = ["RawObject"]


@dataclass(frozen=True, slots=True)
class RawObject:
    """``{"className": ..., "data": {...}}`` not validated on this side (the server
    validates what it receives). Streams of a ``Client(..., raw=True)`` yield these,
    and ``send_stream_message`` accepts them from any client."""

    class_name: str
    data: dict[str, Any]

    def to_json(self) -> str:
        return json.dumps({"className": self.class_name, "data": self.data}, separators=(",", ":"))

    def to_dict(self) -> dict[str, Any]:
        return {"className": self.class_name, "data": self.data}

    @classmethod
    def from_dict(cls, obj: Any) -> RawObject:
        """From a decoded ``{"className": str, "data": object}``; ValueError otherwise."""
        if (
            not isinstance(obj, dict)
            or not isinstance(obj.get("className"), str)
            or not obj["className"]
            or not isinstance(obj.get("data"), dict)
        ):
            raise ValueError('expected {"className": "<name>", "data": {...}}')
        return cls(obj["className"], obj["data"])
