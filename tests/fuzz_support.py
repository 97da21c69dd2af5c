"""The fuzzer's oracle, strategies and client (used by tests/e2e/test_fuzz.py).

* **Documented limits** are read from docs/protocol.md itself (the error-code and
  close-code tables, the limits), so the oracle is the document, not the code.
* :func:`oracle` maps one frame (and the socket's identity) to every outcome the
  document allows: a list of alternatives, each a set of frames the server sends
  back and possibly a close code. Nothing else is accepted.
* :data:`KNOWN_BUGS` lists the narrow cases where the server currently does not
  give a documented answer. The property tests record them instead of failing;
  each one has a strict-xfail reproducer in test_fuzz.py, which starts to pass
  (and so fails, being strict) once the bug is fixed: then delete its entry here.
* Strategies generate frames: garbage, binary, deep nesting, huge numbers, unicode
  edge cases, wrong types, unknown commands, ``auth`` with garbage keys, and
  mutations of valid frames.
* :class:`Driver` runs the client side on an event loop of its own (a thread), so
  that hypothesis' synchronous tests can drive it while two real users chat.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import types
import typing
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import websockets
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from websockets.exceptions import ConnectionClosed

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL_DOC = ROOT / "docs" / "protocol.md"
# Hypothesis keeps caches (and would keep its example database, which the fuzzer turns
# off) in ./.hypothesis: keep them with the other test artifacts, out of the repository.
set_hypothesis_home_dir(ROOT / "test-artifacts" / "hypothesis")

# -- what docs/protocol.md promises ----------------------------------------------------------------


def _section(text: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    if match is None:
        raise RuntimeError(f"docs/protocol.md has no section {title!r}")
    return match.group(1)


def _number(text: str, pattern: str) -> int:
    match = re.search(pattern, text)
    if match is None:
        raise RuntimeError(f"docs/protocol.md does not state {pattern!r}")
    return int(match.group(1).replace(",", ""))


_DOC = PROTOCOL_DOC.read_text(encoding="utf-8")
#: The ``code`` column of the Errors table.
ERROR_CODES = frozenset(re.findall(r"^\| `([a-z_]+)` \|", _section(_DOC, "Errors"), re.M))
#: The ``code`` column of the Close codes table.
CLOSE_CODES = frozenset(
    int(c) for c in re.findall(r"^\| (\d{4}) \|", _section(_DOC, "Close codes"), re.M)
)
MAX_MESSAGE_BYTES = _number(_DOC, r"`MAX_MESSAGE_BYTES` \((\d[\d,]*)")
MAX_FRAME_VALUES = _number(_DOC, r"`MAX_FRAME_VALUES` \((\d[\d,]*)\)")
MAX_FRAME_DEPTH = _number(_DOC, r"`MAX_FRAME_DEPTH` \((\d[\d,]*)\)")
FLOOD_CLOSE_AFTER = _number(_DOC, r"`FLOOD_CLOSE_AFTER` \((\d[\d,]*)\)")
FLOOD_WINDOW = _number(_DOC, r"`FLOOD_WINDOW` \((\d+) s\)")
RATE_LIMIT_PER_SECOND = _number(_DOC, r"`RATE_LIMIT_PER_SECOND` \((\d[\d,]*)\)")
RATE_LIMIT_BURST = _number(_DOC, r"`RATE_LIMIT_BURST` \((\d[\d,]*)\)")
RATE_LIMIT_BYTES_BURST = _number(_DOC, r"`RATE_LIMIT_BYTES_BURST` \((\d+) MiB\)") * 2**20
MAX_ID_LENGTH = _number(_DOC, r"string, ≤ (\d+) chars")
ECHO_LIMIT = _number(_DOC, r"are cut to\s+(\d+)\s+characters")
MAX_ERRORS = _number(_DOC, r"lists at most (\d+) fields")
#: What happens to a field of ``data`` that the class does not have: "rejected" or
#: "ignored" as docs/protocol.md says, or None when it does not say (either is accepted).
#: (The document may say it in a sentence's first word, or with **emphasis**.)
_UNKNOWN = (
    r"(?:unknown fields|fields (?:a|the) class does not (?:know|have)"
    r"|keys of `?data`?[^.]*?that the class has no field for)"
)
if re.search(rf"(?i){_UNKNOWN} are \**(?:rejected|refused)\b", _DOC):
    UNKNOWN_FIELDS: str | None = "rejected"
elif re.search(rf"(?is){_UNKNOWN} are \**ignored\b", _DOC):
    UNKNOWN_FIELDS = "ignored"
else:
    UNKNOWN_FIELDS = None
#: The test servers' own frame limit (tests/support/servers.py: MAX_MESSAGE_BYTES + 1024).
SERVER_MAX_BYTES = MAX_MESSAGE_BYTES + 1024
#: The chat's rule (chat/protocol.py): 1 to 4000 characters once stripped.
CHAT_MAX_TEXT = 4000
#: Python's limit on int <-> str conversions (the server parses JSON with Python).
PY_INT_DIGITS = 4300


# -- known bugs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KnownBug:
    reason: str
    #: Server log records (ERROR) that the bug causes, by a substring of the record.
    log_signatures: tuple[str, ...] = ()
    #: The servers it shows on.
    servers: tuple[str, ...] = ("daphne", "uvicorn")


KNOWN_BUGS: dict[str, KnownBug] = {}
#: Former entries, now documented in docs/protocol.md ("Limits", "Close codes"):
#: "oversize-close-code" (a frame above the server's own limit: 1009 under uvicorn, 1006
#: under daphne) and "invalid-utf8" (a text frame that is not UTF-8: 1007 under uvicorn,
#: 1006 under daphne; Streampod's protocol for uvicorn logs no ERROR for it).

# -- reading JSON as the document defines it -------------------------------------------------------


class HugeInt:
    """A JSON integer too long for Python's ``int()`` (more than 4300 digits)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"HugeInt({len(self.text)} chars)"


class _Constant(Exception):
    pass


def _parse_int(text: str) -> Any:
    return int(text) if len(text.lstrip("-")) <= PY_INT_DIGITS else HugeInt(text)


def _reject_constant(name: str) -> Any:
    raise _Constant(name)


@dataclass(frozen=True)
class Parsed:
    #: "json" (RFC 8259), "nan" (JSON only with NaN/Infinity literals), "syntax", "deep"
    #: (too deep for Python's parser to tell), "binary", "strict" (JSON the protocol
    #: refuses: an integer over 4300 digits, a lone surrogate escape). "nan" and "strict"
    #: frames get malformed_frame, which may carry their id (the server could read it).
    status: str
    obj: Any = None


def _lone_surrogate(obj: Any) -> bool:
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    except (TypeError, ValueError):
        return False
    return False


def parse_frame(text: str) -> Parsed:
    try:
        obj = json.loads(text, parse_int=_parse_int, parse_constant=_reject_constant)
        # docs/protocol.md: strict JSON (integers of at most 4300 digits, no lone
        # surrogate escapes) or malformed_frame.
        if has_huge_int(obj) or _lone_surrogate(obj):
            return Parsed("strict", obj)
        return Parsed("json", obj)
    except RecursionError:
        return Parsed("deep")
    except _Constant:
        try:
            return Parsed("nan", json.loads(text, parse_int=_parse_int))
        except RecursionError:
            return Parsed("deep")
        except ValueError:
            return Parsed("syntax")
    except ValueError:
        return Parsed("syntax")


def measure(obj: Any) -> tuple[int, int, int]:
    """(JSON values, containers nested, levels counting scalars), without recursion."""
    values = containers = levels = 0
    stack = [(obj, 1)]
    while stack:
        item, level = stack.pop()
        values += 1
        levels = max(levels, level)
        if isinstance(item, dict):
            containers = max(containers, level)
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            containers = max(containers, level)
            stack.extend((v, level + 1) for v in item)
    return values, containers, levels


def is_int(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or isinstance(value, HugeInt)


def has_surrogate(value: str) -> bool:
    return any("\ud800" <= ch <= "\udfff" for ch in value)


def walk_strings(obj: Any) -> Iterable[str]:
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def has_huge_int(obj: Any) -> bool:
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, HugeInt):
            return True
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def cut(value: str) -> str:
    """A client's value as an error may repeat it (docs: cut to 64 characters)."""
    return value if len(value) <= ECHO_LIMIT else value[:ECHO_LIMIT] + "…"


# -- leaks -----------------------------------------------------------------------------------------

LEAK_PATTERNS = tuple(
    re.compile(p)
    for p in (
        r"Traceback",
        r'File "',
        r", line \d+, in ",
        r"set_int_max_str_digits",
        r"(?i)pydantic",
        r"https?://",
        r"\bat 0x[0-9a-fA-F]{4,}",
        r"<[A-Za-z_][\w.]* object\b",
        r"<class '",
        r"<function ",
        r"\b[A-Z]\w*(Error|Exception)\b",
        r"\.py\b",
        r"site-packages",
        r"Invalid JSON",  # pydantic's words about the server's own re-encoding of valid JSON
        r"\{'\w+': ",  # a Python dict repr
    )
)


def leaks(text: str, echoable: Iterable[str] = ()) -> list[str]:
    """The leak patterns ``text`` (an error's message or reason) matches, once every value
    of the client's that an error may repeat has been blanked out."""
    scrubbed = text
    for value in sorted(set(echoable), key=len, reverse=True):
        if len(value) < 3:
            continue
        for form in {value, cut(value), repr(value), repr(cut(value)), repr(value)[1:-1]}:
            if form:
                scrubbed = scrubbed.replace(form, "\u00b7")
    return [p.pattern for p in LEAK_PATTERNS if p.search(scrubbed)]


def echoable_strings(parsed: Parsed) -> list[str]:
    """Strings of a frame that an error may repeat: names, keys, the id, the command."""
    obj = parsed.obj
    found: list[str] = []
    if not isinstance(obj, dict):
        return found
    for key in ("endpoint", "command", "id"):
        if isinstance(obj.get(key), str):
            found.append(obj[key])
    payload = obj.get("object")
    if isinstance(payload, dict):
        if isinstance(payload.get("className"), str):
            found.append(payload["className"])
        data = payload.get("data")
        if isinstance(data, dict):
            found.extend(k for k in data if isinstance(k, str))
    return found


# -- what the server may send back -----------------------------------------------------------------


class _Absent:
    def __repr__(self) -> str:
        return "<absent>"


ABSENT: Any = _Absent()


class _AnyString:
    def __repr__(self) -> str:
        return "<any string>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str)

    def __hash__(self) -> int:
        return 0


ANY_STRING: Any = _AnyString()


@dataclass(frozen=True)
class Utc:
    """A datetime the server sends back in UTC with ``Z`` (``None``: any such string)."""

    value: datetime | None = None

    def matches(self, actual: Any) -> bool:
        if not isinstance(actual, str) or not actual.endswith("Z"):
            return False
        try:
            parsed = datetime.fromisoformat(actual)
        except ValueError:
            return False
        return self.value is None or parsed == self.value


