"""``eventwire trace ID|CORRELATION``: the causation tree of one flow across agents.

Read from the events stream and verified (:func:`eventwire.trace_flow`); each event shows
its offset after the flow's first event and its gap after its cause (the stream's store
times), and its signer. Refused events (forged, tampered, replayed) are shown as refused
with what they claim, never as part of the trusted tree.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.tree import Tree

from eventwire import keyring_of_entries, trace_flow

from ._connect import nats_connection
from ._dlq import printable
from ._output import print_json, stdout
from ._tail import Admins, Keyrings, Root, Tenant, trusted_keys

if TYPE_CHECKING:
    from datetime import timedelta

    from eventwire import Flow, FlowNode

Url = Annotated[str, typer.Option(envvar="EVENTWIRE_URL", help="NATS server URL.")]


def _ms(value: timedelta) -> str:
    return f"{value.total_seconds() * 1000:.1f} ms"


def label(node: FlowNode) -> str:
    """Rich markup for one event of the tree."""
    item = node.item

    def text(value: str | None) -> str:
        return escape(printable(value or "-"))

    timing = f"+{_ms(node.offset)}" + ("" if node.gap is None else f" (gap {_ms(node.gap)})")
    kid = text((item.kid or "-")[:12])
    where = f"{text(item.attribute('subject'))} {text(item.attribute('type'))}"
    if item.verified:
        head = f"[green]{where}[/green] by {text(item.attribute('source'))} ({kid})"
    else:
        assert item.refusal is not None
        reason = f"REFUSED {text(item.refusal.reason)}: {text(item.refusal.detail)}"
        head = f"[red]{reason}[/red] claims {where} by {text(item.attribute('source'))}? ({kid})"
    note = "" if node.note is None else f" [yellow]({escape(node.note)})[/yellow]"
    return f"{head}  {timing}  #{item.seq} {text(item.attribute('id'))}{note}"


def tree(flow: Flow) -> Tree:
    refused = flow.refused
    title = f"flow {escape(printable(flow.correlation))}: {len(flow.walk())} events"
    view = Tree(title + (f", [red]{refused} refused[/red]" if refused else ""))

    def add(parent: Tree, nodes: list[FlowNode]) -> None:
        for node in nodes:
            add(parent.add(label(node)), node.children)

    add(view, flow.roots)
    return view


def trace(  # noqa: PLR0917 - typer reads options from the signature
    ident: Annotated[
        str, typer.Argument(metavar="ID|CORRELATION", help="An event id or a correlation id.")
    ],
    url: Url = "nats://127.0.0.1:4222",
    root: Root = "ew",
    tenant: Tenant = "default",
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the tree as one JSON document.")
    ] = False,
    keyring: Keyrings = None,
    admin: Admins = None,
) -> None:
    """Print the causation tree of the flow of ID|CORRELATION from the events stream, with
    per-event timings and signers; refused events shown as refused."""
    keyring_of_entries([*(keyring or ()), *(admin or ())])  # bad files fail before connecting

    async def main() -> Flow:
        async with nats_connection(url) as nc, trusted_keys(nc, root, keyring, admin) as trusted:
            return await trace_flow(nc, ident, tenant=tenant, root=root, keyring=trusted)

    flow = asyncio.run(main())
    if as_json:
        print_json(flow.to_json())
    else:
        stdout().print(tree(flow))


__all__ = ["label", "trace", "tree"]
