"""Messages survive versions (issue 12, item 2), as Serverpod's do.

* unknown fields are ignored, on the server, in the Python client and on the bus; the
  known fields stay strict;
* a nullable field may be left out (it is then None); encoding still writes ``null``;
* a nested message whose class is not the declared one travels with ``"__className__"``
  beside its fields (fields, list items, dict values) and decodes as that class;
* ``bytes`` travel as standard base64, ``timedelta`` as whole milliseconds (an int).

The wire rules are written down in docs/protocol.md, "Types on the wire".
"""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Literal, Optional, Union

import pytest
from pydantic import Field, ValidationError
from websockets.asyncio.server import serve

from streaming import serialization
from streaming.client import Client
from streaming.endpoint import Endpoint
from streaming.exceptions import InvalidMessage
from streaming.serialization import (
    CLASS_NAME_KEY,
    SerializableEntity,
    decode_object,
    decode_object_json,
    encode_object,
)
from streaming.testing import StreamingCommunicator

ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def wire(entity: SerializableEntity) -> dict:
    """``data`` as encode_object writes it."""
    obj = json.loads(encode_object(entity))
    assert obj["className"] == type(entity).class_name
    return obj["data"]


def errors_of(class_name: str, data: dict) -> list[dict]:
    with pytest.raises(InvalidMessage) as info:
        decode_object(class_name, data)
    return info.value.errors


def paths_of(class_name: str, data: dict) -> list[str]:
    return [error["path"] for error in errors_of(class_name, data)]


# -- the classes -----------------------------------------------------------------------------------


class Note(SerializableEntity):
    class_name = "tests.versions.Note"
    text: str
    note: str | None  # nullable, no default: may be left out
    count: int | None = 5  # nullable with a default that is not None
    at: datetime | None


class Shape(SerializableEntity):
    class_name = "tests.versions.Shape"
    name: str


class Circle(Shape):
    class_name = "tests.versions.Circle"
    radius: float
    drawn_at: datetime | None = None


class Square(Shape):
    class_name = "tests.versions.Square"
    side: int


class RoundedSquare(Square):
    class_name = "tests.versions.RoundedSquare"
    corner: float


class Unrelated(SerializableEntity):
    class_name = "tests.versions.Unrelated"
    name: str


class Drawing(SerializableEntity):
    class_name = "tests.versions.Drawing"
    main: Shape
    shapes: list[Shape] = []
    by_name: dict[str, Shape] = {}
    maybe: Shape | None
    pair: tuple[Shape, Shape] | None = None
    square: Square | None = None


class Group(Shape):
    """A subclass that holds polymorphic fields itself."""

    class_name = "tests.versions.Group"
    members: list[Shape] = []


class Either(SerializableEntity):
    """A union of message classes: the declared class is not known, so always tagged."""

    class_name = "tests.versions.Either"
    # Square's fields are a subset of RoundedSquare's: only the tag tells them apart.
    one: Square | RoundedSquare | None = None
    many: list[Union[Circle, Square]] = []  # noqa: UP007


class Blob(SerializableEntity):
    class_name = "tests.versions.Blob"
    data: bytes
    parts: list[bytes] = []
    named: dict[str, bytes] = {}
    maybe: bytes | None = None
    limited: Annotated[bytes, Field(max_length=3)] = b""


class Timing(SerializableEntity):
    class_name = "tests.versions.Timing"
    wait: timedelta
    steps: list[timedelta] = []
    named: dict[str, timedelta] = {}
    maybe: timedelta | None
    at_least: Annotated[timedelta, Field(ge=timedelta(0))] = timedelta(0)


# Forward references: Outer and Inner wait for Later, which subclasses Inner.
class Outer(SerializableEntity):
    class_name = "tests.versions.Outer"
    inner: Inner
    later: list[Later] = []
    note: str | None


