"""A workflow's history: signed events on ``custom.es.workflow.<id>``, folded into a state.

Every transition is one event signed by the orchestrator, appended with JetStream's
``Nats-Expected-Last-Subject-Sequence`` (the stream sequence of the history's last event):
two orchestrators never advance one workflow at once; the loser gets :class:`HistoryMoved`
and reloads. Loading verifies every event (signature, tenant, root, subject, via the bus's
codec; see ``_aggregates``) and refuses one not signed by a trusted orchestrator with
:class:`UntrustedHistory`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self

import nats.js.errors

from eventwire_security import EventwireError
from eventwire_security._layout import to_wire

from ._aggregates import AggregateStore, bus_codec
from ._codec import Rejection
from ._errors import mapped_nats_errors
from ._kinds import CustomEvent
from ._workflow_defs import FINISHED, TYPE_PREFIX, UntrustedHistory, WorkflowNotFound

if TYPE_CHECKING:
    from collections.abc import Iterable

    from pydantic import JsonValue

    from eventwire_security import Identity

    from ._bus import Bus
    from ._event import Event

__all__ = ["History", "HistoryMoved", "HistoryStore", "StepRecord", "TimelineEntry"]

KIND = "workflow"
_WRONG_LAST_SEQUENCE = 10071


class HistoryMoved(BaseException):
    """Another orchestrator appended first: reload and re-evaluate. A BaseException so that
    a workflow function's ``except Exception`` cannot swallow it."""


@dataclass(slots=True)
class StepRecord:
    """One step as the history knows it."""

    op: int
    target: str
    action: str
    input: Any
    compensate: str | None
    status: str = "scheduled"  # completed, failed, compensated, compensation-failed
    result: Any = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """One history event for display: position, time, kind, signer (source and kid), data."""

    position: int
    time: str
    kind: str
    source: str
    kid: str
    data: Any


@dataclass(slots=True)
class WorkflowState:
    """The state folded from a history's events (an aggregate, see ``_aggregates``)."""

    name: str = ""
    input: Any = None
    status: str = "new"
    epoch: int = 0
    steps: dict[int, StepRecord] = field(default_factory=dict)
    done_order: list[int] = field(default_factory=list)
    timers: dict[int, tuple[float, bool]] = field(default_factory=dict)
    signals: list[tuple[str, Any, str]] = field(default_factory=list)
    consumed: dict[int, int | None] = field(default_factory=dict)
    cancel_requested: bool = False
    output: Any = None
    reason: str | None = None
    timeline: list[TimelineEntry] = field(default_factory=list)

    def apply(self, event: Event) -> None:
        kind = event.type.removeprefix(TYPE_PREFIX)
        entry = TimelineEntry(
            len(self.timeline) + 1, event.time.isoformat(), kind, event.source,
            event.signer_kid, event.data,
        )  # fmt: skip
        self.timeline.append(entry)
        self.fold(kind, event.data)

    def fold(self, kind: str, data: Any) -> None:
        """Apply one event's effect (``kind`` without the type prefix)."""
        handler = _FOLDS.get(kind)
        if handler is not None:
            handler(self, data)

    def snapshot(self) -> JsonValue:  # snapshots are not used for histories
        return None

    @classmethod
    def restore(cls, state: JsonValue) -> Self:
        return cls()

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def signal_names(self) -> list[str]:
        return [name for name, _, _ in self.signals]

    def has_command(self, command_id: str) -> bool:
        return any(cid == command_id for _, _, cid in self.signals)


def _started(s: WorkflowState, d: Any) -> None:
    s.name, s.input, s.status = d["workflow"], d["input"], "running"


def _scheduled(s: WorkflowState, d: Any) -> None:
    s.steps[d["op"]] = StepRecord(d["op"], d["target"], d["action"], d["input"], d["compensate"])


def _step_completed(s: WorkflowState, d: Any) -> None:
    record = s.steps[d["op"]]
    record.status, record.result = "completed", d["result"]
    s.done_order.append(d["op"])


def _step_failed(s: WorkflowState, d: Any) -> None:
    record = s.steps[d["op"]]
    record.status, record.error = "failed", f"{d['reason']}: {d['detail']}"


def _timer_set(s: WorkflowState, d: Any) -> None:
    s.timers[d["op"]] = (float(d["due"]), False)


def _timer_fired(s: WorkflowState, d: Any) -> None:
    s.timers[d["op"]] = (s.timers[d["op"]][0], True)


def _signal(s: WorkflowState, d: Any) -> None:
    s.signals.append((d["name"], d["data"], d["command"]))


def _consumed(s: WorkflowState, d: Any) -> None:
    s.consumed[d["op"]] = d["index"]


def _cancel(s: WorkflowState, d: Any) -> None:
    s.cancel_requested = True


def _compensating(s: WorkflowState, d: Any) -> None:
    s.status, s.reason = "compensating", d["reason"]


def _compensated_step(s: WorkflowState, d: Any) -> None:
    s.steps[d["op"]].status = "compensated"


def _compensation_failed(s: WorkflowState, d: Any) -> None:
    record = s.steps[d["op"]]
    record.status, record.error = "compensation-failed", d["reason"]


def _retried(s: WorkflowState, d: Any) -> None:
    s.epoch += 1
    s.status, s.reason, s.cancel_requested = "running", None, False
    for op, record in list(s.steps.items()):
        if record.status != "completed":
            del s.steps[op]
    s.done_order = [op for op in s.done_order if op in s.steps]


