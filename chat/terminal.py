"""The chat in a terminal, on the Python client (``streaming.client``). Imports no Django.

``python manage.py chat_client --url http://127.0.0.1:8000 --user alice`` runs
:func:`run`; any program can too. Lines typed::

    @bob hello there     send "hello there" to bob (bob becomes the current person)
    see you at 3         send to the current person
    /who                 list the people one can write to
    /quit                leave (so does end of input, Ctrl-D)

Incoming messages are printed as they arrive. After a reconnect, what arrived while
the socket was down is fetched (``GET /api/chat/messages/?with=<id>&after=<last id>``)
and printed, so nothing is missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any, TextIO

import httpx

from streaming.client import (
    Client,
    ClientError,
    NotConnected,
    ServerError,
    StreamingConnectionHandler,
    StreamingConnectionStatus,
    StreamOverflow,
)

from .protocol import ChatMessage, clean_text

__all__ = ["ChatTerminal", "run", "stdin_lines"]

HELP = (
    "Type @name message to send, then just the message to reply; /who lists people; /quit leaves."
)


async def stdin_lines(stream: TextIO = sys.stdin) -> AsyncIterator[str]:
    """Lines of ``stream`` without blocking the event loop; ends at end of input.

    A daemon thread reads (a blocking read cannot be cancelled, and a daemon thread
    does not keep the process alive once the chat has ended).
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def pump() -> None:
        for line in iter(stream.readline, ""):
            loop.call_soon_threadsafe(queue.put_nowait, line)
        loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=pump, name="chat-stdin", daemon=True).start()
    while (line := await queue.get()) is not None:
        yield line


