"""``eventwire projections``: list projections, their checkpoint and lag, and rebuild one."""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from eventwire import (
    InvalidArgument,
    Projection,
    keyring_of_entries,
    projection_info,
    projection_infos,
    reset_projection,
)

from ._boundary import command_group, fail
from ._connect import open_bus
from ._dlq import printable
from ._output import Json, print_json, stdout

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from eventwire import Bus, ProjectionInfo

app = command_group("List projections, show their checkpoint and lag, rebuild one.")
Url = Annotated[str, typer.Option(envvar="EVENTWIRE_URL", help="NATS server URL.")]
Root = Annotated[str, typer.Option(help="Subject root of the deployment.")]
Tenant = Annotated[str, typer.Option(help="Tenant of the deployment.")]
Trust = Annotated[
    list[str] | None,
    typer.Option(help="Public key entry (JSON file) of a projection's signer; repeat."),
]
_COLUMNS = ("name", "checkpoint seq", "applied", "lag", "updated at", "signer", "verified")


def _run(
    url: str,
    root: str,
    tenant: str,
    trust: list[str] | None,
    action: Callable[[Bus], Awaitable[None]],
) -> None:
    keys = keyring_of_entries(trust or ())

    async def main() -> None:
        async with open_bus(url, tenant=tenant, root=root) as bus:
            for key in keys:
                bus.keyring.add(key)
            await action(bus)

    asyncio.run(main())


def _cells(info: ProjectionInfo) -> list[str]:
    if info.reset:
        return [info.name, "-", "-", str(info.lag), "-", "-", "reset: rebuilds on its next start"]
    verified = {True: "yes", False: "NO (bad signature)", None: "unknown key"}[info.verified]
    updated = "-" if info.updated_at is None else info.updated_at.isoformat(timespec="seconds")
    return [
        info.name, str(info.seq), str(info.applied), str(info.lag), updated,
        info.signer or "-", verified,
    ]  # fmt: skip


def _table(title: str, infos: list[ProjectionInfo]) -> Table:
    table = Table(title=title)
    for column in _COLUMNS:
        table.add_column(column)
    for info in infos:
        table.add_row(*(escape(printable(cell)) for cell in _cells(info)))
    return table


@app.command("list")
def list_(
    url: Url,
    root: Root = "ew",
    tenant: Tenant = "default",
    trust: Trust = None,
    json_: Json = False,
) -> None:
    """List the projections with a checkpoint: sequence, lag, last write, signer."""

    async def action(bus: Bus) -> None:
        infos = await projection_infos(bus)
        if json_:
            print_json([info.to_json() for info in infos])
        elif not infos:
            stdout().print(f"no projections in {bus.root}")
        else:
            stdout().print(_table(f"projections of {bus.tenant}/{bus.root}", infos))

    _run(url, root, tenant, trust, action)


@app.command()
def status(  # noqa: PLR0917 - typer reads options from the signature
    name: str,
    url: Url,
    root: Root = "ew",
    tenant: Tenant = "default",
    trust: Trust = None,
    json_: Json = False,
) -> None:
    """One projection: its checkpoint sequence, lag, last write and signer."""

    async def action(bus: Bus) -> None:
        info = await projection_info(bus, name)
        if json_:
            print_json(info.to_json())
            return
        console = stdout()
        for column, cell in zip(_COLUMNS, _cells(info), strict=True):
            console.print(f"[bold]{column:>14}[/bold]  {escape(printable(cell))}")

    _run(url, root, tenant, trust, action)


@app.command()
def rebuild(  # noqa: PLR0917 - typer reads options from the signature
    name: str,
    url: Url,
    root: Root = "ew",
    tenant: Tenant = "default",
    model: Annotated[
        str | None,
        typer.Option(
            help="module:attr of a function (bus) -> Projection to run the rebuild now; "
            "without it the projection rebuilds on its next start."
        ),
    ] = None,
    trust: Trust = None,
    json_: Json = False,
) -> None:
    """Reset a projection's checkpoint (stop it first), and rebuild it with --model
    (--trust the keys of the events' signers: refused events are skipped, and fail it)."""
    factory = _factory(model) if model is not None else None

    async def action(bus: Bus) -> None:
        had = await reset_projection(bus, name)
        result: dict[str, object] = {"name": name, "reset": had, "rebuilt": False}
        if factory is not None:
            result.update(await _rebuild(bus, name, factory))
        if json_:
            print_json(result)
        else:
            stdout().print(f"{escape(name)}: {_said(result)}")
        if result.get("refused"):
            fail(f"{result['refused']} events refused (their signers' keys: --trust)")

    _run(url, root, tenant, trust, action)


def _said(result: dict[str, object]) -> str:
    said = "checkpoint reset" if result["reset"] else "no checkpoint to reset"
    if not result["rebuilt"]:
        return said + ": it rebuilds from the first event on its next start"
    return said + (
        f"; rebuilt {result['applied']} events up to stream seq {result['seq']} "
        f"in {result['seconds']:.2f}s ({result['events_per_second']:.0f} events/s)"
    )


def _factory(spec: str) -> Callable[[Bus], Projection[Any]]:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        fail(f"--model must be module:attr, got {spec!r}", code=2)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: modules of the current directory
    try:
        found = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        fail(f"--model {spec}: {exc}", code=2)
    if not callable(found):
        fail(f"--model {spec} is not a function (bus) -> Projection", code=2)
    return found  # type: ignore[no-any-return]  # checked when called


async def _rebuild(
    bus: Bus, name: str, factory: Callable[[Bus], Projection[Any]]
) -> dict[str, object]:
    projection = factory(bus)
    if not isinstance(projection, Projection):
        raise InvalidArgument(f"returned {projection!r}, not a Projection", field="model")
    if projection.name != name:
        raise InvalidArgument(f"builds projection {projection.name!r}, not {name!r}", field="model")
    target = await projection.lag()  # from position 0: the stream's last sequence
    refused = sum(bus.security.rejected.values())
    started = time.perf_counter()
    async with projection:
        await projection.wait_for(target)
    seconds = time.perf_counter() - started
    return {
        "rebuilt": True, "applied": projection.applied, "seq": projection.stored,
        "seconds": seconds, "events_per_second": projection.applied / max(seconds, 1e-9),
        "refused": sum(bus.security.rejected.values()) - refused,
    }  # fmt: skip
