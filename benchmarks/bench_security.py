"""The cost of sealing and of policy checks on the publish -> handler path, as ratios
against the same path without them, in one run on one server.

    python benchmarks/bench_security.py [--count N]

Cases: plain (signed, verified), policy (SDK checks at publish and at consume), sealed to
1, 3 and 10 recipients (the handler's agent opens it). Prints msgs/s and ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import time

import eventwire
from eventwire import Agent, EmbeddedServer, Event, Keyring, KnowledgeShared, Policy

POLICY = Policy.from_toml(
    """
version = 1
[[rule]]
principal = "*"
publish = ["agent.lifecycle.*", "knowledge.>"]
consume = ["agent.lifecycle.*", "knowledge.>"]
deny_publish = ["knowledge.secret.>"]
"""
)


async def run_case(url: str, count: int, *, policy: bool, recipients: int) -> float:
    """Seconds for ``count`` events from one agent to reach another's handler."""
    sender, reader = Agent("sender"), Agent("reader")
    extra = [Agent(f"peer{i}") for i in range(max(0, recipients - 1))]
    keyring = Keyring.of(sender.identity, reader.identity, *(a.identity for a in extra))
    handled = 0
    done = asyncio.Event()

    @reader.on("knowledge.>")
    async def read(event: Event) -> None:
        nonlocal handled
        assert event.readable
        handled += 1
        if handled == count:
            done.set()

    root = "s" + secrets.token_hex(4)
    async with (
        eventwire.connect(
            url, root=root, keyring=keyring, replay_window=None, policy=POLICY if policy else None
        ) as bus,
        contextlib.AsyncExitStack() as stack,
    ):
        for agent in (reader, sender, *extra):
            await stack.enter_async_context(agent.serve(bus))
        seal_to = ["reader", *(a.name for a in extra)] if recipients else []
        item = KnowledgeShared(topic="bench", content="x" * 200)
        started = time.perf_counter()
        for _ in range(count):
            await sender.publish(item, seal_to=seal_to)
        await done.wait()
        return time.perf_counter() - started


async def main(count: int) -> None:
    async with EmbeddedServer() as server:
        plain = count / await run_case(server.url, count, policy=False, recipients=0)
        print(f"plain (signed, verified)   : {plain:7,.0f} msgs/s  1.00x")
        rate = count / await run_case(server.url, count, policy=True, recipients=0)
        print(f"policy at publish+consume  : {rate:7,.0f} msgs/s  {rate / plain:.2f}x")
        for n in (1, 3, 10):
            rate = count / await run_case(server.url, count, policy=False, recipients=n)
            print(f"sealed to {n:>2} recipient(s)  : {rate:7,.0f} msgs/s  {rate / plain:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=1000)
    asyncio.run(main(parser.parse_args().count))
