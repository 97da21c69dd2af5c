"""The wire format and the message classes import no Django and no channels.

A fresh interpreter refuses to import ``django`` and ``channels`` at all (a meta-path
finder raising ImportError), then imports and uses ``streaming.protocol`` and
``streaming.serialization``: what the Python client does.
"""

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BLOCKER = """
import sys

BLOCKED = ("django", "channels", "daphne", "asgiref", "rest_framework")


class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked: this module must not need it")
        return None


sys.meta_path.insert(0, Blocker())
for name in list(sys.modules):
    if name.split(".")[0] in BLOCKED:
        del sys.modules[name]

try:
    import django  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("the blocker does not work")
"""


def run(code):
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(BLOCKER) + textwrap.dedent(code)],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_protocol_and_serialization_import_and_work_without_django():
    result = run(
        """
        from datetime import datetime, timezone

        from streaming import protocol, serialization
        from streaming.exceptions import InvalidMessage, MalformedFrame

        class Note(serialization.SerializableEntity):
            text: str
            at: datetime

        note = Note(text="hi", at=datetime(2026, 1, 1, tzinfo=timezone.utc))
        text = protocol.encode_data("echo", serialization.encode_object(note), "1")
        frame = protocol.decode_frame(text)
        assert frame == protocol.DataFrame("echo", "Note", frame.data, "1"), frame
        assert frame.data["at"] == "2026-01-01T00:00:00Z", frame.data
        decoded = serialization.decode_object(frame.class_name, frame.data)
        assert type(decoded) is Note and decoded.model_dump() == note.model_dump(), decoded
        assert protocol.decode_frame(protocol.encode_command("ping")).command == "ping"
        for bad in ("not json", "[" * 60000, "[]"):
            try:
                protocol.decode_frame(bad)
            except MalformedFrame:
                pass
            else:
                raise AssertionError(bad)
        try:
            serialization.decode_object("Note", {"text": 5, "at": "2026-01-01T00:00:00Z"})
        except InvalidMessage as exc:
            assert exc.errors[0]["path"] == "text"
        else:
            raise AssertionError("strict validation")

        import sys
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("django", "channels"))
        assert not loaded, loaded
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_the_blocker_catches_a_django_import():
    """The check above is real: a module that needs Django fails under the same blocker."""
    result = run("import streaming.conf\n")
    assert result.returncode != 0
    assert "django is blocked" in result.stderr


def test_the_uvicorn_protocol_imports_without_django():
    """``--ws streaming.uvicorn_ws:WebSocketProtocol`` loads in uvicorn's process before any
    app: it and its fair-turn clock (streaming.fairness) need no Django."""
    result = run(
        """
        from streaming import fairness, uvicorn_ws

        assert uvicorn_ws.FAIR_SLICE is fairness.FAIR_SLICE
        import sys
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("django", "channels"))
        assert not loaded, loaded
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
