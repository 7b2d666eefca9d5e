"""``eventwire run MODULE:ATTR``: serve an application's agents until SIGINT or SIGTERM.

Like ``uvicorn app:app``: MODULE is imported (from ``--app-dir``, the current directory by
default), ATTR is an Agent, a list of Agents, or a function (async or not) returning them.
Key files give the agents the identities they keep across restarts; everything else is
:func:`eventwire.run_agents`: an embedded server when no URL is given, logs on stderr,
SIGINT and SIGTERM handled alike (drain, ``lifecycle.stopped``, exit 0; a second signal
exits at once with 130 or 143).
"""

from __future__ import annotations

import asyncio
import enum
import importlib
import os
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from eventwire import keyring_of_entries, run_agents
from eventwire_security import passphrase_from_env, read_identity

from ._boundary import fail

if TYPE_CHECKING:
    from eventwire_security import Identity

PASSPHRASE_ENV = "EVENTWIRE_KEY_PASSPHRASE"
USAGE = 2


class LogLevel(enum.StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


def run(  # noqa: PLR0917 - typer reads options from the signature
    target: Annotated[
        str,
        typer.Argument(
            metavar="MODULE:ATTR",
            help="An Agent, a list of Agents, or a function (async or not) returning them.",
        ),
    ],
    url: Annotated[
        str | None,
        typer.Option(
            envvar="EVENTWIRE_URL",
            help="NATS server URL (default: an embedded server, stopped at exit).",
            show_default=False,
        ),
    ] = None,
    key_file: Annotated[
        list[str] | None,
        typer.Option(
            help="An agent's key file (`eventwire keys generate`), read with the passphrase "
            f"in ${PASSPHRASE_ENV} (or a prompt); repeat for each agent.",
        ),
    ] = None,
    keyring: Annotated[
        list[str] | None,
        typer.Option(
            help="Public key entry (JSON file, `eventwire keys export-public`) of an agent "
            "whose events to accept; repeat.",
        ),
    ] = None,
    tenant: Annotated[
        str | None, typer.Option(help="Tenant (default: the agents' own).", show_default=False)
    ] = None,
    root: Annotated[str, typer.Option(help="Subject root of the deployment.")] = "ew",
    log_level: Annotated[
        LogLevel | None,
        typer.Option(help="Level of the stderr log (default: info).", show_default=False),
    ] = None,
    drain_timeout: Annotated[
        float, typer.Option(help="Seconds in-flight handlers get to finish after a signal.")
    ] = 30.0,
    app_dir: Annotated[str, typer.Option(help="Directory to import MODULE from.")] = ".",
    health_port: Annotated[
        int | None,
        typer.Option(
            envvar="EVENTWIRE_HEALTH_PORT",
            help="Serve /healthz, /readyz and /health of the agents on this port (0: a free "
            "one, logged).",
            show_default=False,
        ),
    ] = None,
    health_host: Annotated[
        str,
        typer.Option(
            envvar="EVENTWIRE_HEALTH_HOST",
            help="Address of the health endpoint (0.0.0.0 for probes from outside a container).",
        ),
    ] = "127.0.0.1",
    metrics_port: Annotated[
        int | None,
        typer.Option(
            envvar="EVENTWIRE_METRICS_PORT",
            help="Serve the Prometheus metrics on 127.0.0.1:PORT/metrics (needs the "
            "prometheus extra).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Serve the agents of MODULE:ATTR until SIGINT or SIGTERM (then drain and exit 0)."""
    source = load_target(target, app_dir)
    identities = _identities(key_file or [])
    trusted = keyring_of_entries(keyring or [])
    asyncio.run(
        run_agents(
            source,  # type: ignore[arg-type]  # checked by run_agents: InvalidArgument
            url,
            identities=identities,
            keyring=trusted,
            tenant=tenant,
            root=root,
            drain_timeout=drain_timeout,
            log_level=None if log_level is None else log_level.value,
            health_port=health_port,
            health_host=health_host,
            metrics_port=metrics_port,
        )
    )


def load_target(target: str, app_dir: str) -> object:
    """The object ``MODULE:ATTR`` names (ATTR may be dotted), importing MODULE from
    ``app_dir`` first; a missing module or attribute is a one-line error."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        fail(f"{target!r} is not MODULE:ATTR (e.g. myapp.agents:agent)", USAGE)
    sys.path.insert(0, os.path.abspath(app_dir))
    try:
        value: object = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        wanted = exc.name or ""
        if module_name != wanted and not module_name.startswith(f"{wanted}."):
            raise  # the module itself imports something missing: its own traceback
        fail(f"cannot import {module_name!r}: no module named {wanted!r} (from {app_dir!r})")
    for part in attr.split("."):
        if not hasattr(value, part):
            fail(f"{module_name}:{attr}: {module_name!r} has no attribute {attr!r}")
        value = getattr(value, part)
    return value


def _identities(paths: list[str]) -> list[Identity]:
    if not paths:
        return []
    if os.environ.get(PASSPHRASE_ENV):
        passphrase = passphrase_from_env(PASSPHRASE_ENV)
    elif sys.stdin.isatty():
        value: str = typer.prompt("Passphrase of the key files", hide_input=True)
        passphrase = os.fsencode(value)
    else:
        fail(f"set {PASSPHRASE_ENV} to the passphrase of the key files", USAGE)
    return [read_identity(path, passphrase) for path in paths]