class ChatTerminal:
    """One signed-in user's chat session on ``client``; output goes to ``write``."""

    def __init__(self, client: Client, write: Callable[[str], Any]) -> None:
        self.client = client
        self.write = write
        self.people: dict[int, dict[str, Any]] = {}  # id -> {id, username, display_name}
        self.current: int | None = None  # whom a line without @name goes to
        self.last_id = 0  # highest message id printed
        self._seen: set[int] = set()
        self._catch_ups: set[asyncio.Task[None]] = set()

    # -- HTTP ----------------------------------------------------------------------------

    async def _get_all(self, path: str, params: dict[str, Any] | None = None) -> list[Any]:
        headers = {"Authorization": self.client.auth_key or "", "Accept": "application/json"}
        results: list[Any] = []
        url: str | None = self.client.url + path.lstrip("/")
        async with httpx.AsyncClient(timeout=10, headers=headers) as http:
            while url:
                response = await http.get(url, params=params)
                response.raise_for_status()
                body = response.json()
                results += body["results"]
                url, params = body["next"], None  # `next` carries the whole query
        return results

    async def load_people(self) -> None:
        people = await self._get_all("api/users/")
        self.people = {person["id"]: person for person in people}

    def find(self, username: str) -> int | None:
        for person in self.people.values():
            if person["username"].lower() == username.lower():
                return int(person["id"])
        return None

    # -- output --------------------------------------------------------------------------

    def name(self, user_id: int | None) -> str:
        person = self.people.get(user_id) if user_id is not None else None
        return person["username"] if person else f"user {user_id}"

    def show(self, message: ChatMessage) -> None:
        """Print a stored message once (live and catch-up may both bring it)."""
        if message.id is None or message.id in self._seen:
            return
        self._seen.add(message.id)
        self.last_id = max(self.last_id, message.id)
        when = message.sent_at.astimezone().strftime("%H:%M") if message.sent_at else "--:--"
        if message.sender_id in self.people:
            self.write(f"[{when}] {self.name(message.sender_id)}: {message.text}")
        else:  # everyone but me is in the people list, so this one is mine
            self.write(f"[{when}] you → {self.name(message.recipient_id)}: {message.text}")

    def show_error(self, error: ServerError) -> None:
        fields = "; ".join(f"{e.get('path')}: {e.get('reason')}" for e in error.errors)
        self.write(f"! {error.code}: {error.message}" + (f" ({fields})" if fields else ""))

    def on_status(self, status: StreamingConnectionStatus) -> None:
        if status is StreamingConnectionStatus.connected:
            self.write("· connected")
            # Whatever was sent before this socket listened (first connection or a
            # reconnect) is fetched; show() prints each message once.
            task = asyncio.get_running_loop().create_task(self.catch_up())
            self._catch_ups.add(task)
            task.add_done_callback(self._catch_ups.discard)
        elif status is StreamingConnectionStatus.waiting_to_retry:
            seconds = self.client.retry_in_seconds or 0.0
            self.write(f"· connection lost; retrying in {seconds:.1f} s")
        elif status is StreamingConnectionStatus.disconnected:
            reason = self.client.disconnect_reason
            if reason is not None and not reason.by_client:
                self.write(f"· disconnected: {reason.message}")

    # -- work ----------------------------------------------------------------------------

    async def history(self, after: int) -> list[ChatMessage]:
        """Every message after id ``after`` in my conversations, oldest first."""
        found: list[ChatMessage] = []
        for person_id in list(self.people):
            rows = await self._get_all("api/chat/messages/", {"with": person_id, "after": after})
            found += [ChatMessage.model_validate(_typed(row)) for row in rows]
        return sorted(found, key=lambda m: m.id or 0)

    async def start(self) -> list[ChatMessage]:
        """Load the people and my conversations; remember the last id. Returns the
        conversations' messages, oldest first (for :meth:`show_recent`)."""
        await self.load_people()
        messages = await self.history(after=0)
        self.last_id = max((m.id or 0 for m in messages), default=0)
        return messages

    def show_recent(self, messages: list[ChatMessage], count: int = 5) -> None:
        """Print the last ``count`` of ``messages``; the others count as seen."""
        shown = messages[-count:] if count else []
        self._seen.update(m.id or 0 for m in messages[: len(messages) - len(shown)])
        if shown:
            self.write("Recent messages:")
        for message in shown:
            self.show(message)

    async def catch_up(self) -> None:
        """Print what arrived while the socket was down."""
        try:
            await self.load_people()
            for message in await self.history(after=self.last_id):
                self.show(message)
        except (httpx.HTTPError, ValueError) as exc:
            self.write(f"! could not fetch missed messages: {exc}")

    async def receive(self) -> None:
        async for message in self._read(self.client.chat.stream):
            if isinstance(message, ChatMessage):
                if message.sender_id not in self.people and message.sender_id is not None:
                    with contextlib.suppress(httpx.HTTPError):
                        await self.load_people()  # someone new, or me
                self.show(message)

    async def _read(self, stream: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """``stream``'s items; a gap (the buffer overflowed) is reported, not fatal."""
        while True:
            try:
                item = await anext(stream)
            except StopAsyncIteration:
                return
            except StreamOverflow as exc:
                self.write(f"! {exc}")
                continue
            yield item

    async def report_errors(self) -> None:
        async for error in self._read(self.client.errors):
            if isinstance(error, ServerError):
                self.show_error(error)
            else:
                self.write(f"! {error}")

    async def handle_line(self, line: str) -> bool:
        """Act on one typed line; False to quit."""
        line = line.strip()
        if not line:
            return True
        if line in ("/quit", "/exit"):
            return False
        if line == "/who":
            await self.load_people()
            names = ", ".join(
                f"@{p['username']} ({p['display_name']})" for p in self.people.values()
            )
            self.write(names or "Nobody else is here yet.")
            return True
        if line.startswith("/"):
            self.write(HELP)
            return True
        text = line
        if line.startswith("@"):
            username, _, text = line[1:].partition(" ")
            recipient = self.find(username)
            if recipient is None:
                await self.load_people()
                recipient = self.find(username)
            if recipient is None:
                self.write(f"! no such person: @{username} (try /who)")
                return True
            self.current = recipient
        if self.current is None:
            self.write("! to whom? Start with @name, e.g. @bob hello")
            return True
        cleaned = clean_text(text)
        if cleaned is None:
            self.write("! a message is 1 to 4000 characters")
            return True
        try:
            await self.client.chat.send_stream_message(
                ChatMessage(recipient_id=self.current, text=cleaned)
            )
        except NotConnected:
            self.write("! not connected; try again in a moment")
        return True


def _typed(row: dict[str, Any]) -> dict[str, Any]:
    # The REST API's JSON has sent_at as text; the strict model wants a datetime.
    sent_at = row.get("sent_at")
    if isinstance(sent_at, str):
        row = {**row, "sent_at": datetime.fromisoformat(sent_at.replace("Z", "+00:00"))}
    return row


async def run(
    url: str,
    username: str | None,
    *,
    password: str | None = None,
    auth_key: str | None = None,
    lines: AsyncIterator[str] | None = None,
    write: Callable[[str], Any] = print,
) -> int:
    """Chat until ``/quit`` or the end of ``lines`` (default: stdin). Exit status."""
    client = Client(url, auth_key=auth_key)
    terminal = ChatTerminal(client, write)
    try:
        if auth_key is None:
            assert username is not None and password is not None
            await client.sign_in(username, password)
        history = await terminal.start()
    except (ClientError, httpx.HTTPError) as exc:
        write(f"! could not sign in: {exc}")
        await client.close()
        return 1
    write(f"Signed in{f' as {username}' if username else ''} at {client.url}. {HELP}")
    terminal.show_recent(history)
    client.add_streaming_connection_status_listener(terminal.on_status)
    tasks = [
        asyncio.create_task(terminal.receive()),
        asyncio.create_task(terminal.report_errors()),
    ]
    handler = StreamingConnectionHandler(client)
    handler.start()
    try:
        async for line in lines if lines is not None else stdin_lines():
            if not await terminal.handle_line(line):
                break
    finally:
        await handler.close()
        await client.close()  # ends the streams, so the tasks finish
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for task in list(terminal._catch_ups):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return 0
