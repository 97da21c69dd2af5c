"""chat.protocol (shared with Python clients) and the sliding-window rate limit."""

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from chat.protocol import MAX_TEXT_LENGTH, ChatMessage, clean_text
from chat.ratelimit import SlidingWindowLimit
from streaming.exceptions import InvalidMessage
from streaming.serialization import decode_object, encode_object

ROOT = Path(__file__).resolve().parents[1]


def test_protocol_imports_without_django():
    """A Python client has chat.protocol without Django installed."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('django', 'channels', 'rest_framework'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from chat.protocol import ChatMessage\n"
        "print(ChatMessage(recipient_id=2, text='hi').model_dump_json())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "recipient_id": 2,
        "text": "hi",
        "id": None,
        "sender_id": None,
        "sent_at": None,
    }


def test_wire_form_both_ways():
    request = decode_object("ChatMessage", {"recipient_id": 2, "text": "hi"})
    assert request == ChatMessage(recipient_id=2, text="hi") and not request.stored
    stored = ChatMessage(
        id=7,
        sender_id=1,
        recipient_id=2,
        text="hi",
        sent_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    )
    assert stored.stored
    assert json.loads(encode_object(stored)) == {
        "className": "ChatMessage",
        "data": {
            "recipient_id": 2,
            "text": "hi",
            "id": 7,
            "sender_id": 1,
            "sent_at": "2026-01-02T03:04:05Z",
        },
    }
    with pytest.raises(InvalidMessage) as caught:
        decode_object("ChatMessage", {"recipient_id": "2", "text": "hi"})  # strict: no "2"
    assert [e["path"] for e in caught.value.errors] == ["recipient_id"]


def test_clean_text():
    assert clean_text("  hello \n") == "hello"
    assert clean_text(" \t\n") is None
    assert clean_text("x" * MAX_TEXT_LENGTH) == "x" * MAX_TEXT_LENGTH
    assert clean_text("x" * (MAX_TEXT_LENGTH + 1)) is None


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_sliding_window_limit():
    clock = FakeClock()
    limit = SlidingWindowLimit(3, 10.0, clock=clock)
    assert [limit.allow() for _ in range(4)] == [True, True, True, False]
    assert limit.retry_after() == 10.0
    clock.now += 5
    assert not limit.allow()  # refused events do not count, but the window has not moved
    clock.now += 5  # the first three leave the window together
    assert limit.retry_after() == 0.0
    assert [limit.allow() for _ in range(4)] == [True, True, True, False]


def test_sliding_window_is_sliding_not_fixed():
    clock = FakeClock()
    limit = SlidingWindowLimit(2, 10.0, clock=clock)
    assert limit.allow()
    clock.now += 6
    assert limit.allow()
    clock.now += 6  # 12 s after the first, 6 s after the second: one slot free
    assert limit.allow()
    assert not limit.allow()


def test_sliding_window_refuses_nonsense():
    with pytest.raises(ValueError):
        SlidingWindowLimit(0, 10)
    with pytest.raises(ValueError):
        SlidingWindowLimit(1, 0)
