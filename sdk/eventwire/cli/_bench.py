"""``eventwire bench``: eventwire against raw nats-py and hand-signed PyNaCl, on one server.

The measuring is plain async code (:func:`run_bench`), the command only prints it, so
``benchmarks/run_bench.py`` and tests can call the same thing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from eventwire import EmbeddedServer

from ._bench_cases import eventwire_case, hand_signed_case, raw_case
from ._bench_latency import (
    eventwire_request_reply,
    hand_signed_request_reply,
    import_times,
    raw_request_reply,
)
from ._bench_observe import MIN_REPEAT, Overhead, observability_overhead
from ._bench_report import (
    EVENTWIRE,
    EVENTWIRE_REPLAY,
    HAND_SIGNED,
    RAW,
    BenchResults,
    Latency,
    Throughput,
    records,
    render,
    size_label,
)
from ._connect import nats_connection, redact_url

if TYPE_CHECKING:
    from collections.abc import Callable

    from nats.aio.client import Client
    from nats.js import JetStreamContext

DEFAULT_COUNT = 20_000
QUICK_COUNT = 5_000
DEFAULT_REQUESTS = 500
DEFAULT_REPEAT = 3
QUICK_REQUESTS = 200
_WARMUP_COUNT = 1_000
_COUNT_HELP = (
    f"Messages per case and size (default {DEFAULT_COUNT:,}; {QUICK_COUNT:,} with --quick)."
)
_REQUESTS_HELP = (
    f"Request-reply round trips per variant (default {DEFAULT_REQUESTS}; "
    f"{QUICK_REQUESTS} with --quick)."
)


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """What to run: ``url=None`` starts an embedded server for the run."""

    url: str | None = None
    count: int = DEFAULT_COUNT
    requests: int = DEFAULT_REQUESTS
    sizes: tuple[int, ...] = (256, 4096)
    window: int = 512
    batch: int = 256
    import_runs: int = 5
    modules: tuple[str, ...] = ("nats", "eventwire")
    repeat: int = DEFAULT_REPEAT
    observability: bool = True
    observe_repeat: int | None = None  # rounds of the observability case (None: ``repeat``)

    @classmethod
    def of(
        cls,
        *,
        url: str | None,
        quick: bool,
        count: int | None,
        requests: int | None,
        repeat: int = DEFAULT_REPEAT,
        observability: bool = True,
    ) -> BenchConfig:
        if count is None:
            count = QUICK_COUNT if quick else DEFAULT_COUNT
        if requests is None:
            requests = QUICK_REQUESTS if quick else DEFAULT_REQUESTS
        return cls(
            url=url, count=count, requests=requests, import_runs=3 if quick else 5, repeat=repeat,
            observability=observability,
            observe_repeat=repeat if quick else max(repeat, MIN_REPEAT),
        )  # fmt: skip


def _silent(_: str) -> None:
    return None


async def run_bench(config: BenchConfig, progress: Callable[[str], None] = _silent) -> BenchResults:
    """Run every case once on one server and return the measurements."""
    progress("timing imports in fresh interpreters")
    imports = await import_times(config.modules, config.import_runs) if config.modules else []
    async with contextlib.AsyncExitStack() as stack:
        url = config.url
        if url is None:
            url = (await stack.enter_async_context(EmbeddedServer())).url
        nc = await stack.enter_async_context(nats_connection(url, name="eventwire-bench"))
        js = nc.jetstream(publish_async_max_pending=config.window)
        throughput = await _throughput(config, url, js, progress)
        latency = await _latency(config, url, nc, js, progress)
        observed = await _observability(config, url, progress)
    return BenchResults(redact_url(url), config.url is None, throughput, latency, imports, observed)


async def _observability(
    config: BenchConfig, url: str, progress: Callable[[str], None]
) -> list[Overhead]:
    if not config.observability or config.count <= 0:
        return []
    return await observability_overhead(
        url, config.sizes, config.count, window=config.window, batch=config.batch,
        repeat=config.observe_repeat or config.repeat, progress=progress,
    )  # fmt: skip


async def _throughput(
    config: BenchConfig, url: str, js: JetStreamContext, progress: Callable[[str], None]
) -> list[Throughput]:
    if config.count <= 0:
        return []
    progress("warming up")
    warmup = min(config.count, _WARMUP_COUNT)
    await raw_case(js, config.sizes[0], warmup, batch=config.batch)
    await eventwire_case(url, js, config.sizes[0], warmup, window=config.window, batch=64)
    results = []
    for size in config.sizes:
        trials: dict[str, list[float]] = {case: [] for case in _CASES}
        for trial in range(1, config.repeat + 1):  # interleaved, so drift hits every case
            for case in _CASES:
                progress(f"{case} {size_label(size)} x {config.count} ({trial}/{config.repeat})")
                trials[case].append(await _run_case(case, config, url, js, size))
        results += [
            Throughput(case, size, config.count, statistics.median(times), tuple(times))
            for case, times in trials.items()
        ]
    return results


_CASES = (RAW, HAND_SIGNED, EVENTWIRE, EVENTWIRE_REPLAY)


async def _run_case(
    case: str, config: BenchConfig, url: str, js: JetStreamContext, size: int
) -> float:
    if case == RAW:
        return await raw_case(js, size, config.count, batch=config.batch)
    if case == HAND_SIGNED:
        return await hand_signed_case(js, size, config.count, batch=config.batch)
    return await eventwire_case(
        url, js, size, config.count, window=config.window, batch=config.batch,
        replay=case == EVENTWIRE_REPLAY,
    )  # fmt: skip


async def _latency(
    config: BenchConfig,
    url: str,
    nc: Client,
    js: JetStreamContext,
    progress: Callable[[str], None],
) -> list[Latency]:
    if config.requests <= 0:
        return []
    progress(f"request-reply x {config.requests}")
    return [
        await raw_request_reply(nc, config.requests),
        await hand_signed_request_reply(nc, config.requests),
        await eventwire_request_reply(url, js, config.requests),
    ]


def bench(
    *,
    url: Annotated[
        str | None,
        typer.Option(help="NATS server URL; by default an embedded nats-server is started."),
    ] = None,
    quick: Annotated[
        bool,
        typer.Option("--quick", help="Fewer messages and requests: done in well under a minute."),
    ] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="One JSON object per line per measurement.")
    ] = False,
    count: Annotated[
        int | None,
        typer.Option(min=1, help=_COUNT_HELP),
    ] = None,
    requests: Annotated[
        int | None,
        typer.Option(min=1, help=_REQUESTS_HELP),
    ] = None,
    repeat: Annotated[
        int,
        typer.Option(
            min=1,
            help="Runs of every throughput case, interleaved; the median is reported "
            f"(default {DEFAULT_REPEAT}).",
        ),
    ] = DEFAULT_REPEAT,
    observability: Annotated[
        bool,
        typer.Option(
            help="Also run eventwire with tracing and metrics on against off (fresh "
            f"interpreters, at least {MIN_REPEAT} rounds unless --quick), and print the "
            "slowdown (target <= 1.1x)."
        ),
    ] = True,
) -> None:
    """Measure eventwire against raw nats-py and hand-signed PyNaCl on the same server."""
    config = BenchConfig.of(
        url=url, quick=quick, count=count, requests=requests, repeat=repeat,
        observability=observability,
    )  # fmt: skip
    err = Console(stderr=True)

    def progress(message: str) -> None:
        if not json_output:
            err.print(f"[dim]... {message}[/dim]")

    results = asyncio.run(run_bench(config, progress))  # errors: the CLI boundary's
    if json_output:
        for record in records(results):
            typer.echo(json.dumps(record))
    else:
        render(results, Console())
