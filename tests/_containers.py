"""The docker test backend: the official ``nats`` image of ``compose.yaml`` through
testcontainers, with the same interface as the binary's EmbeddedServer / EmbeddedCluster.

Imported only when ``EVENTWIRE_TEST_BACKEND=docker`` (see ``tests/_backends.py``), so
testcontainers stays optional; it is itself imported inside the functions that use it.

Each container runs ``nats-server --config /etc/nats/eventwire.conf`` like compose.yaml,
with ``deploy/nats-cluster/node.conf`` copied in (a single server: the same file without
its ``cluster`` block). Only the client port is published, on 127.0.0.1 and a free host
port picked here: Docker's own random port would change when a killed container is
started again, and a restart must keep the URL, as the binary's does. Monitoring stays on
each container's loopback, as in compose.yaml; it is read with ``wget`` inside the
container. Cluster nodes share a private network where they are ``n1``..``n3``, the names
node.conf routes to. Testcontainers' Ryuk reaper is off unless you set
``TESTCONTAINERS_RYUK_DISABLED`` yourself: it publishes its port on every interface. The
fixtures remove their containers and networks; leftovers of a killed run carry the label
``eventwire.test``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

from eventwire import ConfigError, EmbeddedCluster, EmbeddedServer, ServerError

if TYPE_CHECKING:
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.network import Network

log = logging.getLogger("eventwire.tests.containers")
LOOPBACK = "127.0.0.1"


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


ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "compose.yaml"
NODE_CONF = ROOT / "deploy" / "nats-cluster" / "node.conf"
CONFIG_PATH = "/etc/nats/eventwire.conf"  # where compose.yaml mounts node.conf
COMMAND = ["nats-server", "--config", CONFIG_PATH]  # compose.yaml's command
CLIENT_PORT = "4222/tcp"
MONITOR = "http://127.0.0.1:8222"  # node.conf's http, inside the container
LABEL = "eventwire.test"
_START_TIMEOUT = 60.0
_STOP_TIMEOUT = 10
_POLL = 0.1


def compose_image() -> str:
    """The ``image:`` of compose.yaml's nats nodes, e.g. ``nats:2.12-alpine``."""
    found = re.search(r"^\s*image:\s*[\"']?(nats:[^\s\"']+)", COMPOSE.read_text(), re.MULTILINE)
    if found is None:
        raise ConfigError(f"no `image: nats:<tag>` in {COMPOSE}")
    return found.group(1)


def single_node_config() -> bytes:
    """node.conf without its ``cluster { ... }`` block: one JetStream server."""
    text = NODE_CONF.read_text()
    single, removed = re.subn(r"^cluster \{.*?^\}\n?", "", text, flags=re.MULTILINE | re.DOTALL)
    if removed != 1:
        raise ConfigError(f"expected one top-level `cluster {{ ... }}` block in {NODE_CONF}")
    return single.encode()


def _no_ryuk() -> None:
    from testcontainers.core.config import testcontainers_config

    if "TESTCONTAINERS_RYUK_DISABLED" not in os.environ:
        testcontainers_config.ryuk_disabled = True


def single_server() -> NatsContainer:
    """A (not yet started) single JetStream server in a container."""
    return NatsContainer(name="n1", config=single_node_config())


