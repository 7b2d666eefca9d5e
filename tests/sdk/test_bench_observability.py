"""``eventwire bench``'s observability case: off and on runs in fresh interpreters, on a real
server; the fields are checked, never the timings."""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING

from eventwire.cli._bench_observe import MODES, TARGET, observability_overhead
from eventwire.cli._bench_report import BenchResults, observability_table, records

if TYPE_CHECKING:
    from eventwire import EmbeddedServer


async def test_off_and_on_runs_report_a_slowdown(nats_server: EmbeddedServer) -> None:
    seen: list[str] = []
    [overhead] = await observability_overhead(
        nats_server.url, (256,), 200, window=64, batch=64, repeat=2, progress=seen.append
    )
    assert (overhead.size, overhead.count) == (256, 200)
    trials = (overhead.off, overhead.on, overhead.sampled)
    assert [(len(each.wall), len(each.cpu)) for each in trials] == [(2, 2)] * 3
    assert all(seconds > 0 for each in trials for seconds in each.wall + each.cpu)
    assert (overhead.tracing, overhead.metrics) == (True, True)  # the test extra has both
    assert overhead.ratio == overhead.on_seconds / overhead.off_seconds
    # interleaved, the order rotated each round so no mode always runs first
    rounds = [seen[i : i + 3] for i in range(0, len(seen), 3)]
    assert len(rounds) == 2
    for number, modes in enumerate(rounds):
        shift = number % 3
        expected = MODES[shift:] + MODES[:shift]
        assert modes == [f"observability {mode} 256 B x 200 ({number + 1}/2)" for mode in expected]
    results = BenchResults("nats://x", False, [], [], [], [overhead])
    [record] = records(results)
    assert record["case"] == "observability"
    assert record["target"] == TARGET
    assert record["slowdown"] == round(overhead.ratio, 3)
    assert {"off_msgs_per_s", "on_msgs_per_s", "slowdown_best", "slowdown_sampled"} <= set(record)
    assert record["runs"] == 2
    per_event = [record[f"{mode}_cpu_us_per_event"] for mode in MODES]
    assert per_event == [round(overhead.cpu_us(each), 1) for each in trials]
    assert all(us > 0 for us in per_event)
    cpu_ratio = statistics.median(overhead.on.cpu) / statistics.median(overhead.off.cpu)
    assert record["cpu_slowdown"] == round(cpu_ratio, 3)
    assert record["cpu_slowdown_best"] == round(min(overhead.on.cpu) / min(overhead.off.cpu), 3)
    assert {"cpu_slowdown_sampled", "cpu_slowdown_sampled_best"} <= set(record)
    assert record["sampled_ratio"] == 0.01
    assert observability_table(results).row_count == 1
