"""Durable workflows: 3-step workflows per second with 1 and 2 orchestrator processes,
against the same three signed requests made by hand, in one run on one server.

    python benchmarks/bench_workflows.py [--count N] [--latency K] [--url URL]

Three step workers (``StepWorker``: idempotency record in KV per step) answer in this
process. "By hand" makes the three signed direct requests of a workflow one after another,
``--concurrency`` workflows at a time; "workflows" starts ``--count`` workflows at once and
counts their ``completed`` history events as they are stored (a core NATS subscription
on the history subjects), with 1 and then 2 orchestrator processes. Latency: ``--latency``
workflows one at a time, each from start to its ``completed`` event, against three
requests by hand; the difference over 3 is the per-step overhead of durability (two signed
history appends with expected-sequence checks, the idempotency record, the replay). Prints
the figures and ratios; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import time
from typing import TYPE_CHECKING

from pydantic import BaseModel

import eventwire
from eventwire import (
    CustomEvent,
    EmbeddedServer,
    Identity,
    Keyring,
    Orchestrator,
    Principal,
    StepWorker,
    TrustedKey,
    WorkflowContext,
    Workflows,
    workflow,
)
from eventwire_security import PublicKey

if TYPE_CHECKING:
    from pydantic import JsonValue

    from eventwire import Bus

TENANT = "bench"


class Item(BaseModel):
    n: int


@workflow("three", input=Item, output=Item)
async def three(ctx: WorkflowContext, item: Item) -> Item:
    for worker in ("w1", "w2", "w3"):
        item = await ctx.step(worker, "bump", item, output=Item)
    return item


async def serve_steps(bus: Bus, ids: dict[str, Identity]) -> None:
    steps = StepWorker(bus)

    @steps.action("bump", input=Item)
    async def bump(item: Item) -> Item:
        return Item(n=item.n + 1)

    for worker in ("w1", "w2", "w3"):
        await bus.serve_requests(ids[worker], steps.handle)


async def by_hand(bus: Bus, me: Identity, count: int, concurrency: int) -> float:
    """Seconds for ``count`` sequences of three signed requests, ``concurrency`` at once."""
    gate = asyncio.Semaphore(concurrency)

    async def one(n: int) -> None:
        async with gate:
            for worker in ("w1", "w2", "w3"):
                data: JsonValue = {
                    "key": f"hand-{secrets.token_hex(8)}",
                    "action": "bump",
                    "input": {"n": n},
                }
                await bus.request(
                    worker, CustomEvent("custom.bench.step", "bench.step", data), identity=me
                )

    started = time.perf_counter()
    await asyncio.gather(*(one(n) for n in range(count)))
    return time.perf_counter() - started


class Completions:
    """Counts ``completed`` events stored on the history subjects (core subscription)."""

    def __init__(self) -> None:
        self.done: set[str] = set()
        self.changed = asyncio.Event()

    async def on_message(self, msg: object) -> None:
        body = json.loads(msg.data)  # type: ignore[attr-defined] # a nats-py Msg
        if body.get("type") == "io.eventwire.workflow.completed":
            self.done.add(msg.subject.rsplit(".", 1)[1])  # type: ignore[attr-defined]
            self.changed.set()

    async def until(self, ids: set[str]) -> None:
        while not ids <= self.done:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), 120)


async def workflows(control: Workflows, completions: Completions, prefix: str, count: int) -> float:
    ids = [f"{prefix}-{n}" for n in range(count)]
    started = time.perf_counter()
    await asyncio.gather(*(control.start(three, each, Item(n=0)) for each in ids))
    await completions.until(set(ids))
    return time.perf_counter() - started


async def latency(
    control: Workflows, completions: Completions, bus: Bus, me: Identity, k: int
) -> tuple[float, float]:
    flow = hand = 0.0
    for n in range(k):
        flow += await workflows(control, completions, f"lat{n}", 1)
        hand += await by_hand(bus, me, 1, 1)
    return flow / k, hand / k


async def orchestrators(
    url: str, root: str, ids: dict[str, Identity], count: int
) -> list[asyncio.subprocess.Process]:
    trusted = ",".join(
        f"{n}:{i.public_key.raw.hex()}" for n, i in ids.items() if n != "orchestrator"
    )
    procs = []
    for _ in range(count):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--serve", url, root, ids["orchestrator"].seed.hex(), trusted,
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None
        await proc.stdout.readline()  # "ready"
        procs.append(proc)
    return procs


async def stop(procs: list[asyncio.subprocess.Process]) -> None:
    for proc in procs:
        proc.terminate()
        await proc.wait()


async def measure(url: str, args: argparse.Namespace) -> None:
    names = ("orchestrator", "client", "w1", "w2", "w3")
    ids = {name: Identity.generate(TENANT, name) for name in names}
    results: dict[str, float] = {}
    for processes in (1, 2):
        root = f"bw{secrets.token_hex(3)}"
        async with eventwire.connect(
            url, tenant=TENANT, keyring=Keyring.of(*ids.values()), root=root
        ) as bus:
            await serve_steps(bus, ids)
            control = Workflows(bus, ids["client"], orchestrators=[f"{TENANT}/orchestrator"])
            completions = Completions()
            await bus.connection.subscribe(
                f"{root}.custom.es.workflow.*", cb=completions.on_message
            )
            procs = await orchestrators(url, root, ids, processes)
            try:
                if processes == 1:
                    results["hand"] = args.count / await by_hand(
                        bus, ids["client"], args.count, args.concurrency
                    )
                    flow, hand = await latency(
                        control, completions, bus, ids["client"], args.latency
                    )
                    results["latency_flow"], results["latency_hand"] = flow, hand
                results[f"flows{processes}"] = args.count / await workflows(
                    control, completions, "t", args.count
                )
            finally:
                await stop(procs)
    report(results, args)


def report(r: dict[str, float], args: argparse.Namespace) -> None:
    one, two, hand = r["flows1"], r["flows2"], r["hand"]
    print(f"{args.count} three-step workflows, by-hand concurrency {args.concurrency}")
    print(f"  by hand (3 signed requests):  {hand:8.1f} sequences/s")
    print(f"  workflows, 1 orchestrator:    {one:8.1f} workflows/s  ({one / hand:.2f}x by hand)")
    print(
        f"  workflows, 2 orchestrators:   {two:8.1f} workflows/s  "
        f"({two / hand:.2f}x by hand, {two / one:.2f}x one)"
    )
    flow_ms, hand_ms = r["latency_flow"] * 1000, r["latency_hand"] * 1000
    print(f"  one at a time: workflow {flow_ms:.1f} ms, by hand {hand_ms:.1f} ms")
    print(f"  ratio {flow_ms / hand_ms:.1f}x; per-step overhead {(flow_ms - hand_ms) / 3:.1f} ms")


async def serve(url: str, root: str, seed_hex: str, trusted: str) -> None:
    """An orchestrator process (``--serve``): runs until terminated."""
    me = Identity(Principal(TENANT, "orchestrator"), bytes.fromhex(seed_hex))
    keyring = Keyring.of(me)
    for pair in trusted.split(","):
        name, key = pair.split(":")
        keyring.add(TrustedKey(PublicKey(bytes.fromhex(key)), Principal(TENANT, name)))
    async with (
        eventwire.connect(url, tenant=TENANT, keyring=keyring, root=root) as bus,
        Orchestrator(bus, me, [three], max_in_flight=64),
    ):
        print("ready", flush=True)
        await asyncio.Event().wait()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--latency", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--url")
    parser.add_argument("--serve", nargs=4)
    args = parser.parse_args()
    if args.serve:
        await serve(*args.serve)
    elif args.url:
        await measure(args.url, args)
    else:
        async with EmbeddedServer() as server:
            await measure(server.url, args)


if __name__ == "__main__":
    asyncio.run(main())
