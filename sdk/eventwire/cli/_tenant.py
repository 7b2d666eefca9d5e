"""``eventwire tenant``: one NATS account per tenant, changed without restarting the server.

Every change rewrites ``<dir>/nats-server.conf``. With ``--pid``, the running nats-server is
then told to reload it (SIGHUP). Passwords are printed once and never again.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from eventwire import Deployment, provision_agent
from eventwire_security import Actor

from . import _tls as tls
from ._boundary import command_group, fail
from ._connect import open_bus

if TYPE_CHECKING:
    from eventwire import Credentials

app = command_group("Tenants: one NATS account each; changes reload a running server (no restart).")
console = Console(highlight=False)
ADMIN = Deployment.ADMIN

Dir = Annotated[Path, typer.Option("--dir", help="Deployment directory.")]
Pid = Annotated[
    int | None, typer.Option(help="PID of the running nats-server to reload after the change.")
]
Tenant = Annotated[str, typer.Argument(help="Tenant (NATS account) name.")]


def _apply(deployment: Deployment, pid: int | None) -> None:
    """Re-render the config file and, with a PID, reload the running server."""
    path = deployment.write_config()
    console.print(f"wrote {escape(str(path))}")
    if pid is None:
        console.print(f"reload a running server with --pid, or start: nats-server -c {path}")
        return
    deployment.reload(pid)
    console.print(
        f"asked nats-server (pid {pid}) to reload, no restart; "
        "its log says 'Reloaded server configuration' when done"
    )


def _show(credentials: Credentials) -> None:
    console.print(f"tenant    {credentials.tenant}", soft_wrap=True)
    console.print(f"user      {credentials.user}", soft_wrap=True)
    console.print(f"password  {escape(credentials.password)}", soft_wrap=True)
    if credentials.agent != ADMIN:
        console.print(f"inbox     {credentials.inbox_prefix}", soft_wrap=True)
    console.print("[yellow]The password is shown once: store it now.[/yellow]")
    if not credentials.hashed:
        console.print(
            "note: the bcrypt module is not installed, so the password is stored in plaintext "
            "(users.json and nats-server.conf, mode 0600)."
        )


@app.command()
def create(
    name: Tenant,
    *,
    dir_: Dir,
    store: Annotated[
        Path | None, typer.Option(help="JetStream store directory (default <dir>/jetstream).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Client port (default 4222).")] = None,
    root: Annotated[str | None, typer.Option(help="Subject root (default ew).")] = None,
    pid: Pid = None,
) -> None:
    """Create a tenant (a NATS account) and its admin user; print the admin password once."""
    deployment = Deployment(dir_)
    if store is not None or port is not None or root is not None:
        deployment.configure(root=root, port=port, store_dir=None if store is None else str(store))
    _show(deployment.create_tenant(name))
    _apply(deployment, pid)


@app.command("add-agent")
def add_agent(
    tenant: Tenant,
    agent: Annotated[str, typer.Argument(help="Agent name.")],
    *,
    dir_: Dir,
    capability: Annotated[
        list[str] | None, typer.Option(help="A capability of the agent; repeat for several.")
    ] = None,
    role: Annotated[list[str] | None, typer.Option(help="A role; repeat for several.")] = None,
    pid: Pid = None,
) -> None:
    """Add an agent user to a tenant; print its password once."""
    deployment = Deployment(dir_)
    credentials = deployment.add_agent(tenant, agent, capability or (), role or ())
    _show(credentials)
    _apply(deployment, pid)


@app.command()
def policy(
    tenant: Tenant,
    file: Annotated[Path, typer.Argument(help="Policy document (TOML).")],
    dir_: Dir,
    pid: Pid = None,
) -> None:
    """Replace a tenant's policy (validated first: an invalid file changes nothing)."""
    deployment = Deployment(dir_)
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        fail(f"{file}: not UTF-8 text ({exc.reason})")
    rules = len(deployment.set_policy(tenant, text).rules)
    console.print(f"policy of {tenant}: {rules} rules")
    _apply(deployment, pid)


