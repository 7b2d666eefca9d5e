"""``eventwire workflows stuck``: the choreography steps reported stuck, from the stream.

Reports are events like any other: only those signed by a key given with ``--trust``
are listed (the trackers' public key entries).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from eventwire import keyring_of_entries, read_stuck

from ._connect import open_bus
from ._dlq import printable
from ._output import stdout

if TYPE_CHECKING:
    from eventwire import StuckStep

Url = Annotated[
    str,
    typer.Option(
        envvar="EVENTWIRE_URL",
        help="NATS server URL, with the user and password if the server needs them.",
    ),
]
COLUMNS = ("flow", "correlation", "missing step", "last step seen", "deadline", "overdue by")


def stuck(  # noqa: PLR0917 - typer reads options from the signature
    url: Url,
    root: Annotated[str, typer.Option(help="Subject root of the deployment.")] = "ew",
    tenant: Annotated[str, typer.Option(help="Tenant of the deployment.")] = "default",
    flow: Annotated[str | None, typer.Option(help="Only the steps of this flow.")] = None,
    still: Annotated[
        bool, typer.Option("--open", help="Only steps still missing (not recovered).")
    ] = False,
    trust: Annotated[
        list[str] | None,
        typer.Option(help="Public key entry (JSON file) of a tracker to believe; repeat."),
    ] = None,
    json_: Annotated[
        bool, typer.Option("--json", help="Print one JSON object per line instead.")
    ] = False,
) -> None:
    """List the choreography steps reported stuck (system.coordination.stuck): the flow,
    the correlation, the missing step, the last step seen, the deadline, how late it was
    reported, who reported it, and whether the step arrived later (recovered)."""
    keys = keyring_of_entries(trust or ())

    async def main() -> list[StuckStep]:
        async with open_bus(url, tenant=tenant, root=root) as bus:
            for key in keys:
                bus.keyring.add(key)
            return await read_stuck(bus, flow=flow, include_recovered=not still)

    found = asyncio.run(main())
    if json_:
        for entry in found:
            typer.echo(json.dumps(as_json(entry), ensure_ascii=False))
        return
    console = stdout()
    if not found:
        console.print(f"no stuck steps in {tenant}/{root}")
        return
    console.print(table(found, f"stuck steps in {tenant}/{root}"))


def as_json(entry: StuckStep) -> dict[str, object]:
    return {**dataclasses.asdict(entry), "recovered": entry.recovered}


def table(found: list[StuckStep], title: str, now: float | None = None) -> Table:
    view = Table(title=title)
    for column in (*COLUMNS, "reported by", "state"):
        view.add_column(column)
    for entry in found:
        view.add_row(*(escape(printable(cell)) for cell in row(entry, now)))
    return view


def row(entry: StuckStep, now: float | None = None) -> list[str]:
    """One stuck step as table cells."""
    age = (time.time() if now is None else now) - entry.reported_at
    state = "stuck"
    if entry.recovered_at is not None:
        state = (
            f"recovered {_clock(entry.recovered_at)} (+{entry.recovered_at - entry.deadline:.1f}s)"
        )
    return [
        entry.flow,
        entry.correlation,
        f"{entry.step_index}: {entry.step}",
        f"{entry.last_step_index}: {entry.last_step}",
        _clock(entry.deadline),
        f"{entry.overdue_by:.1f}s",
        f"{entry.signer} ({age:.0f}s ago)",
        state,
    ]


def _clock(seconds: float) -> str:
    return f"{datetime.fromtimestamp(seconds, UTC):%Y-%m-%d %H:%M:%S}"


__all__ = ["as_json", "row", "stuck", "table"]
