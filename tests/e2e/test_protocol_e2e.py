"""The wire protocol against real daphne and uvicorn processes, spoken to with a plain
websockets client.

Every frame kind and every error code of docs/protocol.md, and after each error the
connection is still usable. The endpoints are those of ``tests.e2e_app``: every
accepted connection first gets ``whoami``'s WhoAmI frame (its ``stream_opened``), so
each test reads that frame before asserting on what follows.
"""

import asyncio
import json
from contextlib import asynccontextmanager

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.support.servers import DaphneServer

TIMEOUT = 10  # a failure guard, never a synchronisation
PING = json.dumps({"command": "ping", "args": {}})
PONG = {"command": "pong", "args": {}}
MAX_MESSAGE_BYTES = 65536


@pytest.fixture
def server(each_server):
    """Every test here runs against daphne and against uvicorn."""
    return each_server


@pytest.fixture(scope="module")
def limited_server(django_db_setup, django_db_blocker):
    """A daphne whose bucket lets 5 frames through, then refuses (tests/e2e_limits_settings.py)."""
    with DaphneServer(env={"DJANGO_SETTINGS_MODULE": "tests.e2e_limits_settings"}) as srv:
        yield srv


@asynccontextmanager
async def connect(url, **kwargs):
    async with websockets.connect(url, proxy=None, open_timeout=TIMEOUT, **kwargs) as ws:
        yield ws


async def recv(ws):
    async with asyncio.timeout(TIMEOUT):
        return json.loads(await ws.recv())


async def close_code(ws):
    """Wait for the server to close the socket; its close code."""
    with pytest.raises(ConnectionClosed) as info:
        async with asyncio.timeout(TIMEOUT):
            await ws.recv()
    assert info.value.rcvd is not None, "the connection dropped without a close frame"
    return info.value.rcvd.code


def data(endpoint, class_name, frame_id=None, **fields):
    frame = {"endpoint": endpoint, "object": {"className": class_name, "data": fields}}
    if frame_id is not None:
        frame["id"] = frame_id
    return json.dumps(frame, ensure_ascii=False)


def echoed(text, n=0, at=None):
    return {
        "endpoint": "echo",
        "object": {"className": "Echo", "data": {"text": text, "n": n, "at": at}},
    }


def whoami(user_id):
    return {
        "endpoint": "whoami",
        "object": {"className": "WhoAmI", "data": {"user_id": user_id, "endpoint": "whoami"}},
    }


async def opened_anonymous(ws):
    """An anonymous connection's first frame: whoami's stream_opened says user_id null."""
    assert await recv(ws) == whoami(None)


async def expect_error(ws, code, *, endpoint=None, frame_id=None):
    """The next frame is an error with ``code``; ``endpoint`` and ``id`` exactly as given."""
    frame = await recv(ws)
    assert set(frame) == {"command", "args"} and frame["command"] == "error", frame
    args = frame["args"]
    assert args["code"] == code, frame
    assert isinstance(args["message"], str) and args["message"], frame
    assert args.get("endpoint") == endpoint, frame
    assert args.get("id") == frame_id, frame
    assert set(args) <= {"code", "message", "endpoint", "id", "errors"}, frame
    return args


async def assert_usable(ws):
    """The connection still works: an echo round trip, then a pong as the very next frame."""
    await ws.send(data("echo", "Echo", text="still here"))
    assert await recv(ws) == echoed("still here")
    await ws.send(PING)
    assert await recv(ws) == PONG


# -- frames that work --------------------------------------------------------------------


async def test_ping_is_answered_pong_and_a_client_pong_is_ignored(server):
    async with connect(server.ws_url) as ws:
        await opened_anonymous(ws)
        await ws.send(PING)
        assert await recv(ws) == PONG
        await ws.send(json.dumps({"command": "ping"}))  # args may be left out
        assert await recv(ws) == PONG
        await ws.send(json.dumps({"command": "pong", "args": {}}))
        await ws.send(PING)
        assert await recv(ws) == PONG  # nothing answered the client's pong


