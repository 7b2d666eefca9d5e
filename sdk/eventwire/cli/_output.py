"""What the commands print on stdout: tables for people, JSON for programs.

On a terminal, rich fits tables to its width. Piped or redirected, nothing is wrapped or
cut (kids, subjects and errors come out whole, whatever ``COLUMNS`` says); ``--json``
prints one JSON document instead.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console

UNLIMITED = 100_000  # columns when stdout is not a terminal: never wrap, never cut

Json = Annotated[
    bool, typer.Option("--json", help="Print one JSON document instead (for scripts).")
]


def stdout() -> Console:
    """A console on the current stdout: the terminal's width, or unlimited when piped."""
    if sys.stdout.isatty():
        return Console(highlight=False)
    return Console(highlight=False, width=UNLIMITED, soft_wrap=True)


def print_json(value: Any) -> None:
    """``value`` as indented JSON on stdout (not through rich: no markup, no wrapping)."""
    typer.echo(json.dumps(value, indent=2, ensure_ascii=False))
