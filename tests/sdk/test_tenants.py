"""Tenants as NATS accounts, added and changed on a RUNNING nats-server by config reload.

Each server test starts a real nats-server from the rendered config (``-c``, port chosen by
the server and read from ``--ports_file_dir``). The finalizer stops it by its PID. The PID
stays the same and the connections that were already open never reconnect: no restart.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import bcrypt
import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client as NatsClient

from eventwire import (
    AgentExists,
    Credentials,
    Deployment,
    DeploymentError,
    ServerGone,
    TenantExists,
    UnknownTenant,
    find_nats_server,
)
from eventwire_security import Actor
from tests.conftest import wait_until

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from nats.aio.msg import Msg

    Login = Callable[[Credentials], Awaitable["Conn"]]

STREAM = "ew-events"
REFUSED = 0.5  # seconds to wait for an answer the server must never send
COMPLETED = "ew.task.t1.completed"
BOT_POLICY = """\
version = 1
[[rule]]
principal = "*"
publish = ["agent.lifecycle.*"]
consume = ["agent.lifecycle.*"]
[[rule]]
principal = "agent:bot"
publish = ["task.*.completed"]
"""
ADMIN = Deployment.ADMIN
BCRYPT_VECTOR = "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW"  # "U*U", OpenBSD


# -- a real server started from the rendered config ---------------------------------------------


@dataclass
class Server:
    proc: asyncio.subprocess.Process
    url: str
    log: Path
    reloads: int = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc.returncode is None

    async def reloaded(self) -> None:
        """Wait until the server has logged the end of one more config reload.

        A user the reload adds can log in a few ms before that, but such a connection may
        then be closed once by the reload's own re-check of every client ("Authentication
        Failure" in the log; a client with reconnects enabled just reconnects).
        """
        self.reloads += 1
        done = "Reloaded server configuration"
        await wait_until(lambda: self.log.read_text().count(done) >= self.reloads)


async def _ready_url(deployment: Deployment, proc: asyncio.subprocess.Process) -> str:
    async with asyncio.timeout(15):
        while True:
            assert proc.returncode is None, f"nats-server exited with {proc.returncode}"
            for path in deployment.path.glob(f"*_{proc.pid}.ports"):
                urls = json.loads(path.read_text() or "{}").get("nats") or []
                if urls:
                    return str(urls[0])
            await asyncio.sleep(0.02)


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()


@pytest.fixture
def deployment(tmp_path: Path) -> Deployment:
    made = Deployment(tmp_path / "deployment")
    made.configure(port=-1)  # the server picks a free port; reload keeps it
    return made


@pytest.fixture
def acme(deployment: Deployment) -> Credentials:
    return deployment.create_tenant("acme")


@pytest.fixture
async def server(deployment: Deployment, acme: Credentials) -> AsyncIterator[Server]:
    config, log_path = deployment.write_config(), deployment.path / "nats-server.log"
    with log_path.open("ab") as log:
        proc = await asyncio.create_subprocess_exec(
            str(find_nats_server()), "-c", str(config),
            "--ports_file_dir", str(deployment.path),
            stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
    try:
        yield Server(proc, await _ready_url(deployment, proc), log_path)
    finally:
        await _stop(proc)


@dataclass
class Conn:
    """A connection and every error the server reported to it."""

    nc: NatsClient
    errors: list[Exception] = field(default_factory=list)

    def violations(self, subject: str) -> list[Exception]:
        expected = f'permissions violation for publish to "{subject}"'
        return [e for e in self.errors if expected in str(e).lower()]


async def _connect(url: str, credentials: Credentials) -> Conn:
    errors: list[Exception] = []

    async def on_error(error: Exception) -> None:
        errors.append(error)

    nc = NatsClient()
    try:
        await nc.connect(
            url, user=credentials.user, password=credentials.password, error_cb=on_error,
            inbox_prefix=credentials.inbox_prefix,
            allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2,
        )  # fmt: skip
    except BaseException:
        await nc.close()  # nats-py leaves the socket of a refused connect open
        raise
    return Conn(nc, errors)


@pytest.fixture
async def login(server: Server) -> AsyncIterator[Login]:
    """Connect to the server (closed at teardown)."""
    made: list[Conn] = []

    async def connect(credentials: Credentials) -> Conn:
        made.append(await _connect(server.url, credentials))
        return made[-1]

    yield connect
    for conn in made:
        await conn.nc.close()


async def _stored(conn: Conn, subject: str | None = None) -> int:
    info = await conn.nc.jetstream().stream_info(STREAM, subjects_filter=subject)
    if subject is None:
        return info.state.messages
    return (info.state.subjects or {}).get(subject, 0)


async def _cli(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from eventwire.cli._tenant import app; app()", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


async def _add_globex(
    deployment: Deployment, server: Server, login: Login
) -> tuple[Conn, Credentials]:
    """Tenant globex and its agent bot, added to the running server by a reload."""
    globex = deployment.create_tenant("globex")
    bot = deployment.add_agent("globex", "bot")
    deployment.write_config()
    deployment.reload(server.pid)
    await server.reloaded()
    return await login(globex), bot


# -- (a) (b) (c): a running server, never restarted ----------------------------------------------


async def test_tenant_admin_creates_a_stream_and_publishes(login: Login, acme: Credentials) -> None:
    admin = await login(acme)
    js = admin.nc.jetstream()
    await js.add_stream(name=STREAM, subjects=["ew.>"])
    ack = await js.publish("ew.task.t1.created", b"hello", timeout=5)
    assert (ack.stream, ack.seq) == (STREAM, 1)
    assert await _stored(admin) == 1


async def test_a_new_tenant_joins_the_running_server_isolated(
    deployment: Deployment, server: Server, login: Login, acme: Credentials
) -> None:
    pid, acme_admin = server.pid, await login(acme)
    await acme_admin.nc.jetstream().add_stream(name=STREAM, subjects=["ew.>"])
    await acme_admin.nc.jetstream().publish("ew.task.t1.created", b"acme's", timeout=5)
    globex = deployment.create_tenant("globex")
    bot = deployment.add_agent("globex", "bot")
    deployment.write_config()
    with pytest.raises(nats.errors.Error, match=r"(?i)authorization violation"):
        await _connect(server.url, globex)  # written, but the server has not read it yet
    deployment.reload(server.pid)
    await server.reloaded()
    globex_admin = await login(globex)
    assert (server.pid, server.running) == (pid, True)
    assert acme_admin.nc.is_connected
    assert acme_admin.nc.stats["reconnects"] == 0
    await (await nats.connect(bot.url(server.url), allow_reconnect=False)).close()
    js = globex_admin.nc.jetstream()
    with pytest.raises(nats.js.errors.NotFoundError) as missing:
        await js.stream_info(STREAM)  # answered by JetStream of globex's own account
    assert missing.value.err_code == 10059
    await _globex_cannot_reach_acme(globex_admin, acme_admin)


async def _globex_cannot_reach_acme(globex: Conn, acme: Conn) -> None:
    seen: list[Msg] = []

    async def sniff(msg: Msg) -> None:
        seen.append(msg)

    with pytest.raises(nats.js.errors.NoStreamResponseError):  # no stream in globex's account
        await globex.nc.jetstream().publish("ew.task.t2.created", b"globex's", timeout=REFUSED)
    await globex.nc.subscribe("ew.>", cb=sniff)
    await globex.nc.flush()
    await globex.nc.flush()
    await globex.nc.publish("ew.task.t3.created", b"globex's")
    await acme.nc.jetstream().publish("ew.task.t4.created", b"acme's", timeout=5)
    await globex.nc.flush()
    assert await _stored(acme) == 2  # acme's two messages, none of globex's
    assert [msg.subject for msg in seen] == ["ew.task.t3.created"]  # its own only


async def test_a_policy_change_applies_on_reload(
    deployment: Deployment, server: Server, login: Login
) -> None:
    pid = server.pid
    globex_admin, bot_credentials = await _add_globex(deployment, server, login)
    await globex_admin.nc.jetstream().add_stream(name=STREAM, subjects=["ew.>"])
    bot = await login(bot_credentials)
    with pytest.raises(nats.errors.TimeoutError):
        await bot.nc.jetstream().publish(COMPLETED, b"done", timeout=REFUSED)
    await wait_until(lambda: bool(bot.violations(COMPLETED)))
    assert await _stored(globex_admin) == 0
    policy = deployment.path.parent / "bot-policy.toml"
    policy.write_text(BOT_POLICY)
    args = ("policy", "globex", str(policy), "--dir", str(deployment.path))
    code, out = await _cli(*args, "--pid", str(pid))
    assert (code, f"asked nats-server (pid {pid}) to reload" in out) == (0, True), out
    await server.reloaded()
    ack = await bot.nc.jetstream().publish(COMPLETED, b"done", timeout=5)  # same connection
    assert ack.stream == STREAM
    assert await _stored(globex_admin, COMPLETED) == 1
    with pytest.raises(nats.errors.TimeoutError):  # what the new policy does not allow
        await bot.nc.jetstream().publish("ew.task.t1.created", b"no", timeout=REFUSED)
    assert (server.pid, server.running, bot.nc.stats["reconnects"]) == (pid, True, 0)


async def test_a_bcrypt_hash_in_users_json_is_accepted_by_the_server(
    deployment: Deployment, server: Server, login: Login
) -> None:
    deployment.create_tenant("hashed")
    users = deployment.path / "tenants" / "hashed" / "users.json"
    users.write_text(json.dumps({ADMIN: {"password_bcrypt": BCRYPT_VECTOR}}))
    assert deployment.users("hashed")[ADMIN].hashed
    assert BCRYPT_VECTOR in deployment.write_config().read_text()
    deployment.reload(server.pid)
    await server.reloaded()
    known = Credentials("hashed", ADMIN, "hashed-admin", "U*U", hashed=True)
    assert (await login(known)).nc.is_connected


async def test_reload_refuses_the_wrong_process(
    tmp_path: Path, deployment: Deployment, server: Server
) -> None:
    other = Deployment(tmp_path / "other")
    with pytest.raises(DeploymentError, match=r"reads .*not signalled"):
        other.reload(server.pid)
    sleeper = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import time; time.sleep(30)"
    )
    try:
        with pytest.raises(DeploymentError, match="not nats-server"):
            deployment.reload(sleeper.pid)
        assert sleeper.returncode is None
    finally:
        sleeper.kill()
        await sleeper.wait()
    with pytest.raises(ServerGone):
        deployment.reload(sleeper.pid)  # reaped: gone
    with pytest.raises(DeploymentError, match="not a process id"):
        deployment.reload(0)
    assert server.running


# -- the deployment directory --------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _accounts(config: str) -> dict[str, Any]:
    accounts: dict[str, Any] = json.loads(config.split("accounts: ", 1)[1])
    return accounts


def test_create_tenant_writes_private_files_and_a_deny_by_default_policy(
    deployment: Deployment, acme: Credentials
) -> None:
    assert (acme.tenant, acme.agent, acme.user) == ("acme", ADMIN, "acme-admin")
    assert len(acme.password) >= 43
    assert acme.password not in repr(acme)
    assert acme.hashed
    tenant = deployment.path / "tenants" / "acme"
    for path in (tenant / "policy.toml", tenant / "users.json", deployment.write_config()):
        assert _mode(path) == 0o600, path
    assert _mode(tenant) == 0o700
    policy, bot = deployment.policy("acme"), Actor("acme", "bot")
    assert policy.allows(bot, "publish", "agent.lifecycle.started")
    assert policy.allows(bot, "consume", "agent.lifecycle.stopped")
    assert not policy.allows(bot, "publish", "task.t1.completed")
    assert deployment.tenants() == ["acme"]


def test_refusals(deployment: Deployment, acme: Credentials) -> None:
    with pytest.raises(TenantExists):
        deployment.create_tenant("acme")
    with pytest.raises(DeploymentError, match="invalid tenant name"):
        deployment.create_tenant("../etc")
    with pytest.raises(UnknownTenant):
        deployment.add_agent("nobody", "bot")
    with pytest.raises(UnknownTenant):
        deployment.set_policy("nobody", BOT_POLICY)
    deployment.add_agent("acme", "bot")
    for taken in ("bot", ADMIN):
        with pytest.raises(AgentExists):
            deployment.add_agent("acme", taken)
    with pytest.raises(DeploymentError, match="invalid capability name"):
        deployment.add_agent("acme", "other", capabilities=["a.b"])
    deployment.create_tenant("acme-x")
    deployment.add_agent("acme-x", "y")
    with pytest.raises(DeploymentError, match="'acme-x-y' is taken"):
        deployment.add_agent("acme", "x-y")  # NATS user names are global to the server
    assert deployment.tenants() == ["acme", "acme-x"]


def test_an_invalid_policy_changes_nothing(deployment: Deployment, acme: Credentials) -> None:
    path = deployment.path / "tenants" / "acme" / "policy.toml"
    before = path.read_text()
    for bad in ("version = 2", "not toml [", 'version = 1\n[[rule]]\nprincipal = "x:y"'):
        with pytest.raises(DeploymentError, match="policy refused, nothing changed"):
            deployment.set_policy("acme", bad)
    assert path.read_text() == before
    assert len(deployment.set_policy("acme", BOT_POLICY).rules) == 2
    assert path.read_text() == BOT_POLICY


def test_render_gives_one_account_per_tenant_with_admin_and_agent_rights(
    deployment: Deployment, acme: Credentials
) -> None:
    deployment.set_policy("acme", BOT_POLICY)
    bot = deployment.add_agent("acme", "bot", capabilities=["summarize"])
    deployment.create_tenant("globex")
    config = deployment.render(store_dir="/srv/js", port=4333)
    assert 'host: "127.0.0.1"' in config
    assert "port: 4333" in config
    assert 'store_dir: "/srv/js"' in config
    accounts = _accounts(config)
    assert sorted(accounts) == ["acme", "globex"]
    users = {user["user"]: user for user in accounts["acme"]["users"]}
    assert users["acme-admin"]["permissions"]["publish"]["allow"] == [">"]
    assert bcrypt.checkpw(bot.password.encode(), users["acme-bot"]["password"].encode())
    assert bot.password not in config  # only the hash is rendered
    allowed = users["acme-bot"]["permissions"]["publish"]["allow"]
    assert "ew.task.*.completed" in allowed
    assert not any(right.startswith("$JS.API.>") for right in allowed)
    assert [u["user"] for u in accounts["globex"]["users"]] == ["globex-admin"]


def test_settings_and_an_empty_deployment(tmp_path: Path) -> None:
    empty = Deployment(tmp_path / "empty")
    with pytest.raises(DeploymentError, match="no tenant yet"):
        empty.render()
    assert empty.settings().store_dir == str(tmp_path / "empty" / "jetstream")
    assert empty.configure(root="t1", port=4999).port == 4999
    assert Deployment(tmp_path / "empty").settings().root == "t1"
    with pytest.raises(DeploymentError, match="port"):
        empty.configure(port=70000)
    with pytest.raises(DeploymentError, match="invalid root name"):
        empty.configure(root="a.b")


# -- the CLI, run as a user would ----------------------------------------------------------------


async def test_cli_create_prints_the_password_once_and_refuses_a_second_create(
    tmp_path: Path,
) -> None:
    where = ("--dir", str(tmp_path / "d"))
    code, out = await _cli("create", "acme", *where)
    assert code == 0, out
    match = re.search(r"^password\s+(\S+)$", out, re.MULTILINE)
    assert match is not None, out
    password = match.group(1)
    assert out.count(password) == 1
    assert "shown once" in out
    users = json.loads((tmp_path / "d" / "tenants" / "acme" / "users.json").read_text())
    assert list(users[ADMIN]) == ["password_bcrypt"]  # the hash only, never the password
    assert bcrypt.checkpw(password.encode(), users[ADMIN]["password_bcrypt"].encode())
    assert password not in (tmp_path / "d" / "nats-server.conf").read_text()
    assert _mode(tmp_path / "d" / "nats-server.conf") == 0o600
    code, again = await _cli("create", "acme", *where)
    assert (code, "tenant 'acme' already exists" in again) == (1, True), again
    assert "password" not in again
    assert json.loads((tmp_path / "d" / "tenants" / "acme" / "users.json").read_text()) == users


async def test_cli_add_agent_policy_list_and_render(tmp_path: Path) -> None:
    where = ("--dir", str(tmp_path / "d"))
    for args in (
        ("create", "acme", *where, "--port", "4333"),
        ("create", "globex", *where),
        ("add-agent", "acme", "bot", "--capability", "summarize", "--role", "r", *where),
    ):
        code, out = await _cli(*args)
        assert code == 0, out
    code, out = await _cli("add-agent", "acme", "bot", *where)
    assert (code, "already has a user 'bot'" in out) == (1, True), out
    bad = tmp_path / "bad.toml"
    bad.write_text("version = 7")
    code, out = await _cli("policy", "acme", str(bad), *where)
    assert (code, "unsupported version 7" in out) == (1, True), out
    code, out = await _cli("list", *where)
    assert code == 0, out
    for text in ("acme-admin, acme-bot", "bot (summarize; r)", "globex-admin"):
        assert text in out, out
    rendered = tmp_path / "elsewhere.conf"
    code, out = await _cli("render", *where, "--store", "/srv/js", "--out", str(rendered))
    assert code == 0, out
    assert _mode(rendered) == 0o600
    assert 'store_dir: "/srv/js"' in rendered.read_text()
    assert "port: 4333" in rendered.read_text()
    assert sorted(_accounts(rendered.read_text())) == ["acme", "globex"]


async def test_cli_prints_the_credentials_even_when_the_reload_fails(tmp_path: Path) -> None:
    gone = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await gone.wait()
    code, out = await _cli("create", "acme", "--dir", str(tmp_path / "d"), "--pid", str(gone.pid))
    assert (code, f"no running process {gone.pid}" in out) == (1, True), out
    assert re.search(r"^password\s+\S{43}$", out, re.MULTILINE), out
    assert (tmp_path / "d" / "nats-server.conf").exists()  # written: a restart picks it up


async def test_cli_list_and_provision_json(tmp_path: Path) -> None:
    where = ("--dir", str(tmp_path / "d"))
    for args in (
        ("create", "acme", *where),
        ("add-agent", "acme", "bot", "--capability", "summarize", "--role", "r", *where),
    ):
        code, out = await _cli(*args)
        assert code == 0, out
    code, out = await _cli("list", *where, "--json")
    assert code == 0, out
    assert json.loads(out) == [
        {"tenant": "acme", "rules": 1, "users": [
            {"name": ADMIN, "user": "acme-admin", "capabilities": [], "roles": [], "hashed": True},
            {"name": "bot", "user": "acme-bot", "capabilities": ["summarize"], "roles": ["r"],
             "hashed": True},
        ]},
    ]  # fmt: skip
    assert "$2a$" not in out


# -- secrets stay out of repositories ------------------------------------------------------------


def _git(where: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(where), *args], check=True, capture_output=True)


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    """A git work tree, as a clone of an application's repository would be."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    return repo


