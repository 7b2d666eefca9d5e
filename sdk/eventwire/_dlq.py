"""The dead-letter queue: a stream of events that could not be processed, kept unchanged.

Each entry is the original signed bytes, published on ``<root>.dlq.<consumer>`` with the
original headers under ``Ew-Original-`` names and the reason in ``Ew-Dlq-*`` headers. An
entry is stored (acknowledged by JetStream) before the original is terminated, so nothing
falls out in between; a crash in between leaves the original to be redelivered and the
entry de-duplicated by its message id.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import nats.errors
import nats.js.errors

from eventwire_security import dlq_stream_name, dlq_subject

from ._codec import SIGNATURE_HEADER, Rejection, wire_headers
from ._errors import (
    NATS_ERRORS,
    DeadLetterError,
    DeadLetterNotFound,
    InvalidArgument,
    NotProvisioned,
    describe,
    mapped_nats_errors,
    nats_error,
)
from ._observe import observed_dead_letter
from ._streams import dlq_stream_config, ensure_stream
from ._subjects import republish_subject

if TYPE_CHECKING:
    from nats.js import JetStreamContext
    from nats.js.api import StreamInfo

    from ._codec import Codec
    from ._publisher import AckedPublisher
    from ._seen import SeenIds

_PREFIX = "Ew-Dlq-"
_ORIGINAL = "Ew-Original-"
_STREAM_NOT_FOUND = 10059  # JetStream's err_code; 10037 is "no message found"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead-lettered event: the signed bytes as received, and why it is here."""

    seq: int
    subject: str
    consumer: str
    reason: str
    error: str
    deliveries: int
    stream_seq: int
    time: datetime
    data: bytes
    headers: dict[str, str]


