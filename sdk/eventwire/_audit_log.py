"""The audit log: an append-only, hash-chained JetStream stream of security decisions.

Stream ``<root>-audit``, subjects ``<root>.audit.>`` (records are published on
``<root>.audit.log``), file storage, LIMITS retention with no limits and ``discard: new``
(should a limit ever be set, new records are refused rather than old ones dropped), and
``deny_delete`` / ``deny_purge``: the server refuses to delete or purge records, and refuses
a configuration update that would lift either flag. Rollup headers stay disallowed. What
the flags cannot stop is deleting the stream as a whole: deny
``$JS.API.STREAM.DELETE.<root>-audit`` (and updates) to every user but an operator, and keep
the last head (:attr:`AuditLog.head`) somewhere else to notice a truncated tail.

Message format. Without a writer identity a message is the record's canonical JSON
(:meth:`AuditRecord.to_json`). With one it is :func:`sign_record`'s compact JWS of the
record. A record's ``seq`` is the stream sequence it is stored at and ``prev_seq`` the
stream sequence of the valid record it follows: the sequences in between hold bad messages
the writer skipped.

Hostile writers. Every agent may append to the stream (it appends its own refusals), so the
stream may hold anything: garbage, copies of valid records, records signed by strangers.
None of it can stop a writer or a reader: a bad message is a finding, never an error.

* Valid records. With ``writers`` (a keyring of the writers' keys) only records signed by
  one of them count; unsigned records and other signatures are findings. Without
  ``writers`` (chain-only) every well-formed record counts, signed or not, signatures
  unchecked: the chain still shows an edit or a removal among the records and no one can
  lock the log, but anyone who may append can append records that count. In both modes a
  record also counts only at the stream sequence it names, so a re-published copy of a
  valid record is a finding (``audit-replayed``), wherever it is copied to.
* Appending. The head is the last valid record: the writer reads the stream's last message
  and, while it is not a valid record, the one before. It never reads a message twice (it
  remembers which ones it found bad), and :meth:`AuditLog.open` reads at most ``max_scan``
  bad ones: past that it returns with the head unknown (:attr:`AuditLog.head` is ``None``,
  :attr:`AuditLogStats.unresolved` true) and the first append goes on reading, however
  long it takes, so a flood slows the first append after it, never ``connect()``. The new
  record links to the head with ``prev_seq`` and ``prev_hash``, so the skipped sequences
  are visible in the chain. Each bad message skipped is logged at error, counted in
  :attr:`AuditLog.stats` and appended as a record of its own (action ``audit.rejected``,
  subject the stream name, reason the finding's reason, details ``stream_seq`` and
  ``detail``; past :data:`MAX_REPORTED` in one go, one more record with reason
  ``audit-many`` counts the rest): by :meth:`AuditLog.open` when it finds them there, else
  right after the record whose append met them. A report that cannot be stored is logged
  and retried with the next append; two writers racing over the same bad message may both
  report it.
* History. Nothing appended changes how earlier messages are judged: records are valid or
  not from their own bytes and position, and stored messages cannot be edited or removed.
  A hostile writer can add findings (and, chain-only, records), never hide or rewrite one.
* Reading. :meth:`AuditLog.verify` returns an :class:`AuditReport` and :meth:`AuditLog.tail`
  can yield :class:`AuditFinding` objects: ``rejected`` for bad messages, ``broken`` for a
  valid record that does not link to the valid record before it (a gap or an edit among
  valid records, see :mod:`eventwire._audit_report`).

Appends. Each record is published with ``Nats-Expected-Last-Sequence`` set to the stream's
last sequence, so two writers (or two processes) cannot fork the chain: the loser's publish
is refused (err_code 10071), it re-reads the head and tries again after a jittered, growing
pause, up to ``attempts`` times (each lost race means another message was stored; many busy
writers contend for one chain, so prefer few writers per root). ``Nats-Msg-Id`` is the
record's hash, so a publish retried after a lost ack is not stored twice; a duplicate ack
counts only if the stream's head then is this record (an id pre-claimed by someone else
is one more lost race). Appends of one :class:`AuditLog` are serialized by an
:class:`asyncio.Lock`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, overload

import nats.errors
import nats.js.errors

from eventwire_security import SecurityError, audit_stream_name, audit_subject
from eventwire_security._audit import (
    AuditChain,
    AuditRecord,
    AuditRecordInvalid,
    read_stored,
    sign_record,
)

from ._audit_report import (
    AuditCorrupted,
    AuditFinding,
    AuditLogError,
    AuditReport,
    AuditWriteFailed,
    ChainScan,
    FindingKind,
    InvalidAuditRecord,
)
from ._errors import ConfigError, StreamConfigError
from ._streams import audit_stream_config, ensure_stream

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, AsyncIterator, Mapping

    from nats.js import JetStreamContext
    from nats.js.api import PubAck

    from eventwire_security import Identity, Keyring

    from ._publisher import AckedPublisher

__all__ = [
    "MAX_REPORTED",
    "AuditCorrupted",
    "AuditFinding",
    "AuditLog",
    "AuditLogError",
    "AuditLogStats",
    "AuditReport",
    "AuditWriteFailed",
    "FindingKind",
    "InvalidAuditRecord",
    "audit_stream_config",
    "audit_stream_name",
    "audit_subject",
]

log = logging.getLogger("eventwire.audit")
_WRONG_LAST_SEQUENCE = 10071  # JSStreamWrongLastSequenceErrF
_PUBLISH_ATTEMPTS = 3
_MAX_BACKOFF = 0.25  # seconds; a writer that lost the race waits up to this, jittered
MAX_REPORTED = 32  # finding records one writer appends in one go; one more counts the rest
_READ_AHEAD = 64  # messages requested at once when reading back over bad ones
DEFAULT_MAX_SCAN = 1_000  # bad messages open() reads at most (about 0.3 s on loopback)
_Entry = tuple[str, str, str, str, dict[str, Any]]  # actor, action, subject, reason, details


@dataclass(slots=True)
class AuditLogStats:
    """What the writer met while finding the head: bad messages by reason, the finding
    records it appended, and whether the head is still to be found (``max_scan`` bad
    messages read at open; the next append reads on)."""

    rejected: Counter[str] = field(default_factory=Counter)
    reported: int = 0
    unresolved: bool = False


def _stream_seq(finding: AuditFinding) -> int:
    return finding.stream_seq


def _safe(detail: str) -> str:
    """A finding's detail as record text: bounded, and no lone surrogates (not UTF-8)."""
    return detail[:500].encode("utf-8", "backslashreplace").decode("utf-8")


