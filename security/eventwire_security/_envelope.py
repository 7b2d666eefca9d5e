"""JWS envelopes with Ed25519 (``alg: Ed25519``, RFC 9864) around JSON claims.

Two serializations of one signing scheme:

* **Events** (wire format v1): the message body is the claims document itself (the
  CloudEvents 1.0 JSON) and the signature travels beside it as a *detached* JWS with an
  unencoded payload (RFC 7515 appendix F, RFC 7797): the protected header is
  ``{"alg":"Ed25519","b64":false,"crit":["b64"],"kid":...}``, the signing input is
  ``b64url(header) "." body`` over the exact body bytes, and the header value is
  ``b64url(header) ".." b64url(signature)``.
* **Documents** that are stored where there are no headers (registry entries, the keyring,
  audit records): a compact JWS, ``b64url({"alg":"Ed25519","kid":...}) "." b64url(claims)
  "." b64url(signature)``.

Verification order is fixed for both: size, shape, protected header, key lookup,
signature over the exact received bytes, and only then the claims are parsed, strictly.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._b64 import b64url_decode, b64url_encode
from ._claims_json import encode_claims
from ._errors import (
    MalformedClaims,
    MalformedEnvelope,
    OversizedEnvelope,
    OwnerMismatch,
)
from ._json import strict_loads

if TYPE_CHECKING:
    from collections.abc import Mapping
    from datetime import datetime

    from ._keyring import Keyring
    from ._keys import Identity, TrustedKey

ALG = "Ed25519"
DEFAULT_MAX_BYTES = 1024 * 1024
_MAX_HEADER_BYTES = 512
_SIGNATURE_BYTES = 64
_SIGNATURE_B64 = 86  # 64 bytes, unpadded base64url
_COMPACT_KEYS = frozenset({"alg", "kid"})
_DETACHED_KEYS = frozenset({"alg", "b64", "crit", "kid"})


@dataclass(frozen=True, slots=True)
class VerifiedEnvelope:
    """Claims whose signature verified and which name the key's owner. ``token``: the exact
    bytes received (the compact JWS of a document, or the body of an event)."""

    claims: dict[str, Any]
    signer: TrustedKey
    token: bytes


@functools.lru_cache(maxsize=1024)
def _compact_header(kid: str) -> bytes:
    return b64url_encode(json.dumps({"alg": ALG, "kid": kid}, separators=(",", ":")).encode())


@functools.lru_cache(maxsize=1024)
def _detached_header(kid: str) -> bytes:
    header = {"alg": ALG, "b64": False, "crit": ["b64"], "kid": kid}
    return b64url_encode(json.dumps(header, separators=(",", ":")).encode())


def signing_input(payload: bytes, kid: str) -> bytes:
    """The bytes a compact JWS's signature covers: ``b64url(header) "." b64url(payload)``."""
    return _compact_header(kid) + b"." + b64url_encode(payload)


def detached_signing_input(body: bytes, kid: str) -> bytes:
    """The bytes a detached event signature covers: ``b64url(header) "." body`` (RFC 7797)."""
    return _detached_header(kid) + b"." + body


def compact(signing_input: bytes, signature: bytes) -> bytes:
    """The compact JWS from its signing input and signature."""
    return signing_input + b"." + b64url_encode(signature)


def sign_payload(payload: bytes, identity: Identity) -> bytes:
    """Sign already-serialized JSON claims; return the compact JWS as bytes."""
    data = signing_input(payload, identity.kid)
    return compact(data, identity.sign(data))


def _check_owner(claims: Mapping[str, Any], identity: Identity) -> None:
    principal = identity.principal
    if claims.get("source") != principal.source or claims.get("tenant") != principal.tenant:
        raise OwnerMismatch(f"claims must name source {principal.source!r}", kid=identity.kid)


def sign_claims(claims: Mapping[str, Any], identity: Identity) -> bytes:
    """A compact JWS of ``claims`` (a document); ``source`` and ``tenant`` must name
    ``identity``'s owner."""
    _check_owner(claims, identity)
    return sign_payload(encode_claims(claims), identity)


def sign_detached(body: bytes, identity: Identity) -> str:
    """The detached JWS (``header..signature``) of an already-serialized event body."""
    header = _detached_header(identity.kid)
    signature = identity.sign(header + b"." + body)
    return (header + b".." + b64url_encode(signature)).decode("ascii")


