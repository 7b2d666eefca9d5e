"""The lifecycle every eventwire resource shares: one explicit state, one way to close.

A :class:`StatefulResource` (the bus, a subscription) is ``NEW`` until opened, ``OPENING``,
then ``RUNNING``; ``close()`` takes it through ``CLOSING`` to ``CLOSED``. It is ``FAILED``
when opening failed, when a background task died of an error it cannot recover from, or
when a step of its close failed. ``CLOSED`` and ``FAILED`` are final. Using a resource that
is not running raises :class:`ClosedResource` (:class:`ResourceFailed` if it failed, with
the cause); opening one twice raises :class:`BusyResource`.

``close()`` runs every step even when one fails (:class:`Steps`): each failure is logged,
and the first is raised once all ran; a background failure not reported yet is raised
first. Closing twice, or while another close runs, waits for that close and raises nothing.
Leaving ``async with`` with an exception in flight does not replace it: a close error is
logged and added to it as a note.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from typing import TYPE_CHECKING, Self

from ._errors import (
    NATS_ERRORS,
    BusyResource,
    ClosedResource,
    EventwireError,
    ResourceFailed,
    nats_error,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from types import TracebackType

log = logging.getLogger("eventwire")


class ResourceState(enum.StrEnum):
    """Where a bus, subscription or agent is in its life."""

    NEW = "new"
    OPENING = "opening"
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"
    FAILED = "failed"


class AsyncResource:
    """``async with`` opens (``_open``) and always closes (``close``), also when opening
    fails half-way; ``close`` must be safe to call on a half-open resource and twice.
    The plain shape, for resources without a lifecycle of their own (embedded servers)."""

    async def _open(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        try:
            await self._open()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class Steps:
    """The steps of a close: each runs even when an earlier one failed; every failure is
    logged, the first is kept (:attr:`first`) for the caller to raise after the last step."""

    def __init__(self, what: str, logger: logging.Logger = log) -> None:
        self._what = what
        self._log = logger
        self.first: BaseException | None = None

    async def run(self, step: str, action: Callable[[], Awaitable[object]]) -> None:
        try:
            await action()
        except (Exception, asyncio.CancelledError) as exc:  # cancelled: finish, then re-raise
            self._log.warning("%s: %s failed: %r", self._what, step, exc)
            if self.first is None:
                self.first = _mapped(exc, f"{self._what}: {step}")


def _mapped(exc: BaseException, what: str) -> BaseException:
    """Ours as they are; a nats-py error (or OSError) as its eventwire error, from it."""
    if isinstance(exc, NATS_ERRORS) and not isinstance(exc, EventwireError):
        mapped = nats_error(exc, what)
        mapped.__cause__ = exc
        return mapped
    return exc


class Lifecycle:
    """The state of one resource and its legal moves. ``reusable``: a closed (or failed)
    one may be opened again (an agent serves again), else ``CLOSED``/``FAILED`` are final."""

    def __init__(self, name: str, *, reusable: bool = False) -> None:
        self.name = name
        self.state = ResourceState.NEW
        self.error: BaseException | None = None
        self._reusable = reusable
        self._reported = False

    def opening(self) -> None:
        """NEW (or, if reusable, CLOSED/FAILED) -> OPENING; else Busy/ClosedResource."""
        state = self.state
        if state in (ResourceState.OPENING, ResourceState.RUNNING, ResourceState.CLOSING):
            raise BusyResource(f"{self.name} is already {state}", state=state)
        if state is not ResourceState.NEW and not self._reusable:
            raise ClosedResource(f"{self.name} is {state}: it cannot be opened again", state=state)
        self.state, self.error, self._reported = ResourceState.OPENING, None, False

    def running(self) -> None:
        if self.state is ResourceState.OPENING:
            self.state = ResourceState.RUNNING

    def fail(self, error: BaseException, *, reported: bool = False) -> bool:
        """A failure while opening or running: -> FAILED, keeping the first error. Returns
        whether this was news (the resource was not failed, closing or closed already)."""
        if self.state not in (ResourceState.OPENING, ResourceState.RUNNING):
            return False
        self.state, self.error, self._reported = ResourceState.FAILED, error, reported
        return True

    def closing(self) -> None:
        if self.state is not ResourceState.FAILED:
            self.state = ResourceState.CLOSING

    def closed(self, error: BaseException | None) -> BaseException | None:
        """The close ended (``error``: its first failure). -> CLOSED, or FAILED if it failed
        before or now; returns what the close raises: an unreported failure, else ``error``."""
        unreported = None if self._reported else self.error
        self._reported = True
        if error is not None and self.error is None:
            self.error = error
        if error is not None or self.state is ResourceState.FAILED:
            self.state = ResourceState.FAILED
        else:
            self.state = ResourceState.CLOSED
        if unreported is not None:
            return self.failure(unreported)
        return error

    def failure(self, error: BaseException, doing: str | None = None) -> ResourceFailed:
        detail = f": cannot {doing}" if doing else ""
        failed = ResourceFailed(f"{self.name} failed ({error!r}){detail}", state=self.state)
        failed.__cause__ = error
        return failed

    def check(self, doing: str) -> None:
        """Raise unless RUNNING: what ``doing`` needs is not there."""
        state = self.state
        if state is ResourceState.RUNNING:
            return
        if state is ResourceState.FAILED and self.error is not None:
            raise self.failure(self.error, doing)
        raise ClosedResource(f"{self.name} is {state}: cannot {doing}", state=state)


class StatefulResource:
    """A resource with a :class:`Lifecycle`: ``async with`` it (or :meth:`_start` it and
    ``await close()``). Subclasses implement ``_open`` (acquire) and ``_shutdown`` (release
    whatever was acquired, as :class:`Steps`; also after a half-done ``_open``)."""

    def __init__(self, name: str, logger: logging.Logger = log) -> None:
        self._life = Lifecycle(name)
        self._log = logger
        self._closing: asyncio.Future[None] | None = None

    @property
    def state(self) -> ResourceState:
        return self._life.state

    @property
    def error(self) -> BaseException | None:
        """The first error that failed it (opening, a background task, a close step)."""
        return self._life.error

    @property
    def closed(self) -> bool:
        """Whether it was closed (or failed and then closed): nothing of it runs any more."""
        return self._closing is not None and self._closing.done()

    async def _open(self) -> None:
        raise NotImplementedError

    async def _shutdown(self, steps: Steps) -> None:
        raise NotImplementedError

    def _background_failed(self, error: BaseException) -> None:
        """A background task died for good: FAILED, logged; ``close()`` will raise it."""
        if self._life.fail(error):
            self._log.error("%s failed: %r", self._life.name, error)

    async def _start(self) -> None:
        self._life.opening()
        try:
            await self._open()
        except BaseException as exc:
            self._life.fail(exc, reported=True)
            steps = Steps(f"closing {self._life.name} after a failed open", self._log)
            await self._release(steps)
            if steps.first is not None:
                exc.add_note(f"then closing {self._life.name} failed too: {steps.first!r}")
            raise
        self._life.running()

    async def _release(self, steps: Steps) -> None:
        loop = asyncio.get_running_loop()
        self._closing = closing = loop.create_future()
        try:
            await self._shutdown(steps)
        finally:
            closing.set_result(None)

    async def close(self) -> None:
        """Stop and release everything; safe twice and concurrently (see the module doc)."""
        if self._closing is not None:
            await asyncio.shield(self._closing)
            return
        if self._life.state is ResourceState.NEW:
            self._closing = asyncio.get_running_loop().create_future()
            self._closing.set_result(None)
            self._life.closed(None)
            return
        self._life.closing()
        steps = Steps(f"closing {self._life.name}", self._log)
        try:
            await self._release(steps)
        finally:
            first = steps.first
            cancelled = first if isinstance(first, asyncio.CancelledError) else None
            error = self._life.closed(None if cancelled else first)
        if cancelled is not None:  # every step ran; the caller's cancellation (timeout) goes on
            raise cancelled
        if error is not None:
            raise error

    async def __aenter__(self) -> Self:
        await self._start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.close()
        except Exception as error:
            if exc is None:
                raise
            self._log.error("%s: %r while closing, after %r", self._life.name, error, exc)
            exc.add_note(f"while closing {self._life.name}: {error!r}")
