"""The bus's audit trail: every refusal, and every keyring change, into the audit stream.

Refusals happen on the receive path, which must not wait for the audit stream: they go on
a bounded queue that one writer task, owned by the :class:`Auditor`, appends in order.
If the queue is full (the audit stream is down for long), further refusals are counted in
``dropped`` and logged as errors — never silently lost from view.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any, Self

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

    def __init__(self, log_: AuditLog, actor: str) -> None:
        self.log = log_
        self.dropped = 0
        self._actor = actor
        self._queue: asyncio.Queue[_Entry] = asyncio.Queue(_QUEUE)
        self._writer: asyncio.Task[None] | None = None
        self._watcher: KeyringWatcher | None = None

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
        from ._audit_log import AuditLog
        from ._keyring_store import KeyringWatcher

        opened = await AuditLog.open(js, publisher, root, writer, replicas=replicas, create=create)
        auditor = cls(opened, actor)
        auditor._writer = asyncio.create_task(auditor._write_loop(), name="eventwire-audit")
        if admins is not None and keyring is not None:
            auditor._watcher = KeyringWatcher(
                js, root, admins, keyring,
                on_refused=auditor._keyring_refused, on_applied=auditor._keyring_applied,
                replicas=replicas, create=create,
            )  # fmt: skip
            await auditor._watcher.__aenter__()
        return auditor

    def refused(self, rejection: Rejection) -> None:
        """Queue a refused event (called on the receive path; never blocks)."""
        details = {"kid": rejection.kid, "detail": rejection.detail[:500]}
        self.note("refused", rejection.wire_subject, rejection.reason, details)

    def note(self, action: str, subject: str, reason: str, details: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait((self._actor, action, subject, reason, details))
        except asyncio.QueueFull:
            self.dropped += 1
            log.error("audit queue full: %s %s (%s) not recorded", action, subject, reason)

    async def _write_loop(self) -> None:
        from ._audit_log import AuditLogError

        while True:
            actor, action, subject, reason, details = await self._queue.get()
            try:
                await self.log.record(actor, action, subject, reason, details)
            except AuditLogError:
                log.exception("could not record %s %s (%s)", action, subject, reason)
            finally:
                self._queue.task_done()

    async def _keyring_refused(self, refusal: KeyringRefusal) -> None:
        details = {"revision": refusal.revision, "detail": refusal.detail[:500]}
        self.note("keyring.refused", "keyring", refusal.reason, details)

    async def _keyring_applied(self, document: KeyringDocument) -> None:
        details = {"version": document.version, "keys": len(document.keys)}
        self.note("keyring.applied", "keyring", "new version", details)

    async def close(self, drain_timeout: float = 5.0) -> None:
        """Stop the keyring watch, write what is queued (bounded wait), stop the writer."""
        if self._watcher is not None:
            await self._watcher.__aexit__(None, None, None)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(drain_timeout):
                await self._queue.join()
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        if not self._queue.empty():
            log.error("%d audit records not written at close", self._queue.qsize())