async def test_data_frames_travel_both_ways_in_order(server):
    async with connect(server.ws_url) as ws:
        await opened_anonymous(ws)
        for i in range(30):
            await ws.send(data("echo", "Echo", text=f"m{i}", n=i))
        for i in range(30):
            assert await recv(ws) == echoed(f"m{i}", n=i)
        await assert_usable(ws)


async def test_datetimes_are_sent_back_in_utc_with_z(server):
    async with connect(server.ws_url) as ws:
        await opened_anonymous(ws)
        await ws.send(data("echo", "Echo", text="t", at="2026-01-01T12:00:00+02:00"))
        assert await recv(ws) == echoed("t", at="2026-01-01T10:00:00Z")
        await ws.send(data("echo", "Echo", frame_id="naive", text="t", at="2026-01-01T12:00:00"))
        args = await expect_error(ws, "invalid_message", endpoint="echo", frame_id="naive")
        assert [e["path"] for e in args["errors"]] == ["at"]


async def test_unknown_top_level_keys_are_ignored(server):
    async with connect(server.ws_url) as ws:
        await opened_anonymous(ws)
        frame = json.loads(data("echo", "Echo", text="future"))
        frame.update({"v": 2, "trace": {"span": "x"}})
        await ws.send(json.dumps(frame))
        assert await recv(ws) == echoed("future")
        await ws.send(json.dumps({"command": "ping", "args": {}, "v": 2}))
        assert await recv(ws) == PONG


# -- malformed_frame -----------------------------------------------------------------------


OBJ = '"object": {"className": "Echo", "data": {}}'
MALFORMED = {
    "not-json": "not json",
    "truncated-json": '{"endpoint": "echo",',
    "array": "[1, 2]",
    "string": '"a string"',
    "number": "42",
    "null": "null",
    "empty-object": "{}",
    "deep-array-nesting": "[" * 60000,
    "deep-object-nesting": '{"a":' * 12000,
    "no-endpoint": "{" + OBJ + "}",
    "no-object": '{"endpoint": "echo"}',
    "empty-endpoint": '{"endpoint": "", ' + OBJ + "}",
    "endpoint-int": '{"endpoint": 5, ' + OBJ + "}",
    "object-list": '{"endpoint": "echo", "object": []}',
    "no-className": '{"endpoint": "echo", "object": {"data": {}}}',
    "className-int": '{"endpoint": "echo", "object": {"className": 7, "data": {}}}',
    "no-data": '{"endpoint": "echo", "object": {"className": "Echo"}}',
    "data-list": '{"endpoint": "echo", "object": {"className": "Echo", "data": [1]}}',
    "id-int": '{"endpoint": "echo", "id": 5, ' + OBJ + "}",
    "id-too-long": '{"endpoint": "echo", "id": "' + "x" * 129 + '", ' + OBJ + "}",
    "command-int": '{"command": 1, "args": {}}',
    "args-list": '{"command": "ping", "args": []}',
}


@pytest.mark.parametrize("text", MALFORMED.values(), ids=MALFORMED.keys())
async def test_malformed_text_frames(server, text):
    async with connect(server.ws_url) as ws:
        await opened_anonymous(ws)
        await ws.send(text)
        await expect_error(ws, "malformed_frame")
        await assert_usable(ws)


async def test_malformed_frame_echoes_a_readable_id(server):
    async with connect(server.ws_url) as ws:
        await opened_anonymous(ws)
        await ws.send('{"endpoint": 5, "id": "m1", "object": {"className": "Echo", "data": {}}}')
        await expect_error(ws, "malformed_frame", frame_id="m1")
        await assert_usable(ws)


async def test_binary_frames_are_malformed(server):
    async with connect(server.ws_url) as ws:
        await opened_anonymous(ws)
        await ws.send(b"\x00\x01binary")
        await expect_error(ws, "malformed_frame")
        await ws.send(data("echo", "Echo", text="as bytes").encode())  # even valid JSON
        await expect_error(ws, "malformed_frame")
        await assert_usable(ws)