class NatsContainer(EmbeddedServer):
    """One ``nats`` container with EmbeddedServer's interface: ``url``, ``start``, ``stop``
    (docker stop: SIGTERM), ``kill`` (docker kill: SIGKILL) and ``restart``, which keep the
    container, hence its port and its JetStream store; ``close`` removes it."""

    def __init__(
        self, *, name: str, config: bytes, network: Network | None = None, port: int = 0
    ) -> None:
        super().__init__(port=port)  # 0: a free one, picked when the container is made
        self._name = name
        self._config = config
        self._network = network
        self._container: DockerContainer | None = None
        self._up = False

    @property
    def running(self) -> bool:
        return self._up

    @property
    def store_dir(self) -> Path:
        raise ServerError("a container keeps its JetStream store inside itself (/data)")

    async def start(self) -> None:
        if self._up:
            raise ServerError("server is already running")
        try:
            if self._container is None:
                self._port = self._port or _free_ports(1)[0]
                self._container = self._describe()
                await asyncio.to_thread(self._container.start)
            else:
                await asyncio.to_thread(self._container.get_wrapped_container().start)
        except Exception as exc:  # docker's errors: a taken port, a missing image, ...
            image = compose_image()
            raise ServerError(f"cannot start the {image} container {self._name}: {exc}") from exc
        self._up = True
        try:
            await self._await_healthy()
        except BaseException:
            await self.stop()
            raise

    def _describe(self) -> DockerContainer:
        from testcontainers.core.container import DockerContainer

        _no_ryuk()
        container = (
            DockerContainer(compose_image())
            .with_command(COMMAND)
            .with_env("SERVER_NAME", self._name)
            .with_copy_into_container(self._config, CONFIG_PATH)
            .with_kwargs(labels={LABEL: self._name})
        )
        # with_bind_ports takes no host address; docker-py's (address, port) form does.
        container.ports[CLIENT_PORT] = (LOOPBACK, self.port)  # type: ignore[assignment]
        if self._network is not None:
            container.with_network(self._network).with_network_aliases(self._name)
        return container

    async def _await_healthy(self) -> None:
        """Until the published port answers with NATS's INFO and JetStream is enabled
        (compose.yaml's healthcheck), or the container exits."""
        problem = "not polled yet"
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if (status := await asyncio.to_thread(self._status)) in {"exited", "dead"}:
                raise ServerError(f"container {self._name} {status}: {await self._log_tail()}")
            health, body = await self.monitor_get("/healthz?js-enabled-only=true")
            problem = f"/healthz: {health} {body.strip()[:200]}"
            if health == 200 and await _says_info(self.port):
                return
            await asyncio.sleep(_POLL)
        raise ServerError(f"container {self._name} not ready in {_START_TIMEOUT}s: {problem}")

    def _status(self) -> str:
        assert self._container is not None
        wrapped = self._container.get_wrapped_container()
        wrapped.reload()
        return str(wrapped.status)

    async def _log_tail(self) -> str:
        assert self._container is not None
        out, err = await asyncio.to_thread(self._container.get_logs)
        return (out + err).decode(errors="replace")[-2000:]

    async def monitor_get(self, path: str) -> tuple[int, str]:
        """Status and body of ``GET path`` on the monitoring port, inside the container."""
        if self._container is None:
            return 0, "container not created"
        command = ["wget", "-q", "-O", "-", MONITOR + path]
        try:
            code, output = await asyncio.to_thread(self._container.exec, command)
        except Exception as exc:  # not running, daemon gone, ...
            return 0, repr(exc)
        text = (output or b"").decode(errors="replace")
        if code == 0:
            return 200, text
        status = re.search(r"HTTP/[\d.]+ (\d{3})", text)  # busybox wget: "server returned error"
        return (int(status.group(1)) if status else 0), text

    async def _end(self, sig: signal.Signals) -> None:
        """docker kill (SIGKILL) or docker stop (SIGTERM, then SIGKILL after a timeout)."""
        if not self._up or self._container is None:
            return
        self._up = False
        wrapped = self._container.get_wrapped_container()
        try:
            if sig == signal.SIGKILL:
                await asyncio.to_thread(wrapped.kill)
            else:
                await asyncio.to_thread(wrapped.stop, timeout=_STOP_TIMEOUT)
        except Exception as exc:  # already stopped (409), removed, ...
            log.debug("container %s: %s failed: %r", self._name, sig.name, exc)

    async def close(self) -> None:
        """Remove the container and its store. Safe to call twice."""
        container, self._container = self._container, None
        self._up = False
        if container is not None:
            await asyncio.to_thread(_remove, container)


def _remove(container: DockerContainer) -> None:
    try:
        container.stop(force=True, delete_volume=True)  # testcontainers: docker rm -f -v
    except Exception as exc:
        log.warning("could not remove a test container: %r", exc)


async def _says_info(port: int) -> bool:
    """Whether 127.0.0.1:port greets like nats-server (Docker's proxy accepts connections
    before the server in the container listens, then closes them)."""
    try:
        async with asyncio.timeout(1.0):
            reader, writer = await asyncio.open_connection(LOOPBACK, port)
            try:
                line = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError):
        return False
    return line.startswith(b"INFO ")


class ContainerCluster(EmbeddedCluster):
    """compose.yaml's 3-node cluster in containers, with EmbeddedCluster's interface; node
    monitoring is read inside each container (``monitor``), so ``monitor_url`` has none."""

    def __init__(self) -> None:
        super().__init__(3)  # node.conf routes to exactly n1, n2 and n3
        self._network: Network | None = None
        self._containers: tuple[NatsContainer, ...] = ()

    def monitor_url(self, index: int) -> str:
        raise ServerError(
            "container monitoring is reachable only inside each container, as in "
            "compose.yaml: use monitor(index, path)"
        )

    async def _start_once(self) -> None:
        config, ports = NODE_CONF.read_bytes(), _free_ports(len(self.names))
        self._network = network = await asyncio.to_thread(_new_network)
        self._containers = tuple(
            NatsContainer(name=name, config=config, network=network, port=port)
            for name, port in zip(self.names, ports, strict=True)
        )
        self._nodes = self._containers
        nodes = self._containers
        results = await asyncio.gather(*(node.start() for node in nodes), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _monitor_get(self, index: int, path: str) -> tuple[int, str]:
        return await self._containers[index].monitor_get(path)

    async def _stop_all(self) -> None:
        try:
            await super()._stop_all()
        finally:
            network, self._network = self._network, None
            self._containers = ()
            if network is not None:
                await asyncio.to_thread(_remove_network, network)


def _new_network() -> Network:
    from testcontainers.core.network import Network

    return Network(docker_network_kw={"labels": {LABEL: "cluster"}}).create()


def _remove_network(network: Network) -> None:
    try:
        network.remove()
    except Exception as exc:
        log.warning("could not remove a test network: %r", exc)
