"""streampod.js message classes (docs/clients.md, "Message classes"): frames decode into
instances of registered classes, instances are sent as they are.

Against a real daphne server for the project's Echo class; and against a bare server that
speaks with streaming.serialization itself (the server's encoder and decoder), for nested
messages with "__className__", bytes, durations and versions (unknown fields and classes,
missing nullable fields), which no test endpoint of the server carries."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from streaming.protocol import encode_data
from streaming.serialization import SerializableEntity, decode_object, encode_object

from .support import ws_server

PONG = json.dumps({"command": "pong", "args": {}})

# The JS side of the classes below, as a page would write them.
JS_CLASSES = """
const {registerClass} = window.streampod;
class Shape {
  static fields = {name: "string"};
  describe() { return `${this.constructor.name} ${this.name}`; }
}
class Circle extends Shape {
  static fields = {radius: "float"};
  area() { return Math.PI * this.radius ** 2; }
}
class Square extends Shape { static fields = {side: "int"}; }
class Drawing {
  static fields = {main: "Shape", shapes: [Shape], by_name: {dict: "Shape"}, blob: "bytes",
                   wait: "duration", at: "datetime", note: "string"};
}
for (const cls of [Shape, Circle, Square, Drawing]) registerClass(cls);
"""


async def test_echo_frames_decode_into_instances_of_the_registered_class(server, open_page):
    page = await open_page(server.http_url)
    result = await page.evaluate(
        """async () => {
            const {Client, registerClass, getClass, registeredClasses} = window.streampod;
            class Echo {
              static fields = {text: "string", n: "int", at: "datetime"};
              shout() { return this.text.toUpperCase() + "!".repeat(this.n); }
            }
            Client.registerClass("Echo", Echo);
            const client = new Client();
            await client.openStreamingConnection();
            const echo = client.endpoint("echo");
            const sent = Object.assign(new Echo(), {text: "hi", n: 2,
                                                    at: new Date(Date.UTC(2026, 0, 2, 3, 4, 5))});
            echo.sendStreamMessage(sent);
            echo.sendStreamMessage({className: "Echo", data: {text: "plain"}}); // still works
            const stream = echo.stream;
            const a = (await stream.next()).value;
            const b = (await stream.next()).value;
            // Not registered: a plain {className, data} object, as before.
            const who = (await client.endpoint("whoami").stream.next()).value;
            let notRegistered;
            try {
              echo.sendStreamMessage(new (class Stranger {})());
            } catch (error) {
              notRegistered = [error.name, error.message];
            }
            // raw: true keeps every message plain.
            const raw = new Client(undefined, {raw: true});
            await raw.openStreamingConnection();
            raw.endpoint("echo").sendStreamMessage(sent);
            const plain = (await raw.endpoint("echo").stream.next()).value;
            client.closeStreamingConnection();
            raw.closeStreamingConnection();
            return {
              a: [a instanceof Echo, a.shout(), a.at instanceof Date, a.at.toISOString(),
                  Object.keys(a)],
              b: [b instanceof Echo, b.text, b.n, b.at],
              who, notRegistered, plain,
              registry: [getClass("Echo") === Echo, Object.keys(registeredClasses())],
              again: registerClass("Echo", Echo) === Echo,
            };
        }"""
    )
    assert result["a"] == [True, "HI!!", True, "2026-01-02T03:04:05.000Z", ["text", "n", "at"]]
    assert result["b"] == [True, "plain", 0, None]
    assert result["who"] == {"className": "WhoAmI", "data": {"user_id": None, "endpoint": "whoami"}}
    assert result["notRegistered"] == [
        "TypeError",
        "Stranger is not a registered message class (see registerClass)",
    ]
    assert result["plain"] == {
        "className": "Echo",
        "data": {"text": "hi", "n": 2, "at": "2026-01-02T03:04:05Z"},
    }
    assert result["registry"] == [True, ["Echo"]]
    assert result["again"] is True


async def test_frames_of_the_server_encoder_decode_and_instances_encode_back(server, open_page):
    class Shape(SerializableEntity):
        name: str

    class Circle(Shape):
        radius: float

    class Square(Shape):
        side: int

    class Hexagon(Shape):  # a later version's subclass: the page does not know it
        corners: int

    class Drawing(SerializableEntity):
        main: Shape
        shapes: list[Shape]
        by_name: dict[str, Shape]
        blob: bytes
        wait: timedelta
        at: datetime
        note: str | None

    drawing = Drawing(
        main=Circle(name="c", radius=1.5),
        shapes=[Shape(name="plain"), Square(name="s", side=2), Hexagon(name="h", corners=6)],
        by_name={"k": Circle(name="k", radius=2.0)},
        blob=b"\xff\x00ab",
        wait=timedelta(seconds=1.5),
        at=datetime(2026, 1, 2, 3, 4, 5, 123000, tzinfo=UTC),  # a Date keeps milliseconds
        note=None,
    )
    frames = [
        encode_data("draw", encode_object(drawing), None),
        # Not a subclass, and a field of the wrong type: undecodable, reported.
        json.dumps(
            {
                "endpoint": "draw",
                "object": {
                    "className": "Drawing",
                    "data": {
                        "main": {"__className__": "Drawing", "name": "x"},
                        # 2**53 + 1: JSON.parse makes it 2**53, an integer but not this one.
                        "shapes": [
                            {"name": 5},
                            {"__className__": "Square", "name": "s", "side": 2**53 + 1},
                        ],
                        "by_name": {},
                        "blob": "",
                        "wait": 0,
                        "at": "2026-01-01T00:00:00Z",
                    },
                },
            }
        ),
        # A later version: unknown fields, no note, URL-safe unpadded base64, an offset.
        json.dumps(
            {
                "endpoint": "draw",
                "object": {
                    "className": "Drawing",
                    "data": {
                        "main": {"name": "m", "colour": "red"},
                        "shapes": [],
                        "by_name": {},
                        "blob": "_w",
                        "wait": 5,
                        "at": "2026-01-01T00:00:00+02:00",
                        "layers": 3,
                    },
                },
            }
        ),
    ]
    echoed: list[SerializableEntity] = []
    got_back = asyncio.Event()

    async def handler(ws: Any) -> None:
        async for raw in ws:
            frame = json.loads(raw)
            if frame.get("command") == "ping":
                await ws.send(PONG)
                for text in frames:
                    await ws.send(text)
            elif frame.get("endpoint") == "draw":
                obj = frame["object"]
                echoed.append(decode_object(obj["className"], obj["data"]))
                got_back.set()

    async with ws_server(handler) as base_url:
        page = await open_page(server.http_url)
        result = await page.evaluate(
            "async (url) => {"
            + JS_CLASSES
            + """
            const {Client, UndecodableMessage} = window.streampod;
            const client = new Client(url, {retry: false});
            await client.openStreamingConnection();
            const stream = client.endpoint("draw").stream;
            const d = (await stream.next()).value;
            const later = (await stream.next()).value; // the undecodable one is not on the stream
            const {value: error} = await client.errors.next();
            client.endpoint("draw").sendStreamMessage(d); // back to the server's decoder
            return {
              first: {
                cls: d.constructor.name,
                main: [d.main.describe(), d.main instanceof Shape, d.main.area().toFixed(3)],
                shapes: d.shapes.map((s) => [s.describe(), Object.keys(s)]),
                byName: Object.entries(d.by_name).map(([k, v]) => [k, v.describe(), v.radius]),
                blob: [d.blob instanceof Uint8Array, Array.from(d.blob)],
                wait: d.wait, at: d.at.toISOString(), note: d.note,
              },
              error: [error instanceof UndecodableMessage, error.name, error.code, error.endpoint,
                      error.errors],
              later: {
                main: [later.constructor.name, later.main.describe(), Object.keys(later.main)],
                keys: Object.keys(later), note: later.note, blob: Array.from(later.blob),
                wait: later.wait, at: later.at.toISOString(),
              },
            };
        }""",
            base_url,
        )
        await asyncio.wait_for(got_back.wait(), 20)
    first = result["first"]
    assert first["cls"] == "Drawing"
    assert first["main"] == ["Circle c", True, "7.069"]
    assert first["shapes"] == [
        ["Shape plain", ["name"]],
        ["Square s", ["name", "side"]],
        ["Shape h", ["name"]],  # Hexagon is unknown here: the declared class, its fields only
    ]
    assert first["byName"] == [["k", "Circle k", 2]]
    assert first["blob"] == [True, [255, 0, 97, 98]]
    assert (first["wait"], first["at"], first["note"]) == (1500, "2026-01-02T03:04:05.123Z", None)
    assert result["error"] == [
        True,
        "UndecodableMessage",
        "invalid_message",
        "draw",
        [
            {"path": "main.__className__", "reason": "Drawing is not a Shape"},
            {"path": "shapes.0.name", "reason": "should be a string"},
            {
                "path": "shapes.1.side",
                "reason": "should be an integer JavaScript holds exactly (at most 2^53 - 1)",
            },
        ],
    ]
    later = result["later"]
    assert later["main"] == ["Drawing", "Shape m", ["name"]]  # "colour" ignored
    assert later["keys"] == ["main", "shapes", "by_name", "blob", "wait", "at", "note"]
    assert (later["note"], later["blob"], later["wait"]) == (None, [255], 5)
    assert later["at"] == "2025-12-31T22:00:00.000Z"

    # What the page sent back decodes, with the server's own decoder, to what it was sent,
    # except for the subclass the page did not know.
    assert len(echoed) == 1
    known = [Shape(name="plain"), Square(name="s", side=2), Shape(name="h")]
    expected = Drawing(**{**dict(drawing), "shapes": known})
    assert echoed[0] == expected
    assert type(echoed[0].main) is Circle and type(echoed[0].shapes[1]) is Square


async def test_registration_mistakes_are_type_errors(server, open_page):
    page = await open_page(server.http_url)
    errors = await page.evaluate(
        """() => {
            const {registerClass} = window.streampod;
            const attempt = (f) => { try { f(); return "no error"; } catch (e) { return e.name; } };
            class A {}
            class B {}
            registerClass("A", A);
            return [
              attempt(() => registerClass("A", B)),          // a name holds one class
              attempt(() => registerClass("Other", A)),      // a class has one name
              attempt(() => registerClass("C", class {}, {fields: {x: "integer?"}}).name),
              attempt(() => registerClass("D", class {}, {fieldz: {}})),
              attempt(() => registerClass("E", "not a class")),
            ];
        }"""
    )
    # "integer?" is taken as a class name: refused when a frame needs it, not here.
    assert errors == ["TypeError", "TypeError", "no error", "TypeError", "TypeError"]
