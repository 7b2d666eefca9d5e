"""``eventwire workflows``: list, show (a verified timeline), cancel, retry, signal.

Histories are read and verified against the public key entries of the trusted
orchestrators (``--orchestrator``); cancel, retry and signal are signed commands, sent as
the identity in ``--key-file`` (which the orchestrators must trust).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from eventwire import TLS, Workflows, connect, keyring_of_entries, read_key_entry
from eventwire_security import Identity, passphrase_from_env, read_identity

from ._boundary import command_group, fail
from ._connect import CLI_NAME, CONNECT_TIMEOUT
from ._output import Json, print_json, stdout

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from eventwire import WorkflowStatus

app = command_group("List, inspect and control durable workflows.")
PASSPHRASE_ENV = "EVENTWIRE_KEY_PASSPHRASE"
USAGE = 2
Url = Annotated[
    str,
    typer.Option(
        envvar="EVENTWIRE_URL",
        help="NATS server URL, with the user and password if the server needs them.",
    ),
]
Root = Annotated[str, typer.Option(help="Subject root of the deployment.")]
Tenant = Annotated[str, typer.Option(help="Tenant of the deployment.")]
Orchestrators = Annotated[
    list[str],
    typer.Option(
        "--orchestrator",
        help="Public key entry (JSON file or inline JSON) of a trusted orchestrator; repeat.",
    ),
]
KeyFile = Annotated[
    str | None,
    typer.Option(
        help=f"Key file of the identity that sends the command (passphrase in ${PASSPHRASE_ENV})."
    ),
]


def _run(
    where: tuple[str, str, str],
    orchestrators: list[str],
    key_file: str | None,
    action: Callable[[Workflows], Awaitable[None]],
) -> None:
    url, root, tenant = where
    if not orchestrators:
        fail("name at least one trusted --orchestrator", USAGE)
    keyring = keyring_of_entries(orchestrators)
    sources = [read_key_entry(spec).principal.source for spec in orchestrators]
    identity = _identity(key_file, tenant)
    keyring.add(identity.trusted())

    async def main() -> None:
        async with connect(
            url, tenant=tenant, root=root, name=CLI_NAME, keyring=keyring,
            connect_timeout=CONNECT_TIMEOUT, tls=TLS.from_env(),
        ) as bus:  # fmt: skip
            await action(Workflows(bus, identity, orchestrators=sources))

    asyncio.run(main())


def _identity(key_file: str | None, tenant: str) -> Identity:
    """The sender of commands; a throwaway one for reading only."""
    if key_file is None:
        return Identity.generate(tenant, "workflows-cli")
    if not os.environ.get(PASSPHRASE_ENV) and not sys.stdin.isatty():
        fail(f"set {PASSPHRASE_ENV} to the passphrase of the key file", USAGE)
    if os.environ.get(PASSPHRASE_ENV):
        passphrase = passphrase_from_env(PASSPHRASE_ENV)
    else:
        passphrase = os.fsencode(typer.prompt("Passphrase of the key file", hide_input=True))
    return read_identity(key_file, passphrase)


def _status_json(status: WorkflowStatus) -> dict[str, object]:
    return {
        "id": status.workflow_id, "workflow": status.name, "state": status.state,
        "output": status.output, "reason": status.reason,
        "steps": {str(op): state for op, state in status.steps.items()}, "events": status.events,
    }  # fmt: skip


@app.command("list")
def list_(  # noqa: PLR0917 - typer reads options from the signature
    url: Url,
    orchestrator: Orchestrators,
    state: Annotated[str | None, typer.Option(help="Only workflows in this state.")] = None,
    root: Root = "ew",
    tenant: Tenant = "default",
    json_: Json = False,
) -> None:
    """List workflows (id, definition, state, steps), each history verified."""

    async def action(control: Workflows) -> None:
        found = await control.list(state=state)
        if json_:
            print_json([_status_json(s) for s in found])
            return
        table = Table(title="workflows")
        for column in ("id", "workflow", "state", "steps", "events", "reason"):
            table.add_column(column)
        for s in found:
            steps = " ".join(f"{op}:{st}" for op, st in s.steps.items())
            cells = (s.workflow_id, s.name, s.state, steps, str(s.events), s.reason or "")
            table.add_row(*(escape(printable(c)) for c in cells))
        stdout().print(table if found else "no workflows")

    _run((url, root, tenant), orchestrator, None, action)


@app.command()
def show(  # noqa: PLR0917 - typer reads options from the signature
    workflow_id: Annotated[str, typer.Argument(metavar="ID")],
    url: Url,
    orchestrator: Orchestrators,
    root: Root = "ew",
    tenant: Tenant = "default",
    json_: Json = False,
) -> None:
    """Show a workflow's history: every event, verified, with its signer."""

    async def action(control: Workflows) -> None:
        status = await control.status(workflow_id)
        timeline = await control.timeline(workflow_id)
        if json_:
            events = [
                {"n": e.position, "time": e.time, "kind": e.kind, "signer": e.source,
                 "kid": e.kid, "data": e.data}
                for e in timeline
            ]  # fmt: skip
            print_json({**_status_json(status), "timeline": events})
            return
        table = Table(title=f"workflow {workflow_id} ({status.name}): {status.state}")
        for column in ("#", "time", "event", "signer", "data"):
            table.add_column(column)
        for e in timeline:
            signer = f"{e.source} ({e.kid[:12]})"
            data = json.dumps(e.data, ensure_ascii=False)
            cells = (e.time, e.kind, signer, data if len(data) <= 120 else data[:117] + "...")
            table.add_row(str(e.position), *(escape(printable(c)) for c in cells))
        stdout().print(table)

    _run((url, root, tenant), orchestrator, None, action)


