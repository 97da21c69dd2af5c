"""The Streampod wire protocol: one closed set of frames, one decoder, one error type.

Imports no Django and no channels; the server and the Python client share it.

Every frame is a WebSocket *text* frame holding one JSON object:

* data, both directions::

      {"endpoint": "<name>", "object": {"className": "<class>", "data": {...}}, "id": "<opt>"}

* commands::

      {"command": "ping" | "pong" | "auth" | "error", "args": {...}}

* streaming-method calls (commands whose ``args.id`` names a call the client chose)::

      {"command": "call" | "cancel" | "credit" | "stream_value" | "stream_end"
                  | "stream_error" | "value" | "done" | "fail", "args": {"id": "<call>", ...}}

Unknown top-level keys are ignored so that later versions can add some. Anything
else raises :class:`~streaming.exceptions.MalformedFrame` (or
:class:`~streaming.exceptions.FrameTooLarge`) from :func:`decode_frame`. See
``docs/protocol.md`` for every frame, error code and close code.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any

from .exceptions import FrameTooLarge, MalformedFrame

__all__ = [
    "COMMANDS",
    "METHOD_COMMANDS",
    "CloseCode",
    "CommandFrame",
    "DataFrame",
    "ErrorCode",
    "Frame",
    "MethodFrame",
    "decode_frame",
    "echo",
    "encode_command",
    "encode_data",
    "encode_error",
    "encode_method",
    "restart_advice",
    "restart_reason",
]

#: Longest ``id`` a client may attach to a data frame.
MAX_ID_LENGTH = 128

#: Largest frame (in characters) whose ``id`` an error about it may echo.
PEEK_LIMIT = 8192

#: Most characters of a client's value (an endpoint or class name, a command) that an
#: error frame repeats: an error is never much larger than a constant.
ECHO_LIMIT = 64

#: Bytes a parsed JSON value may take beyond its text, at most (an estimate that
#: bounds a small dict; see ``DataFrame.size``).
BYTES_PER_VALUE = 192

#: The longest wait, in seconds, a 1012's advice may ask of a client (``after`` plus
#: ``spread``): a larger figure is taken as this.
MAX_RESTART_ADVICE = 600.0

_ADVICE = re.compile(r"(?:^|\s)(after|spread)=([0-9]+(?:\.[0-9]+)?)(?=\s|$)")


class CloseCode(IntEnum):
    """WebSocket close codes Streampod uses (daphne only sends 1000 and 3000-4999)."""

    NORMAL = 1000
    # The server is restarting (graceful shutdown, streaming/shutdown.py): reconnect at
    # once, to another server. daphne's ASGI close refuses it; streaming.shutdown sends it.
    SERVICE_RESTART = 1012
    POLICY = 4008  # flooding: the client kept sending past the rate limit
    TOO_BIG = 4009  # a frame larger than MAX_MESSAGE_BYTES
    OVERLOADED = 4013  # the client does not read fast enough: its send queue is full
    TOO_MANY_CONNECTIONS = 4029  # the user already holds MAX_SOCKETS_PER_USER sockets here
    UNAUTHORIZED = 4401  # invalid or revoked credentials: do not retry with them
    FORBIDDEN = 4403  # refused by policy (for example a foreign Origin)


class ErrorCode(StrEnum):
    """``args.code`` of an ``error`` frame."""

    MALFORMED_FRAME = "malformed_frame"
    UNKNOWN_COMMAND = "unknown_command"
    UNKNOWN_ENDPOINT = "unknown_endpoint"
    UNKNOWN_CLASS = "unknown_class"
    INVALID_MESSAGE = "invalid_message"
    NOT_AUTHENTICATED = "not_authenticated"
    FORBIDDEN = "forbidden"
    RATE_LIMITED = "rate_limited"
    MESSAGE_TOO_LARGE = "message_too_large"
    INTERNAL_ERROR = "internal_error"
    # Streaming methods (``fail`` frames, streaming/methods.py):
    UNKNOWN_METHOD = "unknown_method"
    EXCEPTION = "exception"  # the method raised an exception class the app made serializable
    STREAM_FAILED = "stream_failed"  # an input stream the client failed ended the call
    CALL_ENDED = "call_ended"  # the server ended the call: its endpoint closed on the socket


#: The commands of streaming-method calls, in either direction, with the ``args`` each
#: must hold beyond ``id`` (name -> (key, JSON type, required)). See docs/protocol.md,
#: "Streaming methods".
_METHOD_ARGS: dict[str, tuple[tuple[str, type | None, bool], ...]] = {
    "call": (
        ("endpoint", str, True),
        ("method", str, True),
        ("args", dict, False),
        ("credit", int, False),
        ("streams", list, False),
    ),
    "cancel": (),
    "credit": (("n", int, True), ("stream", str, False)),
    "stream_value": (("stream", str, True), ("value", None, True)),
    "stream_end": (("stream", str, True),),
    "stream_error": (("stream", str, True), ("message", str, False)),
    "value": (("value", None, True),),
    "done": (("value", None, False),),
    "fail": (
        ("code", str, True),
        ("message", str, True),
        ("errors", list, False),
        ("exception", dict, False),
    ),
}
METHOD_COMMANDS = frozenset(_METHOD_ARGS)

#: Every command name of the protocol, in either direction.
COMMANDS = frozenset({"ping", "pong", "auth", "error"}) | METHOD_COMMANDS


@dataclass(frozen=True, slots=True)
class DataFrame:
    """A typed object for (or from) one endpoint. ``data`` is not validated here.

    ``size`` is an upper estimate of the memory the parsed frame holds (its text's
    length plus :data:`BYTES_PER_VALUE` per JSON value it may hold), so that a
    receiver can bound in bytes what waits.
    """

    endpoint: str
    class_name: str
    data: dict[str, Any]
    id: str | None = None
    size: int = field(default=0, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class CommandFrame:
    """A control frame. ``command`` may be outside :data:`COMMANDS`: the receiver decides."""

    command: str
    args: dict[str, Any]


@dataclass(frozen=True, slots=True)
class MethodFrame:
    """A frame of a streaming-method call: ``command`` is in :data:`METHOD_COMMANDS`,
    ``id`` names the call, ``args`` holds the keys that command requires, of the right
    JSON types (checked by :func:`decode_frame`). ``size`` as for :class:`DataFrame`."""

    command: str
    id: str
    args: dict[str, Any]
    size: int = field(default=0, compare=False, repr=False)


Frame = DataFrame | CommandFrame | MethodFrame


#: Longest integer (in digits) a frame may hold: Python's own limit for int(str).
MAX_INT_DIGITS = 4300

# \ud800 to \udfff escapes: JSON may spell a surrogate pair this way (one character once
# parsed), but a lone surrogate is no character, and nothing can encode it again.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")


class _NotJson(ValueError):
    """What the client sent is not JSON in a way ``json`` tolerates (NaN, Infinity)."""


def _no_constants(name: str) -> Any:
    raise _NotJson(f"{name} is not a JSON value")


# Only NaN and Infinity reach parse_constant: no cost for ordinary values.
_DECODER = json.JSONDecoder(parse_constant=_no_constants)
_SCAN = _DECODER.scan_once  # type: ignore[attr-defined]  # set by JSONDecoder.__init__ (its C scanner)


def _loads(text: str) -> Any:
    """Parse strict JSON: no NaN or Infinity, no integer past :data:`MAX_INT_DIGITS`,
    no lone surrogate. Errors speak of the client's text, never of the parser."""
    try:
        # A frame as clients send it (no whitespace around the object) is scanned by the
        # C scanner directly; anything else goes through decode(), for its checks and
        # error messages.
        if text[0] == "{" and text[-1] == "}":
            try:
                obj, end = _SCAN(text, 0)
            except StopIteration:
                end = -1
            if end != len(text):
                obj = _DECODER.decode(text)
        else:
            obj = _DECODER.decode(text)
    except RecursionError:
        raise MalformedFrame("JSON nested too deeply.") from None
    except _NotJson as exc:
        raise MalformedFrame(f"Not valid JSON: {exc}.") from None
    except json.JSONDecodeError as exc:
        raise MalformedFrame(
            f"Not valid JSON: {exc.msg.lower()} at line {exc.lineno} column {exc.colno}."
        ) from None
    except ValueError:
        # The one other ValueError of the C scanner: int()'s limit on digits.
        raise MalformedFrame(
            f"Not valid JSON: an integer longer than {MAX_INT_DIGITS} digits."
        ) from None
    except UnicodeError:
        raise MalformedFrame("Not valid JSON.") from None
    if "\\u" in text and _SURROGATE_ESCAPE.search(text):
        try:  # rare: only frames that spell surrogates as escapes get here
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise MalformedFrame(
                "Not valid JSON: a \\u escape names a lone surrogate, which is no character."
            ) from None
    return obj