@app.command("list")
def list_(dir_: Dir) -> None:
    """List the tenants, their users and policies."""
    deployment = Deployment(dir_)
    table = Table(title=f"tenants in {escape(str(dir_))}")
    for column in ("tenant", "NATS users", "agents (capabilities; roles)", "rules"):
        table.add_column(column)
    for tenant in deployment.tenants():
        users = deployment.users(tenant)
        rules = len(deployment.policy(tenant).rules)
        agents = [
            f"{name} ({', '.join(entry.capabilities) or '-'}; {', '.join(entry.roles) or '-'})"
            for name, entry in users.items()
            if name != ADMIN
        ]
        names = ", ".join(f"{tenant}-{name}" for name in users)
        table.add_row(tenant, escape(names), escape("\n".join(agents)) or "-", str(rules))
    console.print(table)


@app.command()
def render(
    *,
    dir_: Dir,
    out: Annotated[Path, typer.Option(help="Config file to write (mode 0600).")],
    store: Annotated[
        Path | None, typer.Option(help="JetStream store directory (default: the deployment's).")
    ] = None,
    tls_dir: tls.TlsDir = None,
    verify_clients: tls.VerifyClients = False,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int | None, typer.Option(help="Client port (default: the deployment's).")
    ] = None,
    server_name: Annotated[str | None, typer.Option(help="This node's name (a cluster).")] = None,
    cluster_name: Annotated[str | None, typer.Option(help="Join the cluster NAME.")] = None,
    cluster_port: Annotated[int | None, typer.Option(help="Port for routes (a cluster).")] = None,
    route: Annotated[
        list[str] | None, typer.Option(help="nats-route://HOST:PORT of another node (repeat).")
    ] = None,
) -> None:
    """Write the nats-server config of the deployment to a file: one server, or one node of
    a cluster (with TLS, its routes use mutual TLS); `eventwire tls cluster` writes them all."""
    path = tls.write_node_config(
        Deployment(dir_), out, store=None if store is None else str(store), tls_dir=tls_dir,
        verify_clients=verify_clients, host=host, port=port, server_name=server_name,
        cluster_name=cluster_name, cluster_port=cluster_port, routes=route or (),
    )  # fmt: skip
    console.print(f"wrote {escape(str(path))}")


async def _provision(deployment: Deployment, tenant: str, url: str) -> list[tuple[str, str]]:
    """Connect as the tenant's admin; create streams, buckets and every agent's consumers."""
    settings, policy = deployment.settings(), deployment.policy(tenant)
    made: list[tuple[str, str]] = []
    async with open_bus(url, tenant=tenant, root=settings.root, name=f"{tenant}-provision") as bus:
        for agent, entry in deployment.users(tenant).items():
            if agent != ADMIN:
                actor = Actor(tenant, agent, entry.capabilities, entry.roles)
                made += [(agent, name) for name in await provision_agent(bus, actor, policy)]
    return made


@app.command()
def provision(
    tenant: Tenant,
    dir_: Dir,
    url: Annotated[
        str,
        typer.Option(
            envvar="EVENTWIRE_URL",
            help="URL with the tenant admin's user and password: nats://USER:PASS@HOST:PORT.",
        ),
    ],
) -> None:
    """As the tenant's admin: create the streams, buckets and each agent's consumers, so
    that agents run bind-only (``connect(..., provision=False)``) under their permissions.
    Run it again after adding agents or changing the policy."""
    made = asyncio.run(_provision(Deployment(dir_), tenant, url))
    table = Table(title=f"consumers provisioned for tenant {escape(tenant)}")
    table.add_column("agent")
    table.add_column("consumer")
    for agent, name in made:
        table.add_row(escape(agent), name)
    console.print(table)
