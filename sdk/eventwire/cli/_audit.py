"""``eventwire audit``: read and verify the hash-chained audit log."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import TYPE_CHECKING, Annotated, Any

import nats.errors
import typer
from nats.aio.client import Client as NatsClient
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from eventwire_security import SecurityError

from .._audit_log import AuditLog
from .._errors import ConnectionFailed, EventwireError
from .._keyring_store import keyring_of_entries

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Coroutine

    from nats.js import JetStreamContext

    from eventwire_security import Keyring
    from eventwire_security._audit import AuditRecord

app = typer.Typer(help="Read and verify the hash-chained audit log.", no_args_is_help=True)
Url = Annotated[str, typer.Option(envvar="EVENTWIRE_URL", help="NATS server URL.")]
Root = Annotated[str, typer.Option(help="Subject root of the deployment.")]
Writers = Annotated[
    list[str] | None,
    typer.Option(
        "--writers",
        help="Public key entry (JSON file) of an audit writer; when given, every record "
        "must be signed by one of them. Repeat for several.",
    ),
]
console = Console(highlight=False)


@contextlib.asynccontextmanager
async def jetstream(url: str, timeout: float = 5.0) -> AsyncIterator[JetStreamContext]:
    """One short-lived connection for a command; no reconnects, errors mapped."""

    async def quiet(exc: Exception) -> None:
        """Connection errors surface as the exception below, not as log noise."""

    nc = NatsClient()
    try:
        async with asyncio.timeout(timeout):
            await nc.connect(
                url,
                name="eventwire-cli",
                allow_reconnect=False,
                max_reconnect_attempts=1,  # else nats-py retries a refused first connect forever
                reconnect_time_wait=0,
                connect_timeout=2,
                error_cb=quiet,
            )
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        raise ConnectionFailed(f"cannot connect to {url}: {exc!r}") from exc
    try:
        yield nc.jetstream()
    finally:
        await nc.close()


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run a command's coroutine; typed errors are printed and exit with code 1."""
    try:
        asyncio.run(main)
    except (EventwireError, SecurityError, nats.errors.Error) as exc:
        console.print(f"[red]error:[/red] {escape(str(exc) or repr(exc))}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def writers_keyring(specs: list[str] | None) -> Keyring | None:
    return keyring_of_entries(specs) if specs else None


def printable(text: str) -> str:
    """Record fields are written by others: no terminal control characters get through."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def line(record: AuditRecord) -> Text:
    return Text.assemble(
        (f"{record.seq:>6}", "bold"), "  ", (record.time, "dim"), "  ",
        (printable(record.actor), "cyan"), "  ", (printable(record.action), "yellow"), "  ",
        printable(record.subject), "  ", printable(record.reason),
    )  # fmt: skip


@app.command()
def tail(
    url: Url,
    root: Root = "ew",
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new records as they come.")
    ] = False,
    writers: Writers = None,
) -> None:
    """Print the audit records, oldest first: seq, time, actor, action, subject, reason."""

    async def main() -> None:
        async with jetstream(url) as js:
            log = await AuditLog.open(
                js, None, root, writers=writers_keyring(writers), create=False
            )
            async with contextlib.aclosing(log.tail(follow)) as records:
                async for record in records:
                    console.print(line(record), soft_wrap=True)
                    sys.stdout.flush()

    run(main())


@app.command()
def verify(url: Url, root: Root = "ew", writers: Writers = None) -> None:
    """Check the whole log is one intact hash chain (and signed, with --writers)."""

    async def main() -> None:
        async with jetstream(url) as js:
            log = await AuditLog.open(
                js, None, root, writers=writers_keyring(writers), create=False
            )
            count = await log.verify()
        console.print(f"{count} records, chain intact")

    run(main())
