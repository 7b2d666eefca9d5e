"""Shared fixtures for the eventwire_security tests (pure, synchronous, no NATS)."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import TYPE_CHECKING, Any

import pytest

from eventwire_security import (
    BadSignature,
    EnvelopeError,
    Identity,
    KeyNotValid,
    Keyring,
    MalformedClaims,
    MalformedEnvelope,
    OversizedEnvelope,
    OwnerMismatch,
    Principal,
    UnknownKey,
    sign_claims,
    verify_envelope,
)

if TYPE_CHECKING:
    from collections.abc import Callable

# The stable machine codes, spelled out here so a renamed code fails the tests.
REASONS: dict[type[EnvelopeError], str] = {
    MalformedEnvelope: "malformed",
    OversizedEnvelope: "oversized",
    UnknownKey: "unknown-key",
    KeyNotValid: "key-not-valid",
    BadSignature: "bad-signature",
    MalformedClaims: "malformed-claims",
    OwnerMismatch: "owner-mismatch",
}


def _identity(tenant: str, agent: str) -> Identity:
    seed = hashlib.sha256(f"eventwire-test-seed:{tenant}/{agent}".encode()).digest()
    return Identity(Principal(tenant, agent), seed)


def b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


@pytest.fixture(scope="session")
def alice() -> Identity:
    return _identity("acme", "alice")


@pytest.fixture(scope="session")
def bob() -> Identity:
    """Another agent of the same tenant (the compromised agent in most attacks)."""
    return _identity("acme", "bob")


@pytest.fixture(scope="session")
def eve() -> Identity:
    """An agent of another tenant."""
    return _identity("evil", "eve")


@pytest.fixture
def keyring(alice: Identity, bob: Identity, eve: Identity) -> Keyring:
    return Keyring.of(alice, bob, eve)


@pytest.fixture(scope="session")
def claims_of() -> Callable[..., dict[str, Any]]:
    """Claims naming ``identity`` as their source, plus ``extra`` members."""

    def make(identity: Identity, **extra: Any) -> dict[str, Any]:
        principal = identity.principal
        claims: dict[str, Any] = {
            "source": principal.source,
            "tenant": principal.tenant,
            "id": "evt-0001",
            "subject": f"{principal.tenant}.orders.created",
            "data": {"order": 42, "note": "café ✓", "items": [1, 2.5, True, None]},
        }
        claims.update(extra)
        return claims

    return make


@pytest.fixture(scope="session")
def payload(alice: Identity, claims_of: Callable[..., dict[str, Any]]) -> bytes:
    """Alice's claims as JSON bytes, for envelopes forged around them."""
    return json.dumps(claims_of(alice)).encode()


@pytest.fixture(scope="session")
def token(alice: Identity, claims_of: Callable[..., dict[str, Any]]) -> bytes:
    """A valid envelope signed by alice."""
    return sign_claims(claims_of(alice), alice)


@pytest.fixture(scope="session")
def forge() -> Callable[..., bytes]:
    """Build a compact JWS from raw parts, signed by ``signer`` over the exact signing input.

    ``header`` may be a dict (compact JSON) or raw JSON bytes; ``payload`` is raw bytes.
    ``header_b64`` / ``payload_b64`` override the encoded parts verbatim.
    """

    def make(
        signer: Identity,
        header: dict[str, Any] | bytes | None = None,
        payload: bytes = b"{}",
        *,
        header_b64: bytes | None = None,
        payload_b64: bytes | None = None,
    ) -> bytes:
        if header is None:
            header = {"alg": "Ed25519", "kid": signer.kid}
        if isinstance(header, dict):
            header = json.dumps(header, separators=(",", ":")).encode()
        h = b64(header) if header_b64 is None else header_b64
        p = b64(payload) if payload_b64 is None else payload_b64
        signing_input = h + b"." + p
        return signing_input + b"." + b64(signer.sign(signing_input))

    return make


@pytest.fixture(scope="session")
def refused() -> Callable[..., EnvelopeError]:
    """Assert ``verify_envelope`` refuses ``token`` with exactly ``cls`` and its reason code."""

    def check(
        token: object, keyring: Keyring, cls: type[EnvelopeError], **kw: Any
    ) -> EnvelopeError:
        with pytest.raises(cls) as info:
            verify_envelope(token, keyring, **kw)  # type: ignore[arg-type]
        exc = info.value
        assert type(exc) is cls, f"expected exactly {cls.__name__}, got {type(exc).__name__}: {exc}"
        assert exc.reason == REASONS[cls]
        assert str(exc).startswith(f"{REASONS[cls]}: ")
        return exc

    return check
