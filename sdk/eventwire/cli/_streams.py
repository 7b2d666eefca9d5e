"""``eventwire streams diff|apply``: every declared stream and KV bucket against a server.

Exit codes: 0 everything matches (diff) or was applied (apply); 1 drift (diff) or a
setting that cannot change in place or that the server refused (apply); 2 an error (bad
option, no connection), printed as one line by the CLI boundary.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from eventwire import DEFAULT_REPLAY_WINDOW, EventwireError, StreamConfigError
from eventwire_security import SecurityError

from .._bus import DEFAULT_REGISTRY_TTL
from .._idempotency import DEFAULT_WINDOW
from .._streams import Applied, Resource, apply_resource, declared, diff_resource
from .._subjects import MAX_PARTITIONS, check_partitions, check_token
from ._boundary import command_group, fail
from ._connect import jetstream, redact_url

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from nats.js import JetStreamContext

    from .._streams import Difference

app = command_group("Compare or apply the declared streams and buckets.")
Url = Annotated[str, typer.Option(envvar="EVENTWIRE_URL", help="NATS server URL.")]
Root = Annotated[str, typer.Option(help="Subject root of the deployment.")]
Replicas = Annotated[int, typer.Option(min=1, help="Replicas the deployment declares.")]
Partitions = Annotated[
    int, typer.Option(min=0, max=MAX_PARTITIONS, help="Partitions the deployment declares.")
]
RegistryTtl = Annotated[
    float, typer.Option(min=0.001, help="Seconds a registry entry outlives its heartbeat.")
]
ReplayHorizon = Annotated[
    float, typer.Option(min=0.001, help="Seconds replay claims are kept (the replay horizon).")
]
DedupeWindow = Annotated[
    float, typer.Option(min=0.001, help="Seconds handled ids are kept (the dedupe window).")
]
console = Console(highlight=False)
ERROR = 2
_RECREATE = "cannot change in place: recreate it (its data is lost)"


def _rows(resource: Resource, diffs: list[Difference] | None) -> list[tuple[str, ...]]:
    """The table rows of one resource: missing, matches, or one row per difference."""
    head = (str(resource), resource.role)
    if diffs is None and not resource.on_connect:
        return [(*head, "not yet made", "", "", "", "made on first use, or by apply")]
    if diffs is None:
        return [(*head, "missing", "", "", "", "apply creates it")]
    if not diffs:
        return [(*head, "matches", "", "", "", "")]
    return [
        (*(head if index == 0 else ("", "")), "differs", d.field, _value(d.server),
         _value(d.code), "apply updates it" if d.updatable else _RECREATE)
        for index, d in enumerate(diffs)
    ]  # fmt: skip


def _value(value: object) -> str:
    return repr(getattr(value, "value", value))  # an enum as its plain value


async def _diff(js: JetStreamContext, root: str, url: str, resources: list[Resource]) -> int:
    """Print every resource's state; how many drift (a resource made on first use that was
    not used yet is not drift)."""
    table = Table(title=f"declared streams and buckets of root {root!r} at {redact_url(url)}")
    for column in ("resource", "role", "state", "setting", "server", "code", "fix"):
        table.add_column(column)
    drift = 0
    for resource in resources:
        diffs = await diff_resource(js, resource)
        drift += diffs != [] and (diffs is not None or resource.on_connect)
        for row in _rows(resource, diffs):
            table.add_row(*(escape(cell) for cell in row))
    console.print(table)
    if drift:
        console.print(f"{drift} of {len(resources)} drift: `eventwire streams apply` fixes "
                      "what can change in place")  # fmt: skip
    else:
        console.print(f"no drift: every declared stream and bucket of root {root!r} matches")
    return drift


def _report(applied: Applied) -> bool:
    """Print what apply did to one resource; whether it now matches the declaration."""
    resource = escape(str(applied.resource))
    if applied.action == "created":
        console.print(f"{resource}: created")
    elif applied.action == "updated":
        changed = "; ".join(escape(str(d)) for d in applied.updated)
        console.print(f"{resource}: updated {changed}")
    elif not applied.kept:
        console.print(f"{resource}: matches")
    for d in applied.kept:
        console.print(f"[red]{resource}: {escape(str(d))}: {_RECREATE}[/red]")
    return not applied.kept


async def _apply(js: JetStreamContext, resources: list[Resource]) -> int:
    """Apply every resource (one that fails does not stop the others); how many failed."""
    failed = 0
    for resource in resources:
        try:
            failed += not _report(await apply_resource(js, resource))
        except StreamConfigError as exc:
            console.print(f"[red]{escape(str(exc))}[/red]")
            failed += 1
    return failed


def _run(url: str, action: Callable[[JetStreamContext], Awaitable[int]]) -> int:
    """Run ``action`` on a short-lived connection; an error exits 2 (one line, no secrets)."""

    async def main() -> int:
        async with jetstream(url) as js:
            return await action(js)

    try:
        return asyncio.run(main())
    except (EventwireError, SecurityError, OSError) as exc:
        fail(exc, ERROR)


def _resources(
    root: str, *, replicas: int, partitions: int, ttl: float, horizon: float, window: float
) -> list[Resource]:
    """The declared resources for the command line's settings; bad ones exit 2."""
    try:
        return declared(
            check_token(root, field="root"), replicas=replicas,
            partitions=check_partitions(partitions), registry_ttl=ttl, replay_horizon=horizon,
            dedupe_window=window,
        )  # fmt: skip
    except (EventwireError, SecurityError) as exc:
        fail(exc, ERROR)


@app.command()
def diff(
    url: Url,
    *,
    root: Root = "ew",
    replicas: Replicas = 1,
    partitions: Partitions = 0,
    registry_ttl: RegistryTtl = DEFAULT_REGISTRY_TTL,
    replay_horizon: ReplayHorizon = DEFAULT_REPLAY_WINDOW.horizon,
    dedupe_window: DedupeWindow = DEFAULT_WINDOW,
) -> None:
    """Show each declared stream and bucket: missing, matches, or which settings differ.
    Exit 1 on drift, 2 on an error."""
    resources = _resources(
        root, replicas=replicas, partitions=partitions, ttl=registry_ttl,
        horizon=replay_horizon, window=dedupe_window,
    )  # fmt: skip
    drift = _run(url, lambda js: _diff(js, root, url, resources))
    raise typer.Exit(1 if drift else 0)


@app.command()
def apply(
    url: Url,
    *,
    root: Root = "ew",
    replicas: Replicas = 1,
    partitions: Partitions = 0,
    registry_ttl: RegistryTtl = DEFAULT_REGISTRY_TTL,
    replay_horizon: ReplayHorizon = DEFAULT_REPLAY_WINDOW.horizon,
    dedupe_window: DedupeWindow = DEFAULT_WINDOW,
) -> None:
    """Create missing streams and buckets and update the settings that can change in place.
    Exit 1 if some setting cannot (it is named), 2 on an error."""
    resources = _resources(
        root, replicas=replicas, partitions=partitions, ttl=registry_ttl,
        horizon=replay_horizon, window=dedupe_window,
    )  # fmt: skip
    raise typer.Exit(1 if _run(url, lambda js: _apply(js, resources)) else 0)
