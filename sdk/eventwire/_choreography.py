"""Choreography tracking: follow declared flows by ``correlationid``, flag stuck steps.

``async with ChoreographyTracker(bus, [flow], identity=me) as tracker:`` observes only:

* One durable consumer per distinct step pattern (``<name>-<hash of the pattern>``, shared
  by every tracker of the same ``name``), through ``bus.subscribe``: events are verified
  like every event, so a forged or replayed event never counts as progress. Each step
  event is recorded in the run's signed progress document (``_choreography_store``).
* A supervised loop watches the progress bucket (so it knows every run, whichever tracker
  recorded it, and after a restart the runs recorded before) and every ``tick`` seconds
  publishes what is due (``_choreography_state.actions``): a ``system.coordination.stuck``
  event for an overdue step, a ``system.coordination.recovered`` event for a stuck step
  reached after all. Each is re-checked against the latest document, published with a
  ``Nats-Msg-Id`` derived from the run and step (two trackers, or a restart, store it
  once), then marked in the document (so it is never published again, even after the
  stream's duplicate window). A duplicate is checked to be a trusted tracker's report of
  the same run and step; if something else took the id first, the report is published
  under the id and that message's sequence.
* Stuck steps are only reported once every step consumer has handled the events stored
  up to now (no events pending, or its ack floor past the stream's last sequence): a
  tracker catching up after a pause never reports a step whose event is still queued.

The tracker never acts on a flow: it publishes reports, nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Self

from nats.js.kv import KV_DEL, KV_PURGE

from eventwire_security import Actor

from ._choreography_events import (
    RECOVERED_SUBJECT,
    STUCK_SUBJECT,
    StuckStep,
    is_stored_report,
    read_stuck,
    report_msg_id,
    report_of,
)
from ._choreography_flow import Choreography, InvalidChoreography, check_flows
from ._choreography_state import Action, FlowProgress, actions, correlation_key
from ._choreography_store import ProgressStore
from ._errors import (
    BusyResource,
    EventwireError,
    InvalidArgument,
    PublishFailed,
    TransportError,
    checked_name,
    mapped_nats_errors,
)
from ._supervisor import Loop, is_transport_error
from ._watch import start_watch, stop_watch

if TYPE_CHECKING:
    from collections.abc import Collection, Sequence
    from types import TracebackType

    from nats.js.kv import KeyValue

    from eventwire_security import Identity

    from ._bus import Bus
    from ._consumer import Subscription
    from ._event import Event
    from ._sending import PublishAck

__all__ = ["ChoreographyTracker", "TrackerStats"]

log = logging.getLogger("eventwire.choreography")
DEFAULT_RETENTION = 7 * 24 * 3600.0
_CLAIMS = 4  # report ids tried when the first ones were taken
IN_FLIGHT = 16  # step events recorded at once per consumer (optimistic writes keep them apart)


@dataclass(slots=True)
class TrackerStats:
    """What this tracker did: step events recorded, reports it published that the stream
    stored (``stuck``, ``recovered``), reports the stream dropped as already stored
    (``duplicates``: another tracker, or this one before a restart, was first), and report
    ids found taken by a message that was no tracker's report (``claimed``)."""

    recorded: int = 0
    stuck: int = 0
    recovered: int = 0
    duplicates: int = 0
    claimed: int = 0  # report ids found taken by something else (then published anew)


