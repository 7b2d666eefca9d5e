"""Projections, aggregates and the event cache, measured on one server in one run.

    python benchmarks/bench_projections.py [--events N] [--aggregate-events M] [--url URL]

1. **Rebuild.** N signed events (default 1,000,000) on 100 account subjects; a projection
   rebuilds from the first event (``Projection``, batches of 1,000 per checkpoint) in a
   child process whose RSS is sampled every second; then raw nats-py (an ordered push
   consumer, the same kind the projection uses, no verification) reads the same events in
   another child. Prints events/s of both, their ratio, and whether RSS stayed flat
   (within +-10 % of its level after the first 10 % of the events).
2. **Aggregate load.** M events (default 20,000) on one aggregate: ``AggregateStore.load``
   without snapshots, then with ``SnapshotPolicy(every=1000)`` (the first load writes the
   snapshot, the next one uses it).
3. **Cache.** Mean latency of ``EventCache.latest`` answered by L1, by L2 (KV, verified
   again), and of reading the stream's last message and verifying it (what a miss costs);
   and how many events/s the cache's invalidation follower keeps up with (it verifies each
   event and writes it through to L2).
Exit status 1 if the projection's RSS was not flat.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import tempfile
import threading
from time import perf_counter
from typing import Any, Self

import nats
from nats.js.api import ConsumerConfig, DeliverPolicy

import eventwire
from eventwire import (
    AggregateStore,
    Change,
    CustomEvent,
    EmbeddedServer,
    Event,
    EventCache,
    Feed,
    Identity,
    Keyring,
    Principal,
    Projection,
    SnapshotPolicy,
)
from eventwire_security import verify_event

TENANT = "bench"
ACCOUNTS = 100
CHUNK = 10_000
WARMUP, TOLERANCE = 0.10, 0.10
PAGE = os.sysconf("SC_PAGE_SIZE")
LOOKUPS = 2_000


def rss() -> int:
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * PAGE


class Totals:
    """The read model: a total per account (flat: 100 entries whatever N is)."""

    def __init__(self) -> None:
        self.totals: dict[str, int] = {}

    def apply(self, event: Event) -> None:
        account = event.subject.rsplit(".", 1)[1]
        self.totals[account] = self.totals.get(account, 0) + 1

    def snapshot(self) -> Any:
        return dict(self.totals)

    @classmethod
    def restore(cls, state: Any) -> Self:
        model = cls()
        model.totals = dict(state)
        return model


class Sampler:
    """(seconds, events done, RSS) every second, from a thread the loop cannot hold up."""

    def __init__(self, progress: Any) -> None:
        self.samples: list[tuple[float, int, int]] = []
        self._progress, self._stop = progress, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = perf_counter()

    def __enter__(self) -> Self:
        self._started = perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _run(self) -> None:
        self._sample()
        while not self._stop.wait(1.0):
            self._sample()

    def _sample(self) -> None:
        self.samples.append((perf_counter() - self._started, self._progress(), rss()))


# ------------------------------------------------------------------------------ children


async def rebuild(job: dict[str, Any]) -> dict[str, Any]:
    identity = Identity(Principal(TENANT, "teller"), bytes.fromhex(job["seed"]))
    async with eventwire.connect(
        job["url"], tenant=TENANT, root=job["root"], keyring=Keyring.of(identity)
    ) as bus:
        feed = Feed("custom.es.account.*", batch=1000)
        projection = Projection(bus, Totals, name="totals", identity=identity, feed=feed)
        await projection.reset()
        with Sampler(lambda: projection.applied) as sampler:
            started = perf_counter()
            async with projection:
                await projection.wait_for(job["last"])
            seconds = perf_counter() - started
        assert sum(projection.state.totals.values()) == job["count"], "events lost"
        refused = sum(bus.security.rejected.values())
    return {"seconds": seconds, "samples": sampler.samples, "refused": refused}


async def raw(job: dict[str, Any]) -> dict[str, Any]:
    nc = await nats.connect(job["url"])
    received = 0
    try:
        js = nc.jetstream()
        with Sampler(lambda: received) as sampler:
            started = perf_counter()
            sub = await js.subscribe(
                f"{job['root']}.custom.es.account.*", stream=job["stream"], ordered_consumer=True,
                config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
            )  # fmt: skip
            while received < job["count"]:
                await sub.next_msg(timeout=30)
                received += 1
            seconds = perf_counter() - started
            await sub.unsubscribe()
    finally:
        await nc.close()
    return {"seconds": seconds, "samples": sampler.samples, "refused": 0}


async def run_child(role: str, job: dict[str, Any]) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--child", role,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate(json.dumps(job).encode())
    if proc.returncode != 0:
        raise RuntimeError(f"the {role} child failed (exit {proc.returncode})")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


def flat(samples: list[list[int]] | list[tuple[float, int, int]], count: int) -> dict[str, Any]:
    """RSS after the warm-up against its level at the end of the warm-up."""
    warm = [s for s in samples if s[1] >= count * WARMUP]
    if len(warm) < 2:
        return {"flat": True, "note": "too short to judge", "mib": [s[2] / 2**20 for s in samples]}
    base = warm[0][2]
    low = min(s[2] for s in warm) / base - 1
    high = max(s[2] for s in warm) / base - 1
    return {
        "flat": low >= -TOLERANCE and high <= TOLERANCE, "base_mib": base / 2**20,
        "low": low, "high": high, "peak_mib": max(s[2] for s in samples) / 2**20,
    }  # fmt: skip


# ------------------------------------------------------------------------------ parent


async def fill(bus: eventwire.Bus, identity: Identity, count: int) -> int:
    started = perf_counter()
    last = 0
    for start in range(0, count, CHUNK):
        items = [
            CustomEvent(f"custom.es.account.acc-{n % ACCOUNTS}", "deposited", {"amount": 1})
            for n in range(start, min(count, start + CHUNK))
        ]
        acks = await bus.publish_many(items, identity=identity)
        last = acks[-1].seq
        if (start // CHUNK) % 10 == 9 or start + CHUNK >= count:
            done = min(count, start + CHUNK)
            print(f"  filled {done:>9,} ({done / (perf_counter() - started):,.0f}/s)", flush=True)
    return last


async def aggregates(bus: eventwire.Bus, identity: Identity, count: int) -> dict[str, float]:
    plain = AggregateStore(bus, Totals, kind="ledger", identity=identity)
    for start in range(0, count, 500):
        changes = [Change("moved", {"n": n}) for n in range(start, min(count, start + 500))]
        await plain.append("big", changes, expected=start)
    timings: dict[str, float] = {}
    started = perf_counter()
    await plain.load("big")
    timings["without_snapshots_s"] = perf_counter() - started
    snapped = AggregateStore(
        bus, Totals, kind="ledger", identity=identity, snapshots=SnapshotPolicy(every=1000)
    )
    started = perf_counter()
    await snapped.load("big")  # replays all and writes the snapshot
    timings["first_load_writing_snapshot_s"] = perf_counter() - started
    started = perf_counter()
    await snapped.load("big")
    timings["with_snapshot_s"] = perf_counter() - started
    return timings


async def cache(bus: eventwire.Bus, identity: Identity) -> dict[str, float]:
    subjects = ["custom.es.account.acc-1", "custom.es.account.acc-2"]
    result: dict[str, float] = {}
    async with EventCache(bus, "custom.es.>", capacity=1) as two_level:
        await two_level.latest(subjects[0])
        started = perf_counter()
        for _ in range(LOOKUPS):
            await two_level.latest(subjects[0])  # L1 every time
        result["l1_us"] = (perf_counter() - started) / LOOKUPS * 1e6
        await two_level.latest(subjects[1])
        started = perf_counter()
        for n in range(LOOKUPS):
            await two_level.latest(subjects[n % 2])  # capacity 1, alternating: L2 every time
        result["l2_us"] = (perf_counter() - started) / LOOKUPS * 1e6
        result["l2_share"] = two_level.stats.l2 / LOOKUPS
        result["follower_events_per_s"] = await follower_rate(bus, identity, two_level)
    wire = f"{bus.root}.{subjects[0]}"
    started = perf_counter()
    for _ in range(LOOKUPS):
        stored = await bus.jetstream.get_msg(bus.stream, subject=wire)
        headers = stored.headers or {}
        verify_event(stored.data or b"", headers.get(eventwire.SIGNATURE_HEADER), bus.keyring)
    result["stream_us"] = (perf_counter() - started) / LOOKUPS * 1e6
    return result


async def follower_rate(bus: eventwire.Bus, identity: Identity, cache: EventCache) -> float:
    """Events/s the invalidation follower verifies and writes through, from a burst."""
    count, written = 2_000, cache.stats.written
    items = [CustomEvent("custom.es.account.hot", "deposited", {"amount": 1})] * count
    started = perf_counter()
    await bus.publish_many(items, identity=identity)
    async with asyncio.timeout(120):
        while cache.stats.written < written + 2 * count:  # noqa: ASYNC110 - polls a counter
            await asyncio.sleep(0.01)
    return count / (perf_counter() - started)


async def main(args: argparse.Namespace) -> int:
    server = None
    url = args.url
    if url is None:
        server = EmbeddedServer(store_dir=tempfile.mkdtemp(prefix="bench-projections-"))
        await server.start()
        url = server.url
    try:
        return await measure(url, args)
    finally:
        if server is not None:
            await server.close()


async def measure(url: str, args: argparse.Namespace) -> int:
    identity = Identity(Principal(TENANT, "teller"), secrets.token_bytes(32))
    root = f"p{secrets.token_hex(4)}"
    async with eventwire.connect(
        url, tenant=TENANT, root=root, keyring=Keyring.of(identity)
    ) as bus:
        print(f"filling {args.events:,} events ...", flush=True)
        last = await fill(bus, identity, args.events)
        job = {"url": url, "root": root, "stream": bus.stream, "seed": identity.seed.hex(),
               "count": args.events, "last": last}  # fmt: skip
        built = await run_child("projection", job)
        plain = await run_child("raw", job)
        loads = await aggregates(bus, identity, args.aggregate_events)
        latencies = await cache(bus, identity)
    memory = flat(built["samples"], args.events)
    report = {
        "events": args.events,
        "projection_events_per_s": args.events / built["seconds"],
        "raw_events_per_s": args.events / plain["seconds"],
        "ratio": plain["seconds"] / built["seconds"],
        "refused": built["refused"],
        "rss": memory,
        "aggregate_events": args.aggregate_events,
        **loads,
        **latencies,
    }
    show(report)
    print(json.dumps(report))
    return 0 if memory["flat"] else 1


def show(r: dict[str, Any]) -> None:
    m = r["rss"]
    print(f"rebuild of {r['events']:,} events: projection {r['projection_events_per_s']:,.0f}/s, "
          f"raw nats-py {r['raw_events_per_s']:,.0f}/s, ratio {r['ratio']:.2f} "
          f"(refused {r['refused']})")  # fmt: skip
    if "base_mib" in m:
        print(f"projection RSS after warm-up {m['base_mib']:.1f} MiB, {m['low']:+.1%} / "
              f"{m['high']:+.1%}, peak {m['peak_mib']:.1f} MiB: "
              f"{'flat' if m['flat'] else 'NOT FLAT'}")  # fmt: skip
    print(f"aggregate of {r['aggregate_events']:,} events: load {r['without_snapshots_s']:.3f}s "
          f"without snapshots, {r['with_snapshot_s']:.3f}s with one "
          f"(first load writing it {r['first_load_writing_snapshot_s']:.3f}s)")  # fmt: skip
    print(f"cache latest(): L1 {r['l1_us']:.1f} us, L2 {r['l2_us']:.0f} us, stream read + "
          f"verify {r['stream_us']:.0f} us; follower "
          f"{r['follower_events_per_s']:,.0f} events/s")  # fmt: skip


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--aggregate-events", type=int, default=20_000)
    parser.add_argument("--url", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse()
    if arguments.child is not None:
        job_in = json.loads(sys.stdin.read())
        work = rebuild if arguments.child == "projection" else raw
        print(json.dumps(asyncio.run(work(job_in))))
        sys.exit(0)
    sys.exit(asyncio.run(main(arguments)))