def test_the_default_directory_is_per_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EVENTWIRE_DEPLOYMENT", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert Deployment.default_dir() == tmp_path / "xdg" / "eventwire" / "deployment"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    expected = tmp_path / "home" / ".local" / "share" / "eventwire" / "deployment"
    assert Deployment.default_dir() == expected
    monkeypatch.setenv("EVENTWIRE_DEPLOYMENT", str(tmp_path / "explicit"))
    assert Deployment.default_dir() == tmp_path / "explicit"


def test_a_deployment_inside_a_work_tree_is_refused_unless_ignored(repository: Path) -> None:
    inside = Deployment(repository / "deploy")
    with pytest.raises(
        DeploymentError,
        match=r"inside the git work tree .* git does not ignore it; use a directory outside",
    ):
        inside.create_tenant("acme")
    assert not (repository / "deploy").exists()  # nothing written, not even the directory
    with pytest.raises(DeploymentError, match="is its top directory"):
        Deployment(repository).configure(port=4333)
    (repository / ".gitignore").write_text("/deploy/\n")
    assert inside.create_tenant("acme").hashed
    project_ignores = (Path(__file__).parents[2] / ".gitignore").read_text()
    (repository / ".gitignore").write_text(project_ignores)  # this project's own
    assert Deployment(repository / ".eventwire").create_tenant("acme").hashed
    outside = Deployment(repository.parent / "elsewhere")
    outside.create_tenant("globex")
    with pytest.raises(DeploymentError, match="refusing to write secrets"):
        outside.write_config(repository / "nats-server.conf")  # a copy into the repository
    assert not (repository / "nats-server.conf").exists()


