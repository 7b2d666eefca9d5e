from __future__ import annotations

import os
from typing import TYPE_CHECKING

import nats
import pytest

import eventwire
from eventwire import ConnectionFailed, EmbeddedServer, ServerError

if TYPE_CHECKING:
    from pathlib import Path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_embedded_server_listens_on_loopback_and_cleans_up() -> None:
    async with EmbeddedServer() as server:
        pid, store = server.pid, server.store_dir
        assert server.url.startswith("nats://127.0.0.1:")
        assert pid is not None
        assert _alive(pid)
        nc = await nats.connect(server.url)
        assert nc.is_connected
        await nc.close()
    assert not _alive(pid)
    assert not store.exists()


async def test_server_is_stopped_when_the_body_raises() -> None:
    pids: list[int | None] = []

    async def body() -> None:
        async with EmbeddedServer() as server:
            pids.append(server.pid)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await body()
    assert pids[0] is not None
    assert not _alive(pids[0])


async def test_kill_and_restart_keeps_port_and_stored_events(tmp_path: Path) -> None:
    async with EmbeddedServer(store_dir=tmp_path) as server:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await js.add_stream(name="s", subjects=["s.>"])
        await js.publish("s.x", b"kept")
        await nc.close()
        port = server.port
        await server.kill()
        assert not server.running
        await server.start()
        assert server.port == port
        nc = await nats.connect(server.url)
        msg = await nc.jetstream().get_msg("s", 1)
        assert msg.data == b"kept"
        await nc.close()


async def test_missing_binary_is_a_typed_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTWIRE_NATS_SERVER", "/nonexistent/nats-server")
    with pytest.raises(ServerError, match="EVENTWIRE_NATS_SERVER"):
        async with EmbeddedServer():
            pass


async def test_server_that_exits_at_start_is_a_typed_error() -> None:
    with pytest.raises(ServerError, match="exited"):
        async with EmbeddedServer(extra_args=("--no-such-flag",)):
            pass


async def test_connect_without_url_runs_an_embedded_server() -> None:
    async with eventwire.connect() as bus:
        server = bus.server
        assert server is not None
        assert server.running
        assert bus.url == server.url
    assert not server.running


async def test_connect_to_a_closed_port_is_a_typed_error() -> None:
    async with EmbeddedServer() as server:
        url = server.url
    with pytest.raises(ConnectionFailed, match="cannot connect"):
        async with eventwire.connect(url, connect_timeout=1.0):
            pass