class Inner(SerializableEntity):
    class_name = "tests.versions.Inner"
    tag: str | None
    back: Outer | None = None
    wait: timedelta | None = None


class Later(Inner):
    class_name = "tests.versions.Later"
    at: datetime


class Tree(SerializableEntity):
    class_name = "tests.versions.Tree"
    label: str | None
    children: list[Tree] = []


# -- unknown fields are ignored --------------------------------------------------------------------


def test_unknown_fields_are_ignored_at_every_level():
    data = {
        "text": "hi",
        "added_in_v2": {"anything": [1, 2]},
        "note": "n",
    }
    assert decode_object("tests.versions.Note", data) == Note(text="hi", note="n")
    drawing = decode_object(
        "tests.versions.Drawing",
        {
            "main": {"name": "m", "colour": "red"},
            "shapes": [
                {"__className__": "tests.versions.Circle", "name": "c", "radius": 1, "z": 3}
            ],
            "by_name": {"k": {"name": "k", "extra": None}},
            "v2": True,
        },
    )
    assert drawing == Drawing(
        main=Shape(name="m"), shapes=[Circle(name="c", radius=1.0)], by_name={"k": Shape(name="k")}
    )


def test_known_fields_stay_strict_beside_unknown_ones():
    errors = errors_of("tests.versions.Note", {"text": 5, "count": "5", "unknown": "x"})
    assert [e["path"] for e in errors] == ["text", "count"]
    assert paths_of("tests.versions.Drawing", {"main": {"name": 1, "x": 1}}) == ["main.name"]
    assert paths_of("tests.versions.Note", {"unknown": 1}) == ["text"]  # still required


def test_a_message_from_a_newer_server_on_the_bus_decodes():
    newer = json.dumps(
        {"className": "tests.versions.Note", "data": {"text": "hi", "note": None, "v2": [1]}}
    )
    assert decode_object_json(newer) == Note(text="hi")


class EchoEndpoint(Endpoint):
    name = "versions_echo"

    async def handle_stream_message(self, session, message):
        await self.send_stream_message(session, message)


async def test_the_server_accepts_unknown_fields_and_nested_subclasses():
    async with StreamingCommunicator(endpoints=[EchoEndpoint]) as comm:
        frame = {
            "endpoint": "versions_echo",
            "id": "v1",
            "object": {
                "className": "tests.versions.Drawing",
                "data": {
                    "main": {"__className__": "tests.versions.Square", "name": "s", "side": 2},
                    "from_the_future": {"x": 1},
                },
            },
        }
        await comm.send_to(text_data=json.dumps(frame))
        echoed = await comm.receive_message("versions_echo")
        assert echoed == Drawing(main=Square(name="s", side=2))
        # Sent back with the subclass named beside its fields.
        drawing = Drawing(main=Circle(name="c", radius=0.5), shapes=[Shape(name="p")])
        await comm.send_message("versions_echo", drawing)
        text = await comm.receive_from()
        data = json.loads(text)["object"]["data"]
        assert data["main"] == {
            "__className__": "tests.versions.Circle",
            "name": "c",
            "radius": 0.5,
            "drawn_at": None,
        }
        assert data["shapes"] == [{"name": "p"}]
        await comm.assert_nothing_received()


