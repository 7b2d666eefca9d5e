"""Retries with backoff, the dead-letter queue, a redrive: ``python examples/retries_and_dlq.py``.

A ``billing`` agent charges orders, but its payment provider is down: its handler raises.
JetStream redelivers the event after the ``RetryPolicy``'s backoff (0.2 s, then 0.4 s:
exponential, jittered) and, after ``max_deliveries`` = 3 deliveries, eventwire moves it to
the dead-letter queue (the original signed bytes, the reason and the last error), then
terminates it. An order that can never be charged (``ValueError``, declared ``terminal``)
is dead-lettered at once, without retries. The provider comes back; the first entry is
redriven (the same signed bytes, verified again) and charged. Runs on an embedded
nats-server and exits 0. The CLI does the same: ``eventwire dlq list|show|redrive|purge``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time

import eventwire
from eventwire import Agent, Bus, CustomEvent, DeadLetter, Event, Identity, Keyring, RetryPolicy

TENANT = "acme"
RETRY = RetryPolicy(max_deliveries=3, initial_delay=0.2, multiplier=2, max_delay=2)


class OneLine(logging.Formatter):
    """eventwire logs each retry and dead letter (failures with their traceback): one
    line each is enough here."""

    def format(self, record: logging.LogRecord) -> str:
        return f"        log: {record.getMessage()}"


async def dead_letters(bus: Bus, n: int) -> list[DeadLetter]:
    """Wait until the dead-letter queue holds ``n`` entries."""
    async with asyncio.timeout(30):
        while len(found := await bus.dead_letters.list()) < n:  # noqa: ASYNC110 - a queue
            await asyncio.sleep(0.05)
    return found


async def main() -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(OneLine())
    logging.getLogger("eventwire").addHandler(handler)
    logging.getLogger("eventwire").setLevel(logging.WARNING)
    billing_key, shop_key = Identity.generate(TENANT, "billing"), Identity.generate(TENANT, "shop")
    billing, shop = Agent("billing", identity=billing_key), Agent("shop", identity=shop_key)
    provider_up = asyncio.Event()
    charged = asyncio.Event()
    started = time.monotonic()

    @billing.on("custom.orders.>", retry=RETRY, terminal=(ValueError,))
    async def charge(event: Event) -> None:
        order = event.data if isinstance(event.data, dict) else {}
        print(f"  {time.monotonic() - started:5.2f}s billing gets order {order.get('id')}")
        if not isinstance(order.get("amount"), int) or order["amount"] < 0:
            raise ValueError("this amount can never be charged")
        if not provider_up.is_set():
            raise ConnectionError("payment provider unavailable")
        charged.set()

    keyring = Keyring.of(billing_key, shop_key)
    async with (
        eventwire.connect(tenant=TENANT, keyring=keyring) as bus,  # an embedded server
        billing.serve(bus),
        shop.serve(bus),
    ):
        print("order 1: the provider is down, so billing's handler raises; retried with backoff")
        await shop.publish(CustomEvent("custom.orders.new", "shop.order", {"id": 1, "amount": 5}))
        [first] = await dead_letters(bus, 1)
        print(f"  dead letter {first.seq}: {first.reason} after {first.deliveries} deliveries")
        assert (first.reason, first.deliveries) == ("max-deliveries", 3)

        print("order 2: a negative amount (ValueError, terminal): dead-lettered at once")
        await shop.publish(CustomEvent("custom.orders.new", "shop.order", {"id": 2, "amount": -1}))
        second = (await dead_letters(bus, 2))[1]
        print(f"  dead letter {second.seq}: {second.reason} after {second.deliveries} delivery")
        assert second.deliveries == 1

        print("the provider is back: redrive order 1 (same signed bytes, verified again)")
        provider_up.set()
        await bus.dead_letters.redrive(first.seq)
        async with asyncio.timeout(30):
            await charged.wait()
        remaining = [entry.seq for entry in await bus.dead_letters.list()]
        print(f"order 1 charged; left in the dead-letter queue: {remaining}")
        assert remaining == [second.seq]


if __name__ == "__main__":
    asyncio.run(main())
