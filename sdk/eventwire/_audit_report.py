"""What reading the audit stream finds: valid records, and typed findings about the rest.

A :class:`ChainScan` reads the stream's messages in order. Each message is either a valid
record (:func:`eventwire_security._audit.read_stored`: it parses, is signed by a known
writer when writers are given, matches its own hash, and is stored at the stream sequence
it names) or a :attr:`FindingKind.REJECTED` finding, skipped. A valid record that does not
link to the valid record before it is also a :attr:`FindingKind.BROKEN` finding: the
chain of valid records was altered (a record removed, or edited so that it is no longer
valid), or a writer lied about its predecessor. The scan then continues from that record,
so one alteration is one finding and the rest of the log is still checked.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from eventwire_security import SecurityError
from eventwire_security._audit import GENESIS, AuditRecord, link_error, read_stored

from ._errors import EventwireError

if TYPE_CHECKING:
    from eventwire_security import Keyring

MAX_FINDINGS = 1000  # a report keeps the first ones; the counts cover all


class AuditLogError(EventwireError):
    """The audit log cannot be opened, read or written."""


class InvalidAuditRecord(AuditLogError, ValueError):
    """The record to append is not valid (empty action, details that are not JSON...)."""


class AuditWriteFailed(AuditLogError):
    """A record was not stored: the server refused it, or concurrent writers kept winning."""


class AuditCorrupted(AuditLogError):
    """The chain of valid records is broken at stream sequence ``stream_seq``.

    Raised by :meth:`AuditReport.check`. ``error`` is the security package's error
    (:class:`AuditGap` or :class:`AuditBroken`); ``reason`` its stable code; ``seq`` the
    record's own seq.
    """

    def __init__(self, error: SecurityError, *, stream_seq: int) -> None:
        super().__init__(f"audit log corrupted at stream seq {stream_seq}: {error}")
        self.error = error
        self.stream_seq = stream_seq
        self.reason: str = str(getattr(error, "reason", "audit-invalid"))
        self.seq: int | None = getattr(error, "seq", None)


class FindingKind(StrEnum):
    """``rejected``: a message that is no valid record, skipped (garbage, unsigned or of an
    unknown writer, not matching its hash, a copy stored at another sequence).
    ``broken``: a valid record that does not link to the valid record before it."""

    REJECTED = "rejected"
    BROKEN = "broken"


@dataclass(frozen=True, slots=True)
class AuditFinding:
    """One bad message of the audit stream, at ``stream_seq``, and why (``reason``)."""

    stream_seq: int
    kind: FindingKind
    reason: str
    detail: str
    error: SecurityError = field(compare=False, repr=False)
    record: AuditRecord | None = None  # the valid record, for a ``broken`` finding

    @classmethod
    def of(
        cls, stream_seq: int, kind: FindingKind, error: SecurityError, record: AuditRecord | None
    ) -> AuditFinding:
        reason = str(getattr(error, "reason", "audit-invalid"))
        detail = str(getattr(error, "detail", error))
        return cls(stream_seq, kind, reason, detail, error, record)


@dataclass(frozen=True, slots=True)
class AuditReport:
    """The outcome of :meth:`AuditLog.verify`: ``records`` valid records, ``head`` the last
    one, and the ``findings`` (the first :data:`MAX_FINDINGS`; ``rejected`` and ``broken``
    count them all, ``reasons`` by reason)."""

    records: int
    head: AuditRecord | None
    findings: tuple[AuditFinding, ...]
    rejected: int
    broken: int
    reasons: Counter[str]

    @property
    def intact(self) -> bool:
        """No ``broken`` finding: the valid records form one unbroken chain."""
        return self.broken == 0

    @property
    def clean(self) -> bool:
        """No finding at all."""
        return self.rejected == 0 and self.broken == 0

    def check(self) -> None:
        """Raise :class:`AuditCorrupted` for the first ``broken`` finding, if any."""
        for finding in self.findings:
            if finding.kind is FindingKind.BROKEN:
                raise AuditCorrupted(finding.error, stream_seq=finding.stream_seq)
        if self.broken:
            raise AuditLogError(f"{self.broken} broken links, past the findings kept")


class ChainScan:
    """Follows the stream in order with ``writers`` (``None``: every well-formed record
    counts, signatures unchecked)."""

    __slots__ = ("_findings", "_head", "_writers", "broken", "reasons", "records", "rejected")

    def __init__(self, writers: Keyring | None) -> None:
        self._writers = writers
        self._head: AuditRecord | None = None
        self._findings: list[AuditFinding] = []
        self.records = self.rejected = self.broken = 0
        self.reasons: Counter[str] = Counter()

    def feed(self, stream_seq: int, data: bytes) -> list[AuditRecord | AuditFinding]:
        """What the message at ``stream_seq`` is: a finding, a record, or both (broken)."""
        try:
            record = read_stored(data, stream_seq, self._writers)
        except SecurityError as exc:
            return [self._found(AuditFinding.of(stream_seq, FindingKind.REJECTED, exc, None))]
        found: list[AuditRecord | AuditFinding] = []
        head = self._head
        error = link_error(record, *((head.seq, head.hash) if head else (0, GENESIS)))
        if error is not None:
            found.append(
                self._found(AuditFinding.of(stream_seq, FindingKind.BROKEN, error, record))
            )
        self._head = record
        self.records += 1
        found.append(record)
        return found

    def _found(self, finding: AuditFinding) -> AuditFinding:
        if finding.kind is FindingKind.BROKEN:
            self.broken += 1
        else:
            self.rejected += 1
        self.reasons[finding.reason] += 1
        if len(self._findings) < MAX_FINDINGS:
            self._findings.append(finding)
        return finding

    def report(self) -> AuditReport:
        return AuditReport(
            self.records,
            self._head,
            tuple(self._findings),
            self.rejected,
            self.broken,
            Counter(self.reasons),
        )
