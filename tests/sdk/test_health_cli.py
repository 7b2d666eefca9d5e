"""``eventwire health``: the bus's and each verified live agent's health, as a table or
JSON lines, on a real server."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from eventwire import Agent
from eventwire_security import KeyEntry
from tests.conftest import TENANT, make_identity
from tests.sdk.test_cli import cli

if TYPE_CHECKING:
    from pathlib import Path

    import eventwire
    from eventwire import EmbeddedServer


def entry_file(agent: Agent, tmp_path: Path) -> str:
    path = tmp_path / f"{agent.name}.json"
    path.write_text(json.dumps(KeyEntry.from_trusted(agent.identity.trusted()).to_json()))
    return str(path)


async def test_health_shows_the_bus_and_each_trusted_agent(
    bus: eventwire.Bus, nats_server: EmbeddedServer, root: str, tmp_path: Path
) -> None:
    one = Agent("one", identity=make_identity("one", bus.keyring), tenant=TENANT)
    two = Agent("two", identity=make_identity("two", bus.keyring), tenant=TENANT)
    where = ("--url", nats_server.url, "--root", root, "--tenant", TENANT, "--registry-ttl", "2")
    trust = ("--trust", entry_file(one, tmp_path), "--trust", entry_file(two, tmp_path))
    async with one.serve(bus), two.serve(bus):
        code, out = await cli("health", *where, *trust)
        code_json, lines = await cli("health", *where, *trust, "--json", "--agent", "two")
    assert code == 0, out
    assert f"agent one ({one.instance})" in out
    assert f"agent two ({two.instance})" in out
    assert f"bus {TENANT}/{root}" in out
    assert "ok" in out
    assert code_json == 0, lines
    found = [json.loads(line) for line in lines.splitlines() if line.strip()]
    assert [record["subject"] for record in found] == [
        f"bus {TENANT}/{root}",
        f"agent two ({two.instance})",
    ]
    assert all(record["status"] == "ok" and record["ready"] for record in found)


async def test_health_without_a_server_is_one_line() -> None:
    code, out = await cli("health", "--url", "nats://127.0.0.1:1")
    assert code == 1
    assert out.startswith("error:")
    assert "Traceback" not in out
