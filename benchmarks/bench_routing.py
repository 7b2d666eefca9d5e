"""One-of-N work distribution: throughput with 1, 2 and 4 worker processes, eventwire
(agents sharing a capability's work consumer, ``deliver="one"``) against raw nats-py
work-queue consumers (a work-queue stream, one durable pull consumer that every worker
binds to, fetch -> ack), in one run on one server.

    python benchmarks/bench_routing.py [--count N] [--io MS] [--url URL]

The events are stored first; worker processes are started and connected, then told to go
at once. Each worker reports how many events it handled and when it handled its first and
its last (``time.monotonic``, one clock for every process on the machine): the time is from
the first event handled by any worker to the last, so start-up (an agent subscribing,
registering, announcing) is not counted. The totals must equal the count (each event handled
once). Prints msgs/s, the ratios, and each worker's share; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import nats
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig

import eventwire
from eventwire import Agent, CustomEvent, EmbeddedServer, Event, Identity, Keyring, Principal

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from nats.aio.msg import Msg

WORKERS = (1, 2, 4)
BATCH = 64


@dataclass(frozen=True)
class Run:
    seconds: float
    shares: list[int]

    @classmethod
    def of(cls, reports: list[dict[str, float]]) -> Run:
        active = [r for r in reports if r["handled"]]
        seconds = max(r["last"] for r in active) - min(r["first"] for r in active)
        return cls(max(seconds, 1e-6), [int(r["handled"]) for r in reports])


# -- raw nats-py -----------------------------------------------------------------------------


async def raw_setup(url: str, count: int) -> tuple[str, str]:
    """A work-queue stream holding ``count`` messages and its one shared consumer."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    root = "r" + secrets.token_hex(4)
    await js.add_stream(
        StreamConfig(
            name=root,
            subjects=[f"{root}.work"],
            storage=StorageType.FILE,
            retention=RetentionPolicy.WORK_QUEUE,
        )
    )
    await js.add_consumer(
        root,
        ConsumerConfig(
            durable_name="workers", ack_policy=AckPolicy.EXPLICIT, max_ack_pending=10_000
        ),
    )
    for start in range(0, count, 500):
        await asyncio.gather(
            *(js.publish(f"{root}.work", b"%d" % i) for i in range(start, min(count, start + 500)))
        )
    await nc.close()
    return root, "workers"


async def raw_worker(url: str, stream: str, consumer: str, io_wait: float) -> None:
    """Bind to the shared consumer, wait for go, fetch and ack until told to stop."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    stop = asyncio.Event()
    go = asyncio.Event()
    await nc.subscribe(f"{stream}.go", cb=_setter(go))
    await nc.subscribe(f"{stream}.stop", cb=_setter(stop))
    psub = await js.pull_subscribe_bind(consumer, stream)
    await nc.flush()
    print("ready", flush=True)
    await go.wait()
    meter = Meter()
    while not stop.is_set():
        try:
            msgs = await psub.fetch(BATCH, timeout=0.2)
        except TimeoutError:  # nats-py raises its own or asyncio's
            continue
        for msg in msgs:
            if io_wait:
                await asyncio.sleep(io_wait)
            await msg.ack()
            meter.tick()
    meter.report()
    await nc.close()


class Meter:
    """A worker's count and the monotonic times of its first and last event."""

    def __init__(self) -> None:
        self.handled = 0
        self.first = self.last = 0.0

    def tick(self) -> None:
        now = time.monotonic()
        self.first = self.first or now
        self.last = now
        self.handled += 1

    def report(self) -> None:
        print(json.dumps({"handled": self.handled, "first": self.first, "last": self.last}))


async def _raw_drained(url: str, stream: str) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    try:
        while (await js.stream_info(stream)).state.messages:  # noqa: ASYNC110 - polls the server
            await asyncio.sleep(0.02)
    finally:
        await nc.close()


def _setter(event: asyncio.Event) -> Callable[[Msg], Awaitable[None]]:
    async def set_it(_msg: Msg) -> None:
        event.set()

    return set_it


# -- the harness ---------------------------------------------------------------------------


async def run_workers(
    url: str,
    argv: list[list[str]],
    root: str,
    drained: Callable[[], Awaitable[None]],
    stdin: bytes | None = None,
) -> Run:
    """Start ``len(argv)`` worker processes, wait until each is ready, say go, wait until
    the work is drained, say stop, and collect every worker's count."""
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.PIPE,
        )
        for args in argv
    ]
    try:
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(stdin or b"\n")
            await proc.stdin.drain()
        for proc in procs:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            if line.strip() != b"ready":
                raise RuntimeError(f"worker did not start: {line!r}")
        nc = await nats.connect(url)
        await nc.publish(f"{root}.go", b"")
        await nc.flush()
        await drained()
        await nc.publish(f"{root}.stop", b"")
        await nc.flush()
        await nc.close()
        reports = []
        for proc in procs:
            out, _ = await asyncio.wait_for(proc.communicate(), 60)
            reports.append(json.loads(out.decode().strip().splitlines()[-1]))
        return Run.of(reports)
    finally:
        for proc in procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()


