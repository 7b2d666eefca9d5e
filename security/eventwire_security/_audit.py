"""Tamper-evident audit records: an append-only, SHA-256 hash chain over a log.

A log is a sequence of messages at increasing positions (for the JetStream log, the stream
sequence). Anyone allowed to append may append anything, so not every message is a record
of the chain. A record says where it is: ``seq`` is its own position and ``prev_seq`` the
position of the record it follows (0 for the first record of a chain); ``prev_hash`` is that
record's ``hash``, or 64 zeros after position 0. The positions in between hold messages that
were refused when the record was written (garbage, copies, records of unknown writers): a
writer skips them, and says so by linking past them.

Each record's ``hash`` is the SHA-256 (lowercase hex) of its canonical JSON without the
``hash`` member: keys sorted, separators ``,`` and ``:``, UTF-8 (not ASCII-escaped), no
NaN/Infinity.

:func:`read_stored` decides, from one message and its position alone, whether it is a valid
record: it parses (:class:`AuditRecordInvalid`), is signed by one of ``writers`` when they
are given (the envelope's errors: ``unknown-key``, ``bad-signature``...), matches its own
hash (:class:`AuditTampered`) and is stored where it says it is (:class:`AuditReplayed`: a
copy of a record re-published later lands at another position). :func:`link_error` then
says whether a valid record links to the valid record before it: a record that follows a
position holding no valid record (removed, or altered since) is an :class:`AuditGap`, one
linking to an older record or to a hash that is not the previous record's is
:class:`AuditBroken`. :func:`verify_chain` checks a list of records with both and raises at
the first error, also for records out of order (:class:`AuditGap`).

A chain alone cannot show that its tail was cut off: compare the last verified hash with a
head kept elsewhere (e.g. a record signed with :func:`sign_record`, or the writer's
:attr:`AuditChain.head`). Floats in ``details`` are hashed in Python's ``repr`` form; other
implementations re-hashing records should keep details to strings, ints, bools and null.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ._b64 import b64url_decode
from ._envelope import sign_claims, verify_envelope
from ._errors import SecurityError
from ._json import strict_loads
from ._rfc3339 import format_utc, parse_utc

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from ._keyring import Keyring
    from ._keys import Identity

GENESIS = "0" * 64
AUDIT_TYPE = "eventwire.audit/1"
MAX_DETAILS_DEPTH = 16
MAX_SEQ = 2**63 - 1
_FIELDS = (
    "seq",
    "prev_seq",
    "time",
    "actor",
    "action",
    "subject",
    "reason",
    "details",
    "prev_hash",
    "hash",
)
_TEXT_FIELDS = ("actor", "action", "subject", "reason")
_HEX64 = re.compile(r"\A[0-9a-f]{64}\Z")
_SIGNED_FIELDS = frozenset({"source", "tenant", "type", "record"})


class AuditError(SecurityError):
    """An audit record or chain is refused. ``reason`` is a short, stable machine code."""

    reason: str = "audit"

    def __init__(self, detail: str, *, seq: int | None = None) -> None:
        where = f" at seq {seq}" if seq is not None else ""
        super().__init__(f"{self.reason}{where}: {detail}")
        self.detail = detail
        self.seq = seq


class AuditRecordInvalid(AuditError):
    """Not a well-formed audit record: missing or unknown fields, wrong types."""

    reason = "audit-invalid"


class AuditGap(AuditError):
    """A record is missing or out of order: ``expected`` seq, ``found`` seq.

    Either the record ``found`` follows the record at ``expected`` (its ``prev_seq``) and
    there is no valid record there, or ``found`` comes where a seq after ``expected`` - 1
    was due (a duplicate or a reordering).
    """

    reason = "audit-gap"

    def __init__(self, *, expected: int, found: int, detail: str | None = None) -> None:
        super().__init__(detail or f"expected seq {expected}, found {found}", seq=found)
        self.expected = expected
        self.found = found


class AuditTampered(AuditError):
    """The record at ``seq`` does not hash to its ``hash``: it was edited."""

    reason = "audit-tampered"


class AuditBroken(AuditError):
    """The record at ``seq`` does not link to the previous record (its seq or its hash)."""

    reason = "audit-broken"


class AuditReplayed(AuditError):
    """The record says it is at ``seq`` but is stored at ``position``: a copy, re-published."""

    reason = "audit-replayed"

    def __init__(self, *, seq: int, position: int) -> None:
        super().__init__(f"a record of seq {seq} stored at position {position}", seq=seq)
        self.position = position


def canonical_json(value: Any) -> bytes:
    """The canonical bytes that are hashed: sorted keys, compact, UTF-8, no NaN."""
    try:
        text = json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
        return text.encode("utf-8")
    except (ValueError, TypeError) as exc:  # UnicodeEncodeError is a ValueError
        raise AuditRecordInvalid(f"not canonical JSON: {exc}") from None


def _check_json(value: Any, depth: int = 0) -> None:
    """Refuse what JSON would silently change: tuples, non-string keys, NaN, deep nesting."""
    if depth > MAX_DETAILS_DEPTH:
        raise ValueError(f"details nested deeper than {MAX_DETAILS_DEPTH}")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"details keys must be strings, got {type(key).__name__}")
            _check_json(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_json(item, depth + 1)
    elif value is not None and not isinstance(value, str | int | float):  # bool is an int
        raise ValueError(f"details values must be JSON, got {type(value).__name__}")


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One audited decision or change. Build records with :meth:`AuditChain.append`."""

    seq: int
    prev_seq: int
    time: str
    actor: str
    action: str
    subject: str
    reason: str
    details: dict[str, Any]
    prev_hash: str
    hash: str

    def __post_init__(self) -> None:
        seq = self.seq if type(self.seq) is int else None
        try:
            _validate(self)
        except (ValueError, TypeError) as exc:
            raise AuditRecordInvalid(str(exc), seq=seq) from None
        object.__setattr__(self, "details", copy.deepcopy(self.details))
        canonical_json(self.body())  # refuses lone surrogates in any string

    def __hash__(self) -> int:
        return hash(self.hash)

    def body(self) -> dict[str, Any]:
        """Every field but ``hash``: what the hash covers."""
        return {name: getattr(self, name) for name in _FIELDS[:-1]}

    def to_dict(self) -> dict[str, Any]:
        return {**self.body(), "hash": self.hash}

    def compute_hash(self) -> str:
        """The SHA-256 hex of this record's canonical bytes (without ``hash``)."""
        return hashlib.sha256(canonical_json(self.body())).hexdigest()

    def to_json(self) -> bytes:
        """Canonical JSON of the whole record, ``hash`` included."""
        return canonical_json(self.to_dict())

    @classmethod
    def from_dict(cls, value: object) -> AuditRecord:
        """Parse strictly: exactly the known fields, each of its type; else typed error."""
        if not isinstance(value, dict):
            raise AuditRecordInvalid(f"a record is a JSON object, got {type(value).__name__}")
        if set(value) != set(_FIELDS):
            unknown, missing = sorted(set(value) - set(_FIELDS)), sorted(set(_FIELDS) - set(value))
            raise AuditRecordInvalid(f"unknown fields {unknown}, missing fields {missing}")
        return cls(**value)

    @classmethod
    def from_json(cls, data: bytes | bytearray | memoryview) -> AuditRecord:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise AuditRecordInvalid(f"expected bytes, got {type(data).__name__}")
        try:
            value = strict_loads(bytes(data), max_depth=MAX_DETAILS_DEPTH + 1)
        except ValueError as exc:
            raise AuditRecordInvalid(f"not strict JSON: {exc}") from None
        return cls.from_dict(value)