def same(expected: Any, actual: Any) -> bool:
    """JSON equality, type for type (``1`` is not ``true``), with :class:`Utc` placeholders."""
    if isinstance(expected, Utc):
        return expected.matches(actual)
    if isinstance(expected, dict):
        return (
            isinstance(actual, dict)
            and expected.keys() == actual.keys()
            and all(same(v, actual[k]) for k, v in expected.items())
        )
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(expected) == len(actual)
            and all(same(e, a) for e, a in zip(expected, actual, strict=True))
        )
    if isinstance(expected, HugeInt):
        return False  # a frame holding one gets malformed_frame (strict JSON)
    return type(expected) is type(actual) and expected == actual


def _field(frame: Any, key: str) -> Any:
    return frame.get(key, ABSENT) if isinstance(frame, dict) else ABSENT


@dataclass(frozen=True)
class Err:
    """An ``error`` frame: its code, and what its ``endpoint``/``id``/``errors`` may be."""

    code: str
    endpoint: tuple = (ABSENT,)
    id: tuple = (ABSENT,)
    #: invalid_message: the failing fields' paths as the error lists them (cut), and how
    #: many fields failed; None: not predicted.
    paths: frozenset | None = None
    failed: int | None = None

    def matches(self, frame: Any) -> bool:
        if not isinstance(frame, dict) or frame.get("command") != "error":
            return False
        args = frame.get("args")
        if not isinstance(args, dict) or args.get("code") != self.code:
            return False
        if not any(_eq_opt(opt, args.get("endpoint", ABSENT)) for opt in self.endpoint):
            return False
        if not any(_eq_opt(opt, args.get("id", ABSENT)) for opt in self.id):
            return False
        if self.paths is not None:
            errors = args.get("errors")
            if not isinstance(errors, list):
                return False
            paths = {e.get("path") for e in errors if isinstance(e, dict)}
            expected = min(self.failed if self.failed is not None else len(self.paths), MAX_ERRORS)
            if len(errors) != expected:
                return False
            if (self.failed or 0) <= MAX_ERRORS and paths != set(self.paths):
                return False
            if not paths <= set(self.paths):
                return False
        return True

    def __str__(self) -> str:
        extra = "" if self.paths is None else f" paths={sorted(self.paths)[:5]}"
        return f"error {self.code} endpoint∈{self.endpoint} id∈{_short(self.id)}{extra}"


def _eq_opt(option: Any, actual: Any) -> bool:
    if option is ABSENT or actual is ABSENT:
        return option is actual
    return option == actual and (option is ANY_STRING or type(option) is type(actual))


@dataclass(frozen=True)
class Data:
    """A data frame of ``endpoint`` holding exactly ``data`` (with :class:`Utc` placeholders)."""

    endpoint: str
    class_name: str
    data: dict

    def matches(self, frame: Any) -> bool:
        return (
            isinstance(frame, dict)
            and frame.keys() == {"endpoint", "object"}
            and frame["endpoint"] == self.endpoint
            and isinstance(frame["object"], dict)
            and frame["object"].keys() == {"className", "data"}
            and frame["object"]["className"] == self.class_name
            and same(self.data, frame["object"]["data"])
        )

    def __str__(self) -> str:
        return f"data {self.endpoint}/{self.class_name} {_short(self.data)}"


@dataclass(frozen=True)
class ChatStored:
    """A stored ChatMessage as the chat posts it: server-set id, sender and time."""

    endpoint: str
    sender_id: int
    recipient_id: int
    text: str

    def matches(self, frame: Any) -> bool:
        if not (
            isinstance(frame, dict)
            and frame.keys() == {"endpoint", "object"}
            and frame["endpoint"] == self.endpoint
            and isinstance(frame["object"], dict)
            and frame["object"].get("className") == "ChatMessage"
        ):
            return False
        data = frame["object"].get("data")
        return (
            isinstance(data, dict)
            and data.keys() == {"recipient_id", "text", "id", "sender_id", "sent_at"}
            and is_int(data["id"])
            and same(self.sender_id, data["sender_id"])
            and same(self.recipient_id, data["recipient_id"])
            and data["text"] == self.text
            and Utc().matches(data["sent_at"])
        )

    def __str__(self) -> str:
        return f"stored ChatMessage on {self.endpoint} {self.sender_id}->{self.recipient_id}"


@dataclass(frozen=True)
class Cmd:
    command: str
    args: dict

    def matches(self, frame: Any) -> bool:
        return same({"command": self.command, "args": self.args}, frame)

    def __str__(self) -> str:
        return f"{self.command} {self.args}"


PONG = Cmd("pong", {})
KEEP: Any = object()  # an outcome that leaves the socket's identity as it was


@dataclass(frozen=True)
class Alt:
    """One allowed outcome: ``unordered`` frames in any order, then ``last``, then ``close``."""

    unordered: tuple = ()
    last: Any = None
    close: int | None = None
    identity: Any = KEEP

    def matches(self, frames: list[Any], closed: int | None) -> bool:
        if closed != self.close:
            return False
        wanted = len(self.unordered) + (self.last is not None)
        if len(frames) != wanted:
            return False
        rest = frames
        if self.last is not None:
            if not self.last.matches(frames[-1]):
                return False
            rest = frames[:-1]
        return _assign(list(self.unordered), rest)

    def could_complete(self, frames: list[Any]) -> bool:
        """Whether frames still to come can complete this outcome once the barrier (which
        follows the frame in its lane) is answered: only messages posted through the bus
        (the chat's) may arrive after it, and pongs (a ping's answer does not wait for the
        lanes: the barrier's answer may overtake it)."""
        if self.close is not None:
            return False
        matchers = [*self.unordered, *([self.last] if self.last is not None else [])]
        return any(
            bool(rest) and all(isinstance(m, ChatStored) or m is PONG for m in rest)
            for rest in _partial(matchers, frames)
        )

    def __str__(self) -> str:
        parts = [str(m) for m in self.unordered]
        if self.last is not None:
            parts.append(str(self.last))
        if self.close is not None:
            parts.append(f"close {self.close}")
        return " + ".join(parts) or "nothing"


def _partial(matchers: list[Any], frames: list[Any]) -> Iterable[list[Any]]:
    """The matchers left over by each way of matching every frame to a distinct one."""
    if not frames:
        yield matchers
        return
    for i, m in enumerate(matchers):
        if m.matches(frames[0]):
            yield from _partial(matchers[:i] + matchers[i + 1 :], frames[1:])


def _assign(matchers: list[Any], frames: list[Any]) -> bool:
    if not frames:
        return not matchers
    first, rest = frames[0], frames[1:]
    for i, m in enumerate(matchers):
        if m.matches(first) and _assign(matchers[:i] + matchers[i + 1 :], rest):
            return True
    return False


#: Errors of frames refused at the edge; docs: "refused frames (over the rate limit,
#: malformed_frame, unknown_command, ...)", so unknown_endpoint may count too.
EDGE_REFUSALS = frozenset(
    {"malformed_frame", "unknown_command", "rate_limited", "unknown_endpoint"}
)
CERTAIN_REFUSALS = frozenset({"malformed_frame", "unknown_command", "rate_limited"})


@dataclass
class Expect:
    alts: list[Alt]
    #: the endpoint whose lane handles the frame (the barrier follows it there)
    lane: str | None = None
    bugs: set[str] = field(default_factory=set)
    echoable: list[str] = field(default_factory=list)

    @property
    def may_refuse(self) -> bool:
        """Whether the server may count the frame as refused (docs: *Flooding*)."""
        return any(isinstance(a.last, Err) and a.last.code in EDGE_REFUSALS for a in self.alts)

    def matching(self, frames: list[Any], closed: int | None) -> Alt | None:
        return next((a for a in self.alts if a.matches(frames, closed)), None)

    def __str__(self) -> str:
        return " | ".join(f"[{a}]" for a in self.alts)


