"""``examples/routing.py`` as a user runs it: three agents share a capability, one is killed
with SIGKILL while it holds work, its work is taken over and its failure reported once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).parent.parent / "examples" / "routing.py"


def test_routing_example_takes_over_a_killed_agents_work() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTWIRE_")}
    done = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        cwd=EXAMPLE.parent.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("request by capability answered by summarizer-")
    assert lines[1] == "summarizer-c killed with SIGKILL while holding work"
    assert lines[2].startswith("agent.lifecycle.failed: summarizer-c ")
    assert lines[3] == "31 requests (one routed by the CEL rule), each handled exactly once"
    assert "Traceback" not in done.stderr
