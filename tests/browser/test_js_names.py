"""The same names in both clients (docs/clients.md, "The same names in both clients"):
every name of the table exists on its side, and the JS aliases are the same objects as
the names they stand for (old names keep working)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs" / "clients.md"
SECTION = "## The same names in both clients"
#: A name in a cell: `Client`, `client.sign_in(...)`, `new Client(...)`, `streaming.x.y`.
NAME = re.compile(r"^(?:new )?([A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*)(?:\(.*\))?$")


def table_rows() -> list[tuple[str, str, str]]:
    text = DOCS.read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + 1)
    rows = []
    for line in text[start : end if end > 0 else None].splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and (line.startswith("| `") or line.startswith("| —")):
            rows.append((cells[0], cells[1], cells[2]))
    return rows


def names(cell: str) -> list[str]:
    """The dotted names of a cell's `code` spans (other spans, like `"waitingToRetry"`,
    `raw=True` or `{className, data}`, are values, not names)."""
    found = []
    for span in re.findall(r"`([^`]+)`", cell):
        match = NAME.match(span)
        if match:
            found.append(match.group(1))
    return found


def test_the_table_is_there_and_covers_what_the_issue_names():
    rows = table_rows()
    assert len(rows) >= 40
    both = " ".join(python + " " + js for python, js, _ in rows)
    for name in (
        "ConnectionFailed",
        "ConnectionClosed",
        "waiting_to_retry",
        "waitingToRetry",
        "StreamingConnectionHandler",
        "handler.dispose()",
        "client.signIn",
        "client.sign_in",
        "client.authenticate",
        "DisconnectReason",
        "StreamingConnectionHandlerState",
    ):
        assert name in both, name


async def test_every_python_name_of_the_table_exists():
    from streaming.client import Client, StreamingConnectionHandler

    client = Client("http://127.0.0.1:9/")
    roots: dict[str, Any] = {
        "client": client,
        "ref": client.endpoint("chat"),
        "handler": StreamingConnectionHandler(client),
    }
    client_module = importlib.import_module("streaming.client")
    checked = 0
    for python, _, _ in table_rows():
        for name in names(python):
            first, *rest = name.split(".")
            if first == "streaming":
                module = importlib.import_module(".".join([first, *rest[:-1]]))
                assert hasattr(module, rest[-1]), name
            else:
                obj = roots.get(first, None)
                if obj is None:
                    assert hasattr(client_module, first), name
                    obj = getattr(client_module, first)
                for part in rest:
                    # Client.__getattr__ makes any name an endpoint: look at the real ones.
                    assert part in dir(obj) or part in vars(type(obj)), name
                    obj = getattr(obj, part)
            checked += 1
    await client.close()
    assert checked >= 50


@pytest.fixture
async def module_page(server, open_page):
    page = await open_page(server.http_url)
    await page.evaluate("window.start()")
    await page.wait_for_function("window.openResult === 'connected'")
    return page


async def test_every_js_name_of_the_table_exists(module_page):
    js_names = sorted({name for _, js, _ in table_rows() for name in names(js)})
    missing = await module_page.evaluate(
        """(names) => {
            const sp = window.streampod;
            const client = window.client;
            const roots = {
              client, ref: client.endpoint("chat"),
              handler: new sp.StreamingConnectionHandler(client),
            };
            const missing = [];
            for (const name of names) {
              const [first, ...rest] = name.split(".");
              let obj = first in roots ? roots[first] : sp[first];
              if (obj === undefined) { missing.push(name); continue; }
              for (const part of rest) {
                if (obj === null || obj === undefined || !(part in Object(obj))) {
                  missing.push(name);
                  break;
                }
                obj = obj[part];
              }
            }
            return missing;
        }""",
        js_names,
    )
    assert len(js_names) >= 50
    assert missing == []


async def test_js_aliases_are_the_same_objects_and_old_names_still_work(module_page):
    result = await module_page.evaluate(
        """() => {
            const sp = window.streampod;
            const client = window.client;
            const overflow = new sp.StreamOverflow("chat", 3);
            const probe = class Probe {};
            const before = [client.streamingConnectionStatus, client.isConnected,
                            client.disconnectReason, client.websocketUrl === client.url];
            client.closeStreamingConnection();
            const reason = client.disconnectReason;
            return {
              same: [sp.ConnectionFailed === sp.ConnectionClosed,
                     sp.ClientError === sp.StreampodError,
                     sp.Client.registerClass("AliasProbe", probe) === probe &&
                       sp.getClass("AliasProbe") === probe],
              names: [new sp.ConnectionFailed("lost", 1006).name,
                      new sp.ConnectionFailed("lost").code,
                      new sp.MalformedFrame("x") instanceof sp.UndecodableMessage,
                      new sp.MalformedFrame("x").code],
              overflow: [overflow.stream, overflow.endpoint, new sp.StreamOverflow(null, 1).stream],
              statuses: Object.values(sp.StreamingConnectionStatus),
              before,
              after: [client.streamingConnectionStatus, client.isConnected,
                      reason instanceof sp.DisconnectReason, reason.code, reason.reason,
                      reason.byClient, reason.isAuthFailure, reason.message, reason.httpStatus],
              authUrl: client.authUrl,
              handler: ["connect", "dispose", "start", "close", "waitClosed", "delayFor"].map(
                (name) => typeof sp.StreamingConnectionHandler.prototype[name]),
            };
        }"""
    )
    assert result["same"] == [True, True, True]
    assert result["names"] == ["ConnectionClosed", "connection_failed", True, "malformed_frame"]
    assert result["overflow"] == ["chat", "chat", "errors"]
    assert result["statuses"] == ["connecting", "connected", "waitingToRetry", "disconnected"]
    assert result["before"] == ["connected", True, None, True]
    assert result["after"] == [
        "disconnected",
        False,
        True,
        1000,
        "closed",
        True,
        False,
        "closed by the client",
        None,
    ]
    assert result["authUrl"].endswith("/api/auth/token/")
    assert result["handler"] == ["function"] * 6
