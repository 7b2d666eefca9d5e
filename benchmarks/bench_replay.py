"""Memory while replaying a long stream: a durable eventwire subscription reads N stored
events from the start while its process's RSS is sampled every second; RSS must stay flat
(within +-10 % of its level after the warm-up, the first 10 % of the events). Then raw
nats-py (pull consumer, fetch -> ack) reads the same events, for RSS and a throughput ratio.

    python benchmarks/bench_replay.py [--count N | --quick] [--url URL] [--trace]

The parent process starts the server and pre-fills the events stream with ``publish_many``;
each consumer runs in a fresh child process (this script with ``--child``), so that its RSS
is its own and not what the pre-fill left behind. ``--trace`` runs the children under
tracemalloc and prints what grew between the end of the warm-up and the end (slow: a
debugging aid, not a measurement). Exit status 1 if a consumer's RSS was not flat.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import threading
import tracemalloc
from dataclasses import dataclass, field
from time import perf_counter
from typing import TYPE_CHECKING, Any

import nats
import nats.errors
from nats.js.api import AckPolicy, ConsumerConfig

import eventwire
from eventwire import CustomEvent, EmbeddedServer, Identity, Keyring, Principal

if TYPE_CHECKING:
    from collections.abc import Callable

    from eventwire import Event

TENANT = "bench"
FULL = 1_000_000
QUICK = 50_000
WARMUP = 0.10  # the first 10 % of the events
TOLERANCE = 0.10  # +-10 % of the RSS after the warm-up
BATCH = 256
FILL_CHUNK = 10_000
FILLER = "x" * 200  # the data is {"p": FILLER}
PAGE = os.sysconf("SC_PAGE_SIZE")
TABLE_ROWS = 30
PROGRESS_EVERY = 10  # samples (seconds) between progress lines


def rss_bytes() -> int:
    """Resident set size of this process, from ``/proc/self/statm`` (no psutil)."""
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * PAGE


def time_limit(count: int) -> float:
    """A generous bound so a lost message fails the run instead of hanging it."""
    return 120.0 + count / 200


class RssSampler:
    """Samples (seconds, events done, RSS) every ``interval`` on its own thread, which the
    event loop cannot hold up. With ``trace`` it also snapshots tracemalloc once the
    warm-up is over and at the end, and lists the allocation sites that grew between."""

    def __init__(self, name: str, progress: Callable[[], int], warm: int, *, trace: bool) -> None:
        self.samples: list[tuple[float, int, int]] = []
        self._name = name
        self.growth: list[str] = []
        self._progress = progress
        self._warm = warm
        self._trace = trace
        self._warm_snapshot: tracemalloc.Snapshot | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._started = 0.0

    def __enter__(self) -> RssSampler:
        if self._trace:
            tracemalloc.start(8)
        self._started = perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        if self._trace and self._warm_snapshot is not None:
            self.growth = _growth(self._warm_snapshot, tracemalloc.take_snapshot())
        if self._trace:
            tracemalloc.stop()

    def _run(self) -> None:
        self._sample()
        while not self._stop.wait(1.0):
            self._sample()
            if self._trace and self._warm_snapshot is None and self._progress() >= self._warm:
                self._warm_snapshot = tracemalloc.take_snapshot()

    def _sample(self) -> None:
        seconds, done, rss = perf_counter() - self._started, self._progress(), rss_bytes()
        self.samples.append((seconds, done, rss))
        if len(self.samples) % PROGRESS_EVERY == 0:  # on stderr, while the parent waits
            print(
                f"  {self._name}: {seconds:5.0f} s {done:>9,} events RSS {mib(rss)}",
                file=sys.stderr,
            )


def _growth(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot) -> list[str]:
    """The 15 allocation sites (innermost frames first) whose memory grew most."""
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
    diff = after.filter_traces(ignore).compare_to(before.filter_traces(ignore), "traceback")
    grown = sorted((stat for stat in diff if stat.size_diff > 0), key=lambda s: -s.size_diff)
    lines = []
    for stat in grown[:15]:
        frames = list(reversed(stat.traceback))[:4]
        where = " <- ".join(f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno}" for f in frames)
        lines.append(f"{stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d} blocks  {where}")
    return lines


# ---------------------------------------------------------------------------- consumers


class _Counter:
    """The eventwire handler: counts verified events, signals the last one."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.handled = 0
        self.done = asyncio.Event()

    async def __call__(self, event: Event) -> None:
        self.handled += 1
        if self.handled == self.count:
            self.done.set()


