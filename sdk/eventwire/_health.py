"""Health scores of a bus, an agent, and the agents of a deployment (``eventwire health``).

**The formula.** Each signal ``i`` has a value ``v``, a threshold ``t`` and a limit ``l``
(:class:`HealthSettings`); its penalty is ``p = clamp((v - t) / (l - t), 0, 1)``: nothing up
to the threshold, all of it at the limit, linear between. The score is
``max(0, 1 - sum(w_i * p_i))`` with the signal's weight ``w_i``; a FAILED resource or a
closed connection scores 0 at once. Status: ``ok`` at a score >= 0.8, ``degraded`` >= 0.5,
else ``failing``. ``reasons`` lists the signals with a penalty (largest loss first).

The signals: ``consumer_lag`` (events stored and not yet delivered, the consumers'
``num_pending`` summed), ``ack_pending`` (delivered and not yet acknowledged,
``num_ack_pending``), ``error_rate`` (handler failures per handled event) and
``refusal_rate`` (refused per delivered event), both over the last ``window`` seconds of
the subscriptions' stats (at least ``min_events`` events, else not judged),
``heartbeat_age`` (time since the agent's last registry heartbeat landed, in heartbeat
intervals of ``registry_ttl / 3``: 2 intervals is the threshold, 6 the limit),
``open_breakers`` (circuits of direct calls that are open), ``connection`` (reconnecting)
and ``consumer_info`` (the server did not answer about a consumer).

``live``: the process should keep running (not FAILED or CLOSED, connection not closed for
good). ``ready``: it should get work (RUNNING, connected, not ``failing``).
"""

from __future__ import annotations

import time
import weakref
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import nats.errors
import nats.js.errors

from ._breaker import CircuitState
from ._errors import ClosedResource, InvalidArgument
from ._metrics import METRICS
from ._resource import ResourceState

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from nats.js import JetStreamContext

    from ._agent import Agent
    from ._bus import Bus
    from ._consumer import Subscription
    from ._registry import AgentInfo

Status = Literal["ok", "degraded", "failing"]
OK_SCORE = 0.8
DEGRADED_SCORE = 0.5
_INFO_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class Reason:
    """One signal that lowered the score: its ``value`` against its ``threshold``, the
    ``weight`` it carries (``weight * penalty`` is what it took from the score)."""

    name: str
    value: float
    threshold: float
    weight: float
    detail: str
    penalty: float = 1.0


@dataclass(frozen=True, slots=True)
class Health:
    """A score from 0 (failing) to 1 (healthy), its status, why, and the probes' answers."""

    score: float
    status: Status
    reasons: list[Reason]
    live: bool
    ready: bool
    subject: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the ``/healthz`` body and ``eventwire health --json``)."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class HealthSignal:
    """How one signal is judged: threshold, limit (full penalty) and weight."""

    threshold: float
    limit: float
    weight: float

    def __post_init__(self) -> None:
        ok = 0 <= self.threshold < self.limit and 0 <= self.weight <= 1
        if not ok:
            raise InvalidArgument(
                f"needs 0 <= threshold < limit and a weight in [0, 1], got {self!r}",
                field="signal",
            )

    def penalty(self, value: float) -> float:
        return min(1.0, max(0.0, (value - self.threshold) / (self.limit - self.threshold)))


