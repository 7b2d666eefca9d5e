"""``serve_health``: /healthz and /readyz over real HTTP, for a bus and an agent."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

import pytest

import eventwire
from eventwire import Agent, ConfigError, InvalidArgument, serve_health
from tests.conftest import TENANT, make_identity, wait_until

if TYPE_CHECKING:
    from eventwire import EmbeddedServer, Keyring


def _get(url: str, method: str = "GET") -> tuple[int, str, Any]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers["Content-Type"], json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers["Content-Type"], json.loads(error.read())


async def get(url: str, method: str = "GET") -> tuple[int, str, Any]:
    return await asyncio.to_thread(_get, url, method)


async def test_a_healthy_bus_answers_200_on_both_probes(bus: eventwire.Bus) -> None:
    async with serve_health(bus) as server:
        assert server.url.startswith("http://127.0.0.1:")
        for path in ("/healthz", "/readyz", "/health"):
            status, content_type, body = await get(server.url + path)
            assert (status, content_type) == (200, "application/json")
            assert (body["status"], body["score"], body["live"], body["ready"]) == (
                "ok", 1.0, True, True,
            )  # fmt: skip
        assert (await get(server.url + "/nope"))[0] == 404
        assert (await get(server.url + "/healthz", method="POST"))[0] == 405


async def test_an_agent_not_ready_before_serving_then_ready_then_not_live(
    bus: eventwire.Bus,
) -> None:
    agent = Agent("probed", identity=make_identity("probed", bus.keyring), tenant=TENANT)
    async with serve_health(agent) as server:
        assert (await get(server.url + "/healthz"))[0] == 200
        status, _, body = await get(server.url + "/readyz")
        assert (status, body["ready"]) == (503, False)
        async with agent.serve(bus):
            assert (await get(server.url + "/readyz"))[0] == 200
        status, _, body = await get(server.url + "/healthz")
        assert (status, body["live"], body["status"]) == (503, False, "failing")
        assert body["reasons"][0]["name"] == "state"


async def test_a_lost_server_fails_readiness_but_not_liveness(
    own_server: EmbeddedServer, root: str, keyring: Keyring
) -> None:
    async with (
        eventwire.connect(own_server.url, tenant=TENANT, keyring=keyring, root=root) as bus,
        serve_health(bus) as server,
    ):
        await own_server.kill()
        await wait_until(lambda: not bus.connection.is_connected)
        assert (await get(server.url + "/healthz"))[0] == 200
        status, _, body = await get(server.url + "/readyz")
        assert (status, body["reasons"][0]["name"]) == (503, "connection")
        await own_server.restart()


async def test_garbage_gets_400_and_the_server_stops_on_exit(bus: eventwire.Bus) -> None:
    async with serve_health(bus) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"NONSENSE\r\n\r\n")
        answer = await reader.read()
        writer.close()
        await writer.wait_closed()
        assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
        port = server.port
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_bad_ports_and_targets_are_refused(bus: eventwire.Bus) -> None:
    for port in (-1, 65536, True, "80"):
        with pytest.raises(InvalidArgument, match="port"):
            serve_health(bus, port)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="health"):
        serve_health(object())  # type: ignore[arg-type]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ConfigError, match="cannot serve health"):
            async with serve_health(bus, taken.getsockname()[1]):
                pass
