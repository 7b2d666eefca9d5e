"""Tenants of a deployment: one NATS account each, changed without restarting the server.

A deployment is a directory that the ``eventwire tenant`` commands own::

    <dir>/deployment.json             subject root, JetStream store and port of the server
    <dir>/tenants/<name>/policy.toml  the tenant's policy (eventwire_security.Policy)
    <dir>/tenants/<name>/users.json   agent -> {capabilities, roles, password_bcrypt | password}
    <dir>/nats-server.conf            rendered from the above (mode 0600)

Each tenant is a JetStream-enabled NATS account. Its ``admin`` user has ``>`` (creates streams
and consumers); each agent's user gets ``compile_permissions`` of the tenant's policy, with a
private inbox prefix (``Credentials.inbox_prefix``) and no right to create anything: agents
run ``connect(..., provision=False)`` after ``eventwire tenant provision``. User
names are global to a server: agent ``bot`` of ``acme`` is ``acme-bot``, and a taken one is
refused.

**Configuration reload, not account JWTs.** A change rewrites the config file and the running
server re-reads it on SIGHUP (what ``nats-server --signal reload=<pid>`` sends). That adds and
removes accounts and users and changes permissions, of open connections too (a removed user
is disconnected), keeping the port, the store and every stream. No infrastructure: one file,
owned by the CLI. JWTs need an operator, signing keys, a resolver and each account JWT pushed
to it: the choice for very many tenants or tenants that manage their own users, not here.

A reload cannot change the port or the store directory: the server then rejects the WHOLE
reload (it logs ``config reload not supported for ...``) and keeps the old config until a
restart. SIGHUP gets no answer; the server's log, or a login as the new user, tells whether
it worked.

**Secrets.** A new user's password (256 random bits) is returned once in
:class:`Credentials` and stored only as a bcrypt hash (users.json and the rendered config,
mode 0600); entries of older deployments with a plaintext ``password`` still work. The
directory defaults to a per-user one (:meth:`Deployment.default_dir`), and a deployment
refuses to write inside a git work tree unless git ignores the directory
(:class:`InsideRepository`), so secrets do not end up in a commit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Unpack

from eventwire_security import (
    Actor,
    Policy,
    SecurityError,
    check_name,
    compile_permissions,
    private_inbox_prefix,
    render_server_config,
)
from eventwire_security._files import write_atomic

from ._errors import EventwireError
from ._subjects import DEFAULT_ROOT

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping

    from eventwire_security._nats_permissions import ServerOptions

ADMIN = "admin"
DEFAULT_PORT = 4222
LOOPBACK = "127.0.0.1"
CONFIG_NAME = "nats-server.conf"
DEFAULT_POLICY = """\
version = 1

# Deny by default: only the agent lifecycle events are allowed to everyone.
# Replace with `eventwire tenant policy TENANT FILE`.
[[rule]]
principal = "*"
publish = ["agent.lifecycle.*"]
consume = ["agent.lifecycle.*"]
"""
_SETTINGS, _POLICY, _USERS = "deployment.json", "policy.toml", "users.json"
_ADMIN_RIGHTS: dict[str, Any] = {"publish": {"allow": [">"]}, "subscribe": {"allow": [">"]}}
_ENTRY_KEYS = frozenset({"capabilities", "roles", "password", "password_bcrypt"})
# nats-server checks the hash on every connect, and each CONNECT with a wrong password costs
# the server one hash: a slow hash buys nothing for 256-bit random passwords (no guessing),
# and costs every agent's (re)connect. 2^8 rounds: ~15 ms.
_BCRYPT_ROUNDS = 8
DEPLOYMENT_ENV = "EVENTWIRE_DEPLOYMENT"
StrPath = str | os.PathLike[str]


class DeploymentError(EventwireError):
    """The deployment directory, an input to it, or the server to reload is unusable."""


class TenantExists(DeploymentError):
    """``create_tenant`` of a tenant that exists: nothing was changed."""


class UnknownTenant(DeploymentError):
    """No tenant of this name in the deployment."""


class AgentExists(DeploymentError):
    """``add_agent`` of a user the tenant has already (``admin`` included)."""


class InsideRepository(DeploymentError):
    """The directory is inside a git work tree and git does not ignore it: secrets written
    there would be one ``git add`` away from a commit. ``path``, ``repository``."""

    def __init__(self, path: Path, repository: str, why: str = "git does not ignore it") -> None:
        super().__init__(
            f"refusing to write secrets to {path}: it is inside the git work tree {repository} "
            f"and {why}; use a directory outside the repository (the default is "
            f"{Deployment.default_dir()}), or one that .gitignore lists"
        )
        self.path = path
        self.repository = repository


class ServerGone(DeploymentError):
    """No running process has this PID: there is no server to reload."""

    def __init__(self, pid: int) -> None:
        super().__init__(f"no running process {pid}: nothing to reload")
        self.pid = pid


@dataclass(frozen=True, slots=True)
class Credentials:
    """A new NATS user's password, returned once. ``hashed``: only a bcrypt hash is stored.
    ``inbox_prefix``: the agent's own inbox prefix, to connect with (``_INBOX`` for admins)."""

    tenant: str
    agent: str
    user: str
    password: str = field(repr=False)
    hashed: bool
    inbox_prefix: str = "_INBOX"

    def url(self, server: str = f"nats://{LOOPBACK}:{DEFAULT_PORT}") -> str:
        """``server`` with the user and password in it (what ``eventwire.connect`` takes)."""
        scheme, sep, rest = server.partition("://")
        return f"{scheme}://{self.user}:{self.password}@{rest}" if sep else server