async def test_the_python_client_decodes_what_a_newer_server_sends():
    frames = [
        {"className": "tests.versions.Note", "data": {"text": "a", "v2": {"deep": 1}}},
        {
            "className": "tests.versions.Drawing",
            "data": {
                "main": {
                    "__className__": "tests.versions.RoundedSquare",
                    "name": "r",
                    "side": 1,
                    "corner": 0.25,
                    "v2": 0,
                },
                "by_name": {"new": {"__className__": "tests.versions.FromTheFuture", "name": "f"}},
            },
        },
        {"className": "tests.versions.Blob", "data": {"data": "AAH/", "v2": 1}},
        {"className": "tests.versions.Timing", "data": {"wait": 1500}},
    ]

    async def handler(ws):
        async for text in ws:
            if json.loads(text).get("command") == "ping":
                await ws.send(json.dumps({"command": "pong", "args": {}}))
                for obj in frames:
                    await ws.send(json.dumps({"endpoint": "news", "object": obj}))

    async with serve(handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        client = Client(f"http://127.0.0.1:{port}/")
        try:
            await client.open_streaming_connection()
            stream = client.news.stream
            got = [await asyncio.wait_for(anext(stream), 20) for _ in frames]
        finally:
            await client.close()
    assert got == [
        Note(text="a"),
        Drawing(
            main=RoundedSquare(name="r", side=1, corner=0.25),
            by_name={"new": Shape(name="f")},  # a class this side does not know: the declared one
        ),
        Blob(data=b"\x00\x01\xff"),
        Timing(wait=timedelta(milliseconds=1500)),
    ]
    assert type(got[1].main) is RoundedSquare


# -- a missing nullable field is None --------------------------------------------------------------


def test_a_missing_nullable_field_is_none_and_null_is_accepted():
    assert decode_object("tests.versions.Note", {"text": "x"}) == Note(
        text="x", note=None, count=5, at=None
    )
    assert (
        decode_object("tests.versions.Note", {"text": "x", "note": None, "at": None}).note is None
    )
    assert Note(text="x").note is None  # the same from Python
    assert not Note.model_fields["note"].is_required()
    # Present, it is still strict.
    assert paths_of("tests.versions.Note", {"text": "x", "note": 5, "at": "noon"}) == [
        "note",
        "at",
    ]


def test_a_nullable_field_with_another_default_keeps_it_and_null_stays_none():
    assert decode_object("tests.versions.Note", {"text": "x"}).count == 5
    explicit = Note(text="x", count=None)
    assert wire(explicit)["count"] is None  # null is written, so it is not read as 5
    assert decode_object_json(encode_object(explicit)).count is None


def test_encoding_writes_null_for_none():
    """The decision: None is sent as null (clients deployed before this change need it)."""
    assert wire(Note(text="x")) == {"text": "x", "note": None, "count": 5, "at": None}
    assert wire(Drawing(main=Shape(name="m")))["maybe"] is None


def test_non_nullable_fields_are_still_required():
    assert paths_of("tests.versions.Drawing", {}) == ["main"]
    assert paths_of("tests.versions.Shape", {}) == ["name"]
    with pytest.raises(ValidationError):
        Shape()


class Spellings(SerializableEntity):
    class_name = "tests.versions.Spellings"
    a: Optional[int]  # noqa: UP045
    b: Union[int, None]  # noqa: UP007
    c: Annotated[int | None, Field(ge=0)]
    d: Literal["x", None]
    e: int | str | None


class SpellingsChild(Spellings):
    class_name = "tests.versions.SpellingsChild"
    e: int | None  # re-declared: still not required
    f: bool | None


def test_every_spelling_of_nullable_and_inherited_fields():
    assert decode_object("tests.versions.Spellings", {}) == Spellings()
    assert decode_object("tests.versions.SpellingsChild", {}) == SpellingsChild()
    assert SpellingsChild().model_dump() == dict.fromkeys("abcdef")
    assert paths_of("tests.versions.Spellings", {"c": -1}) == ["c"]  # constraints still hold
    assert [p.split(".")[0] for p in paths_of("tests.versions.Spellings", {"d": "y"})] == ["d"]


def test_a_missing_nullable_field_of_a_nested_object_is_none():
    outer = decode_object("tests.versions.Outer", {"inner": {}})
    assert outer == Outer(inner=Inner())
    assert outer.note is None and outer.inner.tag is None


# -- nested objects of another class carry "__className__" ----------------------------------------


def test_the_declared_class_travels_without_a_tag():
    assert CLASS_NAME_KEY == "__className__"
    drawing = Drawing(
        main=Shape(name="m"), shapes=[Shape(name="a")], by_name={"k": Shape(name="k")}
    )
    assert wire(drawing) == {
        "main": {"name": "m"},
        "shapes": [{"name": "a"}],
        "by_name": {"k": {"name": "k"}},
        "maybe": None,
        "pair": None,
        "square": None,
    }
    assert decode_object_json(encode_object(drawing)) == drawing


def test_subclasses_are_tagged_in_fields_lists_dict_values_tuples_and_optionals():
    drawing = Drawing(
        main=Circle(name="c", radius=1.5, drawn_at=T0),
        shapes=[
            Shape(name="plain"),
            Square(name="s", side=2),
            RoundedSquare(name="r", side=3, corner=0.5),
        ],
        by_name={"c": Circle(name="c2", radius=2.0), "p": Shape(name="p")},
        maybe=Square(name="m", side=1),
        pair=(Shape(name="first"), Circle(name="second", radius=0.0)),
        square=RoundedSquare(name="rs", side=4, corner=1.0),
    )
    assert wire(drawing) == {
        "main": {
            "__className__": "tests.versions.Circle",
            "name": "c",
            "radius": 1.5,
            "drawn_at": "2026-01-02T03:04:05Z",
        },
        "shapes": [
            {"name": "plain"},
            {"__className__": "tests.versions.Square", "name": "s", "side": 2},
            {
                "__className__": "tests.versions.RoundedSquare",
                "name": "r",
                "side": 3,
                "corner": 0.5,
            },
        ],
        "by_name": {
            "c": {
                "__className__": "tests.versions.Circle",
                "name": "c2",
                "radius": 2.0,
                "drawn_at": None,
            },
            "p": {"name": "p"},
        },
        "maybe": {"__className__": "tests.versions.Square", "name": "m", "side": 1},
        "pair": [
            {"name": "first"},
            {
                "__className__": "tests.versions.Circle",
                "name": "second",
                "radius": 0.0,
                "drawn_at": None,
            },
        ],
        "square": {
            "__className__": "tests.versions.RoundedSquare",
            "name": "rs",
            "side": 4,
            "corner": 1.0,
        },
    }
    assert next(iter(wire(drawing)["main"])) == "__className__"  # first, as Serverpod writes it
    back = decode_object_json(encode_object(drawing))
    assert back == drawing
    assert [type(s) for s in back.shapes] == [Shape, Square, RoundedSquare]
    assert type(back.by_name["c"]) is Circle and type(back.square) is RoundedSquare


def test_tags_nest_inside_tagged_objects():
    group = Group(
        name="g",
        members=[
            Circle(name="c", radius=1.0),
            Group(name="inner", members=[Square(name="s", side=1)]),
        ],
    )
    drawing = Drawing(main=group)
    data = wire(drawing)
    assert data["main"]["__className__"] == "tests.versions.Group"
    inner = data["main"]["members"][1]
    assert inner["__className__"] == "tests.versions.Group"
    assert inner["members"] == [{"__className__": "tests.versions.Square", "name": "s", "side": 1}]
    assert decode_object_json(encode_object(drawing)) == drawing
    # At the top level className already names the class: no tag there.
    assert "__className__" not in wire(group)
    assert decode_object_json(encode_object(group)) == group


def test_a_union_of_message_classes_is_always_tagged():
    either = Either(
        one=Square(name="s", side=1),
        many=[Circle(name="c", radius=1.0), RoundedSquare(name="r", side=2, corner=0.5)],
    )
    data = wire(either)
    assert data["one"] == {"__className__": "tests.versions.Square", "name": "s", "side": 1}
    assert [item["__className__"] for item in data["many"]] == [
        "tests.versions.Circle",
        "tests.versions.RoundedSquare",
    ]
    back = decode_object_json(encode_object(either))
    assert back == either and type(back.one) is Square
    rounded = decode_object(
        "tests.versions.Either",
        {
            "one": {
                "__className__": "tests.versions.RoundedSquare",
                "name": "r",
                "side": 1,
                "corner": 2.0,
            }
        },
    )
    assert type(rounded.one) is RoundedSquare


def test_a_class_this_side_does_not_know_decodes_as_the_declared_one():
    drawing = decode_object(
        "tests.versions.Drawing",
        {"main": {"__className__": "tests.versions.Hexagon", "name": "h", "sides": 6}},
    )
    assert drawing.main == Shape(name="h") and type(drawing.main) is Shape
    null_tag = decode_object(
        "tests.versions.Drawing", {"main": {"__className__": None, "name": "n"}}
    )
    assert type(null_tag.main) is Shape
    same = decode_object(
        "tests.versions.Drawing", {"main": {"__className__": "tests.versions.Shape", "name": "s"}}
    )
    assert type(same.main) is Shape


def test_a_tag_that_does_not_fit_is_refused_at_its_path():
    errors = errors_of(
        "tests.versions.Drawing",
        {
            "main": {"__className__": "tests.versions.Unrelated", "name": "u"},
            "shapes": [{"name": "ok"}, {"__className__": 5, "name": "x"}],
            "square": {"__className__": "tests.versions.Circle", "name": "c", "radius": 1},
        },
    )
    assert errors == [
        {
            "path": "main.__className__",
            "reason": "tests.versions.Unrelated is not a tests.versions.Shape",
        },
        {"path": "shapes.1.__className__", "reason": "__className__ should be a string"},
        {
            "path": "square.__className__",
            "reason": "tests.versions.Circle is not a tests.versions.Square",
        },
    ]
    assert paths_of("tests.versions.Drawing", {"main": 5, "shapes": ["x"]}) == [
        "main",
        "shapes.0",
    ]


def test_nested_subclasses_are_validated_strictly_as_json():
    data = {
        "main": {
            "__className__": "tests.versions.Circle",
            "name": "c",
            "radius": 1,
            "drawn_at": "2026-01-02T05:04:05+02:00",
        },
    }
    assert decode_object("tests.versions.Drawing", data).main.drawn_at == T0
    bad = {
        "main": {
            "__className__": "tests.versions.Circle",
            "name": "c",
            "radius": "1",
            "drawn_at": "2026-01-02T05:04:05",
        },
        "shapes": [{"__className__": "tests.versions.Square", "name": "s", "side": 1.0}],
    }
    assert paths_of("tests.versions.Drawing", bad) == [
        "main.radius",
        "main.drawn_at",
        "shapes.0.side",
    ]


def test_top_level_data_may_carry_its_own_tag():
    """Serverpod writes __className__ in every object; at the top level className decides."""
    data = {"__className__": "tests.versions.Square", "name": "s"}
    shape = decode_object("tests.versions.Shape", data)
    assert type(shape) is Shape


def test_python_dumps_carry_the_tags_too_and_validate_back():
    drawing = Drawing(main=Square(name="s", side=1), shapes=[Circle(name="c", radius=1.0)])
    dumped = drawing.model_dump()
    assert dumped["main"] == {"__className__": "tests.versions.Square", "name": "s", "side": 1}
    assert Drawing.model_validate(dumped) == drawing
    assert Drawing(
        main={"__className__": "tests.versions.Square", "name": "s", "side": 1}
    ).main == (Square(name="s", side=1))


def test_assigning_a_subclass_keeps_it_and_encodes_again():
    drawing = Drawing(main=Shape(name="m"))
    assert "__className__" not in wire(drawing)["main"]
    drawing.main = Square(name="s", side=3)
    assert type(drawing.main) is Square
    assert wire(drawing)["main"]["__className__"] == "tests.versions.Square"


def test_a_subclass_defined_after_the_container_is_found():
    with serialization._swapped_registry():  # registered for this test only

        class Triangle(Shape):
            class_name = "tests.versions.Triangle"
            corners: int = 3

        drawing = Drawing(main=Triangle(name="t"))
        assert wire(drawing)["main"]["__className__"] == "tests.versions.Triangle"
        back = decode_object_json(encode_object(drawing))
        assert type(back.main) is Triangle and back == drawing
    unknown = decode_object("tests.versions.Drawing", json.loads(encode_object(drawing))["data"])
    assert type(unknown.main) is Shape  # once the class is gone, the declared one


def test_forward_references_and_recursive_classes():
    later = Later(at=T0, tag="l")
    outer = Outer(inner=Inner(back=Outer(inner=later)), later=[later])
    data = wire(outer)
    assert data["inner"]["back"]["inner"] == {
        "__className__": "tests.versions.Later",
        "tag": "l",
        "back": None,
        "wait": None,
        "at": "2026-01-02T03:04:05Z",
    }
    assert "__className__" not in data["later"][0]  # declared Later: no tag
    assert decode_object_json(encode_object(outer)) == outer
    assert decode_object("tests.versions.Outer", {"inner": {"back": {"inner": {"wait": 5}}}}) == (
        Outer(inner=Inner(back=Outer(inner=Inner(wait=timedelta(milliseconds=5)))))
    )
    tree = decode_object("tests.versions.Tree", {"children": [{"children": [{"x": 1}]}]})
    assert tree == Tree(children=[Tree(children=[Tree()])])


def test_deep_nesting_turns_each_object_into_json_text_once(monkeypatch):
    """Nested objects are held aside while their parent validates (no O(depth x size))."""

    def chain(depth, tagged):
        node = {"label": "leaf", "children": []}
        for _ in range(depth):
            node = {"label": "x" * 50, "children": [node]}
            if tagged:
                node["__className__"] = "tests.versions.Tree"
        return node

    texts = []

    class CountingJson:
        @staticmethod
        def dumps(value, **kwargs):
            texts.append(json.dumps(value, **kwargs))
            return texts[-1]

    monkeypatch.setattr(serialization, "json", CountingJson)
    for tagged in (False, True):
        texts.clear()
        data = chain(15, tagged)
        tree = decode_object("tests.versions.Tree", data)
        assert tree.children[0].children[0].label == "x" * 50
        size = len(json.dumps(data))
        assert sum(len(text) for text in texts) < 3 * size, (tagged, size, len(texts))
        if not tagged:  # no "__className__" anywhere: pydantic alone, from one JSON text
            assert len(texts) == 1


def test_a_client_cannot_forge_a_held_object():
    """Held-aside objects are referenced with a key random per decode."""
    forged = {"\x00" + "0" * 12: 0}
    errors = errors_of(
        "tests.versions.Drawing",
        {"main": forged, "shapes": [{"__className__": "tests.versions.Circle", "name": "c"}]},
    )
    assert [e["path"] for e in errors] == ["main.name", "shapes.0.radius"]


# -- bytes: standard base64 ------------------------------------------------------------------------


@pytest.mark.parametrize("value", range(256))
def test_every_byte_value_travels_as_base64(value):
    one = bytes([value])
    blob = Blob(data=one, parts=[one, one * 2, one * 3], named={"k": one}, maybe=one)
    data = wire(blob)
    expected = base64.b64encode(one).decode("ascii")
    assert data["data"] == expected == data["named"]["k"] == data["maybe"]
    assert data["parts"] == [base64.b64encode(one * n).decode("ascii") for n in (1, 2, 3)]
    assert decode_object_json(encode_object(blob)) == blob


def test_all_byte_values_at_once_standard_alphabet_with_padding():
    every = bytes(range(256))
    for value in (every, every[::-1], every[1:], every[2:], b""):
        data = wire(Blob(data=value))
        assert data["data"] == base64.b64encode(value).decode("ascii")
        assert decode_object("tests.versions.Blob", data).data == value
    assert wire(Blob(data=b"\xfb\xff\xfe"))["data"] == "+//+"  # not the URL-safe "-__-"
    assert Blob(data=b"\x00").model_dump()["data"] == b"\x00"  # Python dumps keep bytes


def test_base64_decoding_accepts_url_safe_and_unpadded_and_refuses_the_rest():
    for text in ("+//+", "-__-", "YQ==", "YQ", "YWI=", "YWI"):
        expected = base64.b64decode(text.replace("-", "+").replace("_", "/") + "==")
        assert decode_object("tests.versions.Blob", {"data": text}).data == expected
    for bad in (
        "Y",
        "Y Q==",
        " YQ==",
        "YQ==\n",
        "a*b=",
        "+/-_",
        "YQ=",
        "YQ===",
        "Y=Q=",
        5,
        None,
        ["YQ=="],
    ):
        assert paths_of("tests.versions.Blob", {"data": bad}) == ["data"], bad
    errors = errors_of("tests.versions.Blob", {"data": "!"})
    assert errors == [{"path": "data", "reason": "Data should be valid base64"}]
    assert paths_of("tests.versions.Blob", {"data": "", "limited": "AAAAAA=="}) == ["limited"]
    with pytest.raises(ValidationError):
        Blob(data="YQ==")  # Python code passes bytes


# -- timedelta: whole milliseconds -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "millis"),
    [
        (timedelta(0), 0),
        (timedelta(seconds=1.5), 1500),
        (timedelta(milliseconds=-1500), -1500),
        (timedelta(days=3, hours=4, milliseconds=7), 273_600_007),
        (timedelta(microseconds=1500), 1),  # truncated toward zero, like Dart's inMilliseconds
        (timedelta(microseconds=-1500), -1),
        (timedelta(microseconds=999), 0),
        (timedelta.max, 86_399_999_999_999_999),
        (timedelta.min, -86_399_999_913_600_000),
    ],
)
def test_timedelta_travels_as_integer_milliseconds(value, millis):
    timing = Timing(wait=value, steps=[value, value], named={"k": value}, maybe=value)
    assert timing.wait == timedelta(milliseconds=millis)  # held as what is sent
    data = wire(timing)
    assert data["wait"] == millis and type(data["wait"]) is int
    assert data["steps"] == [millis, millis] and data["named"] == {"k": millis}
    assert data["maybe"] == millis
    assert decode_object_json(encode_object(timing)) == timing


