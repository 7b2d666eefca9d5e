"""``eventwire dlq``: inspect, redrive and purge dead letters."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from eventwire import DeadLetterError, EventwireError, connect

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from eventwire import Bus

app = typer.Typer(help="Inspect, redrive and purge dead letters.", no_args_is_help=True)
Url = Annotated[str, typer.Option(envvar="EVENTWIRE_URL", help="NATS server URL.")]
Root = Annotated[str, typer.Option(help="Subject root of the deployment.")]
Tenant = Annotated[str, typer.Option(help="Tenant of the deployment.")]
console = Console(highlight=False)


def _run(url: str, root: str, tenant: str, action: Callable[[Bus], Awaitable[None]]) -> None:
    async def main() -> None:
        async with connect(url, root=root, tenant=tenant) as bus:
            await action(bus)

    try:
        asyncio.run(main())
    except EventwireError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None


@app.command("list")
def list_(url: Url, root: Root = "ew", tenant: Tenant = "default", limit: int = 100) -> None:
    """List the oldest dead letters."""

    async def action(bus: Bus) -> None:
        table = Table(title=f"dead letters in {bus.dead_letters.stream}")
        for column in ("id", "time", "subject", "consumer", "reason", "deliveries", "error"):
            table.add_column(column)
        for d in await bus.dead_letters.list(limit):
            table.add_row(
                str(d.seq), d.time.isoformat(timespec="seconds"), d.subject, d.consumer,
                d.reason, str(d.deliveries), d.error[:60],
            )  # fmt: skip
        console.print(table)

    _run(url, root, tenant, action)


@app.command()
def show(entry: int, url: Url, root: Root = "ew", tenant: Tenant = "default") -> None:
    """Show one dead letter, with its original headers and signed bytes."""

    async def action(bus: Bus) -> None:
        d = await bus.dead_letters.get(entry)
        for name, value in (
            ("id", d.seq), ("time", d.time.isoformat()), ("subject", d.subject),
            ("consumer", d.consumer), ("stream seq", d.stream_seq), ("reason", d.reason),
            ("deliveries", d.deliveries), ("error", d.error), ("headers", d.headers),
        ):  # fmt: skip
            console.print(f"[bold]{name:>11}[/bold]  {value}")
        console.print(f"[bold]{'data':>11}[/bold]  {d.data.decode(errors='replace')}")

    _run(url, root, tenant, action)


@app.command()
def redrive(  # noqa: PLR0917 - typer reads options from the signature
    url: Url,
    entry: Annotated[int | None, typer.Argument()] = None,
    all_: Annotated[bool, typer.Option("--all", help="Redrive every entry.")] = False,
    verify: Annotated[
        bool, typer.Option(help="Check the signature first (needs the signer's key here).")
    ] = False,
    root: Root = "ew",
    tenant: Tenant = "default",
) -> None:
    """Publish dead letters again, unchanged (their signatures still verify)."""
    if (entry is None) == (not all_):
        console.print("[red]error:[/red] give one entry id, or --all")
        raise typer.Exit(2)

    async def action(bus: Bus) -> None:
        ids = [entry] if entry is not None else [d.seq for d in await bus.dead_letters.list(10**6)]
        for seq in ids:
            try:
                new_seq = await bus.dead_letters.redrive(seq, verify=verify)
            except DeadLetterError as exc:
                console.print(f"[red]{seq}: {exc}[/red]")
                raise typer.Exit(1) from None
            console.print(f"redriven {seq} -> stream seq {new_seq}")

    _run(url, root, tenant, action)


@app.command()
def purge(url: Url, root: Root = "ew", tenant: Tenant = "default") -> None:
    """Delete every dead letter."""

    async def action(bus: Bus) -> None:
        console.print(f"purged {await bus.dead_letters.purge()} dead letters")

    _run(url, root, tenant, action)