@dataclass(frozen=True, slots=True)
class HealthSettings:
    """The signals' thresholds, limits and weights; rates over ``window`` seconds."""

    consumer_lag: HealthSignal = HealthSignal(1000, 10_000, 0.3)
    ack_pending: HealthSignal = HealthSignal(100, 1000, 0.1)
    error_rate: HealthSignal = HealthSignal(0.05, 0.5, 0.4)
    refusal_rate: HealthSignal = HealthSignal(0.01, 0.2, 0.2)
    # in heartbeat intervals (registry_ttl / 3)
    heartbeat_age: HealthSignal = HealthSignal(2.0, 6.0, 0.5)
    open_breakers: HealthSignal = HealthSignal(0, 3, 0.2)
    connection: HealthSignal = HealthSignal(0, 1, 0.6)
    consumer_info: HealthSignal = HealthSignal(0, 1, 0.3)
    window: float = 60.0
    min_events: int = 10

    def __post_init__(self) -> None:
        window, least = self.window, self.min_events
        if isinstance(window, bool) or not isinstance(window, int | float) or not window > 0:
            raise InvalidArgument(f"must be a positive number, got {window!r}", field="window")
        if isinstance(least, bool) or not isinstance(least, int) or least < 1:
            raise InvalidArgument(
                f"must be an int of at least 1, got {least!r}", field="min_events"
            )


DEFAULT_SETTINGS = HealthSettings()


def status_of(score: float) -> Status:
    if score >= OK_SCORE:
        return "ok"
    return "degraded" if score >= DEGRADED_SCORE else "failing"


@dataclass
class Findings:
    """The signals gathered for one health answer, then scored."""

    settings: HealthSettings
    reasons: list[Reason] = field(default_factory=list)
    fatal: list[Reason] = field(default_factory=list)

    def judge(self, name: str, value: float, detail: str) -> None:
        signal: HealthSignal = getattr(self.settings, name)
        penalty = signal.penalty(value)
        if penalty > 0:
            self.reasons.append(
                Reason(name, value, signal.threshold, signal.weight, detail, round(penalty, 4))
            )

    def fail(self, name: str, detail: str) -> None:
        self.fatal.append(Reason(name, 1.0, 0.0, 1.0, detail))

    def health(self, subject: str, *, live: bool, running: bool, connected: bool) -> Health:
        lost = sum(r.weight * r.penalty for r in self.reasons)
        score = 0.0 if self.fatal else round(max(0.0, 1.0 - lost), 4)
        reasons = self.fatal + sorted(self.reasons, key=lambda r: -r.weight * r.penalty)
        status = status_of(score)
        if METRICS is not None:
            METRICS.health_score.labels(subject.split(" (", maxsplit=1)[0]).set(score)
        ready = live and running and connected and status != "failing"
        return Health(score, status, reasons, live, ready, subject)


def combine_health(healths: Sequence[Health], subject: str) -> Health:
    """One answer for several (the agents one process serves): the lowest score and its
    status, every reason with the subject it is about, live and ready only when all are."""
    if not healths:
        raise InvalidArgument("needs at least one health to combine", field="healths")
    if len(healths) == 1:
        return healths[0]
    score = min(health.score for health in healths)
    reasons = [
        replace(reason, detail=f"{health.subject}: {reason.detail}")
        for health in sorted(healths, key=lambda health: health.score)
        for reason in health.reasons
    ]
    live = all(health.live for health in healths)
    ready = all(health.ready for health in healths)
    return Health(score, status_of(score), reasons, live, ready, subject)


@dataclass(frozen=True, slots=True)
class _Sample:
    at: float
    delivered: int
    rejected: int
    handled: int
    failed: int