async def test_empty_text_frame_is_malformed(server):
    async with connect(server.ws_url) as ws:
        await opened_anonymous(ws)
        await ws.send("")
        await expect_error(ws, "malformed_frame")
        await assert_usable(ws)


# -- the other error codes -----------------------------------------------------------------


async def test_unknown_command(server):
    async with connect(server.ws_url) as ws:
        await opened_anonymous(ws)
        for command in ("dance", "PING", "error"):
            await ws.send(json.dumps({"command": command, "args": {}}))
            await expect_error(ws, "unknown_command")
        await assert_usable(ws)


async def test_unknown_endpoint_echoes_endpoint_and_id(server):
    async with connect(server.ws_url) as ws:
        await opened_anonymous(ws)
        await ws.send(data("nope", "Echo", frame_id="u1", text="x"))
        await expect_error(ws, "unknown_endpoint", endpoint="nope", frame_id="u1")
        await ws.send(data("nope", "Echo", text="x"))  # without an id: none in the error
        await expect_error(ws, "unknown_endpoint", endpoint="nope")
        await assert_usable(ws)


async def test_unknown_class(server):
    async with connect(server.ws_url) as ws:
        await opened_anonymous(ws)
        await ws.send(data("echo", "NoSuchClass", frame_id="c1", text="x"))
        await expect_error(ws, "unknown_class", endpoint="echo", frame_id="c1")
        await assert_usable(ws)


async def test_invalid_message_lists_each_field_path_and_reason(server):
    async with connect(server.ws_url) as ws:
        await opened_anonymous(ws)
        # "5" is not an int (strict), text is not a str; unknown fields are ignored.
        await ws.send(data("echo", "Echo", frame_id="v1", text=5, n="5", extra=True))
        args = await expect_error(ws, "invalid_message", endpoint="echo", frame_id="v1")
        assert {e["path"] for e in args["errors"]} == {"text", "n"}
        for error in args["errors"]:
            assert set(error) == {"path", "reason"}
            assert isinstance(error["reason"], str) and error["reason"]
        await ws.send(data("echo", "Echo", frame_id="v2"))  # a required field missing
        args = await expect_error(ws, "invalid_message", endpoint="echo", frame_id="v2")
        assert [e["path"] for e in args["errors"]] == ["text"]
        await assert_usable(ws)


async def test_not_authenticated_for_anonymous_on_a_login_required_endpoint(server):
    async with connect(server.ws_url) as ws:
        await opened_anonymous(ws)  # and no frame from `private`: it was not opened
        await ws.send(data("private", "Echo", frame_id="p1", text="let me in"))
        await expect_error(ws, "not_authenticated", endpoint="private", frame_id="p1")
        await assert_usable(ws)


async def test_forbidden_when_has_permission_is_false(server):
    async with connect(server.ws_url) as ws:
        await opened_anonymous(ws)
        await ws.send(data("staff_only", "Echo", frame_id="s1", text="let me in"))
        await expect_error(ws, "forbidden", endpoint="staff_only", frame_id="s1")
        await assert_usable(ws)


@pytest.mark.parametrize(
    ("endpoint", "secret"),
    [
        ("broken_open", "broken on purpose (stream_opened)"),
        ("broken_handler", "broken on purpose (handle_stream_message)"),
    ],
)
async def test_internal_error_hides_internals_and_logs_the_traceback(server, endpoint, secret):
    async with connect(server.ws_url) as ws:
        await opened_anonymous(ws)
        await ws.send(data(endpoint, "Echo", frame_id="i1", text="x"))
        args = await expect_error(ws, "internal_error", endpoint=endpoint, frame_id="i1")
        for leak in (secret, "RuntimeError", "Traceback", "File ", ".py"):
            assert leak not in args["message"]
        await assert_usable(ws)
        # The same frame again: the endpoint is still refused, the connection still fine.
        await ws.send(data(endpoint, "Echo", text="again"))
        await expect_error(ws, "internal_error", endpoint=endpoint)
        await assert_usable(ws)
    assert server.output.wait_for(secret, TIMEOUT), "the hook's exception was not logged"
    assert "Traceback (most recent call last)" in server.logs()


