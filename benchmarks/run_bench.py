"""Run ``eventwire bench`` from a checkout: ``python benchmarks/run_bench.py [--quick] [--json]``.

The same code as the ``eventwire bench`` command (``eventwire.cli._bench``); every option of
the command works here too (``--url``, ``--count``, ``--requests``).
"""

from __future__ import annotations

import sys

from eventwire.cli import app

if __name__ == "__main__":
    app(["bench", *sys.argv[1:]], prog_name="run_bench.py")
