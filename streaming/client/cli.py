"""``python -m streaming.client``: the quickest way to poke a running server.

::

    python -m streaming.client --url http://127.0.0.1:8000 --endpoint echo
    python -m streaming.client --url http://127.0.0.1:8000 --user alice --endpoint chat
    python -m streaming.client --url http://127.0.0.1:8000 --token KEY --endpoint chat

* stdout: each message the server sends on the endpoint, one JSON object per line,
  ``{"className": ..., "data": {...}}``.
* stdin: one JSON object per line, ``{"className": ..., "data": {...}}`` with an
  optional ``"id"``, sent to the endpoint. Lines read while the connection is down
  wait for it. End of input does not end the program (it goes on printing).
* stderr: status changes and errors, on lines starting with ``# ``.

Objects are raw (no message classes needed): the server validates what it gets.
The connection is kept up with a :class:`StreamingConnectionHandler` unless
``--no-reconnect``. Exit status: 0 after ``--count`` messages, 130 on Ctrl-C, 1 when
sign-in fails, the server refuses the credentials (4401/4403) or, with
``--no-reconnect``, the connection ends.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
import threading
from typing import Any

from .client import Client
from .endpoint_ref import EndpointRef
from .errors import (
    ConnectionFailed,
    NotConnected,
    ServerError,
    SignInFailed,
    StreamOverflow,
    UndecodableMessage,
)
from .handler import StreamingConnectionHandler
from .raw import RawObject
from .status import StreamingConnectionStatus

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m streaming.client",
        description="Connect to a Streampod server, print the messages of one endpoint "
        "and send JSON objects read from stdin, one per line.",
    )
    parser.add_argument(
        "--url", default="http://127.0.0.1:8000/", help="server base URL (default: %(default)s)"
    )
    who = parser.add_mutually_exclusive_group()
    who.add_argument("--user", help="sign in as this user (the password is asked for)")
    who.add_argument("--token", help="authenticate with this token (KEY or 'Token KEY')")
    parser.add_argument("--endpoint", required=True, help="endpoint name, for example echo")
    parser.add_argument(
        "--count", type=int, default=0, help="exit after printing this many messages"
    )
    parser.add_argument("--no-input", action="store_true", help="do not read stdin")
    parser.add_argument(
        "--no-reconnect",
        dest="reconnect",
        action="store_false",
        help="connect once; exit when the connection ends",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    auth_key = None
    if args.token:
        auth_key = args.token if args.token.startswith("Token ") else f"Token {args.token}"
    password = getpass.getpass(f"Password for {args.user}: ") if args.user else None
    try:
        return asyncio.run(_run(args, auth_key, password))
    except KeyboardInterrupt:
        return 130


def _say(text: str) -> None:
    print(f"# {text}", file=sys.stderr, flush=True)


def _describe(error: ServerError | UndecodableMessage) -> str:
    kind = "error" if isinstance(error, ServerError) else "undecodable"
    text = f"{kind}: {error.code}: {error.message}"
    if error.endpoint:
        text += f" (endpoint {error.endpoint})"
    if isinstance(error, ServerError) and error.id:
        text += f" (id {error.id})"
    for item in error.errors:
        text += f"\n#   {item.get('path')}: {item.get('reason')}"
    return text


async def _run(args: argparse.Namespace, auth_key: str | None, password: str | None) -> int:
    client = Client(args.url, auth_key=auth_key, raw=True, on_error=lambda e: _say(_describe(e)))
    connected = asyncio.Event()

    def on_status(status: StreamingConnectionStatus) -> None:
        detail = ""
        if status is StreamingConnectionStatus.connected:
            connected.set()
        else:
            connected.clear()
        if status is StreamingConnectionStatus.waiting_to_retry:
            detail = f" (retry in {client.retry_in_seconds or 0:.1f} s)"
        elif status is StreamingConnectionStatus.disconnected and client.disconnect_reason:
            detail = f" ({client.disconnect_reason.message})"
        _say(f"status: {status}{detail}")

    client.add_streaming_connection_status_listener(on_status)
    async with client:
        if args.user:
            try:
                await client.sign_in(args.user, password or "")
            except SignInFailed as exc:
                _say(f"sign-in failed: {exc}")
                return 1
        ref = client.endpoint(args.endpoint)
        if args.reconnect:
            handler = StreamingConnectionHandler(client)
            handler.start()
            ended = asyncio.ensure_future(handler.wait_closed())
        else:
            try:
                await client.open_streaming_connection()
            except ConnectionFailed:
                return 1
            ended = asyncio.ensure_future(client._wait_link_closed())
        printer = asyncio.ensure_future(_print_messages(ref, args.count))
        tasks = {printer, ended}
        if not args.no_input:
            tasks.add(asyncio.ensure_future(_send_lines(client, ref, connected)))
        try:
            await asyncio.wait({printer, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
        return 0 if printer.done() and not printer.cancelled() else 1


async def _print_messages(ref: EndpointRef, count: int) -> None:
    printed = 0
    while True:
        try:
            async for obj in ref.stream:
                print(json.dumps(obj.to_dict(), ensure_ascii=False), flush=True)
                printed += 1
                if count and printed >= count:
                    return
            return  # the client was closed
        except StreamOverflow as gap:
            _say(str(gap))


async def _send_lines(client: Client, ref: EndpointRef, connected: asyncio.Event) -> None:
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    _pump_stdin(asyncio.get_running_loop(), lines)
    while (line := await lines.get()) is not None:
        if not line.strip():
            continue
        try:
            obj: Any = json.loads(line)
            raw = RawObject.from_dict(obj)
            frame_id = obj.get("id")
            if frame_id is not None and not isinstance(frame_id, str):
                raise ValueError('"id" must be a string')
        except ValueError as exc:
            _say(f"not sent: {exc}")
            continue
        while True:
            await connected.wait()
            try:
                await ref.send_stream_message(raw, id=frame_id)
                break
            except NotConnected:
                await client._wait_link_closed()  # then wait for the next connection


def _pump_stdin(loop: asyncio.AbstractEventLoop, lines: asyncio.Queue[str | None]) -> None:
    """Read stdin in a daemon thread (it never holds up the exit) into ``lines``."""

    def pump() -> None:
        try:
            for line in sys.stdin:
                loop.call_soon_threadsafe(lines.put_nowait, line)
            loop.call_soon_threadsafe(lines.put_nowait, None)
        except RuntimeError:
            pass  # the loop is closed: the program is exiting

    threading.Thread(target=pump, name="streampod-stdin", daemon=True).start()