async def test_errors_leave_the_connection_state_intact(server):
    """A room listener set up before a burst of errors still delivers afterwards."""
    async with connect(server.ws_url) as listener, connect(server.ws_url) as poster:
        await opened_anonymous(listener)
        await opened_anonymous(poster)
        await listener.send(data("room", "RoomPost", room="intact", text="/join"))
        assert await recv(listener) == {
            "endpoint": "room",
            "object": {"className": "Echo", "data": {"text": "joined intact", "n": 0, "at": None}},
        }
        for bad in ("nope", b"\x00", "", json.dumps({"command": "dance"}), data("nope", "X")):
            await listener.send(bad)
            await recv(listener)  # its error
        await poster.send(data("room", "RoomPost", room="intact", text="after errors"))
        post = await recv(listener)
        assert post["endpoint"] == "room"
        assert post["object"]["data"]["text"] == "after errors"


# -- frame size -------------------------------------------------------------------------------


def echo_frame_of(size):
    """An echo frame of exactly ``size`` UTF-8 bytes."""
    frame = data("echo", "Echo", text="x" * (size - len(data("echo", "Echo", text=""))))
    assert len(frame.encode()) == size
    return frame


#: Under MAX_MESSAGE_BYTES in characters, over it in UTF-8 bytes, under daphne's own limit.
MULTIBYTE_FRAME = data("echo", "Echo", text="é" * 33000)
assert len(MULTIBYTE_FRAME) < MAX_MESSAGE_BYTES < len(MULTIBYTE_FRAME.encode()) < 65536 + 1024


async def test_a_frame_of_max_message_bytes_is_accepted(server):
    async with connect(server.ws_url) as ws:
        await opened_anonymous(ws)
        await ws.send(echo_frame_of(MAX_MESSAGE_BYTES))
        reply = await recv(ws)
        assert reply["endpoint"] == "echo"
        assert len(reply["object"]["data"]["text"]) > 65000
        await assert_usable(ws)


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(echo_frame_of(MAX_MESSAGE_BYTES + 1), id="one-byte-over"),
        pytest.param(MULTIBYTE_FRAME, id="multibyte"),
    ],
)
async def test_an_oversize_frame_gets_an_error_then_close_4009(server, frame):
    async with connect(server.ws_url) as ws:
        await opened_anonymous(ws)
        await ws.send(frame)
        args = await expect_error(ws, "malformed_frame")
        assert str(MAX_MESSAGE_BYTES) in args["message"]
        assert await close_code(ws) == 4009


# -- rate_limited (a server whose bucket holds 5 frames and never refills in a test) ----------


async def test_rate_limited_keeps_the_socket_open_until_flooding_closes_it(limited_server):
    async with connect(limited_server.ws_url) as ws:
        await opened_anonymous(ws)  # server frames cost the client nothing
        for _ in range(5):
            await ws.send(PING)
            assert await recv(ws) == PONG
        await ws.send(data("echo", "Echo", text="one too many"))
        await expect_error(ws, "rate_limited")
        # Still open: each refused frame is answered, until FLOOD_CLOSE_AFTER (3) in a row.
        await ws.send(PING)
        await expect_error(ws, "rate_limited")
        await ws.send(PING)
        await expect_error(ws, "rate_limited")
        assert await close_code(ws) == 4008
    # The limit is per connection: a new client on the same server is served.
    async with connect(limited_server.ws_url) as other:
        await opened_anonymous(other)
        await other.send(data("echo", "Echo", text="fresh"))
        assert await recv(other) == echoed("fresh")


async def test_rate_limited_error_echoes_the_frame_id(limited_server):
    async with connect(limited_server.ws_url) as ws:
        await opened_anonymous(ws)
        for _ in range(5):
            await ws.send(PING)
            assert await recv(ws) == PONG
        await ws.send(data("echo", "Echo", frame_id="r1", text="one too many"))
        await expect_error(ws, "rate_limited", frame_id="r1")
