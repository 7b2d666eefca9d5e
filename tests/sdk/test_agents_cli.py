"""``eventwire agents``: live agents with load, circuits, heartbeats and suspicion."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import eventwire
from eventwire import Agent, Event
from eventwire_security import KeyEntry
from tests.conftest import TENANT, make_identity
from tests.sdk.test_cli import cli

if TYPE_CHECKING:
    from pathlib import Path

    from eventwire import EmbeddedServer


async def test_agents_lists_the_live_agents_it_can_verify(
    bus: eventwire.Bus, nats_server: EmbeddedServer, root: str, tmp_path: Path
) -> None:
    summarizer = Agent(
        "summarizer", capabilities=["summarize"], identity=make_identity("summarizer", bus.keyring)
    )
    other = Agent("other", identity=make_identity("other", bus.keyring))

    @summarizer.on("capability.summarize.help")
    async def handle(event: Event) -> None: ...

    entry = tmp_path / "summarizer.json"
    entry.write_text(json.dumps(KeyEntry.from_trusted(summarizer.identity.trusted()).to_json()))
    where = ("--url", nats_server.url, "--root", root, "--tenant", TENANT, "--registry-ttl", "2")
    async with summarizer.serve(bus), other.serve(bus):
        code, out = await cli("agents", *where, "--trust", str(entry))
        code_cap, out_cap = await cli("agents", *where, "--capability", "x", "--trust", str(entry))
    assert code == 0, out
    assert "summarizer" in out
    assert summarizer.instance in out
    assert "summarize" in out
    assert "alive" in out
    assert "0+0/1" in out  # in flight + queued / capacity
    assert "other" not in out  # its key was not given: its entry is not verified here
    assert code_cap == 0, out_cap
    assert "summarizer" not in out_cap


async def test_agents_with_a_bad_trust_file_is_one_line(nats_server: EmbeddedServer) -> None:
    code, out = await cli("agents", "--url", nats_server.url, "--trust", "/nonexistent.json")
    assert code == 1
    assert out.startswith("error:")
    assert "Traceback" not in out
