"""The handlers an agent registered, and how an event reaches them: the dispatch of each
of the agent's consumers (its own pattern's handlers, the narrower patterns it delivers
for, or the fallback), with the event as the current one (``current_event``: what
``Agent.publish`` takes correlation and causation from) and the agent's load tracked."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from typing import TYPE_CHECKING

from ._errors import Unprocessable
from ._subjects import matches
from ._work import broadcast_subject

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from ._choose import LoadMeter
    from ._event import Event

    Handler = Callable[[Event], Awaitable[None]]

log = logging.getLogger("eventwire.agent")

current_event: contextvars.ContextVar[Event | None] = contextvars.ContextVar(
    "eventwire_current_event", default=None
)


class HandlerTable:
    """The handlers of agent ``name`` by pattern, its ``fallback``, how many events no
    handler claimed (``unhandled``), and the tasks running its handlers (``abandon``
    cancels them); ``load`` tracks how many run."""

    def __init__(self, name: str, load: LoadMeter) -> None:
        self.name = name
        self.load = load
        self.handlers: dict[str, list[Handler]] = {}
        self.fallback: Handler | None = None
        self.unhandled = 0
        self._handling: set[asyncio.Task[object]] = set()  # running this agent's handlers

    def dispatcher(self, pattern: str, inner: Sequence[str] = ()) -> Handler:
        """The handler of ``pattern``'s consumer: its own handlers, those of the narrower
        ``inner`` patterns it delivers for (bind-only, see ``_capabilities``), or the fallback."""

        async def dispatch(event: Event) -> None:
            handlers = self.handlers.get(pattern)
            if inner:
                extra = [h for p in inner if matches(p, event.subject) for h in self.handlers[p]]
                handlers = [*(handlers or ()), *extra] if extra else handlers
            if handlers is None:
                if any(matches(p, event.subject) for p in self.handlers):
                    return  # another handler's own subscription delivers it
                await self._unclaimed(event)
                return
            await self._run(event, handlers)

        return dispatch

    async def work(self, event: Event) -> None:
        """One-of-N work: the handlers of the capability subject it stands for."""
        subject = broadcast_subject(event.subject) or event.subject
        handlers = [h for p, hs in self.handlers.items() if matches(p, subject) for h in hs]
        if handlers:
            await self._run(event, handlers)
        else:
            await self._unclaimed(event)

    async def _unclaimed(self, event: Event) -> None:
        if self.fallback is None:
            self.unhandled += 1
            log.info("%s: no handler for %s (%s)", self.name, event.subject, event.type)
            return
        await self._run(event, [self.fallback])

    async def _run(self, event: Event, handlers: list[Handler]) -> None:
        token = current_event.set(event)
        task = asyncio.current_task()
        assert task is not None  # a consumer always runs handlers in a task
        self._handling.add(task)
        try:
            with self.load.track():
                for handler in handlers:
                    await self._call(handler, event)
        finally:
            self._handling.discard(task)
            current_event.reset(token)

    async def _call(self, handler: Handler, event: Event) -> None:
        """Run ``handler``; a failure is logged here (with its traceback) and raised on."""
        try:
            await handler(event)
        except Unprocessable as exc:
            log.warning("%s: %s refused event %s: %s", self.name, _named(handler), event.id, exc)
            raise
        except Exception:
            log.exception(
                "%s: handler %s failed on event %s (%s)",
                self.name, _named(handler), event.id, event.subject,
            )  # fmt: skip
            raise

    def abandon(self) -> None:
        """The drain took too long: cancel the handlers still running (their events were
        not acknowledged: the server redelivers them after ``ack_wait``)."""
        if self._handling:
            log.warning(
                "%s: %d handlers still running at the drain timeout: cancelled, their events "
                "will be redelivered", self.name, len(self._handling),
            )  # fmt: skip
        for task in self._handling:
            task.cancel()


def _named(handler: object) -> str:
    return str(getattr(handler, "__qualname__", None) or repr(handler))
