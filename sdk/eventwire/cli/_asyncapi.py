"""``eventwire asyncapi [--agents MODULE:ATTR ...] [--out FILE]``: the AsyncAPI 3.0 document.

Each MODULE:ATTR is loaded as ``eventwire run`` loads it (an Agent, a list of Agents, or a
function returning them); the document is :func:`eventwire.asyncapi_document`'s, as JSON.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
from typing import Annotated

import typer

from eventwire import Agent, InvalidArgument, asyncapi_document

from ._run import load_target


def _agents(target: str, app_dir: str) -> list[Agent]:
    """The agents MODULE:ATTR names (called first if it is a function, awaited if async)."""
    value = load_target(target, app_dir)
    if callable(value) and not isinstance(value, Agent):
        value = value()
        if inspect.isawaitable(value):
            value = asyncio.run(_awaited(value))
    found = [value] if isinstance(value, Agent) else value
    if not isinstance(found, list | tuple) or not all(isinstance(a, Agent) for a in found):
        raise InvalidArgument(f"{target} is not an Agent or a list of Agents", field="agents")
    return list(found)


async def _awaited(value: object) -> object:
    assert inspect.isawaitable(value)
    return await value


def asyncapi(  # noqa: PLR0917 - typer reads options from the signature
    agents: Annotated[
        list[str] | None,
        typer.Option(
            "--agents",
            metavar="MODULE:ATTR",
            help="An Agent, a list of Agents, or a function returning them; repeat.",
        ),
    ] = None,
    out: Annotated[
        str | None, typer.Option(help="Write the document to FILE (default: stdout).")
    ] = None,
    root: Annotated[str, typer.Option(help="Subject root of the deployment.")] = "ew",
    tenant: Annotated[str, typer.Option(help="Tenant of the deployment.")] = "default",
    title: Annotated[str, typer.Option(help="The document's info.title.")] = (
        "eventwire application"
    ),
    server: Annotated[str, typer.Option(help="The NATS server to describe.")] = (
        "nats://127.0.0.1:4222"
    ),
    app_dir: Annotated[str, typer.Option(help="Directory to import MODULE from.")] = ".",
) -> None:
    """Write the AsyncAPI 3.0 document (JSON) of the application: channels from the subject
    table and the agents' handlers, messages with their data schemas, security schemes."""
    found = [agent for target in agents or () for agent in _agents(target, app_dir)]
    document = asyncapi_document(found, root=root, tenant=tenant, title=title, server=server)
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    if out is None:
        typer.echo(text, nl=False)
        return
    with open(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), "w") as file:
        file.write(text)
    typer.echo(f"AsyncAPI {document['asyncapi']} document written to {out}", err=True)


__all__ = ["asyncapi"]
