"""An Endpoint is an AsyncJsonWebsocketConsumer subclass: the inherited API that makes
sense works through the endpoint's session, the rest fails at import with the name of
the Streampod call to use."""

from __future__ import annotations

import re

import pytest

from streaming.endpoint import Endpoint
from streaming.serialization import SerializableEntity
from streaming.testing import StreamingCommunicator


class Line(SerializableEntity):
    class_name = "tests.consumer_api.Line"
    text: str


async def test_send_json_sends_on_the_endpoints_stream():
    class JsonEndpoint(Endpoint):
        async def stream_opened(self, session):
            await self.send_json(Line(text="an entity"))
            await self.send_json(
                {"className": "tests.consumer_api.Line", "data": {"text": "wire form"}}
            )

        async def handle_stream_message(self, session, message):
            await self.send_json(message, close=True)

    async with StreamingCommunicator(endpoints=[JsonEndpoint]) as comm:
        assert await comm.receive_message("json") == Line(text="an entity")
        assert await comm.receive_message("json") == Line(text="wire form")
        await comm.send_message("json", Line(text="bye"))
        assert await comm.receive_message("json") == Line(text="bye")
        assert await comm.receive_close() == 1000


async def test_close_closes_the_socket_with_its_code():
    class Closer(Endpoint):
        async def handle_stream_message(self, session, message):
            await self.close(4000)

    async with StreamingCommunicator(endpoints=[Closer]) as comm:
        await comm.send_message("closer", Line(text="x"))
        assert await comm.receive_close() == 4000


async def test_raw_send_and_the_channel_layer_say_what_to_use():
    seen: list[str] = []

    class Raw(Endpoint):
        async def handle_stream_message(self, session, message):
            for attempt in (lambda: self.send(text_data="raw"), lambda: self.send_json([1])):
                try:
                    await attempt()
                except TypeError as exc:
                    seen.append(str(exc))
            try:
                self.channel_layer.group_send("g", {})
            except AttributeError as exc:
                seen.append(str(exc))
            await self.send_stream_message(session, Line(text="done"))

    async with StreamingCommunicator(endpoints=[Raw]) as comm:
        await comm.send_message("raw", Line(text="x"))
        assert await comm.receive_message("raw") == Line(text="done")
    assert len(seen) == 3
    assert all("send_stream_message" in text for text in seen[:2])
    assert "session.messages.post_message" in seen[2]


@pytest.mark.parametrize(
    ("attribute", "instead"),
    [
        ("connect", "stream_opened"),
        ("receive_json", "handle_stream_message"),
        ("disconnect", "stream_closed"),
        ("websocket_receive", "handle_stream_message"),
    ],
)
def test_overriding_a_consumer_method_fails_at_import_naming_the_hook(attribute, instead):
    async def method(self, *args, **kwargs):
        pass

    with pytest.raises(TypeError, match=instead):
        type("Broken", (Endpoint,), {attribute: method})


def test_groups_and_channel_layer_alias_fail_at_import():
    with pytest.raises(TypeError, match=re.escape("session.messages.add_listener")):
        type("Grouped", (Endpoint,), {"groups": ["lobby"]})
    with pytest.raises(TypeError, match=re.escape('STREAMING["CHANNEL_LAYER"]')):
        type("Aliased", (Endpoint,), {"channel_layer_alias": "other"})


async def test_calls_written_without_await_work_as_in_dart():
    from streaming.messages import get_bus

    class Bare(Endpoint):
        async def stream_opened(self, session):
            session.messages.add_listener("bare", lambda m: self.send_stream_message(session, m))

        async def handle_stream_message(self, session, message):
            # Serverpod code calls both without await; they still happen.
            self.send_stream_message(session, Line(text="sent bare"))
            session.messages.post_message("bare", Line(text="posted bare"))
            assert await self.send_stream_message(session, Line(text="awaited")) is True
            assert await session.messages.post_message("bare", Line(text="again")) is True

    async with StreamingCommunicator(endpoints=[Bare]) as comm:
        await comm.send_message("bare", Line(text="go"))
        texts = [(await comm.receive_message("bare")).text for _ in range(4)]
        await get_bus().drain()
        await comm.assert_nothing_received()
    assert texts == ["sent bare", "posted bare", "awaited", "again"]
