"""A fault-injecting TCP proxy on 127.0.0.1, for crash races that must be hit every time.

It sits between a client (a bus connected to :attr:`FaultProxy.url`) and a server port,
and can hold each direction's bytes back for a while (``replies``: server to client,
``requests``: client to server). When the server side of a connection closes (the server
was killed), the client side is closed at once and whatever was held back is dropped: a
reply the server sent but the client never got. :meth:`FaultProxy.watch` reports when the
server sends (or the client sends) a given byte string, before the delay, so a test can
kill the server exactly while that reply is still held here.

While the server is down, connections are accepted and closed at once (the client sees a
disconnect and tries again), so the client reconnects through the proxy as soon as the
server is back on its port.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Self

from eventwire import EventwireError

if TYPE_CHECKING:
    from types import TracebackType

LOOPBACK = "127.0.0.1"
_CHUNK = 65536
Direction = Literal["replies", "requests"]


class ProxyError(EventwireError):
    """The proxy was used before it started (or after it closed)."""


@dataclass
class _Watch:
    needle: bytes
    direction: Direction
    seen: asyncio.Event = field(default_factory=asyncio.Event)


class FaultProxy:
    """Forwards ``127.0.0.1:<port>`` to ``upstream_port``, delaying on demand."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.delay: dict[Direction, float] = {"replies": 0.0, "requests": 0.0}
        self.connections = 0  # client connections that reached the server
        self._watches: list[_Watch] = []
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        if self._server is None:
            raise ProxyError("the proxy is not running")
        port = self._server.sockets[0].getsockname()[1]
        return f"nats://{LOOPBACK}:{port}"

    def watch(self, needle: bytes, direction: Direction = "replies") -> asyncio.Event:
        """An event set the first time ``needle`` passes in ``direction`` (on arrival at the
        proxy, before any delay)."""
        entry = _Watch(needle, direction)
        self._watches.append(entry)
        return entry.seen

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._accept, LOOPBACK, 0)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(self._handlers)
        if server is not None:
            await server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(LOOPBACK, self.upstream_port)
        except OSError:
            return  # the server is down: the client sees the door close and retries
        self.connections += 1
        try:
            async with asyncio.TaskGroup() as group:
                # Whichever side ends first ends the connection: the pumps raise _Closed.
                group.create_task(self._pump(up_reader, writer, "replies"))
                group.create_task(self._pump(reader, up_writer, "requests"))
        except* _Closed:
            pass
        finally:
            up_writer.close()
            with contextlib.suppress(OSError):
                await up_writer.wait_closed()

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, direction: Direction
    ) -> None:
        """Copy ``source`` to ``sink``, each chunk held for the direction's delay (read at
        arrival). Raises _Closed when either end is gone; held chunks are dropped then."""
        loop = asyncio.get_running_loop()
        held: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        tail = b""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._release(held, sink))
            while True:
                try:
                    chunk = await source.read(_CHUNK)
                except OSError:
                    chunk = b""
                if not chunk:
                    raise _Closed
                tail = self._look(tail + chunk, direction)
                held.put_nowait((loop.time() + self.delay[direction], chunk))

    @staticmethod
    async def _release(
        held: asyncio.Queue[tuple[float, bytes]], sink: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, chunk = await held.get()
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            try:
                sink.write(chunk)
                await sink.drain()
            except OSError:
                raise _Closed from None

    def _look(self, data: bytes, direction: Direction) -> bytes:
        """Set the watches whose needle is in ``data``; return the tail to keep (a needle
        may span two chunks)."""
        longest = 0
        for entry in self._watches:
            if entry.direction == direction and not entry.seen.is_set():
                longest = max(longest, len(entry.needle))
                if entry.needle in data:
                    entry.seen.set()
        return data[-longest:] if longest > 1 else b""


class _Closed(Exception):
    """One side of a proxied connection is gone."""
