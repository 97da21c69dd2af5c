"""A TCP proxy that can stall: the middle box that acknowledges everything and answers nothing.

A stalled proxy (or a NAT, a load balancer, a service mesh's sidecar) between a server and
its Redis keeps both TCP connections open and keeps reading from both sides, so the kernels
see every byte acknowledged and never give up: keepalive probes and ``TCP_USER_TIMEOUT``
are satisfied. Nothing reaches the other side. :meth:`StallProxy.stall` does that to every
connection, open or new; :meth:`StallProxy.heal` lets new connections through again while
the stalled ones stay dead, as a proxy that lost their state would leave them.

It runs on an event loop of its own, in a thread of the test process.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

from tests.support.servers import free_port


class _Pair:
    """One client connection and its upstream connection."""

    def __init__(self, dead: bool) -> None:
        self.dead = dead  # stalled: read and discard, forward nothing, for good
        self.writers: list[asyncio.StreamWriter] = []


class StallProxy:
    """``127.0.0.1:<port>`` forwarded to ``127.0.0.1:<target_port>``, until stalled."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._stalled = False
        self._pairs: set[_Pair] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self.discarded = 0  # bytes read and dropped while stalled
        self.connections = 0  # client connections accepted

    def start(self) -> StallProxy:
        self._thread.start()
        self._call(self._start())
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        pair = _Pair(self._stalled)
        self._pairs.add(pair)
        pair.writers.append(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            self._pairs.discard(pair)
            return
        pair.writers.append(up_writer)
        await asyncio.gather(
            self._pump(pair, reader, up_writer), self._pump(pair, up_reader, writer)
        )
        self._pairs.discard(pair)

    async def _pump(
        self, pair: _Pair, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while data := await reader.read(65536):
                if pair.dead:
                    self.discarded += len(data)
                    continue
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            for each in pair.writers:
                each.close()

    def stall(self) -> None:
        """Every open connection, and every new one until :meth:`heal`, goes dead (done
        when this returns)."""

        async def apply() -> None:
            self._stalled = True
            for pair in self._pairs:
                pair.dead = True

        self._call(apply())

    def heal(self) -> None:
        """New connections are forwarded again; the stalled ones stay dead."""
        self._loop.call_soon_threadsafe(setattr, self, "_stalled", False)

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for pair in list(self._pairs):
            for writer in pair.writers:
                writer.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> StallProxy:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
