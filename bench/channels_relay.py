"""Contender (b): the baseline a Channels user would write.

An ``AsyncJsonWebsocketConsumer`` that joins group ``user_<uid>`` and relays with
``group_send``: one channel-layer hop per recipient socket. The in-memory layer on one
server, channels-redis (the pub/sub layer the project ships) on two.
"""

from __future__ import annotations

from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from .identity import uid_from_query


class RelayConsumer(AsyncJsonWebsocketConsumer):
    group: str | None = None

    async def connect(self) -> None:
        uid = uid_from_query(self.scope.get("query_string", b""))
        self.group = f"user_{uid}"
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.send_json({"type": "ready", "uid": uid})

    async def disconnect(self, code: int) -> None:
        if self.group is not None:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        kind = content.get("type")
        if kind == "relay":
            await self.channel_layer.group_send(
                f"user_{content['to']}", {"type": "relay.message", "message": content}
            )
        elif kind == "echo":
            await self.send_json(content)

    async def relay_message(self, event: dict[str, Any]) -> None:
        await self.send_json(event["message"])
