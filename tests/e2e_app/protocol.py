"""Message classes of the end-to-end test endpoints (import no Django)."""

from datetime import datetime

from streaming.serialization import SerializableEntity


class Echo(SerializableEntity):
    text: str
    n: int = 0
    at: datetime | None = None


class WhoAmI(SerializableEntity):
    user_id: int | None
    endpoint: str


class RoomPost(SerializableEntity):
    room: str
    text: str
    sender_id: int | None = None


class MyChatMessage(SerializableEntity):
    """The message class of the docs' messaging example."""

    # Distinct from the guide's own MyChatMessage, which its tests define.
    class_name = "ExampleChatMessage"

    recipient_id: int
    text: str


class Flood(SerializableEntity):
    """Asks FloodEndpoint to send ``count`` Echo frames of ``size`` characters."""

    count: int
    size: int
    report_to: str


class FloodReport(SerializableEntity):
    """Posted to ``report_to`` when the flood stops: how many frames the server queued."""

    accepted: int
    requested: int
