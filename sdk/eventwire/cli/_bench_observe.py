"""The bench's observability case: the eventwire pipeline with tracing and metrics on, against
the same pipeline with them off, as a ratio of their times (target: at most 1.1x slower).

eventwire chooses its hooks once, at import, so each run is a fresh interpreter: "off"
makes ``opentelemetry`` and ``prometheus_client`` unimportable (eventwire then wraps
nothing); "on" installs OpenTelemetry's SDK tracer provider with a batch processor whose
exporter drops the spans (the cost of recording them, not of shipping them) and publishes
inside a span, so every event carries a signed ``traceparent`` and every handler run is a
CONSUMER span of that trace; the Prometheus metrics count and time every handler run.
"sampled" is "on" with a sampler recording 1 % of the traces (each handler run its own
trace, so 1 % of them are recorded), the usual production setting. Runs are interleaved
off, on, sampled, off, ... and the medians compared (and the fastest runs, which a busy
machine disturbs least).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
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
class Overhead:
    """The pipeline's seconds per run with observability off, on (every handler run a
    recorded span) and on with 1 % of traces sampled; compared by their medians (and,
    for a noisy machine, by their fastest runs)."""

    size: int
    count: int
    off_trials: tuple[float, ...]
    on_trials: tuple[float, ...]
    sampled_trials: tuple[float, ...]
    tracing: bool
    metrics: bool

    @property
    def off_seconds(self) -> float:
        return statistics.median(self.off_trials)

    @property
    def on_seconds(self) -> float:
        return statistics.median(self.on_trials)

    @property
    def ratio(self) -> float:
        """How many times slower with observability on (1.05: 5 % slower)."""
        return _slowdown(self.on_trials, self.off_trials, statistics.median)

    def record(self) -> dict[str, Any]:
        median, best = statistics.median, min
        return {
            "case": OBSERVABILITY,
            "size": self.size,
            "count": self.count,
            "off_seconds": round(self.off_seconds, 4),
            "on_seconds": round(self.on_seconds, 4),
            "off_msgs_per_s": round(self.count / self.off_seconds, 1),
            "on_msgs_per_s": round(self.count / self.on_seconds, 1),
            "slowdown": round(self.ratio, 3),
            "slowdown_best": round(_slowdown(self.on_trials, self.off_trials, best), 3),
            "slowdown_sampled": round(_slowdown(self.sampled_trials, self.off_trials, median), 3),
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
    """One pipeline run in this interpreter (inside one span when ``on``, so every event
    continues it; sampled: each handler run its own trace): its seconds, and whether
    tracing and metrics were active."""
    tracing = sys.modules.get("opentelemetry.trace") is not None
    metrics = sys.modules.get("prometheus_client") is not None
    async with nats_connection(url, name="eventwire-bench") as nc:
        js = nc.jetstream(publish_async_max_pending=window)
        if mode == "on" and tracing:
            from opentelemetry import trace

            with trace.get_tracer("eventwire-bench").start_as_current_span("bench"):
                seconds = await eventwire_case(url, js, size, count, window=window, batch=batch)
        else:
            seconds = await eventwire_case(url, js, size, count, window=window, batch=batch)
    return {"seconds": seconds, "tracing": tracing, "metrics": metrics}


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
    """Per size, ``repeat`` runs of each mode (off, on, sampled), interleaved."""
    found = []
    for size in sizes:
        trials: dict[Mode, list[float]] = {mode: [] for mode in MODES}
        active = (False, False)
        for trial in range(1, repeat + 1):
            for mode in MODES:
                progress(f"{OBSERVABILITY} {mode} {size} B x {count} ({trial}/{repeat})")
                run = await run_child(url, size, count, window=window, batch=batch, mode=mode)
                trials[mode].append(float(run["seconds"]))
                flags = (bool(run["tracing"]), bool(run["metrics"]))
                if mode == "off" and any(flags):
                    raise EventwireError("the off run still had tracing or metrics")
                active = flags if mode == "on" else active
        off, on, sampled = (tuple(trials[mode]) for mode in MODES)
        found.append(Overhead(size, count, off, on, sampled, *active))
    return found
