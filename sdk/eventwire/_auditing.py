"""The bus's audit trail: every refusal, and every keyring change, into the audit stream.

Refusals happen on the receive path, which must not wait for the audit stream: they go on
a bounded queue that one writer task, owned by the :class:`Auditor`, appends in order.
If the queue is full (the audit stream is down for long), further refusals are counted in
``dropped`` and logged as errors — never silently lost from view.

The writer task is the Auditor's: started by :meth:`Auditor.open`, cancelled and awaited
by :meth:`Auditor.close`, which always completes (the queue is drained for at most
``drain_timeout`` seconds, less if the writer is gone). A record that cannot be written is
logged with its error and counted in ``failures``; the writer goes on with the next one. A
writer that stops anyway (cancelled from outside) is logged at error when it stops,
:attr:`Auditor.running` turns false with the cause in :attr:`Auditor.error`, and further
refusals are counted in ``dropped`` and logged instead of queued for no one. The writer
first calls :meth:`AuditLog.report_findings`: bad messages that ``connect()`` found in the
stream (or had no time to read past, see ``max_scan``) are recorded in the background.

Signed records. With a writer identity (``connect(audit_identity=...)``) the log counts
only records signed by a key of the bus's keyring (the tenant's trusted keys, kept in step
by the keyring watch), so the identity must be one of them (else :class:`ConfigError`).
Without one, records are unsigned and the log is read chain-only (see
:mod:`eventwire._audit_log`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any, Self

from ._errors import NotRunning

if TYPE_CHECKING:
    from nats.js import JetStreamContext

    from eventwire_security import Identity, Keyring, KeyringDocument

    from ._audit_log import AuditLog
    from ._codec import Rejection
    from ._keyring_store import KeyringRefusal, KeyringWatcher
    from ._publisher import AckedPublisher

log = logging.getLogger("eventwire.audit")
_QUEUE = 10_000
_Entry = tuple[str, str, str, str, dict[str, Any]]  # actor, action, subject, reason, details


class Auditor:
    """Writes the bus's security decisions to ``<root>-audit``; optionally keeps the keyring
    in step with the signed document in ``<root>-keyring``."""

    def __init__(self, actor: str) -> None:
        self.dropped = 0
        self.failures = 0
        self.error: BaseException | None = None
        self._actor = actor
        self._log: AuditLog | None = None
        self._queue: asyncio.Queue[_Entry] = asyncio.Queue(_QUEUE)
        self._writer: asyncio.Task[None] | None = None
        self._watcher: KeyringWatcher | None = None
        self._closing = False

    @classmethod
    async def open(
        cls,
        js: JetStreamContext,
        publisher: AckedPublisher,
        root: str,
        *,
        actor: str,
        writer: Identity | None,
        replicas: int,
        admins: Keyring | None = None,
        keyring: Keyring | None = None,
        create: bool = True,
    ) -> Self:
        """Follow the keyring (if ``admins``), open the log, start the writer; on failure
        nothing is left running."""
        from ._audit_log import AuditLog  # the admin modules load on first use
        from ._keyring_store import KeyringWatcher

        auditor = cls(actor)
        try:
            if admins is not None and keyring is not None:
                auditor._watcher = KeyringWatcher(
                    js, root, admins, keyring,
                    on_refused=auditor._keyring_refused, on_applied=auditor._keyring_applied,
                    replicas=replicas, create=create,
                )  # fmt: skip
                await auditor._watcher.__aenter__()
            writers = keyring if writer is not None else None
            auditor._log = await AuditLog.open(
                js, publisher, root, writer, writers=writers, replicas=replicas,
                create=create, actor=actor,
            )  # fmt: skip
        except BaseException:
            await auditor.close(drain_timeout=0)
            raise
        auditor._writer = asyncio.create_task(auditor._write_loop(), name="eventwire-audit")
        auditor._writer.add_done_callback(auditor._writer_stopped)
        return auditor

    @property
    def log(self) -> AuditLog:
        if self._log is None:
            raise NotRunning("the audit log is not open")
        return self._log

    @property
    def running(self) -> bool:
        """Whether the writer task is alive (false before open, after close, or if it died)."""
        return self._writer is not None and not self._writer.done()

    def refused(self, rejection: Rejection) -> None:
        """Queue a refused event (called on the receive path; never blocks)."""
        details = {"kid": rejection.kid, "detail": rejection.detail[:500]}
        self.note("refused", rejection.wire_subject, rejection.reason, details)

    def note(self, action: str, subject: str, reason: str, details: dict[str, Any]) -> None:
        if self._writer is not None and self._writer.done():
            self.dropped += 1
            log.error("audit writer stopped: %s %s (%s) not recorded", action, subject, reason)
            return
        try:
            self._queue.put_nowait((self._actor, action, subject, reason, details))
        except asyncio.QueueFull:
            self.dropped += 1
            log.error("audit queue full: %s %s (%s) not recorded", action, subject, reason)

    async def _write_loop(self) -> None:
        try:  # what open() found and could not report yet (a flood past max_scan)
            await self.log.report_findings()
        except Exception:
            log.exception("could not record the bad messages of the audit stream")
        while True:
            actor, action, subject, reason, details = await self._queue.get()
            try:
                await self.log.record(actor, action, subject, reason, details)
            except Exception:  # any failure is this record's, not the writer's: go on
                self.failures += 1
                log.exception("could not record %s %s (%s)", action, subject, reason)
            finally:
                self._queue.task_done()

    def _writer_stopped(self, task: asyncio.Task[None]) -> None:
        if self._closing:
            return
        self.error = asyncio.CancelledError() if task.cancelled() else task.exception()
        log.error(
            "the audit writer stopped (%r): %d queued records and further refusals will not "
            "be recorded", self.error, self._queue.qsize(),
        )  # fmt: skip

    async def _keyring_refused(self, refusal: KeyringRefusal) -> None:
        details = {"revision": refusal.revision, "detail": refusal.detail[:500]}
        self.note("keyring.refused", "keyring", refusal.reason, details)

    async def _keyring_applied(self, document: KeyringDocument) -> None:
        details = {"version": document.version, "keys": len(document.keys)}
        self.note("keyring.applied", "keyring", "new version", details)

    async def close(self, drain_timeout: float = 5.0) -> None:
        """Stop the keyring watch, write what is queued (bounded wait), stop the writer.

        Always completes: errors of the watch are logged, a dead writer is not waited for.
        """
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            try:
                await watcher.__aexit__(None, None, None)
            except Exception:
                log.exception("stopping the keyring watch failed")
        writer = self._writer
        if writer is not None and not writer.done():
            await self._drain(writer, drain_timeout)
        self._closing = True
        if writer is not None:
            writer.cancel()
            await asyncio.wait([writer])  # never raises the writer's error or cancellation
        if not self._queue.empty():
            log.error("%d audit records not written at close", self._queue.qsize())

    async def _drain(self, writer: asyncio.Task[None], timeout: float) -> None:
        """Wait until the queue is written, the writer is gone, or ``timeout`` passed."""
        joined = asyncio.create_task(self._queue.join(), name="eventwire-audit-drain")
        try:
            await asyncio.wait(
                [joined, writer], timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            joined.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await joined