class RateWindow:
    """Error and refusal rates over the last ``window`` seconds, from cumulative stats
    sampled at each health call (the first call: since the subscriptions started)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._samples: deque[_Sample] = deque()

    def rates(
        self, subscriptions: Iterable[Subscription], window: float
    ) -> tuple[_Sample, _Sample]:
        """The newest sample and the baseline: the newest one at least ``window`` old,
        else the oldest kept (zero counts on the first call)."""
        now = self._clock()
        subs = list(subscriptions)
        current = _Sample(
            now,
            sum(s.stats.delivered for s in subs),
            sum(s.stats.rejected for s in subs),
            sum(s.stats.handled for s in subs),
            sum(s.stats.failed for s in subs),
        )
        if self._samples and current.delivered < self._samples[-1].delivered:
            self._samples.clear()  # new subscriptions (the agent serves again)
        if not self._samples:
            self._samples.append(_Sample(now, 0, 0, 0, 0))
        while len(self._samples) > 1 and self._samples[1].at <= now - window:
            self._samples.popleft()
        baseline = self._samples[0]
        self._samples.append(current)
        return current, baseline


def judge_rates(findings: Findings, now: _Sample, then: _Sample) -> None:
    delivered = now.delivered - then.delivered
    if delivered < findings.settings.min_events:
        return
    refused = now.rejected - then.rejected
    findings.judge(
        "refusal_rate", refused / delivered, f"{refused} of {delivered} deliveries refused"
    )
    failed, handled = now.failed - then.failed, now.handled - then.handled
    runs = failed + handled
    if runs >= findings.settings.min_events:
        findings.judge("error_rate", failed / runs, f"{failed} of {runs} handler runs failed")


async def judge_consumers(
    findings: Findings, js: JetStreamContext, stream: str, durables: Sequence[str]
) -> None:
    """Sum the consumers' pending and ack-pending counts (and export them as gauges)."""
    pending = ack_pending = 0
    for durable in durables:
        try:
            info = await js.consumer_info(stream, durable, timeout=_INFO_TIMEOUT)
        except (nats.errors.Error, TimeoutError) as exc:
            findings.judge("consumer_info", 1.0, f"no info on consumer {durable}: {exc!r}")
            continue
        pending += info.num_pending or 0
        ack_pending += info.num_ack_pending or 0
        if METRICS is not None:
            METRICS.consumer_pending.labels(durable).set(info.num_pending or 0)
            METRICS.consumer_ack_pending.labels(durable).set(info.num_ack_pending or 0)
    findings.judge("consumer_lag", pending, f"{pending} events not yet delivered")
    findings.judge("ack_pending", ack_pending, f"{ack_pending} deliveries not yet acknowledged")


def judge_breakers(findings: Findings, bus: Bus) -> None:
    statuses = bus.breakers.statuses()
    opened = [s.target for s in statuses if s.state is CircuitState.OPEN]
    if METRICS is not None:
        for status in statuses:
            METRICS.breaker_open.labels(status.target).set(status.target in opened)
    findings.judge("open_breakers", len(opened), "open circuits: " + (", ".join(opened) or "-"))


def _connection(findings: Findings, bus: Bus) -> tuple[bool, bool]:
    """(live, connected) of the bus's connection; a closed one is fatal."""
    try:
        nc = bus.connection  # a connection closed under the bus fails it here
    except ClosedResource as exc:
        findings.fail("connection", str(exc))
        return False, False
    if nc.is_closed:
        findings.fail("connection", "the connection is closed")
        return False, False
    if not nc.is_connected:
        findings.judge("connection", 1.0, "reconnecting")
        return True, False
    return True, True


def _resource(findings: Findings, what: str, state: ResourceState, error: object) -> bool:
    """Whether ``state`` is live; FAILED is fatal, a stopped resource is not live."""
    if state is ResourceState.FAILED:
        findings.fail("state", f"{what} failed: {error!r}")
        return False
    if state is not ResourceState.RUNNING:
        findings.fail("state", f"{what} is {state}")
    return state in (ResourceState.NEW, ResourceState.OPENING, ResourceState.RUNNING)


_WINDOWS: weakref.WeakKeyDictionary[object, RateWindow] = weakref.WeakKeyDictionary()


def _window(owner: object) -> RateWindow:
    """The rate window of a bus or agent (kept as long as it is)."""
    window = _WINDOWS.get(owner)
    if window is None:
        window = _WINDOWS[owner] = RateWindow()
    return window


async def bus_health(bus: Bus, settings: HealthSettings | None = None) -> Health:
    """The bus's health: its state, connection, breakers and all its subscriptions."""
    findings = Findings(settings or DEFAULT_SETTINGS)
    subject = f"bus {bus.tenant}/{bus.root}"
    live = _resource(findings, subject, bus.state, bus.error)
    if bus.state is not ResourceState.RUNNING:
        return findings.health(subject, live=live, running=False, connected=False)
    live, connected = _connection(findings, bus)
    subs = [s for s in bus._subscriptions if not s.closed]
    await _judge_subscriptions(findings, bus, subs, _window(bus), connected=connected)
    judge_breakers(findings, bus)
    return findings.health(subject, live=live, running=True, connected=connected)