class AuditLog:
    """Appends records to, tails and verifies the audit stream of one subject root.

    Create it with :meth:`open`. It owns no task: :meth:`tail` closes its consumer when the
    iteration ends (use ``contextlib.aclosing`` when breaking out of it early).
    """

    def __init__(
        self,
        js: JetStreamContext,
        publisher: AckedPublisher | None,
        root: str,
        writer: Identity | None,
        *,
        writers: Keyring | None,
        attempts: int,
        timeout: float,
        actor: str,
        max_scan: int,
    ) -> None:
        self._js = js
        self._publisher = publisher
        self._root = root
        self._writer = writer
        self._writers = writers
        self._attempts = attempts
        self._timeout = timeout
        self._actor = actor
        self._max_scan = max_scan
        self._lock = asyncio.Lock()
        self._head: AuditRecord | None = None
        self._last_seq = 0  # the stream's last sequence, as last read
        self._base = 0  # the head's sequence; every message in (base, last_seq] is bad
        self._resolved = False  # else the messages up to base are still to be read
        self._pending: list[AuditFinding] = []  # to report, at most MAX_REPORTED
        self._overflow: tuple[int, int, int] | None = None  # more of them: first, last, count
        self.stats = AuditLogStats()
        self.stream = audit_stream_name(root)
        self.subject = audit_subject(root)

    @classmethod
    async def open(
        cls,
        js: JetStreamContext,
        publisher: AckedPublisher | None,
        root: str,
        writer: Identity | None = None,
        *,
        writers: Keyring | None = None,
        replicas: int = 1,
        create: bool = True,
        attempts: int = 30,
        timeout: float = 5.0,
        actor: str | None = None,
        max_scan: int = DEFAULT_MAX_SCAN,
    ) -> AuditLog:
        """Create (``create``) or bind to the stream and find the head to append after.

        Without a ``publisher`` the log is read-only (:meth:`tail`, :meth:`verify`) and the
        head is not read. ``writer`` signs every record appended; ``writers`` is the keyring
        whose signatures make records count (see the module doc). ``actor`` names this log
        in the finding records it appends (default: the writer's source, or ``eventwire``).
        Bad messages never make it fail: they are findings, reported as the module doc says.
        """
        unsigned = writer is None or (writers is not None and writer.kid not in writers)
        if publisher is not None and writers is not None and unsigned:
            raise ConfigError("records must be signed by `writers`: give a `writer` of them")
        if max_scan < 1:
            raise ConfigError(f"max_scan must be at least 1, got {max_scan}")
        actor = actor or (writer.principal.source if writer is not None else "eventwire")
        log_ = cls(
            js, publisher, root, writer, writers=writers, attempts=attempts, timeout=timeout,
            actor=actor, max_scan=max_scan,
        )  # fmt: skip
        try:
            await log_._ensure(replicas, create)
            if publisher is not None:
                await log_._load_head(budget=max_scan)
        except (nats.errors.Error, TimeoutError) as exc:
            raise AuditLogError(f"cannot open the audit stream {log_.stream!r}: {exc!r}") from exc
        if log_._resolved:
            async with log_._lock:
                await log_._report_quietly()
        return log_

    @property
    def head(self) -> AuditRecord | None:
        """The last valid record this log appended or found as the stream's head (``None``
        for an empty log, or while :attr:`AuditLogStats.unresolved`)."""
        return self._head

    async def report_findings(self) -> int:
        """Find the head if :meth:`open` left it unknown, and append a record for each bad
        message found and not reported yet; returns how many records that took (the Bus's
        writer task calls it when it starts). Raises :class:`AuditWriteFailed`."""
        if self._publisher is None:
            raise AuditWriteFailed("this audit log was opened read-only")
        async with self._lock:
            reported = self.stats.reported
            if not self._resolved:
                await self._reload()
            await self._report()
            return self.stats.reported - reported

    async def _ensure(self, replicas: int, create: bool) -> None:
        if create:
            await ensure_stream(self._js, audit_stream_config(self._root, replicas=replicas))
        try:
            info = await self._js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            raise AuditLogError(f"there is no audit stream {self.stream!r}") from None
        config = info.config
        if not (config.deny_delete and config.deny_purge) or config.allow_rollup_hdrs:
            raise StreamConfigError(
                f"stream {self.stream!r} must deny deletes and purges and refuse rollups"
            )

    async def _load_head(self, budget: int | None = None) -> None:
        """Find the last valid record, from the stream's last message backwards."""
        try:
            raw = await self._js.get_last_msg(self.stream, f"{self._root}.audit.>")
        except nats.js.errors.NotFoundError:  # nothing stored yet (nothing can be removed)
            self._head, self._last_seq, self._base, self._resolved = None, 0, 0, True
            return
        bad = await self._scan_back(int(raw.seq or 0), raw.data or b"", budget)
        self.stats.unresolved = not self._resolved
        if not self._resolved:
            log.warning(
                "%s: no valid record in the last %d messages read; the next append reads on",
                self.stream, len(bad),
            )  # fmt: skip
        self._note(bad)

    async def _scan_back(self, last: int, data: bytes, budget: int | None) -> list[AuditFinding]:
        """Read back from ``last`` (whose message is ``data``) to the last valid record,
        skipping the messages known to be bad; stop after ``budget`` bad ones (only on a
        first read, so that the known bad messages stay one range). Returns the bad ones."""
        assert budget is None or self._last_seq == 0
        bad: list[AuditFinding] = []
        ranges = [(last, self._last_seq)] + ([] if self._resolved else [(self._base, 0)])
        self._last_seq = last
        size = 1  # messages read at once: 1, then more while they keep being bad
        for start, stop in ranges:
            position = start
            while position > stop:
                window = range(position, max(stop, position - size), -1)
                size = min(size * 4, _READ_AHEAD)
                for at, message in zip(window, await self._read(window, last, data), strict=True):
                    if budget is not None and len(bad) >= budget:
                        self._base = at  # messages up to here are still to be read
                        return bad
                    try:
                        record = read_stored(message, at, self._writers)
                    except SecurityError as exc:
                        bad.append(AuditFinding.of(at, FindingKind.REJECTED, exc, None))
                        continue
                    self._head, self._base, self._resolved = record, at, True
                    return bad
                position = window[-1] - 1
        if not self._resolved:  # read down to the first message: no valid record at all
            self._head, self._base, self._resolved = None, 0, True
        return bad

    async def _read(self, window: range, last: int, data: bytes) -> list[bytes]:
        """The messages at ``window``'s stream sequences (``data`` is the one at ``last``),
        requested all at once."""
        results = await asyncio.gather(
            *(self._message(at) for at in window if at != last), return_exceptions=True
        )
        found = []
        for result in results:
            if isinstance(result, BaseException):
                raise result
            found.append(result)
        found.reverse()
        return [data if at == last else found.pop() for at in window]

    async def _message(self, position: int) -> bytes:
        try:
            return (await self._js.get_msg(self.stream, position)).data or b""
        except nats.js.errors.NotFoundError:
            return b""  # not stored (cannot happen under deny_delete): not a record either

    def _note(self, bad: list[AuditFinding]) -> None:
        """Log, count and queue for reporting the bad messages just read."""
        overflowed = False
        for finding in sorted(bad, key=_stream_seq):
            self.stats.rejected[finding.reason] += 1
            if len(self._pending) < MAX_REPORTED:
                self._pending.append(finding)
                log.error(
                    "%s: bad message at stream seq %d skipped (%s): %s",
                    self.stream, finding.stream_seq, finding.reason, finding.detail,
                )  # fmt: skip
            else:
                first, _, count = self._overflow or (finding.stream_seq, 0, 0)
                self._overflow = (first, finding.stream_seq, count + 1)
                overflowed = True
        if self._overflow is not None and overflowed:
            first, last, count = self._overflow
            log.error(
                "%s: %d more bad messages, stream seq %d to %d", self.stream, count, first, last
            )

    async def _report_quietly(self) -> None:
        """Append a record for each bad message found (call with the lock held); a failure
        is logged and the findings stay queued for the next append."""
        try:
            await self._report()
        except AuditLogError as exc:
            log.error("%s: findings not recorded yet: %s", self.stream, exc)

    async def _report(self) -> None:
        while self._pending:
            finding = self._pending[0]
            details = {"stream_seq": finding.stream_seq, "detail": _safe(finding.detail)}
            await self._append(
                (self._actor, "audit.rejected", self.stream, finding.reason, details)
            )
            self._pending.pop(0)
            self.stats.reported += 1
        if self._overflow is not None:
            first, last, count = self._overflow
            details = {"first_seq": first, "last_seq": last, "count": count}
            await self._append((self._actor, "audit.rejected", self.stream, "audit-many", details))
            self._overflow = None
            self.stats.reported += 1

    async def record(
        self,
        actor: str,
        action: str,
        subject: str,
        reason: str,
        details: Mapping[str, Any] | None = None,
    ) -> AuditRecord:
        """Append one record chained to the stream's last valid record; returns it once
        stored. Bad messages found on the way are reported first (see the module doc)."""
        if self._publisher is None:
            raise AuditWriteFailed("this audit log was opened read-only")
        entry = (actor, action, subject, reason, dict(details or {}))
        self._next(entry)  # refuse an invalid record before anything is sent
        async with self._lock:
            await self._report_quietly()
            record = await self._append(entry)
            await self._report_quietly()  # bad messages met while racing other writers
            return record

    async def _append(self, entry: _Entry) -> AuditRecord:
        if not self._resolved:
            await self._reload()  # open() stopped reading after max_scan bad messages
        for attempt in range(self._attempts):
            record = self._next(entry)
            ack = await self._publish(record)
            if ack is not None and not ack.duplicate and int(ack.seq) == record.seq:
                self._head, self._last_seq, self._base = record, record.seq, record.seq
                return record
            await self._reload()  # another message was stored first
            if self._head is not None and self._head.hash == record.hash:
                return record  # our own publish landed, its ack was lost and retried
            await asyncio.sleep(random.uniform(0, min(_MAX_BACKOFF, 0.005 * 2**attempt)))
        raise AuditWriteFailed(f"gave up after {self._attempts} attempts: other writers won")

    async def _reload(self) -> None:
        try:
            await self._load_head()
        except (nats.errors.Error, TimeoutError) as exc:
            raise AuditWriteFailed(f"cannot re-read the head: {exc!r}") from exc

    def _next(self, entry: _Entry) -> AuditRecord:
        try:
            chain = AuditChain() if self._head is None else AuditChain.resume(self._head)
            return chain.append(*entry, seq=self._last_seq + 1)
        except AuditRecordInvalid as exc:
            raise InvalidAuditRecord(str(exc)) from None

    async def _publish(self, record: AuditRecord) -> PubAck | None:
        """Store ``record`` after the stream's last message; ``None`` if that has moved on."""
        assert self._publisher is not None
        payload = record.to_json() if self._writer is None else sign_record(record, self._writer)
        headers = {
            "Nats-Expected-Last-Sequence": str(self._last_seq),
            "Nats-Msg-Id": f"audit:{record.hash}",
        }
        try:
            return await self._publisher.publish_acked(
                self.subject, payload, headers, timeout=self._timeout, attempts=_PUBLISH_ATTEMPTS
            )
        except nats.js.errors.APIError as exc:
            if exc.err_code == _WRONG_LAST_SEQUENCE:
                return None
            raise AuditWriteFailed(f"the server refused the record: {exc.description}") from exc
        except (nats.errors.Error, TimeoutError) as exc:
            raise AuditWriteFailed(f"the record was not stored: {exc!r}") from exc

    @overload
    def tail(
        self, follow: bool = False, *, findings: Literal[False] = False
    ) -> AsyncGenerator[AuditRecord, None]: ...

    @overload
    def tail(
        self, follow: bool = False, *, findings: Literal[True]
    ) -> AsyncGenerator[AuditRecord | AuditFinding, None]: ...

    async def tail(
        self, follow: bool = False, *, findings: bool = False
    ) -> AsyncGenerator[AuditRecord | AuditFinding, None]:
        """Every valid record in stream order; with ``follow``, then new ones as they come.

        With ``findings`` the bad messages come too, in their place, as
        :class:`AuditFinding` (a ``broken`` one right before its record); without, they are
        skipped and logged at error. :meth:`verify` sums them up.
        """
        async for item in self._scan(follow, ChainScan(self._writers)):
            if findings or isinstance(item, AuditRecord):
                yield item
            else:
                log.error("%s: stream seq %d: %s", self.stream, item.stream_seq, item.detail)

    async def verify(self) -> AuditReport:
        """Read the whole stream: the valid records and a finding for every bad message.

        The report is :attr:`~AuditReport.intact` when the valid records form one unbroken
        chain (``rejected`` findings are skipped messages, ``broken`` ones a gap or an edit
        among the valid records); :meth:`AuditReport.check` raises for a broken one. A
        cut-off tail is not visible here: compare the head with one kept elsewhere.
        """
        scan = ChainScan(self._writers)
        async for _ in self._scan(False, scan):
            pass
        return scan.report()

    async def _scan(
        self, follow: bool, scan: ChainScan
    ) -> AsyncIterator[AuditRecord | AuditFinding]:
        async with contextlib.aclosing(self._messages(follow)) as messages:
            async for stream_seq, data in messages:
                for item in scan.feed(stream_seq, data):
                    yield item

    async def _messages(self, follow: bool) -> AsyncGenerator[tuple[int, bytes], None]:
        """``(stream seq, data)`` of each message, through an ordered (ephemeral) consumer."""
        try:
            state = (await self._js.stream_info(self.stream)).state
        except nats.js.errors.NotFoundError:
            raise AuditLogError(f"there is no audit stream {self.stream!r}") from None
        if not follow and state.messages == 0:
            return
        sub = await self._js.subscribe(
            f"{self._root}.audit.>", stream=self.stream, ordered_consumer=True
        )
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=None)
                except nats.errors.Error as exc:
                    raise AuditLogError(f"reading {self.stream!r} failed: {exc!r}") from exc
                stream_seq = int(msg.metadata.sequence.stream)
                yield stream_seq, msg.data
                if not follow and stream_seq >= state.last_seq:
                    return
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