def _measure(obj: Any, max_depth: int) -> tuple[int, int]:
    """``(values, depth)`` of a parsed JSON value, without recursion; stops past ``max_depth``.

    Only containers are pushed: a list of 9,000 numbers costs one ``len`` and one
    ``isinstance`` per number, not a stack entry.
    """
    values = 1
    depth = 1
    stack: list[tuple[Any, int]] = [(obj, 1)] if isinstance(obj, dict | list) else []
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        values += len(children)
        child_level = level + 1
        for child in children:
            if isinstance(child, dict | list):
                if child_level > depth:
                    depth = child_level
                    if depth > max_depth:
                        return values, depth
                stack.append((child, child_level))
    return values, depth


def decode_frame(
    text: str | None = None,
    data: bytes | None = None,
    *,
    max_bytes: int | None = None,
    max_values: int | None = None,
    max_depth: int | None = None,
) -> Frame:
    """Decode one WebSocket frame.

    ``text`` is a text frame's payload, ``data`` a binary frame's (always refused:
    the protocol is text only). Raises :class:`FrameTooLarge` when the UTF-8 size
    exceeds ``max_bytes`` (checked before parsing), :class:`MalformedFrame` when
    the frame holds more than ``max_values`` JSON values or nests deeper than
    ``max_depth`` (what a frame costs once parsed, not only its bytes), and for
    everything else that is not a frame. Never raises anything else.
    """
    if text is None:
        raise MalformedFrame("Binary frames are not supported; send JSON text frames.")
    if max_bytes is not None and len(text) * 4 > max_bytes:
        # Only encode when the character count alone cannot decide.
        if len(text) > max_bytes or len(text.encode("utf-8", "surrogatepass")) > max_bytes:
            raise FrameTooLarge(f"Frame larger than {max_bytes} bytes.")
    if not text:
        raise MalformedFrame("Empty frame.")
    # Upper bounds, at C speed: every container opens with a bracket, and every value
    # but the first of a container follows a comma (those inside strings only count
    # extra). The frame's values are at most ``structure``, its depth at most ``brackets``.
    brackets = text.count("[") + text.count("{")
    structure = text.count(",") + brackets + 1
    obj = _loads(text)
    limited = (max_values is not None and structure > max_values) or (
        max_depth is not None and brackets > max_depth
    )
    if limited:
        # The cheap bound cannot decide: count exactly (rare for real frames).
        depth_limit = max_depth if max_depth is not None else structure
        values, depth = _measure(obj, depth_limit)
        if max_depth is not None and depth > max_depth:
            raise MalformedFrame(f"JSON nested deeper than {max_depth} levels.")
        if max_values is not None and values > max_values:
            raise MalformedFrame(f"Frame holds more than {max_values} JSON values.")
    if not isinstance(obj, dict):
        raise MalformedFrame("A frame must be a JSON object.")
    if "command" in obj:
        command = obj["command"]
        args = obj.get("args", {})
        if not isinstance(command, str):
            raise MalformedFrame("'command' must be a string.")
        if not isinstance(args, dict):
            raise MalformedFrame("'args' must be an object.")
        if command in METHOD_COMMANDS:
            return _method_frame(command, args, len(text) + BYTES_PER_VALUE * structure)
        return CommandFrame(command, args)
    endpoint = obj.get("endpoint")
    payload = obj.get("object")
    frame_id = obj.get("id")
    if not isinstance(endpoint, str) or not endpoint:
        raise MalformedFrame("A data frame needs 'endpoint' (a non-empty string).")
    if not isinstance(payload, dict):
        raise MalformedFrame("A data frame needs 'object' (an object).")
    class_name = payload.get("className")
    fields = payload.get("data")
    if not isinstance(class_name, str) or not class_name:
        raise MalformedFrame("'object.className' must be a non-empty string.")
    if not isinstance(fields, dict):
        raise MalformedFrame("'object.data' must be an object.")
    if frame_id is not None and (not isinstance(frame_id, str) or len(frame_id) > MAX_ID_LENGTH):
        raise MalformedFrame(f"'id' must be a string of at most {MAX_ID_LENGTH} characters.")
    return DataFrame(
        endpoint, class_name, fields, frame_id, len(text) + BYTES_PER_VALUE * structure
    )


