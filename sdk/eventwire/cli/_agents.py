"""``eventwire agents``: the live agents of a deployment, their load, circuits and suspicion."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from eventwire import keyring_of_entries

from ._connect import open_bus
from ._dlq import printable

if TYPE_CHECKING:
    from eventwire import AgentInfo, Bus

Url = Annotated[str, typer.Option(envvar="EVENTWIRE_URL", help="NATS server URL.")]
console = Console(highlight=False)


def agents(  # noqa: PLR0917 - typer reads options from the signature
    url: Url,
    root: Annotated[str, typer.Option(help="Subject root of the deployment.")] = "ew",
    tenant: Annotated[str, typer.Option(help="Tenant of the deployment.")] = "default",
    capability: Annotated[
        str | None, typer.Option(help="Only agents with this capability.")
    ] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh every second.")] = False,
    registry_ttl: Annotated[
        float, typer.Option(help="The deployment's registry TTL (heartbeats every TTL/3 s).")
    ] = 15.0,
    trust: Annotated[
        list[str] | None,
        typer.Option(help="Public key entry (JSON file) of an agent to list; repeat."),
    ] = None,
) -> None:
    """List live agents: capabilities, instance, load, open circuits, last heartbeat and
    failure suspicion (phi; 8 or more: suspected). Only entries signed by a key given
    with --trust are listed (registry entries are verified like events)."""
    keys = keyring_of_entries(trust or ())

    async def main() -> None:
        async with open_bus(url, tenant=tenant, root=root, registry_ttl=registry_ttl) as bus:
            for key in keys:
                bus.keyring.add(key)
            if not watch:
                console.print(await table(bus, capability))
                return
            with Live(await table(bus, capability), console=console) as live:
                while True:
                    await asyncio.sleep(1.0)
                    live.update(await table(bus, capability))

    asyncio.run(main())


async def table(bus: Bus, capability: str | None) -> Table:
    found = await bus.agents(capability=capability)
    title = f"agents of {bus.tenant}/{bus.root}" + (f" with {capability}" if capability else "")
    view = Table(title=title)
    for column in ("agent", "instance", "capabilities", "load", "latency", "open circuits"):
        view.add_column(column)
    view.add_column("last heartbeat")
    view.add_column("phi")
    view.add_column("state")
    for info in found:
        view.add_row(*(escape(printable(cell)) for cell in row(info)))
    return view


def row(info: AgentInfo, now: float | None = None) -> list[str]:
    """One agent instance as table cells."""
    age = (time.time() if now is None else now) - info.last_seen.timestamp()
    load = info.load
    return [
        info.name,
        info.instance,
        ", ".join(info.capabilities),
        f"{load.in_flight}+{load.queue_depth}/{load.capacity}",
        f"{load.latency_ms:.0f} ms",
        ", ".join(info.open_circuits) or "-",
        f"{info.last_seen.astimezone(UTC):%H:%M:%S} ({age:.1f}s ago)",
        f"{info.phi:.1f}",
        "suspected" if info.suspected else "alive",
    ]


__all__ = ["agents", "row", "table"]
