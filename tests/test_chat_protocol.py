"""chat.protocol (shared with Python clients) and the shared, sliding-window rate limit."""

import asyncio
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from chat.protocol import MAX_TEXT_LENGTH, ChatMessage, clean_text
from chat.ratelimit import SharedRateLimit
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
        self.now = 1000.0  # the start of a 10 s window

    def __call__(self):
        return self.now


@pytest.fixture
def limit_of(settings):
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "rate": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "rate"},
    }

    def make(limit, period):
        clock = FakeClock()
        return SharedRateLimit(limit, period, cache="rate", clock=clock), clock

    yield make
    from django.core.cache import caches

    caches["rate"].clear()


async def test_shared_rate_limit(limit_of):
    limit, clock = limit_of(3, 10.0)
    assert [await limit.allow("u1") for _ in range(4)] == [True, True, True, False]
    assert await limit.allow("u2")  # keys are counted apart
    assert await limit.retry_after("u1") == 10.0
    clock.now += 5
    assert not await limit.allow("u1")  # refused events do not count
    clock.now += 5  # a new window; the previous one still weighs fully at its start
    assert not await limit.allow("u1")
    clock.now += 5  # halfway: the previous window's 3 weigh 1.5
    assert await limit.allow("u1")
    assert not await limit.allow("u1")


async def test_shared_rate_limit_slides(limit_of):
    limit, clock = limit_of(2, 10.0)
    assert await limit.allow("u")
    clock.now += 6
    assert await limit.allow("u")
    assert not await limit.allow("u")
    clock.now += 6  # 12 s after the first, in the next window: 2 * 0.8 weigh 1.6
    assert not await limit.allow("u")
    clock.now += 4  # 2 * 0.4 = 0.8: one slot free
    assert await limit.allow("u")
    assert not await limit.allow("u")


async def test_shared_rate_limit_counts_concurrent_events_exactly(limit_of):
    """Ten sockets of one user send at once: Django's ``aincr`` (a get, then a set) lost
    increments, and 30 events were counted as 21 (found while checking a PostgreSQL chat
    burst). Counted with the cache's atomic ``add``/``incr``, exactly the limit passes."""
    limit, _ = limit_of(20, 10.0)
    allowed = await asyncio.gather(*(limit.allow("u") for _ in range(30)))
    assert allowed.count(True) == 20


def test_shared_rate_limit_refuses_nonsense():
    with pytest.raises(ValueError):
        SharedRateLimit(0, 10)
    with pytest.raises(ValueError):
        SharedRateLimit(1, 0)