async def test_cli_refuses_a_deployment_in_the_repository_in_one_line(repository: Path) -> None:
    code, out = await _cli("create", "acme", "--dir", str(repository / "deploy"))
    assert code == 1, out
    assert out.startswith("error: refusing to write secrets to ")
    assert "git work tree" in out
    assert len(out.strip().splitlines()) == 1
    assert "password" not in out


async def test_cli_policy_warns_of_what_the_lint_finds_and_applies_it(tmp_path: Path) -> None:
    where = ("--dir", str(tmp_path / "d"))
    for args in (("create", "acme", *where), ("add-agent", "acme", "bot", *where)):
        code, out = await _cli(*args)
        assert code == 0, out
    policy = tmp_path / "policy.toml"
    policy.write_text(BOT_POLICY.replace('"task.*.completed"', '"ew.task.*.completed"'))
    code, out = await _cli("policy", "acme", str(policy), *where)
    assert code == 0, out
    assert "policy of acme: 2 rules" in out
    assert (
        f"warning: {policy}:rule[1].publish[0]: never-matches: 'ew.task.*.completed' starts "
        "with the subject root 'ew': patterns are logical subjects, write 'task.*.completed'"
    ) in out
    assert out.count("warning:") == 1
    assert Deployment(tmp_path / "d").policy("acme").rules[1].publish == ("ew.task.*.completed",)


async def test_cli_provision_errors_are_one_line_without_the_password(tmp_path: Path) -> None:
    where = ("--dir", str(tmp_path / "d"))
    code, out = await _cli("create", "acme", *where)
    assert code == 0, out
    url = "nats://acme-admin:s3cret-pw@127.0.0.1:1"
    code, out = await _cli("provision", "acme", *where, "--url", url)
    assert (code, out.startswith("error: "), len(out.splitlines())) == (1, True, 1), out
    assert "s3cret" not in out
    assert "nats://***@127.0.0.1:1" in out
