"""An outbox on local disk for events the server could not take (``connect(outbox=path)``).

When a publish fails because the server cannot be reached (its retries exhausted: no ack
in time, the connection lost or closed, no stream leader answering), the bus appends the
signed event to the outbox file and returns a :class:`~eventwire.PublishAck` with
``queued=True`` instead of raising. Without an outbox the same failure raises
:class:`PublishUnreachable` (a :class:`PublishFailed` and a :class:`ServerUnavailable`)
naming the subject and the event id. Errors the server states (an API error) are never
queued.

The file holds one record per line: ``<16 hex of sha256(payload)> <payload>``, the payload
a JSON object with the event id, subject, wire subject, headers and the body in base64.
Each append is written and ``os.fsync``-ed before the publish returns, so a crash after
that never loses the event. The file is created with mode 0600, a symlink is refused, and
one bus at a time holds it (an ``flock`` on ``<path>.lock``: :class:`OutboxBusy`).

A flusher task owned by the bus re-sends the records in order with the same bytes and the
same ``Nats-Msg-Id`` (the stream drops a copy it already stored as a duplicate), when the
bus opens with records waiting, when the connection comes back, and after a backoff while
records wait; records are removed only once JetStream acknowledged them (the rest is
rewritten to ``<path>.tmp`` and moved over the file with ``os.replace``). A record that
cannot be read (torn by a crash, edited) is appended to ``<path>.corrupt`` with a
warning, never silently dropped. The file is bounded (``max_bytes``): a full outbox
raises :class:`OutboxFull`. On close the flusher stops; records left wait for the next run.

Order: while records wait, every publish of the bus (``publish``, ``publish_report``,
``publish_many``) is queued behind them, so events are stored in the order they were
published, and an outage costs one publish its retries, not every publish. A
``publish_many`` whose events get no ack queues them (one after the other's retries fail,
the rest behind it); one the connection refuses outright (its buffer full while
reconnecting) raises :class:`PublishFailed` as before.

Limits, stated:

- ``connect`` itself needs the server: the outbox covers a server lost after the bus opened.
- "No responders" (no stream leader, or no stream at all) counts as unreachable and is
  queued; an error the server states (a full stream with ``discard=new``) is raised.
- A receiver checks the signed ``iat`` against the stream's store time: an event that waits
  in the outbox longer than the replay window (``connect(replay_window=...)``, a day by
  default) is stored but refused by receivers as ``too-old``; the flusher warns. An event
  published with ``ttl`` may expire while it waits.
- A crash after the stream acknowledged records but before they left the file sends them
  again; the stream drops them as duplicates within its duplicate window (120 s). Later
  than that a second copy is stored, which receivers refuse as a replay (same event id at
  a new sequence) where replay checks are on, and idempotent handlers skip.
- A record the stream refuses when flushed (an API error, e.g. a full stream with
  ``discard=new``) stays first and is tried again with a backoff (up to 5 s), with a
  warning each time; publishes queue behind it meanwhile (watch ``bus.outbox.pending``).
- File work is synchronous on the event loop (an fsync per queued event: a few hundred to
  a few thousand a second, bound by the disk).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nats.errors

from ._errors import ConfigError, InvalidArgument, PublishFailed, ServerUnavailable

if TYPE_CHECKING:
    from collections.abc import Callable

    from nats.js.api import PubAck

    from ._codec import Signed
    from ._publisher import AckedPublisher

log = logging.getLogger("eventwire.outbox")
DEFAULT_OUTBOX_MAX_BYTES = 64 * 1024 * 1024
_CHECK_CHARS = 16
_FLUSH_CHUNK = 256
_REMOVE_EVERY = 4096  # acknowledged records removed at once (a rewrite of the file)
_ACK_TIMEOUT = 5.0
_RETRY_MIN = 0.25
_RETRY_MAX = 5.0
_FIELDS = {"id", "subject", "wire", "headers", "body"}


class PublishUnreachable(PublishFailed, ServerUnavailable):
    """The server could not be reached (no ack after every attempt, the connection lost):
    event ``event_id`` was not stored. Raised by ``publish`` on a bus without an outbox;
    with one, the event is queued on disk instead."""

    def __init__(self, reason: str, *, subject: str, event_id: str) -> None:
        super().__init__(f"event {event_id} was not stored: {reason}", subject=subject)
        self.event_id = event_id


class OutboxFull(PublishUnreachable):
    """The server could not be reached and the outbox has no room for the event."""

    def __init__(self, *, subject: str, event_id: str, size: int, limit: int) -> None:
        reason = (
            f"the server is unreachable and the outbox is full "
            f"({size} bytes with this event, the limit is {limit})"
        )
        super().__init__(reason, subject=subject, event_id=event_id)
        self.size = size
        self.limit = limit


class OutboxUnwritable(PublishUnreachable):
    """The server could not be reached and the event could not be written to the outbox
    (the disk is full, a permission): ``__cause__`` is the OSError."""


class OutboxBusy(ConfigError):
    """Another bus (in this process or another) holds the outbox file."""


@dataclass(frozen=True, slots=True)
class Record:
    """One queued event: what is sent again, byte for byte."""

    event_id: str
    subject: str
    wire_subject: str
    headers: dict[str, str]
    body: bytes

    @classmethod
    def of(cls, signed: Signed) -> Record:
        return cls(
            signed.event_id, signed.subject, signed.wire_subject, signed.headers, signed.body
        )

    def encode(self) -> bytes:
        payload = json.dumps(
            {
                "id": self.event_id,
                "subject": self.subject,
                "wire": self.wire_subject,
                "headers": self.headers,
                "body": base64.b64encode(self.body).decode("ascii"),
            },
            separators=(",", ":"),
            sort_keys=True,
        ).encode("ascii")
        return _check(payload) + b" " + payload + b"\n"

    @classmethod
    def decode(cls, line: bytes) -> Record:
        """The record of one line (without its newline); ValueError saying what is wrong."""
        check, _, payload = line.partition(b" ")
        if len(check) != _CHECK_CHARS or check != _check(payload):
            raise ValueError("checksum mismatch (torn or edited record)")
        try:
            fields: Any = json.loads(payload)
        except ValueError as exc:
            raise ValueError(f"not JSON: {exc}") from None
        if not isinstance(fields, dict) or set(fields) != _FIELDS:
            raise ValueError("not an outbox record")
        headers = fields["headers"]
        strings = [fields[name] for name in ("id", "subject", "wire", "body")]
        if not all(isinstance(value, str) for value in strings) or not (
            isinstance(headers, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())
        ):
            raise ValueError("a field has the wrong type")
        try:
            body = base64.b64decode(fields["body"], validate=True)
        except binascii.Error as exc:
            raise ValueError(f"body is not base64: {exc}") from None
        return cls(fields["id"], fields["subject"], fields["wire"], headers, body)


def _signed_at(record: Record, default: float) -> float:
    """The record's signed ``iat`` (``default`` if it cannot be read: receivers decide)."""
    try:
        iat = json.loads(record.body).get("iat")
    except (ValueError, AttributeError):
        return default
    return float(iat) if isinstance(iat, int | float) and not isinstance(iat, bool) else default


