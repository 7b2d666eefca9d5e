"""Serving agents until a signal: :func:`serve_agents`, :func:`run_agents` (``eventwire run``)
and :meth:`Agent.run <eventwire.Agent.run>`.

While agents serve, SIGINT and SIGTERM are handled alike (in the main thread; the previous
handlers are put back afterwards). The first asks every agent to stop: each finishes its
in-flight handlers (those still running ``drain_timeout`` seconds later are cancelled; their
events are redelivered), withdraws from the registry and publishes ``agent.lifecycle.stopped``,
and the call returns normally: no ``KeyboardInterrupt``, no traceback. A second signal ends
the process at once with exit code 128 + its number (130 for SIGINT, 143 for SIGTERM), after
killing the embedded nats-server of the buses involved (and removing the temporary store of
the one :func:`run_agents` started).

Logging: unless the application configured logging, records go to stderr (INFO and up) while
agents serve: handler failures with their traceback, refused events with their reason,
starts and stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NoReturn

from ._agent import Agent
from ._bus import connect
from ._errors import InvalidArgument
from ._health import Health, combine_health
from ._healthz import HOST as HEALTH_HOST
from ._healthz import serve_health
from ._metrics import serve_metrics
from ._subjects import DEFAULT_ROOT

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
    from types import FrameType

    from eventwire_security import Identity, Keyring

    from ._bus import Bus
    from ._healthz import HealthServer
    from ._server import EmbeddedServer

    Agents = Agent | Sequence[Agent]
    AgentSource = Agents | Callable[[], Agents | Awaitable[Agents]]

log = logging.getLogger("eventwire.runner")
DRAIN_TIMEOUT = 30.0
SIGNALS = (signal.SIGINT, signal.SIGTERM)
LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_KILL_WAIT = 1.0


async def serve_agents(
    bus: Bus, agents: Agents, *, drain_timeout: float = DRAIN_TIMEOUT, signals: bool = True
) -> None:
    """Serve ``agents`` on ``bus`` until a signal (see the module doc), until one of them
    stops (:meth:`Agent.stop`) or fails; then stop them all, in parallel.

    Raises what failed an agent (:class:`ResourceFailed`, or the error that kept it from
    starting), once every agent stopped. ``signals=False`` leaves signal handling alone.
    """
    run = _Run(_drain(drain_timeout))
    run.agents = _checked(agents)
    with _stderr_logging("eventwire", None), run.handling_signals(signals, remove_stores=False):
        await run.serve(bus)


async def run_agents(  # noqa: PLR0913 - the public entry point: the agents, then keywords
    agents: AgentSource,
    url: str | None = None,
    *,
    identities: Iterable[Identity] = (),
    keyring: Keyring | None = None,
    tenant: str | None = None,
    root: str = DEFAULT_ROOT,
    drain_timeout: float = DRAIN_TIMEOUT,
    log_level: int | str | None = None,
    health_port: int | None = None,
    health_host: str = HEALTH_HOST,
    metrics_port: int | None = None,
) -> None:
    """Connect to ``url`` (an embedded server when None), serve the agents as
    :func:`serve_agents` does, then close the bus (and stop the embedded server).

    ``agents`` is an :class:`Agent`, a sequence of them, or a callable returning either
    (awaited if it returns an awaitable), called once signals are handled. Each of
    ``identities`` (e.g. read from key files) becomes the identity of the agent of its name.
    The bus trusts ``keyring`` and the agents' own keys; its tenant is the agents' one
    (``tenant``, if given, must be it). ``log_level`` is the level of the stderr log (if the
    application configured logging: of the ``eventwire`` loggers).

    For orchestrators, ``health_port`` serves ``/healthz``, ``/readyz`` and ``/health`` of
    all the agents at once (:func:`~eventwire.serve_health`, on ``health_host``; 0: a free
    port) from before they start until they stopped, and ``metrics_port`` the Prometheus
    metrics (:func:`~eventwire.serve_metrics`); each logs its URL.
    """
    run = _Run(_drain(drain_timeout))
    level = _level(log_level)
    health = None if health_port is None else serve_health(run, health_port, host=health_host)
    with _stderr_logging("", level), run.handling_signals(True, remove_stores=True):
        run.agents = await _resolve(agents)
        _use_identities(run.agents, identities)
        bus = connect(url, tenant=_tenant_of(run.agents, tenant), keyring=keyring, root=root)
        run.buses.append(bus)
        async with _endpoints(health, metrics_port), bus:
            _log_server(bus)
            await run.serve(bus)
        log.info("stopped")


@contextlib.asynccontextmanager
async def _endpoints(health: HealthServer | None, metrics_port: int | None) -> AsyncIterator[None]:
    """The run's health and metrics endpoints, while it lasts."""
    async with contextlib.AsyncExitStack() as stack:
        if health is not None:
            await stack.enter_async_context(health)
            log.info("health on %s (/healthz, /readyz, /health)", health.url)
        if metrics_port is not None:
            metrics = stack.enter_context(serve_metrics(metrics_port))
            log.info("metrics on %s", metrics.url)
        yield


