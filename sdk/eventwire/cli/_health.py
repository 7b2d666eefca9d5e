"""``eventwire health``: the health of the command's connection and of each live agent.

An agent's health is computed from outside (:func:`eventwire.agents_health`): its signed
registry heartbeat (age, open circuits) and its consumers' info (lag, ack-pending). The exit
code is 1 if anything is ``failing``, else 0, so scripts can gate on it.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from eventwire import agents_health, keyring_of_entries

from ._connect import open_bus
from ._dlq import printable

if TYPE_CHECKING:
    from eventwire import Health

Url = Annotated[str, typer.Option(envvar="EVENTWIRE_URL", help="NATS server URL.")]
console = Console(highlight=False)
_STYLE = {"ok": "green", "degraded": "yellow", "failing": "red"}


def health(  # noqa: PLR0917 - typer reads options from the signature
    url: Url,
    root: Annotated[str, typer.Option(help="Subject root of the deployment.")] = "ew",
    tenant: Annotated[str, typer.Option(help="Tenant of the deployment.")] = "default",
    agent: Annotated[str | None, typer.Option(help="Only the agent with this name.")] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="One JSON object per line (bus first, then agents).")
    ] = False,
    registry_ttl: Annotated[
        float, typer.Option(help="The deployment's registry TTL (heartbeats every TTL/3 s).")
    ] = 15.0,
    trust: Annotated[
        list[str] | None,
        typer.Option(help="Public key entry (JSON file) of an agent to check; repeat."),
    ] = None,
) -> None:
    """Health scores, status and reasons of the bus connection and of each live agent
    (consumer lag and ack-pending, heartbeat age, open circuits). Only agents whose
    registry entries are signed by a key given with --trust are shown. Exit code 1 if
    anything is failing."""
    keys = keyring_of_entries(trust or ())

    async def main() -> list[Health]:
        async with open_bus(url, tenant=tenant, root=root, registry_ttl=registry_ttl) as bus:
            for key in keys:
                bus.keyring.add(key)
            return [await bus.health(), *await agents_health(bus, agent=agent)]

    found = asyncio.run(main())
    if json_output:
        for each in found:
            typer.echo(json.dumps(each.to_dict()))
    else:
        console.print(table(found))
    if any(each.status == "failing" for each in found):
        raise typer.Exit(1)


def table(found: list[Health]) -> Table:
    view = Table(title="health")
    for column in ("subject", "status", "score", "live", "ready", "reasons"):
        view.add_column(column)
    for each in found:
        style = _STYLE[each.status]
        reasons = "; ".join(
            f"{r.name} {r.value:g} > {r.threshold:g}: {r.detail}" for r in each.reasons
        )
        view.add_row(
            escape(printable(each.subject)),
            f"[{style}]{each.status}[/{style}]",
            f"{each.score:.2f}",
            "yes" if each.live else "no",
            "yes" if each.ready else "no",
            escape(printable(reasons or "-")),
        )
    return view


__all__ = ["health", "table"]
