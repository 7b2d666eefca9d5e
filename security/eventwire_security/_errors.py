"""The one exception tree of ``eventwire_security``."""

from __future__ import annotations


class EventwireError(Exception):
    """Base of every error raised by ``eventwire`` and ``eventwire_security``: one tree, so
    ``except eventwire.EventwireError`` also catches a bad key file, policy or name. It lives
    here, in the pure package at the bottom, so the security package imports nothing above."""


class SecurityError(EventwireError):
    """Base of every error raised by ``eventwire_security``."""


class InvalidName(SecurityError, ValueError):
    """A tenant or agent name is not a valid principal name."""

    def __init__(self, kind: str, value: str) -> None:
        super().__init__(
            f"invalid {kind} name {value!r}: use 1-64 characters from "
            "a-z A-Z 0-9 '_' '-', starting with a letter or digit"
        )
        self.kind = kind
        self.value = value


class KeyRejected(SecurityError):
    """A key cannot be used: wrong length, small-order point, or bound to another owner."""

    def __init__(self, reason: str, kid: str | None = None) -> None:
        super().__init__(f"key rejected: {reason}" + (f" (kid {kid})" if kid else ""))
        self.reason = reason
        self.kid = kid


class EnvelopeError(SecurityError):
    """A signed envelope was refused. ``reason`` is a short, stable machine code."""

    reason: str = "envelope"

    def __init__(self, detail: str, *, kid: str | None = None) -> None:
        super().__init__(f"{self.reason}: {detail}")
        self.detail = detail
        self.kid = kid


class MalformedEnvelope(EnvelopeError):
    """Not a compact JWS of the expected shape (parts, base64url, protected header)."""

    reason = "malformed"


class OversizedEnvelope(MalformedEnvelope):
    """The envelope is larger than the configured limit."""

    reason = "oversized"


class UnknownKey(EnvelopeError):
    """The ``kid`` is not in the keyring."""

    reason = "unknown-key"


class KeyNotValid(EnvelopeError):
    """The key is known but revoked or expired."""

    reason = "key-not-valid"


class BadSignature(EnvelopeError):
    """The signature does not verify over the received bytes."""

    reason = "bad-signature"


class MalformedClaims(EnvelopeError):
    """The signed payload is not strict JSON of the expected shape."""

    reason = "malformed-claims"


class OwnerMismatch(EnvelopeError):
    """The claims name another source or tenant than the key's owner."""

    reason = "owner-mismatch"
