"""What a workflow function sees: :class:`WorkflowContext` (steps, durable timers, signals),
and :class:`Run`, one replay of the function against its history.

Every ``ctx`` operation takes the next operation number *when it is called* (before any
await), so a re-run of a deterministic function gives each step, timer and signal wait the
same number, and finds its recorded outcome in the history instead of acting again. An
operation that must wait (a timer not yet due, a signal not yet sent) suspends the run: the
orchestrator stops it and resumes it when the timer fires or the signal arrives.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError

from ._errors import InvalidArgument
from ._workflow_defs import StepFailed, StepRetry, WaitTimedOut

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from pydantic import JsonValue

    from ._workflow_history import History, HistoryStore
    from ._workflow_seal import Sealer

    Caller = Callable[["StepCall", str], Awaitable[Any]]
    Scheduler = Callable[[str, int, float], Awaitable[None]]

__all__ = ["CallFailed", "Run", "StepCall", "Suspended", "WorkflowContext"]

M = TypeVar("M", bound=BaseModel)
_INLINE_WAIT = 0.5  # a timer due sooner than this is waited for in place (after scheduling)


class Suspended(BaseException):
    """The run waits for a timer or a signal; a BaseException so user code cannot catch it."""


class CallFailed(Exception):
    """A step or compensation request failed for good (``reason``, ``detail``)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


class StepCall:
    """One step or compensation request: who, what, with which data, how patiently."""

    __slots__ = ("action", "data", "retry", "sealed", "target", "timeout")

    def __init__(  # noqa: PLR0913 - a plain record
        self,
        target: str,
        action: str,
        data: JsonValue,
        retry: StepRetry,
        timeout: float,
        *,
        sealed: bool = False,
    ) -> None:
        self.target, self.action, self.data = target, action, data
        self.retry, self.timeout, self.sealed = retry, timeout, sealed


class Run:
    """One replay of a workflow function over ``history``; appends through ``store``."""

    def __init__(
        self,
        history: History,
        store: HistoryStore,
        call: Caller,
        schedule: Scheduler,
        sealer: Sealer,
    ) -> None:
        self.history, self.store = history, store
        self.call, self.schedule, self.sealer = call, schedule, sealer
        self.ops = 0
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._lock = asyncio.Lock()

    @property
    def workflow_id(self) -> str:
        return self.history.workflow_id

    def next_op(self) -> int:
        self.ops += 1
        return self.ops

    async def append(self, kind: str, data: JsonValue) -> None:
        async with self._lock:
            await self.store.append(self.history, kind, data)

    @asynccontextmanager
    async def operation(self) -> AsyncIterator[None]:
        """Counts an operation in flight, so the orchestrator can wait for all to settle."""
        self._active += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._active -= 1
            if not self._active:
                self._idle.set()

    async def settled(self) -> None:
        """Wait until no operation is in flight (e.g. the other branch of a gather)."""
        await self._idle.wait()

    def key(self, op: int, suffix: str = "") -> str:
        """The idempotency key of operation ``op`` in this epoch of the workflow."""
        return f"{self.workflow_id}:{self.history.state.epoch}:{op}{suffix}"

    async def step(self, op: int, call: StepCall, output: type[M], compensate: str | None) -> M:
        async with self.operation():
            state = self.history.state
            record = state.steps.get(op)
            if record is not None and (record.target, record.action) != (call.target, call.action):
                detail = f"history has {record.target}.{record.action} at step {op}"
                raise StepFailed(
                    workflow_id=self.workflow_id, step=op, reason="nondeterministic", detail=detail
                )
            if record is not None and record.status == "completed":
                return output.model_validate(self._open(op, "result", record.result))
            if record is not None and record.status != "scheduled":
                raise StepFailed(
                    workflow_id=self.workflow_id,
                    step=op,
                    reason="failed",
                    detail=record.error or "",
                )
            if record is None:
                data = self._sealed(call, op, "input", call.data)
                scheduled: JsonValue = {
                    "op": op, "target": call.target, "action": call.action, "input": data,
                    "compensate": compensate, "timeout": call.timeout,
                }  # fmt: skip
                await self.append("step-scheduled", scheduled)
            return await self._perform(op, call, output)

    async def _perform(self, op: int, call: StepCall, output: type[M]) -> M:
        try:
            reply = await self.call(call, self.key(op))
            result = output.model_validate(reply)
        except CallFailed as exc:
            reason, detail = exc.reason, exc.detail
        except ValidationError as exc:
            reason = "invalid-result"
            detail = f"not a {output.__name__}: {exc.errors()[0]['msg']} ({exc.error_count()})"
        else:
            data = self._sealed(call, op, "result", result.model_dump(mode="json"))
            await self.append("step-completed", {"op": op, "result": data})
            return result
        await self.append("step-failed", {"op": op, "reason": reason, "detail": detail})
        raise StepFailed(workflow_id=self.workflow_id, step=op, reason=reason, detail=detail)

    def _sealed(self, call: StepCall, op: int, what: str, value: JsonValue) -> JsonValue:
        return self.sealer.seal(self.workflow_id, op, what, value) if call.sealed else value

    def _open(self, op: int, what: str, value: JsonValue) -> JsonValue:
        return self.sealer.open(self.workflow_id, op, what, value)

    async def sleep(self, op: int, seconds: float) -> None:
        async with self.operation():
            timer = self.history.state.timers.get(op)
            if timer is not None and timer[1]:
                return
            due = await self._timer(op, timer, seconds)
            await self._wait_due(op, due)
            await self.append("timer-fired", {"op": op})

    async def _timer(self, op: int, timer: tuple[float, bool] | None, seconds: float) -> float:
        if timer is not None:
            return timer[0]
        due = time.time() + seconds
        await self.append("timer-set", {"op": op, "due": due})
        return due

    async def _wait_due(self, op: int, due: float) -> None:
        """Return once ``due`` has passed; suspend (with a wake-up scheduled) if far off."""
        remaining = due - time.time()
        if remaining <= 0:
            return
        await self.schedule(self.workflow_id, op, due)
        if remaining > _INLINE_WAIT:
            raise Suspended
        await asyncio.sleep(remaining)

    async def wait_signal(self, op: int, name: str, timeout: float | None) -> JsonValue:
        async with self.operation():
            state = self.history.state
            if op in state.consumed:
                index = state.consumed[op]
                if index is None:
                    raise WaitTimedOut(f"no signal {name!r} in time", workflow_id=self.workflow_id)
                return state.signals[index][1]  # type: ignore[no-any-return] # JSON from history
            used = set(state.consumed.values())
            for index, (sent, data, _) in enumerate(state.signals):
                if sent == name and index not in used:
                    await self.append("signal-consumed", {"op": op, "index": index})
                    return data  # type: ignore[no-any-return] # JSON from history
            if timeout is None:
                raise Suspended
            due = await self._timer(op, state.timers.get(op), timeout)
            await self._wait_due(op, due)
            await self.append("signal-consumed", {"op": op, "index": None})
            raise WaitTimedOut(f"no signal {name!r} in time", workflow_id=self.workflow_id)


