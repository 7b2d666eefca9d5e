"""Background loops of a resource: never a silent death.

A :class:`Loop` runs one job in a task its owner always ends (``await loop.stop()`` in the
owner's close). When the job raises an error that may pass (``transient``: a lost
connection, a full outbound buffer, a timeout), it is logged, counted in
:attr:`Loop.restarts` and run again after a backoff; any other error is logged with its
traceback and handed to ``on_failure`` (the owner turns FAILED and raises it on close).
The job's own task group holds whatever runs beside it, so nothing outlives a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._errors import NATS_ERRORS, TransportError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

log = logging.getLogger("eventwire")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Seconds to wait before restart ``n`` (0-based): ``initial * 2**n``, at most
    ``maximum``; a run that lasted ``reset_after`` seconds starts the count again."""

    initial: float = 0.05
    maximum: float = 5.0
    reset_after: float = 30.0

    def delay(self, attempt: int) -> float:
        return min(self.maximum, self.initial * 2.0 ** min(attempt, 32))


def leaves(exc: BaseException) -> Iterator[BaseException]:
    """The exceptions inside ``exc`` (itself, or every leaf of an exception group)."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from leaves(inner)
    else:
        yield exc


def unwrapped(exc: BaseException) -> BaseException:
    """The one error inside a group of one (as a task group raises it), else ``exc``."""
    found = list(leaves(exc))
    return found[0] if len(found) == 1 else exc


def is_transport_error(exc: BaseException) -> bool:
    """Whether every error in ``exc`` is one of talking to NATS (which may pass)."""
    return all(isinstance(leaf, (*NATS_ERRORS, TransportError)) for leaf in leaves(exc))


class Loop:
    """One supervised background job (see the module doc)."""

    def __init__(
        self,
        name: str,
        job: Callable[[], Awaitable[None]],
        *,
        transient: Callable[[BaseException], bool],
        on_failure: Callable[[BaseException], None],
        logger: logging.Logger = log,
    ) -> None:
        self.name = name
        self.restarts = 0
        self.backoff = Backoff()
        self._job = job
        self._transient = transient
        self._on_failure = on_failure
        self._log = logger
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._stop_error: BaseException | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError(f"{self.name} was started before")
        self._task = asyncio.create_task(self._supervise(), name=self.name)

    async def stop(self, *, cancel: bool = False) -> None:
        """End the loop: wait for the job to return (its owner made it return), or with
        ``cancel`` cancel it. Raises an error the job raised while stopping."""
        self._stopping.set()
        task = self._task
        if task is None:
            return
        if cancel:
            task.cancel()
        await asyncio.wait([task])  # never raises the task's error or cancellation
        error, self._stop_error = self._stop_error, None
        if error is not None:
            raise error

    async def _supervise(self) -> None:
        attempt, loop = 0, asyncio.get_running_loop()
        while not self._stopping.is_set():
            began = loop.time()
            try:
                await self._job()
                return
            except Exception as exc:  # a group too: the job's task group raises one
                if not self._restart(exc):
                    return
            if loop.time() - began >= self.backoff.reset_after:
                attempt = 0
            await self._pause(self.backoff.delay(attempt))
            attempt += 1

    def _restart(self, exc: BaseException) -> bool:
        """Whether to run the job again after ``exc``; else it is reported."""
        error = unwrapped(exc)
        if self._stopping.is_set():
            self._stop_error = error
            return False
        if not self._transient(exc):
            self._log.error("%s died: %r", self.name, error, exc_info=error)
            self._on_failure(error)
            return False
        self.restarts += 1
        self._log.warning("%s stopped (%r); restart %d", self.name, error, self.restarts)
        return True

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()