@dataclass(frozen=True, slots=True)
class SignedEvent:
    """An event body and its detached signature, ready to send."""

    body: bytes
    signature: str

    @property
    def message_id(self) -> str:
        return message_id(self.signature)


def sign_event(claims: Mapping[str, Any], identity: Identity) -> SignedEvent:
    """Serialize ``claims`` (the CloudEvents document) and sign it, detached."""
    _check_owner(claims, identity)
    body = encode_claims(claims)
    return SignedEvent(body, sign_detached(body, identity))


def message_id(signature: bytes | str) -> str:
    """A de-duplication id bound to the signed bytes: the SHA-256 of the signature part of a
    JWS (compact or detached). An Ed25519 signature commits to the whole signing input and is
    deterministic, so a retried publish of the same event has the same id, any other event
    another id, and nobody can know the id of an event before it is signed."""
    raw = signature.encode("ascii") if isinstance(signature, str) else signature
    return b64url_encode(hashlib.sha256(raw[raw.rfind(b".") + 1 :]).digest()).decode()


def _header(header_b64: bytes, keys: frozenset[str]) -> dict[str, Any]:
    if len(header_b64) > _MAX_HEADER_BYTES:
        raise MalformedEnvelope("protected header too large")
    try:  # a compact header is flat; a detached one has the one-level "crit" list
        header = strict_loads(b64url_decode(header_b64), max_depth=1 if len(keys) == 2 else 2)
    except ValueError as exc:
        raise MalformedEnvelope(f"protected header: {exc}") from exc
    if not isinstance(header, dict) or set(header) != keys:
        *first, last = (repr(key) for key in sorted(keys))
        raise MalformedEnvelope(f"protected header must have exactly {', '.join(first)} and {last}")
    if header["alg"] != ALG:
        raise MalformedEnvelope(f"alg must be {ALG!r}, got {header['alg']!r}")
    kid = header["kid"]
    if not isinstance(kid, str) or not kid:
        raise MalformedEnvelope("kid must be a non-empty string")
    return header


@functools.lru_cache(maxsize=4096)
def _compact_kid(header_b64: bytes) -> str:
    """The kid of a compact protected header; cached, as a sender's header never changes."""
    return str(_header(header_b64, _COMPACT_KEYS)["kid"])


@functools.lru_cache(maxsize=4096)
def _detached_kid(header_b64: bytes) -> str:
    """The kid of a detached protected header, which must declare the unencoded payload."""
    header = _header(header_b64, _DETACHED_KEYS)
    if header["b64"] is not False or header["crit"] != ["b64"]:
        raise MalformedEnvelope('a detached event signature has "b64": false, "crit": ["b64"]')
    return str(header["kid"])


def _signature(signature_b64: bytes, kid: str) -> bytes:
    try:
        signature = b64url_decode(signature_b64)
    except ValueError as exc:
        raise MalformedEnvelope(f"signature: {exc}", kid=kid) from exc
    if len(signature) != _SIGNATURE_BYTES:
        raise MalformedEnvelope("an Ed25519 signature is 64 bytes", kid=kid)
    return signature


