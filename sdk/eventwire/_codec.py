"""Signing events into envelopes and opening received envelopes into :class:`Event`.

Opening runs off the event loop in a thread pool when there are several envelopes:
libsodium releases the GIL, so verification proceeds in parallel while results keep
their order.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from eventwire_security import (
    EnvelopeError,
    MalformedClaims,
    encode_claims,
    message_id,
    sign_payload,
    verify_envelope,
)

from ._errors import EventTooLarge, InvalidEvent, WrongTenant
from ._event import build_claims, event_from_claims
from ._subjects import from_wire, to_wire

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from eventwire_security import Identity, Keyring

    from ._event import Event, Publishable

log = logging.getLogger("eventwire.security")
_PARALLEL_FROM = 4
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Signed:
    """A signed event ready to send."""

    event_id: str
    subject: str
    wire_subject: str
    token: bytes
    msg_id: str


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a received message was refused before any handler saw it."""

    reason: str
    detail: str
    wire_subject: str
    kid: str | None = None


@dataclass
class SecurityStats:
    """Counts of verified and refused messages, refusals by reason."""

    verified: int = 0
    rejected: Counter[str] = field(default_factory=Counter)


class Codec:
    """Signs and verifies for one tenant under one subject root."""

    def __init__(
        self,
        *,
        tenant: str,
        root: str,
        keyring: Keyring,
        max_bytes: int,
        on_reject: Callable[[Rejection], None] | None = None,
    ) -> None:
        self.tenant = tenant
        self.on_reject = on_reject
        self.root = root
        self.keyring = keyring
        self.max_bytes = max_bytes
        self.stats = SecurityStats()
        workers = max(2, min(4, os.cpu_count() or 2))
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="eventwire-crypto")
        self._workers = workers

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def sign(
        self, item: Publishable, identity: Identity, *, subject: str | None = None, **context: Any
    ) -> Signed:
        """Sign ``item`` as ``identity``; ``subject`` overrides the item's (direct calls)."""
        if identity.principal.tenant != self.tenant:
            raise WrongTenant(identity.principal.tenant, self.tenant)
        claims = build_claims(item, identity.principal, **context)
        if subject is not None:
            claims["subject"] = subject
        try:
            payload = encode_claims(claims)
        except MalformedClaims as exc:
            raise InvalidEvent(exc.detail, field="data") from None
        token = sign_payload(payload, identity)
        if len(token) > self.max_bytes:
            raise EventTooLarge(len(token), self.max_bytes)
        return Signed(
            event_id=claims["id"],
            subject=claims["subject"],
            wire_subject=to_wire(self.root, claims["subject"]),
            token=token,
            msg_id=message_id(token),
        )

    async def sign_many(
        self, items: Sequence[Publishable], identity: Identity, **context: Any
    ) -> list[Signed]:
        if len(items) < _PARALLEL_FROM:
            return [self.sign(item, identity, **context) for item in items]
        loop = asyncio.get_running_loop()
        chunks = _chunks(list(items), self._workers)
        sign = functools.partial(self._sign_chunk, identity, context)
        parts = await asyncio.gather(
            *(loop.run_in_executor(self._pool, sign, chunk) for chunk in chunks)
        )
        return [signed for part in parts for signed in part]

    def _sign_chunk(
        self, identity: Identity, context: dict[str, Any], items: list[Publishable]
    ) -> list[Signed]:
        return [self.sign(item, identity, **context) for item in items]

    def _open_chunk(self, items: list[tuple[bytes, str]]) -> list[Event | Rejection]:
        return [self.open(token, subject) for token, subject in items]

    def open(self, token: bytes, wire_subject: str) -> Event | Rejection:
        """Verify, then parse, then check tenant and subject. Never raises for bad input."""
        kid: str | None = None
        try:
            envelope = verify_envelope(token, self.keyring, max_bytes=self.max_bytes)
            kid = envelope.signer.kid
            claims = envelope.claims
            if claims.get("tenant") != self.tenant:
                return Rejection("wrong-tenant", f"tenant {claims.get('tenant')!r}", wire_subject)
            if from_wire(self.root, wire_subject) != claims.get("subject"):
                return Rejection(
                    "subject-mismatch",
                    f"signed subject {claims.get('subject')!r} arrived on {wire_subject!r}",
                    wire_subject,
                    kid,
                )
            return event_from_claims(claims, kid)
        except EnvelopeError as exc:
            return Rejection(exc.reason, exc.detail, wire_subject, exc.kid)
        except InvalidEvent as exc:
            return Rejection("invalid-event", str(exc), wire_subject, kid)

    async def open_many(self, items: Sequence[tuple[bytes, str]]) -> list[Event | Rejection]:
        """Open in parallel threads when there are several, keeping the order."""
        if len(items) < _PARALLEL_FROM:
            results = [self.open(token, subject) for token, subject in items]
        else:
            loop = asyncio.get_running_loop()
            parts = await asyncio.gather(
                *(
                    loop.run_in_executor(self._pool, self._open_chunk, chunk)
                    for chunk in _chunks(list(items), self._workers)
                )
            )
            results = [result for part in parts for result in part]
        for result in results:
            self.record(result)
        return results

    def record(self, result: Event | Rejection) -> None:
        if isinstance(result, Rejection):
            self.stats.rejected[result.reason] += 1
            log.warning(
                "refused event on %s: %s (%s) kid=%s",
                result.wire_subject,
                result.reason,
                result.detail,
                result.kid,
            )
            if self.on_reject is not None:
                self.on_reject(result)
        else:
            self.stats.verified += 1


def _chunks(items: list[_T], count: int) -> list[list[_T]]:
    size = -(-len(items) // count)
    return [items[start : start + size] for start in range(0, len(items), size)]