@dataclass(eq=False)
class _Run:
    """One run: its agents, whether it is stopping, the buses a second signal must clean."""

    drain_timeout: float
    agents: list[Agent] = field(default_factory=list)
    buses: list[Bus] = field(default_factory=list)
    stopping: bool = False

    async def health(self) -> Health:
        """The agents' health as one answer (see :func:`combine_health`)."""
        if not self.agents:  # not resolved yet: alive, not ready
            return Health(0.0, "failing", [], live=True, ready=False, subject="run (starting)")
        names = ", ".join(agent.name for agent in self.agents)
        healths = [await agent.health() for agent in self.agents]
        return combine_health(healths, f"run ({names})")

    def stop(self, why: str) -> None:
        """Ask every agent to stop (logged once; later calls only repeat the ask)."""
        if not self.stopping:
            self.stopping = True
            log.info("%s: stopping", why)
        for agent in self.agents:
            agent.stop()

    def on_signal(self, signum: int) -> None:
        self.stop(
            f"{signal.Signals(signum).name} (in-flight handlers get {self.drain_timeout:g}s "
            "to finish; a second SIGINT or SIGTERM exits at once)"
        )

    @contextlib.contextmanager
    def handling_signals(self, enabled: bool, *, remove_stores: bool) -> Iterator[None]:
        if not enabled:
            yield
            return
        listener = _Listener(asyncio.get_running_loop(), self.on_signal, self.buses, remove_stores)
        with _SIGNALS.listening(listener):
            yield

    async def serve(self, bus: Bus) -> None:
        if bus not in self.buses:
            self.buses.append(bus)
        errors: list[Exception] = []
        async with asyncio.TaskGroup() as group:
            for agent in self.agents:
                group.create_task(self._serve(agent, bus, errors), name=f"eventwire-run:{agent}")
        if errors:
            for other in errors[1:]:
                errors[0].add_note(f"another agent failed too: {other!r}")
            raise errors[0]

    async def _serve(self, agent: Agent, bus: Bus, errors: list[Exception]) -> None:
        if self.stopping:
            return
        try:
            async with agent.serve(bus, drain_timeout=self.drain_timeout):
                source, kid = agent.identity.principal.source, agent.identity.kid
                log.info("agent %s serving as %s (kid %s)", agent.name, source, kid)
                if self.stopping:
                    agent.stop()
                await agent.until_stopped()
                self.stop(f"agent {agent.name} {'failed' if agent.error else 'stopped'}")
        except Exception as exc:
            errors.append(exc)
            log.error("agent %s failed: %s", agent.name, exc)
            self.stop(f"agent {agent.name} failed")
        else:
            log.info("agent %s stopped", agent.name)


@dataclass(eq=False)
class _Listener:
    loop: asyncio.AbstractEventLoop
    on_signal: Callable[[int], None]
    buses: list[Bus]
    remove_stores: bool


class _Signals:
    """The process's SIGINT and SIGTERM handlers while anyone listens (see the module doc);
    several runs at once (two ``agent.run`` in one program) share them."""

    def __init__(self) -> None:
        self._listeners: list[_Listener] = []
        self._previous: dict[signal.Signals, object] = {}
        self._received = False

    @contextlib.contextmanager
    def listening(self, listener: _Listener) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            log.debug("not the main thread: SIGINT and SIGTERM are left alone")
            yield
            return
        if not self._listeners:
            self._install()
        self._listeners.append(listener)
        try:
            yield
        finally:
            self._listeners.remove(listener)
            if not self._listeners:
                self._restore()

    def _install(self) -> None:
        self._received = False
        for sig in SIGNALS:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)

    def _restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)  # type: ignore[arg-type]  # a handler signal.getsignal gave
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._received:
            _exit_now(signum, list(self._listeners))
        self._received = True
        for listener in self._listeners:
            with contextlib.suppress(RuntimeError):  # its loop closed meanwhile
                listener.loop.call_soon_threadsafe(listener.on_signal, signum)


_SIGNALS = _Signals()


def _exit_now(signum: int, listeners: list[_Listener]) -> NoReturn:
    """The second signal: kill the embedded servers (their stores go if temporary) and
    leave with 128 + ``signum``; nothing else runs (no handler finishes, nothing drains)."""
    log.warning("second %s: exiting at once", signal.Signals(signum).name)
    for listener in listeners:
        for bus in listener.buses:
            if bus.server is not None:
                _kill(bus.server, remove_store=listener.remove_stores)
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    os._exit(128 + signum)


