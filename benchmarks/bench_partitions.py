"""Partitions: throughput with 1, 2 and 4 partitions when each handler awaits 1 ms of
simulated I/O, eventwire ``subscribe_partitioned`` against raw nats-py doing the same
(the same subject transform on a stream, one pull consumer per partition with
``max_ack_pending=1``, fetch -> sleep -> ack), in one run on one server.

    python benchmarks/bench_partitions.py [--count N] [--keys K] [--io MS] [--url URL]

The events are stored first; the time is from starting the consumers to the last event
handled, so it measures consumption. Prints msgs/s and ratios; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time

import nats
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig, SubjectTransform

import eventwire
from eventwire import CustomEvent, EmbeddedServer, Event, Identity, Keyring, RetryPolicy
from eventwire._subjects import key_token, partition_transform

RETRY = RetryPolicy(max_deliveries=5, initial_delay=0.5)
PARTITIONS = (1, 2, 4)


async def eventwire_case(
    url: str, count: int, partitions: int, keys: int, io_wait: float, **options: bool
) -> float:
    """Seconds for ``subscribe_partitioned`` to handle ``count`` stored keyed events."""
    identity = Identity.generate("bench", "producer")
    handled = 0
    done = asyncio.Event()

    async def handler(event: Event) -> None:
        nonlocal handled
        await asyncio.sleep(io_wait)
        handled += 1
        if handled == count:
            done.set()

    root = "p" + secrets.token_hex(4)
    async with eventwire.connect(
        url, tenant="bench", root=root, keyring=Keyring.of(identity), partitions=partitions
    ) as bus:
        for start in range(0, count, 200):
            await asyncio.gather(
                *(
                    bus.publish(CustomEvent("custom.d", "d", i), identity=identity,
                                partition_key=f"k{i % keys}")
                    for i in range(start, min(count, start + 200))
                )
            )  # fmt: skip
        started = time.perf_counter()
        async with bus.subscribe_partitioned(
            "custom.>", handler, durable="b", retry=RETRY, **options
        ):
            await done.wait()
            seconds = time.perf_counter() - started
        await bus.jetstream.delete_stream(bus.stream)
    return seconds


async def raw_case(url: str, count: int, partitions: int, keys: int, io_wait: float) -> float:
    """The same with nats-py alone: no signatures, no retries, no replay or DLQ."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    root = "r" + secrets.token_hex(4)
    source, destination = partition_transform(root, partitions)
    await js.add_stream(
        StreamConfig(
            name=root, subjects=[f"{root}.keyed.>"], storage=StorageType.FILE,
            subject_transform=SubjectTransform(src=source, dest=destination),
        )
    )  # fmt: skip
    try:
        for i in range(count):
            await js.publish(f"{root}.keyed.{key_token(f'k{i % keys}')}.custom.d", b"%d" % i)
        handled, finished = [0], [0.0]

        async def consume(p: int) -> None:
            config = ConsumerConfig(max_ack_pending=1, ack_policy=AckPolicy.EXPLICIT)
            psub = await js.pull_subscribe(
                f"{root}.keyed.{p}.>", durable=f"raw-{p}", stream=root, config=config
            )
            while handled[0] < count:
                try:
                    msgs = await psub.fetch(1, timeout=0.2)
                except nats.errors.TimeoutError:
                    continue
                for msg in msgs:
                    await asyncio.sleep(io_wait)
                    await msg.ack()
                    handled[0] += 1
                    if handled[0] == count:
                        finished[0] = time.perf_counter()
            await psub.unsubscribe()

        started = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for p in range(partitions):
                group.create_task(consume(p))
        return finished[0] - started
    finally:
        await js.delete_stream(root)
        await nc.close()


async def main(url: str | None, count: int, keys: int, io_ms: float) -> None:
    io_wait = io_ms / 1000
    async with EmbeddedServer() as server:
        target = url or server.url
        print(f"{count} keyed events, {keys} keys, handler awaits {io_ms:g} ms, consumption only")
        print("partitions    raw nats-py   eventwire (ratio)   no replay check (ratio)   scaling")
        base = None
        for n in PARTITIONS:
            raw = count / await raw_case(target, count, n, keys, io_wait)
            full = count / await eventwire_case(target, count, n, keys, io_wait)
            lean = count / await eventwire_case(target, count, n, keys, io_wait, replay_check=False)
            base = base or full
            print(
                f"{n:>10} {raw:>11,.0f}/s {full:>10,.0f}/s ({full / raw:.2f}x)"
                f" {lean:>14,.0f}/s ({lean / raw:.2f}x) {full / base:>12.2f}x"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--keys", type=int, default=64)
    parser.add_argument("--io", type=float, default=1.0, help="simulated I/O per event, ms")
    parser.add_argument("--url", default=None)
    args = parser.parse_args()
    asyncio.run(main(args.url, args.count, args.keys, args.io))
