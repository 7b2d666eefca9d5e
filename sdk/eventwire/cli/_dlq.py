"""``eventwire dlq``: inspect, redrive and purge dead letters."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from eventwire import DeadLetterError

from ._boundary import command_group, fail, one_line
from ._connect import open_bus
from ._output import Json, print_json, stdout

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from eventwire import Bus, DeadLetter

app = command_group("Inspect, redrive and purge dead letters.")
Url = Annotated[
    str,
    typer.Option(
        envvar="EVENTWIRE_URL",
        help="NATS server URL, with the user and password if the server needs them.",
    ),
]
Root = Annotated[str, typer.Option(help="Subject root of the deployment.")]
Tenant = Annotated[str, typer.Option(help="Tenant of the deployment.")]


def _run(url: str, root: str, tenant: str, action: Callable[[Bus], Awaitable[None]]) -> None:
    """Run ``action`` on a bus; its errors are the CLI boundary's to print."""

    async def main() -> None:
        async with open_bus(url, tenant=tenant, root=root) as bus:
            await action(bus)

    asyncio.run(main())


@app.command("list")
def list_(
    url: Url, root: Root = "ew", tenant: Tenant = "default", limit: int = 100, json_: Json = False
) -> None:
    """List the oldest dead letters (up to --limit)."""

    async def action(bus: Bus) -> None:
        letters = await bus.dead_letters.list(limit)
        if json_:
            print_json([_letter_json(d) for d in letters])
            return
        table = Table(title=f"dead letters in {bus.dead_letters.stream}")
        for column in ("id", "time", "subject", "consumer", "reason", "deliveries", "error"):
            table.add_column(column)
        for d in letters:
            fields = (d.time.isoformat(timespec="seconds"), d.subject, d.consumer, d.reason)
            table.add_row(
                str(d.seq), *(escape(printable(f)) for f in fields), str(d.deliveries),
                escape(printable(d.error)),
            )  # fmt: skip
        stdout().print(table if letters else f"no dead letters in {bus.dead_letters.stream}")

    _run(url, root, tenant, action)


def _letter_json(d: DeadLetter) -> dict[str, object]:
    """The entry without its data and headers (``dlq show`` prints those)."""
    return {
        "id": d.seq,
        "time": d.time.isoformat(),
        "subject": d.subject,
        "consumer": d.consumer,
        "stream_seq": d.stream_seq,
        "reason": d.reason,
        "deliveries": d.deliveries,
        "error": d.error,
    }


@app.command()
def show(entry: int, url: Url, root: Root = "ew", tenant: Tenant = "default") -> None:
    """Show one dead letter, with its original headers and signed bytes."""

    async def action(bus: Bus) -> None:
        d = await bus.dead_letters.get(entry)
        console = stdout()
        for name, value in (
            ("id", d.seq), ("time", d.time.isoformat()), ("subject", d.subject),
            ("consumer", d.consumer), ("stream seq", d.stream_seq), ("reason", d.reason),
            ("deliveries", d.deliveries), ("error", d.error), ("headers", d.headers),
        ):  # fmt: skip
            console.print(f"[bold]{name:>11}[/bold]  {escape(printable(str(value)))}")
        data = printable(d.data.decode(errors="replace"))
        console.print(f"[bold]{'data':>11}[/bold]  {escape(data)}")

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
        fail("give one entry id, or --all", code=2)

    async def action(bus: Bus) -> None:
        ids = [entry] if entry is not None else [d.seq for d in await bus.dead_letters.list(10**6)]
        for seq in ids:
            try:
                new_seq = await bus.dead_letters.redrive(seq, verify=verify)
            except DeadLetterError as exc:
                fail(f"{seq}: {one_line(exc)}")
            stdout().print(f"redriven {seq} -> stream seq {new_seq}")

    _run(url, root, tenant, action)


@app.command()
def purge(url: Url, root: Root = "ew", tenant: Tenant = "default") -> None:
    """Delete every dead letter."""

    async def action(bus: Bus) -> None:
        stdout().print(f"purged {await bus.dead_letters.purge()} dead letters")

    _run(url, root, tenant, action)


def printable(text: str) -> str:
    """Entries hold what others wrote: no terminal control characters get through."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)
