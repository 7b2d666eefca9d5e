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
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.text import Text

from eventwire import AuditFinding, AuditLog, FindingKind, keyring_of_entries

from ._boundary import command_group
from ._connect import jetstream

if TYPE_CHECKING:
    from eventwire import AuditReport
    from eventwire_security import AuditRecord, Keyring

app = command_group("Read and verify the hash-chained audit log.")
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

    asyncio.run(main())


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

    asyncio.run(main())
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
