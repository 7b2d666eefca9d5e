"""A fraud-style pattern on an embedded server: three failed logins then a success within
a minute raise one signed alert; a windowed count of logins per user on the side.

Run it with ``python examples/patterns.py``: it starts a local nats-server, runs a
:class:`~eventwire.PatternDetector` and a :class:`~eventwire.WindowedStream`, publishes
the logins of two users (mallory: three failures then a success; alice: one failure then
a success), prints the one alert (for mallory, caused by her successful login, listing
the four events) and each user's login counts, and exits 0.
"""

from __future__ import annotations

import asyncio

import eventwire
from eventwire import (
    MATCHED,
    Aggregation,
    CustomEvent,
    Event,
    Identity,
    Keyring,
    PatternDetector,
    Sequence,
    Step,
    Threshold,
    Window,
    WindowedStream,
    WindowResult,
)

TENANT = "acme"
FAILED = Step("custom.auth.login.failed")
SUCCEEDED = Step("custom.auth.login.succeeded")
# at least 3 failures within 60 s, then a success, the whole within 60 s (per user)
TAKEOVER = Sequence(Threshold(FAILED, at_least=3, within=60), SUCCEEDED, within=60)


async def login(bus: eventwire.Bus, web: Identity, user: str, ok: bool) -> None:
    outcome = "succeeded" if ok else "failed"
    item = CustomEvent(f"custom.auth.login.{outcome}", f"login.{outcome}", {"user": user})
    await bus.publish(item, identity=web, partition_key=user)  # the key: one user


async def main() -> None:
    web, security = Identity.generate(TENANT, "web"), Identity.generate(TENANT, "security")
    alerts: list[Event] = []
    counts: list[WindowResult] = []

    async def alert(event: Event) -> None:
        alerts.append(event)

    async def count(result: WindowResult) -> None:
        counts.append(result)

    async with (
        eventwire.connect(tenant=TENANT, keyring=Keyring.of(web, security)) as bus,
        bus.subscribe("custom.pattern.fraud.>", alert, durable="soc"),
        PatternDetector(bus, {"takeover": TAKEOVER}, identity=security, name="fraud"),
        WindowedStream(
            bus, "custom.auth.login.>", window=Window.tumbling(1), aggregate=Aggregation.count(),
            identity=security, name="logins", idle=0.5, sink=count,
        ),
    ):  # fmt: skip
        for ok in (False, False, False, True):
            await login(bus, web, "mallory", ok)
        for ok in (False, True):
            await login(bus, web, "alice", ok)
        async with asyncio.timeout(30):
            while not alerts or sum(result.count for result in counts) < 6:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    [event] = alerts
    assert event.type == MATCHED
    assert isinstance(event.data, dict)
    print(f"alert for {event.data['key']}: {event.data['events']}")
    print(f"  signed by {event.source}, caused by {event.causationid}")
    for result in counts:
        print(f"logins of {result.key}: {result.count} in window starting {result.start:.1f}")


if __name__ == "__main__":
    asyncio.run(main())
