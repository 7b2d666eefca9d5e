"""Publishing while the server is down: the event waits in an outbox on disk, then is stored.

Run it with ``python examples/outbox.py``: it starts a local nats-server, kills it, publishes
three events (each queued in the outbox file, fsync-ed, ``ack.queued``), starts the server
again on the same port and store, and prints the events once a subscriber has them: each
stored once, in order. Exits 0.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import eventwire
from eventwire import Event, Identity, Keyring, KnowledgeShared

if TYPE_CHECKING:
    from collections.abc import Callable

TENANT = "acme"


async def until(predicate: Callable[[], bool], seconds: float = 30.0) -> None:
    async with asyncio.timeout(seconds):
        while not predicate():  # noqa: ASYNC110 - polls state that no event announces
            await asyncio.sleep(0.05)


async def main() -> None:
    alice = Identity.generate(TENANT, "alice")
    received: list[Event] = []

    async def reader(event: Event) -> None:
        received.append(event)

    with tempfile.TemporaryDirectory() as tmp:
        outbox = Path(tmp) / "outbox"
        async with (
            eventwire.connect(
                tenant=TENANT, keyring=Keyring.of(alice), store_dir=str(Path(tmp) / "store"),
                outbox=outbox,
            ) as bus,  # an embedded server, kept in ``store``
            bus.subscribe("knowledge.>", reader, durable="reader"),
        ):  # fmt: skip
            assert bus.server is not None
            assert bus.outbox is not None
            await bus.server.kill()
            print("server killed")
            for n in range(3):
                fact = KnowledgeShared(topic="outages", content=f"fact {n}")
                ack = await bus.publish(fact, identity=alice, timeout=0.5, attempts=2)
                print(f"published {ack.event_id}: queued={ack.queued}")
            print(f"{bus.outbox.pending} event(s) wait in {outbox.name}")
            await bus.server.start()
            print("server started again")
            await until(lambda: len(received) == 3)
            for event in received:
                content = event.parse(KnowledgeShared).content
                print(f"stored and delivered: {event.id} {content!r}")
            print(f"outbox now holds {bus.outbox.pending} event(s)")


if __name__ == "__main__":
    asyncio.run(main())
