"""``tune_gc`` and the session middleware that leaves ``send`` alone."""

from __future__ import annotations

import subprocess
import sys

import pytest

from streaming.auth import StreamingSessionMiddleware
from streaming.tuning import tune_gc
from tests.support.servers import ROOT


def test_tune_gc_sets_thresholds_and_freezes_start_up_objects():
    code = (
        "import gc\n"
        "from streaming.tuning import tune_gc\n"
        "before = gc.get_threshold()\n"
        "assert tune_gc() == before\n"
        "assert gc.get_threshold() == (10_000, 1, 1), gc.get_threshold()\n"
        "assert gc.get_freeze_count() > 1000, gc.get_freeze_count()\n"
        "tune_gc(10_000, (5, 5), freeze=False)\n"
        "assert gc.get_threshold() == (10_000, 5, 5)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("gen0, older", [(0, (20, 20)), (700, (0, 10))])
def test_tune_gc_refuses_to_disable_collection(gen0, older):
    with pytest.raises(ValueError, match="positive"):
        tune_gc(gen0, older, freeze=False)


async def test_session_middleware_resolves_the_session_and_passes_send_through(db):
    seen = {}

    async def inner(scope, receive, send):
        seen["send"] = send
        seen["session_key"] = scope["session"].session_key

    async def send(message):  # the server's send
        pass

    app = StreamingSessionMiddleware(inner)
    scope = {"type": "websocket", "headers": [], "cookies": {"sessionid": "abc"}}
    await app(scope, None, send)
    assert seen["send"] is send  # not wrapped: daphne's flow control can find its transport
    assert seen["session_key"] is None  # an unknown key loads as an empty session
