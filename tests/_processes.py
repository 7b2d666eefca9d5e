"""nats-server processes started from rendered config files, for the TLS and cluster tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from typing import TYPE_CHECKING

from eventwire import find_nats_server

if TYPE_CHECKING:
    from pathlib import Path

LOOPBACK = "127.0.0.1"


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports free right now (bound together, then released)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind((LOOPBACK, 0))
        return [sock.getsockname()[1] for sock in socks]


async def start(config: Path, log: Path, port: int) -> asyncio.subprocess.Process:
    """``nats-server -c config``, once it accepts connections on ``port``."""
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            str(find_nats_server()), "-c", str(config),
            stdout=out, stderr=out, stdin=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
    try:
        async with asyncio.timeout(20):
            while True:
                if proc.returncode is not None:
                    raise AssertionError(f"nats-server exited; see {log}")
                with contextlib.suppress(OSError):
                    _, writer = await asyncio.open_connection(LOOPBACK, port)
                    writer.close()
                    await writer.wait_closed()
                    return proc
                await asyncio.sleep(0.05)
    except BaseException:
        await stop(proc)
        raise


async def healthy(monitor_port: int, timeout: float = 30.0) -> None:
    """Wait until the server's ``/healthz`` answers 200 (in a cluster: JetStream has a meta
    leader and is current), polling its monitoring port on 127.0.0.1."""
    status = b"not asked yet"
    async with asyncio.timeout(timeout):
        while True:
            with contextlib.suppress(OSError):
                reader, writer = await asyncio.open_connection(LOOPBACK, monitor_port)
                writer.write(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                status = (await reader.read()).split(b"\r\n", 1)[0]
                writer.close()
                await writer.wait_closed()
                if status.split(b" ")[1:2] == [b"200"]:
                    return
            await asyncio.sleep(0.1)


async def stop(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM, and SIGKILL if it has not exited within 10 s."""
    if proc.returncode is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()


async def cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[int, str]:
    """``eventwire ARGS`` in a subprocess: its exit code and its output (stdout and stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from eventwire.cli import main; main()", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", **(env or {})}, cwd=cwd,
    )  # fmt: skip
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()