def _final(status: str) -> Any:
    def fold(s: WorkflowState, d: Any) -> None:
        s.status = status
        if status == "completed":
            s.output = d["output"]
        else:
            s.reason = d.get("reason", s.reason)

    return fold


_FOLDS: dict[str, Any] = {
    "started": _started,
    "step-scheduled": _scheduled,
    "step-completed": _step_completed,
    "step-failed": _step_failed,
    "timer-set": _timer_set,
    "timer-fired": _timer_fired,
    "signal-received": _signal,
    "signal-consumed": _consumed,
    "cancel-requested": _cancel,
    "compensation-started": _compensating,
    "compensation-completed": _compensated_step,
    "compensation-failed": _compensation_failed,
    "retried": _retried,
    **{status: _final(status) for status in FINISHED},
}


@dataclass(slots=True)
class History:
    """A loaded history: its state and the stream sequence of its last event (0: none)."""

    workflow_id: str
    state: WorkflowState
    seq: int


class HistoryStore:
    """Reads and appends workflow histories on ``bus``; appends are signed by ``identity``
    (None: read-only); only events signed by ``trusted`` sources (``tenant/agent``;
    default the identity's) are accepted on load."""

    def __init__(self, bus: Bus, identity: Identity | None, trusted: Iterable[str] = ()) -> None:
        self.bus = bus
        self.identity = identity
        chosen = set(trusted) or ({identity.principal.source} if identity else set())
        self.trusted = frozenset(chosen)
        self._store: AggregateStore[WorkflowState] | None = None

    def _aggregates(self) -> AggregateStore[WorkflowState]:
        if self._store is None:
            anyone = self.identity or _placeholder(self.bus)
            self._store = AggregateStore(self.bus, WorkflowState, kind=KIND, identity=anyone)
        return self._store

    def subject(self, workflow_id: str) -> str:
        return self._aggregates().subject(workflow_id)

    async def load(self, workflow_id: str) -> History:
        """The workflow's history, every event verified and signed by a trusted source."""
        loaded = await self._aggregates().load(workflow_id)
        for entry in loaded.state.timeline:
            if entry.source not in self.trusted:
                raise UntrustedHistory(
                    f"event {entry.position} ({entry.kind}) is signed by {entry.source}, "
                    "not by a trusted orchestrator",
                    workflow_id=workflow_id, source=entry.source, seq=entry.position,
                )  # fmt: skip
        return History(workflow_id, loaded.state, loaded.seq)

    async def existing(self, workflow_id: str) -> History:
        """:meth:`load`, or :class:`WorkflowNotFound` when nothing was started."""
        history = await self.load(workflow_id)
        if history.seq == 0 or not history.state.timeline:
            raise WorkflowNotFound("no such workflow", workflow_id=workflow_id)
        return history

    async def append(self, history: History, kind: str, data: JsonValue) -> None:
        """Append one event; :class:`HistoryMoved` if another writer appended first."""
        assert self.identity is not None, "a read-only history store"
        subject = self.subject(history.workflow_id)
        self.bus._check_publish(self.identity, None, subject)
        signed = bus_codec(self.bus, "append to a workflow").sign(
            CustomEvent(subject, TYPE_PREFIX + kind, data), self.identity
        )
        headers = {**signed.headers, "Nats-Expected-Last-Subject-Sequence": str(history.seq)}
        wire = to_wire(self.bus.root, subject)
        try:
            with mapped_nats_errors(f"append to {subject}"):
                ack = await self.bus.jetstream.publish(
                    wire, signed.body, stream=self._aggregates()._stream, headers=headers
                )
        except EventwireError as exc:
            cause = exc.__cause__
            if (
                isinstance(cause, nats.js.errors.APIError)
                and cause.err_code == _WRONG_LAST_SEQUENCE
            ):
                raise HistoryMoved(history.workflow_id) from None
            raise
        history.seq = ack.seq
        history.state.fold(kind, data)
        source = self.identity.principal.source
        entry = TimelineEntry(len(history.state.timeline) + 1, "", kind, source, "", data)
        history.state.timeline.append(entry)

    async def last_kind(self, workflow_id: str) -> str | None:
        """The kind of the history's last event (None: no history), verified and signed by a
        trusted source, read without replaying the history (to poll for the end)."""
        wire = to_wire(self.bus.root, self.subject(workflow_id))
        try:
            with mapped_nats_errors(f"read the last event of {wire}"):
                message = await self.bus.jetstream.get_last_msg(self._aggregates()._stream, wire)
        except EventwireError as exc:
            if isinstance(exc.__cause__, nats.js.errors.NotFoundError):
                return None
            raise
        codec = bus_codec(self.bus, "read a workflow")
        event = codec.open(message.data or b"", message.headers, wire)
        if isinstance(event, Rejection) or event.source not in self.trusted:
            return None  # the full load says why
        return event.type.removeprefix(TYPE_PREFIX)

    async def ids(self) -> list[str]:
        """The ids of every workflow with a history, sorted."""
        wire = to_wire(self.bus.root, f"custom.es.{KIND}.*")
        with mapped_nats_errors("list workflows"):
            info = await self.bus.jetstream.stream_info(
                self._aggregates()._stream, subjects_filter=wire
            )
        return sorted(subject.rsplit(".", 1)[1] for subject in info.state.subjects or {})


def _placeholder(bus: Bus) -> Identity:
    """An identity for a read-only store (AggregateStore wants one; it never signs)."""
    from eventwire_security import Identity

    return Identity.generate(bus.tenant, "workflow-reader")
