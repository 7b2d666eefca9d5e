"""Replay protection primitives, storage-agnostic: a time window and a seen-set.

An event is accepted only inside its ``iat``/``exp`` window (with a small clock ``skew``) and
only once per ``(tenant, source, id)``: the SDK keeps the ids it has received in a KV bucket
under :func:`seen_key` (a hash: an id a signer chose is never used raw as a key or subject
token), with :class:`SeenSet` available as a first-level cache in front of it. Both must
remember an id for at least :attr:`ReplayWindow.horizon` seconds, the longest time an event
can pass :meth:`ReplayWindow.check_time`.

A replay is the same event id at a *different* position in the stream. A JetStream
redelivery of the same message is not a replay and must still be processed, whatever its
delivery count says (after a server crash it may count as a first delivery again). So the
SDK records, with each id, the stream sequence it was received at, claims the id on every
delivery, and refuses an id only when its record names another sequence. A redelivery of an
id whose handler already ran (the ack was lost) is acked without running the handler again
by an idempotent consumer. This module only provides the primitives.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

from ._errors import EnvelopeError
from ._keys import check_name

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

ReplayReason = Literal["expired", "too-old", "from-the-future", "bad-times", "already-seen"]
REPLAY_REASONS: Final[tuple[ReplayReason, ...]] = (
    "expired",
    "too-old",
    "from-the-future",
    "bad-times",
    "already-seen",
)
SEEN_HASH_CHARS = 32  # 128 bits of SHA-256, hex


class ReplayRefused(EnvelopeError):
    """An event outside its time window, or seen before. ``reason`` is one of REPLAY_REASONS.

    ``already-seen`` is raised by the SDK when :meth:`SeenSet.add_if_new` (or the KV
    bucket) says the id was processed already.
    """

    reason: str = "replay"

    def __init__(
        self,
        reason: ReplayReason,
        detail: str,
        *,
        kid: str | None = None,
        iat: object = None,
        exp: object = None,
        now: float | None = None,
    ) -> None:
        if reason not in REPLAY_REASONS:
            raise ValueError(f"unknown replay reason {reason!r}")
        self.reason = reason  # set first: EnvelopeError's message starts with it
        super().__init__(detail, kid=kid)
        self.iat = iat
        self.exp = exp
        self.now = now


def _show(value: object) -> str:
    """A short rendering; huge ints would be slow (or refused) to print in full."""
    if type(value) is int and value.bit_length() > 64:
        return f"<int of {value.bit_length()} bits>"
    return repr(value)[:40]


def _finite(name: str, value: float, *, positive: bool) -> float:
    """``value`` as a float if it is a finite, non-negative (or positive) int or float."""
    try:
        number = float(value) if type(value) in (int, float) else math.nan
    except OverflowError:  # an int beyond float range
        number = math.inf
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {_show(value)}")
    if number < 0 or (positive and number == 0):
        raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'}, got {value!r}")
    return number


@dataclass(frozen=True, slots=True)
class ReplayWindow:
    """Events are accepted if stored (or, off a stream, received) between ``iat - skew`` and
    ``iat + max_age + skew``, and, when they carry an ``exp``, consumed before ``exp + skew``.
    ``clock`` (default ``time.time``) tells the time for ``exp`` and for events off a stream."""

    max_age: float
    skew: float = 30.0
    clock: Callable[[], float] = field(default=time.time, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_age", _finite("max_age", self.max_age, positive=True))
        object.__setattr__(self, "skew", _finite("skew", self.skew, positive=False))

    @property
    def horizon(self) -> float:
        """The longest an event can pass :meth:`check_time`: how long to remember its id."""
        return self.max_age + 2 * self.skew

    def check_time(
        self,
        iat: int,
        exp: int | None = None,
        now: float | None = None,
        *,
        stored: float | None = None,
    ) -> None:
        """Refuse with :class:`ReplayRefused` unless the event is inside its window.

        ``iat`` is checked against ``stored``, when the event was stored (a stream's own
        timestamp, which no client sets), else against ``now``: an event stored when it was
        signed is accepted however late it is consumed, a captured event stored again later
        is ``too-old``. ``exp``, when the publisher set one, is checked against ``now``.
        Boundaries are inclusive; ``iat``/``exp`` are integer seconds since the epoch, ints of
        any size are handled exactly.
        """
        now = self.clock() if now is None else _finite("now", now, positive=False)
        at = now if stored is None else _finite("stored", stored, positive=False)
        times: dict[str, Any] = {"iat": iat, "exp": exp, "now": now}
        if type(iat) is not int or (exp is not None and type(exp) is not int):
            raise ReplayRefused("bad-times", "iat (and exp, if set) must be integers", **times)
        if exp is not None and exp < iat:
            raise ReplayRefused(
                "bad-times", f"exp {_show(exp)} is before iat {_show(iat)}", **times
            )
        # Only floats are added or subtracted, ints are only compared: no overflow.
        if iat > at + self.skew:
            detail = f"iat {_show(iat)} is more than {self.skew:g}s after {at:.0f}"
            raise ReplayRefused("from-the-future", detail, **times)
        if exp is not None and exp < now - self.skew:
            detail = f"exp {_show(exp)} is more than {self.skew:g}s before now {now:.0f}"
            raise ReplayRefused("expired", detail, **times)
        if iat < at - self.max_age - self.skew:
            when = "stored" if stored is not None else "now"
            detail = (
                f"iat {_show(iat)} is older than {self.max_age:g}s (+{self.skew:g}s skew) "
                f"when {when} ({at:.0f})"
            )
            raise ReplayRefused("too-old", detail, **times)

    def check_claims(
        self, claims: Mapping[str, Any], now: float | None = None, *, stored: float | None = None
    ) -> None:
        """:meth:`check_time` on the ``iat``/``exp`` claims (a missing ``iat`` is bad-times)."""
        self.check_time(claims.get("iat"), claims.get("exp"), now, stored=stored)  # type: ignore[arg-type]  # any JSON: check_time refuses non-ints


def seen_key(tenant: str, source: str, event_id: str) -> str:
    """The KV key of an event id: ``<tenant>.<32 hex>``, only ``[A-Za-z0-9_.-]``.

    The hash covers all three parts, unambiguously; the tenant prefix keeps tenants apart
    and lets one tenant's keys be watched or purged as ``<tenant>.>``.
    """
    check_name("tenant", tenant)
    for name, value in (("source", source), ("event_id", event_id)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name} must be a non-empty string")
    material = json.dumps([tenant, source, event_id], ensure_ascii=True).encode("ascii")
    return f"{tenant}.{hashlib.sha256(material).hexdigest()[:SEEN_HASH_CHARS]}"


class SeenSet:
    """In-memory ids with a time to live: a first-level cache in front of the KV bucket.

    An id added at ``t`` is seen while ``now < t + ttl``. ``now`` defaults to
    ``time.monotonic()``; pass it always or never, as clocks must not be mixed.
    Not thread-safe (the SDK uses it from its event loop).
    """

    __slots__ = ("_expiry", "_heap", "ttl")

    def __init__(self, ttl: float) -> None:
        self.ttl = _finite("ttl", ttl, positive=True)
        self._expiry: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def _now(self, now: float | None) -> float:
        return time.monotonic() if now is None else _finite("now", now, positive=False)

    def purge(self, now: float | None = None) -> None:
        """Forget every id whose time to live is over."""
        now = self._now(now)
        while self._heap and self._heap[0][0] <= now:
            expires, key = heapq.heappop(self._heap)
            if self._expiry.get(key) == expires:
                del self._expiry[key]

    def seen(self, key: str, now: float | None = None) -> bool:
        """Whether ``key`` is remembered and not expired (does not add it)."""
        now = self._now(now)
        self.purge(now)
        return key in self._expiry

    def add_if_new(self, key: str, now: float | None = None) -> bool:
        """Remember ``key``; True if it was new, False if it is seen (a replay)."""
        if not isinstance(key, str):
            raise TypeError(f"key must be a str, got {type(key).__name__}")
        now = self._now(now)
        if self.seen(key, now):
            return False
        expires = now + self.ttl
        self._expiry[key] = expires
        heapq.heappush(self._heap, (expires, key))
        return True

    def discard(self, key: str) -> None:
        """Forget ``key`` (e.g. its handler failed, so a redelivery must run it again)."""
        self._expiry.pop(key, None)

    def __len__(self) -> int:
        return len(self._expiry)
