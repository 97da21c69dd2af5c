"""uvicorn with a raw ASGI app (no Django) for the WebSocket conformance suite.

``python -m tests.support.ws_conformance_server --ws <impl> --port N [--ws-max-size B]
[--ws-ping-interval S] [--ws-ping-timeout S]`` serves, on 127.0.0.1:

- ``/echo``: accept, echo every message (text as text, bytes as bytes) until disconnect.
  The text ``__close__`` makes the app close with 4000 "asked"; after that it still
  tries to echo whatever it receives (the protocol must not put it on the wire).
- ``/deny``: close before accept (the client gets HTTP 403).
- ``/http-deny``: a ``websocket.http.response`` 418 with ``x-deny: teapot`` and a body.
- ``/subprotocol``: accept with the first offered subprotocol and ``x-conformance: 1``,
  then echo.
- ``/close``: accept, then close with 4001 "bye" (or ``?code=C&reason=R``); then wait
  for the disconnect.
- ``/flood``: accept, then send 64 KB binary messages forever, awaiting each send.
- ``GET /last?id=X`` (plain HTTP): what the app saw on the WebSocket connection whose
  query string carried ``id=X``, as JSON (``null`` if the app was never called for it):
  ``{"path", "received": [[kind, summary]...], "disconnect": {"code", "reason"} | null,
  "sent": bytes sent (/flood), "send_errors": [...]}``.

Every ``websocket.disconnect`` is also printed as ``conformance-disconnect id=X code=C``
(for the tests that stop the server before they could ask ``/last``).
"""

from __future__ import annotations

import argparse
import json
from typing import Any
from urllib.parse import parse_qs

import uvicorn

RECORDS: dict[str, dict[str, Any]] = {}
FLOOD_CHUNK = b"\x00" * 65536


def _summary(message: dict[str, Any]) -> list[Any]:
    if message.get("text") is not None:
        text = message["text"]
        return ["text", text if len(text) <= 64 else f"<{len(text)} chars>"]
    return ["bytes", len(message.get("bytes") or b"")]


class Conn:
    def __init__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        self.ident = query.get("id", [""])[0]
        self.record: dict[str, Any] = {
            "path": scope["path"],
            "received": [],
            "disconnect": None,
            "sent": 0,
            "send_errors": [],
        }
        if self.ident:
            RECORDS[self.ident] = self.record
        self._receive = receive
        self.send = send
        self.scope = scope

    async def receive(self) -> dict[str, Any]:
        message = await self._receive()
        if message["type"] == "websocket.disconnect":
            self.record["disconnect"] = {
                "code": message.get("code"),
                "reason": message.get("reason"),
            }
            print(
                f"conformance-disconnect id={self.ident} code={message.get('code')}",
                flush=True,
            )
        elif message["type"] == "websocket.receive":
            if len(self.record["received"]) < 1000:
                self.record["received"].append(_summary(message))
        return message

    async def try_send(self, message: dict[str, Any]) -> None:
        try:
            await self.send(message)
        except Exception as exc:  # the protocol refused: recorded, not fatal
            self.record["send_errors"].append(f"{type(exc).__name__}: {exc}")


def _echo_of(message: dict[str, Any]) -> dict[str, Any]:
    if message.get("text") is not None:
        return {"type": "websocket.send", "text": message["text"]}
    return {"type": "websocket.send", "bytes": message.get("bytes") or b""}


async def _drain_until_disconnect(conn: Conn, echo: bool) -> None:
    while True:
        message = await conn.receive()
        if message["type"] == "websocket.disconnect":
            return
        if echo:
            await conn.try_send(_echo_of(message))


async def echo(conn: Conn) -> None:
    await conn.send({"type": "websocket.accept"})
    await _echo_loop(conn)


async def _echo_loop(conn: Conn) -> None:
    while True:
        message = await conn.receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") == "__close__":
            await conn.send({"type": "websocket.close", "code": 4000, "reason": "asked"})
            # Whatever arrives now must not be echoed on the wire: the app tries anyway.
            await _drain_until_disconnect(conn, echo=True)
            return
        await conn.send(_echo_of(message))


async def deny(conn: Conn) -> None:
    await conn.send({"type": "websocket.close"})
    await _drain_until_disconnect(conn, echo=False)


async def http_deny(conn: Conn) -> None:
    await conn.send(
        {
            "type": "websocket.http.response.start",
            "status": 418,
            "headers": [(b"x-deny", b"teapot"), (b"content-type", b"text/plain")],
        }
    )
    await conn.send({"type": "websocket.http.response.body", "body": b"no websocket for you"})


async def subprotocol(conn: Conn) -> None:
    offered = conn.scope.get("subprotocols") or []
    await conn.send(
        {
            "type": "websocket.accept",
            "subprotocol": offered[0] if offered else None,
            "headers": [(b"x-conformance", b"1")],
        }
    )
    await _echo_loop(conn)


async def close(conn: Conn) -> None:
    query = parse_qs(conn.scope.get("query_string", b"").decode("latin-1"))
    code = int(query.get("code", ["4001"])[0])
    reason = query.get("reason", ["bye"])[0]
    await conn.send({"type": "websocket.accept"})
    # A code or reason the protocol refuses is recorded (send_errors), not fatal.
    await conn.try_send({"type": "websocket.close", "code": code, "reason": reason})
    await _drain_until_disconnect(conn, echo=False)


async def flood(conn: Conn) -> None:
    await conn.send({"type": "websocket.accept"})
    while True:
        try:
            await conn.send({"type": "websocket.send", "bytes": FLOOD_CHUNK})
        except Exception as exc:
            conn.record["send_errors"].append(f"{type(exc).__name__}: {exc}")
            return
        conn.record["sent"] += len(FLOOD_CHUNK)


ROUTES = {
    "/echo": echo,
    "/deny": deny,
    "/http-deny": http_deny,
    "/subprotocol": subprotocol,
    "/close": close,
    "/flood": flood,
}


async def _http(scope: dict[str, Any], receive: Any, send: Any) -> None:
    while (await receive()).get("more_body"):
        pass
    if scope["path"] == "/last":
        ident = parse_qs(scope["query_string"].decode("latin-1")).get("id", [""])[0]
        status, body = 200, json.dumps(RECORDS.get(ident)).encode()
    else:
        status, body = 404, b"null"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        await _http(scope, receive, send)
        return
    if scope["type"] != "websocket":
        return
    conn = Conn(scope, receive, send)
    connect = await conn.receive()
    assert connect["type"] == "websocket.connect", connect
    handler = ROUTES.get(scope["path"], deny)
    await handler(conn)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ws", required=True, help="uvicorn ws= (a name or import string)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ws-max-size", type=int)
    parser.add_argument("--ws-ping-interval", type=float)
    parser.add_argument("--ws-ping-timeout", type=float)
    args = parser.parse_args(argv)
    options: dict[str, Any] = {}
    if args.ws_max_size is not None:
        options["ws_max_size"] = args.ws_max_size
    if args.ws_ping_interval is not None:
        options["ws_ping_interval"] = args.ws_ping_interval
    if args.ws_ping_timeout is not None:
        options["ws_ping_timeout"] = args.ws_ping_timeout
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        ws=args.ws,
        log_level="info",
        lifespan="off",
        **options,
    )


if __name__ == "__main__":
    main()