@dataclass(frozen=True, slots=True)
class TenantUser:
    """One user of a tenant as stored in ``users.json`` (``secret``: a hash or plaintext)."""

    name: str
    capabilities: tuple[str, ...]
    roles: tuple[str, ...]
    secret: str = field(repr=False)
    hashed: bool


@dataclass(frozen=True, slots=True)
class DeploymentSettings:
    """Where a deployment's server keeps its data and listens, and its subject root."""

    root: str
    store_dir: str
    port: int


class Deployment:
    """A deployment directory: tenants, their policies and users, and the server config."""

    ADMIN: ClassVar[str] = ADMIN
    """The name of each tenant's admin user (NATS user ``<tenant>-admin``)."""

    def __init__(self, path: StrPath) -> None:
        self.path = Path(path)

    @staticmethod
    def default_dir() -> Path:
        """``$EVENTWIRE_DEPLOYMENT``, else ``$XDG_DATA_HOME/eventwire/deployment`` (by default
        ``~/.local/share/eventwire/deployment``): per user, outside any repository."""
        explicit = os.environ.get(DEPLOYMENT_ENV)
        if explicit:
            return Path(explicit)
        data = os.environ.get("XDG_DATA_HOME")
        if not data:
            try:
                data = str(Path.home() / ".local" / "share")
            except RuntimeError as exc:  # no HOME and no password-database entry
                raise DeploymentError(
                    f"no home directory ({exc}): give the directory (--dir, {DEPLOYMENT_ENV})"
                ) from exc
        return Path(data) / "eventwire" / "deployment"

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_NAME

    def settings(self) -> DeploymentSettings:
        """The stored settings over the defaults (``ew``, ``<dir>/jetstream``, port 4222)."""
        file = self.path / _SETTINGS
        try:
            stored = json.loads(file.read_text()) if file.exists() else {}
        except (OSError, ValueError) as exc:
            raise DeploymentError(f"cannot read {file}: {exc}") from exc
        default = DeploymentSettings(
            DEFAULT_ROOT, str((self.path / "jetstream").absolute()), DEFAULT_PORT
        )
        return _settings(stored, default)

    def configure(
        self, *, root: str | None = None, store_dir: str | None = None, port: int | None = None
    ) -> DeploymentSettings:
        """Change the stored settings. A running server must restart for a new store or port."""
        store = None if store_dir is None else str(Path(store_dir).absolute())
        given = {"root": root, "store_dir": store, "port": port}
        with self._locked():
            new = _settings({k: v for k, v in given.items() if v is not None}, self.settings())
            _write_atomic(self.path / _SETTINGS, json.dumps(dataclasses.asdict(new)) + "\n")
        return new

    def tenants(self) -> list[str]:
        tenants = self.path / "tenants"
        if not tenants.is_dir():
            return []
        return sorted(p.name for p in tenants.iterdir() if p.is_dir() and p.name[0] != ".")

    def policy(self, tenant: str) -> Policy:
        try:
            return Policy.load(self._tenant_dir(tenant) / _POLICY)
        except (OSError, SecurityError) as exc:
            raise DeploymentError(f"policy of tenant {tenant!r}: {exc}") from exc

    def users(self, tenant: str) -> dict[str, TenantUser]:
        """The users of ``tenant`` by agent name, the ``admin`` user included."""
        return {name: _entry(name, raw) for name, raw in self._users_json(tenant).items()}

    def create_tenant(self, name: str) -> Credentials:
        """A new tenant with the default deny-by-default policy and its ``admin`` user."""
        _check("tenant", name)
        with self._locked():
            target = self.path / "tenants" / name
            if target.exists():
                raise TenantExists(f"tenant {name!r} already exists")
            user = self._free_user(name, ADMIN)
            password, stored = _new_password()
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=target.parent))
            try:
                _write_atomic(staging / _POLICY, DEFAULT_POLICY)
                _write_atomic(staging / _USERS, _dumps({ADMIN: stored}))
                staging.rename(target)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        return Credentials(name, ADMIN, user, password, "password_bcrypt" in stored)

    def add_agent(
        self, tenant: str, agent: str, capabilities: Iterable[str] = (), roles: Iterable[str] = ()
    ) -> Credentials:
        """A new agent user of ``tenant``, with the rights the tenant's policy gives it."""
        try:
            actor = Actor(tenant, agent, tuple(capabilities), tuple(roles))
        except (SecurityError, TypeError) as exc:
            raise DeploymentError(str(exc)) from exc
        with self._locked():
            users = self._users_json(tenant)
            if agent in users:
                raise AgentExists(f"tenant {tenant!r} already has a user {agent!r}")
            user = self._free_user(tenant, agent)
            self._permissions(actor, self.policy(tenant), self.settings().root)
            password, stored = _new_password()
            users[agent] = {"capabilities": actor.capabilities, "roles": actor.roles, **stored}
            _write_atomic(self._tenant_dir(tenant) / _USERS, _dumps(users))
        inbox = private_inbox_prefix(actor)
        return Credentials(tenant, agent, user, password, "password_bcrypt" in stored, inbox)

    def set_policy(self, tenant: str, toml_text: str) -> Policy:
        """Replace the policy of ``tenant``. An invalid document changes nothing."""
        try:
            policy = Policy.from_toml(toml_text)
        except SecurityError as exc:
            raise DeploymentError(f"policy refused, nothing changed: {exc}") from exc
        with self._locked():
            root = self.settings().root
            for name, entry in self.users(tenant).items():
                if name != ADMIN:
                    actor = Actor(tenant, name, entry.capabilities, entry.roles)
                    self._permissions(actor, policy, root)
            _write_atomic(self._tenant_dir(tenant) / _POLICY, toml_text)
        return policy

    def render(
        self,
        store_dir: str | None = None,
        *,
        port: int | None = None,
        **server: Unpack[ServerOptions],
    ) -> str:
        """The nats-server config: one JetStream account per tenant, listening on loopback
        unless ``host`` says otherwise; ``server``: TLS and cluster options of
        :func:`eventwire_security.render_server_config`."""
        settings = self.settings()
        accounts = {tenant: self._account(tenant, settings.root) for tenant in self.tenants()}
        if not accounts:
            raise DeploymentError("no tenant yet: a config without users would admit anyone")
        options: ServerOptions = {"host": LOOPBACK, **server}
        try:
            return render_server_config(
                accounts,
                store_dir=str(Path(store_dir or settings.store_dir).absolute()),
                port=settings.port if port is None else port,
                **options,
            )
        except SecurityError as exc:
            raise DeploymentError(f"cannot render the server config: {exc}") from exc

    def write_config(
        self,
        path: StrPath | None = None,
        store_dir: str | None = None,
        *,
        port: int | None = None,
        **server: Unpack[ServerOptions],
    ) -> Path:
        """Render and write the config atomically (temporary file, then rename), mode 0600."""
        target = Path(path) if path is not None else self.config_path
        with self._locked():
            if path is not None:
                check_not_in_repository(target.parent)
            _write_atomic(target, self.render(store_dir, port=port, **server))
        return target

    def reload(self, pid: int, config: StrPath | None = None) -> None:
        """Ask the nats-server process ``pid`` to reload its config (SIGHUP).

        On Linux the process is checked first. It must be a live ``nats-server``, and if its
        command line names a config file, that file must be ``config`` (by default
        :attr:`config_path`). Otherwise nothing is sent.
        """
        if type(pid) is not int or pid <= 0:
            raise DeploymentError(f"{pid!r} is not a process id")
        _check_process(pid, Path(config) if config is not None else self.config_path)
        try:
            os.kill(pid, signal.SIGHUP)
        except ProcessLookupError as exc:
            raise ServerGone(pid) from exc
        except PermissionError as exc:
            raise DeploymentError(f"may not signal process {pid}: {exc}") from exc

    # -- internals ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time (an exclusive flock on ``<dir>/.lock``). Not re-entrant."""
        check_not_in_repository(self.path)
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        descriptor = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)

    def _tenant_dir(self, tenant: str) -> Path:
        _check("tenant", tenant)
        directory = self.path / "tenants" / tenant
        if not directory.is_dir():
            raise UnknownTenant(f"no tenant {tenant!r} in {self.path}")
        return directory

    def _users_json(self, tenant: str) -> dict[str, Any]:
        path = self._tenant_dir(tenant) / _USERS
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise DeploymentError(f"cannot read {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise DeploymentError(f"{path}: expected an object of users")
        for name, raw in data.items():
            _entry(name, raw, path)
        return data

    def _free_user(self, tenant: str, agent: str) -> str:
        user = f"{tenant}-{agent}"
        _check("NATS user", user)
        for other in self.tenants():
            for name in self.users(other):
                if f"{other}-{name}" == user:
                    raise DeploymentError(
                        f"NATS user {user!r} is taken by agent {name!r} of tenant {other!r}"
                    )
        return user

    @staticmethod
    def _permissions(actor: Actor, policy: Policy, root: str) -> dict[str, Any]:
        try:
            return dict(compile_permissions(policy, actor, root=root))
        except SecurityError as exc:
            raise DeploymentError(f"permissions of {actor.source}: {exc}") from exc

    def _account(self, tenant: str, root: str) -> list[tuple[str, str, Mapping[str, Any]]]:
        policy = self.policy(tenant)
        account: list[tuple[str, str, Mapping[str, Any]]] = []
        for name, entry in sorted(self.users(tenant).items()):
            if name == ADMIN:
                rights = _ADMIN_RIGHTS
            else:
                actor = Actor(tenant, name, entry.capabilities, entry.roles)
                rights = self._permissions(actor, policy, root)
            account.append((f"{tenant}-{name}", entry.secret, rights))
        return account


def _check(kind: str, name: str) -> None:
    try:
        check_name(kind, name)  # also refuses a non-string
    except SecurityError as exc:
        raise DeploymentError(str(exc)) from exc


def _settings(data: object, base: DeploymentSettings) -> DeploymentSettings:
    if not isinstance(data, dict) or set(data) - {"root", "store_dir", "port"}:
        raise DeploymentError(f"{_SETTINGS}: expected an object of root, store_dir, port")
    root, store_dir, port = (data.get(k, getattr(base, k)) for k in ("root", "store_dir", "port"))
    _check("root", root)
    if not isinstance(store_dir, str) or not Path(store_dir).is_absolute():
        raise DeploymentError(f"store_dir must be an absolute path, not {store_dir!r}")
    if type(port) is not int or not -1 <= port <= 65535:
        raise DeploymentError(f"port must be -1 (any free port) to 65535, not {port!r}")
    return DeploymentSettings(root, store_dir, port)


def _entry(name: str, raw: object, path: Path | str = _USERS) -> TenantUser:
    _check("agent", name)
    if not isinstance(raw, dict) or not set(raw) <= _ENTRY_KEYS:
        raise DeploymentError(f"{path}: user {name!r} must be an object of {sorted(_ENTRY_KEYS)}")
    hashed = "password_bcrypt" in raw
    secret = raw.get("password_bcrypt", raw.get("password"))
    lists = [raw.get("capabilities", []), raw.get("roles", [])]
    if not isinstance(secret, str) or ("password" in raw) == hashed:
        raise DeploymentError(f"{path}: user {name!r} needs one of password, password_bcrypt")
    if not all(isinstance(x, list) and all(isinstance(s, str) for s in x) for x in lists):
        raise DeploymentError(f"{path}: capabilities and roles of {name!r} must be string lists")
    return TenantUser(name, tuple(lists[0]), tuple(lists[1]), secret, hashed)


def _dumps(users: Mapping[str, Mapping[str, Any]]) -> str:
    return json.dumps(users, indent=2, sort_keys=True) + "\n"


def _new_password() -> tuple[str, dict[str, str]]:
    """A random password (256 bits, URL-safe) and its bcrypt hash, the only thing stored."""
    import bcrypt  # the CLI's and admin's dependency; `import eventwire` stays light

    password = secrets.token_urlsafe(32)
    salt = bcrypt.gensalt(rounds=_BCRYPT_ROUNDS, prefix=b"2a")  # nats-server reads $2a$
    return password, {"password_bcrypt": bcrypt.hashpw(password.encode(), salt).decode("ascii")}


def check_not_in_repository(path: Path) -> None:
    """Raise :class:`InsideRepository` if ``path`` (a directory, existing or not) is inside a
    git work tree and git does not ignore it. Outside any work tree: no git call at all."""
    absolute = Path(os.path.realpath(path))
    existing = next(p for p in (absolute, *absolute.parents) if p.is_dir())
    if not any((p / ".git").exists() for p in (existing, *existing.parents)):
        return
    top = _git(existing, "rev-parse", "--show-toplevel")
    if top.returncode != 0:
        detail = f"git cannot tell whether it is ignored ({_first_line(top.stderr)})"
        raise InsideRepository(absolute, str(existing), detail)
    repository = top.stdout.strip()
    if absolute == Path(repository):
        raise InsideRepository(absolute, repository, "is its top directory")
    ignored = _git(Path(repository), "check-ignore", "-q", "--", f"{absolute}/")
    if ignored.returncode == 1:
        raise InsideRepository(absolute, repository)
    if ignored.returncode != 0:
        detail = f"git cannot tell whether it is ignored ({_first_line(ignored.stderr)})"
        raise InsideRepository(absolute, repository, detail)


def _git(where: Path, *args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            ["git", "-C", str(where), *args], capture_output=True, text=True, check=False,
            stdin=subprocess.DEVNULL, timeout=30,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(args, 128, "", f"git: {exc}")


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or ["no message"])[0]


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, mode 0600 (creating its directory, 0700)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(path, text.encode("utf-8"), mode=0o600)


def _check_process(pid: int, config: Path) -> None:
    """Refuse to signal a process that is gone, is not nats-server, or reads another config."""
    proc = Path("/proc") / str(pid)
    if not Path("/proc/self").is_dir():
        return  # no procfs (e.g. macOS): trust the caller
    try:
        stat = (proc / "stat").read_text()
        args = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
    except FileNotFoundError as exc:
        raise ServerGone(pid) from exc
    except OSError:
        return
    name, state = stat[stat.find("(") + 1 : stat.rfind(")")], stat[stat.rfind(")") + 2 :][:1]
    if state in ("Z", "X"):
        raise ServerGone(pid)
    if "nats-server" not in name:
        raise DeploymentError(f"process {pid} is {name!r}, not nats-server: not signalled")
    given = _config_arg(args)
    if given is None:
        return
    if os.path.realpath(proc / "cwd" / given) != os.path.realpath(config):
        raise DeploymentError(f"nats-server {pid} reads {given}, not {config}: not signalled")


def _config_arg(args: list[str]) -> str | None:
    for index, arg in enumerate(args[:-1]):
        if arg in ("-c", "--config", "-config"):
            return args[index + 1]
        if arg.startswith(("-c=", "--config=", "-config=")):
            return arg.partition("=")[2]
    return None
