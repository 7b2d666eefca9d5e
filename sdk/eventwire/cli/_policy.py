"""``eventwire policy check``: the lint of ``eventwire_security.lint_policy``, printed.

One line per finding (``FILE:LOCATION: KIND: MESSAGE``), exit 1 when there is any, 0 when
there is none; a file that is not a valid policy is an error (one line, exit 1).
"""

from __future__ import annotations

from pathlib import Path  # noqa: TC003 - typer reads the annotations at run time
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from eventwire import Deployment
from eventwire_security import DEFAULT_ROOT, Actor, Policy, lint_policy

from ._boundary import command_group, fail
from ._output import Json, print_json, stdout

if TYPE_CHECKING:
    from eventwire_security import PolicyFinding

app = command_group("Check policy documents before they are applied.")
FINDINGS = 1


@app.command()
def check(
    file: Annotated[Path, typer.Argument(help="Policy document (TOML).")],
    *,
    agents: Annotated[
        str | None,
        typer.Option(help="Comma-separated names of the agents that exist: a, b, ..."),
    ] = None,
    tenant: Annotated[
        str | None,
        typer.Option(help="Check principals against this tenant's users (see --dir)."),
    ] = None,
    dir_: Annotated[
        Path | None,
        typer.Option(
            "--dir",
            envvar="EVENTWIRE_DEPLOYMENT",
            show_default=False,
            help="Deployment directory of --tenant (default: as `eventwire tenant`).",
        ),
    ] = None,
    root: Annotated[
        str | None,
        typer.Option(help="Subject root (default: the deployment's with --tenant, else ew)."),
    ] = None,
    json_: Json = False,
) -> None:
    """Flag what a valid policy gets wrong: patterns that can never match (`ew.knowledge.x`,
    `foo.bar`), the reserved `keyed`, allows that a deny cancels, and principals naming
    agents (or, with --tenant, capabilities and roles) that do not exist.

    Prints one line per finding and exits 1 if there is any, 0 if there is none."""
    if dir_ is not None and tenant is None:
        fail("--dir needs --tenant (whose users to check the principals against)", code=2)
    policy = Policy.load(file)
    names = None if agents is None else [a.strip() for a in agents.split(",") if a.strip()]
    actors: list[Actor] | None = None
    if tenant is not None:
        deployment = Deployment(dir_ if dir_ is not None else Deployment.default_dir())
        users = deployment.users(tenant).items()
        actors = [
            Actor(tenant, name, e.capabilities, e.roles)
            for name, e in users
            if name != Deployment.ADMIN
        ]
        root = root if root is not None else deployment.settings().root
    root = root if root is not None else DEFAULT_ROOT
    findings = lint_policy(policy, root=root, agents=names, actors=actors)
    _report(file, len(policy.rules), findings, json_=json_)
    if findings:
        raise typer.Exit(FINDINGS)


def _report(file: Path, rules: int, findings: tuple[PolicyFinding, ...], *, json_: bool) -> None:
    if json_:
        listed = [finding.to_json() for finding in findings]
        print_json({"file": str(file), "rules": rules, "findings": listed})
        return
    console = stdout()
    for finding in findings:
        console.print(escape(f"{file}:{finding}"))
    if not findings:
        console.print(escape(f"{file}: {rules} rules, no findings"))
