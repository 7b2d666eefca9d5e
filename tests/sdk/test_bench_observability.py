"""``eventwire bench``'s observability case: off and on runs in fresh interpreters, on a real
server; the fields are checked, never the timings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from eventwire.cli._bench_observe import TARGET, observability_overhead
from eventwire.cli._bench_report import BenchResults, observability_table, records

if TYPE_CHECKING:
    from eventwire import EmbeddedServer


async def test_off_and_on_runs_report_a_slowdown(nats_server: EmbeddedServer) -> None:
    seen: list[str] = []
    [overhead] = await observability_overhead(
        nats_server.url, (256,), 200, window=64, batch=64, repeat=2, progress=seen.append
    )
    assert (overhead.size, overhead.count) == (256, 200)
    trials = (overhead.off_trials, overhead.on_trials, overhead.sampled_trials)
    assert [len(each) for each in trials] == [2, 2, 2]
    assert all(seconds > 0 for each in trials for seconds in each)
    assert (overhead.tracing, overhead.metrics) == (True, True)  # the test extra has both
    assert overhead.ratio == overhead.on_seconds / overhead.off_seconds
    assert [line.split(" (")[0] for line in seen] == [
        f"observability {mode} 256 B x 200" for mode in ("off", "on", "sampled")
    ] * 2
    results = BenchResults("nats://x", False, [], [], [], [overhead])
    [record] = records(results)
    assert record["case"] == "observability"
    assert record["target"] == TARGET
    assert record["slowdown"] == round(overhead.ratio, 3)
    assert {"off_msgs_per_s", "on_msgs_per_s", "slowdown_best", "slowdown_sampled"} <= set(record)
    assert record["sampled_ratio"] == 0.01
    assert observability_table(results).row_count == 1
