"""Ed25519 identities, public keys and the principals that own them."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

import nacl.bindings
import nacl.exceptions
import nacl.signing
import nacl.utils

from ._b64 import b64url_encode
from ._errors import BadSignature, InvalidName, KeyRejected

_NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")
PUBLIC_KEY_BYTES = 32
SEED_BYTES = 32


def check_name(kind: str, value: str) -> str:
    """Return ``value`` if it is a valid tenant/agent name, else raise :class:`InvalidName`."""
    if not isinstance(value, str) or not _NAME.match(value):
        raise InvalidName(kind, value)
    return value


@dataclass(frozen=True, slots=True)
class Principal:
    """Who owns a key: one agent of one tenant. ``source`` is its CloudEvents source."""

    tenant: str
    agent: str

    def __post_init__(self) -> None:
        check_name("tenant", self.tenant)
        check_name("agent", self.agent)

    @property
    def source(self) -> str:
        return f"{self.tenant}/{self.agent}"

    @classmethod
    def from_source(cls, source: str) -> Principal:
        tenant, sep, agent = source.partition("/")
        if not sep:
            raise InvalidName("source", source)
        return cls(tenant, agent)


@dataclass(frozen=True, slots=True)
class PublicKey:
    """An Ed25519 public key. ``kid`` is its RFC 7638 JWK thumbprint (SHA-256, base64url)."""

    raw: bytes
    kid: str = field(init=False, compare=False)
    _verifier: nacl.signing.VerifyKey = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or len(self.raw) != PUBLIC_KEY_BYTES:
            raise KeyRejected("an Ed25519 public key is 32 bytes")
        # Rejects small-order points and non-canonical encodings (libsodium's check).
        if not nacl.bindings.crypto_core_ed25519_is_valid_point(self.raw):
            raise KeyRejected("small-order or non-canonical Ed25519 point")
        object.__setattr__(self, "kid", _thumbprint(self.raw))
        object.__setattr__(self, "_verifier", nacl.signing.VerifyKey(self.raw))

    def verify(self, message: bytes, signature: bytes) -> None:
        """Check ``signature`` over ``message`` (libsodium, strict); :class:`BadSignature`
        if it does not verify. It raises: there is no verdict to forget to check."""
        try:
            self._verifier.verify(message, signature)
        except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
            raise BadSignature("signature does not verify", kid=self.kid) from None

    def to_jwk(self) -> dict[str, str]:
        return {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(self.raw).decode()}


def _thumbprint(raw: bytes) -> str:
    members = {"crv": "Ed25519", "kty": "OKP", "x": b64url_encode(raw).decode()}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return b64url_encode(hashlib.sha256(canonical).digest()).decode()


class Identity:
    """An agent's private signing key together with the principal that owns it.

    Event keys are separate Ed25519 keys, never NATS nkeys (see SECURITY.md).
    """

    __slots__ = ("_signer", "principal", "public_key")

    def __init__(self, principal: Principal, seed: bytes) -> None:
        if not isinstance(seed, bytes) or len(seed) != SEED_BYTES:
            raise KeyRejected("an Ed25519 seed is 32 bytes")
        self.principal = principal
        self._signer = nacl.signing.SigningKey(seed)
        self.public_key = PublicKey(bytes(self._signer.verify_key))

    @classmethod
    def generate(cls, tenant: str, agent: str) -> Identity:
        return cls(Principal(tenant, agent), nacl.utils.random(SEED_BYTES))

    @property
    def kid(self) -> str:
        return self.public_key.kid

    @property
    def seed(self) -> bytes:
        """The 32-byte private seed. Handle with care: never log or send it."""
        return bytes(self._signer)

    def sign(self, message: bytes) -> bytes:
        """Return the 64-byte Ed25519 signature of ``message``."""
        return self._signer.sign(message).signature

    def trusted(self, *, not_after: datetime | None = None) -> TrustedKey:
        """The keyring entry that lets receivers verify this identity's events."""
        return TrustedKey(self.public_key, self.principal, not_after=not_after)

    def __repr__(self) -> str:
        return f"Identity({self.principal.source!r}, kid={self.kid!r})"


@dataclass(frozen=True, slots=True)
class TrustedKey:
    """A public key trusted for one principal, until ``not_after`` unless revoked."""

    public_key: PublicKey
    principal: Principal
    not_after: datetime | None = None
    revoked: bool = False

    @property
    def kid(self) -> str:
        return self.public_key.kid

    def valid_at(self, when: datetime | None = None) -> bool:
        if self.revoked:
            return False
        if self.not_after is None:
            return True
        return (when or datetime.now(UTC)) <= self.not_after
