"""``eventwire stuck`` (to become ``eventwire workflows stuck``): the steps reported stuck,
verified against the trackers' keys, as a table or JSON lines."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from eventwire import ChoreographyTracker
from eventwire_security import KeyEntry
from tests.conftest import TENANT, make_identity, wait_until
from tests.sdk.test_choreography import ORDER, TICK, step
from tests.sdk.test_cli import cli

# ``eventwire stuck`` until it is registered in the workflows group: ("workflows", "stuck")
STUCK = ("workflows", "stuck")

if TYPE_CHECKING:
    from pathlib import Path

    from eventwire import Bus, EmbeddedServer


async def test_stuck_lists_the_reports_it_can_verify(
    bus: Bus, nats_server: EmbeddedServer, root: str, tmp_path: Path
) -> None:
    shop, watcher = make_identity("shop", bus.keyring), make_identity("watcher", bus.keyring)
    async with ChoreographyTracker(bus, [ORDER], identity=watcher, tick=TICK) as observing:
        await step(bus, shop, 0, "run-late")
        await step(bus, shop, 0, "run-lost")
        await wait_until(lambda: observing.stats.stuck == 2)
        await step(bus, shop, 1, "run-late")
        await wait_until(lambda: observing.stats.recovered == 1)
    entry = tmp_path / "watcher.json"
    entry.write_text(json.dumps(KeyEntry.from_trusted(watcher.trusted()).to_json()))
    where = ("--url", nats_server.url, "--root", root, "--tenant", TENANT)
    code, out = await cli(*STUCK, *where, "--trust", str(entry))
    code_open, out_open = await cli(*STUCK, *where, "--trust", str(entry), "--open", "--json")
    code_other, out_other = await cli(*STUCK, *where, "--trust", str(entry), "--flow", "other")
    code_untrusted, out_untrusted = await cli(*STUCK, *where)
    assert code == 0, out
    for text in ("run-late", "run-lost", "1: custom.payment.captured", "0: custom.order.placed"):
        assert text in out
    assert f"{TENANT}/watcher" in out
    assert out.count("recovered") == 1
    assert code_open == 0, out_open
    [line] = out_open.splitlines()
    report = json.loads(line)
    assert (report["flow"], report["correlation"], report["step_index"]) == ("order", "run-lost", 1)
    assert report["recovered"] is False
    assert report["recovered_at"] is None
    assert report["signer"] == f"{TENANT}/watcher"
    assert code_other == 0, out_other
    assert "no stuck steps" in out_other
    assert code_untrusted == 0, out_untrusted
    assert "no stuck steps" in out_untrusted  # the reports' signer is not trusted here


async def test_stuck_without_a_server_is_one_line() -> None:
    code, out = await cli(*STUCK, "--url", "nats://127.0.0.1:1")
    assert code == 1
    assert out.startswith("error:")
    assert "Traceback" not in out