def _method_frame(command: str, args: dict[str, Any], size: int) -> MethodFrame:
    call_id = args.get("id")
    if not isinstance(call_id, str) or not call_id or len(call_id) > MAX_ID_LENGTH:
        raise MalformedFrame(
            f"'{command}' needs 'args.id': a non-empty string of at most {MAX_ID_LENGTH} "
            "characters naming the call."
        )
    for key, kind, required in _METHOD_ARGS[command]:
        if key not in args:
            if required:
                raise MalformedFrame(f"'{command}' needs 'args.{key}'.")
            continue
        value = args[key]
        if kind is int:
            if type(value) is not int or value < 0:
                raise MalformedFrame(f"'args.{key}' of '{command}' must be an integer >= 0.")
        elif kind is not None and not isinstance(value, kind):
            raise MalformedFrame(f"'args.{key}' of '{command}' must be {_JSON_NAMES[kind]}.")
    return MethodFrame(command, call_id, args, size)


_JSON_NAMES: dict[type, str] = {str: "a string", dict: "an object", list: "an array"}


def echo(value: str) -> str:
    """``value`` as an error frame may repeat it: at most :data:`ECHO_LIMIT` characters.

    A client must not be able to make an error frame much larger than a constant
    (a 64 KB endpoint name of ``é`` would come back as 390 KB of escapes).
    """
    if len(value) <= ECHO_LIMIT:
        return value
    return value[:ECHO_LIMIT] + "…"


