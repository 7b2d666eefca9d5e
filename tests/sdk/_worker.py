"""A consumer in its own process, for crash tests: ``python -m tests.sdk._worker ...``.

It subscribes ``custom.>`` with a durable name, writes each event id it starts handling
to a file (one per line, flushed), and then hangs until killed, or finishes if the event
data says so.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import eventwire
from eventwire import Event, Keyring, RetryPolicy, TrustedKey
from eventwire_security import Principal, PublicKey


async def main(args: list[str]) -> None:
    url, root, tenant, signer, public_hex, out = args
    keyring = Keyring([TrustedKey(PublicKey(bytes.fromhex(public_hex)), Principal(tenant, signer))])
    log = Path(out).open("a", buffering=1)  # noqa: SIM115, ASYNC230 - open until killed

    async def handler(event: Event) -> None:
        log.write(event.id + "\n")
        if event.data != "quick":
            await asyncio.Event().wait()  # hang: the test kills us here

    retry = RetryPolicy(max_deliveries=2, initial_delay=0.1, jitter=0)
    async with (
        eventwire.connect(url, tenant=tenant, root=root, keyring=keyring) as bus,
        bus.subscribe("custom.>", handler, durable="worker", retry=retry, ack_wait=1),
    ):
        log.write("ready\n")
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:7]))
