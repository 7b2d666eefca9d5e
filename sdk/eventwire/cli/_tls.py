"""``eventwire tls``: certificates for a TLS deployment, and the configs of a secured cluster.

``init`` writes a private CA, a server certificate and client certificates (keys mode 0600,
never overwritten). ``cluster`` renders one nats-server config per node of the 3-node
cluster of ``compose.yaml``: every tenant's account and users, TLS on the client port and on
the routes, and the certificates read from where the containers mount them. The default
directories are under ``deploy/secrets/``, which git ignores.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from eventwire import Deployment, init_certificates

from ._boundary import command_group

if TYPE_CHECKING:
    from collections.abc import Sequence

app = command_group("TLS certificates, and the configs of a secured cluster.")
console = Console(highlight=False, soft_wrap=True)

SECRETS = Path("deploy/secrets")
CERT, KEY, CA = "server.pem", "server-key.pem", "ca.pem"
CLIENT_PORT, CLUSTER_PORT, MONITOR_PORT = 4222, 6222, 8222

TlsDir = Annotated[
    str | None,
    typer.Option(
        help=f"Directory of {CERT}, {KEY} and {CA} (`eventwire tls init`), as the server "
        "sees it: clients must then use TLS."
    ),
]
VerifyClients = Annotated[
    bool,
    typer.Option(
        "--verify-clients", help=f"Require a client certificate signed by {CA} (mutual TLS)."
    ),
]


def write_node_config(
    deployment: Deployment,
    out: Path,
    *,
    store: str | None,
    tls_dir: str | None,
    verify_clients: bool = False,
    host: str = "127.0.0.1",
    port: int | None = None,
    server_name: str | None = None,
    cluster_name: str | None = None,
    cluster_port: int | None = None,
    routes: Sequence[str] = (),
    monitor_port: int | None = None,
) -> Path:
    """Write one server's config; ``tls_dir`` holds the server's certificate, key and CA."""
    base = None if tls_dir is None else tls_dir.rstrip("/") or "/"
    return deployment.write_config(
        out, store, port=port, host=host, server_name=server_name, cluster_name=cluster_name,
        cluster_port=cluster_port, routes=routes, monitor_port=monitor_port,
        tls_cert=None if base is None else f"{base}/{CERT}",
        tls_key=None if base is None else f"{base}/{KEY}",
        tls_ca=None if base is None else f"{base}/{CA}",
        tls_verify=verify_clients,
    )  # fmt: skip


@app.command()
def init(
    *,
    dir_: Annotated[
        Path, typer.Option("--dir", help="Directory for the new files (created, mode 0700).")
    ] = SECRETS / "certs",
    host: Annotated[
        list[str] | None,
        typer.Option(
            help="A DNS name or IP address of the server (repeat); localhost and "
            "127.0.0.1 are always included."
        ),
    ] = None,
    client: Annotated[
        list[str] | None, typer.Option(help="Also make a client certificate NAME (repeat).")
    ] = None,
    days: Annotated[
        int, typer.Option(help="Validity of the server and client certificates.")
    ] = 365,
) -> None:
    """Make a CA, a server certificate and client certificates.

    ECDSA P-256 keys, PEM files; keys are written with mode 0600, and no existing file is
    ever overwritten."""
    made = init_certificates(dir_, hosts=host or (), clients=client or (), days=days)
    table = Table(title=f"certificates in {escape(str(made.directory))}")
    table.add_column("file")
    table.add_column("what")
    rows = [
        (made.ca, "CA certificate: clients trust it (TLS(ca=...)), servers verify clients"),
        (made.ca_key, "CA key: keep it offline; it signs every certificate (mode 0600)"),
        (made.server_cert, f"server certificate for {', '.join(made.hosts)}"),
        (made.server_key, "server key (mode 0600)"),
    ]
    for each in made.clients:
        rows += [(each.cert, f"client certificate {each.name}"), (each.key, "its key (0600)")]
    for path, what in rows:
        table.add_row(escape(path.name), escape(what))
    console.print(table)


@app.command()
def cluster(
    *,
    dir_: Annotated[Path, typer.Option("--dir", help="Deployment directory (`eventwire tenant`).")],
    out: Annotated[
        Path, typer.Option(help="Where to write n1.conf, n2.conf, ... (mode 0600).")
    ] = SECRETS / "cluster",
    nodes: Annotated[int, typer.Option(min=3, max=9, help="Number of nodes.")] = 3,
    name: Annotated[str, typer.Option(help="Cluster name.")] = "ew",
    tls_dir: Annotated[
        str, typer.Option(help=f"Where the nodes read {CERT}, {KEY} and {CA}.")
    ] = "/etc/nats/certs",
    store: Annotated[str, typer.Option(help="JetStream store directory of a node.")] = "/data",
    verify_clients: VerifyClients = False,
) -> None:
    """Write the node configs of the secured cluster of compose.yaml.

    Nodes n1..nN reach each other as nats-route://nI:6222 over mutual TLS, clients connect
    on 4222 over TLS, and every tenant of the deployment is an account with its users."""
    deployment = Deployment(dir_)
    names = [f"n{index}" for index in range(1, nodes + 1)]
    for node in names:
        routes = [f"nats-route://{other}:{CLUSTER_PORT}" for other in names if other != node]
        path = write_node_config(
            deployment, out / f"{node}.conf", store=store, tls_dir=tls_dir,
            verify_clients=verify_clients, host="0.0.0.0", port=CLIENT_PORT,
            server_name=node, cluster_name=name, cluster_port=CLUSTER_PORT, routes=routes,
            monitor_port=MONITOR_PORT,
        )  # fmt: skip
        console.print(f"wrote {escape(str(path))}")
    console.print(
        "after a tenant change, run this again and reload: docker compose kill -s HUP "
        + " ".join(names)
    )
