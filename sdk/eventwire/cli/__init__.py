"""The ``eventwire`` command line: a thin shell over the library."""

from __future__ import annotations

import typer

from ._audit import app as audit_app
from ._bench import bench
from ._demo import demo
from ._dlq import app as dlq_app
from ._keys import app as keys_app
from ._streams import app as streams_app
from ._tenant import app as tenant_app

app = typer.Typer(
    name="eventwire",
    help="Signed, durable events between AI agents over NATS JetStream.",
    no_args_is_help=True,
    add_completion=False,
)
app.command(help="Run agents on an embedded server and print a verified timeline.")(demo)
app.command(help="Measure eventwire against raw nats-py on the same server.")(bench)
app.add_typer(dlq_app, name="dlq")
app.add_typer(keys_app, name="keys")
app.add_typer(audit_app, name="audit")
app.add_typer(streams_app, name="streams")
app.add_typer(tenant_app, name="tenant")


@app.command()
def version() -> None:
    """Print the eventwire version."""
    from eventwire import __version__

    typer.echo(__version__)


def main() -> None:
    app()


__all__ = ["app", "main"]
