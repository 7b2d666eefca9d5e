"""``agent.run(bus)`` in a script, for ``tests/sdk/test_runner.py``:
``python -m tests.sdk._run_script`` serves one agent on an embedded server until SIGINT or
SIGTERM, then prints whether the signal handlers in place before were put back, and the
embedded server's pid and store (for the test to check both are gone once it exits).
"""

from __future__ import annotations

import asyncio
import signal

import eventwire
from eventwire import Agent

SIGNALS = (signal.SIGINT, signal.SIGTERM)


async def main() -> None:
    agent = Agent("solo", tenant="acme")
    before = [signal.getsignal(sig) for sig in SIGNALS]
    async with eventwire.connect(tenant="acme") as bus:
        await agent.run(bus)
        after = [signal.getsignal(sig) for sig in SIGNALS]
        print("handlers restored" if after == before else f"handlers changed: {after}")
        assert bus.server is not None
        print(f"embedded server pid {bus.server.pid} store {bus.server.store_dir}")
    print("run returned, bus closed", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
