"""An agent gains and loses a capability while it serves, without a restart.

Run it with ``python examples/caps.py``: on an embedded server, ``steady`` serves the
``summarize`` work alone; ``flex`` gains the capability (it shows in the registry at once)
and takes a share of the one-of-N work; then it loses it and ``steady`` takes everything
again. Every request is handled exactly once; it prints who handled how many and exits 0.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import eventwire
from eventwire import Agent, Event, HelpRequested, Identity, Keyring

TENANT = "acme"
QUESTION = HelpRequested(capability="summarize", question="tl;dr?")


def worker(key: Identity, handled: Counter[str], ids: Counter[str], *caps: str) -> Agent:
    agent = Agent(key.principal.agent, capabilities=caps, identity=key)

    @agent.on("capability.summarize.help")
    async def summarize(event: Event) -> None:
        await asyncio.sleep(0.005)  # some work, so both agents get a share
        handled[agent.name] += 1
        ids[event.id] += 1

    return agent


async def ask(bus: eventwire.Bus, asker: Identity, ids: Counter[str], n: int) -> None:
    """Publish ``n`` one-of-N requests and wait until every request so far was handled."""
    target = len(ids) + n
    for _ in range(n):
        await bus.publish(QUESTION, identity=asker, deliver="one")
    async with asyncio.timeout(30):
        while len(ids) < target:  # noqa: ASYNC110 - polls counters no event announces
            await asyncio.sleep(0.01)


async def main() -> None:
    keys = {name: Identity.generate(TENANT, name) for name in ("steady", "flex", "asker")}
    handled: Counter[str] = Counter()
    ids: Counter[str] = Counter()
    steady = worker(keys["steady"], handled, ids, "summarize")
    flex = worker(keys["flex"], handled, ids)

    async with (
        eventwire.connect(tenant=TENANT, keyring=Keyring.of(*keys.values())) as bus,
        steady.serve(bus),
        flex.serve(bus),
    ):
        await ask(bus, keys["asker"], ids, 20)
        print("flex without the capability:", dict(handled))

        await flex.add_capability("summarize")
        serving = [info.name for info in await bus.agents(capability="summarize")]
        print("serving summarize after add_capability:", serving)
        await ask(bus, keys["asker"], ids, 40)
        print("flex with it:", dict(handled))

        await flex.remove_capability("summarize")
        before = handled["flex"]
        await ask(bus, keys["asker"], ids, 20)
        print("flex after remove_capability:", dict(handled))
        assert handled["flex"] == before, "no new work after the capability is gone"
    assert len(ids) == 80, "every request handled"
    assert set(ids.values()) == {1}, "and each exactly once"
    print("80 requests, each handled exactly once")


if __name__ == "__main__":
    asyncio.run(main())