def _seconds(value: object, field: str, upper: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise InvalidArgument(f"must be a number of seconds, got {value!r}", field=field)
    if not 0 < value <= upper:
        raise InvalidArgument(f"must be > 0 and <= {upper:g}, got {value!r}", field=field)
    return float(value)


class ChoreographyTracker:
    """Tracks ``flows`` on ``bus`` and reports stuck steps, signed as ``identity``.

    ``name`` names the durable consumers (trackers with the same name share the work);
    ``trusted`` adds the sources (``tenant/agent``) of other trackers whose progress
    documents this one accepts (its own always); ``tick`` is how often due reports are
    looked for; ``retention`` how long a run's progress is kept after its last change
    (longer than any flow takes); ``start`` whether new consumers begin with the events
    already stored (``"all"``) or only new ones (``"new"``, the default). On a bus with a
    policy the tracker acts as ``actor`` (default: its identity's agent): it must be allowed
    to consume the step subjects and to publish ``system.coordination.stuck`` and
    ``system.coordination.recovered`` (else :class:`Forbidden` when it starts).
    """

    def __init__(  # noqa: PLR0913 - public constructor: what to track, then keywords
        self,
        bus: Bus,
        flows: Sequence[Choreography],
        *,
        identity: Identity,
        name: str = "choreography",
        trusted: Collection[str] = (),
        tick: float = 0.5,
        retention: float = DEFAULT_RETENTION,
        start: Literal["all", "new"] = "new",
        actor: Actor | None = None,
    ) -> None:
        self.bus, self.identity = bus, identity
        self.flows = check_flows(flows)
        self.name = checked_name("name", name)
        self.tick = _seconds(tick, "tick", 60.0)
        self.retention = _seconds(retention, "retention", 10 * 365 * 24 * 3600.0)
        longest = max(step.within or 0.0 for flow in self.flows for step in flow.steps)
        if self.retention <= longest:
            raise InvalidArgument(
                f"must be longer than the longest step ({longest:g} s)", field="retention"
            )
        if start not in ("all", "new"):
            raise InvalidArgument(f"must be 'all' or 'new', got {start!r}", field="start")
        self._start = start
        principal = identity.principal
        self._actor = actor or Actor(principal.tenant, principal.agent)
        self._trusted = {identity.principal.source, *trusted}
        self._by_name = {flow.name: flow for flow in self.flows}
        self.stats = TrackerStats()
        self.error: BaseException | None = None  # why the loop stopped, if it did
        self._runs: dict[str, FlowProgress] = {}  # the runs waiting for a deadline, by key
        self._deadlines: list[tuple[float, str]] = []  # heap: (when due, key) of those runs
        self._store: ProgressStore | None = None
        self._subscriptions: list[Subscription] = []
        self._loop: Loop | None = None
        self._closing = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._loop is not None:
            raise BusyResource("this ChoreographyTracker was started before")
        bus = self.bus
        actor = self._actor if bus.policy is not None else None
        for subject in (STUCK_SUBJECT, RECOVERED_SUBJECT):  # Forbidden now, not at a deadline
            bus._check_publish(self.identity, actor, subject)
        self._store = await ProgressStore.open(
            bus.jetstream, root=bus.root, identity=self.identity, keyring=bus.keyring,
            trusted=self._trusted, flows=self._by_name, retention=self.retention,
            replicas=bus.replicas, create=bus.provisions,
        )  # fmt: skip
        self._loop = Loop(
            f"eventwire-choreography:{self.name}", self._run,
            transient=is_transport_error, on_failure=self._failed, logger=log,
        )  # fmt: skip
        try:
            for pattern in dict.fromkeys(p for flow in self.flows for p in flow.patterns):
                subscription = bus.subscribe(
                    pattern, self._handler(pattern), durable=self.name, start=self._start,
                    max_in_flight=IN_FLIGHT, actor=actor,
                )  # fmt: skip
                self._subscriptions.append(subscription)
                await subscription.start()
            self._loop.start()
        except BaseException:
            await self._stop()
            raise
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._stop()
        if self.error is not None and error is None:
            raise self.error  # the loop died while the block ran: never a silent death

    async def _stop(self) -> None:
        # The flag ends the loop even where a cancellation gets lost (Python 3.11's
        # wait_for inside nats-py can swallow one that arrives as its future completes).
        self._closing.set()
        if self._loop is not None:
            await self._loop.stop(cancel=True)
        subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            await subscription.stop()

    def _failed(self, error: BaseException) -> None:
        self.error = error
        log.error("choreography tracker %s stopped reporting: %r", self.name, error)

    @property
    def waiting(self) -> int:
        """How many runs this tracker watches for a deadline now (of every tracker's)."""
        return len(self._runs)

    @property
    def running(self) -> bool:
        """Whether the watch-and-report loop runs (false before, after, or once it failed)."""
        return self._loop is not None and self._loop.running

    # -- recording steps ---------------------------------------------------------------------

    def _handler(self, pattern: str) -> _Handler:
        flows = [flow for flow in self.flows if pattern in flow.patterns]
        return _Handler(self, pattern, flows)

    async def _record(self, flow: Choreography, step: int, event: Event) -> None:
        at = _signed_at(event)
        recorded = False

        def edit(progress: FlowProgress) -> bool:
            nonlocal recorded
            recorded = progress.record(step, at, event.id)
            return recorded

        key = correlation_key(flow.name, event.correlationid)
        store = self._running_store()
        known = self._runs.get(key)
        self._remember(key, await store.change(flow, event.correlationid, edit, known=known))
        self.stats.recorded += recorded

    def _running_store(self) -> ProgressStore:
        if self._store is None:
            raise BusyResource("the ChoreographyTracker is not running (async with it)")
        return self._store

    # -- watching and reporting --------------------------------------------------------------

    async def _run(self) -> None:
        """One run of the loop: watch every run's progress and report what is due."""
        bucket = self._running_store().bucket
        with mapped_nats_errors("watch the choreography progress"):
            watcher = await start_watch(bucket.watchall())
        try:
            async with asyncio.TaskGroup() as group:
                follow = group.create_task(self._follow(watcher))
                try:
                    while not self._closing.is_set():
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(self.tick):
                                await self._closing.wait()
                        if not self._closing.is_set():
                            await self._report_due()
                finally:
                    follow.cancel()
        finally:
            await stop_watch(watcher)

    async def _follow(self, watcher: KeyValue.KeyWatcher) -> None:
        store = self._running_store()
        async for entry in watcher:
            if entry is None:  # the values stored when the watch began are all in
                continue
            if entry.operation in (KV_DEL, KV_PURGE):
                self._runs.pop(entry.key, None)
                continue
            progress = store.decode(entry.key, entry.value)
            if progress is not None:  # a refused (forged) value: keep what was trusted
                self._remember(entry.key, progress)
        raise TransportError("the choreography progress watch ended")

    def _due(self, now: float) -> list[tuple[Choreography, Action]]:
        """The runs whose next deadline has come (from the deadline heap; an entry whose
        run moved on since it was pushed is dropped), and what is due about each."""
        found: dict[str, list[tuple[Choreography, Action]]] = {}
        while self._deadlines and self._deadlines[0][0] <= now:
            _, key = heapq.heappop(self._deadlines)
            progress = self._runs.get(key)
            if progress is not None and key not in found:
                flow = self._by_name[progress.flow]
                found[key] = [(flow, action) for action in actions(flow, progress, now)]
        return [each for due in found.values() for each in due]

    async def _report_due(self) -> None:
        caught_up: bool | None = None
        for flow, action in self._due(time.time()):
            key = correlation_key(flow.name, action.correlation)
            if action.kind == "stuck":
                if caught_up is None:
                    caught_up = await self._caught_up()
                if not caught_up:
                    heapq.heappush(self._deadlines, (action.deadline, key))  # next tick
                    continue
            try:
                await self._report(flow, action)
            except TransportError:
                heapq.heappush(self._deadlines, (0.0, key))
                raise  # the connection: the loop runs again after a pause
            except EventwireError as exc:  # e.g. a publish not acknowledged: next tick
                heapq.heappush(self._deadlines, (0.0, key))
                log.warning(
                    "choreography %s: reporting step %d of %s/%s %s failed: %s",
                    self.name, action.step, flow.name, action.correlation, action.kind, exc,
                )  # fmt: skip

    async def _caught_up(self) -> bool:
        """Whether every step consumer has handled all events stored until now."""
        js, stream = self.bus.jetstream, self.bus.stream
        with mapped_nats_errors("read the consumers' progress"):
            last = (await js.stream_info(stream)).state.last_seq
            for subscription in self._subscriptions:
                info = await js.consumer_info(stream, subscription.durable)
                idle = not info.num_pending and not info.num_ack_pending
                floor = info.ack_floor.stream_seq if info.ack_floor else 0
                if not idle and (floor or 0) < last:
                    return False
        return True

    async def _report(self, flow: Choreography, action: Action) -> None:
        """Publish ``action`` if the latest progress still calls for it, then mark it."""
        store = self._running_store()
        key = correlation_key(flow.name, action.correlation)
        progress, _ = await store.load(key)
        known = self._runs.get(key)
        if progress is None:
            progress = known  # absent, or refused (forged): what this tracker trusted
        if progress is None:
            return
        now, wanted = time.time(), (action.kind, action.step)
        due = [each for each in actions(flow, progress, now) if (each.kind, each.step) == wanted]
        if not due:
            return  # reported by another tracker meanwhile, or the step arrived
        ack = await self._publish(flow, due[0])
        if ack.duplicate:
            self.stats.duplicates += 1
        elif action.kind == "stuck":
            self.stats.stuck += 1
        else:
            self.stats.recovered += 1
        marked = await store.change(flow, action.correlation, _Marker(due[0]), known=known)
        self._remember(key, marked)

    def _remember(self, key: str, progress: FlowProgress) -> None:
        """Keep the runs something may fall due about, with when; forget the others (a
        write to them comes back through the watch or the handler)."""
        due = progress.next_due(self._by_name[progress.flow])
        if due is None:
            self._runs.pop(key, None)
            return
        self._runs[key] = progress
        heapq.heappush(self._deadlines, (due, key))

    async def _publish(self, flow: Choreography, action: Action) -> PublishAck:
        """Publish the report of ``action`` under its message id. A duplicate must be the
        same report by a trusted tracker: if another message took the id first (a
        pre-claimed id), the report goes out under the id and that message's sequence,
        which every tracker derives alike."""
        report, msg_id = report_of(flow, action), report_msg_id(self.bus.root, action)
        for _ in range(_CLAIMS):
            ack = await self.bus.publish_report(report, identity=self.identity, key=msg_id)
            if not ack.duplicate or await is_stored_report(
                self.bus, ack.seq, report, self._trusted
            ):
                return ack
            log.warning(
                "report id %s was taken by stream sequence %d: not a report", msg_id, ack.seq
            )
            self.stats.claimed += 1
            msg_id = f"{report_msg_id(self.bus.root, action)}.{ack.seq}"
        raise PublishFailed(f"report ids of {msg_id} keep being taken", subject=report.subject())

    # -- queries -----------------------------------------------------------------------------

    async def stuck(self, *, include_recovered: bool = True) -> list[StuckStep]:
        """The steps of this tracker's flows reported stuck (by it or a ``trusted``
        tracker), from the stream, oldest first; without ``include_recovered`` only those
        still missing."""
        found = await read_stuck(
            self.bus, include_recovered=include_recovered, signers=self._trusted
        )
        return [entry for entry in found if entry.flow in self._by_name]

    async def progress(self, flow: str, correlation: str) -> FlowProgress | None:
        """The stored progress of run ``correlation`` of ``flow`` (None: not seen)."""
        if flow not in self._by_name:
            raise InvalidChoreography(f"{flow!r} is not a flow of this tracker", field="flow")
        progress, _ = await self._running_store().load(correlation_key(flow, correlation))
        return progress


def _signed_at(event: Event) -> float:
    """When a step happened: the event's ``time``, if it lies in the second of its ``iat``
    (as the SDK signs them); else ``iat``, the claim the replay window checked."""
    at = event.time.timestamp()
    return at if event.iat <= at < event.iat + 1 else float(event.iat)


class _Marker:
    """Marks a published report in a progress document (False: marked already)."""

    __slots__ = ("action",)

    def __init__(self, action: Action) -> None:
        self.action = action

    def __call__(self, progress: FlowProgress) -> bool:
        step = self.action.step
        if self.action.kind == "stuck":
            if step in progress.stuck:
                return False
            progress.stuck[step] = self.action.deadline
            return True
        if step in progress.recovered:
            return False
        progress.recovered.add(step)
        return True


class _Handler:
    """The handler of one step pattern's consumer: records the step in each flow."""

    __slots__ = ("flows", "pattern", "tracker")

    def __init__(
        self, tracker: ChoreographyTracker, pattern: str, flows: list[Choreography]
    ) -> None:
        self.tracker, self.pattern, self.flows = tracker, pattern, flows

    async def __call__(self, event: Event) -> None:
        for flow in self.flows:
            step = flow.step_of(event.subject, event.agent)
            if step is not None and flow.steps[step].pattern == self.pattern:
                await self.tracker._record(flow, step, event)
