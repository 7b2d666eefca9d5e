"""Import time of ``eventwire`` against ``nats`` (nats-py), in fresh interpreters.

    python benchmarks/bench_import.py [--runs N]

Each round runs ``python -c pass``, ``python -c "import nats"``, ``python -c "import
eventwire"`` and a typical application's ``from eventwire import ...`` in turn (so drift on
the machine hits all alike) and reads each child's CPU time (user + sys, from ``wait4``)
and wall time. The children share a private bytecode cache that a warm-up round fills, so
modules load from bytecode as an installed package's do, whatever
``PYTHONDONTWRITEBYTECODE`` says. Prints medians and the ratios to ``import nats``, whole
process and without the interpreter's own start-up (``python -c pass``); asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

CODES = {
    "pass": "pass",
    "nats": "import nats",
    "eventwire": "import eventwire",
    "app": "from eventwire import CustomEvent, Event, Identity, Keyring, connect",
}
TARGET = 1.5  # the goal for import eventwire / import nats


def run_once(code: str, env: dict[str, str]) -> tuple[float, float]:
    """CPU and wall milliseconds of one ``python -c code``."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{sys.executable} -c {code!r} failed ({proc.returncode})")
    return (usage.ru_utime + usage.ru_stime) * 1e3, wall * 1e3


def measure(runs: int) -> dict[str, list[tuple[float, float]]]:
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in CODES}
    with tempfile.TemporaryDirectory(prefix="eventwire-bench-pyc-") as cache:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = cache
        for round_ in range(runs + 1):  # round 0 fills the bytecode cache
            for name, code in CODES.items():
                measured = run_once(code, env)
                if round_:
                    times[name].append(measured)
    return times


def ratios(
    times: dict[str, list[tuple[float, float]]], name: str, kind: int
) -> tuple[float, float]:
    """Median over rounds of ``name`` / ``nats``, whole process and minus ``pass``."""
    rounds = zip(times[name], times["nats"], times["pass"], strict=True)
    whole, net = [], []
    for ours, nats, bare in rounds:
        whole.append(ours[kind] / nats[kind])
        net.append((ours[kind] - bare[kind]) / max(nats[kind] - bare[kind], 1e-3))
    return statistics.median(whole), statistics.median(net)


def main(runs: int) -> None:
    times = measure(runs)
    print(f"fresh interpreters, {runs} interleaved rounds, medians (min-max)")
    for name, code in CODES.items():
        cpu = [c for c, _ in times[name]]
        wall = [w for _, w in times[name]]
        print(
            f"  {code:68}  cpu {statistics.median(cpu):6.1f} ms ({min(cpu):.0f}-{max(cpu):.0f})"
            f"  wall {statistics.median(wall):6.1f} ms"
        )
    for name in ("eventwire", "app"):
        cpu_whole, cpu_net = ratios(times, name, 0)
        wall_whole, wall_net = ratios(times, name, 1)
        print(
            f"{CODES[name]!r} / 'import nats': cpu {cpu_whole:.2f}x whole process, "
            f"{cpu_net:.2f}x without start-up; wall {wall_whole:.2f}x / {wall_net:.2f}x"
        )
    print(f"(the goal for 'import eventwire' is <= {TARGET}x)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    main(parser.parse_args().runs)
