"""What a projection does with an event it cannot apply: stop, or dead-letter it and go on.

``on_error="stop"`` (the default): a model whose ``apply`` raises stops the projection
(:class:`~eventwire.ProjectionFailed`); nothing after the last checkpoint is stored, and a
restart tries that event again.

``on_error="dead-letter"``: the event is stored in the dead-letter queue (``<root>-dlq``,
consumer ``projection-<name>``, reason ``projection-failed``, the error text, the stream
sequence; the original signed bytes and headers) *before* anything else happens. Then the
read model is rebuilt without it: the last checkpoint is restored and the events applied
since then are applied again (the projection holds them, at most ``feed.batch``), so a
model that raised half-way through ``apply`` leaves nothing of that event behind. Then a
checkpoint is written past it: a restart does not see it again. ``max_failures=n`` stops
the projection after ``n`` dead letters in a row (no event applied in between): the n-th
is dead-lettered and checkpointed like the others, then :class:`ProjectionFailed` is raised.

A refused event (the codec refuses it: forged, unknown key, misplaced...) never stops a
projection, whatever ``on_error``: whoever may publish on its subjects could stop it
otherwise. It is counted and audited by the bus, and skipped; with ``"dead-letter"`` it is
dead-lettered as well (reason ``refused``, the refusal reason and detail as the error), so
that every event the read model does not include is in the dead-letter queue.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

from ._errors import InvalidArgument

if TYPE_CHECKING:
    from nats.aio.msg import Msg

    from ._dlq import DeadLetterQueue

__all__ = ["ErrorPolicy", "ProjectionOnError", "ProjectionStats", "dead_letter"]

ProjectionOnError = Literal["stop", "dead-letter"]
FAILED = "projection-failed"  # the model's apply raised
REFUSED = "refused"  # the codec refused the event (verification, placement, time)
_MAX_NAME = 64 - len("projection-")  # a dead-letter consumer is one subject token


@dataclass
class ProjectionStats:
    """What a running projection did with the events it read (since it was created)."""

    dead_lettered: int = 0  # entries it stored in the dead-letter queue
    failed: int = 0  # events its model raised on
    refused: int = 0  # events the codec refused (skipped; dead-lettered with "dead-letter")


class ErrorPolicy:
    """``on_error`` and ``max_failures``, checked, and the count of failures in a row."""

    __slots__ = ("in_a_row", "max_failures", "on_error")

    def __init__(self, name: str, on_error: ProjectionOnError, max_failures: int | None) -> None:
        if on_error not in get_args(ProjectionOnError):
            raise InvalidArgument(
                f"must be 'stop' or 'dead-letter', got {on_error!r}", field="on_error"
            )
        if max_failures is not None and (
            isinstance(max_failures, bool) or not isinstance(max_failures, int) or max_failures < 1
        ):
            raise InvalidArgument(
                f"must be None or an int >= 1, got {max_failures!r}", field="max_failures"
            )
        if max_failures is not None and on_error == "stop":
            raise InvalidArgument("only with on_error='dead-letter'", field="max_failures")
        if on_error == "dead-letter" and len(name) > _MAX_NAME:
            raise InvalidArgument(
                f"at most {_MAX_NAME} characters with on_error='dead-letter' (its dead "
                "letters are filed under 'projection-<name>')",
                field="name",
            )
        self.on_error: ProjectionOnError = on_error
        self.max_failures = max_failures
        self.in_a_row = 0

    @property
    def dead_letters(self) -> bool:
        return self.on_error == "dead-letter"

    def exhausted(self) -> bool:
        """Whether the failures in a row reached ``max_failures``."""
        return self.max_failures is not None and self.in_a_row >= self.max_failures


def consumer_name(projection: str) -> str:
    """The consumer a projection's dead letters are filed under (never an agent's durable:
    a redrive forgets the replay claim of the consumer named in the entry)."""
    return f"projection-{projection}"


async def dead_letter(
    dlq: DeadLetterQueue, message: Msg, *, projection: str, reason: str, error: str
) -> None:
    """Store ``message`` (a stored event read by the projection, never acknowledged: its
    consumer has no acks) unchanged in the dead-letter queue; :class:`DeadLetterError` if
    JetStream did not store it."""
    await dlq.put(
        message.data,
        subject=message.subject,
        original_headers=message.headers,
        consumer=consumer_name(projection),
        stream_seq=message.metadata.sequence.stream,
        reason=reason,
        error=error,
        deliveries=1,
    )