def _as_bytes(data: object, max_bytes: int) -> bytes:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedEnvelope(f"expected bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise OversizedEnvelope(f"{len(data)} bytes > limit {max_bytes}")
    return data if type(data) is bytes else bytes(data)


@dataclass(frozen=True, slots=True)
class UnverifiedEnvelope:
    """An envelope whose shape, header and key were checked, but not yet its signature.

    :meth:`verify` checks the signature over the exact received bytes, and only then
    parses the claims; it raises, it never returns a verdict to be forgotten.
    """

    signer: TrustedKey
    signing_input: bytes
    signature: bytes
    token: bytes  # the exact bytes received: a compact JWS, or an event's body
    payload_b64: bytes | None = None  # a compact JWS's payload, decoded once verified

    def verify(self, *, max_depth: int = 32) -> VerifiedEnvelope:
        """Check the signature, then parse the claims strictly and check their owner."""
        return self.check_signature().parse(max_depth=max_depth)

    def check_signature(self) -> SignatureChecked:
        """The first step of :meth:`verify` alone: the signature over the exact bytes
        (:class:`BadSignature` if it does not verify). It touches no claims and no shared
        state, so it may run on another thread (libsodium releases the GIL)."""
        self.signer.public_key.verify(self.signing_input, self.signature)
        return SignatureChecked(self)


@dataclass(frozen=True, slots=True)
class SignatureChecked:
    """An envelope whose signature verified (made only by
    :meth:`UnverifiedEnvelope.check_signature`); :meth:`parse` is the second step."""

    envelope: UnverifiedEnvelope

    def parse(self, *, max_depth: int = 32) -> VerifiedEnvelope:
        """Parse the verified claims strictly and check that they name the key's owner."""
        envelope = self.envelope
        kid = envelope.signer.kid
        try:
            token, payload_b64 = envelope.token, envelope.payload_b64
            payload = token if payload_b64 is None else b64url_decode(payload_b64)
            claims = strict_loads(payload, max_depth=max_depth)
        except ValueError as exc:
            raise MalformedClaims(str(exc), kid=kid) from exc
        if not isinstance(claims, dict):
            raise MalformedClaims("claims must be a JSON object", kid=kid)
        principal = envelope.signer.principal
        if claims.get("source") != principal.source or claims.get("tenant") != principal.tenant:
            raise OwnerMismatch(
                f"source {claims.get('source')!r} / tenant {claims.get('tenant')!r} "
                f"is not the key owner {principal.source!r}",
                kid=kid,
            )
        return VerifiedEnvelope(claims=claims, signer=envelope.signer, token=envelope.token)


def read_envelope(
    token: bytes,
    keyring: Keyring,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    now: datetime | None = None,
) -> UnverifiedEnvelope:
    """A compact JWS: check size, shape, protected header and key."""
    data = _as_bytes(token, max_bytes)
    parts = data.split(b".")
    if len(parts) != 3:
        raise MalformedEnvelope(f"a compact JWS has 3 parts, got {len(parts)}")
    header_b64, payload_b64, signature_b64 = parts
    kid = _compact_kid(header_b64)
    key = keyring.resolve(kid, now)
    return UnverifiedEnvelope(
        signer=key,
        signing_input=data[: len(header_b64) + 1 + len(payload_b64)],
        signature=_signature(signature_b64, kid),
        token=data,
        payload_b64=payload_b64,
    )


def read_detached(
    body: bytes,
    signature: str | bytes | None,
    keyring: Keyring,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    now: datetime | None = None,
) -> UnverifiedEnvelope:
    """An event body and its detached JWS: check sizes, shape, protected header and key."""
    data = _as_bytes(body, max_bytes)
    if signature is None:
        raise MalformedEnvelope("unsigned: no detached signature")
    if isinstance(signature, str):
        if not signature.isascii():
            raise MalformedEnvelope("a detached JWS is ASCII")
        signature = signature.encode("ascii")
    if not isinstance(signature, bytes) or len(signature) > _MAX_HEADER_BYTES + 2 + _SIGNATURE_B64:
        raise MalformedEnvelope("a detached JWS is a short ASCII string")
    parts = signature.split(b".")
    if len(parts) != 3 or parts[1]:
        raise MalformedEnvelope("a detached JWS is 'header..signature'")
    header_b64, _, signature_b64 = parts
    kid = _detached_kid(header_b64)
    key = keyring.resolve(kid, now)
    return UnverifiedEnvelope(
        signer=key,
        signing_input=header_b64 + b"." + data,
        signature=_signature(signature_b64, kid),
        token=data,
    )


def verify_envelope(
    token: bytes,
    keyring: Keyring,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_depth: int = 32,
    now: datetime | None = None,
) -> VerifiedEnvelope:
    """Verify a compact JWS and return its claims, or raise an :class:`EnvelopeError`."""
    return read_envelope(token, keyring, max_bytes=max_bytes, now=now).verify(max_depth=max_depth)


def verify_event(
    body: bytes,
    signature: str | bytes | None,
    keyring: Keyring,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_depth: int = 32,
    now: datetime | None = None,
) -> VerifiedEnvelope:
    """Verify an event body against its detached JWS and return its claims, or raise an
    :class:`EnvelopeError`."""
    envelope = read_detached(body, signature, keyring, max_bytes=max_bytes, now=now)
    return envelope.verify(max_depth=max_depth)
