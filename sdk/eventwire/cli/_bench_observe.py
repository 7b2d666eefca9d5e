"""The bench's observability case: the eventwire pipeline with tracing and metrics on, against
the same pipeline with them off, as a ratio of their times (target: at most 1.1x slower).

eventwire chooses its hooks once, at import, so each run is a fresh interpreter: "off"
makes ``opentelemetry`` and ``prometheus_client`` unimportable (eventwire then wraps
nothing); "on" installs OpenTelemetry's SDK tracer provider with a batch processor whose
exporter drops the spans (the cost of recording them, not of shipping them) and publishes
inside a span, so every event carries a signed ``traceparent`` and every handler run is a
CONSUMER span of that trace; the Prometheus metrics count and time every handler run.
"sampled" is "on" with a sampler recording 1 % of the traces (each handler run its own
trace, so 1 % of them are recorded), the usual production setting.

Each child warms up with a short run first, then times one run: its wall seconds and its
CPU seconds (``time.process_time``: every thread of the process, the span exporter's too),
which a busy machine disturbs far less than wall time. Runs are interleaved, the order of
the modes rotated each round (off, on, sampled; on, sampled, off; ...), at least
:data:`MIN_REPEAT` rounds; the medians are compared (and the fastest runs).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from eventwire import EventwireError

from ._bench_cases import eventwire_case, time_limit
from ._connect import nats_connection

if TYPE_CHECKING:
    from collections.abc import Callable

OBSERVABILITY = "observability"
TARGET = 1.1
_BLOCKED = ("opentelemetry", "prometheus_client")
SAMPLED = 0.01  # the sampled variant records 1 % of the traces
MIN_REPEAT = 5  # rounds of the three modes, at least
_WARMUP = 500  # events of the untimed warm-up run in each child
Mode = Literal["off", "on", "sampled"]
MODES: tuple[Mode, ...] = ("off", "on", "sampled")

# The child interpreter: chooses what eventwire will find at import, then runs one case.
_CHILD = f"""
import asyncio, json, sys
SAMPLED = {SAMPLED}
args = json.loads(sys.argv[1])
for name in args.pop("block"):
    sys.modules[name] = None  # unimportable: eventwire runs without that extra
if args["mode"] != "off":
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor, SpanExporter, SpanExportResult,
        )
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        class Dropped(SpanExporter):
            def export(self, spans):
                return SpanExportResult.SUCCESS

        sampled = args["mode"] == "sampled"
        ratio = ParentBased(TraceIdRatioBased(SAMPLED))
        provider = TracerProvider(sampler=ratio) if sampled else TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(Dropped()))
        trace.set_tracer_provider(provider)
    except ImportError:
        pass  # the API alone (or none): OpenTelemetry's no-op tracer
from eventwire.cli._bench_observe import child_run
print(json.dumps(asyncio.run(child_run(**args))))
"""


@dataclass(frozen=True, slots=True)
class Trials:
    """One mode's runs: the wall seconds and the CPU seconds of each."""

    wall: tuple[float, ...]
    cpu: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Overhead:
    """The pipeline's runs with observability off, on (every handler run a recorded span)
    and on with 1 % of traces sampled; compared by their medians (and, for a noisy
    machine, by their fastest runs), in wall time and in CPU time per event."""

    size: int
    count: int
    off: Trials
    on: Trials
    sampled: Trials
    tracing: bool
    metrics: bool

    @property
    def off_seconds(self) -> float:
        return statistics.median(self.off.wall)

    @property
    def on_seconds(self) -> float:
        return statistics.median(self.on.wall)

    @property
    def ratio(self) -> float:
        """How many times slower with observability on (1.05: 5 % slower)."""
        return _slowdown(self.on.wall, self.off.wall, statistics.median)

    def cpu_us(self, trials: Trials) -> float:
        """The median CPU microseconds per event of ``trials``."""
        return statistics.median(trials.cpu) * 1e6 / self.count if trials.cpu else 0.0

    def record(self) -> dict[str, Any]:
        median, best = statistics.median, min
        off, on, sampled = self.off, self.on, self.sampled
        return {
            "case": OBSERVABILITY,
            "size": self.size,
            "count": self.count,
            "runs": len(off.wall),
            "off_seconds": round(self.off_seconds, 4),
            "on_seconds": round(self.on_seconds, 4),
            "off_msgs_per_s": round(self.count / self.off_seconds, 1),
            "on_msgs_per_s": round(self.count / self.on_seconds, 1),
            "slowdown": round(self.ratio, 3),
            "slowdown_best": round(_slowdown(on.wall, off.wall, best), 3),
            "slowdown_sampled": round(_slowdown(sampled.wall, off.wall, median), 3),
            "slowdown_sampled_best": round(_slowdown(sampled.wall, off.wall, best), 3),
            "off_cpu_us_per_event": round(self.cpu_us(off), 1),
            "on_cpu_us_per_event": round(self.cpu_us(on), 1),
            "sampled_cpu_us_per_event": round(self.cpu_us(sampled), 1),
            "cpu_slowdown": round(_slowdown(on.cpu, off.cpu, median), 3),
            "cpu_slowdown_sampled": round(_slowdown(sampled.cpu, off.cpu, median), 3),
            "cpu_slowdown_best": round(_slowdown(on.cpu, off.cpu, best), 3),
            "cpu_slowdown_sampled_best": round(_slowdown(sampled.cpu, off.cpu, best), 3),
            "sampled_ratio": SAMPLED,
            "target": TARGET,
            "tracing": self.tracing,
            "metrics": self.metrics,
        }


