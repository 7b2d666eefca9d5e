"""The worker side of workflow steps: :class:`StepWorker` answers step requests once.

A step request (a signed direct request from the orchestrator) carries an idempotency key
(workflow id, epoch, operation number). The worker keeps each key's outcome in the KV
bucket ``<root>-wfsteps`` (keyed by a hash, never the key itself), so a resumed workflow
that asks again gets the recorded result and the action does not run twice. Within one
process, requests with the same key wait for each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any, TypeVar

import nats.js.errors
from pydantic import BaseModel, ValidationError

from eventwire_security import EventwireError

from ._buckets import open_bucket
from ._errors import InvalidArgument, mapped_nats_errors
from ._kinds import CustomEvent, ErrorReported
from ._streams import wfsteps_config
from ._workflow_defs import RESULT_TYPE
from ._workflow_runner import REJECTED

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from nats.js.kv import KeyValue

    from ._bus import Bus
    from ._event import Event, Publishable

__all__ = ["StepRejected", "StepWorker"]

F = TypeVar("F", bound="Callable[[Any], Awaitable[BaseModel]]")
BUSY = "step-busy"  # the code of the answer while another instance runs the step


class StepRejected(EventwireError):
    """Raised by a step action to fail the step for good (no retry); the workflow compensates."""


class StepWorker:
    """The step actions of one agent: ``@steps.action("book", input=Trip)``; answer with
    ``agent.on_request(steps.handle)`` (or ``bus.serve_requests(identity, steps.handle)``).
    Before running an action the worker claims its key in KV, so two instances never run
    one step at once (the second answers "busy" and the orchestrator retries); a claim older
    than ``claim_timeout`` seconds is taken to be its holder's death and taken over."""

    def __init__(self, bus: Bus, *, claim_timeout: float = 300.0) -> None:
        self.bus = bus
        self.claim_timeout = claim_timeout
        self._actions: dict[str, tuple[type[BaseModel], Callable[[Any], Awaitable[BaseModel]]]] = {}
        self._bucket: KeyValue | None = None
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._users: defaultdict[str, int] = defaultdict(int)

    def action(self, name: str, *, input: type[BaseModel]) -> Callable[[F], F]:
        """Register ``name``: an async function of an ``input`` model returning a model."""
        if not isinstance(name, str) or not name:
            raise InvalidArgument("must be a non-empty string", field="name")
        if not (isinstance(input, type) and issubclass(input, BaseModel)):
            raise InvalidArgument("must be a pydantic model class", field="input")

        def register(function: F) -> F:
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
                outcome = await self._outcome(key, data)
        except _Busy:
            return ErrorReported(severity="info", message="step in progress", code=BUSY)
        finally:
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key], self._locks[key]
        if "rejected" in outcome:
            return _rejected(str(outcome["rejected"]))
        return CustomEvent("custom.workflow.result", RESULT_TYPE, {"result": outcome["result"]})

    async def _outcome(self, key: str, data: dict[str, Any]) -> dict[str, Any]:
        """The recorded outcome, or claim the key, run the action and record its outcome.
        A claim older than ``claim_timeout`` (its holder died) may be taken over."""
        bucket = await self._kv()
        found = await self._recorded(bucket, key)
        if found is not None and "running" not in found[0]:
            return found[0]
        if found is not None and time.time() - float(found[0]["running"]) < self.claim_timeout:
            raise _Busy
        revision = await self._claim(bucket, key, None if found is None else found[1])
        try:
            outcome = await self._run(data)
        except BaseException:
            with contextlib.suppress(Exception):  # let a retry run it again
                await bucket.delete(key, last=revision)
            raise
        with mapped_nats_errors("record a step outcome"):
            await bucket.put(key, json.dumps(outcome).encode())
        return outcome

    async def _claim(self, bucket: KeyValue, key: str, last: int | None) -> int:
        claim = json.dumps({"running": time.time()}).encode()
        try:
            with mapped_nats_errors("claim a step"):
                if last is None:
                    return await bucket.create(key, claim)
                return await bucket.update(key, claim, last=last)
        except EventwireError as exc:
            if isinstance(exc.__cause__, nats.js.errors.KeyWrongLastSequenceError):
                raise _Busy from None  # another instance claimed it first
            raise

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
            config = wfsteps_config(self.bus.root, replicas=self.bus.replicas)
            with mapped_nats_errors("open the workflow steps bucket"):
                self._bucket = await open_bucket(
                    self.bus.jetstream, config, create=self.bus.provisions
                )
        return self._bucket

    async def _recorded(self, bucket: KeyValue, key: str) -> tuple[dict[str, Any], int] | None:
        try:
            with mapped_nats_errors("read a step outcome"):
                entry = await bucket.get(key)
        except EventwireError as exc:
            if isinstance(exc.__cause__, nats.js.errors.KeyNotFoundError):
                return None
            raise
        return json.loads(entry.value or b"null"), int(entry.revision or 0)


class _Busy(Exception):
    """Another instance is running this step now."""


def _rejected(message: str) -> ErrorReported:
    return ErrorReported(severity="warning", message=message, code=REJECTED)