async def consume_eventwire(job: dict[str, Any]) -> dict[str, Any]:
    """A durable subscription from the start of the stream, replay check off (it re-reads
    history: a replay claim per event would measure the KV bucket, not the consumer)."""
    count = job["count"]
    producer = Identity(Principal(TENANT, "producer"), bytes.fromhex(job["seed"]))
    keyring = Keyring([producer.trusted()])
    counter = _Counter(count)
    async with eventwire.connect(
        job["url"], tenant=TENANT, root=job["root"], keyring=keyring, name="replay-bench"
    ) as bus:
        warm = int(count * WARMUP)
        sampler = RssSampler("eventwire", lambda: counter.handled, warm, trace=job["trace"])
        with sampler:
            started = perf_counter()
            subscription = bus.subscribe(
                "custom.>", counter, durable="replay", batch=BATCH, replay_check=False
            )
            async with subscription, asyncio.timeout(time_limit(count)):
                await counter.done.wait()
            seconds = perf_counter() - started
        refused = dict(bus.security.rejected)
    return _report("eventwire", count, seconds, sampler, refused=refused)


async def consume_raw(job: dict[str, Any]) -> dict[str, Any]:
    """nats-py alone: a durable pull consumer on the same stream, ``fetch`` then ``ack``."""
    count, stream = job["count"], job["stream"]
    received = 0
    nc = await nats.connect(job["url"])
    try:
        js = nc.jetstream()
        config = ConsumerConfig(durable_name="raw", ack_policy=AckPolicy.EXPLICIT)
        await js.add_consumer(stream, config)
        sampler = RssSampler("raw", lambda: received, int(count * WARMUP), trace=job["trace"])
        with sampler:
            started = perf_counter()
            psub = await js.pull_subscribe_bind("raw", stream)
            async with asyncio.timeout(time_limit(count)):
                while received < count:
                    try:
                        msgs = await psub.fetch(BATCH, timeout=1.0)
                    except nats.errors.TimeoutError:
                        continue
                    for msg in msgs:
                        await msg.ack()
                    received += len(msgs)
            seconds = perf_counter() - started
            await psub.unsubscribe()
    finally:
        await nc.close()
    return _report("raw nats-py", count, seconds, sampler)


def _report(
    name: str, count: int, seconds: float, sampler: RssSampler, **extra: Any
) -> dict[str, Any]:
    return {
        "consumer": name,
        "count": count,
        "seconds": seconds,
        "samples": sampler.samples,
        "growth": sampler.growth,
        **extra,
    }


async def child() -> None:
    """Run one consumer as described by the JSON job on stdin; print its report as JSON."""
    job = json.loads(sys.stdin.read())
    consume = consume_eventwire if job["role"] == "eventwire" else consume_raw
    print(json.dumps(await consume(job)))


# ---------------------------------------------------------------------------- parent


async def fill(url: str, root: str, identity: Identity, count: int) -> tuple[str, float]:
    """Publish ``count`` signed events with ``publish_many``, a chunk at a time; return
    the stream's name and the seconds it took."""
    async with eventwire.connect(
        url, tenant=TENANT, root=root, keyring=Keyring.of(identity), name="replay-fill"
    ) as bus:
        started = perf_counter()
        for start in range(0, count, FILL_CHUNK):
            size = min(FILL_CHUNK, count - start)
            items = [CustomEvent("custom.replay.x", "replay", {"p": FILLER}) for _ in range(size)]
            await bus.publish_many(items, identity=identity)
            done = start + size
            if done % (FILL_CHUNK * 10) == 0 or done == count:
                rate = done / (perf_counter() - started)
                print(f"  filled {done:>9,} events  ({rate:,.0f} msgs/s)", flush=True)
        return bus.stream, perf_counter() - started