def test_timedelta_decoding_takes_integers_only():
    assert decode_object("tests.versions.Timing", {"wait": 1500}).wait == timedelta(seconds=1.5)
    assert decode_object("tests.versions.Timing", {"wait": -1}).wait == timedelta(milliseconds=-1)
    for bad in (1.5, 1500.0, "1500", "PT1.5S", True, None, [1], 10**20):
        errors = errors_of("tests.versions.Timing", {"wait": bad})
        assert [e["path"] for e in errors] == ["wait"], bad
    assert errors_of("tests.versions.Timing", {"wait": "PT1S"}) == [
        {"path": "wait", "reason": "Input should be an integer number of milliseconds"}
    ]
    assert paths_of("tests.versions.Timing", {"wait": 0, "steps": [1, "2"], "at_least": -1}) == [
        "steps.1",
        "at_least",
    ]
    with pytest.raises(ValidationError):
        Timing(wait=1500)  # Python code passes timedelta
    assert Timing(wait=timedelta(seconds=1)).model_dump()["wait"] == timedelta(seconds=1)


# -- the document ----------------------------------------------------------------------------------


def test_protocol_md_documents_the_types_on_the_wire():
    text = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
    assert "## Types on the wire" in text
    section = text.split("## Types on the wire", 1)[1].split("\n## ", 1)[0]
    for needle in ("__className__", "base64", "milliseconds", "null", "ignored"):
        assert needle in section, needle
