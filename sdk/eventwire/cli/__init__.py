"""The ``eventwire`` command line: a thin shell over the library.

Commands use the public API of ``eventwire`` and ``eventwire_security``, connect through
``_connect``, and let errors reach the root group (``_boundary``), which prints one line.
"""

from __future__ import annotations

import os

import typer

from ._agents import agents
from ._asyncapi import asyncapi
from ._audit import app as audit_app
from ._bench import bench
from ._boundary import Boundary
from ._demo import demo
from ._dlq import app as dlq_app
from ._health import health
from ._keys import app as keys_app
from ._policy import app as policy_app
from ._projections import app as projections_app
from ._run import run
from ._server import SETTINGS as SERVER_SETTINGS
from ._server import server
from ._streams import app as streams_app
from ._stuck import stuck
from ._tail import tail
from ._tenant import app as tenant_app
from ._tls import app as tls_app
from ._trace import trace
from ._workflows import app as workflows_app

app = typer.Typer(
    name="eventwire",
    help="Signed, durable events between AI agents over NATS JetStream.",
    no_args_is_help=True,
    add_completion=False,
    cls=Boundary,
)


@app.callback()
def _options(
    debug: bool = typer.Option(
        False, "--debug", help="Show the traceback of an error (EVENTWIRE_DEBUG=1 does too)."
    ),
) -> None:
    """Signed, durable events between AI agents over NATS JetStream."""
    if debug:
        os.environ["EVENTWIRE_DEBUG"] = "1"


app.command(help="Run agents on an embedded server and print a verified timeline.")(demo)
app.command(help="Measure eventwire against raw nats-py on the same server.")(bench)
app.command("run")(run)
app.command(help="List live agents: load, open circuits, heartbeats, suspicion.")(agents)
app.command(help="Health scores of the bus and of each live agent, with reasons.")(health)
app.add_typer(dlq_app, name="dlq")
app.add_typer(keys_app, name="keys")
app.add_typer(audit_app, name="audit")
app.add_typer(streams_app, name="streams")
app.add_typer(tenant_app, name="tenant")
app.add_typer(policy_app, name="policy")
app.command(context_settings=SERVER_SETTINGS, options_metavar="[NATS-SERVER OPTIONS]")(server)
app.add_typer(tls_app, name="tls")
app.command(help="Print stored and arriving events, each verified (read-only).")(tail)
app.command(help="Print the causation tree of a flow across agents, with timings.")(trace)
app.command(help="Write the AsyncAPI 3.0 document of an application's agents.")(asyncapi)
app.add_typer(workflows_app, name="workflows")
app.add_typer(projections_app, name="projections")
workflows_app.command(
    "stuck", help="List choreography steps reported stuck (missing, or arrived late)."
)(stuck)


@app.command()
def version() -> None:
    """Print the eventwire version."""
    from eventwire import __version__

    typer.echo(__version__)


def main() -> None:
    app()


__all__ = ["app", "main"]
