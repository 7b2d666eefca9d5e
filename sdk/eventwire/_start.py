"""Where a new subscription starts reading: a stream sequence, a time, or the last N events.

A subscription that starts *later* than the first event would open a hole in replay
protection if it simply began there: a consumer refuses an event id it has claimed before at
another stream sequence (``_seen``), so a captured event re-published after the start point
whose original was stored just before it would be claimed for the first time, and accepted.
An original can only be stored up to the replay window's horizon before any copy that the
time check lets through (``iat - skew <= stored <= iat + max_age + skew``), so the consumer
starts one horizon *before* the start point: what it reads there is only claimed (never
handed to the handler) and acknowledged, and from the start point on every event is
delivered as usual, its claim compared with those. Other subscriptions are untouched: each
consumer has its own claims. Without replay checks (``replay_check=False`` or a bus without
a replay window) there is no look-back.

The start point is kept in the consumer's metadata, so a restarted instance of the same
durable resumes where the consumer is, with the same gate.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import nats.js.errors
from nats.js.api import DeliverPolicy

from ._errors import InvalidArgument, mapped_nats_errors

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext
    from nats.js.api import ConsumerConfig

__all__ = ["FromSequence", "FromTime", "LastN", "StartGate", "StartPoint"]

_FROM_SEQ = "eventwire-from-seq"
_FROM_TIME = "eventwire-from-time"


def _count(value: object, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgument(f"must be an int >= 1, got {value!r}", field=field)
    return value


@dataclass(frozen=True, slots=True)
class FromSequence:
    """Start at stream sequence ``seq`` (>= 1) of the events stream."""

    seq: int

    def __post_init__(self) -> None:
        _count(self.seq, "seq")


@dataclass(frozen=True, slots=True)
class FromTime:
    """Start at the first event the stream stored at or after ``at`` (timezone-aware)."""

    at: datetime

    def __post_init__(self) -> None:
        if not isinstance(self.at, datetime) or self.at.tzinfo is None:
            raise InvalidArgument(f"must be a timezone-aware datetime, got {self.at!r}", field="at")


@dataclass(frozen=True, slots=True)
class LastN:
    """Start ``count`` stream sequences before the end of the events stream (its last
    ``count`` messages, of which those matching the pattern are delivered)."""

    count: int

    def __post_init__(self) -> None:
        _count(self.count, "count")


StartPoint = FromSequence | FromTime | LastN


@dataclass(frozen=True, slots=True)
class StartGate:
    """The resolved start point: events before it are only claimed, then acknowledged."""

    seq: int | None = None  # the first stream sequence delivered
    time: float | None = None  # or the first stored time delivered (seconds since the epoch)

    def passes(self, msg: Msg) -> bool:
        """Whether ``msg`` is at or after the start point (delivered to the handler)."""
        meta = msg.metadata
        if self.seq is not None:
            return meta.sequence.stream >= self.seq
        assert self.time is not None
        return meta.timestamp.timestamp() >= self.time

    def metadata(self) -> dict[str, str]:
        if self.seq is not None:
            return {_FROM_SEQ: str(self.seq)}
        return {_FROM_TIME: repr(self.time)}

    @classmethod
    def of(cls, config: ConsumerConfig) -> StartGate | None:
        """The gate a consumer was created with (None: it has none)."""
        meta = config.metadata or {}
        try:
            if _FROM_SEQ in meta:
                return cls(seq=int(meta[_FROM_SEQ]))
            if _FROM_TIME in meta:
                return cls(time=float(meta[_FROM_TIME]))
        except ValueError:
            return None
        return None


async def resolve(
    js: JetStreamContext, stream: str, point: StartPoint, lookback: float | None
) -> tuple[StartGate, dict[str, object]]:
    """The gate of ``point`` and the consumer settings that start reading there, or
    ``lookback`` seconds of stored time before it (None: no look-back)."""
    if isinstance(point, FromTime):
        at = point.at.timestamp()
        gate = StartGate(time=at)
    else:
        seq = point.seq if isinstance(point, FromSequence) else await _last_n(js, stream, point)
        gate = StartGate(seq=seq)
        if lookback is None:
            return gate, {"deliver_policy": DeliverPolicy.BY_START_SEQUENCE, "opt_start_seq": seq}
        at = await _stored_at(js, stream, seq)
    if lookback is not None:
        at -= lookback
    start = datetime.fromtimestamp(max(0.0, at), UTC)
    return gate, {"deliver_policy": DeliverPolicy.BY_START_TIME, "opt_start_time": start}


async def _last_n(js: JetStreamContext, stream: str, point: LastN) -> int:
    with mapped_nats_errors(f"read the state of {stream}"):
        info = await js.stream_info(stream)
    return max(1, int(info.state.last_seq) - point.count + 1)


async def _stored_at(js: JetStreamContext, stream: str, seq: int) -> float:
    """When the first message at or after ``seq`` was stored (now if there is none)."""
    with mapped_nats_errors(f"read {stream} at sequence {seq}"):
        try:
            found = await js.get_msg(stream, seq, subject=">", next=True)
        except nats.js.errors.NotFoundError:
            found = None
    if found is None or found.time is None:
        return datetime.now(UTC).timestamp()
    return found.time.timestamp()


def check_start(value: object) -> None:
    """``InvalidArgument`` unless ``value`` is ``"all"``, ``"new"`` or a start point."""
    if value in ("all", "new") or isinstance(value, FromSequence | FromTime | LastN):
        return
    detail = f"must be 'all', 'new', FromSequence, FromTime or LastN, got {value!r}"
    raise InvalidArgument(detail, field="start")