async def run_child(job: dict[str, Any]) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--child",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate(json.dumps(job).encode())
    if proc.returncode != 0:
        raise RuntimeError(f"the {job['role']} consumer failed (exit {proc.returncode})")
    report: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return report


@dataclass
class Verdict:
    baseline: int  # RSS at the end of the warm-up
    low: float  # largest fall below it afterwards, as a fraction (<= 0)
    high: float  # largest rise above it afterwards (>= 0)
    after_warmup: int  # samples taken after the warm-up
    passed: bool = field(init=False)

    def __post_init__(self) -> None:
        self.passed = -self.low <= TOLERANCE and self.high <= TOLERANCE


def judge(samples: list[tuple[float, int, int]], count: int) -> Verdict:
    after = [rss for _, done, rss in samples if done >= count * WARMUP]
    base = after[0]
    deviations = [(rss - base) / base for rss in after]
    return Verdict(base, min(deviations), max(deviations), len(after) - 1)


def mib(value: float) -> str:
    return f"{value / 2**20:7.1f} MiB"


def show(report: dict[str, Any]) -> Verdict:
    """Print the RSS over time (at most ``TABLE_ROWS`` rows) and the verdict."""
    count, samples = report["count"], report["samples"]
    seconds, name = report["seconds"], report["consumer"]
    print(f"\n{name}: {count:,} events in {seconds:.1f} s ({count / seconds:,.0f} msgs/s)")
    step = max(1, -(-len(samples) // TABLE_ROWS))
    for index, (seconds, done, rss) in enumerate(samples):
        if index % step == 0 or index == len(samples) - 1:
            print(f"  {seconds:7.1f} s  {done:>9,} events  RSS {mib(rss)}")
    verdict = judge(samples, count)
    result = "PASS" if verdict.passed else "FAIL"
    print(
        f"  after warm-up ({WARMUP:.0%} of events): RSS {mib(verdict.baseline)}, "
        f"deviation {verdict.low:+.1%} / {verdict.high:+.1%} over {verdict.after_warmup} "
        f"samples -> {result} (+-{TOLERANCE:.0%})"
    )
    if report.get("refused"):
        print(f"  refused: {report['refused']}")
    for line in report["growth"]:
        print(f"  grew {line}")
    return verdict


async def main(url: str | None, count: int, trace: bool) -> bool:
    identity = Identity.generate(TENANT, "producer")
    root = "replay" + secrets.token_hex(4)
    async with EmbeddedServer() as server:
        target = url or server.url
        print(f"pre-filling {count:,} signed events ({len(FILLER)} B of data each)")
        stream, seconds = await fill(target, root, identity, count)
        print(f"  {count / seconds:,.0f} msgs/s")
        job = {"url": target, "root": root, "stream": stream, "count": count, "trace": trace}
        job["seed"] = identity.seed.hex()
        reports = [await run_child({**job, "role": role}) for role in ("eventwire", "raw")]
        verdicts = [show(report) for report in reports]
        ours, raw = (report["count"] / report["seconds"] for report in reports)
        print(f"\nthroughput eventwire / raw nats-py: {ours / raw:.2f}x")
        if url is not None:
            nc = await nats.connect(url)
            await nc.jetstream().delete_stream(stream)
            await nc.close()
    return all(verdict.passed for verdict in verdicts)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=FULL)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK:,} events")
    parser.add_argument("--url", default=None)
    parser.add_argument("--trace", action="store_true", help="tracemalloc in the consumers")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        asyncio.run(child())
    else:
        ok = asyncio.run(main(args.url, QUICK if args.quick else args.count, args.trace))
        sys.exit(0 if ok else 1)
