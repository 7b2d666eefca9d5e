"""The orchestrator: advances workflows from their signed histories.

Commands ("start", "signal", "cancel", "retry") are signed events on
``custom.workflow.task.<id>``, consumed by one durable consumer (``wf-orchestrator``)
that every orchestrator instance shares; timer wake-ups come from ``_workflow_timers``.
Advancing a workflow: load and verify its history, record the command (once: commands are
recognised by their event id), then replay the workflow function (``_workflow_context``)
until it ends or waits. A crash anywhere leaves the command unacknowledged, so another
instance (or this one, restarted) does it again from the history; appends conflict instead
of interleaving (``HistoryMoved``: reload, re-evaluate). A failed step, an error of the
workflow function or a cancel compensates the completed steps in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Self

from ._errors import RemoteError, RequestFailed, TransportError, describe
from ._kinds import CustomEvent
from ._retry import RetryPolicy
from ._workflow_context import CallFailed, Run, StepCall, Suspended, WorkflowContext
from ._workflow_defs import COMMAND_TYPE, STEP_TYPE, StepRetry, WorkflowDefinition
from ._workflow_history import History, HistoryMoved, HistoryStore
from ._workflow_seal import Sealer, is_sealed
from ._workflow_timers import Timers

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable, Sequence
    from types import TracebackType

    from pydantic import JsonValue

    from eventwire_security import Identity, RecipientKey

    from ._bus import Bus
    from ._event import Event

__all__ = ["TASK_PATTERN", "Orchestrator", "task_subject"]

log = logging.getLogger("eventwire.workflows")
TASK_PATTERN = "custom.workflow.task.*"
CAPABILITY = "capability:"  # a step target naming a capability, not an agent
REJECTED = "step-rejected"  # the code of a worker's signed refusal (no retry)
_COMMANDS = RetryPolicy(max_deliveries=50, initial_delay=0.2, max_delay=5)
_MAX_RELOADS = 100


def task_subject(workflow_id: str) -> str:
    return f"custom.workflow.task.{workflow_id}"


class Orchestrator:
    """Runs ``workflows`` (definitions) as ``identity`` on ``bus``; an async context manager.
    ``max_in_flight`` workflows advance at once; compensations retry per
    ``compensation_retry`` and are dead-lettered (``compensation-failed``) after it. The
    commands of an instance that died are taken up by another after ``ack_wait`` seconds
    (running ones are kept in progress meanwhile). Sealed steps' data is sealed to the
    orchestrator and to ``readers`` (X25519 recipient keys)."""

    def __init__(  # noqa: PLR0913 - public: the essentials, then optional keywords
        self,
        bus: Bus,
        identity: Identity,
        workflows: Iterable[WorkflowDefinition[Any, Any]],
        *,
        max_in_flight: int = 32,
        compensation_retry: StepRetry | None = None,
        ack_wait: float = 5.0,
        readers: Sequence[RecipientKey] = (),
    ) -> None:
        self.bus, self.identity = bus, identity
        self.definitions = {each.name: each for each in workflows}
        self.max_in_flight, self.ack_wait = max_in_flight, ack_wait
        self.compensation_retry = compensation_retry or StepRetry(attempts=5)
        self.store = HistoryStore(bus, identity)
        self.timers = Timers(bus)
        self.sealer = Sealer(identity, readers)
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._users: defaultdict[str, int] = defaultdict(int)
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Self:
        await self.timers.ensure()
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(
                self.bus.subscribe(
                    TASK_PATTERN, self._on_command, durable="wf-orchestrator",
                    max_in_flight=self.max_in_flight, retry=_COMMANDS, ack_wait=self.ack_wait,
                )
            )  # fmt: skip
            await stack.enter_async_context(self._timer_loop())
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.aclose()

    @contextlib.asynccontextmanager
    async def _timer_loop(self) -> AsyncIterator[None]:
        async with asyncio.TaskGroup() as group:
            task = group.create_task(self.timers.consume(self.advance, ack_wait=self.ack_wait))
            try:
                yield
            finally:
                task.cancel()

    async def _on_command(self, event: Event) -> None:
        data = event.data
        workflow_id = data.get("id") if isinstance(data, dict) else None
        if not isinstance(workflow_id, str):
            log.warning("workflow command %s without an id: ignored", event.id)
            return
        await self.advance(workflow_id, event)

    async def advance(self, workflow_id: str, command: Event | None = None) -> None:
        """Record ``command`` (if any) and run the workflow until it ends or waits."""
        self._users[workflow_id] += 1
        try:
            async with self._locks[workflow_id]:
                await self._reloading(workflow_id, command)
        finally:
            self._users[workflow_id] -= 1
            if not self._users[workflow_id]:
                del self._users[workflow_id], self._locks[workflow_id]

    async def _reloading(self, workflow_id: str, command: Event | None) -> None:
        for _ in range(_MAX_RELOADS):
            try:
                history = await self.store.load(workflow_id)
                await self._advance(history, command)
            except HistoryMoved:
                continue
            return
        raise RuntimeError(f"workflow {workflow_id}: history kept moving")

    async def _advance(self, history: History, command: Event | None) -> None:
        if command is not None:
            await self._record(history, command)
        state = history.state
        if history.seq == 0 or state.finished:
            return
        definition = self.definitions.get(state.name)
        if definition is None:
            raise LookupError(f"workflow {history.workflow_id}: no definition {state.name!r} here")
        if state.status == "compensating":
            await self._compensate(history)
        elif state.cancel_requested:
            await self.store.append(history, "compensation-started", {"reason": "cancelled"})
            await self._compensate(history)
        else:
            await self._run(history, definition)

    async def _record(self, history: History, command: Event) -> None:
        """Append what ``command`` asks for, unless the history already has it."""
        data: dict[str, Any] = command.data  # type: ignore[assignment] # checked by _on_command
        state, kind, by = history.state, data.get("command"), command.source
        seen = any(
            isinstance(e.data, dict) and e.data.get("command") == command.id for e in state.timeline
        )
        if seen:
            return
        if kind == "start" and history.seq == 0:
            started = {
                "workflow": data.get("workflow"),
                "input": data.get("input"),
                "by": by,
                "command": command.id,
            }
            await self.store.append(history, "started", started)
        elif kind == "signal" and history.seq and not state.finished:
            signal = {
                "name": data.get("name"),
                "data": data.get("data"),
                "by": by,
                "command": command.id,
            }
            await self.store.append(history, "signal-received", signal)
        elif kind == "cancel" and history.seq and not state.finished and not state.cancel_requested:
            await self.store.append(history, "cancel-requested", {"by": by, "command": command.id})
        elif kind == "retry" and state.finished and state.status != "completed":
            await self.store.append(history, "retried", {"by": by, "command": command.id})

    async def _run(self, history: History, definition: WorkflowDefinition[Any, Any]) -> None:
        run = Run(history, self.store, self._call, self.timers.schedule, self.sealer)
        ctx = WorkflowContext(run)
        try:
            output = await definition(ctx, definition.input.model_validate(history.state.input))
            data = definition.output.model_validate(output).model_dump(mode="json")
        except Suspended:
            await run.settled()
            return
        except HistoryMoved:
            await run.settled()
            raise
        except Exception as exc:  # the workflow failed: compensate
            await run.settled()
            reason = describe(exc) if not hasattr(exc, "reason") else str(exc)
            await self.store.append(history, "compensation-started", {"reason": reason})
            await self._compensate(history)
            return
        await run.settled()
        await self.store.append(history, "completed", {"output": data})

    async def _resolve_in_flight(self, history: History) -> None:
        """Steps scheduled but without an outcome (their orchestrator died, or another
        appended first) may have acted: ask again with the same key to learn the outcome."""
        state = history.state
        for op, record in sorted(state.steps.items()):
            if record.status != "scheduled" or record.compensate is None:
                continue
            data = self.sealer.open(history.workflow_id, op, "input", record.input)
            call = StepCall(record.target, record.action, data, self.compensation_retry, 5.0)
            try:
                result = await self._call(call, f"{history.workflow_id}:{state.epoch}:{op}")
            except CallFailed as exc:
                await self.store.append(
                    history, "step-failed", {"op": op, "reason": exc.reason, "detail": exc.detail}
                )
                continue
            if is_sealed(record.input):
                result = self.sealer.seal(history.workflow_id, op, "result", result)
            await self.store.append(history, "step-completed", {"op": op, "result": result})

    async def _compensate(self, history: History) -> None:
        """Undo the completed steps in reverse order of completion; then the final event."""
        await self._resolve_in_flight(history)
        state = history.state
        undone = failed = 0
        for op in reversed(state.done_order):
            record = state.steps[op]
            if record.compensate is None or record.status not in ("completed",):
                undone += record.status == "compensated"
                failed += record.status == "compensation-failed"
                continue
            data = self.sealer.open(history.workflow_id, op, "result", record.result)
            call = StepCall(record.target, record.compensate, data, self.compensation_retry, 5.0)
            try:
                await self._call(call, f"{history.workflow_id}:{state.epoch}:{op}:undo")
            except CallFailed as exc:
                await self.store.append(
                    history, "compensation-failed", {"op": op, "reason": str(exc)}
                )
                failed += 1
                continue
            await self.store.append(history, "compensation-completed", {"op": op})
            undone += 1
        await self.store.append(
            history, _final(state.reason, undone, failed), {"reason": state.reason}
        )

    async def _request(self, call: StepCall, item: CustomEvent) -> Event:
        """Ask the step's agent, or one live agent with its capability (``capability:x``)."""
        me, seconds = self.identity, call.timeout
        capability = call.target.removeprefix(CAPABILITY)
        if capability != call.target:
            return await self.bus.request(item, identity=me, capability=capability, timeout=seconds)
        return await self.bus.request(call.target, item, identity=me, timeout=seconds)

    async def _call(self, call: StepCall, key: str) -> JsonValue:
        """Send the request (retried per its policy) and return the result in the reply."""
        item = CustomEvent(
            "custom.workflow.step",
            STEP_TYPE,
            {"key": key, "action": call.action, "input": call.data},
        )
        last = "no attempt"
        for attempt in range(1, call.retry.attempts + 1):
            try:
                reply = await self._request(call, item)
            except RemoteError as exc:
                if exc.code == REJECTED:
                    raise CallFailed("rejected", str(exc)) from None
                last = str(exc)
            except (RequestFailed, TransportError) as exc:
                last = str(exc)
            else:
                if isinstance(reply.data, dict) and "result" in reply.data:
                    return reply.data["result"]
                raise CallFailed("invalid-result", "the reply carries no result")
            if attempt < call.retry.attempts:
                await asyncio.sleep(call.retry.wait(attempt))
        raise CallFailed("retries-exhausted", f"{call.retry.attempts} attempt(s), last: {last}")


def _final(reason: str | None, undone: int, failed: int) -> str:
    if failed:
        return "failed-compensation"
    if reason == "cancelled":
        return "cancelled"
    return "compensated" if undone else "failed"


def command(workflow_id: str, kind: str, **data: JsonValue) -> CustomEvent:
    """A command event for the orchestrators."""
    return CustomEvent(
        task_subject(workflow_id), COMMAND_TYPE, {"id": workflow_id, "command": kind, **data}
    )
