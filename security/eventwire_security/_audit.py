"""Tamper-evident audit records: an append-only, SHA-256 hash chain.

Each record's ``hash`` is the SHA-256 (lowercase hex) of its canonical JSON without the
``hash`` member: keys sorted, separators ``,`` and ``:``, UTF-8 (not ASCII-escaped), no
NaN/Infinity. ``prev_hash`` is the previous record's ``hash`` (the SHA-256 of its canonical
bytes), or 64 zeros for ``seq`` 1. So :func:`verify_chain` detects an edited record
(:class:`AuditTampered`), a removed, inserted or reordered record (:class:`AuditGap`), and a
record rewritten together with its own hash (:class:`AuditBroken` at the next one).

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
_FIELDS = ("seq", "time", "actor", "action", "subject", "reason", "details", "prev_hash", "hash")
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
    """A record is missing or out of order: ``expected`` seq, ``found`` seq."""

    reason = "audit-gap"

    def __init__(self, *, expected: int, found: int) -> None:
        super().__init__(f"expected seq {expected}, found {found}", seq=found)
        self.expected = expected
        self.found = found


class AuditTampered(AuditError):
    """The record at ``seq`` does not hash to its ``hash``: it was edited."""

    reason = "audit-tampered"


class AuditBroken(AuditError):
    """The record at ``seq`` does not link to the previous record's hash."""

    reason = "audit-broken"


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
        """Continue after ``last`` (e.g. the last record read back from the stream)."""
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
    ) -> AuditRecord:
        """Record one decision or change, e.g. action ``"refused"`` or ``"key.rotated"``."""
        draft = AuditRecord(
            seq=self._seq + 1,
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


def verify_chain(
    records: Iterable[AuditRecord | dict[str, Any]], *, after: AuditRecord | None = None
) -> int:
    """Check ``records`` form an unbroken chain from seq 1 (or right after ``after``).

    Returns the number of records verified; raises :class:`AuditGap`, :class:`AuditTampered`,
    :class:`AuditBroken` or :class:`AuditRecordInvalid` at the first bad record.
    """
    expected, head = 1, GENESIS
    if after is not None:
        expected, head = AuditChain.resume(after).seq + 1, after.hash
    count = 0
    for item in records:
        record = item if isinstance(item, AuditRecord) else AuditRecord.from_dict(item)
        if record.seq != expected:
            raise AuditGap(expected=expected, found=record.seq)
        if record.compute_hash() != record.hash:
            raise AuditTampered("the record does not match its hash", seq=record.seq)
        if record.prev_hash != head:
            raise AuditBroken("prev_hash is not the previous record's hash", seq=record.seq)
        expected, head, count = expected + 1, record.hash, count + 1
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
