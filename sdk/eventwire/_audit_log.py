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
record: the hash chain alone lets anyone who may publish on the audit subjects append
well-chained records in any name, a signature says which writer appended each one. Readers
tell the two apart by the first byte (``{`` is JSON). A log opened with ``writers`` (a
keyring of the writers' keys) requires every record to be signed by one of them; without
``writers`` signed records are read without checking the signature, i.e. only the chain is
verified.

Appends. Each record is chained to the record at the stream's last sequence and published
with ``Nats-Expected-Last-Sequence`` set to that sequence, so two writers (or two
processes) cannot fork the chain: the loser's publish is refused (err_code 10071), it
re-reads the head and tries again after a jittered, growing pause, up to ``attempts`` times
(each lost race means another writer's record was stored; many busy writers contend for one
chain, so prefer few writers per root). ``Nats-Msg-Id`` is the record's hash, so a publish
retried after a lost ack is not stored twice. Appends of one :class:`AuditLog` are
serialized by an :class:`asyncio.Lock`. A head that does not parse or verify makes appends
fail with :class:`AuditCorrupted`: the log is not silently continued after a forged or
damaged record.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.errors
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from eventwire_security import SecurityError
from eventwire_security._audit import (
    AUDIT_TYPE,
    MAX_DETAILS_DEPTH,
    AuditChain,
    AuditRecord,
    AuditRecordInvalid,
    AuditTampered,
    sign_record,
    verify_chain,
    verify_record,
)
from eventwire_security._b64 import b64url_decode
from eventwire_security._json import strict_loads

from ._errors import ConfigError, EventwireError, StreamConfigError
from ._streams import ensure_stream

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Mapping

    from nats.js import JetStreamContext
    from nats.js.api import PubAck

    from eventwire_security import Identity, Keyring

    from ._publisher import AckedPublisher

_WRONG_LAST_SEQUENCE = 10071  # JSStreamWrongLastSequenceErrF
_PUBLISH_ATTEMPTS = 3
_MAX_BACKOFF = 0.25  # seconds; a writer that lost the race waits up to this, jittered


class AuditLogError(EventwireError):
    """The audit log cannot be opened, read or written."""


class InvalidAuditRecord(AuditLogError, ValueError):
    """The record to append is not valid (empty action, details that are not JSON...)."""


class AuditWriteFailed(AuditLogError):
    """A record was not stored: the server refused it, or concurrent writers kept winning."""


class AuditCorrupted(AuditLogError):
    """The stored log is not an intact chain at stream sequence ``stream_seq``.

    ``error`` is the security package's error (:class:`AuditGap`, :class:`AuditTampered`,
    :class:`AuditBroken`, :class:`AuditRecordInvalid`, or an envelope error when a record's
    signature does not verify); ``reason`` its stable code; ``seq`` the record's own seq if
    it could be read.
    """

    def __init__(self, error: SecurityError, *, stream_seq: int) -> None:
        super().__init__(f"audit log corrupted at stream seq {stream_seq}: {error}")
        self.error = error
        self.stream_seq = stream_seq
        self.reason: str = str(getattr(error, "reason", "audit-invalid"))
        self.seq: int | None = getattr(error, "seq", None)


def audit_stream_name(root: str) -> str:
    return f"{root}-audit"


def audit_subject(root: str) -> str:
    return f"{root}.audit.log"


def audit_stream_config(root: str, *, replicas: int = 1) -> StreamConfig:
    return StreamConfig(
        name=audit_stream_name(root),
        description="eventwire audit log (hash-chained records; no delete, no purge)",
        subjects=[f"{root}.audit.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.NEW,
        duplicate_window=120.0,
        num_replicas=replicas,
        deny_delete=True,
        deny_purge=True,
        allow_rollup_hdrs=False,
    )


def decode_record(data: bytes, stream_seq: int, writers: Keyring | None = None) -> AuditRecord:
    """One stored message as a record; :class:`AuditCorrupted` if it cannot be read."""
    try:
        if data[:1] == b"{":
            if writers is not None:
                raise AuditRecordInvalid("unsigned record where a signed one is required")
            return AuditRecord.from_json(data)
        if writers is not None:
            return verify_record(data, writers)
        return _unverified_record(data)
    except SecurityError as exc:
        raise AuditCorrupted(exc, stream_seq=stream_seq) from None


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
    ) -> None:
        self._js = js
        self._publisher = publisher
        self._root = root
        self._writer = writer
        self._writers = writers
        self._attempts = attempts
        self._timeout = timeout
        self._lock = asyncio.Lock()
        self._head: AuditRecord | None = None
        self._last_seq = 0
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
    ) -> AuditLog:
        """Create (``create``) or bind to the stream and resume the chain from its last record.

        Without a ``publisher`` the log is read-only (:meth:`tail`, :meth:`verify`) and the
        head is not read. ``writer`` signs every record appended; ``writers`` is the keyring
        that every stored record must verify against (see the module doc).
        """
        unsigned = writer is None or (writers is not None and writer.kid not in writers)
        if publisher is not None and writers is not None and unsigned:
            raise ConfigError("records must be signed by `writers`: give a `writer` of them")
        log = cls(js, publisher, root, writer, writers=writers, attempts=attempts, timeout=timeout)
        try:
            await log._ensure(replicas, create)
            if publisher is not None:
                await log._load_head()
        except (nats.errors.Error, TimeoutError) as exc:
            raise AuditLogError(f"cannot open the audit stream {log.stream!r}: {exc!r}") from exc
        return log

    @property
    def head(self) -> AuditRecord | None:
        """The last record this log appended or read back as the stream's head."""
        return self._head

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

    async def _load_head(self) -> None:
        """Read the stream's last message as the head to chain the next record to."""
        try:
            raw = await self._js.get_last_msg(self.stream, f"{self._root}.audit.>")
        except nats.js.errors.NotFoundError:  # nothing stored yet (nothing can be removed)
            self._head, self._last_seq = None, 0
            return
        last = int(raw.seq or 0)
        record = decode_record(raw.data or b"", last, self._writers)
        if record.compute_hash() != record.hash:
            edited = AuditTampered("the head does not match its hash", seq=record.seq)
            raise AuditCorrupted(edited, stream_seq=last)
        self._head, self._last_seq = record, last

    async def record(
        self,
        actor: str,
        action: str,
        subject: str,
        reason: str,
        details: Mapping[str, Any] | None = None,
    ) -> AuditRecord:
        """Append one record chained to the stream's last record; returns it once stored."""
        if self._publisher is None:
            raise AuditWriteFailed("this audit log was opened read-only")
        async with self._lock:
            for attempt in range(self._attempts):
                record = self._next(actor, action, subject, reason, details)
                ack = await self._publish(record)
                if ack is not None:
                    self._head, self._last_seq = record, int(ack.seq)
                    return record
                try:
                    await self._load_head()  # another writer appended first
                except (nats.errors.Error, TimeoutError) as exc:
                    raise AuditWriteFailed(f"cannot re-read the head: {exc!r}") from exc
                if self._head is not None and self._head.hash == record.hash:
                    return record  # our own publish landed, its ack was lost and retried
                await asyncio.sleep(random.uniform(0, min(_MAX_BACKOFF, 0.005 * 2**attempt)))
        raise AuditWriteFailed(f"gave up after {self._attempts} attempts: other writers won")

    def _next(
        self,
        actor: str,
        action: str,
        subject: str,
        reason: str,
        details: Mapping[str, Any] | None,
    ) -> AuditRecord:
        try:
            chain = AuditChain() if self._head is None else AuditChain.resume(self._head)
            return chain.append(actor, action, subject, reason, details)
        except AuditRecordInvalid as exc:
            raise InvalidAuditRecord(str(exc)) from None

    async def _publish(self, record: AuditRecord) -> PubAck | None:
        """Store ``record`` after the known head; ``None`` if the head has moved on."""
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

    async def tail(self, follow: bool = False) -> AsyncGenerator[AuditRecord, None]:
        """Every stored record in stream order; with ``follow``, then new ones as they come.

        Records are parsed (and their signatures checked with ``writers``), not chained:
        :class:`AuditCorrupted` for a message that is not a record. Use :meth:`verify` to
        check the chain.
        """
        async with contextlib.aclosing(self._messages(follow)) as messages:
            async for stream_seq, data in messages:
                yield decode_record(data, stream_seq, self._writers)

    async def verify(self) -> int:
        """Read the whole stream and check it is one intact chain from seq 1.

        Returns the number of records; raises :class:`AuditCorrupted` (carrying the security
        package's :class:`AuditGap`, :class:`AuditTampered`, :class:`AuditBroken` or
        :class:`AuditRecordInvalid`) at the first bad message. A cut-off tail is not visible
        here: compare the last record with a head kept elsewhere.
        """
        count, previous = 0, None
        async with contextlib.aclosing(self._messages(False)) as messages:
            async for stream_seq, data in messages:
                record = decode_record(data, stream_seq, self._writers)
                try:
                    count += verify_chain((record,), after=previous)
                except SecurityError as exc:
                    raise AuditCorrupted(exc, stream_seq=stream_seq) from None
                previous = record
        return count

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
