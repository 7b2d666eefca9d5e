"""The durable path: eventwire with retries, idempotency and replay protection on, against
raw nats-py doing publish -> fetch -> ack, in one run on one server; then per-key lanes
(``key_order=True``) with 1, 2 and 4 keys when each handler waits 2 ms (an I/O call).

    python benchmarks/bench_durable.py [--count N] [--url URL]

Prints msgs/s and ratios; asserts nothing (timings vary by machine).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time

import nats

import eventwire
from eventwire import CustomEvent, EmbeddedServer, Event, Identity, Keyring, RetryPolicy
from eventwire.cli._bench_cases import raw_case

RETRY = RetryPolicy(max_deliveries=5, initial_delay=0.5)


async def durable_case(url: str, count: int, *, keys: int = 0, io_wait: float = 0.0) -> float:
    """Seconds to publish ``count`` events and handle them all on the durable path."""
    identity = Identity.generate("bench", "producer")
    handled = 0
    done = asyncio.Event()

    async def handler(event: Event) -> None:
        nonlocal handled
        if io_wait:
            await asyncio.sleep(io_wait)
        handled += 1
        if handled == count:
            done.set()

    root = "d" + secrets.token_hex(4)
    async with eventwire.connect(
        url, tenant="bench", root=root, keyring=Keyring.of(identity)
    ) as bus:
        options = {"max_in_flight": 16, "key_order": True} if keys else {}
        async with bus.subscribe(
            "custom.>", handler, durable="d", batch=256, retry=RETRY, idempotent=True, **options
        ):
            started = time.perf_counter()
            for start in range(0, count, 500):
                chunk = range(start, min(count, start + 500))
                if keys:
                    for i in chunk:  # one event per call: each carries its partition key
                        await bus.publish(
                            CustomEvent("custom.d", "d", i), identity=identity,
                            partition_key=f"k{i % keys}",
                        )  # fmt: skip
                else:
                    items = [CustomEvent("custom.d", "d", i) for i in chunk]
                    await bus.publish_many(items, identity=identity)
            await done.wait()
            seconds = time.perf_counter() - started
        await bus.jetstream.delete_stream(bus.stream)
    return seconds


async def main(url: str | None, count: int) -> None:
    async with EmbeddedServer() as server:
        target = url or server.url
        nc = await nats.connect(target)
        raw = count / await raw_case(nc.jetstream(), 256, count, batch=256)
        await nc.close()
        durable = count / await durable_case(target, count)
        print(f"raw nats-py publish -> fetch -> ack : {raw:9,.0f} msgs/s")
        ratio = durable / raw
        print(f"eventwire durable path             : {durable:9,.0f} msgs/s  ({ratio:.2f}x raw)")
        small = max(200, count // 10)
        print(f"\nkey lanes, handler waits 2 ms, {small} events, max_in_flight 16:")
        base = None
        for keys in (1, 2, 4):
            rate = small / await durable_case(target, small, keys=keys, io_wait=0.002)
            base = base or rate
            print(f"  {keys} key(s): {rate:8,.0f} msgs/s  ({rate / base:.2f}x one key)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--url", default=None)
    args = parser.parse_args()
    asyncio.run(main(args.url, args.count))
