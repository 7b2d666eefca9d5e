"""Processes for the ordering tests.

``python -m tests.sdk._causal_worker hold KIND URL ROOT TENANT AGENT PUBLIC OUT``: a
consumer whose handler sits behind an order (``event-time`` or ``causal``) that holds
everything (hour-long lateness, idleness and timeout), for a test to kill with the events
held: it writes ``ready``, then one line per event it handles (none, if all goes well).

``python -m tests.sdk._causal_worker URL ROOT TENANT INDEX SEEDS OUT ORIGINATE DEPTH SEED``:
one of the agents of the causal-order test.

Agent ``INDEX`` of ``w0, w1, w2`` (``SEEDS``: their Ed25519 seeds, hex, comma-separated)
consumes every partition of a 3-partition bus through a :class:`CausalOrder` that is fed
with random delays (so events reach it out of order), originates ``ORIGINATE`` events
after random delays, and answers every event of the previous agent in the ring whose
depth is below ``DEPTH`` with an event one deeper, after a random delay, published with
its clock (so the answer causally follows what it handled). It writes one JSON line per
event it handles (id, source, clock), then a stats line once it handled ``EXPECTED``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import eventwire
from eventwire import CausalOrder, Clock, CustomEvent, Event, EventTimeOrder, Keyring, TrustedKey
from eventwire_security import Identity, Principal, PublicKey

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

AGENTS = 3
PARTITIONS = 3
HOUR = 3600.0
HOLD_IN_FLIGHT, HOLD_ACK_WAIT = 64, 1.0  # the holder's consumer; the tests' is the same
ROOT_DIR = Path(__file__).resolve().parents[2]


async def start_holder(
    kind: str, url: str, root: str, signer: Identity, out: Path
) -> asyncio.subprocess.Process:
    """The ``hold`` process, once its consumer is running."""
    args = [kind, url, root, signer.principal.tenant, signer.principal.agent]
    args += [signer.public_key.raw.hex(), str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT_DIR)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.sdk._causal_worker", "hold", *args, cwd=ROOT_DIR, env=env
    )
    async with asyncio.timeout(60):
        while "ready" not in (out.read_text() if out.exists() else ""):  # noqa: ASYNC110, ASYNC240 - a small file
            await asyncio.sleep(0.02)
    return proc


async def until_ack_pending(bus: eventwire.Bus, durable: str, count: int) -> None:
    """Wait until the consumer ``durable...`` has ``count`` deliveries unacknowledged."""
    async with asyncio.timeout(30):
        while True:
            infos = await bus.jetstream.consumers_info(bus.stream)
            [info] = [info for info in infos if info.name.startswith(durable)]
            if info.num_ack_pending == count:
                return
            await asyncio.sleep(0.05)


async def hold(args: list[str]) -> None:
    kind, url, root, tenant, agent, public_hex, out = args
    key = TrustedKey(PublicKey(bytes.fromhex(public_hex)), Principal(tenant, agent))
    log = Path(out).open("a", buffering=1)  # noqa: SIM115, ASYNC230 - open until killed

    async def handle(event: Event) -> None:
        log.write(event.id + "\n")

    if kind == "event-time":
        wrapped = EventTimeOrder(max_lateness=HOUR, idle=HOUR).wrap(handle)
    else:
        wrapped = CausalOrder(timeout=HOUR).wrap(handle)
    async with (
        eventwire.connect(url, tenant=tenant, root=root, keyring=Keyring([key])) as bus,
        bus.subscribe(
            "custom.>",
            wrapped,
            durable="held",
            max_in_flight=HOLD_IN_FLIGHT,
            ack_wait=HOLD_ACK_WAIT,
        ),
    ):
        log.write("ready\n")
        await asyncio.Event().wait()  # until killed


def expected(originate: int, depth: int) -> int:
    """How many events the three agents publish in all."""
    return AGENTS * originate * (depth + 1)


def jittered(
    handler: Callable[[Event], Awaitable[None]], rng: random.Random
) -> Callable[[Event], Awaitable[None]]:
    async def late(event: Event) -> None:
        await asyncio.sleep(rng.uniform(0, 0.04))
        await handler(event)

    return late


async def main(args: list[str]) -> None:
    url, root, tenant, index_text, seeds, out, originate_text, depth_text, seed = args
    index, originate, depth = int(index_text), int(originate_text), int(depth_text)
    identities = [
        Identity(Principal(tenant, f"w{i}"), bytes.fromhex(hex_seed))
        for i, hex_seed in enumerate(seeds.split(","))
    ]
    me, previous = identities[index], identities[(index - 1) % AGENTS].principal.source
    keyring = Keyring([identity.trusted() for identity in identities])
    rng = random.Random(f"{seed}-{index}")
    log = Path(out).open("a", buffering=1)  # noqa: SIM115, ASYNC230 - open until stopped
    clock = Clock(me.principal.source)
    causal = CausalOrder(timeout=30.0, clock=clock)
    total = expected(originate, depth)
    handled = 0

    async def publish(level: int) -> None:
        await asyncio.sleep(rng.uniform(0, 0.01))
        item = CustomEvent("custom.chat", "chat", {"depth": level})
        key = f"k{rng.randrange(1000)}"
        await bus.publish(item, identity=me, clock=clock, partition_key=key)

    async def handle(event: Event) -> None:
        nonlocal handled
        handled += 1
        line = {"id": event.id, "source": event.source, "vclock": event.vclock}
        log.write(json.dumps(line) + "\n")
        assert isinstance(event.data, dict)
        level = event.data["depth"]
        assert isinstance(level, int)
        if event.source == previous and level < depth:
            await publish(level + 1)
        if handled == total:
            log.write(json.dumps({"stats": vars(causal.stats)}) + "\n")

    async with (
        eventwire.connect(
            url, tenant=tenant, root=root, keyring=keyring, partitions=PARTITIONS
        ) as bus,
        bus.subscribe_partitioned(
            "custom.>", jittered(causal.wrap(handle), rng), durable=f"w{index}", unkeyed=False
        ),
    ):
        log.write(json.dumps({"ready": True}) + "\n")
        go = Path(out + ".go")
        while not go.exists():  # noqa: ASYNC110, ASYNC240 - the test's start signal, a stat
            await asyncio.sleep(0.02)
        for _ in range(originate):
            await asyncio.sleep(rng.uniform(0, 0.03))
            await publish(0)
        await asyncio.Event().wait()  # until the test stops us


if __name__ == "__main__":
    if sys.argv[1] == "hold":
        asyncio.run(hold(sys.argv[2:9]))
    else:
        asyncio.run(main(sys.argv[1:10]))
