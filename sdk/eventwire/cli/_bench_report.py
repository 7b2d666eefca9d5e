"""Results of ``eventwire bench``: ratios, JSON records and the rich tables."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rich.table import Table

if TYPE_CHECKING:
    from rich.console import Console

    from ._bench_observe import Overhead

RAW = "raw"
HAND_SIGNED = "hand-signed"
EVENTWIRE = "eventwire"
# the same, with replay protection on (the default): one KV claim per first delivery
EVENTWIRE_REPLAY = "eventwire+replay"
CASES = (RAW, HAND_SIGNED, EVENTWIRE, EVENTWIRE_REPLAY)
REQUEST_REPLY = "request-reply"
TARGET = 0.8


@dataclass(frozen=True, slots=True)
class Throughput:
    """A pipeline case: ``count`` messages of ``size`` bytes in ``seconds`` (the median of
    the ``trials``, each the seconds of one run)."""

    case: str
    size: int
    count: int
    seconds: float
    trials: tuple[float, ...] = ()

    @property
    def msgs_per_s(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Latency:
    """Sequential request-reply round trips of one variant, in microseconds."""

    variant: str
    count: int
    p50_us: float
    p99_us: float
    mean_us: float


@dataclass(frozen=True, slots=True)
class ImportTime:
    """Wall time of ``import <module>`` in a fresh interpreter, start-up subtracted."""

    module: str
    ms: float


@dataclass(frozen=True, slots=True)
class BenchResults:
    url: str
    embedded: bool
    throughput: list[Throughput]
    latency: list[Latency]
    imports: list[ImportTime]
    observability: list[Overhead] = field(default_factory=list)

    def rate(self, case: str, size: int) -> float | None:
        for row in self.throughput:
            if row.case == case and row.size == size:
                return row.msgs_per_s
        return None

    def latency_of(self, variant: str) -> Latency | None:
        return next((row for row in self.latency if row.variant == variant), None)

    def import_ms(self, module: str) -> float | None:
        return next((row.ms for row in self.imports if row.module == module), None)


def _ratio(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or base <= 0:
        return None
    return round(value / base, 3)


def _throughput_record(results: BenchResults, row: Throughput) -> dict[str, Any]:
    return {
        "case": row.case,
        "size": row.size,
        "count": row.count,
        "seconds": round(row.seconds, 4),
        "msgs_per_s": round(row.msgs_per_s, 1),
        "mib_per_s": round(row.msgs_per_s * row.size / 2**20, 2),
        "ratio_to_raw": _ratio(row.msgs_per_s, results.rate(RAW, row.size)),
        "ratio_to_hand_signed": _ratio(row.msgs_per_s, results.rate(HAND_SIGNED, row.size)),
        "trials_msgs_per_s": [round(row.count / t, 1) for t in row.trials if t > 0],
    }


def _latency_record(results: BenchResults, row: Latency) -> dict[str, Any]:
    raw, signed = results.latency_of(RAW), results.latency_of(HAND_SIGNED)
    return {
        "case": REQUEST_REPLY,
        "variant": row.variant,
        "count": row.count,
        "p50_us": round(row.p50_us, 1),
        "p99_us": round(row.p99_us, 1),
        "mean_us": round(row.mean_us, 1),
        # Latency ratios: above 1.0 means slower than the baseline.
        "ratio_to_raw": _ratio(row.p50_us, raw.p50_us if raw else None),
        "ratio_to_hand_signed": _ratio(row.p50_us, signed.p50_us if signed else None),
        "p99_ratio_to_raw": _ratio(row.p99_us, raw.p99_us if raw else None),
        "p99_ratio_to_hand_signed": _ratio(row.p99_us, signed.p99_us if signed else None),
    }


def records(results: BenchResults) -> list[dict[str, Any]]:
    """One JSON-ready object per measurement: throughput, request-reply, imports."""
    found: list[dict[str, Any]] = [_throughput_record(results, row) for row in results.throughput]
    found.extend(_latency_record(results, row) for row in results.latency)
    nats_ms = results.import_ms("nats")
    found.extend(
        {
            "case": f"import-{row.module}",
            "module": row.module,
            "ms": round(row.ms, 1),
            "ratio_to_nats": _ratio(row.ms, nats_ms),
        }
        for row in results.imports
    )
    found.extend(row.record() for row in results.observability)
    return found


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def size_label(size: int) -> str:
    return f"{size // 1024} KiB" if size >= 1024 and size % 1024 == 0 else f"{size} B"


def throughput_table(results: BenchResults) -> Table:
    counts = sorted({row.count for row in results.throughput})
    title = f"Publish -> consume pipeline ({', '.join(map(str, counts))} msgs per case and size)"
    table = Table(title=title, title_justify="left")
    for name in ("case", "size", "msgs/s", "MiB/s", "seconds", "vs raw", "vs hand-signed"):
        table.add_column(name, justify="left" if name == "case" else "right")
    for record in records(results):
        if record["case"] not in CASES:
            continue
        table.add_row(
            record["case"],
            size_label(record["size"]),
            f"{record['msgs_per_s']:,.0f}",
            f"{record['mib_per_s']:.2f}",
            f"{record['seconds']:.3f}",
            _times(record["ratio_to_raw"]),
            _times(record["ratio_to_hand_signed"]),
            style="bold" if record["case"] == EVENTWIRE else None,
        )
    return table


def latency_table(results: BenchResults) -> Table:
    counts = sorted({row.count for row in results.latency})
    title = f"Request-reply, sequential ({', '.join(map(str, counts))} requests each)"
    table = Table(title=title, title_justify="left")
    for name in ("variant", "p50 us", "p99 us", "mean us", "p50 vs raw", "p50 vs hand-signed"):
        table.add_column(name, justify="left" if name == "variant" else "right")
    for record in records(results):
        if record["case"] != REQUEST_REPLY:
            continue
        table.add_row(
            record["variant"],
            f"{record['p50_us']:,.0f}",
            f"{record['p99_us']:,.0f}",
            f"{record['mean_us']:,.0f}",
            _times(record["ratio_to_raw"]),
            _times(record["ratio_to_hand_signed"]),
            style="bold" if record["variant"] == EVENTWIRE else None,
        )
    return table


def imports_table(results: BenchResults) -> Table:
    table = Table(
        title="Import time (fresh interpreter, start-up subtracted)", title_justify="left"
    )
    table.add_column("module")
    table.add_column("ms", justify="right")
    table.add_column("vs nats", justify="right")
    for record in records(results):
        if record["case"].startswith("import-"):
            table.add_row(record["module"], f"{record['ms']:.1f}", _times(record["ratio_to_nats"]))
    return table


def observability_table(results: BenchResults) -> Table:
    """eventwire with tracing and metrics off and on: times, CPU per event, the slowdowns."""
    table = Table(
        title="Tracing and metrics: off vs on (eventwire pipeline, fresh interpreters, medians)",
        title_justify="left",
    )
    columns = ("size", "off msgs/s", "on msgs/s", "slowdown", "fastest runs", "1 % sampled")
    cpu = ("CPU us/event off/on/1 %", "CPU slowdown on/1 %")
    for name in (*columns, *cpu, "target"):
        table.add_column(name, justify="right")
    for row in results.observability:
        record = row.record()
        mark = "ok" if record["slowdown"] <= record["target"] else "ABOVE TARGET"
        sampled_mark = "ok" if record["slowdown_sampled"] <= record["target"] else "ABOVE"
        table.add_row(
            size_label(row.size),
            f"{record['off_msgs_per_s']:,.0f}",
            f"{record['on_msgs_per_s']:,.0f}",
            f"{record['slowdown']:.3f}x",
            f"{record['slowdown_best']:.3f}x",
            f"{record['slowdown_sampled']:.3f}x",
            f"{record['off_cpu_us_per_event']:.0f}/{record['on_cpu_us_per_event']:.0f}/"
            f"{record['sampled_cpu_us_per_event']:.0f}",
            f"{record['cpu_slowdown']:.3f}x/{record['cpu_slowdown_sampled']:.3f}x",
            f"<= {record['target']}x: on {mark}, 1 % {sampled_mark}",
        )
    return table


def verdict(results: BenchResults) -> str:
    """One line per size: eventwire against hand-signed and raw, and the target."""
    parts = []
    for size in sorted({row.size for row in results.throughput}):
        ours = results.rate(EVENTWIRE, size)
        c_b = _ratio(ours, results.rate(HAND_SIGNED, size))
        c_a = _ratio(ours, results.rate(RAW, size))
        mark = "" if c_b is None else (" ok" if c_b >= TARGET else " BELOW TARGET")
        parts.append(f"{size_label(size)}: c/b {_times(c_b)}{mark}, c/a {_times(c_a)}")
    return f"eventwire (c) vs hand-signed (b) and raw (a) -- {'; '.join(parts)} (target c/b >= 0.8)"


def render(results: BenchResults, console: Console) -> None:
    where = "embedded nats-server" if results.embedded else "server"
    console.print(f"[dim]{where} at {results.url}[/dim]")
    if results.throughput:
        console.print(throughput_table(results))
        console.print(verdict(results))
    if results.latency:
        console.print(latency_table(results))
    if results.observability:
        console.print(observability_table(results))
    if results.imports:
        console.print(imports_table(results))