def _short(value: Any, limit: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"...({len(text)} chars)"


# -- the endpoints of tests/e2e_app and chat, as the oracle knows them -----------------------------


@dataclass(frozen=True)
class EndpointModel:
    login_required: bool = False
    staff_only: bool = False
    open_fails: bool = False
    handler: str = "echo"  # echo | none | raise | chat


ENDPOINTS: dict[str, EndpointModel] = {
    "echo": EndpointModel(),
    "whoami": EndpointModel(handler="none"),
    "private": EndpointModel(login_required=True),
    "staff_only": EndpointModel(staff_only=True),
    "broken_open": EndpointModel(open_fails=True),
    "broken_handler": EndpointModel(handler="raise"),
    "chat": EndpointModel(login_required=True, handler="chat"),
}
#: Served by the e2e server but never fuzzed: they post to other users or flood.
UNMODELLED = frozenset({"room", "example_chat", "flood", "burst"})
KNOWN_ENDPOINTS = frozenset(ENDPOINTS) | UNMODELLED

REQUIRED: Any = object()


@dataclass(frozen=True)
class Schema:
    fields: dict[str, tuple[str, Any]]  # name -> (type, default or REQUIRED)
    #: no datetime field: the server validates the parsed dict, not a JSON re-encoding
    native: bool = True


#: The modules whose message classes the e2e servers register (docs: "data is validated by
#: the class"): their fields are the contract; how a field validates is the document's.
SERVER_CLASS_MODULES = ("chat.protocol", "tests.e2e_app.protocol", "streaming.auth")
_KINDS: dict[Any, str] = {
    str: "str",
    int: "int",
    bool: "bool",
    float: "float",
    datetime: "dt",
    str | None: "str?",
    int | None: "int?",
    bool | None: "bool?",
    float | None: "float?",
    datetime | None: "dt?",
}
_classes: dict[str, Schema] = {}


def classes() -> dict[str, Schema]:
    """``className`` -> schema of every class the servers know (read once, lazily)."""
    if not _classes:
        import importlib

        from streaming.serialization import SerializableEntity

        for module_name in SERVER_CLASS_MODULES:
            module = importlib.import_module(module_name)
            for cls in vars(module).values():
                if (
                    isinstance(cls, type)
                    and issubclass(cls, SerializableEntity)
                    and cls.__module__ == module_name
                ):
                    _classes[cls.class_name] = schema_of(cls)
    return _classes


def _unwired(annotation: Any) -> Any:
    """``annotation`` without the ``Annotated`` wrappers Streampod's wire rules add."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _unwired(args[0])
    if origin in (typing.Union, types.UnionType):
        return typing.Union[tuple(_unwired(arg) for arg in args)]  # noqa: UP007
    return annotation


def schema_of(cls: Any) -> Schema:
    fields: dict[str, tuple[str, Any]] = {}
    for name, info in cls.model_fields.items():
        kind = _KINDS.get(_unwired(info.annotation))
        if kind is None:
            raise TypeError(f"the fuzzer's oracle has no rule for {cls.__name__}.{name}")
        if info.is_required():
            default = REQUIRED
        elif info.default_factory is not None:
            default = info.default_factory()
        else:
            default = info.default
        fields[name] = (kind, default)
    return Schema(fields, native=not any(k.startswith("dt") for k, _ in fields.values()))


_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?(Z|[+-]\d{2}:\d{2})", re.ASCII
)
_NAIVE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?", re.ASCII)
_TIMESTAMP = re.compile(r"[+-]?\d+(?:\.\d+)?", re.ASCII)
#: ISO 8601 / RFC 3339 spellings the document neither allows nor refuses explicitly.
_LENIENT = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:[Zz]|[+-]\d{2}:?\d{2})", re.ASCII
)


def check_datetime(value: Any) -> tuple[str, datetime | None]:
    """("valid", utc) | ("invalid", None) | ("either", None).

    Out of range in UTC (``0001-01-01T00:00:00+01:00``) and Unix times in a string
    (``"1700000000"``) are invalid: docs/protocol.md, "Types on the wire".
    """
    if value is None:
        return "valid", None
    if not isinstance(value, str):
        return "invalid", None
    match = _RFC3339.fullmatch(value)
    if match:
        year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
        micro = int((match.group(7) or "0").ljust(6, "0"))
        offset = match.group(8)
        if offset == "Z":
            tz = UTC
        else:
            hours, minutes = int(offset[1:3]), int(offset[4:6])
            if hours > 23 or minutes > 59:
                return "invalid", None
            sign = -1 if offset[0] == "-" else 1
            tz = timezone(sign * timedelta(hours=hours, minutes=minutes))
        try:
            local = datetime(year, month, day, hour, minute, second, micro, tzinfo=tz)
        except ValueError:
            return "invalid", None
        try:
            return "valid", local.astimezone(UTC)
        except OverflowError:
            return "invalid", None
    if _TIMESTAMP.fullmatch(value):
        return "invalid", None
    if _NAIVE.fullmatch(value):
        return "invalid", None
    if _LENIENT.fullmatch(value):
        return "either", None
    return "invalid", None


@dataclass
class Validation:
    ok: bool
    paths: frozenset = frozenset()
    failed: int = 0
    value: dict | None = None


def validate(
    schema: Schema, data: dict, *, surrogates_ok: bool, either_ok: bool, extra_ok: bool
) -> Validation:
    """Strict validation as the document states it (one reading of its open points)."""
    failing: list[str] = [] if extra_ok else [k for k in data if k not in schema.fields]
    value: dict[str, Any] = {}
    for name, (kind, default) in schema.fields.items():
        if name not in data:
            if default is REQUIRED:
                failing.append(name)
            else:
                value[name] = default
            continue
        v = data[name]
        if kind.endswith("?") and v is None:
            ok = True
        elif kind.startswith("str"):
            ok = isinstance(v, str) and (surrogates_ok or not has_surrogate(v))
        elif kind.startswith("int"):
            ok = is_int(v)
        elif kind.startswith("bool"):
            ok = isinstance(v, bool)
        elif kind.startswith("float"):  # strict JSON: a number, an integer too; never a bool
            ok = is_int(v) or isinstance(v, float)
        else:  # a datetime: "ISO 8601 strings with a timezone", sent back in UTC with Z
            verdict, utc = check_datetime(v)
            ok = v is not None and (verdict == "valid" or (verdict == "either" and either_ok))
            v = Utc(utc)
        if ok:
            value[name] = v
        else:
            failing.append(name)
    if failing:
        paths = frozenset(cut(p) if p else "(root)" for p in failing)
        return Validation(False, paths, len(failing))
    return Validation(True, value=value)


# -- the oracle ------------------------------------------------------------------------------------


@dataclass
class State:
    user_id: int | None  # the fuzz socket's user (None: anonymous)
    me: int  # the fuzzing user's id
    token: str  # "Token <key>" of the fuzzing user
    active_ids: frozenset[int]  # active users when the run started
    max_id: int

    @property
    def token_key(self) -> str:
        return self.token.split(" ", 1)[1]


@dataclass(frozen=True)
class Case:
    """One frame as sent: ``text`` (str), ``binary`` (bytes) or ``raw-text`` (bytes in a
    text frame, possibly invalid UTF-8)."""

    kind: str
    payload: Any
    family: str = "?"

    @property
    def size(self) -> int:
        if self.kind == "text":
            return len(self.payload.encode("utf-8", "surrogatepass"))
        return len(self.payload)

    def __repr__(self) -> str:
        return f"Case({self.family}, {self.kind}, {self.size} bytes, {_short(self.payload, 300)})"


def oracle(case: Case, state: State) -> Expect:
    """Every outcome docs/protocol.md allows for ``case`` sent by a socket in ``state``."""
    if case.kind == "binary":
        peeked = parse_frame(case.payload.decode("utf-8", "replace"))
        ids = (ABSENT, *_valid_ids(peeked.obj))  # the server may or may not "read" it
        return Expect([Alt(last=Err("malformed_frame", _names(peeked.obj), ids))])
    if case.kind != "text":
        # Not valid UTF-8: the server closes the connection (docs/protocol.md, "Limits").
        return Expect([Alt(close=1007), Alt(close=1006)])
    text = case.payload
    if case.size > SERVER_MAX_BYTES:
        return Expect([Alt(close=1009), Alt(close=1006)])
    parsed = parse_frame(text)
    echoable = echoable_strings(parsed)
    if case.size > MAX_MESSAGE_BYTES:
        ids = (ABSENT, *_valid_ids(parsed.obj))
        return Expect(
            [Alt(last=Err("malformed_frame", _names(parsed.obj), ids), close=4009)],
            echoable=echoable,
        )
    if parsed.status == "syntax":
        return Expect([Alt(last=Err("malformed_frame"))], echoable=echoable)
    if parsed.status in ("strict", "nan"):
        # JSON the protocol refuses (NaN/Infinity, a lone surrogate escape, a huge integer)
        # is still readable: "id appears when ... the server could read it".
        ids = (ABSENT, *_valid_ids(parsed.obj))
        return Expect(
            [Alt(last=Err("malformed_frame", _names(parsed.obj), ids))], echoable=echoable
        )
    if parsed.status == "deep":
        return Expect([Alt(last=Err("malformed_frame", id=(ABSENT, ANY_STRING)))])
    obj = parsed.obj
    values, containers, levels = measure(obj)
    # "id appears when the client's frame had one and the server could read it".
    refused = Alt(last=Err("malformed_frame", _names(obj), (ABSENT, *_valid_ids(obj))))
    if values > MAX_FRAME_VALUES or containers > MAX_FRAME_DEPTH:
        expect = Expect([refused], echoable=echoable)
    else:
        expect = _frame(obj, state)
        expect.echoable = echoable
        if levels > MAX_FRAME_DEPTH:
            # Whether a scalar counts as a level of nesting is not documented.
            expect.alts.append(refused)
    return expect


#: The commands of streaming-method calls (docs/protocol.md, "Streaming methods"): their
#: call id is ``args.id``, which an error about such a frame echoes.
METHOD_COMMANDS = frozenset(
    re.findall(
        r"^\| `([a-z_]+)` \| (?:client|server|both)", _section(_DOC, "Streaming methods"), re.M
    )
)


@dataclass(frozen=True)
class CallFail:
    """A ``fail`` frame answering a ``call`` (any documented code, the call's id)."""

    id: Any

    def matches(self, frame: Any) -> bool:
        args = frame.get("args") if isinstance(frame, dict) else None
        return (
            isinstance(args, dict)
            and frame.get("command") == "fail"
            and args.get("id") == self.id
            and args.get("code") in ERROR_CODES
        )

    def __str__(self) -> str:
        return f"fail id={self.id!r}"


def _valid_ids(obj: Any) -> tuple:
    frame_id = _field(obj, "id")
    command, args = _field(obj, "command"), _field(obj, "args")
    if frame_id in (ABSENT, None) and isinstance(command, str) and command in METHOD_COMMANDS:
        frame_id = args.get("id", ABSENT) if isinstance(args, dict) else ABSENT
    if isinstance(frame_id, str) and len(frame_id) <= MAX_ID_LENGTH:
        return (frame_id,)
    return ()


def _names(obj: Any) -> tuple:
    """``endpoint`` of an error about a frame the server refused: absent, or (docs: "when
    the frame named a known endpoint") the name."""
    name = _field(obj, "endpoint")
    if isinstance(name, str) and name in KNOWN_ENDPOINTS:
        return (ABSENT, name)
    return (ABSENT,)


def _frame(obj: Any, state: State) -> Expect:
    malformed = Alt(last=Err("malformed_frame", _names(obj), (ABSENT, *_valid_ids(obj))))
    if not isinstance(obj, dict):
        return Expect([Alt(last=Err("malformed_frame"))])
    if "command" in obj:
        command, args = obj["command"], obj.get("args", {})
        loose_ids = (ABSENT, *_valid_ids(obj))  # "id" is an unknown key of a command
        if not isinstance(command, str) or not isinstance(args, dict):
            return Expect([Alt(last=Err("malformed_frame", _names(obj), loose_ids))])
        if command == "ping":
            return Expect([Alt(last=PONG)])
        if command == "pong":
            return Expect([Alt()])
        if command == "auth":
            return Expect(_auth(args.get("key"), state), lane="echo")
        if command in METHOD_COMMANDS:
            # Refused at the edge, ignored (a call that is not in progress), or a call's
            # fail (no endpoint or method the fuzzer names has streaming methods).
            return Expect(
                [
                    Alt(last=Err("malformed_frame", _names(obj), loose_ids)),
                    Alt(),
                    Alt(last=CallFail(args.get("id"))),
                ]
            )
        return Expect([Alt(last=Err("unknown_command", _names(obj), loose_ids))])
    endpoint, payload, frame_id = obj.get("endpoint"), obj.get("object"), obj.get("id", ABSENT)
    if not isinstance(endpoint, str) or not endpoint or not isinstance(payload, dict):
        return Expect([malformed])
    class_name, data = payload.get("className"), payload.get("data")
    if not isinstance(class_name, str) or not class_name or not isinstance(data, dict):
        return Expect([malformed])
    id_ok = frame_id is ABSENT or (isinstance(frame_id, str) and len(frame_id) <= MAX_ID_LENGTH)
    if frame_id is None:
        # "id: string, optional": whether null means "no id" is not documented.
        expect = _data(endpoint, class_name, data, ABSENT, state)
        expect.alts.append(malformed)
        return expect
    if not id_ok:
        return Expect([malformed])
    expect = _data(endpoint, class_name, data, frame_id, state)
    if payload.keys() - {"className", "data"}:
        # Unknown keys are documented as ignored at the top level only.
        expect.alts.append(malformed)
    return expect


def _auth(key: Any, state: State) -> list[Alt]:
    if isinstance(key, str) and key == state.token:
        users: list[int | None] = [state.me]
    elif isinstance(key, str) and state.token_key in key:
        users = [state.me, None]  # a spelling of the right key the document does not cover
    else:
        users = [None]  # "A missing, malformed, unknown or inactive key: anonymous"
    alts = []
    for user in users:
        opened: tuple = ()
        if user != state.user_id:  # stream_opened of the endpoints the new identity may use
            opened = (Data("whoami", "WhoAmI", {"user_id": user, "endpoint": "whoami"}),)
            if user is not None:
                opened += (Data("private", "WhoAmI", {"user_id": user, "endpoint": "private"}),)
        alts.append(Alt(opened, Cmd("auth", {"user_id": user}), identity=user))
    return alts


def _data(endpoint: str, class_name: str, data: dict, frame_id: Any, state: State) -> Expect:
    ids = (frame_id,)
    model = ENDPOINTS.get(endpoint)
    if endpoint in UNMODELLED:
        raise AssertionError(f"the fuzzer must not send to {endpoint!r}")
    if model is None:
        return Expect([Alt(last=Err("unknown_endpoint", (cut(endpoint),), ids))])

    def error(code: str, **extra: Any) -> Alt:
        return Alt(last=Err(code, (endpoint,), ids, **extra))

    expect = Expect([], lane=endpoint)
    if model.login_required and state.user_id is None:
        expect.alts.append(error("not_authenticated"))
        return expect
    if model.staff_only:  # nobody here is staff
        expect.alts.append(error("forbidden"))
        return expect
    if model.open_fails:
        expect.alts.append(error("internal_error"))
        return expect
    schema = classes().get(class_name)
    if schema is None:
        expect.alts.append(error("unknown_class"))
        return expect
    surrogate = any(has_surrogate(s) for s in walk_strings(data))
    variants = []
    extra = any(key not in schema.fields for key in data)
    extra_rules = {"rejected": (False,), "ignored": (True,), None: (False, True)}[UNKNOWN_FIELDS]
    for surrogates_ok in (True, False) if surrogate else (True,):
        for either_ok in (True, False):
            for extra_ok in extra_rules if extra else (False,):
                v = validate(
                    schema,
                    data,
                    surrogates_ok=surrogates_ok,
                    either_ok=either_ok,
                    extra_ok=extra_ok,
                )
                variants.append(v)
    for v in variants:
        if not v.ok:
            alt = error("invalid_message", paths=v.paths, failed=v.failed)
        elif model.handler == "echo":
            alt = Alt(last=Data(endpoint, class_name, v.value))
        elif model.handler == "none":
            alt = Alt()
        elif model.handler == "raise":
            alt = error("internal_error")  # "a hook raised"
        else:
            expect.alts.extend(_chat(class_name, v.value, error, state))
            continue
        if alt not in expect.alts:
            expect.alts.append(alt)
    return expect


def _chat(class_name: str, value: dict, error: Callable[..., Alt], state: State) -> list[Alt]:
    if class_name != "ChatMessage":
        return [error("invalid_message", paths=frozenset({"(root)"}), failed=1)]
    alts = [error("rate_limited")]  # ChatEndpoint: 20 messages per user in 10 s
    text = value["text"].strip()
    if not text or len(text) > CHAT_MAX_TEXT:
        alts.append(error("invalid_message", paths=frozenset({"text"}), failed=1))
        return alts
    recipient = value["recipient_id"]
    if isinstance(recipient, HugeInt) or recipient <= 0 or recipient > state.max_id + 1000:
        exists: bool | None = False
    elif recipient in state.active_ids:
        exists = True
    else:
        exists = None  # a user this run did not create: it may exist
    if exists is not False:
        # Posted to user_<me>: the chat socket gets it, and so does example_chat (it listens
        # on the same channel in tests/e2e_app).
        stored = (
            ChatStored("example_chat", state.me, recipient, text),
            ChatStored("chat", state.me, recipient, text),
        )
        alts.append(Alt(stored))
    if exists is not True:
        alts.append(error("invalid_message", paths=frozenset({"recipient_id"}), failed=1))
    return alts


# -- checks every frame from the server must pass --------------------------------------------------

#: An error frame's size bound: a constant, whatever the frame that caused it (docs: every
#: repeated value cut to 64 characters, at most 20 fields; JSON escapes take <= 12 bytes
#: a character).
MAX_ERROR_FRAME = 12 * (ECHO_LIMIT + 1) * (4 + 2 * MAX_ERRORS) + 4096


def frame_problems(raw: str, frame: Any, echoable: Iterable[str]) -> list[str]:
    """What is wrong with a frame from the server whatever it answers (shape, size, leaks)."""
    if not isinstance(frame, dict):
        return [f"not a JSON object: {_short(raw)}"]
    if "command" not in frame:
        if frame.keys() != {"endpoint", "object"}:
            return [f"data frame with keys {sorted(frame)}"]
        return []
    if frame.keys() != {"command", "args"} or not isinstance(frame["args"], dict):
        return [f"command frame of an unexpected shape: {_short(frame)}"]
    if frame["command"] != "error":
        known = frame["command"] in ("pong", "auth", "fail")
        return [] if known else [f"command {frame['command']!r}"]
    args = frame["args"]
    problems = []
    if len(raw.encode("utf-8", "surrogatepass")) > MAX_ERROR_FRAME:
        problems.append(f"error frame of {len(raw)} characters")
    if not args.keys() <= {"code", "message", "endpoint", "id", "errors"}:
        problems.append(f"error keys {sorted(args)}")
    if args.get("code") not in ERROR_CODES:
        problems.append(f"undocumented error code {args.get('code')!r}")
    message = args.get("message")
    if not isinstance(message, str) or not message:
        problems.append("error without a message")
    else:
        found = leaks(message, echoable)
        if found:
            problems.append(f"message leaks internals {found}: {message!r}")
    if "endpoint" in args and (
        not isinstance(args["endpoint"], str) or len(args["endpoint"]) > ECHO_LIMIT + 1
    ):
        problems.append(f"endpoint {args['endpoint']!r} not cut to {ECHO_LIMIT} characters")
    if "errors" in args:
        errors = args["errors"]
        if args.get("code") != "invalid_message":
            problems.append("errors on an error other than invalid_message")
        if not isinstance(errors, list) or len(errors) > MAX_ERRORS:
            problems.append(f"errors is not a list of at most {MAX_ERRORS}")
        else:
            for item in errors:
                if not (
                    isinstance(item, dict)
                    and item.keys() == {"path", "reason"}
                    and isinstance(item["path"], str)
                    and isinstance(item["reason"], str)
                ):
                    problems.append(f"errors item {_short(item)}")
                    continue
                if len(item["path"]) > ECHO_LIMIT + 1:
                    problems.append(f"path not cut: {_short(item['path'])}")
                found = leaks(item["reason"], echoable)
                if found:
                    problems.append(f"reason leaks internals {found}: {item['reason']!r}")
    return problems


# -- frames: building blocks -----------------------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """A JSON token written as is (``1e999``, ``NaN``, a 5000-digit integer).

    Not a ``str`` subclass: hypothesis' shrinker re-encodes values it recorded through
    whichever strategy draws at that place (``_invert``), and ``st.text()`` takes any
    ``str`` instance as a choice of its own, which then breaks the replay (a KeyError on
    the choice's type, reported as ``FlakyStrategyDefinition``). An object no strategy
    can re-encode is left alone.
    """

    text: str

    def __repr__(self) -> str:
        return f"Raw({_short(self.text, 40)})"


def to_json(obj: Any, *, ascii_only: bool = False, compact: bool = True) -> str:
    """Serialise generated values; lone surrogates are always written as escapes."""
    comma, colon = (",", ":") if compact else (", ", ": ")
    if isinstance(obj, Raw):
        return obj.text
    if isinstance(obj, str):
        return json.dumps(obj, ensure_ascii=ascii_only or has_surrogate(obj))
    if isinstance(obj, dict):
        items = [
            to_json(str(k), ascii_only=ascii_only)
            + colon
            + to_json(v, ascii_only=ascii_only, compact=compact)
            for k, v in obj.items()
        ]
        return "{" + comma.join(items) + "}"
    if isinstance(obj, list | tuple):
        return (
            "[" + comma.join(to_json(v, ascii_only=ascii_only, compact=compact) for v in obj) + "]"
        )
    return json.dumps(obj)


def text_case(obj: Any, family: str, *, ascii_only: bool = False, compact: bool = True) -> Case:
    return Case("text", to_json(obj, ascii_only=ascii_only, compact=compact), family)


def data_frame(endpoint: Any, class_name: Any, data: Any, frame_id: Any = ABSENT) -> dict:
    frame: dict[str, Any] = {
        "endpoint": endpoint,
        "object": {"className": class_name, "data": data},
    }
    if frame_id is not ABSENT:
        frame["id"] = frame_id
    return frame


SURROGATES = ["\ud800", "a\udfffb", "\udc00\ud800", "\udbff"]
EDGE_STRINGS = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\u202e",  # right-to-left override
    "abc\u202edef\u202c",
    "\u200f\u200e",
    "\u0627\u0644\u0639\u0631\u0628\u064a\u0629",  # Arabic
    "\u05e9\u05dc\u05d5\u05dd",  # Hebrew
    "\ufeff",  # byte order mark
    "\uffff\ufffe",  # non-characters
    "\U0010ffff",
    "\U0001f600",  # emoji
    "\U0001f469\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466",  # a ZWJ family
    "e\u0301\u0301\u0301",  # combining accents
    "\u2028\u2029",  # JSON-legal, JavaScript-illegal line separators
    "\x7f\x1b[31m",
    "\t\n\r",
    "\u3000",  # ideographic space (str.strip() removes it)
    "\uff45\uff43\uff48\uff4f",  # fullwidth "echo"
    "<script>alert(1)</script>",
    "' OR 1=1 --",
    "%s%n%x",
    "{{7*7}}${7*7}",
    "../../etc/passwd",
    "null",
    "true",
    "0",
    "-1",
    "NaN",
    "Infinity",
    "1e999",
    "__proto__",
    "constructor",
    "Traceback",  # a client's word, not a leak
    *SURROGATES,
]
EDGE_INTS = [
    0,
    1,
    -1,
    2**31 - 1,
    2**31,
    2**53,
    2**53 + 1,
    2**63 - 1,
    2**63,
    2**64,
    -(2**63) - 1,
    10**23,  # 24 digits
    -(10**23),
    10**24 - 1,
]
UNITS = ["a", "\u00e9", "\u20ac", "\U0001f600", "\x00", "\u202e", "e\u0301", " "]
KEY_NAMES = ["endpoint", "object", "className", "data", "id", "command", "args", "key", "text"]


def big_int_token(digits: int, negative: bool = False) -> Raw:
    return Raw(("-" if negative else "") + "9" * digits)


texts = st.one_of(
    st.sampled_from(EDGE_STRINGS),
    st.text(max_size=24),
    st.text(st.characters(codec="ascii"), max_size=16),
    st.builds(lambda unit, k: unit * k, st.sampled_from(UNITS), st.integers(1, 2000)),
)
# Lone surrogates are rarer here: frames holding them get malformed_frame (strict JSON).
clean_texts = texts.filter(lambda s: not has_surrogate(s))
keys = st.one_of(st.sampled_from(KEY_NAMES), clean_texts, st.sampled_from(EDGE_STRINGS))
ints = st.one_of(
    st.sampled_from(EDGE_INTS),
    st.integers(),
    st.integers(10**16, 10**40),
    st.integers(-(10**40), -(10**16)),
)
huge_numbers = st.one_of(
    st.builds(big_int_token, st.integers(17, 60), st.booleans()),
    st.builds(big_int_token, st.integers(300, PY_INT_DIGITS), st.booleans()),
    st.builds(big_int_token, st.sampled_from([PY_INT_DIGITS + 1, 5000, 6000]), st.booleans()),
    st.sampled_from(
        [Raw("1e999"), Raw("-1e999"), Raw("1e-999"), Raw("-0"), Raw("-0.0"), Raw("1E+2")]
    ),
    st.sampled_from(
        [Raw("1" + "0" * 5000), Raw("1" + "0" * 5000 + ".5"), Raw("0." + "0" * 5000 + "1")]
    ),
    st.sampled_from([Raw("NaN"), Raw("Infinity"), Raw("-Infinity")]),  # not JSON
)
floats = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, 1.5, 1e308, 5e-324, 1.7976931348623157e308]),
)
scalars = st.one_of(st.none(), st.booleans(), ints, floats, texts)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=12,
)
offsets = st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))


def _iso(dt: datetime, spec: str, zulu: bool) -> str:
    text = dt.isoformat(timespec=spec)
    return text[:-6] + "Z" if zulu and text.endswith("+00:00") else text


aware_datetimes = st.builds(
    _iso,
    st.datetimes(datetime(2, 1, 1), datetime(9998, 12, 31), timezones=offsets),
    st.sampled_from(["seconds", "milliseconds", "microseconds"]),
    st.booleans(),
)
datetime_values = st.one_of(
    aware_datetimes,
    st.builds(lambda d: d.isoformat(), st.datetimes(datetime(2, 1, 1), datetime(9998, 12, 31))),
    st.sampled_from(
        [
            None,
            "2026-13-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-01-01T00:00:00+24:00",
            "2026-01-01",
            "not a date",
            "",
            "2026-01-01T00:00:00.1234567Z",
            "0001-01-01T00:00:00+01:00",  # out of range in UTC: invalid
            "9999-12-31T23:59:59-01:00",
            "1700000000",  # a Unix time in a string: invalid
        ]
    ),
    st.integers(0, 2**40),
)


@dataclass(frozen=True)
class Context:
    """What strategies need to know about the run's users."""

    me: int
    alice: int
    bob: int
    token: str
    missing_id: int  # an id no user has

    @property
    def token_key(self) -> str:
        return self.token.split(" ", 1)[1]

    @property
    def recipients(self) -> st.SearchStrategy[Any]:
        return st.one_of(
            st.sampled_from([self.alice, self.bob, self.me, self.missing_id, 0, -1]),
            ints,
        )


@st.composite
def valid_frames(draw: Any, ctx: Context) -> Any:
    """A frame the document gives a non-error answer to (for some state)."""
    kind = draw(
        st.sampled_from(
            [
                "ping",
                "ping-no-args",
                "pong",
                "auth",
                "echo",
                "echo",
                "whoami",
                "private",
                "chat",
                "chat",
                "echo-other",
                "staff_only",
                "broken_handler",
                "broken_open",
            ]
        )
    )
    frame_id = draw(
        st.one_of(
            st.just(ABSENT), st.text(max_size=12), st.sampled_from(["c-17", "\U0001f600" * 128])
        )
    )
    if kind == "ping":
        return {"command": "ping", "args": {}}
    if kind == "ping-no-args":
        return {"command": "ping"}
    if kind == "pong":
        return {"command": "pong", "args": {}}
    if kind == "auth":
        return {"command": "auth", "args": {"key": ctx.token}}
    if kind in ("echo", "private", "staff_only", "broken_handler", "broken_open"):
        data: dict[str, Any] = {"text": draw(clean_texts)}
        if draw(st.booleans()):
            data["n"] = draw(ints)
        if draw(st.booleans()):
            data["at"] = draw(st.one_of(st.none(), aware_datetimes, datetime_values))
        return data_frame(kind, "Echo", data, frame_id)
    if kind == "whoami":
        return data_frame(
            "whoami",
            "WhoAmI",
            {"user_id": draw(st.one_of(st.none(), ints)), "endpoint": draw(clean_texts)},
            frame_id,
        )
    if kind == "chat":
        text = draw(
            st.one_of(
                clean_texts,
                st.sampled_from(
                    ["hello", " x ", "\u3000", "y" * 4000, " " + "z" * 4000 + " ", "w" * 4001]
                ),
            )
        )
        data = {"recipient_id": draw(ctx.recipients), "text": text}
        if draw(st.integers(0, 3)) == 0:  # set by the server; validated, then ignored
            data["sent_at"] = draw(datetime_values)
        return data_frame("chat", "ChatMessage", data, frame_id)
    class_name, data = draw(
        st.sampled_from(
            [
                (
                    "ChatMessage",
                    {
                        "recipient_id": ctx.alice,
                        "text": "hi",
                        "sent_at": "2026-01-01T12:00:00+02:00",
                    },
                ),
                ("RoomPost", {"room": "lobby", "text": "hi"}),
                ("WhoAmI", {"user_id": None, "endpoint": "x"}),
                ("ExampleChatMessage", {"recipient_id": 2, "text": "hi"}),
                ("Flood", {"count": 10**9, "size": 10**9, "report_to": "nowhere"}),
                ("FloodReport", {"accepted": 1, "requested": 2}),
                ("streaming.RevokedAuthentication", {"user_id": ctx.alice}),
            ]
        )
    )
    endpoint = draw(st.sampled_from(["echo", "whoami", "private", "broken_handler"]))
    return data_frame(endpoint, class_name, data, frame_id)


def _paths(obj: Any, limit: int = 4) -> list[tuple]:
    found: list[tuple] = []
    stack: list[tuple[Any, tuple]] = [(obj, ())]
    while stack:
        item, path = stack.pop()
        if path:
            found.append(path)
        if len(path) >= limit:
            continue
        if isinstance(item, dict):
            stack.extend((v, (*path, k)) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((v, (*path, i)) for i, v in enumerate(item))
    return sorted(found, key=lambda p: (len(p), repr(p)))


def _copy(obj: Any) -> Any:
    """A deep copy of generated JSON (:class:`Raw` tokens are immutable)."""
    if isinstance(obj, dict):
        return {k: _copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_copy(v) for v in obj]
    return obj


def _fresh(draw: Any, strategy: st.SearchStrategy[Any]) -> Any:
    """A drawn value to change in place: a copy. Hypothesis keeps what each strategy
    returned (to re-encode it while shrinking), so that must never change afterwards."""
    return _copy(draw(strategy))


def _get(obj: Any, path: tuple) -> Any:
    for part in path:
        obj = obj[part]
    return obj


def _other_type(draw: Any, value: Any) -> Any:
    """A value of another JSON type than ``value``."""
    choices: list[st.SearchStrategy[Any]] = [
        st.none(),
        st.booleans(),
        ints,
        floats,
        texts,
        st.lists(scalars, max_size=3),
        st.dictionaries(keys, scalars, max_size=3),
        huge_numbers,
    ]
    if isinstance(value, str):
        choices.append(st.just([value]))
    if is_int(value) and not isinstance(value, HugeInt):
        choices.append(st.just(str(value)))
        choices.append(st.just(float(value) if abs(value) < 2**1000 else 1.5))
    if isinstance(value, dict):
        choices.append(st.just(list(value.values())))
    if isinstance(value, list):
        choices.append(st.just(dict(enumerate(map(str, value)))))
    return _fresh(draw, st.one_of(choices))


@st.composite
def mutated(draw: Any, obj: Any) -> Any:
    """``obj`` with 1 to 3 structural mutations."""
    obj = _copy(obj)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(
            st.sampled_from(["delete", "add", "replace", "retype", "rename", "wrap", "id", "swap"])
        )
        paths = _paths(obj) if isinstance(obj, dict | list) else []
        if op == "wrap" or not paths:
            obj = _fresh(draw, st.sampled_from([[obj], {"frame": obj}, to_json(obj)]))
            continue
        if op == "id":
            if isinstance(obj, dict):
                obj["id"] = _fresh(
                    draw,
                    st.one_of(
                        st.sampled_from(
                            [
                                None,
                                5,
                                "",
                                "x" * MAX_ID_LENGTH,
                                "x" * (MAX_ID_LENGTH + 1),
                                ["a"],
                                {"a": 1},
                            ]
                        ),
                        st.text(max_size=130),
                        st.builds(
                            lambda u, k: u * k,
                            st.sampled_from(UNITS),
                            st.integers(MAX_ID_LENGTH - 1, MAX_ID_LENGTH + 1),
                        ),
                    ),
                )
            continue
        path = draw(st.sampled_from(paths))
        parent, key = _get(obj, path[:-1]), path[-1]
        if op == "delete":
            del parent[key]
        elif op == "add":
            target = _get(
                obj,
                draw(st.sampled_from([(), *[p for p in paths if isinstance(_get(obj, p), dict)]])),
            )
            if isinstance(target, dict):
                target[draw(keys)] = _fresh(draw, json_values)
            elif isinstance(target, list):
                target.append(_fresh(draw, json_values))
        elif op == "replace":
            parent[key] = _fresh(
                draw, st.one_of(json_values, st.sampled_from(EDGE_STRINGS), huge_numbers)
            )
        elif op == "retype":
            parent[key] = _other_type(draw, parent[key])
        elif op == "rename" and isinstance(parent, dict):
            new = draw(
                st.sampled_from(
                    [
                        str(key).upper(),
                        str(key).capitalize(),
                        f"{key} ",
                        f" {key}",
                        f"{key}\x00",
                        str(key)[:-1],
                        f"{key}s",
                    ]
                )
            )
            parent[new] = parent.pop(key)
        elif op == "swap" and isinstance(parent, dict) and len(parent) >= 2:
            a, b = draw(st.permutations(sorted(parent, key=repr)))[:2]
            parent[a], parent[b] = parent[b], parent[a]
    return obj


@st.composite
def text_mutated(draw: Any, text: str) -> str:
    """``text`` with one textual mutation: the JSON may break."""
    op = draw(
        st.sampled_from(
            [
                "truncate",
                "insert",
                "delete",
                "dupkey",
                "constant",
                "bom",
                "pad",
                "trailing",
                "quotes",
            ]
        )
    )
    if op == "truncate" and text:
        return text[: draw(st.integers(0, len(text) - 1))]
    if op == "insert":
        at = draw(st.integers(0, len(text)))
        return (
            text[:at]
            + draw(st.sampled_from([*'{}[],:"\\', "\x00", "\u2028", "/*", "NaN"]))
            + text[at:]
        )
    if op == "delete" and text:
        at = draw(st.integers(0, len(text) - 1))
        return text[:at] + text[at + 1 :]
    if op == "dupkey" and text.startswith("{") and len(text) > 2:
        key = draw(st.sampled_from(["endpoint", "command", "id", "object"]))
        return "{" + json.dumps(key) + ":" + to_json(draw(json_values)) + "," + text[1:]
    if op == "constant":
        numbers = list(re.finditer(r"(?<=[:\[,])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?", text))
        if numbers:
            match = draw(st.sampled_from(numbers))
            token = draw(
                st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-0", "1" + "0" * 30])
            )
            return text[: match.start()] + token + text[match.end() :]
        return text + draw(st.sampled_from(["NaN", " "]))
    if op == "bom":
        return "\ufeff" + text
    if op == "pad":
        return (
            draw(st.sampled_from([" ", "\n", "\t", "\r\n"])) * draw(st.integers(1, 100))
            + text
            + " "
        )
    if op == "trailing":
        return text + draw(st.sampled_from([",", "}", "]", " x", "\x00", "{}"]))
    return text.replace('"', "'", draw(st.integers(1, 3)))


def _nest(depth: int, inner: str, kind: str) -> str:
    if kind == "list":
        return "[" * depth + inner + "]" * depth
    return '{"a":' * depth + inner + "}" * depth


@st.composite
def deep_frames(draw: Any) -> Case:
    depth = draw(
        st.one_of(
            st.integers(MAX_FRAME_DEPTH - 4, MAX_FRAME_DEPTH + 4),
            st.sampled_from([64, 500, 999, 1000, 1001, 5000]),
            st.integers(1, 12000),
        )
    )
    kind = draw(st.sampled_from(["list", "dict"]))
    inner = draw(st.sampled_from(["", "1", '"x"', "null", "[]", "{}"]))
    if kind == "dict" and inner == "":
        inner = "1"
    nested = _nest(depth, inner, kind)
    where = draw(st.sampled_from(["top", "extra", "data", "field", "args", "id"]))
    frame_id = draw(st.sampled_from(["", ',"id":"deep-1"']))
    if where == "top":
        text = nested
    elif where == "extra":
        text = (
            '{"endpoint":"echo","object":{"className":"Echo","data":{"text":"x"}}'
            + frame_id
            + ',"extra":'
            + nested
            + "}"
        )
    elif where == "data":
        text = (
            '{"endpoint":"echo","object":{"className":"Echo","data":{"text":"x","deep":'
            + nested
            + "}}"
            + frame_id
            + "}"
        )
    elif where == "field":
        text = (
            '{"endpoint":"echo","object":{"className":"Echo","data":{"text":'
            + nested
            + "}}"
            + frame_id
            + "}"
        )
    elif where == "args":
        text = '{"command":"ping","args":{"x":' + nested + "}}"
    else:
        text = (
            '{"endpoint":"echo","object":{"className":"Echo","data":{"text":"x"}},"id":'
            + nested
            + "}"
        )
    return Case("text", text, "deep")


@st.composite
def many_values(draw: Any) -> Case:
    # {"endpoint", "object", "className", "data", "text"} and the top object and the list:
    # 7 values besides the list's items.
    count = draw(
        st.one_of(st.integers(MAX_FRAME_VALUES - 10, MAX_FRAME_VALUES), st.integers(0, 12000))
    )
    item = draw(st.sampled_from(["0", "[]", "{}", '""', "null"]))
    text = (
        '{"endpoint":"echo","object":{"className":"Echo","data":{"text":"x"}},"extra":['
        + ",".join([item] * count)
        + "]}"
    )
    return Case("text", text, "many-values")


@st.composite
def sized_frames(draw: Any) -> Case:
    """Frames whose UTF-8 size is near the documented limit (strings up to the limit)."""
    target = draw(
        st.one_of(
            st.integers(MAX_MESSAGE_BYTES - 8, MAX_MESSAGE_BYTES + 8),
            st.integers(MAX_MESSAGE_BYTES - 2000, SERVER_MAX_BYTES - 1),
            st.integers(1000, MAX_MESSAGE_BYTES),
        )
    )
    unit = draw(st.sampled_from([*UNITS, "\U0001f469\u200d\U0001f467"]))
    head = '{"endpoint":"echo","object":{"className":"Echo","data":{"text":"'
    tail = '"}}}'
    unit_json = json.dumps(unit, ensure_ascii=False)[1:-1]
    budget = target - len((head + tail).encode())
    count = max(0, budget // len(unit_json.encode()))
    body = unit_json * count
    body += "a" * max(0, budget - len(body.encode()))
    return Case("text", head + body + tail, "sized")


@st.composite
def long_names(draw: Any, ctx: Context) -> Case:
    """Long values in places an error repeats: endpoint, className, command, id, keys."""
    length = draw(st.sampled_from([ECHO_LIMIT - 1, ECHO_LIMIT, ECHO_LIMIT + 1, 1000, 20000]))
    value = draw(st.sampled_from(UNITS)) * length
    where = draw(st.sampled_from(["endpoint", "className", "command", "key", "id", "auth"]))
    if where == "endpoint":
        obj: Any = data_frame(value, "Echo", {"text": "x"}, "n1")
    elif where == "className":
        obj = data_frame("echo", value, {"text": "x"}, "n1")
    elif where == "command":
        obj = {"command": value, "args": {}}
    elif where == "key":
        obj = data_frame(
            "echo",
            "Echo",
            {"text": "x", **{value + str(i): i for i in range(draw(st.integers(1, 25)))}},
        )
    elif where == "id":
        obj = data_frame(
            "echo",
            "NoSuchClass",
            {},
            value[: draw(st.integers(MAX_ID_LENGTH - 1, MAX_ID_LENGTH + 1))],
        )
    else:
        obj = {"command": "auth", "args": {"key": "Token " + value}}
    return text_case(obj, "long-names")


@st.composite
def garbage(draw: Any) -> Case:
    kind = draw(st.sampled_from(["text", "latin1", "tokens", "empty"]))
    if kind == "text":
        return Case("text", draw(st.text(max_size=300)), "garbage")
    if kind == "latin1":
        return Case("text", draw(st.binary(max_size=300)).decode("latin-1"), "garbage")
    if kind == "empty":
        return Case("text", draw(st.sampled_from(["", " ", "\n", "\x00", "\ufeff"])), "garbage")
    tokens = st.sampled_from(
        [
            "{",
            "}",
            "[",
            "]",
            '"',
            ":",
            ",",
            "null",
            "true",
            "1",
            "-",
            '"endpoint"',
            '"command"',
            '"ping"',
            '"echo"',
            "\\",
            '"\\u',
            "e5",
        ]
    )
    return Case("text", "".join(draw(st.lists(tokens, max_size=40))), "garbage")


@st.composite
def binary_frames(draw: Any, ctx: Context) -> Case:
    kind = draw(st.sampled_from(["random", "json", "big"]))
    if kind == "random":
        return Case("binary", draw(st.binary(max_size=2048)), "binary")
    if kind == "json":
        return Case(
            "binary", to_json(draw(valid_frames(ctx))).encode("utf-8", "surrogatepass"), "binary"
        )
    return Case(
        "binary",
        b"\x00" * draw(st.integers(MAX_MESSAGE_BYTES - 10, SERVER_MAX_BYTES - 1)),
        "binary",
    )


@st.composite
def unknown_commands(draw: Any) -> Case:
    name = draw(
        st.one_of(
            st.sampled_from(
                [
                    "PING",
                    "Ping",
                    " ping",
                    "ping ",
                    "ping\x00",
                    "error",
                    "auth ",
                    "pong\u200b",
                    "",
                    "subscribe",
                    "close",
                    "__proto__",
                ]
            ),
            clean_texts,
        )
    )
    args = draw(st.one_of(st.just({}), st.dictionaries(keys, scalars, max_size=3)))
    obj: dict[str, Any] = {"command": name, "args": args}
    if draw(st.booleans()):
        obj["endpoint"] = "echo"
    return text_case(obj, "unknown-command")


@st.composite
def auth_frames(draw: Any, ctx: Context) -> Case:
    key = draw(
        st.one_of(
            st.just(ctx.token),
            st.sampled_from(
                [
                    None,
                    "",
                    "Token",
                    "Token ",
                    "Token  ",
                    "token " + ctx.token_key,
                    "Bearer " + ctx.token_key,
                    ctx.token_key,
                    " " + ctx.token + " ",
                    "Token  " + ctx.token_key,
                    "Token\t" + ctx.token_key,
                    ctx.token + "x",
                    ctx.token[:-1],
                    "Token " + ctx.token_key + " extra",
                    "Token " + "0" * 40,
                    "Token \x00",
                    "Token \ud800",
                    "Token " + "a" * 257,
                    "Token " + "'; DROP TABLE authtoken_token; --",
                ]
            ),
            texts.map(lambda s: "Token " + s),
            json_values,
        )
    )
    args: Any = (
        {"key": key}
        if draw(st.integers(0, 5))
        else draw(st.sampled_from([{}, {"token": ctx.token}]))
    )
    return text_case({"command": "auth", "args": args}, "auth")


@st.composite
def unicode_frames(draw: Any, ctx: Context) -> Case:
    """A valid frame with an edge-case string in one of its string places."""
    obj = _fresh(draw, valid_frames(ctx))
    strings = [p for p in _paths(obj) if isinstance(_get(obj, p), str)]
    value = draw(
        st.one_of(
            st.sampled_from(EDGE_STRINGS),
            st.text(
                st.characters(categories=["Cc", "Cf", "Co", "Zl", "Zp", "Mn"]),
                min_size=1,
                max_size=8,
            ),
        )
    )
    if strings:
        path = draw(st.sampled_from(strings))
        _get(obj, path[:-1])[path[-1]] = value
    return text_case(obj, "unicode", ascii_only=draw(st.booleans()))


@st.composite
def number_frames(draw: Any, ctx: Context) -> Case:
    """A valid frame with a huge or odd number in one of its places."""
    obj = _fresh(draw, valid_frames(ctx))
    places = _paths(obj)
    number = draw(st.one_of(huge_numbers, ints, floats))
    if places:
        path = draw(st.sampled_from(places))
        _get(obj, path[:-1])[path[-1]] = number
    elif isinstance(obj, dict):
        obj["n"] = number
    return text_case(obj, "huge-number")


@st.composite
def json_frames(draw: Any) -> Case:
    value = draw(st.one_of(json_values, st.dictionaries(keys, json_values, max_size=6)))
    return text_case(value, "json-value", compact=draw(st.booleans()))


#: Frame families with their weights (hypothesis leans to the first ones of a list).
FAMILIES = [
    *["mutation"] * 4,
    *["unicode", "huge-number", "deep", "sized", "wrong-type", "valid", "auth"] * 2,
    "text-mutation",
    "many-values",
    "garbage",
    "binary",
    "json-value",
    "long-names",
    "unknown-command",
]


@st.composite
def cases(draw: Any, ctx: Context) -> Case:
    family = draw(st.sampled_from(FAMILIES))
    if family == "mutation":
        case = text_case(draw(mutated(_fresh(draw, valid_frames(ctx)))), "mutation")
    elif family == "text-mutation":
        case = Case("text", draw(text_mutated(to_json(draw(valid_frames(ctx))))), "text-mutation")
    elif family == "valid":
        case = text_case(draw(valid_frames(ctx)), "valid", compact=draw(st.booleans()))
    elif family == "wrong-type":
        obj = _fresh(draw, valid_frames(ctx))
        paths = _paths(obj)
        if paths:
            path = draw(st.sampled_from(paths))
            parent = _get(obj, path[:-1])
            parent[path[-1]] = _other_type(draw, parent[path[-1]])
        case = text_case(obj, "wrong-type")
    elif family == "unicode":
        case = draw(unicode_frames(ctx))
    elif family == "huge-number":
        case = draw(number_frames(ctx))
    elif family == "garbage":
        case = draw(garbage())
    elif family == "binary":
        case = draw(binary_frames(ctx))
    elif family == "json-value":
        case = draw(json_frames())
    elif family == "deep":
        case = draw(deep_frames())
    elif family == "many-values":
        case = draw(many_values())
    elif family == "sized":
        case = draw(sized_frames())
    elif family == "long-names":
        case = draw(long_names(ctx))
    elif family == "unknown-command":
        case = draw(unknown_commands())
    else:
        case = draw(auth_frames(ctx))
    return case


def sendable(case: Case) -> bool:
    """Frames the property tests send: below the server's own limit, to modelled endpoints."""
    if case.size >= SERVER_MAX_BYTES:
        return False
    if case.kind == "text":
        try:
            case.payload.encode("utf-8")
        except UnicodeEncodeError:  # a raw lone surrogate: not sendable in a text frame
            return False
        parsed = parse_frame(case.payload)
        name = _field(parsed.obj, "endpoint")
        if isinstance(name, str) and name in UNMODELLED and "command" not in parsed.obj:
            return False
    return True


# -- bursts: the flood rule ------------------------------------------------------------------------

#: Frames that get malformed_frame whatever the state (and carry no id).
MALFORMED_POOL = [
    Case("text", "x", "burst"),
    Case("text", "", "burst"),
    Case("text", "[]", "burst"),
    Case("text", "null", "burst"),
    Case("text", "{}", "burst"),
    Case("text", '{"command": 1}', "burst"),
    Case("text", '{"endpoint": "echo"}', "burst"),
    Case("text", "[" * 40 + "]" * 40, "burst"),
    Case("text", '{"endpoint":"echo",', "burst"),
    Case("binary", b"\x00\x01", "burst"),
]


@dataclass(frozen=True)
class BurstItem:
    kind: str  # malformed | ping | pong | echo | unknown_command | unknown_endpoint
    case: Case


UNKNOWN_COMMAND = Case("text", '{"command":"dance","args":{}}', "burst")
UNKNOWN_ENDPOINT = Case("text", to_json(data_frame("nowhere", "Echo", {"text": "x"})), "burst")


def burst_expectation(items: list[BurstItem]) -> tuple[list[str], list[str]]:
    """(the immediate answers in order, the echo texts in order) if nothing is closed."""
    immediate: list[str] = []
    echoes: list[str] = []
    for item in items:
        if item.kind == "malformed":
            immediate.append("malformed_frame")
        elif item.kind == "ping":
            immediate.append("pong")
        elif item.kind in ("unknown_command", "unknown_endpoint"):
            immediate.append(item.kind)
        elif item.kind == "echo":
            echoes.append(json.loads(item.case.payload)["object"]["data"]["text"])
    return immediate, echoes


def judge_burst(
    items: list[BurstItem],
    immediate: list[str],
    echoes: list[str],
    closed: int | None,
    seconds: float,
) -> list[str]:
    """What docs/protocol.md's *Flooding* rule does not allow in a burst's answers.

    On a fresh socket: "after FLOOD_CLOSE_AFTER refused frames (over the rate limit,
    malformed_frame, unknown_command, ...) within FLOOD_WINDOW, the socket is closed with
    4008, however many good frames came in between" (a bucket that refills over the
    window). So the close comes with the answer to the FLOOD_CLOSE_AFTER-th refusal at
    the earliest, and at the latest when refusals outrun what refilled during the burst.
    Whether unknown_endpoint counts is left open ("..."): both readings are accepted.
    """
    wanted_immediate, wanted_echoes = burst_expectation(items)
    refill = FLOOD_CLOSE_AFTER / FLOOD_WINDOW * seconds + 2
    problems = []
    # Open: every answer and the final ping's pong. Closed: the answers up to the close.
    wanted = [*wanted_immediate, "pong"] if closed is None else wanted_immediate[: len(immediate)]
    if immediate != wanted:
        first = next(
            (
                i
                for i, (a, b) in enumerate(
                    zip([*immediate, "<end>"], [*wanted, "<end>"], strict=False)
                )
                if a != b
            ),
            0,
        )
        got = [*immediate, "<end>"][first]
        problems.append(
            f"immediate answer #{first} is {got!r}, expected {[*wanted, '<end>'][first]!r}"
        )
    if echoes != wanted_echoes[: len(echoes)] or (closed is None and echoes != wanted_echoes):
        problems.append(f"echoes {echoes[:3]}... (of {len(echoes)}) are not {wanted_echoes[:3]}...")
    certain = sum(code in CERTAIN_REFUSALS for code in wanted_immediate[: len(immediate)])
    every = sum(code in EDGE_REFUSALS for code in wanted_immediate[: len(immediate)])
    if closed is None:
        total = sum(code in CERTAIN_REFUSALS for code in wanted_immediate)
        if total >= FLOOD_CLOSE_AFTER + refill:
            problems.append(f"not closed after {total} refusals in {seconds:.2f} s")
    elif closed != 4008:
        problems.append(f"closed with {closed}")
    else:
        last = wanted_immediate[len(immediate) - 1] if immediate else None
        by_certain = (
            last in CERTAIN_REFUSALS and FLOOD_CLOSE_AFTER <= certain <= FLOOD_CLOSE_AFTER + refill
        )
        by_every = (
            last in EDGE_REFUSALS and FLOOD_CLOSE_AFTER <= every <= FLOOD_CLOSE_AFTER + refill
        )
        if not (by_certain or by_every):
            problems.append(
                f"closed with 4008 after answering {len(immediate)} frames ({certain} certain "
                f"refusals, {every} counting unknown_endpoint, last {last!r}) in {seconds:.2f} s"
            )
    return problems


REFUSAL_KINDS = ("malformed", "unknown_command", "unknown_endpoint")


@st.composite
def bursts(draw: Any) -> list[BurstItem]:
    """Runs of refused frames with good frames between them (at most ~800 frames)."""
    items: list[BurstItem] = []
    serial = 0
    kinds = [*REFUSAL_KINDS, "malformed", "ping", "pong", "echo"]
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(kinds))
        if kind in REFUSAL_KINDS:
            count = draw(
                st.one_of(
                    st.integers(1, 20),
                    st.sampled_from(
                        [FLOOD_CLOSE_AFTER - 1, FLOOD_CLOSE_AFTER, FLOOD_CLOSE_AFTER + 1]
                    ),
                    st.integers(FLOOD_CLOSE_AFTER // 2, FLOOD_CLOSE_AFTER + 60),
                )
            )
            for _ in range(count):
                if kind == "malformed":
                    case = draw(st.sampled_from(MALFORMED_POOL))
                else:
                    case = UNKNOWN_COMMAND if kind == "unknown_command" else UNKNOWN_ENDPOINT
                items.append(BurstItem(kind, case))
            continue
        for _ in range(draw(st.integers(1, 4))):
            if kind == "ping":
                items.append(BurstItem("ping", Case("text", '{"command":"ping"}', "burst")))
            elif kind == "pong":
                items.append(
                    BurstItem("pong", Case("text", '{"command":"pong","args":{}}', "burst"))
                )
            else:
                serial += 1
                text = json.dumps(data_frame("echo", "Echo", {"text": f"burst {serial}"}))
                items.append(BurstItem("echo", Case("text", text, "burst")))
    return items[:800]


# -- the client side -------------------------------------------------------------------------------


CASE_TIMEOUT = 20.0  # a failure guard: a case that has its answer never waits for it


def close_code(exc: ConnectionClosed) -> int:
    return exc.rcvd.code if exc.rcvd is not None else 1006


@dataclass
class Outcome:
    frames: list[Any]
    raw: list[str]
    closed: int | None
    barrier: Any = None
    pong: bool = False
    timed_out: bool = False


class FuzzSocket:
    """The fuzzing user's socket; reconnects after a close."""

    def __init__(self, url: str, state: State) -> None:
        self.url, self.state = url, state
        self.ws: Any = None
        self.serial = 0
        self.reconnects: Counter = Counter()  # why the socket was opened again
        self.spent = Counter()  # what this connection took from the documented buckets

    async def open(self, identity: int | None) -> None:
        await self.close()
        headers = {"Authorization": self.state.token} if identity is not None else None
        self.ws = await websockets.connect(
            self.url,
            additional_headers=headers,
            proxy=None,
            open_timeout=CASE_TIMEOUT,
            max_size=2**23,
            ping_interval=None,
            compression=None,
        )
        self.spent = Counter()
        self.state.user_id = identity
        expected = [Data("whoami", "WhoAmI", {"user_id": identity, "endpoint": "whoami"})]
        if identity is not None:
            expected.append(Data("private", "WhoAmI", {"user_id": identity, "endpoint": "private"}))
        async with asyncio.timeout(CASE_TIMEOUT):
            while expected:
                frame = json.loads(await self.ws.recv())
                hit = next((m for m in expected if m.matches(frame)), None)
                if hit is None:
                    raise AssertionError(f"unexpected frame on connect: {_short(frame)}")
                expected.remove(hit)

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
            self.ws = None

    def within_budget(self, case: Case, refusals: int = 1) -> bool:
        """Whether the connection's buckets (rate, byte rate, flooding) surely hold ``case``
        and the barrier and ping after it, without counting what refilled since."""
        spent = self.spent
        return (
            spent["frames"] + 3 <= RATE_LIMIT_BURST - 50
            and spent["bytes"] + case.size + 1024 <= RATE_LIMIT_BYTES_BURST - 64 * 1024
            and spent["refusals"] + refusals <= FLOOD_CLOSE_AFTER - 20
        )

    def spend(self, case: Case, refusals: int) -> None:
        self.spent["frames"] += 3
        self.spent["bytes"] += case.size + 512
        self.spent["refusals"] += refusals

    async def ensure(self, identity: int | None, case: Case | None = None) -> None:
        """The socket is open, belongs to ``identity`` (re-authenticating if needed) and
        can take ``case`` without hitting a rate limit (reconnecting if needed)."""
        if self.ws is None or self.ws.close_code is not None:
            reason = "closed"
        elif case is not None and not self.within_budget(case):
            reason = "budget"
        else:
            reason = None
        if reason is not None:
            self.reconnects[reason] += 1
            await self.open(identity)
            return
        if self.state.user_id == identity:
            return
        key = self.state.token if identity is not None else "Token not-a-key"
        case = Case("text", to_json({"command": "auth", "args": {"key": key}}), "identity")
        expect = oracle(case, self.state)
        outcome = await self.exchange(case, expect)
        alt = expect.matching(outcome.frames, outcome.closed)
        if alt is None or not outcome.pong:
            raise AssertionError(f"could not switch identity: {outcome}")
        self.state.user_id = identity

    async def _send(self, case: Case) -> None:
        if case.kind == "binary":
            await self.ws.send(case.payload)
        elif case.kind == "raw-text":
            await self.ws.send(case.payload, text=True)
        else:
            await self.ws.send(case.payload)

    async def exchange(self, case: Case, expect: Expect) -> Outcome:
        """Send ``case``, then a barrier frame on the lane that handles it and a ping;
        collect what comes back until both are answered and an allowed outcome is complete
        (or the socket closed). No synchronisation by time: only frames end the wait, and
        ``CASE_TIMEOUT`` is a failure guard."""
        self.serial += 1
        barrier_id = f"fuzz-barrier-{self.serial}"
        lane = expect.lane or "echo"
        barrier = to_json(data_frame(lane, "FuzzBarrier", {}, barrier_id))
        self.spend(case, 1 if expect.may_refuse else 0)
        outcome = Outcome([], [], None)
        # When every documented answer closes the socket, nothing follows the frame: a
        # frame sent into a closing socket may reset it before its close frame is read.
        controls = not all(alt.close is not None for alt in expect.alts)
        try:
            await self._send(case)
            if controls:
                await self.ws.send(barrier)
                await self.ws.send('{"command":"ping","args":{}}')
        except ConnectionClosed:
            pass
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CASE_TIMEOUT
        while True:
            if outcome.barrier is not None and outcome.pong:
                rest = _without_one_pong(outcome.frames)
                if expect.matching(rest, None) is not None or not any(
                    alt.could_complete(rest) for alt in expect.alts
                ):
                    outcome.frames = rest
                    return outcome
            try:
                async with asyncio.timeout(max(0.0, deadline - loop.time())):
                    raw = await self.ws.recv()
            except ConnectionClosed as exc:
                outcome.closed = close_code(exc)
                if outcome.pong or outcome.barrier is not None:
                    # Answered before the close: the control frames are not the case's.
                    outcome.frames = (
                        _without_one_pong(outcome.frames) if outcome.pong else outcome.frames
                    )
                return outcome
            except TimeoutError:
                outcome.timed_out = True
                if outcome.pong:
                    outcome.frames = _without_one_pong(outcome.frames)
                return outcome
            if isinstance(raw, bytes):
                outcome.raw.append(repr(raw))
                outcome.frames.append({"<binary frame>": raw[:100].hex()})
                continue
            outcome.raw.append(raw)
            try:
                frame = json.loads(raw)
            except ValueError:
                frame = {"<not JSON>": raw[:200]}
            if _field(_field(frame, "args"), "id") == barrier_id:
                outcome.barrier = frame
                continue
            outcome.frames.append(frame)
            if PONG.matches(frame):
                outcome.pong = True


def _without_one_pong(frames: list[Any]) -> list[Any]:
    for i in range(len(frames) - 1, -1, -1):
        if PONG.matches(frames[i]):
            return frames[:i] + frames[i + 1 :]
    return frames


BARRIER_CODES = frozenset({"unknown_class", "not_authenticated", "forbidden", "internal_error"})


# -- two real users chatting -----------------------------------------------------------------------


@dataclass
class ChatUser:
    name: str
    user_id: int
    token: str
    ws: Any = None
    inbox: asyncio.Queue = field(default_factory=asyncio.Queue)
    reader: asyncio.Task | None = None


class Chatters:
    """alice and bob chat on the server for the whole run; every message must arrive.

    The chat allows 20 messages per connection in 10 s: one message every ``cadence``
    seconds, alternating senders, keeps each socket at a third of that.
    """

    cadence = 0.75

    def __init__(self, url: str, alice: ChatUser, bob: ChatUser) -> None:
        self.url = url
        self.users = (alice, bob)
        self.sent = 0
        self.delivered = 0
        self.problems: list[str] = []
        self.latencies: list[float] = []
        self.progress = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        for user in self.users:
            user.ws = await websockets.connect(
                self.url,
                additional_headers={"Authorization": user.token},
                proxy=None,
                open_timeout=CASE_TIMEOUT,
                ping_interval=None,
            )
            user.reader = asyncio.create_task(self._read(user))
        self._task = asyncio.create_task(self._chat())

    async def _read(self, user: ChatUser) -> None:
        ids = {u.user_id for u in self.users}
        try:
            async for raw in user.ws:
                frame = json.loads(raw)
                if _field(frame, "command") == "error":
                    self.problems.append(f"{user.name} got an error: {_short(frame)}")
                    continue
                obj = _field(frame, "object")
                if frame.get("endpoint") != "chat" or _field(obj, "className") != "ChatMessage":
                    continue  # whoami/private on connect; example_chat's copies
                data = obj["data"]
                if data.get("sender_id") in ids:  # not the fuzzer's messages
                    await user.inbox.put(data)
        except ConnectionClosed as exc:
            if not self._stop.is_set():
                self.problems.append(f"{user.name}'s socket closed: {close_code(exc)}")

    async def _expect(self, user: ChatUser, sender: ChatUser, text: str) -> bool:
        try:
            async with asyncio.timeout(CASE_TIMEOUT):
                data = await user.inbox.get()
        except TimeoutError:
            self.problems.append(f"{user.name} never got {text!r}")
            return False
        if (data.get("sender_id"), data.get("text")) != (sender.user_id, text):
            self.problems.append(f"{user.name} expected {text!r}, got {_short(data)}")
            return False
        return True

    async def _chat(self) -> None:
        alice, bob = self.users
        n = 0
        while not self._stop.is_set():
            sender, recipient = (alice, bob) if n % 2 == 0 else (bob, alice)
            text = f"chat {n}: {sender.name} \u2192 {recipient.name} \u00e9\U0001f600"
            frame = data_frame(
                "chat", "ChatMessage", {"recipient_id": recipient.user_id, "text": text}
            )
            started = time.monotonic()
            await sender.ws.send(to_json(frame))
            self.sent += 1
            got = await self._expect(recipient, sender, text)
            acked = await self._expect(sender, sender, text)
            if got and acked:
                self.delivered += 1
                self.latencies.append(time.monotonic() - started)
                self.progress.set()
            n += 1
            try:
                async with asyncio.timeout(self.cadence):
                    await self._stop.wait()
            except TimeoutError:
                pass

    async def wait_for(self, delivered: int, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while self.delivered < delivered and not self.problems:
                self.progress.clear()
                await self.progress.wait()

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            try:
                async with asyncio.timeout(CASE_TIMEOUT * 2 + self.cadence):
                    await self._task
            except TimeoutError:
                self._task.cancel()
        for user in self.users:
            if user.ws is not None:
                await user.ws.close()
            if user.reader is not None:
                try:
                    async with asyncio.timeout(5):
                        await user.reader
                except TimeoutError:
                    user.reader.cancel()


# -- the server's log ------------------------------------------------------------------------------

_RECORD_START = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[,.]\d+ "  # Django's and daphne's records
    r"|(INFO|WARNING|ERROR|CRITICAL|DEBUG):"  # uvicorn's
    r"|\d+\.\d+\.\d+\.\d+:\d+ - )"  # daphne's access log
)
_ERROR_RECORD = re.compile(r"^(\S+ \S+ (ERROR|CRITICAL)\b|(ERROR|CRITICAL):)")
#: Errors the e2e app logs on purpose (tests/e2e_app/endpoints.py).
ON_PURPOSE = ("broken on purpose",)


class LogTap:
    """Every line the server prints (tests/support/servers.py keeps only the last 2000)."""

    def __init__(self, server: Any) -> None:
        self.lines: list[str] = []
        output = server.output
        tap = self

        class _Tapped(type(output.lines)):  # type: ignore[misc]
            def append(self, line: str) -> None:
                super().append(line)
                tap.lines.append(line)

        with output._cond:
            tapped = _Tapped(output.lines, maxlen=output.lines.maxlen)
            self.lines.extend(output.lines)
            output.lines = tapped
        self.checked = 0
        self.explained: Counter = Counter()

    def records(self, start: int = 0, end: int | None = None) -> list[list[str]]:
        records: list[list[str]] = []
        for line in self.lines[start:end]:
            if _RECORD_START.match(line) or not records:
                records.append([line])
            else:
                records[-1].append(line)
        return records

    def new_errors(self) -> list[str]:
        """:meth:`unexpected_errors` among the records printed since the last call (but the
        last one, which may still be being printed)."""
        end = len(self.lines)
        last = next(
            (i for i in range(end - 1, self.checked, -1) if _RECORD_START.match(self.lines[i])),
            None,
        )
        if last is None:
            return []
        bad, explained = self.unexpected_errors(KNOWN_BUGS, self.checked, last)
        self.checked = last
        self.explained += explained
        return bad

    def unexpected_errors(
        self, tolerated: Iterable[str] = (), start: int = 0, end: int | None = None
    ) -> tuple[list[str], Counter]:
        """ERROR records the run did not cause on purpose; and those a known bug explains."""
        signatures = {sig: name for name in tolerated for sig in KNOWN_BUGS[name].log_signatures}
        bad: list[str] = []
        explained: Counter = Counter()
        for record in self.records(start, end):
            if not _ERROR_RECORD.match(record[0]):
                continue
            text = "\n".join(record)
            if any(mark in text for mark in ON_PURPOSE):
                continue
            bug = next((name for sig, name in signatures.items() if sig in text), None)
            if bug is not None:
                explained[bug] += 1
                continue
            bad.append(text[:3000])
        return bad, explained


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


# -- the driver: an event loop in a thread ---------------------------------------------------------


class Driver:
    """Runs coroutines on a private event loop, so synchronous tests can drive sockets
    while the chatters' tasks keep running between them."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="fuzz-driver", daemon=True
        )
        self.thread.start()

    def run(self, coro: Any, timeout: float = 300) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        async def _cancel_rest() -> None:
            current = asyncio.current_task()
            rest = [t for t in asyncio.all_tasks() if t is not current]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        try:
            self.run(_cancel_rest(), timeout=30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(30)
            self.loop.close()