def peek_id(text: str | None) -> str | None:
    """Best-effort ``id`` of a frame that failed to decode, so its error can echo it.

    Only frames of up to :data:`PEEK_LIMIT` characters are parsed for it: a refused
    frame must not cost a full parse.
    """
    if not text or len(text) > PEEK_LIMIT:
        return None
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if isinstance(obj, dict):
        frame_id = obj.get("id")
        command, args = obj.get("command"), obj.get("args")
        if frame_id is None and isinstance(args, dict) and _is_method(command):
            frame_id = args.get("id")  # a streaming-method frame names its call there
        if isinstance(frame_id, str) and len(frame_id) <= MAX_ID_LENGTH:
            return frame_id
    return None


def _is_method(command: Any) -> bool:
    return isinstance(command, str) and command in METHOD_COMMANDS


def encode_data(endpoint: str, object_json: str, frame_id: str | None = None) -> str:
    """A data frame around an already-encoded ``{"className", "data"}`` object.

    The object is encoded once per post (see ``serialization.encode_object``); only
    this thin envelope is built per recipient, from a prefix cached per endpoint name.
    """
    if frame_id is not None:
        return (
            _data_head(endpoint)
            + ',"id":'
            + json.dumps(frame_id)
            + ',"object":'
            + object_json
            + "}"
        )
    return _data_head(endpoint) + ',"object":' + object_json + "}"


@functools.lru_cache(maxsize=1024)
def _data_head(endpoint: str) -> str:
    return '{"endpoint":' + json.dumps(endpoint)


def encode_command(command: str, args: dict[str, Any] | None = None) -> str:
    if not args:
        text = _BARE_COMMANDS.get(command)
        if text is not None:
            return text
    return json.dumps({"command": command, "args": args or {}}, separators=(",", ":"))


#: ``encode_command(name)`` of the argument-less commands, made once (a ``pong`` answers
#: every ``ping``: no JSON encoding per ping).
_BARE_COMMANDS: dict[str, str] = {
    name: json.dumps({"command": name, "args": {}}, separators=(",", ":"))
    for name in ("ping", "pong")
}


def encode_method(command: str, call_id: str, value_json: str | None = None, **fields: Any) -> str:
    """A streaming-method frame: ``{"command": command, "args": {"id": call_id, **fields}}``,
    with ``"value"`` set to ``value_json`` (JSON text, encoded once by the caller) if given."""
    args = json.dumps({"id": call_id, **fields}, separators=(",", ":"))
    if value_json is not None:
        args = args[:-1] + ',"value":' + value_json + "}"
    return '{"command":' + json.dumps(command) + ',"args":' + args + "}"


def encode_error(
    code: str,
    message: str,
    *,
    endpoint: str | None = None,
    frame_id: str | None = None,
    errors: list[dict[str, Any]] | None = None,
) -> str:
    """An ``error`` command. ``endpoint``, ``id`` and ``errors`` appear only when known."""
    args: dict[str, Any] = {"code": str(code), "message": message}
    if endpoint is not None:
        args["endpoint"] = endpoint
    if frame_id is not None:
        args["id"] = frame_id
    if errors is not None:
        args["errors"] = errors
    return encode_command("error", args)


def restart_reason(spread: float, after: float = 0.0) -> str:
    """The close reason of a 1012 that advises its client when to come back: at a
    uniformly random moment between ``after`` and ``after + spread`` seconds from now
    (``"restart after=2.5 spread=4"``; ``after`` is left out when 0)."""
    words = ["restart"]
    if after > 0:
        words.append(f"after={after:.3f}".rstrip("0").rstrip("."))
    words.append(f"spread={max(spread, 0.0):.3f}".rstrip("0").rstrip("."))
    return " ".join(words)


def restart_advice(reason: str) -> tuple[float, float]:
    """``(after, spread)`` from a 1012's close reason (:func:`restart_reason`); 0 for a
    figure it does not give (any other reason: ``(0.0, 0.0)``). Their sum is at most
    :data:`MAX_RESTART_ADVICE` (``after`` first)."""
    found = dict(_ADVICE.findall(reason or ""))
    after = min(float(found.get("after", 0.0)), MAX_RESTART_ADVICE)
    spread = min(float(found.get("spread", 0.0)), MAX_RESTART_ADVICE - after)
    return after, spread