async def _judge_subscriptions(
    findings: Findings,
    bus: Bus,
    subs: Sequence[Subscription],
    window: RateWindow,
    *,
    connected: bool,
) -> None:
    for sub in subs:
        if sub.state is ResourceState.FAILED:
            findings.fail("subscription", f"{sub.durable} failed: {sub.error!r}")
    judge_rates(findings, *window.rates(subs, findings.settings.window))
    if connected:
        await judge_consumers(findings, bus.jetstream, bus.stream, [s.durable for s in subs])


async def agent_health(
    agent: Agent, subscriptions: Sequence[Subscription], settings: HealthSettings | None = None
) -> Health:
    """An agent's health: its state, heartbeat, subscriptions, and its bus's connection
    and breakers."""
    findings = Findings(settings or DEFAULT_SETTINGS)
    subject = f"agent {agent.name} ({agent.instance})"
    live = _resource(findings, f"agent {agent.name!r}", agent.state, agent.error)
    bus = agent._bus
    if agent.state is not ResourceState.RUNNING or bus is None:
        return findings.health(subject, live=live, running=False, connected=False)
    bus_live, connected = _connection(findings, bus)
    _judge_beat(findings, agent.last_beat, bus.registry_ttl / 3)
    subs = [s for s in subscriptions if not s.closed]
    await _judge_subscriptions(findings, bus, subs, _window(agent), connected=connected)
    judge_breakers(findings, bus)
    return findings.health(subject, live=live and bus_live, running=True, connected=connected)


def _judge_beat(findings: Findings, beat: float | None, interval: float) -> None:
    age = 0.0 if beat is None else max(0.0, time.time() - beat)
    detail = f"last registry heartbeat {age:.1f} s ago (every {interval:g} s)"
    findings.judge("heartbeat_age", age / interval, detail)


def _agent_durables(name: str, durables: Iterable[str]) -> list[str]:
    """The consumers an agent named ``name`` owns: ``<name>-<12 hex digits>``."""
    prefix = f"{name}-"
    return [
        d
        for d in durables
        if d.startswith(prefix)
        and len(d) == len(prefix) + 12
        and all(c in "0123456789abcdef" for c in d[len(prefix) :])
    ]


async def agents_health(
    bus: Bus, *, agent: str | None = None, settings: HealthSettings = DEFAULT_SETTINGS
) -> list[Health]:
    """The health of every live agent instance in the registry (or those named ``agent``),
    computed from outside: its signed heartbeat (age, load, open circuits) and its
    consumers' info. Error rates are not known from outside (the agent's own
    :meth:`Agent.health` has them)."""
    found = await bus.agents()
    if METRICS is not None:
        METRICS.registry_size.set(len(found))
    infos = [info for info in found if agent is None or info.name == agent]
    durables = [c.name for c in await bus.jetstream.consumers_info(bus.stream)]
    return [await _entry_health(bus, info, durables, settings) for info in infos]


async def _entry_health(
    bus: Bus, info: AgentInfo, durables: Sequence[str], settings: HealthSettings
) -> Health:
    findings = Findings(settings)
    _judge_beat(findings, info.last_seen.timestamp(), bus.registry_ttl / 3)
    opened = info.open_circuits
    findings.judge("open_breakers", len(opened), "open circuits: " + (", ".join(opened) or "-"))
    owned = _agent_durables(info.name, durables)
    await judge_consumers(findings, bus.jetstream, bus.stream, owned)
    subject = f"agent {info.name} ({info.instance})"
    return findings.health(subject, live=not info.suspected, running=True, connected=True)
