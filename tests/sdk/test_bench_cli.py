"""``eventwire bench``: every case runs and reports its fields. Timings are never asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import TYPE_CHECKING, Any

from eventwire.cli._bench import BenchConfig, run_bench
from eventwire.cli._bench_report import (
    BenchResults,
    ImportTime,
    Latency,
    Throughput,
    records,
)

if TYPE_CHECKING:
    from eventwire import EmbeddedServer

THROUGHPUT_CASES = {"raw", "hand-signed", "eventwire"}
VARIANTS = {"raw", "hand-signed", "eventwire"}


def _check_records(found: list[dict[str, Any]], *, imports: bool) -> None:
    throughput = [r for r in found if r["case"] in THROUGHPUT_CASES]
    assert {(r["case"], r["size"]) for r in throughput} == {
        (case, size) for case in THROUGHPUT_CASES for size in (256, 4096)
    }
    for record in throughput:
        assert record["msgs_per_s"] > 0
        assert {"ratio_to_raw", "ratio_to_hand_signed", "count", "seconds"} <= set(record)
        if record["case"] == "raw":
            assert record["ratio_to_raw"] == 1.0
    latency = [r for r in found if r["case"] == "request-reply"]
    assert {r["variant"] for r in latency} == VARIANTS
    for record in latency:
        assert record["p50_us"] > 0
        assert record["p99_us"] >= record["p50_us"]
        assert {"ratio_to_raw", "ratio_to_hand_signed"} <= set(record)
    cases = {r["case"] for r in found}
    if imports:
        assert {"import-eventwire", "import-nats"} <= cases
        assert all("ms" in r for r in found if r["case"].startswith("import-"))
    else:
        assert not any(case.startswith("import-") for case in cases)


def test_bench_command_prints_one_json_object_per_line() -> None:
    # The command calls asyncio.run, so it runs in its own interpreter (no nested loops).
    command = "from eventwire.cli import main; main()"
    args = ["bench", "--json", "--quick", "--count", "200", "--requests", "20", "--repeat", "2"]
    done = subprocess.run(
        [sys.executable, "-c", command, *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    found = [json.loads(line) for line in lines]
    assert all(isinstance(record, dict) for record in found)
    _check_records(found, imports=True)
    assert all(r["count"] == 200 for r in found if r["case"] in THROUGHPUT_CASES)
    # every case ran twice, interleaved; the median of two is their mean
    throughput = [r for r in found if r["case"] in THROUGHPUT_CASES]
    assert all(len(r["trials_msgs_per_s"]) == 2 for r in throughput)


async def test_run_bench_on_a_given_server(nats_server: EmbeddedServer) -> None:
    config = BenchConfig(url=nats_server.url, count=100, requests=10, modules=(), repeat=1)
    results = await run_bench(config)
    assert results.url == nats_server.url
    assert not results.embedded
    _check_records(records(results), imports=False)


def test_ratios_are_relative_to_the_same_size() -> None:
    results = BenchResults(
        url="nats://127.0.0.1:4222",
        embedded=True,
        throughput=[
            Throughput("raw", 256, 1000, 0.1),
            Throughput("hand-signed", 256, 1000, 0.2),
            Throughput("eventwire", 256, 1000, 0.25),
            Throughput("raw", 4096, 1000, 0.5),
        ],
        latency=[
            Latency("raw", 10, 100.0, 200.0, 120.0),
            Latency("eventwire", 10, 300.0, 400.0, 310.0),
        ],
        imports=[ImportTime("nats", 100.0), ImportTime("eventwire", 150.0)],
    )
    by_key = {(r["case"], r.get("size"), r.get("variant")): r for r in records(results)}
    ours = by_key["eventwire", 256, None]
    assert ours["msgs_per_s"] == 4000.0
    assert ours["ratio_to_raw"] == 0.4
    assert ours["ratio_to_hand_signed"] == 0.8
    assert by_key["raw", 4096, None]["ratio_to_hand_signed"] is None
    assert by_key["request-reply", None, "eventwire"]["ratio_to_raw"] == 3.0
    assert by_key["request-reply", None, "eventwire"]["ratio_to_hand_signed"] is None
    assert by_key["import-eventwire", None, None]["ratio_to_nats"] == 1.5
