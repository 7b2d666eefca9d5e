"""The priority gate: high before normal before low under load, nobody starves (order
measured, never timed)."""

from __future__ import annotations

import asyncio

import pytest

from eventwire import InvalidArgument, Priority, PriorityGate
from tests.conftest import wait_until

HIGH, NORMAL, LOW = Priority.HIGH, Priority.NORMAL, Priority.LOW


async def run_backlog(gate: PriorityGate, backlog: list[Priority]) -> list[Priority]:
    """Queue every item behind a held slot, then let them through; return the order in
    which they got a slot."""
    order: list[Priority] = []
    await gate.acquire(Priority.NORMAL)  # hold the only slot while the backlog queues

    async def work(priority: Priority) -> None:
        async with gate.slot(priority):
            order.append(priority)
            await asyncio.sleep(0)

    async with asyncio.TaskGroup() as group:
        for priority in backlog:
            group.create_task(work(priority))
        await wait_until(lambda: gate.waiting() == len(backlog))
        gate.release()
    return order


async def test_high_finishes_first_and_low_is_not_starved() -> None:
    gate = PriorityGate(1)
    order = await run_backlog(gate, [Priority.LOW] * 1000 + [Priority.HIGH] * 100)
    last_high = max(i for i, p in enumerate(order) if p is Priority.HIGH)
    lows_before = order[:last_high].count(Priority.LOW)
    # 16:1 against low alone: the 100 high ones are through after ~106 slots, and low
    # got its one slot in 17 meanwhile
    assert last_high < 110
    assert 4 <= lows_before <= 7
    assert len(order) == 1100


async def test_three_priorities_share_slots_16_4_1_while_all_wait() -> None:
    gate = PriorityGate(1)
    backlog = [Priority.LOW] * 100 + [Priority.NORMAL] * 100 + [Priority.HIGH] * 100
    order = await run_backlog(gate, backlog)
    first = order[:84]  # four rounds of 21
    assert (first.count(HIGH), first.count(NORMAL), first.count(LOW)) == (64, 16, 4)
    assert gate.granted == {Priority.HIGH: 100, Priority.NORMAL: 101, Priority.LOW: 100}


async def test_within_one_priority_first_come_first_served() -> None:
    gate = PriorityGate(1)
    seen: list[int] = []
    await gate.acquire(Priority.LOW)

    async def work(n: int) -> None:
        async with gate.slot(Priority.LOW):
            seen.append(n)

    async with asyncio.TaskGroup() as group:
        for n in range(20):
            group.create_task(work(n))
        await wait_until(lambda: gate.waiting() == 20)
        gate.release()
    assert seen == list(range(20))


async def test_an_idle_gate_admits_up_to_its_slots_at_once() -> None:
    gate = PriorityGate(3)
    for _ in range(3):
        await gate.acquire(Priority.LOW)
    assert (gate.in_use, gate.waiting()) == (3, 0)
    waiter = asyncio.create_task(gate.acquire(Priority.HIGH))
    await asyncio.sleep(0)
    assert gate.waiting(Priority.HIGH) == 1
    gate.release()
    await waiter
    assert (gate.in_use, gate.waiting()) == (3, 0)


async def test_a_cancelled_waiter_leaves_the_queue_and_keeps_no_slot() -> None:
    gate = PriorityGate(1)
    await gate.acquire(Priority.NORMAL)
    waiter = asyncio.create_task(gate.acquire(Priority.HIGH))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert gate.waiting() == 0
    gate.release()
    assert gate.in_use == 0


async def test_a_waiter_cancelled_as_it_is_granted_passes_the_slot_on() -> None:
    gate = PriorityGate(1)
    await gate.acquire(Priority.NORMAL)
    first = asyncio.create_task(gate.acquire(Priority.HIGH))
    second = asyncio.create_task(gate.acquire(Priority.HIGH))
    await asyncio.sleep(0)
    gate.release()  # granted to first, which is cancelled before it runs
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await second
    assert (gate.in_use, gate.waiting()) == (1, 0)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"slots": 0}, "slots"),
        ({"slots": True}, "slots"),
        ({"slots": 1, "weights": {Priority.HIGH: 1}}, "weights"),
        (
            {"slots": 1, "weights": {Priority.HIGH: 2, Priority.NORMAL: 0, Priority.LOW: 1}},
            "weights",
        ),
    ],
)
def test_bad_gate_settings_are_refused(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument, match=rf"^{field}: "):
        PriorityGate(**kwargs)  # type: ignore[arg-type]
