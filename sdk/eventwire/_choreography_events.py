"""The events a choreography tracker publishes, and reading them back from the stream.

``system.coordination.stuck`` (:class:`FlowStuck`): a step of a run of a flow is overdue.
``system.coordination.recovered`` (:class:`FlowRecovered`): a step reported stuck was
reached after all. Each is published once per run (correlation) and step: its
``Nats-Msg-Id`` is derived from the flow, a hash of the correlation id and the step
(:func:`report_msg_id`), so reports of the same thing by two trackers, or by one tracker
before and after a restart, are stored once (the events stream's duplicate window is a
day by default; the tracker's signed KV marks cover the time after it). Whoever
publishes an id first wins (SECURITY.md): :func:`is_stored_report` tells a tracker whether
the message its report was dropped for is such a report, by a trusted tracker.

:func:`read_stuck` reads them back, verified like every event, newest state per run and
step: a :class:`StuckStep` each, with ``recovered_at`` set once it was reached.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, ClassVar, TypeVar

import nats.js.errors
from nats.js.api import ConsumerConfig, DeliverPolicy
from pydantic import Field

from eventwire_security import EventwireError
from eventwire_security._layout import to_wire

from ._choreography_state import Action, correlation_key
from ._codec import received
from ._errors import mapped_nats_errors
from ._event import Event
from ._kinds import TYPE_PREFIX, EventData, Token

if TYPE_CHECKING:
    from collections.abc import Collection

    from nats.js import JetStreamContext

    from ._bus import Bus
    from ._choreography_flow import Choreography

__all__ = [
    "RECOVERED_SUBJECT",
    "STUCK_SUBJECT",
    "FlowRecovered",
    "FlowStuck",
    "StuckStep",
    "is_stored_report",
    "read_stuck",
    "report_msg_id",
]

STUCK_SUBJECT = "system.coordination.stuck"
RECOVERED_SUBJECT = "system.coordination.recovered"
_READ_TIMEOUT = 5.0
_K = TypeVar("_K", bound=EventData)
_Seconds = Annotated[float, Field(strict=False, allow_inf_nan=False)]
_Text = Annotated[str, Field(min_length=1, max_length=256)]


class FlowStuck(EventData):
    """A step is overdue: in run ``correlation`` of ``flow``, step ``step_index`` (subject
    pattern ``step``) did not arrive by ``deadline`` (seconds since the epoch), ``within``
    seconds after the furthest step seen, ``last_step`` (signed at ``last_seen``);
    ``overdue_by`` seconds late when reported."""

    event_type: ClassVar[str] = TYPE_PREFIX + "coordination.stuck"
    flow: Token
    correlation: _Text
    step: _Text
    step_index: int = Field(ge=0)
    last_step: _Text
    last_step_index: int = Field(ge=0)
    last_seen: _Seconds
    deadline: _Seconds
    overdue_by: _Seconds

    def subject(self) -> str:
        return STUCK_SUBJECT


class FlowRecovered(EventData):
    """A step reported stuck arrived after all (or the run moved past it): ``arrived`` (when
    its event was signed), ``late_by`` seconds after ``deadline``."""

    event_type: ClassVar[str] = TYPE_PREFIX + "coordination.recovered"
    flow: Token
    correlation: _Text
    step: _Text
    step_index: int = Field(ge=0)
    deadline: _Seconds
    arrived: _Seconds
    late_by: _Seconds

    def subject(self) -> str:
        return RECOVERED_SUBJECT


def report_of(flow: Choreography, action: Action) -> FlowStuck | FlowRecovered:
    """The event that publishes ``action`` about a run of ``flow``."""
    step = flow.steps[action.step].pattern
    if action.kind == "recovered":
        return FlowRecovered(
            flow=flow.name, correlation=action.correlation, step=step,
            step_index=action.step, deadline=action.deadline, arrived=action.at,
            late_by=max(0.0, action.at - action.deadline),
        )  # fmt: skip
    return FlowStuck(
        flow=flow.name, correlation=action.correlation, step=step, step_index=action.step,
        last_step=flow.steps[action.last_step].pattern, last_step_index=action.last_step,
        last_seen=action.last_at, deadline=action.deadline,
        overdue_by=max(0.0, action.at - action.deadline),
    )  # fmt: skip


def report_msg_id(root: str, action: Action) -> str:
    """The ``Nats-Msg-Id`` every tracker gives its report of ``action``."""
    return f"{root}.{action.kind}.{correlation_key(action.flow, action.correlation)}.{action.step}"


@dataclass(frozen=True, slots=True)
class StuckStep:
    """A step reported stuck (from a verified ``system.coordination.stuck`` event): the
    report's fields, when it was signed (``reported_at``), by whom (``signer``), and when
    the step was reached after all (``recovered_at``, ``None`` while it is still missing)."""

    flow: str
    correlation: str
    step: str
    step_index: int
    last_step: str
    last_step_index: int
    last_seen: float
    deadline: float
    overdue_by: float
    reported_at: float
    signer: str
    event_id: str
    recovered_at: float | None = None

    @property
    def recovered(self) -> bool:
        return self.recovered_at is not None


async def read_stuck(
    bus: Bus,
    *,
    flow: str | None = None,
    include_recovered: bool = True,
    signers: Collection[str] | None = None,
) -> list[StuckStep]:
    """Every step reported stuck on ``bus`` (of ``flow`` only, if given), oldest report
    first, one per run and step; without ``include_recovered`` only those still missing.
    With ``signers`` (sources, ``tenant/agent``) only reports they signed count. Events
    that do not verify, or do not parse as reports, are skipped (and counted by the bus
    as refused)."""
    found: dict[tuple[str, str, int], StuckStep] = {}
    for event in await _verified_events(bus, STUCK_SUBJECT):
        stuck = _parsed(event, FlowStuck)
        if signers is not None and event.source not in signers:
            continue
        if stuck is not None and (flow is None or stuck.flow == flow):
            entry = StuckStep(
                stuck.flow, stuck.correlation, stuck.step, stuck.step_index, stuck.last_step,
                stuck.last_step_index,
                stuck.last_seen, stuck.deadline, stuck.overdue_by, event.time.timestamp(),
                event.source, event.id,
            )  # fmt: skip
            found.setdefault((stuck.flow, stuck.correlation, stuck.step_index), entry)
    for event in await _verified_events(bus, RECOVERED_SUBJECT) if found else []:
        back = _parsed(event, FlowRecovered)
        if signers is not None and event.source not in signers:
            continue
        key = None if back is None else (back.flow, back.correlation, back.step_index)
        if back is not None and key in found and found[key].recovered_at is None:
            entry = found[key]
            found[key] = dataclasses.replace(entry, recovered_at=back.arrived)
    return [entry for entry in found.values() if include_recovered or not entry.recovered]


async def is_stored_report(
    bus: Bus, seq: int, report: FlowStuck | FlowRecovered, signers: Collection[str]
) -> bool:
    """Whether the event at stream sequence ``seq`` is ``report`` (the same kind, flow,
    run and step), verified and signed by one of ``signers``: a duplicate publish of a
    report was dropped for it, and not for a message that took the id first."""
    js, codec = bus.jetstream, bus._running("check a stored report").codec
    try:
        with mapped_nats_errors(f"read stream sequence {seq}"):
            stored = await js.get_msg(bus.stream, seq)
    except EventwireError as exc:
        if isinstance(exc.__cause__, nats.js.errors.NotFoundError):
            return True  # gone (limits, purge): it cannot be checked, nor repeated
        raise
    stamp = stored.time.timestamp() if stored.time is not None else None
    result = codec.open(stored.data or b"", stored.headers, stored.subject or "", stamp)
    if not isinstance(result, Event) or result.source not in signers:
        return False
    found = _parsed(result, type(report))
    same = ("flow", "correlation", "step_index")
    return found is not None and all(getattr(found, n) == getattr(report, n) for n in same)


def _parsed(event: Event, kind: type[_K]) -> _K | None:
    try:
        return event.parse(kind)
    except EventwireError:
        return None


async def _verified_events(bus: Bus, logical: str) -> list[Event]:
    """The verified events stored on ``logical``, oldest first."""
    js, codec = bus.jetstream, bus._running("read coordination events").codec
    wire = to_wire(bus.root, logical)
    last = await _last_seq(js, bus.stream, wire)
    if not last:
        return []
    config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
    with mapped_nats_errors(f"read {wire}"):
        sub = await js.subscribe(wire, stream=bus.stream, ordered_consumer=True, config=config)
    events: list[Event] = []
    try:
        while True:
            with mapped_nats_errors(f"read {wire}"):
                message = await sub.next_msg(timeout=_READ_TIMEOUT)
            meta = message.metadata
            result = codec.open(*received(message))
            if isinstance(result, Event):
                events.append(result)
            else:
                codec.record(result)
            if meta.sequence.stream >= last:
                return events
    finally:
        with mapped_nats_errors(f"stop reading {wire}"):
            await sub.unsubscribe()


async def _last_seq(js: JetStreamContext, stream: str, wire: str) -> int:
    try:
        with mapped_nats_errors(f"read the last event of {wire}"):
            message = await js.get_last_msg(stream, wire)
    except EventwireError as exc:
        if isinstance(exc.__cause__, nats.js.errors.NotFoundError):
            return 0
        raise
    return int(message.seq or 0)
