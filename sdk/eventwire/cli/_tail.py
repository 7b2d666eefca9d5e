"""``eventwire tail PATTERN``: stored and arriving events, each verified as a consumer would.

Read-only (:func:`eventwire.read_events`: an ordered consumer, no acks, no replay claims, no
audit records). Each line shows the stream sequence, when the stream stored it, subject,
type, size and the signer (source and kid), or the refusal reason of a message that fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from eventwire import KeyringWatcher, keyring_of_entries, read_events

from ._connect import nats_connection
from ._dlq import printable
from ._output import stdout

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from nats.aio.client import Client as NatsClient
    from rich.console import Console

    from eventwire import Keyring, StoredEvent

Url = Annotated[str, typer.Option(envvar="EVENTWIRE_URL", help="NATS server URL.")]
Root = Annotated[str, typer.Option(help="Subject root of the deployment.")]
Tenant = Annotated[str, typer.Option(help="Tenant of the deployment.")]
Keyrings = Annotated[
    list[str] | None,
    typer.Option(
        "--keyring",
        help="Public key entry (JSON file, `eventwire keys export-public`) of an agent whose "
        "events to trust; repeat. Events of other keys are shown refused (unknown-key).",
    ),
]
Admins = Annotated[
    list[str] | None,
    typer.Option(
        "--admin",
        help="Public key entry of a keyring admin: trust the signed keyring published in the "
        "deployment's bucket (`eventwire keys keyring publish`), kept in step; repeat.",
    ),
]
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"\A(\d+(?:\.\d+)?)([smhd]?)\Z")
COLUMNS = ("seq", "stored", "subject", "type", "size", "signer", "verdict")


def parse_since(value: str) -> timedelta | datetime:
    """``5m``, ``30s``, ``2h``, ``1d`` (a bare number is seconds), or an ISO 8601 time
    with a timezone."""
    found = _DURATION.match(value.strip())
    if found:
        seconds = float(found.group(1)) * _UNITS[found.group(2) or "s"]
        if seconds <= 0:
            raise typer.BadParameter(f"{value!r} is not a positive duration")
        return timedelta(seconds=seconds)
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is neither a duration (30s, 5m, 2h, 1d) nor an ISO time"
        ) from None
    if at.tzinfo is None:
        raise typer.BadParameter(f"{value!r} has no timezone (add Z or +00:00)")
    return at


@contextlib.asynccontextmanager
async def trusted_keys(
    nc: NatsClient, root: str, entries: list[str] | None, admins: list[str] | None
) -> AsyncIterator[Keyring]:
    """The keys to verify with: the ``--keyring`` entries, and with ``--admin`` the signed
    keyring document of the deployment (verified against the admins, followed live)."""
    keyring = keyring_of_entries(entries or ())
    if not admins:
        yield keyring
        return
    trusted_admins = keyring_of_entries(admins)
    async with KeyringWatcher(nc.jetstream(), root, trusted_admins, keyring, create=False):
        yield keyring


def cells(item: StoredEvent) -> list[str]:
    """One stored message as printable cells (claims of a refused one marked ``?``)."""
    kid = item.kid or "-"
    if item.verified:
        signer = f"{item.attribute('source')} ({kid[:12]})"
        verdict = "verified (sealed)" if item.event and item.event.sealed else "verified"
    else:
        assert item.refusal is not None
        signer = f"{item.attribute('source') or '-'}? ({kid[:12]})"
        verdict = f"REFUSED {item.refusal.reason}: {item.refusal.detail}"
    subject = item.attribute("subject") or item.wire_subject
    return [
        str(item.seq),
        f"{item.stored:%Y-%m-%d %H:%M:%S.%f}"[:-3],
        subject,
        item.attribute("type") or "-",
        f"{item.size} B",
        signer,
        verdict,
    ]


def line(item: StoredEvent) -> str:
    """Rich markup for one message (verdict coloured)."""
    parts = [escape(printable(cell)) for cell in cells(item)]
    colour = "green" if item.verified else "red"
    parts[-1] = f"[{colour}]{parts[-1]}[/{colour}]"
    return "  ".join(parts)


def tail(  # noqa: PLR0917 - typer reads options from the signature
    pattern: Annotated[
        str,
        typer.Argument(
            metavar="PATTERN", help="Logical subject pattern, e.g. 'task.>' (default: all)."
        ),
    ] = ">",
    url: Url = "nats://127.0.0.1:4222",
    root: Root = "ew",
    tenant: Tenant = "default",
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events (Ctrl-C ends).")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per line (for scripts).")
    ] = False,
    since: Annotated[
        str | None, typer.Option(help="Start this long ago (30s, 5m, 2h, 1d) or at a time.")
    ] = None,
    seq: Annotated[int | None, typer.Option(help="Start at this stream sequence.", min=1)] = None,
    last: Annotated[int | None, typer.Option(help="Only the last N stored.", min=1)] = None,
    keyring: Keyrings = None,
    admin: Admins = None,
) -> None:
    """Print stored events matching PATTERN (then new ones with --follow), each verified
    as a consumer would verify it: signer, subject, type, size, or the refusal reason.
    Read-only: nothing is acknowledged, claimed or recorded."""
    start = None if since is None else parse_since(since)
    keyring_of_entries([*(keyring or ()), *(admin or ())])  # bad files fail before connecting

    async def main() -> None:
        console = stdout()
        async with (
            nats_connection(url) as nc,
            trusted_keys(nc, root, keyring, admin) as trusted,
            read_events(
                nc, tenant=tenant, root=root, keyring=trusted, pattern=pattern,
                since=start, seq=seq, last=last, follow=follow,
            ) as events,
        ):  # fmt: skip
            if as_json:
                async for item in events:
                    typer.echo(json.dumps(item.to_json(), ensure_ascii=False))
            elif follow:
                async for item in events:
                    console.print(line(item))
            else:
                await _table(console, [item async for item in events], pattern)

    asyncio.run(main())


async def _table(console: Console, items: list[StoredEvent], pattern: str) -> None:
    if not items:
        console.print(f"no stored events match {escape(pattern)!r}")
        return
    refused = sum(1 for item in items if not item.verified)
    view = Table(title=f"{len(items)} events on {escape(pattern)}, {refused} refused")
    for column in COLUMNS:
        view.add_column(column, overflow="fold")
    for item in items:
        row = [escape(printable(cell)) for cell in cells(item)]
        style = None if item.verified else "red"
        view.add_row(*row, style=style)
    console.print(view)


__all__ = ["cells", "line", "parse_since", "tail"]