class WorkflowContext:
    """Given to a workflow function: its id and input epoch, and the durable operations."""

    def __init__(self, run: Run) -> None:
        self._run = run

    @property
    def workflow_id(self) -> str:
        return self._run.workflow_id

    def step(  # noqa: PLR0913 - public: the call, then optional keywords
        self,
        target: str,
        action: str,
        request: BaseModel,
        *,
        output: type[M],
        retry: StepRetry | None = None,
        timeout: float = 5.0,
        compensate: str | None = None,
        sealed: bool = False,
    ) -> Awaitable[M]:
        """Ask agent ``target`` (a :class:`StepWorker` answering its direct requests; or
        ``"capability:<name>"``: one live agent with it, chosen anew on each attempt) to do
        ``action`` with ``request``; returns its result as ``output``. Retried per
        ``retry`` (each attempt waits ``timeout`` s); :class:`StepFailed` once it failed for
        good. ``compensate`` names the target's action that undoes it (it gets the step's
        result), run if the workflow later fails or is cancelled. ``sealed``: the input and
        result are stored sealed in the history (see ``_workflow_seal``)."""
        if not isinstance(request, BaseModel):
            raise InvalidArgument("must be a pydantic model instance", field="request")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise InvalidArgument("must be a number > 0", field="timeout")
        data = request.model_dump(mode="json")
        call = StepCall(target, action, data, retry or StepRetry(), float(timeout), sealed=sealed)
        return self._run.step(self._run.next_op(), call, output, compensate)

    def sleep(self, seconds: float) -> Awaitable[None]:
        """A durable timer: the workflow resumes after ``seconds``, across restarts."""
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
            raise InvalidArgument("must be a number >= 0", field="seconds")
        return self._run.sleep(self._run.next_op(), float(seconds))

    def wait_signal(self, name: str, *, timeout: float | None = None) -> Awaitable[JsonValue]:
        """The data of the next signal ``name`` sent to this workflow (signals wait in the
        history until asked for); :class:`WaitTimedOut` after ``timeout`` seconds."""
        if not isinstance(name, str) or not name:
            raise InvalidArgument("must be a non-empty string", field="name")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
        ):
            raise InvalidArgument("must be a number > 0", field="timeout")
        return self._run.wait_signal(self._run.next_op(), name, timeout)
