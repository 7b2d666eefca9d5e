"""Idempotent consumers record each handled id, then ack: pipelined, but never out of order.

An event is acknowledged only once the record of its id is stored; stopping settles every
handled event first; a record that cannot be stored leaves its event unacknowledged.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import nats.errors

from eventwire import CustomEvent, Event
from eventwire import _settle as settle
from eventwire_security import consumer_name
from tests.conftest import make_identity, wait_until

if TYPE_CHECKING:
    import pytest

    import eventwire


async def test_every_handled_event_is_recorded_and_acked_before_stop_returns(
    bus: eventwire.Bus,
) -> None:
    alice = make_identity("alice", bus.keyring)
    handled: list[str] = []

    async def handler(event: Event) -> None:
        handled.append(event.id)

    acks = await bus.publish_many(
        [CustomEvent("custom.s", "s", i) for i in range(300)], identity=alice
    )
    async with bus.subscribe("custom.>", handler, durable="s", idempotent=True, batch=64) as sub:
        await wait_until(lambda: len(handled) == 300)
    # stop() has returned: every record is stored and every event acknowledged
    assert sorted(handled) == sorted(ack.event_id for ack in acks)
    assert sub.stats.handled == 300
    name = consumer_name("s", "custom.>")
    for _ in range(100):  # acks are one-way messages: the server applies them a moment later
        info = await bus.jetstream.consumer_info(bus.stream, name)
        if info.num_ack_pending == 0:
            break
        await asyncio.sleep(0.02)
    assert (info.num_ack_pending, info.num_pending, info.num_redelivered) == (0, 0, 0)
    processed = bus._link.processed if bus._link else None
    assert processed is not None
    for ack in acks:
        assert await processed.seen(name, ack.event_id)


async def test_an_event_whose_record_cannot_be_stored_is_not_acked(
    bus: eventwire.Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settle, "_ATTEMPTS", 1)
    processed = bus._link.processed if bus._link else None
    assert processed is not None

    async def unavailable(*_: object) -> None:
        raise nats.errors.TimeoutError  # the bucket does not answer

    monkeypatch.setattr(processed, "mark_later", unavailable)
    monkeypatch.setattr(processed, "mark", unavailable)
    alice = make_identity("alice", bus.keyring)
    calls: list[str] = []

    async def handler(event: Event) -> None:
        calls.append(event.id)

    ack = await bus.publish(CustomEvent("custom.f", "f"), identity=alice)
    name = consumer_name("f", "custom.>")
    async with bus.subscribe("custom.>", handler, durable="f", idempotent=True) as sub:
        await wait_until(lambda: sub.stats.handled >= 1)
        await wait_until(lambda: sub.stats.delivered >= 2, timeout=15)  # naked: delivered again
        info = await bus.jetstream.consumer_info(bus.stream, name)
        assert info.ack_floor.stream_seq < ack.seq  # never acknowledged
    assert set(calls) == {ack.event_id}  # handled again: what the record could not prevent
