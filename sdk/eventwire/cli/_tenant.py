"""``eventwire tenant``: one NATS account per tenant, changed without restarting the server.

Every change rewrites ``<dir>/nats-server.conf``. With ``--pid``, the running nats-server is
then told to reload it (SIGHUP). Passwords are printed once and never again: only their
bcrypt hashes are stored. ``--dir`` defaults to a per-user directory
(``Deployment.default_dir()``); one inside a git work tree that git does not ignore is
refused.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from eventwire import Deployment, provision_agent
from eventwire_security import Actor, lint_policy

from . import _tls as tls
from ._boundary import command_group, fail, stderr
from ._connect import open_bus
from ._output import Json, print_json, stdout

if TYPE_CHECKING:
    from eventwire import Credentials

app = command_group("Tenants: one NATS account each; changes reload a running server (no restart).")
ADMIN = Deployment.ADMIN
DEPLOYMENT_ENV = "EVENTWIRE_DEPLOYMENT"

Dir = Annotated[
    Path | None,
    typer.Option(
        "--dir",
        envvar=DEPLOYMENT_ENV,
        show_default=False,
        help="Deployment directory (holds the password hashes and the server config). Default: "
        "$XDG_DATA_HOME/eventwire/deployment, i.e. ~/.local/share/eventwire/deployment. "
        "Refused inside a git work tree unless git ignores it.",
    ),
]
Pid = Annotated[
    int | None, typer.Option(help="PID of the running nats-server to reload after the change.")
]
Tenant = Annotated[str, typer.Argument(help="Tenant (NATS account) name.")]


def _deployment(dir_: Path | None) -> Deployment:
    return Deployment(dir_ if dir_ is not None else Deployment.default_dir())


def _apply(deployment: Deployment, pid: int | None) -> None:
    """Re-render the config file and, with a PID, reload the running server."""
    path = deployment.write_config()
    console = stdout()
    console.print(f"wrote {escape(str(path))}")
    if pid is None:
        console.print(
            f"reload a running server with --pid, or start: eventwire server -c {escape(str(path))}"
        )
        return
    deployment.reload(pid)
    console.print(
        f"asked nats-server (pid {pid}) to reload, no restart; "
        "its log says 'Reloaded server configuration' when done"
    )


def _show(credentials: Credentials) -> None:
    console = stdout()
    console.print(f"tenant    {credentials.tenant}")
    console.print(f"user      {credentials.user}")
    console.print(f"password  {escape(credentials.password)}")
    if credentials.agent != ADMIN:
        console.print(f"inbox     {credentials.inbox_prefix}")
    console.print(
        "[yellow]The password is shown once (only a bcrypt hash is stored): store it now.[/yellow]"
    )


@app.command()
def create(
    name: Tenant,
    *,
    dir_: Dir = None,
    store: Annotated[
        Path | None, typer.Option(help="JetStream store directory (default <dir>/jetstream).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Client port (default 4222).")] = None,
    root: Annotated[str | None, typer.Option(help="Subject root (default ew).")] = None,
    pid: Pid = None,
) -> None:
    """Create a tenant (a NATS account) and its admin user; print the admin password once."""
    deployment = _deployment(dir_)
    if store is not None or port is not None or root is not None:
        deployment.configure(root=root, port=port, store_dir=None if store is None else str(store))
    _show(deployment.create_tenant(name))
    _apply(deployment, pid)


@app.command("add-agent")
def add_agent(
    tenant: Tenant,
    agent: Annotated[str, typer.Argument(help="Agent name.")],
    *,
    dir_: Dir = None,
    capability: Annotated[
        list[str] | None, typer.Option(help="A capability of the agent; repeat for several.")
    ] = None,
    role: Annotated[list[str] | None, typer.Option(help="A role; repeat for several.")] = None,
    pid: Pid = None,
) -> None:
    """Add an agent user to a tenant; print its password once."""
    deployment = _deployment(dir_)
    credentials = deployment.add_agent(tenant, agent, capability or (), role or ())
    _show(credentials)
    _apply(deployment, pid)


@app.command()
def policy(
    tenant: Tenant,
    file: Annotated[Path, typer.Argument(help="Policy document (TOML).")],
    dir_: Dir = None,
    pid: Pid = None,
) -> None:
    """Replace a tenant's policy (validated first: an invalid file changes nothing).

    What `eventwire policy check` would find is printed as warnings (stderr).
    The policy is applied all the same."""
    deployment = _deployment(dir_)
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        fail(f"{file}: not UTF-8 text ({exc.reason})")
    new = deployment.set_policy(tenant, text)
    stdout().print(f"policy of {tenant}: {len(new.rules)} rules")
    root, actors = deployment.settings().root, _actors(deployment, tenant)
    # principals are checked once the tenant has agents (a policy may come first)
    for finding in lint_policy(new, root=root, actors=actors or None):
        stderr.print(f"[yellow]warning:[/yellow] {escape(f'{file}:{finding}')}")
    _apply(deployment, pid)


def _actors(deployment: Deployment, tenant: str) -> list[Actor]:
    users = deployment.users(tenant).items()
    return [Actor(tenant, name, e.capabilities, e.roles) for name, e in users if name != ADMIN]


@app.command("list")
def list_(dir_: Dir = None, json_: Json = False) -> None:
    """List the tenants, their users and policies (never a password or hash)."""
    deployment = _deployment(dir_)
    listed = [_tenant_json(deployment, tenant) for tenant in deployment.tenants()]
    if json_:
        print_json(listed)
        return
    table = Table(title=f"tenants in {escape(str(deployment.path))}")
    for column in ("tenant", "NATS users", "agents (capabilities; roles)", "rules"):
        table.add_column(column)
    for tenant in listed:
        agents = [
            f"{u['name']} ({', '.join(u['capabilities']) or '-'}; {', '.join(u['roles']) or '-'})"
            for u in tenant["users"]
            if u["name"] != ADMIN
        ]
        names = ", ".join(u["user"] for u in tenant["users"])
        table.add_row(
            tenant["tenant"], escape(names), escape("\n".join(agents)) or "-", str(tenant["rules"])
        )
    stdout().print(table)


def _tenant_json(deployment: Deployment, tenant: str) -> dict[str, Any]:
    users = [
        {"name": name, "user": f"{tenant}-{name}", "capabilities": list(entry.capabilities),
         "roles": list(entry.roles), "hashed": entry.hashed}
        for name, entry in deployment.users(tenant).items()
    ]  # fmt: skip
    return {"tenant": tenant, "rules": len(deployment.policy(tenant).rules), "users": users}


@app.command()
def render(
    *,
    out: Annotated[Path, typer.Option(help="Config file to write (mode 0600).")],
    dir_: Dir = None,
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
        _deployment(dir_), out, store=None if store is None else str(store), tls_dir=tls_dir,
        verify_clients=verify_clients, host=host, port=port, server_name=server_name,
        cluster_name=cluster_name, cluster_port=cluster_port, routes=route or (),
    )  # fmt: skip
    stdout().print(f"wrote {escape(str(path))}")


async def _provision(deployment: Deployment, tenant: str, url: str) -> list[dict[str, str]]:
    """Connect as the tenant's admin; create streams, buckets and every agent's consumers."""
    settings, policy = deployment.settings(), deployment.policy(tenant)
    made: list[dict[str, str]] = []
    async with open_bus(url, tenant=tenant, root=settings.root, name=f"{tenant}-provision") as bus:
        for actor in _actors(deployment, tenant):
            for consumer in await provision_agent(bus, actor, policy):
                made.append(
                    {
                        "agent": consumer.agent,
                        "consumer": consumer.name,
                        "pattern": consumer.pattern,
                    }
                )
    return made


@app.command()
def provision(
    tenant: Tenant,
    url: Annotated[
        str,
        typer.Option(
            envvar="EVENTWIRE_URL",
            help="URL with the tenant admin's user and password: nats://USER:PASS@HOST:PORT.",
        ),
    ],
    dir_: Dir = None,
    json_: Json = False,
) -> None:
    """As the tenant's admin: create the streams, buckets and each agent's consumers, so
    that agents run bind-only (`connect(..., provision=False)`) under their permissions.
    Run it again after adding agents or changing the policy.

    Each consumer delivers one policy PATTERN, printed next to its name.
    An agent's handler binds to it with @agent.on(PATTERN), the pattern exactly as printed."""
    made = asyncio.run(_provision(_deployment(dir_), tenant, url))
    if json_:
        print_json(made)
        return
    table = Table(title=f"consumers provisioned for tenant {escape(tenant)}")
    for column in ("agent", "consumer", "pattern"):
        table.add_column(column)
    for row in made:
        table.add_row(escape(row["agent"]), row["consumer"], escape(row["pattern"]))
    console = stdout()
    console.print(table)
    console.print("an agent's handler binds to its consumer with @agent.on(PATTERN)")
