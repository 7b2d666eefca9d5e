"""The worker side of workflow steps: :class:`StepWorker` answers step requests once.

A step request (a signed direct request from the orchestrator) carries an idempotency key
(workflow id, epoch, operation number). The worker keeps each key's outcome in the KV
bucket ``<root>-wfsteps`` (keyed by a hash, never the key itself), so a resumed workflow
that asks again gets the recorded result and the action does not run twice. Within one
process, requests with the same key wait for each other.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import defaultdict
from typing import TYPE_CHECKING, Any, TypeVar

import nats.js.errors
from nats.js.api import KeyValueConfig
from pydantic import BaseModel, ValidationError

from eventwire_security import EventwireError

from ._buckets import open_bucket
from ._errors import InvalidArgument, mapped_nats_errors
from ._kinds import CustomEvent, ErrorReported
from ._workflow_defs import RESULT_TYPE
from ._workflow_runner import REJECTED

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from nats.js.kv import KeyValue

    from ._bus import Bus
    from ._event import Event, Publishable

__all__ = ["StepRejected", "StepWorker"]

M = TypeVar("M", bound=BaseModel)
_KEEP = 7 * 24 * 3600.0


class StepRejected(EventwireError):
    """Raised by a step action to fail the step for good (no retry); the workflow compensates."""


class StepWorker:
    """The step actions of one agent: ``@steps.action("book", input=Trip)``; answer with
    ``agent.on_request(steps.handle)`` (or ``bus.serve_requests(identity, steps.handle)``)."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._actions: dict[str, tuple[type[BaseModel], Callable[[Any], Awaitable[BaseModel]]]] = {}
        self._bucket: KeyValue | None = None
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._users: defaultdict[str, int] = defaultdict(int)

    def action(
        self, name: str, *, input: type[M]
    ) -> Callable[[Callable[[M], Awaitable[BaseModel]]], Callable[[M], Awaitable[BaseModel]]]:
        """Register ``name``: an async function of an ``input`` model returning a model."""
        if not isinstance(name, str) or not name:
            raise InvalidArgument("must be a non-empty string", field="name")
        if not (isinstance(input, type) and issubclass(input, BaseModel)):
            raise InvalidArgument("must be a pydantic model class", field="input")

        def register(
            function: Callable[[M], Awaitable[BaseModel]],
        ) -> Callable[[M], Awaitable[BaseModel]]:
            self._actions[name] = (input, function)
            return function

        return register

    async def handle(self, event: Event) -> Publishable:
        """Answer one step request: the recorded outcome of its key, or run the action."""
        data = event.data
        raw = data.get("key") if isinstance(data, dict) else None
        if not isinstance(data, dict) or not isinstance(raw, str):
            return _rejected("not a workflow step request")
        key = hashlib.sha256(raw.encode()).hexdigest()[:48]
        self._users[key] += 1
        try:
            async with self._locks[key]:
                outcome = await self._recorded(key)
                if outcome is None:
                    outcome = await self._run(data)
                    await self._record(key, outcome)
        finally:
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key], self._locks[key]
        if "rejected" in outcome:
            return _rejected(str(outcome["rejected"]))
        return CustomEvent("custom.workflow.result", RESULT_TYPE, {"result": outcome["result"]})

    async def _run(self, data: dict[str, Any]) -> dict[str, Any]:
        found = self._actions.get(str(data.get("action")))
        if found is None:
            return {"rejected": f"no action {data.get('action')!r} here"}
        model, function = found
        try:
            request = model.model_validate(data.get("input"))
        except ValidationError as exc:
            return {"rejected": f"input is not a {model.__name__}: {exc.errors()[0]['msg']}"}
        try:
            result = await function(request)
        except StepRejected as exc:
            return {"rejected": str(exc)}
        if not isinstance(result, BaseModel):
            return {"rejected": f"action returned a {type(result).__name__}, not a model"}
        return {"result": result.model_dump(mode="json")}

    async def _kv(self) -> KeyValue:
        if self._bucket is None:
            config = KeyValueConfig(
                bucket=f"{self.bus.root}-wfsteps", history=1, ttl=_KEEP, replicas=self.bus.replicas
            )
            with mapped_nats_errors("open the workflow steps bucket"):
                self._bucket = await open_bucket(self.bus.jetstream, config, create=True)
        return self._bucket

    async def _recorded(self, key: str) -> dict[str, Any] | None:
        bucket = await self._kv()
        try:
            with mapped_nats_errors("read a step outcome"):
                entry = await bucket.get(key)
        except EventwireError as exc:
            if isinstance(exc.__cause__, nats.js.errors.KeyNotFoundError):
                return None
            raise
        return json.loads(entry.value or b"null")  # type: ignore[no-any-return] # our JSON

    async def _record(self, key: str, outcome: dict[str, Any]) -> None:
        bucket = await self._kv()
        with mapped_nats_errors("record a step outcome"):
            await bucket.put(key, json.dumps(outcome).encode())


def _rejected(message: str) -> ErrorReported:
    return ErrorReported(severity="warning", message=message, code=REJECTED)
