"""A choreography tracked on an embedded server: orders, payments and shipments, no orchestrator.

Run it with ``python examples/choreography.py``: it starts a local nats-server, declares the
flow ``order placed -> payment captured (within 1 s) -> order shipped (within 1 s)``, runs
two trackers side by side (they share the work), and plays three orders: one on time, one
whose payment never comes, one whose payment comes late. An operations agent receives the
signed ``system.coordination.stuck`` and ``recovered`` reports. One tracker is restarted:
nothing is reported twice. It prints what the trackers reported, read back from the
stream, and exits 0.
"""

from __future__ import annotations

import asyncio

import eventwire
from eventwire import (
    Agent,
    Choreography,
    ChoreographyTracker,
    CustomEvent,
    Event,
    FlowStep,
    FlowStuck,
    Identity,
    Keyring,
)

TENANT = "acme"
ORDER = Choreography(
    "order",
    [
        FlowStep("custom.order.placed", by="shop"),
        FlowStep("custom.payment.captured", within=1, by="payments"),
        FlowStep("custom.order.shipped", within=1, by="warehouse"),
    ],
)


async def main() -> None:
    keyring = Keyring()
    people = {name: Identity.generate(TENANT, name) for name in ("shop", "payments", "warehouse")}
    watcher, ops = Identity.generate(TENANT, "watcher"), Identity.generate(TENANT, "ops")
    for identity in (*people.values(), watcher, ops):
        keyring.add(identity.trusted())

    async def happens(who: str, subject: str, order: str) -> None:
        event = CustomEvent(subject, subject, {"order": order})
        await bus.publish(event, identity=people[who], correlation_id=order)

    alerts: list[str] = []
    all_in = asyncio.Event()
    operations = Agent("ops", identity=ops)

    @operations.on("system.coordination.>")
    async def alert(event: Event) -> None:
        data = event.data
        assert isinstance(data, dict)
        what = "STUCK" if event.type == FlowStuck.event_type else "recovered"
        alerts.append(f"{what}: {data['correlation']} at {data['step']} (from {event.source})")
        print("  ops received", alerts[-1])
        if len(alerts) == 3:
            all_in.set()

    async with eventwire.connect(tenant=TENANT, keyring=keyring) as bus:
        first = ChoreographyTracker(bus, [ORDER], identity=watcher, tick=0.1)
        second = ChoreographyTracker(bus, [ORDER], identity=watcher, tick=0.1)
        async with operations.serve(bus), first, second:
            print("order-1 on time, order-2 never paid, order-3 paid late")
            for order in ("order-1", "order-2", "order-3"):
                await happens("shop", "custom.order.placed", order)
            await happens("payments", "custom.payment.captured", "order-1")
            await happens("warehouse", "custom.order.shipped", "order-1")
            await asyncio.sleep(1.5)  # past the payment deadline of order-2 and order-3
            await happens("payments", "custom.payment.captured", "order-3")
            await happens("warehouse", "custom.order.shipped", "order-3")
            async with asyncio.timeout(10):
                await all_in.wait()  # two stuck, one recovered
        print("restarting one tracker: what was reported is not reported again")
        async with ChoreographyTracker(bus, [ORDER], identity=watcher, tick=0.1) as again:
            await asyncio.sleep(0.5)
            reported = await again.stuck()
        published = first.stats.stuck + second.stats.stuck + again.stats.stuck
        print(f"stuck reports published: {published} (first {first.stats.stuck}, "
              f"second {second.stats.stuck}, after the restart {again.stats.stuck})")  # fmt: skip
        for entry in reported:
            state = "still missing" if entry.recovered_at is None else "arrived late"
            print(f"  {entry.correlation}: {entry.step} overdue by {entry.overdue_by:.1f}s, "
                  f"{state} (reported by {entry.signer})")  # fmt: skip
    assert [(entry.correlation, entry.recovered) for entry in reported] == [
        ("order-2", False),
        ("order-3", True),
    ]
    assert published == 2
    assert len(alerts) == 3
    print("choreography example complete")


if __name__ == "__main__":
    asyncio.run(main())