class DeadLetterQueue:
    """Stores, lists, redrives and purges the dead letters of one subject root."""

    def __init__(
        self,
        js: JetStreamContext,
        publisher: AckedPublisher,
        root: str,
        *,
        codec: Codec,
        seen: SeenIds | None,
    ) -> None:
        self._js = js
        self._publisher = publisher
        self._root = root
        self._codec = codec
        self._seen = seen
        self.stream = dlq_stream_name(root)

    async def ensure(self, replicas: int = 1, *, create: bool = True) -> None:
        config = dlq_stream_config(self._root, replicas=replicas)
        await ensure_stream(self._js, config, create=create)

    @observed_dead_letter
    async def put(
        self,
        data: bytes,
        *,
        subject: str,
        original_headers: dict[str, str] | None,
        consumer: str,
        stream_seq: int,
        reason: str,
        error: str,
        deliveries: int,
    ) -> None:
        """Store an entry and wait for JetStream's ack; :class:`DeadLetterError` if not."""
        headers = {f"{_ORIGINAL}{k}": v for k, v in (original_headers or {}).items()}
        headers.update(
            {
                "Nats-Msg-Id": f"dlq:{consumer}:{stream_seq}",
                f"{_PREFIX}Subject": subject,
                f"{_PREFIX}Consumer": consumer,
                f"{_PREFIX}Stream-Seq": str(stream_seq),
                f"{_PREFIX}Reason": reason,
                f"{_PREFIX}Error": error[:1000].replace("\r", " ").replace("\n", " "),
                f"{_PREFIX}Deliveries": str(deliveries),
                f"{_PREFIX}Time": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            }
        )
        try:
            future = await self._publisher.publish(dlq_subject(self._root, consumer), data, headers)
            await future
        except (nats.errors.Error, TimeoutError) as exc:
            raise DeadLetterError(f"could not store dead letter: {exc!r}") from exc

    async def get(self, seq: int) -> DeadLetter:
        """The entry with id ``seq``; :class:`DeadLetterNotFound` if there is none."""
        if _count(seq, "seq") < 1:
            raise DeadLetterNotFound(seq)  # sequences start at 1: nothing to ask the server
        try:
            raw = await self._js.get_msg(self.stream, seq)
        except nats.js.errors.NotFoundError as exc:
            if exc.err_code == _STREAM_NOT_FOUND:
                raise NotProvisioned.absent(f"stream {self.stream!r}") from exc
            raise DeadLetterNotFound(seq) from exc
        except NATS_ERRORS as exc:
            raise nats_error(exc, f"reading dead letter {seq}") from exc
        return _parse(seq, raw.data or b"", dict(raw.headers or {}))

    async def list(self, limit: int = 100) -> list[DeadLetter]:
        """The oldest ``limit`` entries still in the queue (none if it is empty)."""
        limit = _count(limit, "limit", minimum=0)
        state = (await self._info(f"listing {self.stream}")).state
        found: list[DeadLetter] = []
        seq = max(state.first_seq, 1)  # an empty stream reports first_seq 0
        while state.messages and seq <= state.last_seq and len(found) < limit:
            with contextlib.suppress(DeadLetterError):  # deleted entries leave gaps
                found.append(await self.get(seq))
            seq += 1
        return found

    async def _info(self, what: str) -> StreamInfo:
        try:
            return await self._js.stream_info(self.stream)
        except nats.js.errors.NotFoundError as exc:
            raise NotProvisioned.absent(f"stream {self.stream!r}") from exc
        except NATS_ERRORS as exc:
            raise nats_error(exc, what) from exc

    async def redrive(self, seq: int, *, verify: bool = True) -> int:
        """Publish the original bytes again on their subject, then drop the entry.
        (A keyed event is published on its keyed subject and lands in its partition again.)

        Returns the new stream sequence. The signature still verifies: the bytes are the
        same, and they are checked before anything is sent (a forged or expired entry is
        refused; ``verify=False`` skips that where this bus has no keyring, consumers still
        verify). The consumer that gave up gets the event once more; other consumers of the
        subject, which processed it already, refuse it as a replay.
        """
        letter = await self.get(seq)
        tenant, source, event_id = self._identify(seq, letter, verify)
        if self._seen is not None:
            try:
                await self._seen.forget(letter.consumer, tenant, source, event_id)
            except NATS_ERRORS as exc:
                detail = f"could not redrive dead letter {seq}: {describe(exc)}"
                raise DeadLetterError(detail) from exc
        msg_id = f"redrive:{self.stream}:{seq}"
        try:
            subject = republish_subject(self._root, letter.subject)
            headers = wire_headers(_signature(letter.headers), msg_id)
            future = await self._publisher.publish(subject, letter.data, headers)
            ack = await future
        except NATS_ERRORS as exc:
            raise DeadLetterError(f"could not redrive dead letter {seq}: {describe(exc)}") from exc
        try:
            await self._js.delete_msg(self.stream, seq)
        except nats.js.errors.NotFoundError:
            pass  # a concurrent redrive of the same entry removed it: the goal is reached
        except NATS_ERRORS as exc:
            raise nats_error(exc, f"removing redriven dead letter {seq}") from exc
        return int(ack.seq)

    def _identify(self, seq: int, letter: DeadLetter, verify: bool) -> tuple[str, str, str]:
        if verify:
            opened = self._codec.open(letter.data, letter.headers, letter.subject)
            if isinstance(opened, Rejection):
                raise DeadLetterError(
                    f"refusing to redrive {seq}: {opened.reason} ({opened.detail})"
                )
            return opened.tenant, opened.source, opened.id
        try:  # unverified on purpose: only to find the consumer's replay claim
            claims = json.loads(letter.data)
            return str(claims["tenant"]), str(claims["source"]), str(claims["id"])
        except (IndexError, ValueError, KeyError, TypeError) as exc:
            raise DeadLetterError(f"entry {seq} is not a signed event: {exc!r}") from None

    async def purge(self) -> int:
        """Drop every entry; returns how many there were."""
        info = await self._info(f"purging {self.stream}")
        with mapped_nats_errors(f"purging {self.stream}"):
            await self._js.purge_stream(self.stream)
        return int(info.state.messages)


def _parse(seq: int, data: bytes, headers: dict[str, str]) -> DeadLetter:
    try:
        return DeadLetter(
            seq=seq,
            subject=headers[f"{_PREFIX}Subject"],
            consumer=headers[f"{_PREFIX}Consumer"],
            reason=headers[f"{_PREFIX}Reason"],
            error=headers.get(f"{_PREFIX}Error", ""),
            deliveries=int(headers[f"{_PREFIX}Deliveries"]),
            stream_seq=int(headers[f"{_PREFIX}Stream-Seq"]),
            time=datetime.fromisoformat(headers[f"{_PREFIX}Time"]),
            data=data,
            headers={
                k.removeprefix(_ORIGINAL): v for k, v in headers.items() if k.startswith(_ORIGINAL)
            },
        )
    except (KeyError, ValueError) as exc:
        raise DeadLetterError(f"entry {seq} is not a dead letter: {exc!r}") from None


def _signature(original: dict[str, str]) -> str:
    """The detached signature an event was stored with, from a dead letter's copy of its
    headers (the redrive sends it again, with the event's content type)."""
    signature = original.get(SIGNATURE_HEADER)
    if signature is None:
        raise DeadLetterError("the entry has no signature header: it is not a signed event")
    return signature


def _count(value: int, field: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"expected an int, got {type(value).__name__}", field=field)
    if minimum is not None and value < minimum:
        raise InvalidArgument(f"must be >= {minimum}, got {value}", field=field)
    return value
