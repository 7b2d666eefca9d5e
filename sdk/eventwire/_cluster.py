"""A real JetStream cluster of ``nats-server`` processes on 127.0.0.1, for tests and demos.

Each node is an :class:`EmbeddedServer` (free client port from its ports file, its own store
under one directory) started with a config file that adds the cluster: a route port and a
monitoring port picked free on 127.0.0.1, and routes to every other node. Nodes can be
killed (SIGKILL) and restarted on the same ports and store, as a crash would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nats
import nats.errors

from ._errors import ConfigError, ServerError
from ._resource import AsyncResource
from ._server import LOOPBACK, EmbeddedServer

if TYPE_CHECKING:
    import os
    from collections.abc import AsyncIterator

    from nats.aio.client import Client as NatsClient

log = logging.getLogger("eventwire.cluster")
_READY_TIMEOUT = 30.0
_POLL = 0.1
_QUERY_TIMEOUT = 1.0
_TRANSIENT = (nats.errors.Error, OSError, TimeoutError, ValueError)


@dataclass(frozen=True, slots=True)
class _Ports:
    route: int
    http: int


class EmbeddedCluster(AsyncResource):
    """``size`` JetStream nodes (``n1``..``nN``) in cluster ``name``, stopped on exit.

    ``base_dir=None`` uses a temporary directory removed on exit; node ``i`` keeps its
    store, config and log in ``<base_dir>/n<i+1>``. Entering the context starts every node
    and waits for :meth:`wait_ready`.
    """

    def __init__(
        self,
        size: int = 3,
        *,
        base_dir: str | os.PathLike[str] | None = None,
        name: str = "ew",
    ) -> None:
        if size < 3:
            raise ConfigError("a JetStream cluster needs at least 3 nodes (a quorum survives one)")
        self._size = size
        self._name = name
        self._given_dir = Path(base_dir) if base_dir is not None else None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._nodes: tuple[EmbeddedServer, ...] = ()
        self._ports: tuple[_Ports, ...] = ()

    @property
    def base_dir(self) -> Path:
        if self._given_dir is not None:
            return self._given_dir
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="eventwire-cluster-")
        return Path(self._tmp.name)

    @property
    def names(self) -> tuple[str, ...]:
        """Server names, by node index: ``n1``, ``n2``, ..."""
        return tuple(f"n{i + 1}" for i in range(self._size))

    @property
    def nodes(self) -> tuple[EmbeddedServer, ...]:
        if not self._nodes:
            raise ServerError("cluster has not started")
        return self._nodes

    @property
    def urls(self) -> str:
        """Every node's client URL, comma-separated (``connect(cluster.urls)``)."""
        return ",".join(node.url for node in self.nodes)

    def monitor_url(self, index: int) -> str:
        """Node ``index``'s HTTP monitoring endpoint (``/healthz``, ``/jsz``, ...)."""
        if not self._nodes:
            raise ServerError("cluster has not started")
        return f"http://{LOOPBACK}:{self._ports[index].http}"

    async def start(self) -> None:
        """Start every node; if one cannot (a picked port was taken meanwhile), once more."""
        if self._nodes:
            raise ServerError("cluster is already running")
        for attempt in (1, 2):
            try:
                await self._start_once()
                return
            except BaseException as exc:
                await self._stop_all()
                if attempt == 2 or not isinstance(exc, ServerError):
                    raise
                log.warning("cluster start failed (%s); retrying with other ports", exc)

    async def _start_once(self) -> None:
        ports = _free_ports(2 * self._size)
        self._ports = tuple(_Ports(ports[2 * i], ports[2 * i + 1]) for i in range(self._size))
        nodes = []
        for index, name in enumerate(self.names):
            node_dir = self.base_dir / name
            node_dir.mkdir(parents=True, exist_ok=True)
            config = node_dir / "node.conf"
            config.write_text(self._config(index))
            nodes.append(EmbeddedServer(store_dir=node_dir, extra_args=("-c", str(config))))
        self._nodes = tuple(nodes)
        # A node that fails to start stops its own process; the caller stops the others.
        results = await asyncio.gather(*(node.start() for node in nodes), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    def _config(self, index: int) -> str:
        own = self._ports[index]
        routes = ", ".join(
            f'"nats-route://{LOOPBACK}:{other.route}"'
            for i, other in enumerate(self._ports)
            if i != index
        )
        return (
            f"# {self.names[index]} of cluster {self._name!r}, written by EmbeddedCluster\n"
            f"server_name: {self.names[index]}\n"
            f'listen: "{LOOPBACK}:-1"  # the client port: EmbeddedServer passes -a/-p\n'
            f'http: "{LOOPBACK}:{own.http}"\n'
            "jetstream: enabled  # store_dir: EmbeddedServer passes -sd\n"
            "cluster {\n"
            f"  name: {self._name}\n"
            f'  listen: "{LOOPBACK}:{own.route}"\n'
            f"  routes: [{routes}]\n"
            "}\n"
        )

    async def kill(self, index: int) -> None:
        """SIGKILL node ``index``, as a crash would (its store stays)."""
        await self.nodes[index].kill()

    async def stop(self, index: int) -> None:
        """Stop node ``index`` gracefully (SIGTERM)."""
        await self.nodes[index].stop()

    async def restart(self, index: int) -> None:
        """Start node ``index`` again (stopping it first if it runs), same ports and store."""
        await self.nodes[index].restart()

    async def revive(self, timeout: float = _READY_TIMEOUT) -> None:
        """Restart every node that is not running, then :meth:`wait_ready`."""
        for node in self.nodes:
            if not node.running:
                await node.start()
        await self.wait_ready(timeout)

    async def wait_ready(self, timeout: float = _READY_TIMEOUT) -> None:
        """Wait until every running node is healthy and every stream has caught up.

        That is: each running node's ``/healthz`` answers ok, JetStream has a meta leader
        (``$JS.API.INFO`` answers), and every stream has a leader on a running node whose
        replicas on the other running nodes are current (a restarted node caught up).
        """
        problem = "not polled yet"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            problem = await self._health_problem() or await self._jetstream_problem()
            if not problem:
                return
            await asyncio.sleep(_POLL)
        raise ServerError(f"cluster not ready within {timeout}s: {problem}")

    async def _health_problem(self) -> str:
        for index, node in enumerate(self.nodes):
            if node.running:
                status, body = await self._monitor_get(index, "/healthz")
                if status != 200:
                    return f"{self.names[index]} /healthz: {status} {body.strip()}"
        return ""

    async def _jetstream_problem(self) -> str:
        running = {name for name, node in zip(self.names, self.nodes, strict=True) if node.running}
        try:
            async with self._client() as nc:
                reply = await nc.request("$JS.API.INFO", b"", timeout=_QUERY_TIMEOUT)
                if "error" in (info := json.loads(reply.data)):
                    return f"$JS.API.INFO: {info['error']}"
                streams = await nc.jetstream(timeout=_QUERY_TIMEOUT).streams_info()
        except _TRANSIENT as exc:
            return f"JetStream: {exc!r}"
        for stream in streams:
            cluster = stream.cluster
            if cluster is None or cluster.leader not in running:
                return f"stream {stream.config.name}: no leader"
            behind = [
                peer.name
                for peer in cluster.replicas or ()
                if peer.name in running and (peer.offline or not peer.current)
            ]
            if behind:
                return f"stream {stream.config.name}: {', '.join(map(str, behind))} catching up"
        return ""

    async def stream_leader(self, stream: str, timeout: float = _READY_TIMEOUT) -> int:
        """The index of the running node that leads ``stream``, waiting for an election."""
        problem = "not polled yet"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                async with self._client() as nc:
                    info = await nc.jetstream(timeout=_QUERY_TIMEOUT).stream_info(stream)
                leader = info.cluster.leader if info.cluster is not None else None
                problem = f"leader {leader!r}"
                if leader in self.names and self.nodes[self.names.index(leader)].running:
                    return self.names.index(leader)
            except _TRANSIENT as exc:  # includes JetStream's errors (not found, timeouts)
                problem = repr(exc)
            await asyncio.sleep(_POLL)
        raise ServerError(f"stream {stream!r} has no leader after {timeout}s: {problem}")

    async def step_down(self, stream: str, to: int | None = None) -> int:
        """Make ``stream``'s leader step down (in favour of node ``to`` if given); returns
        the index of the new leader once elected."""
        old = await self.stream_leader(stream)
        if to == old:
            return old
        request = {"placement": {"preferred": self.names[to]}} if to is not None else {}
        async with self._client() as nc:
            reply = await nc.request(
                f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}",
                json.dumps(request).encode(),
                timeout=_READY_TIMEOUT,
            )
        answer = json.loads(reply.data)
        if "error" in answer:
            raise ServerError(f"stream {stream!r} leader did not step down: {answer['error']}")
        deadline = time.monotonic() + _READY_TIMEOUT
        while time.monotonic() < deadline:
            leader = await self.stream_leader(stream)
            if leader == to or (to is None and leader != old):
                return leader
            await asyncio.sleep(_POLL)
        raise ServerError(f"stream {stream!r}: no new leader within {_READY_TIMEOUT}s")

    async def monitor(self, index: int, path: str) -> Any:
        """A JSON monitoring endpoint of node ``index``, e.g. ``/jsz`` or ``/connz``."""
        status, body = await self._monitor_get(index, path)
        if status != 200:
            raise ServerError(f"{self.names[index]} {path}: {status} {body.strip()[:200]}")
        return json.loads(body)

    async def _monitor_get(self, index: int, path: str) -> tuple[int, str]:
        """Status and body of ``GET path`` on node ``index``'s monitoring endpoint: the one
        way this class reaches it (a container cluster in the tests reaches it otherwise)."""
        return await _http_get(self._ports[index].http, path)

    @contextlib.asynccontextmanager
    async def _client(self) -> AsyncIterator[NatsClient]:
        """A short-lived connection to any running node."""

        async def quiet(exc: Exception) -> None:
            log.debug("cluster client: %r", exc)

        servers = [node.url for node in self.nodes if node.running]
        if not servers:
            raise OSError("no node is running")
        nc = await nats.connect(
            servers=servers,
            connect_timeout=1,
            allow_reconnect=False,
            max_reconnect_attempts=1,
            error_cb=quiet,
        )
        try:
            yield nc
        finally:
            await nc.close()

    async def _stop_all(self) -> None:
        nodes, self._nodes = self._nodes, ()
        await asyncio.gather(*(node.close() for node in nodes), return_exceptions=True)
        for node in nodes:  # a stop that was itself interrupted: make sure by PID
            await node.kill()

    async def _open(self) -> None:
        await self.start()
        await self.wait_ready()

    async def close(self) -> None:
        """Stop every node and remove the temporary directory, if the cluster made one."""
        try:
            await self._stop_all()
        finally:
            if self._tmp is not None:
                self._tmp.cleanup()
                self._tmp = None


def _free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 right now (bound together, then released)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((LOOPBACK, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


async def _http_get(port: int, path: str) -> tuple[int, str]:
    """Status and body of ``GET path`` on 127.0.0.1 (0 and the error if it failed)."""
    try:
        async with asyncio.timeout(_QUERY_TIMEOUT):
            reader, writer = await asyncio.open_connection(LOOPBACK, port)
            try:
                writer.write(f"GET {path} HTTP/1.0\r\nHost: {LOOPBACK}\r\n\r\n".encode())
                response = await reader.read()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError) as exc:
        return 0, repr(exc)
    head, _, body = response.decode(errors="replace").partition("\r\n\r\n")
    try:
        return int(head.split(" ", 2)[1]), body
    except (IndexError, ValueError):
        return 0, f"unreadable response: {head[:80]!r}"
