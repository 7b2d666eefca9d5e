"""``eventwire streams diff|apply``: the streams as the code declares them, against a server."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated

import nats
import nats.errors
import typer
from rich.console import Console
from rich.table import Table

from eventwire import StreamConfigError
from eventwire._dlq import dlq_stream_config
from eventwire._streams import apply_stream, diff_stream, events_stream_config
from eventwire._subjects import MAX_PARTITIONS, check_partitions

if TYPE_CHECKING:
    from nats.js.api import StreamConfig

app = typer.Typer(help="Compare or apply the declared streams.", no_args_is_help=True)
Url = Annotated[str, typer.Option(envvar="EVENTWIRE_URL", help="NATS server URL.")]
Root = Annotated[str, typer.Option(help="Subject root of the deployment.")]
Replicas = Annotated[int, typer.Option(help="Replicas the deployment declares.")]
Partitions = Annotated[
    int, typer.Option(min=0, max=MAX_PARTITIONS, help="Partitions the deployment declares.")
]
console = Console(highlight=False)


def _declared(root: str, replicas: int, partitions: int = 0) -> list[StreamConfig]:
    return [
        events_stream_config(root, replicas=replicas, partitions=check_partitions(partitions)),
        dlq_stream_config(root, replicas=replicas),
    ]


async def _diff(url: str, root: str, replicas: int, partitions: int) -> int:
    nc = await nats.connect(url, max_reconnect_attempts=1)
    try:
        table = Table(title=f"declared streams of root {root!r} at {url}")
        for column in ("stream", "setting", "server", "code", "fix"):
            table.add_column(column)
        drift = 0
        for wanted in _declared(root, replicas, partitions):
            diffs = await diff_stream(nc.jetstream(), wanted)
            if diffs is None:
                table.add_row(str(wanted.name), "(whole stream)", "absent", "declared", "apply")
                drift += 1
            for d in diffs or []:
                fix = "apply" if d.updatable else "recreate (data!)"
                table.add_row(d.stream, d.field, repr(d.server), repr(d.code), fix)
                drift += 1
        console.print(table if drift else f"no drift: the streams of root {root!r} match")
        return drift
    finally:
        await nc.close()


async def _apply(url: str, root: str, replicas: int, partitions: int) -> None:
    nc = await nats.connect(url, max_reconnect_attempts=1)
    try:
        for wanted in _declared(root, replicas, partitions):
            changed = await apply_stream(nc.jetstream(), wanted)
            console.print(f"{wanted.name}: " + (", ".join(d.field for d in changed) or "ok"))
    finally:
        await nc.close()


@app.command()
def diff(url: Url, root: Root = "ew", replicas: Replicas = 1, partitions: Partitions = 0) -> None:
    """Show every setting where the server differs from the code; exit 1 on drift."""
    try:
        drift = asyncio.run(_diff(url, root, replicas, partitions))
    except (nats.errors.Error, OSError) as exc:
        console.print(f"[red]error:[/red] {exc!r}")
        raise typer.Exit(2) from None
    raise typer.Exit(1 if drift else 0)


@app.command()
def apply(url: Url, root: Root = "ew", replicas: Replicas = 1, partitions: Partitions = 0) -> None:
    """Create missing streams and update changeable settings to the code's."""
    try:
        asyncio.run(_apply(url, root, replicas, partitions))
    except StreamConfigError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    except (nats.errors.Error, OSError) as exc:
        console.print(f"[red]error:[/red] {exc!r}")
        raise typer.Exit(2) from None
