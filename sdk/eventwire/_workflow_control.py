"""Controlling workflows: start (idempotent), query, signal, cancel, retry, list, timeline.

Reads verify the history (every event signed by a trusted orchestrator); writes are signed
command events to the orchestrators (``_workflow_runner``), which alone append to histories.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel

from ._errors import InvalidArgument
from ._workflow_defs import (
    FINISHED,
    STATES,
    WorkflowAlreadyStarted,
    WorkflowDefinition,
    WorkflowFinished,
    check_workflow_id,
)
from ._workflow_history import HistoryStore, TimelineEntry
from ._workflow_runner import command

if TYPE_CHECKING:
    from collections.abc import Iterable

    from pydantic import JsonValue

    from eventwire_security import Identity

    from ._bus import Bus
    from ._kinds import CustomEvent
    from ._workflow_history import History

__all__ = ["WorkflowHandle", "WorkflowStatus", "Workflows"]

Out = TypeVar("Out", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class WorkflowStatus:
    """A workflow as its history stands: ``state`` (running, compensating, completed,
    compensated, failed, failed-compensation, cancelled), output or reason, step outcomes."""

    workflow_id: str
    name: str
    state: str
    output: JsonValue
    reason: str | None
    steps: dict[int, str]
    events: int

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


class Workflows:
    """The control API, acting as ``identity`` on ``bus``; histories are accepted only if
    signed by ``orchestrators`` (sources ``tenant/agent``)."""

    def __init__(self, bus: Bus, identity: Identity, *, orchestrators: Iterable[str]) -> None:
        trusted = tuple(orchestrators)
        if not trusted or isinstance(orchestrators, str):
            raise InvalidArgument(
                "name the trusted orchestrators (tenant/agent)", field="orchestrators"
            )
        self.bus, self.identity = bus, identity
        self.histories = HistoryStore(bus, None, trusted)

    async def _send(self, item: CustomEvent) -> None:
        await self.bus.publish(item, identity=self.identity)

    async def start(
        self, definition: WorkflowDefinition[Any, Out], workflow_id: str, data: BaseModel
    ) -> WorkflowHandle[Out]:
        """Start ``definition`` as ``workflow_id`` with input ``data``. Idempotent: the same
        id, definition and input again returns a handle to the first;
        :class:`WorkflowAlreadyStarted` if that id was started otherwise."""
        check_workflow_id(workflow_id)
        if not isinstance(data, definition.input):
            raise InvalidArgument(f"must be a {definition.input.__name__}", field="data")
        payload = data.model_dump(mode="json")
        history = await self.histories.load(workflow_id)
        if history.seq:
            state = history.state
            if (state.name, state.input) != (definition.name, payload):
                raise WorkflowAlreadyStarted(
                    f"already started as {state.name!r} with other input", workflow_id=workflow_id
                )
        else:
            await self._send(command(workflow_id, "start", workflow=definition.name, input=payload))
        return WorkflowHandle(self, workflow_id, definition.output)

    async def status(self, workflow_id: str) -> WorkflowStatus:
        """The workflow's state (:class:`WorkflowNotFound` if it was never started)."""
        history = await self.histories.existing(check_workflow_id(workflow_id))
        return _status(history)

    async def timeline(self, workflow_id: str) -> list[TimelineEntry]:
        """Every event of the history, verified, with its signer."""
        history = await self.histories.existing(check_workflow_id(workflow_id))
        return list(history.state.timeline)

    async def _running(self, workflow_id: str, doing: str) -> History:
        history = await self.histories.existing(check_workflow_id(workflow_id))
        if history.state.finished:
            raise WorkflowFinished(
                f"cannot {doing}: it is {history.state.status}",
                workflow_id=workflow_id, state=history.state.status,
            )  # fmt: skip
        return history

    async def signal(self, workflow_id: str, name: str, data: JsonValue = None) -> None:
        """Send signal ``name`` with ``data`` to a running workflow (``ctx.wait_signal``)."""
        if not isinstance(name, str) or not name:
            raise InvalidArgument("must be a non-empty string", field="name")
        await self._running(workflow_id, "signal it")
        await self._send(command(workflow_id, "signal", name=name, data=data))

    async def cancel(self, workflow_id: str) -> None:
        """Cancel a running workflow: its completed steps are compensated."""
        await self._running(workflow_id, "cancel it")
        await self._send(command(workflow_id, "cancel"))

    async def retry(self, workflow_id: str) -> None:
        """Run a failed (or compensated) workflow again from its failed step; completed
        steps that were not compensated keep their results."""
        history = await self.histories.existing(check_workflow_id(workflow_id))
        status = history.state.status
        if status not in FINISHED or status == "completed":
            raise WorkflowFinished(
                f"cannot retry: it is {status}", workflow_id=workflow_id, state=status
            )
        await self._send(command(workflow_id, "retry"))

    async def list(self, *, state: str | None = None) -> list[WorkflowStatus]:
        """Every workflow (in ``state`` only, if given), by id."""
        if state is not None and state not in STATES:
            raise InvalidArgument(f"must be one of {', '.join(sorted(STATES))}", field="state")
        found = []
        for workflow_id in await self.histories.ids():
            status = _status(await self.histories.load(workflow_id))
            if state is None or status.state == state:
                found.append(status)
        return found

    async def wait(
        self, workflow_id: str, *, timeout: float = 30.0, poll: float = 0.05
    ) -> WorkflowStatus:
        """Wait until the workflow has finished; :class:`TimeoutError` after ``timeout``."""
        check_workflow_id(workflow_id)
        async with asyncio.timeout(timeout):
            while True:
                kind = await self.histories.last_kind(workflow_id)
                if kind is None or kind in FINISHED:
                    history = await self.histories.load(workflow_id)
                    if history.state.finished:
                        return _status(history)
                await asyncio.sleep(poll)


class WorkflowHandle(Generic[Out]):
    """A started workflow: ``await handle.result()`` is its typed output once completed."""

    def __init__(self, control: Workflows, workflow_id: str, output: type[Out]) -> None:
        self.control, self.workflow_id, self.output = control, workflow_id, output

    async def status(self) -> WorkflowStatus:
        return await self.control.status(self.workflow_id)

    async def wait(self, *, timeout: float = 30.0) -> WorkflowStatus:
        return await self.control.wait(self.workflow_id, timeout=timeout)

    async def result(self, *, timeout: float = 30.0) -> Out:
        """The output; :class:`WorkflowFinished` if it ended otherwise than completed."""
        status = await self.wait(timeout=timeout)
        if status.state != "completed":
            raise WorkflowFinished(
                f"ended {status.state}: {status.reason}",
                workflow_id=self.workflow_id, state=status.state,
            )  # fmt: skip
        return self.output.model_validate(status.output)


def _status(history: History) -> WorkflowStatus:
    state = history.state
    steps = {op: record.status for op, record in sorted(state.steps.items())}
    return WorkflowStatus(
        history.workflow_id, state.name, state.status, state.output, state.reason, steps,
        len(state.timeline),
    )  # fmt: skip
