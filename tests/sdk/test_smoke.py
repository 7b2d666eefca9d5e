from __future__ import annotations

import asyncio

import eventwire
from eventwire import Event, KnowledgeShared
from tests.conftest import make_identity


async def test_publish_reaches_subscriber(bus: eventwire.Bus) -> None:
    alice = make_identity("alice", bus.keyring)
    seen: list[Event] = []
    done = asyncio.Event()

    async def handler(event: Event) -> None:
        seen.append(event)
        done.set()

    async with bus.subscribe("knowledge.*", handler, durable="reader"):
        ack = await bus.publish(KnowledgeShared(topic="ml", content="x"), identity=alice)
        await asyncio.wait_for(done.wait(), 5)
    assert [e.id for e in seen] == [ack.event_id]
    assert seen[0].source == "acme/alice"