def _slowdown(
    trials: tuple[float, ...], base: tuple[float, ...], pick: Callable[[tuple[float, ...]], float]
) -> float:
    if not trials or not base or pick(base) <= 0:
        return 0.0
    return pick(trials) / pick(base)


async def child_run(
    *, url: str, size: int, count: int, window: int, batch: int, mode: Mode
) -> dict[str, Any]:
    """A warm-up run, then one timed pipeline run in this interpreter (inside one span when
    ``on``, so every event continues it; sampled: each handler run its own trace): its
    wall and CPU seconds, and whether tracing and metrics were active."""
    tracing = sys.modules.get("opentelemetry.trace") is not None
    metrics = sys.modules.get("prometheus_client") is not None
    async with nats_connection(url, name="eventwire-bench") as nc:
        js = nc.jetstream(publish_async_max_pending=window)
        with _bench_span(mode == "on" and tracing):
            await eventwire_case(url, js, size, min(count, _WARMUP), window=window, batch=batch)
            cpu = time.process_time()
            seconds = await eventwire_case(url, js, size, count, window=window, batch=batch)
            cpu = time.process_time() - cpu
    return {"seconds": seconds, "cpu_seconds": cpu, "tracing": tracing, "metrics": metrics}


def _bench_span(active: bool) -> AbstractContextManager[object]:
    """The ``bench`` span every event of an ``on`` run continues (else nothing)."""
    if not active:
        return nullcontext()
    from opentelemetry import trace

    return trace.get_tracer("eventwire-bench").start_as_current_span("bench")


async def run_child(
    url: str,
    size: int,
    count: int,
    *,
    window: int,
    batch: int,
    mode: Mode,
    block: tuple[str, ...] | None = None,
) -> Any:
    """One run in a fresh interpreter (see :func:`child_run`); ``block`` makes modules
    unimportable (default: both extras when off, none otherwise)."""
    blocked = list(block if block is not None else (_BLOCKED if mode == "off" else ()))
    args = {"url": url, "size": size, "count": count, "window": window, "batch": batch}
    args |= {"mode": mode, "block": blocked}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CHILD, json.dumps(args),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with asyncio.timeout(time_limit(count) + 30):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise EventwireError("the observability bench run did not finish in time") from None
    if proc.returncode != 0:
        tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise EventwireError(f"the observability bench run failed: {tail[0]}")
    return json.loads(out)


async def observability_overhead(
    url: str,
    sizes: tuple[int, ...],
    count: int,
    *,
    window: int,
    batch: int,
    repeat: int,
    progress: Callable[[str], None],
) -> list[Overhead]:
    """Per size, ``repeat`` rounds of the three modes (off, on, sampled), interleaved, the
    order rotated each round (``eventwire bench`` asks for at least :data:`MIN_REPEAT`)."""
    rounds = repeat
    found = []
    for size in sizes:
        wall: dict[Mode, list[float]] = {mode: [] for mode in MODES}
        cpu: dict[Mode, list[float]] = {mode: [] for mode in MODES}
        active = (False, False)
        for trial in range(rounds):
            shift = trial % len(MODES)
            for mode in MODES[shift:] + MODES[:shift]:
                progress(f"{OBSERVABILITY} {mode} {size} B x {count} ({trial + 1}/{rounds})")
                run = await run_child(url, size, count, window=window, batch=batch, mode=mode)
                wall[mode].append(float(run["seconds"]))
                cpu[mode].append(float(run["cpu_seconds"]))
                flags = (bool(run["tracing"]), bool(run["metrics"]))
                if mode == "off" and any(flags):
                    raise EventwireError("the off run still had tracing or metrics")
                active = flags if mode == "on" else active
        off, on, sampled = (Trials(tuple(wall[mode]), tuple(cpu[mode])) for mode in MODES)
        found.append(Overhead(size, count, off, on, sampled, *active))
    return found
