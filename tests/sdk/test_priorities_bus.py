"""Priorities on a real server: a backlog of 1,000 low and 100 high events; the high ones
are handled first, the low ones are not starved (order measured, never timed)."""

from __future__ import annotations

import asyncio

import pytest

import eventwire
from eventwire import Agent, CustomEvent, Event, InvalidArgument
from tests.conftest import make_identity, wait_until


async def test_high_priority_events_are_handled_first_without_starving_low_ones(
    bus: eventwire.Bus,
) -> None:
    worker = Agent("worker", identity=make_identity("worker", bus.keyring))
    order: list[str] = []

    @worker.on("custom.low", priority="low")
    async def low(event: Event) -> None:
        order.append("low")
        await asyncio.sleep(0.002)  # some work, so that both subscriptions have events waiting

    @worker.on("custom.high", priority="high")
    async def high(event: Event) -> None:
        order.append("high")
        await asyncio.sleep(0.002)

    producer = make_identity("producer", bus.keyring)
    await bus.publish_many(
        [CustomEvent("custom.low", "low", i) for i in range(1000)], identity=producer
    )
    await bus.publish_many(
        [CustomEvent("custom.high", "high", i) for i in range(100)], identity=producer
    )
    async with worker.serve(bus):
        await wait_until(lambda: len(order) == 1100, timeout=60)
    last_high = max(i for i, kind in enumerate(order) if kind == "high")
    lows_meanwhile = order[:last_high].count("low")
    # The high subscription starts first; once both have events waiting they share the one
    # slot 16:1: the 100 high events are through after about 106 handled, and low ones
    # kept getting slots meanwhile (one in 17).
    assert last_high < 120, (last_high, lows_meanwhile)
    assert 2 <= lows_meanwhile <= 10, (last_high, lows_meanwhile)
    assert order.count("low") == 1000


def test_an_unknown_priority_is_refused() -> None:
    with pytest.raises(InvalidArgument, match=r"^priority: must be one of high, normal, low"):
        Agent("worker").on("custom.x", priority="urgent")
