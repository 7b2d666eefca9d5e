"""Workflows, step workers and an orchestrator process for the workflow tests.

``python -m tests.sdk._workflow_worker URL ROOT TENANT KEYFILE_HEX OUT`` runs an
orchestrator of :data:`WORKFLOWS` (identity from the hex seed) until killed; it writes
``ready`` to OUT once it consumes.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel

import eventwire
from eventwire import (
    Keyring,
    Orchestrator,
    StepFailed,
    StepRejected,
    StepRetry,
    StepWorker,
    TrustedKey,
    WorkflowContext,
    workflow,
)
from eventwire_security import Identity, Principal, PublicKey

if TYPE_CHECKING:
    from eventwire import Bus


class Order(BaseModel):
    item: str
    fail_at: int = 0  # the step (1-3) that fails for good; 0: none
    sleep: float = 0.0  # a durable timer between step 2 and 3


class Done(BaseModel):
    ref: str


class Receipt(BaseModel):
    refs: list[str]


class Wrong(BaseModel):
    number: int


@workflow("saga", input=Order, output=Receipt)
async def saga(ctx: WorkflowContext, order: Order) -> Receipt:
    refs = []
    for n in (1, 2, 3):
        if n == 3 and order.sleep:
            await ctx.sleep(order.sleep)
        request = Order(item=f"{order.item}-{n}", fail_at=order.fail_at == n)
        done = await ctx.step(f"w{n}", "do", request, output=Done, compensate="undo")
        refs.append(done.ref)
    return Receipt(refs=refs)


@workflow("fanout", input=Order, output=Receipt)
async def fanout(ctx: WorkflowContext, order: Order) -> Receipt:
    a = Order(item="a", fail_at=order.fail_at == 1)
    b = Order(item="b", fail_at=order.fail_at == 2)
    first, second = await asyncio.gather(
        ctx.step("w1", "do", a, output=Done, compensate="undo"),
        ctx.step("w2", "slow", b, output=Done, compensate="undo"),
    )
    return Receipt(refs=[first.ref, second.ref])


@workflow("wrongtype", input=Order, output=Receipt)
async def wrongtype(ctx: WorkflowContext, order: Order) -> Receipt:
    await ctx.step("w1", "do", Order(item="x"), output=Done, compensate="undo")
    await ctx.step("w2", "do", Order(item="y"), output=Wrong)
    return Receipt(refs=[])


@workflow("approval", input=Order, output=Receipt)
async def approval(ctx: WorkflowContext, order: Order) -> Receipt:
    done = await ctx.step("w1", "do", Order(item=order.item), output=Done, compensate="undo")
    try:
        answer = await ctx.wait_signal("approve", timeout=order.sleep or None)
    except eventwire.WaitTimedOut:
        answer = "timeout"
    return Receipt(refs=[done.ref, str(answer)])


@workflow("catcher", input=Order, output=Receipt)
async def catcher(ctx: WorkflowContext, order: Order) -> Receipt:
    try:
        await ctx.step("w1", "do", Order(item="x", fail_at=1), output=Done)
    except StepFailed as exc:
        return Receipt(refs=[exc.reason])
    return Receipt(refs=[])


@workflow("secret", input=Order, output=Receipt)
async def secret(ctx: WorkflowContext, order: Order) -> Receipt:
    mine = Order(item=f"code-{order.item}")  # the input is not sealed, the step's data is
    kept = await ctx.step("w1", "do", mine, output=Done, compensate="undo", sealed=True)
    await ctx.step("w2", "do", Order(item="public", fail_at=order.fail_at), output=Done)
    return Receipt(refs=[kept.ref.split(":")[0]])  # the output is not sealed either


@workflow("bycapability", input=Order, output=Receipt)
async def bycapability(ctx: WorkflowContext, order: Order) -> Receipt:
    done = await ctx.step("capability:booking", "do", order, output=Done)
    return Receipt(refs=[done.ref])


@workflow("impatient", input=Order, output=Receipt)
async def impatient(ctx: WorkflowContext, order: Order) -> Receipt:
    retry = StepRetry(attempts=20, delay=0.1, backoff=1)
    done = await ctx.step("w4", "slow", order, output=Done, timeout=0.1, retry=retry)
    return Receipt(refs=[done.ref])


WORKFLOWS = [saga, fanout, wrongtype, approval, catcher, secret, bycapability, impatient]


class Effects:
    """Step workers w1..w3 whose actions count their side effects per item."""

    def __init__(self) -> None:
        self.done: Counter[str] = Counter()
        self.undone: Counter[str] = Counter()
        self.order: list[str] = []
        self.refuse: set[str] = set()  # items the workers refuse (a failure for good)

    def worker(self, bus: Bus, name: str) -> StepWorker:
        steps = StepWorker(bus)

        @steps.action("do", input=Order)
        async def do(order: Order) -> Done:
            if order.fail_at or order.item in self.refuse:
                raise StepRejected(f"{order.item} refused")
            self.done[order.item] += 1
            self.order.append(f"do {order.item}")
            return Done(ref=f"{name}:{order.item}")

        @steps.action("slow", input=Order)
        async def slow(order: Order) -> Done:
            await asyncio.sleep(0.3)
            return await do(order)

        @steps.action("undo", input=Done)
        async def undo(done: Done) -> Done:
            if done.ref in self.refuse:
                raise RuntimeError(f"cannot undo {done.ref}")  # retried, then dead-lettered
            self.undone[done.ref] += 1
            self.order.append(f"undo {done.ref}")
            return done

        return steps


async def main(args: list[str]) -> None:
    url, root, tenant, seed_hex, trusted_hex, out = args
    identity = Identity(Principal(tenant, "orchestrator"), bytes.fromhex(seed_hex))
    keyring = Keyring.of(identity)
    for pair in trusted_hex.split(","):  # agent:public-key-hex of everyone else
        agent, public_hex = pair.split(":")
        keyring.add(TrustedKey(PublicKey(bytes.fromhex(public_hex)), Principal(tenant, agent)))
    log = Path(out).open("a", buffering=1)  # noqa: SIM115, ASYNC230 - open until killed
    async with (
        eventwire.connect(url, tenant=tenant, root=root, keyring=keyring) as bus,
        Orchestrator(bus, identity, WORKFLOWS, max_in_flight=64, ack_wait=1.5),
    ):
        log.write("ready\n")
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:7]))
