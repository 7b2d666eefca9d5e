"""The bench's observability case: the eventwire pipeline with tracing and metrics on, against
the same pipeline with them off, as a ratio of their times (target: at most 1.1x slower).

eventwire chooses its hooks once, at import, so each run is a fresh interpreter: "off"
makes ``opentelemetry`` and ``prometheus_client`` unimportable (eventwire then wraps
nothing); "on" installs OpenTelemetry's SDK tracer provider with a batch processor whose
exporter drops the spans (the cost of recording them, not of shipping them) and publishes
inside a span, so every event carries a signed ``traceparent`` and every handler run is a
CONSUMER span of that trace; the Prometheus metrics count and time every handler run. Runs
are interleaved off, on, off, on... and the medians compared.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from eventwire import EventwireError

from ._bench_cases import eventwire_case, time_limit
from ._connect import nats_connection

if TYPE_CHECKING:
    from collections.abc import Callable

OBSERVABILITY = "observability"
TARGET = 1.1
_BLOCKED = ("opentelemetry", "prometheus_client")

# The child interpreter: chooses what eventwire will find at import, then runs one case.
_CHILD = """
import asyncio, json, sys
args = json.loads(sys.argv[1])
for name in args.pop("block"):
    sys.modules[name] = None  # unimportable: eventwire runs without that extra
if args["on"]:
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor, SpanExporter, SpanExportResult,
        )

        class Dropped(SpanExporter):
            def export(self, spans):
                return SpanExportResult.SUCCESS

        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(Dropped()))
        trace.set_tracer_provider(provider)
    except ImportError:
        pass  # the API alone (or none): OpenTelemetry's no-op tracer
from eventwire.cli._bench_observe import child_run
print(json.dumps(asyncio.run(child_run(**args))))
"""


@dataclass(frozen=True, slots=True)
class Overhead:
    """The pipeline's seconds with observability off and on (medians of the trials)."""

    size: int
    count: int
    off_trials: tuple[float, ...]
    on_trials: tuple[float, ...]
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
        return self.on_seconds / self.off_seconds if self.off_seconds > 0 else 0.0

    def record(self) -> dict[str, Any]:
        return {
            "case": OBSERVABILITY,
            "size": self.size,
            "count": self.count,
            "off_seconds": round(self.off_seconds, 4),
            "on_seconds": round(self.on_seconds, 4),
            "off_msgs_per_s": round(self.count / self.off_seconds, 1),
            "on_msgs_per_s": round(self.count / self.on_seconds, 1),
            "slowdown": round(self.ratio, 3),
            "target": TARGET,
            "tracing": self.tracing,
            "metrics": self.metrics,
        }


async def child_run(
    *, url: str, size: int, count: int, window: int, batch: int, on: bool
) -> dict[str, Any]:
    """One pipeline run in this interpreter (inside a span when ``on``): its seconds,
    and whether tracing and metrics were active."""
    tracing = sys.modules.get("opentelemetry.trace") is not None
    metrics = sys.modules.get("prometheus_client") is not None
    async with nats_connection(url, name="eventwire-bench") as nc:
        js = nc.jetstream(publish_async_max_pending=window)
        if on and tracing:
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
    on: bool,
    block: tuple[str, ...] | None = None,
) -> Any:
    """One run in a fresh interpreter: ``on`` installs a recording tracer provider and
    publishes inside a span; ``block`` makes modules unimportable (default: both extras
    when off, none when on)."""
    blocked = list(block if block is not None else (() if on else _BLOCKED))
    args = {"url": url, "size": size, "count": count, "window": window, "batch": batch}
    args |= {"on": on, "block": blocked}
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
    """Per size, ``repeat`` runs with observability off and on, interleaved."""
    found = []
    for size in sizes:
        trials: dict[bool, list[float]] = {False: [], True: []}
        active = (False, False)
        for trial in range(1, repeat + 1):
            for on in (False, True):
                state = "on" if on else "off"
                progress(f"{OBSERVABILITY} {state} {size} B x {count} ({trial}/{repeat})")
                run = await run_child(url, size, count, window=window, batch=batch, on=on)
                trials[on].append(float(run["seconds"]))
                flags = (bool(run["tracing"]), bool(run["metrics"]))
                if not on and any(flags):
                    raise EventwireError("the off run still had tracing or metrics")
                active = flags if on else active
        found.append(Overhead(size, count, tuple(trials[False]), tuple(trials[True]), *active))
    return found
