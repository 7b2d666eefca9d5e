"""The README's tenant flow, end to end, as an operator runs it from a shell.

Each step is the README's command run as a separate process (``eventwire tenant ...``,
``eventwire server -c ...``) with the deployment in the per-user default directory (here
under a temporary ``XDG_DATA_HOME``); then the README's agent connects bind-only with the
printed credentials, its handler pattern exactly as the policy writes it, and answers a
help request. Every output of every command is searched for the passwords: each is printed
once, by the command that made it, and nowhere else (nor stored).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest

import eventwire
from eventwire import Agent, Event, HelpRequested, Identity, Keyring, TaskCompleted
from eventwire_security import Policy
from tests.conftest import wait_until

if TYPE_CHECKING:
    from pathlib import Path

POLICY = """\
version = 1
[[rule]]
principal = "*"
publish = ["agent.lifecycle.*"]
consume = ["agent.lifecycle.*"]
[[rule]]
principal = "capability:summarize"
publish = ["task.*.completed", "knowledge.>"]
consume = ["capability.summarize.*", "knowledge.public.>"]
deny_publish = ["knowledge.secret.>"]
"""
CLI = "from eventwire.cli import main; main()"


@dataclass
class Shell:
    """Runs ``eventwire`` commands as an operator's shell would, and keeps every output."""

    home: Path
    outputs: list[str] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {
            "PATH": "/usr/bin:/bin", "HOME": str(self.home), "COLUMNS": "60",
            "XDG_DATA_HOME": str(self.home / "data"),
        }  # fmt: skip

    @property
    def deployment(self) -> Path:
        return self.home / "data" / "eventwire" / "deployment"

    async def run(self, *args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CLI, *args, cwd=self.home, env=self.env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out = (await proc.communicate())[0].decode()
        self.outputs.append(out)
        assert proc.returncode == 0, out
        return out

    @property
    def log(self) -> str:
        return (self.home / "server.log").read_text()

    async def start(self, *args: str) -> asyncio.subprocess.Process:
        """A long-running command (its output goes to a log file kept in ``outputs``)."""
        log = (self.home / "server.log").open("ab")
        with log:
            return await asyncio.create_subprocess_exec(
                sys.executable, "-c", CLI, *args, cwd=self.home, env=self.env,
                stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL,
            )  # fmt: skip


def _field(out: str, name: str) -> str:
    match = re.search(rf"^{name}\s+(\S+)$", out, re.MULTILINE)
    assert match is not None, out
    return match.group(1)


@pytest.fixture
def shell(tmp_path: Path) -> Shell:
    (tmp_path / "policy.toml").write_text(POLICY)
    return Shell(tmp_path)


async def _url_of(shell: Shell, server: asyncio.subprocess.Process) -> str:
    """The server's client URL, from the ports file nats-server names after ITS pid."""
    ports = shell.home / f"nats-server_{server.pid}.ports"
    await wait_until(lambda: server.returncode is not None or ports.exists(), timeout=15)
    assert server.returncode is None, shell.log
    await wait_until(lambda: bool(ports.read_text()))
    return str(json.loads(ports.read_text())["nats"][0])


async def _stop(server: asyncio.subprocess.Process) -> int:
    if server.returncode is None:
        server.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(server.wait(), 15)


async def test_the_readme_tenant_flow_end_to_end(shell: Shell) -> None:
    create = await shell.run("tenant", "create", "acme", "--port", "-1")  # README: 4222
    admin_password = _field(create, "password")
    applied = await shell.run("tenant", "policy", "acme", "policy.toml")
    assert "policy of acme: 2 rules" in applied
    assert "warning" not in applied  # no agents yet: principals are not checked
    added = await shell.run(
        "tenant", "add-agent", "acme", "summarizer", "--capability", "summarize"
    )
    password, inbox = _field(added, "password"), _field(added, "inbox")
    config = shell.deployment / "nats-server.conf"
    assert f"eventwire server -c {config}" in added
    server = await shell.start("server", "-c", str(config), "--ports_file_dir", str(shell.home))
    try:
        url = await _url_of(shell, server)  # the ports file has the PID we started: an exec
        admin_url = url.replace("nats://", f"nats://acme-admin:{admin_password}@")
        provisioned = await shell.run("tenant", "provision", "acme", "--url", admin_url)
        for pattern in ("capability.summarize.*", "knowledge.public.>", "agent.lifecycle.*"):
            assert re.search(rf"summarizer-[0-9a-f]{{12}} +│ {re.escape(pattern)} ", provisioned)
        agent_url = url.replace("nats://", f"nats://acme-summarizer:{password}@")
        await _the_readme_agent_answers(agent_url, inbox, admin_url)
        as_json = await shell.run("tenant", "provision", "acme", "--json", "--url", admin_url)
        assert {row["pattern"] for row in json.loads(as_json)} == {
            "capability.summarize.*", "knowledge.public.>", "agent.lifecycle.*",
        }  # fmt: skip
        reloaded = await shell.run(
            "tenant", "add-agent", "acme", "writer", "--pid", str(server.pid)
        )
        assert f"asked nats-server (pid {server.pid}) to reload" in reloaded
        await wait_until(lambda: "Reloaded server configuration" in shell.log)
    finally:
        code = await _stop(server)
    assert (code, "Server Exiting" in shell.log) == (0, True), shell.log  # SIGTERM reached it
    passwords = {admin_password: create, password: added, _field(reloaded, "password"): reloaded}
    _never_shown_again(shell, passwords)


async def _the_readme_agent_answers(agent_url: str, inbox: str, admin_url: str) -> None:
    """The README's agent snippet against the README's policy, bind-only; the tenant's admin
    (who may create consumers) asks for help and watches the answers."""
    key, requester = Identity.generate("acme", "summarizer"), Identity.generate("acme", "writer")
    keyring = Keyring.of(key, requester)
    agent = Agent("summarizer", capabilities=["summarize"], identity=key)

    @agent.on("capability.summarize.*")  # exactly as the policy writes it
    async def handle(event: Event) -> None:
        request = event.parse(HelpRequested)
        await agent.publish(TaskCompleted(task_type="summarize", task_id=event.id,
                                          result=request.question.upper()))  # fmt: skip

    policy = Policy.from_toml(POLICY)
    completed: list[Event] = []

    async def collect(event: Event) -> None:
        completed.append(event)

    bus = eventwire.connect(agent_url, tenant="acme", keyring=keyring, policy=policy,
                            provision=False, inbox_prefix=inbox)  # fmt: skip
    async with (
        bus,
        agent.serve(bus),
        eventwire.connect(admin_url, tenant="acme", keyring=keyring) as admin,
        admin.subscribe("task.*.completed", collect, durable="readme-check"),
    ):
        ask = HelpRequested(capability="summarize", question="q3 numbers")
        await admin.publish(ask, identity=requester)
        await wait_until(lambda: bool(completed))
    assert [e.parse(TaskCompleted).result for e in completed] == ["Q3 NUMBERS"]
    assert completed[0].source == "acme/summarizer"


def _never_shown_again(shell: Shell, made_by: dict[str, str]) -> None:
    """Each password: once in the output of the command that made it, nowhere else, and in
    no file of the deployment (only bcrypt hashes are stored)."""
    log = shell.log
    for password, output in made_by.items():
        assert output.count(password) == 1
        assert sum(out.count(password) for out in shell.outputs) == 1
        assert password not in log
    stored = [p for p in shell.deployment.rglob("*") if p.is_file()]
    assert {p.name for p in stored} >= {"users.json", "nats-server.conf", "policy.toml"}
    for path in stored:
        text = path.read_bytes().decode(errors="replace")
        assert not any(password in text for password in made_by), path
        if path.name == "users.json":
            hashes = [u["password_bcrypt"] for u in json.loads(text).values()]
            assert all(h.startswith("$2a$") for h in hashes), hashes
    assert oct(os.stat(shell.deployment / "nats-server.conf").st_mode & 0o777) == "0o600"
