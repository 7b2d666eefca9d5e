"""Workflow definitions, their retry policies, history event types and typed errors.

A workflow is an async function decorated with :func:`workflow`; it takes a
:class:`~eventwire.WorkflowContext` and its typed input (a pydantic model) and returns its
typed output. Its state is the signed history of its events (``_workflow_history``); an
orchestrator (``_workflow_runner``) replays it deterministically to resume it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel

from eventwire_security import EventwireError

from ._errors import InvalidArgument

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = [
    "FINISHED",
    "StepFailed",
    "StepRetry",
    "UntrustedHistory",
    "WaitTimedOut",
    "WorkflowAlreadyStarted",
    "WorkflowDefinition",
    "WorkflowError",
    "WorkflowFinished",
    "WorkflowNotFound",
    "workflow",
]

TYPE_PREFIX = "io.eventwire.workflow."
COMMAND_TYPE = TYPE_PREFIX + "command"
STEP_TYPE = TYPE_PREFIX + "step"
RESULT_TYPE = TYPE_PREFIX + "step-result"
# The states a workflow ends in; "running" and "compensating" are the others.
FINISHED = frozenset({"completed", "compensated", "failed", "failed-compensation", "cancelled"})
STATES = frozenset({"running", "compensating", *FINISHED})

In = TypeVar("In", bound=BaseModel)
Out = TypeVar("Out", bound=BaseModel)


class WorkflowError(EventwireError):
    """Anything a workflow operation refuses; ``workflow_id`` names the workflow."""

    def __init__(self, message: str, *, workflow_id: str) -> None:
        super().__init__(f"workflow {workflow_id}: {message}")
        self.workflow_id = workflow_id


class WorkflowNotFound(WorkflowError):
    """No workflow has this id (nothing was started with it)."""


class WorkflowAlreadyStarted(WorkflowError):
    """A workflow with this id was started with another definition or input."""


class WorkflowFinished(WorkflowError):
    """The workflow has ended (``state``); it cannot be signalled or cancelled."""

    def __init__(self, message: str, *, workflow_id: str, state: str) -> None:
        super().__init__(message, workflow_id=workflow_id)
        self.state = state


class UntrustedHistory(WorkflowError):
    """An event of the history is not signed by a trusted orchestrator (``source``)."""

    def __init__(self, message: str, *, workflow_id: str, source: str, seq: int) -> None:
        super().__init__(message, workflow_id=workflow_id)
        self.source = source
        self.seq = seq


class StepFailed(WorkflowError):
    """Step ``step`` failed for good: ``reason`` is ``rejected`` (the worker refused it),
    ``retries-exhausted``, ``invalid-result`` (the result is not the declared output
    model) or ``nondeterministic``; ``detail`` says more."""

    def __init__(self, *, workflow_id: str, step: int, reason: str, detail: str) -> None:
        super().__init__(f"step {step} failed ({reason}): {detail}", workflow_id=workflow_id)
        self.step = step
        self.reason = reason
        self.detail = detail


class WaitTimedOut(WorkflowError):
    """``ctx.wait_signal(name, timeout=...)`` saw no signal ``name`` in time."""


def _positive(value: object, field: str, *, minimum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise InvalidArgument(f"must be a number >= {minimum}, got {value!r}", field=field)
    return float(value)


@dataclass(frozen=True, slots=True)
class StepRetry:
    """How a step (or a compensation) is retried: ``attempts`` in all, the first retry
    after ``delay`` seconds, each next one ``backoff`` times later (at most ``max_delay``)."""

    attempts: int = 3
    delay: float = 0.2
    backoff: float = 2.0
    max_delay: float = 5.0

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise InvalidArgument("must be an int >= 1", field="attempts")
        _positive(self.attempts, "attempts", minimum=1)
        _positive(self.delay, "delay", minimum=0)
        _positive(self.backoff, "backoff", minimum=1)
        _positive(self.max_delay, "max_delay", minimum=0)

    def wait(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based)."""
        return min(self.max_delay, self.delay * self.backoff ** (attempt - 1))


@dataclass(frozen=True, slots=True)
class WorkflowDefinition(Generic[In, Out]):
    """A workflow: its ``name`` (a subject token), input and output models, and function."""

    name: str
    input: type[In]
    output: type[Out]
    function: Callable[[Any, In], Awaitable[Out]]

    async def __call__(self, ctx: Any, data: In) -> Out:
        return await self.function(ctx, data)


def workflow(
    name: str, *, input: type[In], output: type[Out]
) -> Callable[[Callable[[Any, In], Awaitable[Out]]], WorkflowDefinition[In, Out]]:
    """Declare a workflow: ``@workflow("trip", input=Trip, output=Booked)`` on an async
    function ``(ctx, data) -> output``. The function must be deterministic apart from what
    ``ctx`` gives it (steps, timers, signals): it is re-run on every resume."""
    _check_name(name)
    for field, model in (("input", input), ("output", output)):
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise InvalidArgument("must be a pydantic model class", field=field)

    def declare(function: Callable[[Any, In], Awaitable[Out]]) -> WorkflowDefinition[In, Out]:
        return WorkflowDefinition(name, input, output, function)

    return declare


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_" for c in name):
        raise InvalidArgument("must be letters, digits, '-' or '_'", field="name")
    return name


def check_workflow_id(value: object) -> str:
    """A workflow id: letters, digits, ``-`` and ``_`` (it is a subject token), 1-128 chars."""
    if not isinstance(value, str) or not 0 < len(value) <= 128:
        raise InvalidArgument("must be a string of 1-128 chars", field="workflow_id")
    if not all(c.isascii() and (c.isalnum() or c in "-_") for c in value):
        raise InvalidArgument("must be letters, digits, '-' or '_'", field="workflow_id")
    return value