def _check(payload: bytes) -> bytes:
    return hashlib.sha256(payload).hexdigest()[:_CHECK_CHARS].encode("ascii")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_private(path: Path, flags: int) -> int:
    """``os.open`` with mode 0600, refusing a symlink at ``path``."""
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def checked_max_bytes(max_bytes: int) -> int:
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1024:
        raise InvalidArgument(
            f"expected an int >= 1024, got {max_bytes!r}", field="outbox_max_bytes"
        )
    return max_bytes


def checked_path(path: str | os.PathLike[str]) -> Path:
    if not isinstance(path, str | os.PathLike):
        raise InvalidArgument(f"expected a path, got {type(path).__name__}", field="outbox")
    checked = Path(path)
    if not str(path) or checked.is_dir():
        raise InvalidArgument(f"{str(path)!r} is a directory, not a file path", field="outbox")
    if not checked.parent.is_dir():
        raise InvalidArgument(f"directory {str(checked.parent)!r} does not exist", field="outbox")
    return checked


class OutboxFile:
    """The append-only file: append (fsync-ed), read (corrupt records moved aside), and
    remove the first n records (atomic rewrite). Every call is synchronous: on one event
    loop no two of them interleave."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.pending = 0  # records in the file (after the last read, plus appends since)
        self.corrupt = 0  # records moved aside by this instance
        self._lock_fd: int | None = None

    def lock(self) -> None:
        """Hold ``<path>.lock`` (one bus per outbox) and count the records waiting."""
        try:
            fd = _open_private(
                self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT
            )
        except OSError as exc:
            raise InvalidArgument(f"cannot open {self.path}: {exc}", field="outbox") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise OutboxBusy(f"outbox {self.path} is held by another bus") from exc
        self._lock_fd = fd
        try:
            self.read()
        except OSError as exc:
            self.unlock()
            raise InvalidArgument(f"cannot read {self.path}: {exc}", field="outbox") from exc
        except BaseException:
            self.unlock()
            raise

    @property
    def locked(self) -> bool:
        return self._lock_fd is not None

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def append(self, record: Record) -> None:
        """Add ``record`` durably (written and fsync-ed); :class:`OutboxFull` if it does not
        fit, OSError if it cannot be written (nothing half-written stays)."""
        line = record.encode()
        fd = _open_private(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            size = os.fstat(fd).st_size
            if size + len(line) > self.max_bytes:
                raise OutboxFull(
                    subject=record.subject,
                    event_id=record.event_id,
                    size=size + len(line),
                    limit=self.max_bytes,
                )
            try:
                _write_all(fd, line)
                os.fsync(fd)
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)
        self.pending += 1
        if size == 0:  # a new file: make its directory entry durable too
            try:
                _fsync_dir(self.path.parent)
            except OSError as exc:  # the record is written: queued, with a warning
                log.warning("outbox %s: cannot fsync its directory: %r", self.path, exc)

    def _lines(self) -> list[bytes]:
        try:
            fd = _open_private(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return []
        with os.fdopen(fd, "rb") as file:
            data = file.read()
        lines = data.split(b"\n")
        return lines[:-1] if lines[-1] == b"" else lines  # a last piece without "\n": torn

    def read(self) -> list[Record]:
        """The records in order. Unreadable ones are appended to ``<path>.corrupt`` (with
        a warning) and the file is rewritten without them."""
        lines = self._lines()
        records: list[Record] = []
        bad: list[bytes] = []
        for number, line in enumerate(lines, start=1):
            try:
                records.append(Record.decode(line))
            except ValueError as exc:
                log.warning(
                    "outbox %s: record %d is unreadable (%s): moved aside", self.path, number, exc
                )
                bad.append(line)
        if bad:
            self._set_aside(bad)
            self._rewrite([line for line in lines if line not in bad])
        self.pending = len(records)
        return records

    def _set_aside(self, lines: list[bytes]) -> None:
        aside = self.path.with_name(self.path.name + ".corrupt")
        fd = _open_private(aside, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            _write_all(fd, b"".join(line + b"\n" for line in lines))
            os.fsync(fd)
        finally:
            os.close(fd)
        self.corrupt += len(lines)
        log.warning("outbox %s: %d unreadable record(s) kept in %s", self.path, len(lines), aside)

    def remove_first(self, count: int) -> None:
        """Drop the first ``count`` records (acknowledged by the stream), atomically."""
        lines = self._lines()
        self._rewrite(lines[count:])
        self.pending = len(lines) - count

    def _rewrite(self, lines: list[bytes]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = _open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            _write_all(fd, b"".join(line + b"\n" for line in lines))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)


class Outbox:
    """The outbox file and its flusher task (started by :meth:`open`, stopped by
    :meth:`close`); ``flushed`` counts records the stream acknowledged."""

    def __init__(
        self, path: str | os.PathLike[str], max_bytes: int, *, max_age: float | None = None
    ) -> None:
        self.file = OutboxFile(checked_path(path), checked_max_bytes(max_bytes))
        self.max_age = max_age  # the bus's replay window: older events are refused as too-old
        self.flushed = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._publisher: AckedPublisher | None = None
        self._connected: Callable[[], bool] = lambda: False

    @property
    def path(self) -> Path:
        return self.file.path

    @property
    def pending(self) -> int:
        """Records waiting in the file."""
        return self.file.pending

    @property
    def corrupt(self) -> int:
        """Unreadable records this bus moved to ``<path>.corrupt``."""
        return self.file.corrupt

    async def open(self, publisher: AckedPublisher, connected: Callable[[], bool]) -> None:
        self.file.lock()
        self._publisher, self._connected = publisher, connected
        if self.file.pending:
            log.info("outbox %s: %d record(s) waiting, flushing", self.path, self.file.pending)
            self._wake.set()
        self._task = asyncio.create_task(self._run(), name=f"eventwire-outbox {self.path}")

    async def close(self) -> None:
        """Stop the flusher (records left stay on disk) and let go of the file."""
        task, self._task = self._task, None
        try:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        finally:
            self.file.unlock()
        if self.file.pending:
            log.warning(
                "outbox %s: %d record(s) left for the next run", self.path, self.file.pending
            )

    def wake(self) -> None:
        """Try flushing now (the connection came back)."""
        self._wake.set()

    def queue(self, signed: Signed, reason: str) -> None:
        """Append ``signed`` durably; :class:`OutboxFull` or :class:`OutboxUnwritable`."""
        if not self.file.locked:  # closed under a publish in flight: another bus may hold it
            raise OutboxUnwritable(
                f"the server is unreachable ({reason}) and the outbox is closed",
                subject=signed.subject,
                event_id=signed.event_id,
            )
        try:
            self.file.append(Record.of(signed))
        except OSError as exc:
            raise OutboxUnwritable(
                f"the server is unreachable ({reason}) and the outbox cannot be written: {exc}",
                subject=signed.subject,
                event_id=signed.event_id,
            ) from exc
        level = logging.WARNING if self.file.pending == 1 else logging.DEBUG  # an outage began
        log.log(
            level,
            "publish to %r: %s; event %s queued in outbox %s (%d waiting)",
            signed.subject, reason, signed.event_id, self.path, self.file.pending,
        )  # fmt: skip
        self._wake.set()

    async def _run(self) -> None:
        delay = _RETRY_MIN
        while True:
            if await self._woken(delay if self.file.pending else None):
                delay = _RETRY_MIN  # the connection came back, or a record was queued
            if not self.file.pending:
                continue
            try:
                flushed = self._connected() and await self._flush()
            except Exception:  # a bug: logged; the records stay on disk, tried again later
                log.exception("outbox %s: flushing failed", self.path)
                flushed = False
            delay = _RETRY_MIN if flushed else min(delay * 2, _RETRY_MAX)

    async def _woken(self, timeout: float | None) -> bool:
        """Wait for :meth:`wake` (True) or ``timeout`` seconds (False)."""
        try:
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        except TimeoutError:
            return False
        self._wake.clear()
        return True

    async def _flush(self) -> bool:
        """Send every record in order, removing the acknowledged ones from the file every
        ``_REMOVE_EVERY`` records and at the end (also when stopped); whether all were
        acknowledged. A crash in between sends some again: the stream drops them."""
        try:
            records = self.file.read()
        except OSError as exc:
            log.error("outbox %s: cannot read the file: %r (will retry)", self.path, exc)
            return False
        self._warn_stale(records)
        acked = 0  # acknowledged, still in the file
        try:
            for start in range(0, len(records), _FLUSH_CHUNK):
                chunk = records[start : start + _FLUSH_CHUNK]
                done = await self._send_chunk(chunk)
                acked += done
                if done < len(chunk):
                    return False
                if acked >= _REMOVE_EVERY:
                    self._remove(acked)
                    acked = 0
        finally:
            if acked:
                self._remove(acked)
        log.info(
            "outbox %s: flushed, %d record(s) sent since the bus opened", self.path, self.flushed
        )
        return True

    def _warn_stale(self, records: list[Record]) -> None:
        """Warn about records signed longer ago than the replay window: receivers with
        one refuse them as ``too-old`` (their ``iat`` is checked against the store time)."""
        if self.max_age is None:
            return
        now = time.time()
        stale = [
            record.event_id for record in records if now - _signed_at(record, now) > self.max_age
        ]
        if stale:
            log.warning(
                "outbox %s: %d event(s) were signed more than %.0f s ago (first: %s); "
                "receivers with a replay window will refuse them as too-old",
                self.path, len(stale), self.max_age, stale[0],
            )  # fmt: skip

    def _remove(self, count: int) -> None:
        self.file.remove_first(count)
        self.flushed += count

    async def _send_chunk(self, records: list[Record]) -> int:
        """Send ``records`` pipelined; how many of them, from the first, were acknowledged."""
        assert self._publisher is not None
        futures: list[asyncio.Future[PubAck]] = []
        done = 0
        try:
            for record in records:
                futures.append(
                    await self._publisher.publish(record.wire_subject, record.body, record.headers)
                )
            for future in futures:
                async with asyncio.timeout(_ACK_TIMEOUT):
                    await future
                done += 1
        except (nats.errors.Error, TimeoutError) as exc:
            failed = records[done]
            log.warning(
                "outbox %s: event %s (%r) not acknowledged: %r; %d record(s) waiting",
                self.path, failed.event_id, failed.subject, exc, self.file.pending - done,
            )  # fmt: skip
        finally:
            for future in futures[done:]:
                future.cancel()
        return done
