"""``eventwire audit``: read and verify the hash-chained audit log.

``verify`` prints one line per finding (stream seq, kind, reason, detail) and a summary, and
exits 0 when the log is clean, 2 when bad messages were appended and skipped but the valid
records form one unbroken chain, 3 when that chain is broken (a gap or an edit among valid
records), 1 on an error (no server, no stream). ``tail`` prints findings in their place.
"""

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
from .._audit_report import AuditFinding, FindingKind
from .._errors import ConnectionFailed, EventwireError
from .._keyring_store import keyring_of_entries

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Coroutine

    from nats.js import JetStreamContext

    from eventwire_security import Keyring
    from eventwire_security._audit import AuditRecord

    from .._audit_report import AuditReport

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
EXIT_REJECTED = 2  # bad messages were skipped; the chain of valid records is unbroken
EXIT_BROKEN = 3  # the chain of valid records is broken: a gap or an edit


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


def finding_line(finding: AuditFinding) -> Text:
    """``stream seq  BAD  kind  reason  detail``: a bad message of the stream."""
    style = "bold red" if finding.kind is FindingKind.BROKEN else "red"
    return Text.assemble(
        (f"{finding.stream_seq:>6}", "bold"), "  ", ("BAD", style), "  ",
        (finding.kind.value, style), "  ", printable(finding.reason), "  ",
        printable(finding.detail),
    )  # fmt: skip


def summary(report: AuditReport) -> str:
    text = f"{report.records} records"
    if report.rejected:
        text += f", {report.rejected} bad messages skipped"
    if not report.intact:
        return text + f", chain BROKEN ({report.broken} broken links)"
    return text + ", chain intact"


@app.command()
def tail(
    url: Url,
    root: Root = "ew",
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new records as they come.")
    ] = False,
    writers: Writers = None,
) -> None:
    """Print the audit records, oldest first: seq, time, actor, action, subject, reason.

    A bad message is printed in its place: stream seq, BAD, kind, reason, detail."""

    async def main() -> None:
        async with jetstream(url) as js:
            log = await AuditLog.open(
                js, None, root, writers=writers_keyring(writers), create=False
            )
            async with contextlib.aclosing(log.tail(follow, findings=True)) as items:
                async for item in items:
                    shown = finding_line(item) if isinstance(item, AuditFinding) else line(item)
                    console.print(shown, soft_wrap=True)
                    sys.stdout.flush()

    run(main())


@app.command()
def verify(url: Url, root: Root = "ew", writers: Writers = None) -> None:
    """Check the valid records form one intact hash chain (signed, with --writers) and
    list every bad message. Exit 0: clean; 2: bad messages skipped, chain intact;
    3: chain broken; 1: error."""
    reports: list[AuditReport] = []

    async def main() -> None:
        async with jetstream(url) as js:
            log = await AuditLog.open(
                js, None, root, writers=writers_keyring(writers), create=False
            )
            reports.append(await log.verify())

    run(main())
    report = reports[0]
    for finding in report.findings:
        console.print(finding_line(finding), soft_wrap=True)
    if len(report.findings) < report.rejected + report.broken:
        console.print(f"... {report.rejected + report.broken - len(report.findings)} more")
    console.print(summary(report))
    if not report.intact:
        raise typer.Exit(EXIT_BROKEN)
    if not report.clean:
        raise typer.Exit(EXIT_REJECTED)
