"""Event-time order and causal order on an embedded server.

Run it with ``python examples/order.py``. A sensor publishes readings out of order, each
signed with the time it was taken (``event_time``); a dashboard handles them in event-time
order through an :class:`EventTimeOrder` (up to 2 s of disorder tolerated). Then alice
asks, bob answers with a vector clock that includes alice's question, and carol, behind a
:class:`CausalOrder`, handles the answer only after the question. Exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

import eventwire
from eventwire import (
    Agent,
    CausalOrder,
    Clock,
    CustomEvent,
    Event,
    EventTimeOrder,
    Identity,
    Keyring,
)

TENANT = "acme"
START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


async def main() -> None:
    keys = {name: Identity.generate(TENANT, name) for name in ("sensor", "dash", "alice", "bob")}
    keys["carol"] = Identity.generate(TENANT, "carol")
    agents = {name: Agent(name, identity=key) for name, key in keys.items()}
    readings: list[int] = []
    by_time = EventTimeOrder(max_lateness=2.0, capacity=32, idle=0.3)

    @agents["dash"].on("custom.reading", max_in_flight=by_time.capacity)
    @by_time.wrap
    async def reading(event: Event) -> None:
        assert isinstance(event.data, int)
        readings.append(event.data)

    bob_clock, carol_clock = Clock(f"{TENANT}/bob"), Clock(f"{TENANT}/carol")
    bob_causal = CausalOrder(clock=bob_clock)
    carol_causal = CausalOrder(timeout=5.0, clock=carol_clock)
    heard: list[str] = []

    @agents["bob"].on("custom.chat.question")
    @bob_causal.wrap
    async def answer(event: Event) -> None:
        item = CustomEvent("custom.chat.answer", "answer", "42")
        await agents["bob"].publish(item, clock=bob_clock)  # follows the question

    @agents["carol"].on("custom.chat.>", max_in_flight=8)
    @carol_causal.wrap
    async def listen(event: Event) -> None:
        heard.append(f"{event.type} {event.vclock}")

    async with (
        eventwire.connect(tenant=TENANT, keyring=Keyring.of(*keys.values())) as bus,
        contextlib.AsyncExitStack() as serving,
    ):
        for agent in agents.values():
            await serving.enter_async_context(agent.serve(bus))
        for second in (1, 0, 3, 2, 5, 4, 6):  # shuffled, each at most 1 s late
            item = CustomEvent("custom.reading", "reading", second)
            await agents["sensor"].publish(item, event_time=START + timedelta(seconds=second))
        question = CustomEvent("custom.chat.question", "question", "six times seven?")
        await agents["alice"].publish(question, clock=Clock(f"{TENANT}/alice"))
        async with asyncio.timeout(30):
            while len(readings) < 7 or len(heard) < 2:  # noqa: ASYNC110 - a demo's wait
                await asyncio.sleep(0.05)
    print(f"readings in event-time order: {readings}")
    print("carol heard, in causal order:", *heard, sep="\n  ")
    assert readings == sorted(readings)
    assert heard[0].startswith("question")


if __name__ == "__main__":
    asyncio.run(main())
