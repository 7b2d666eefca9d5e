"""``/healthz`` (liveness) and ``/readyz`` (readiness) over HTTP for orchestrators.

``async with eventwire.serve_health(agent_or_bus, port=8080) as server:`` serves, on
127.0.0.1 by default, ``GET /healthz`` (200 while ``health.live``, else 503), ``GET /readyz``
(200 while ``health.ready``, else 503) and ``GET /health`` (always 200 unless the health
could not be computed), each with the :class:`~eventwire.Health` as a JSON body. Each
request computes the health afresh. A small asyncio HTTP/1.1 server (one request per
connection), stdlib only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import TYPE_CHECKING, Protocol, Self

from ._errors import ConfigError, InvalidArgument

if TYPE_CHECKING:
    from types import TracebackType

    from ._health import Health

log = logging.getLogger("eventwire.healthz")
HOST = "127.0.0.1"
_READ_TIMEOUT = 5.0
_MAX_REQUEST = 8192
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}
_REASONS[503] = "Service Unavailable"


class HasHealth(Protocol):
    """A bus or an agent: anything with ``await .health()``."""

    async def health(self) -> Health: ...


class HealthServer:
    """The running endpoint: ``url``, ``port``; stopped on leaving the ``async with``."""

    def __init__(self, target: HasHealth, host: str, port: int) -> None:
        self._target = target
        self.host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        if self._server is None:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def __aenter__(self) -> Self:
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self._port)
        except OSError as exc:
            raise ConfigError(f"cannot serve health on {self.host}:{self._port}: {exc}") from exc
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop listening, cancel the requests being answered. Safe twice."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._handlers):
            task.cancel()
        for task in list(self._handlers):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None  # asyncio runs each connection's callback in a task
        self._handlers.add(task)
        try:
            status, body = await self._answer(reader)
            _respond(writer, status, body)
            await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client went away or sent garbage slowly: nothing to answer
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[int, dict[str, object]]:
        async with asyncio.timeout(_READ_TIMEOUT):
            head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > _MAX_REQUEST:
            return 400, {"error": "request too large"}
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        if len(parts) != 3:
            return 400, {"error": "malformed request line"}
        method, path = parts[0], parts[1].split("?", 1)[0]
        if path not in ("/healthz", "/readyz", "/health"):
            return 404, {"error": f"no such path: {path}", "paths": ["/healthz", "/readyz"]}
        if method != "GET":
            return 405, {"error": "only GET"}
        try:
            health = await self._target.health()
        except Exception as exc:  # an answer for the orchestrator, not a crash of the server
            log.exception("health check failed")
            return 503, {"error": f"health check failed: {exc!r}"}
        ok = {"/healthz": health.live, "/readyz": health.ready, "/health": True}[path]
        return (200 if ok else 503), health.to_dict()


def _respond(writer: asyncio.StreamWriter, status: int, body: dict[str, object]) -> None:
    data = json.dumps(body).encode()
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n\r\n"
    )
    writer.write(head.encode() + data)


def serve_health(target: HasHealth, port: int = 0, *, host: str = HOST) -> HealthServer:
    """Serve ``target``'s (a :class:`Bus` or :class:`Agent`) ``/healthz``, ``/readyz`` and
    ``/health`` on ``host:port`` (port 0: a free one, see ``.port``); ``async with`` it.
    :class:`InvalidArgument` for a port out of range or a target without ``health()``,
    :class:`ConfigError` when the port cannot be bound."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise InvalidArgument(f"must be an int from 0 to 65535, got {port!r}", field="port")
    if not callable(getattr(target, "health", None)):
        raise InvalidArgument(f"{target!r} has no health() (a Bus or an Agent)", field="target")
    return HealthServer(target, host, port)