@app.command()
def cancel(  # noqa: PLR0917 - typer reads options from the signature
    workflow_id: Annotated[str, typer.Argument(metavar="ID")],
    url: Url,
    orchestrator: Orchestrators,
    key_file: KeyFile = None,
    root: Root = "ew",
    tenant: Tenant = "default",
) -> None:
    """Cancel a running workflow (its completed steps are compensated)."""

    async def action(control: Workflows) -> None:
        await control.cancel(workflow_id)
        typer.echo(f"cancel of {workflow_id} sent")

    _run((url, root, tenant), orchestrator, key_file, action)


@app.command()
def retry(  # noqa: PLR0917 - typer reads options from the signature
    workflow_id: Annotated[str, typer.Argument(metavar="ID")],
    url: Url,
    orchestrator: Orchestrators,
    key_file: KeyFile = None,
    root: Root = "ew",
    tenant: Tenant = "default",
) -> None:
    """Run a failed or compensated workflow again from its failed step."""

    async def action(control: Workflows) -> None:
        await control.retry(workflow_id)
        typer.echo(f"retry of {workflow_id} sent")

    _run((url, root, tenant), orchestrator, key_file, action)


@app.command()
def signal(  # noqa: PLR0917 - typer reads options from the signature
    workflow_id: Annotated[str, typer.Argument(metavar="ID")],
    name: Annotated[str, typer.Argument(metavar="NAME")],
    data: Annotated[str, typer.Argument(metavar="DATA", help="JSON (else taken as a string).")],
    url: Url,
    orchestrator: Orchestrators,
    key_file: KeyFile = None,
    root: Root = "ew",
    tenant: Tenant = "default",
) -> None:
    """Send signal NAME with DATA to a running workflow."""
    try:
        value = json.loads(data)
    except ValueError:
        value = data

    async def action(control: Workflows) -> None:
        await control.signal(workflow_id, name, value)
        typer.echo(f"signal {name} sent to {workflow_id}")

    _run((url, root, tenant), orchestrator, key_file, action)


def printable(text: str) -> str:
    """History data is what others wrote: no terminal control characters get through."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)