def _validate(record: AuditRecord) -> None:
    if type(record.seq) is not int or not 1 <= record.seq <= MAX_SEQ:
        raise ValueError(f"seq must be an int in 1..{MAX_SEQ}")
    if type(record.prev_seq) is not int or not 0 <= record.prev_seq < record.seq:
        raise ValueError("prev_seq must be an int in 0..seq-1")
    parse_utc(record.time)
    for name in _TEXT_FIELDS:
        if not isinstance(getattr(record, name), str):
            raise TypeError(f"{name} must be a string")
    if not record.action:
        raise ValueError("action must not be empty")
    if not isinstance(record.details, dict):
        raise TypeError("details must be an object")
    _check_json(record.details)
    for name in ("prev_hash", "hash"):
        value = getattr(record, name)
        if not isinstance(value, str) or not _HEX64.match(value):
            raise ValueError(f"{name} must be 64 lowercase hex digits")


class AuditChain:
    """The writer's side: appends records linked to the previous one. Not thread-safe."""

    __slots__ = ("_head", "_seq")

    def __init__(self) -> None:
        self._seq = 0
        self._head = GENESIS

    @classmethod
    def resume(cls, last: AuditRecord) -> AuditChain:
        """Continue after ``last`` (e.g. the last valid record read back from the log)."""
        if last.compute_hash() != last.hash:
            raise AuditTampered("the record to resume from does not match its hash", seq=last.seq)
        chain = cls()
        chain._seq = last.seq
        chain._head = last.hash
        return chain

    @property
    def seq(self) -> int:
        """The seq of the last record appended (0 before the first)."""
        return self._seq

    @property
    def head(self) -> str:
        """The hash of the last record appended (64 zeros before the first)."""
        return self._head

    def append(
        self,
        actor: str,
        action: str,
        subject: str,
        reason: str,
        details: Mapping[str, Any] | None = None,
        *,
        now: datetime | None = None,
        seq: int | None = None,
    ) -> AuditRecord:
        """Record one decision or change, e.g. action ``"refused"`` or ``"key.rotated"``.

        ``seq`` is the position the record will be stored at (default: right after the
        last record); the positions skipped hold messages that are not records of the chain.
        """
        draft = AuditRecord(
            seq=self._seq + 1 if seq is None else seq,
            prev_seq=self._seq,
            time=format_utc(now or datetime.now(UTC)),
            actor=actor,
            action=action,
            subject=subject,
            reason=reason,
            details=dict(details or {}),
            prev_hash=self._head,
            hash=GENESIS,
        )
        record = AuditRecord(**{**draft.body(), "hash": draft.compute_hash()})
        self._seq, self._head = record.seq, record.hash
        return record