async def raw_case(url: str, count: int, workers: int, io_wait: float) -> Run:
    stream, consumer = await raw_setup(url, count)
    argv = [["--worker", "raw", url, stream, consumer, str(io_wait)]] * workers
    try:
        return await run_workers(url, argv, stream, lambda: _raw_drained(url, stream))
    finally:
        nc = await nats.connect(url)
        await nc.jetstream().delete_stream(stream)
        await nc.close()


# -- eventwire ------------------------------------------------------------------------------

TENANT, CAPABILITY = "bench", "bench"


async def eventwire_setup(url: str, count: int, seeds: dict[str, str]) -> str:
    """A root whose events stream holds ``count`` one-of-N events for the capability."""
    root = "e" + secrets.token_hex(4)
    ids = identities(seeds)
    async with eventwire.connect(url, tenant=TENANT, root=root, keyring=keyring(ids)) as bus:
        items = [
            CustomEvent(f"capability.{CAPABILITY}.work.help", "bench", i) for i in range(count)
        ]
        await bus.publish_many(items, identity=ids["producer"])
    return root


async def eventwire_worker(url: str, root: str, name: str, io_wait: float) -> None:
    """An agent with the capability: told to go, it serves (binding to the shared work
    consumer) until told to stop. Its key comes on stdin (a benchmark's shortcut)."""
    ids = identities(json.loads(sys.stdin.readline()))
    async with eventwire.connect(
        url, tenant=TENANT, root=root, keyring=keyring(ids), registry_ttl=6.0
    ) as bus:
        agent = Agent(name, capabilities=[CAPABILITY], identity=ids[name])
        agent.watch_failures = False
        meter = Meter()

        @agent.on(f"capability.{CAPABILITY}.help")
        async def handle(event: Event) -> None:
            if io_wait:
                await asyncio.sleep(io_wait)
            meter.tick()

        go, stop = asyncio.Event(), asyncio.Event()
        await bus.connection.subscribe(f"{root}.go", cb=_setter(go))
        await bus.connection.subscribe(f"{root}.stop", cb=_setter(stop))
        await bus.connection.flush()
        print("ready", flush=True)
        await go.wait()
        async with agent.serve(bus):
            await stop.wait()
        meter.report()


async def _eventwire_drained(url: str, root: str, seeds: dict[str, str]) -> None:
    async with eventwire.connect(
        url, tenant=TENANT, root=root, keyring=keyring(identities(seeds))
    ) as bus:
        while True:
            status = await bus.work_status(CAPABILITY)
            if status.consumer and not status.pending and not status.in_progress:
                return
            await asyncio.sleep(0.05)


async def eventwire_case(url: str, count: int, workers: int, io_wait: float) -> Run:
    names = [f"w{n}" for n in range(workers)]
    seeds = {n: secrets.token_hex(32) for n in ["producer", *names]}
    root = await eventwire_setup(url, count, seeds)
    argv = [["--worker", "eventwire", url, root, name, str(io_wait)] for name in names]
    return await run_workers(
        url, argv, root, lambda: _eventwire_drained(url, root, seeds),
        stdin=json.dumps(seeds).encode() + b"\n",
    )  # fmt: skip


def identities(seeds: dict[str, str]) -> dict[str, Identity]:
    return {n: Identity(Principal(TENANT, n), bytes.fromhex(s)) for n, s in seeds.items()}


def keyring(ids: dict[str, Identity]) -> Keyring:
    ring = Keyring()
    for identity in ids.values():
        ring.add(identity.trusted())
    return ring


def report(label: str, count: int, runs: dict[int, Run], base: dict[int, Run] | None) -> None:
    for workers, run in runs.items():
        rate = count / run.seconds
        ratio = f" ({rate / (count / base[workers].seconds):.2f}x raw)" if base else ""
        exact = "ok" if sum(run.shares) == count else f"TOTAL {sum(run.shares)} != {count}"
        print(f"{label:>10} {workers} worker(s): {rate:>8,.0f} msgs/s{ratio}", run.shares, exact)


async def main(url: str | None, count: int, io_ms: float) -> None:
    io_wait = io_ms / 1000
    async with EmbeddedServer() as server:
        target = url or server.url
        print(f"{count} events, handler awaits {io_ms:g} ms, one-of-N, consumption only")
        raw, ours = {}, {}
        for n in WORKERS:  # interleaved, so drift on the machine hits both alike
            raw[n] = await raw_case(target, count, n, io_wait)
            ours[n] = await eventwire_case(target, count, n, io_wait)
        report("raw", count, raw, None)
        report("eventwire", count, ours, raw)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        kind, url, stream, consumer, io = sys.argv[2:7]
        if kind == "raw":
            sys.stdin.readline()
            asyncio.run(raw_worker(url, stream, consumer, float(io)))
        else:
            asyncio.run(eventwire_worker(url, stream, consumer, float(io)))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--io", type=float, default=0.0, help="simulated I/O per event, ms")
    parser.add_argument("--url", default=None)
    args = parser.parse_args()
    asyncio.run(main(args.url, args.count, args.io))
