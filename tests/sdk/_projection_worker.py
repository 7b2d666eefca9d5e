"""A projection in its own process, for the kill test: ``python -m tests.sdk._projection_worker
URL ROOT TENANT AGENT SEED_HEX OUT``.

It runs the ``balances`` projection (batches of 7) over ``custom.es.account.*`` as the
agent whose seed it is given, writes each event id it applies to ``OUT`` (one per line,
flushed) and sleeps a little per event, so the test can SIGKILL it mid-catch-up.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import eventwire
from eventwire import Event, Feed, Identity, Keyring, Principal, Projection
from tests.sdk.test_projections import Balances


async def main(args: list[str]) -> None:
    url, root, tenant, agent, seed_hex, out = args
    identity = Identity(Principal(tenant, agent), bytes.fromhex(seed_hex))
    log = Path(out).open("a", buffering=1)  # noqa: SIM115, ASYNC230 - open until killed

    class Logged(Balances):
        def apply(self, event: Event) -> None:
            super().apply(event)
            log.write(event.id + "\n")
            time.sleep(0.005)  # slow enough to be killed in the middle

    feed = Feed("custom.es.account.*", batch=7)
    async with (
        eventwire.connect(url, tenant=tenant, root=root, keyring=Keyring.of(identity)) as bus,
        Projection(bus, Logged, name="balances", identity=identity, feed=feed),
    ):
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:7]))