def link_error(record: AuditRecord, prev_seq: int, prev_hash: str) -> AuditError | None:
    """Why ``record`` does not follow the valid record at ``prev_seq`` with ``prev_hash``
    (0 and 64 zeros before the first), or ``None`` if it does."""
    if record.prev_seq > prev_seq:
        detail = (
            f"seq {record.seq} follows seq {record.prev_seq}, which is missing or not a valid "
            f"record (the last valid record is seq {prev_seq})"
        )
        return AuditGap(expected=record.prev_seq, found=record.seq, detail=detail)
    if record.prev_seq < prev_seq:
        detail = f"links to seq {record.prev_seq}, but the previous record is seq {prev_seq}"
        return AuditBroken(detail, seq=record.seq)
    if record.prev_hash != prev_hash:
        return AuditBroken("prev_hash is not the previous record's hash", seq=record.seq)
    return None


def verify_chain(
    records: Iterable[AuditRecord | dict[str, Any]], *, after: AuditRecord | None = None
) -> int:
    """Check ``records`` form an unbroken chain from its start (or right after ``after``).

    Returns the number of records verified; raises :class:`AuditGap`, :class:`AuditTampered`,
    :class:`AuditBroken` or :class:`AuditRecordInvalid` at the first bad record.
    """
    seq, head = 0, GENESIS
    if after is not None:
        seq, head = AuditChain.resume(after).seq, after.hash
    count = 0
    for item in records:
        record = item if isinstance(item, AuditRecord) else AuditRecord.from_dict(item)
        if record.seq <= seq:
            raise AuditGap(expected=seq + 1, found=record.seq)
        if record.compute_hash() != record.hash:
            raise AuditTampered("the record does not match its hash", seq=record.seq)
        error = link_error(record, seq, head)
        if error is not None:
            raise error
        seq, head, count = record.seq, record.hash, count + 1
    return count


def sign_record(record: AuditRecord, identity: Identity) -> bytes:
    """A compact JWS of ``record`` signed by ``identity`` (the audit writer), e.g. a head."""
    principal = identity.principal
    claims = {
        "source": principal.source,
        "tenant": principal.tenant,
        "type": AUDIT_TYPE,
        "record": record.to_dict(),
    }
    return sign_claims(claims, identity)


def verify_record(token: bytes, keyring: Keyring, *, now: datetime | None = None) -> AuditRecord:
    """Verify a :func:`sign_record` token and return its record (with a matching hash)."""
    claims = verify_envelope(token, keyring, max_depth=MAX_DETAILS_DEPTH + 3, now=now).claims
    if set(claims) != _SIGNED_FIELDS or claims["type"] != AUDIT_TYPE:
        raise AuditRecordInvalid(f"a signed audit record has exactly {sorted(_SIGNED_FIELDS)}")
    record = AuditRecord.from_dict(claims["record"])
    if record.compute_hash() != record.hash:
        raise AuditTampered("the signed record does not match its hash", seq=record.seq)
    return record


def read_stored(
    data: bytes, position: int, writers: Keyring | None = None, *, now: datetime | None = None
) -> AuditRecord:
    """The valid record stored at ``position`` of a log, judged from the message alone.

    A message is a :meth:`AuditRecord.to_json` record or a :func:`sign_record` token (told
    apart by the first byte, ``{``). With ``writers`` only tokens signed by one of them are
    records; without, both forms are and signatures are not checked (the chain only).
    Raises a :class:`SecurityError` saying why the message is not a valid record there.
    """
    if data[:1] == b"{":
        if writers is not None:
            raise AuditRecordInvalid("unsigned record where a signed one is required")
        record = AuditRecord.from_json(data)
    elif writers is not None:
        record = verify_record(data, writers, now=now)
    else:
        record = _unverified_record(data)
    if record.compute_hash() != record.hash:
        raise AuditTampered("the record does not match its hash", seq=record.seq)
    if record.seq != position:
        raise AuditReplayed(seq=record.seq, position=position)
    return record


def _unverified_record(token: bytes) -> AuditRecord:
    """The record inside a signed message, signature not checked (chain-only reading)."""
    parts = token.split(b".")
    if len(parts) != 3:
        raise AuditRecordInvalid("neither a JSON record nor a compact JWS")
    try:
        claims = strict_loads(b64url_decode(parts[1]), max_depth=MAX_DETAILS_DEPTH + 3)
    except ValueError as exc:
        raise AuditRecordInvalid(f"signed record payload: {exc}") from None
    if not isinstance(claims, dict) or claims.get("type") != AUDIT_TYPE:
        raise AuditRecordInvalid(f"a signed audit record has type {AUDIT_TYPE!r}")
    return AuditRecord.from_dict(claims.get("record"))