def _kill(server: EmbeddedServer, *, remove_store: bool) -> None:
    pid = server.pid
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if not remove_store:
        return
    deadline = time.monotonic() + _KILL_WAIT
    with contextlib.suppress(ProcessLookupError):
        while time.monotonic() < deadline:  # dead (or a zombie: dead too) within moments
            os.kill(pid, 0)
            time.sleep(0.01)
    shutil.rmtree(server.store_dir, ignore_errors=True)


@contextlib.contextmanager
def _stderr_logging(name: str, level: int | None) -> Iterator[None]:
    """While it runs: unless logging is configured, logger ``name`` (``""``: the root) writes
    to stderr at ``level`` (default INFO); if it is, ``level`` applies to ``eventwire``."""
    target = logging.getLogger(name or None)
    if _logging_configured():
        target = logging.getLogger("eventwire")
        handler = None
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        target.addHandler(handler)
        level = logging.INFO if level is None else level
    previous = target.level
    if level is not None:
        target.setLevel(level)
    try:
        yield
    finally:
        target.setLevel(previous)
        if handler is not None:
            target.removeHandler(handler)


def _logging_configured() -> bool:
    """Whether the application set up logging: a handler on the root logger, or on the
    ``eventwire`` logger besides the library's NullHandler."""
    ours = logging.getLogger("eventwire").handlers
    if logging.getLogger().handlers:
        return True
    return any(not isinstance(handler, logging.NullHandler) for handler in ours)


def _level(value: int | str | None) -> int | None:
    if value is None or isinstance(value, int):
        return value
    level = logging.getLevelName(value.upper())
    if not isinstance(level, int):
        raise InvalidArgument(f"{value!r} is not a logging level", field="log_level")
    return level


def _drain(seconds: float) -> float:
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0:
        raise InvalidArgument("must be a finite number of seconds >= 0", field="drain_timeout")
    return float(seconds)


async def _resolve(source: AgentSource) -> list[Agent]:
    """The agents of ``source``: itself, or what calling it returns (awaited if need be)."""
    value: object = source
    if callable(value) and not isinstance(value, Agent):
        value = value()
        if inspect.isawaitable(value):
            value = await value
    return _checked(value)


def _checked(value: object) -> list[Agent]:
    found = [value] if isinstance(value, Agent) else value
    if isinstance(found, (str, bytes)) or not isinstance(found, Iterable):
        found = [found]
    agents = list(found)
    strays = [item for item in agents if not isinstance(item, Agent)]
    if not agents or strays:
        what = "nothing" if not agents else f"{type(strays[0]).__name__} {strays[0]!r}"[:120]
        raise InvalidArgument(
            f"expected an Agent, a sequence of Agents, or a callable returning them; got {what}",
            field="agents",
        )
    names = [agent.name for agent in agents]
    if twice := sorted({name for name in names if names.count(name) > 1}):
        raise InvalidArgument(f"two agents named {twice[0]!r}", field="agents")
    return agents


def _use_identities(agents: list[Agent], identities: Iterable[Identity]) -> None:
    by_name = {agent.name: agent for agent in agents}
    given: set[str] = set()
    for identity in identities:
        principal = identity.principal
        agent = by_name.get(principal.agent)
        if agent is None:
            raise InvalidArgument(
                f"key {identity.kid} is {principal}'s, and no agent here is named "
                f"{principal.agent!r} (agents: {', '.join(sorted(by_name))})",
                field="identities",
            )
        if principal.agent in given:
            raise InvalidArgument(f"two keys for agent {principal.agent!r}", field="identities")
        given.add(principal.agent)
        agent.use_identity(identity)


def _tenant_of(agents: list[Agent], tenant: str | None) -> str:
    tenants = sorted({agent.tenant for agent in agents})
    if len(tenants) > 1:
        raise InvalidArgument(
            f"the agents are of several tenants ({', '.join(tenants)}): one run serves one",
            field="tenant",
        )
    if tenant is not None and tenant != tenants[0]:
        raise InvalidArgument(
            f"the agents are of tenant {tenants[0]!r}, not {tenant!r} (their keys say so)",
            field="tenant",
        )
    return tenants[0]


def _log_server(bus: Bus) -> None:
    server = bus.server
    if server is None:
        log.info("connected to %s", _shown(bus.url))
    else:
        log.info(
            "embedded nats-server pid %s on %s, store %s (removed at exit)",
            server.pid, server.url, server.store_dir,
        )  # fmt: skip


def _shown(url: str) -> str:
    from ._connection import redact_url

    return redact_url(url)
