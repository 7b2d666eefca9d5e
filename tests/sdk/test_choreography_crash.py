"""A choreography tracker SIGKILLed while it reports: the tracker that takes over reports
every overdue run exactly once (what the dead one published but had not marked yet is
dropped by the stream as a duplicate)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from eventwire import ChoreographyTracker, CustomEvent, read_stuck
from tests.conftest import TENANT, make_identity, wait_until
from tests.sdk.test_choreography import ORDER, SUBJECTS, TICK, stored_reports

if TYPE_CHECKING:
    from eventwire import Bus, EmbeddedServer

ROOT_DIR = Path(__file__).parent.parent.parent
RUNS = 500
WORKER = """
import asyncio, sys
import eventwire
from eventwire import ChoreographyTracker, Identity, Keyring, Principal
from tests.sdk.test_choreography import ORDER

async def main(url, root, tenant, watcher_seed, shop_seed):
    watcher = Identity(Principal(tenant, "watcher"), bytes.fromhex(watcher_seed))
    shop = Identity(Principal(tenant, "shop"), bytes.fromhex(shop_seed))
    keyring = Keyring.of(watcher, shop)
    async with eventwire.connect(url, tenant=tenant, root=root, keyring=keyring) as bus:
        async with ChoreographyTracker(bus, [ORDER], identity=watcher, tick=0.1):
            print("ready", flush=True)
            await asyncio.Event().wait()

asyncio.run(main(*sys.argv[1:]))
"""


async def test_a_tracker_killed_while_reporting_is_taken_over_without_repeats(
    nats_server: EmbeddedServer, bus: Bus, root: str
) -> None:
    shop, watcher = make_identity("shop", bus.keyring), make_identity("watcher", bus.keyring)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WORKER, nats_server.url, root, TENANT, watcher.seed.hex(),
        shop.seed.hex(),
        cwd=ROOT_DIR, env={**os.environ, "PYTHONPATH": str(ROOT_DIR)},
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(30):
            assert await proc.stdout.readline() == b"ready\n"
        placed = [CustomEvent(SUBJECTS[0], "placed") for _ in range(RUNS)]
        for start in range(0, RUNS, 100):
            await asyncio.gather(*(
                bus.publish(item, identity=shop, correlation_id=f"run-{start + n}")
                for n, item in enumerate(placed[start : start + 100])
            ))  # fmt: skip
        async with asyncio.timeout(30):
            while await stored_reports(bus) == 0:  # noqa: ASYNC110 - polls the stream
                await asyncio.sleep(0.005)
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    by_the_dead = await stored_reports(bus)

    async with ChoreographyTracker(bus, [ORDER], identity=watcher, tick=TICK) as heir:
        await wait_until(lambda: heir.stats.stuck + by_the_dead >= RUNS, timeout=60)
        await asyncio.sleep(1.0)  # a few more ticks: nothing is reported twice
    reports = [(r.correlation, r.step_index) for r in await read_stuck(bus)]
    assert 0 < by_the_dead < RUNS  # killed while reporting
    assert await stored_reports(bus) == RUNS
    assert sorted(reports) == sorted((f"run-{n}", 1) for n in range(RUNS))
    assert heir.stats.stuck == RUNS - by_the_dead
