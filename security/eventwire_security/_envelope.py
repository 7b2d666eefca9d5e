"""Compact JWS envelopes (RFC 7515, ``alg: EdDSA`` per RFC 8037) around JSON claims.

Verification order is fixed: size, shape, protected header, key lookup, signature over the
exact received bytes, and only then the claims are parsed, strictly.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pydantic_core

from ._b64 import b64url_decode, b64url_encode
from ._errors import (
    BadSignature,
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

ALG = "EdDSA"
DEFAULT_MAX_BYTES = 1024 * 1024
_MAX_HEADER_BYTES = 512
_SIGNATURE_BYTES = 64
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


@dataclass(frozen=True, slots=True)
class VerifiedEnvelope:
    """An envelope whose signature verified and whose claims name the key's owner."""

    claims: dict[str, Any]
    signer: TrustedKey
    token: bytes


def encode_claims(claims: Mapping[str, Any]) -> bytes:
    """Serialize claims as compact UTF-8 JSON; NaN, Infinity and non-JSON types are refused."""
    if _plain(claims):  # only JSON's own types: pydantic_core writes them as JSON does
        return pydantic_core.to_json(claims)
    try:
        data = pydantic_core.to_json(claims)
    except (pydantic_core.PydanticSerializationError, ValueError) as exc:
        raise MalformedClaims(f"claims are not JSON: {exc}") from exc
    # pydantic_core also writes NaN, bytes, sets, dates...: if what it wrote does not read
    # back as the very same value, let the standard encoder decide (it refuses those).
    if b"NaN" in data or b"Infinity" in data or pydantic_core.from_json(data) != claims:
        data = _strict_encode(claims)
    return data


_SCALARS = (bool, int, type(None))


def _plain(value: Mapping[str, Any]) -> bool:
    """Whether ``value`` holds only dicts with str keys, lists, finite floats, ints, bools,
    None and strings without lone surrogates (which read back as exactly themselves)."""
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is str:
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    return False
        elif kind is dict:
            try:
                keys = "".join(item)  # TypeError unless every key is a str
            except TypeError:
                return False
            stack.append(keys)
            stack.extend(item.values())
        elif kind is list:
            stack.extend(item)
        elif kind is float:
            if not math.isfinite(item):
                return False
        elif kind not in _SCALARS:
            return False
    return True


def _strict_encode(claims: Mapping[str, Any]) -> bytes:
    try:
        return _ENCODER.encode(claims).encode()
    except (ValueError, TypeError) as exc:
        raise MalformedClaims(f"claims are not JSON: {exc}") from exc


@functools.lru_cache(maxsize=1024)
def _protected_header(kid: str) -> bytes:
    return b64url_encode(json.dumps({"alg": ALG, "kid": kid}, separators=(",", ":")).encode())


def signing_input(payload: bytes, kid: str) -> bytes:
    """The bytes an envelope's signature covers: ``b64url(header) "." b64url(payload)``."""
    return _protected_header(kid) + b"." + b64url_encode(payload)


def compact(signing_input: bytes, signature: bytes) -> bytes:
    """The compact JWS from its signing input and signature."""
    return signing_input + b"." + b64url_encode(signature)


def sign_payload(payload: bytes, identity: Identity) -> bytes:
    """Sign already-serialized JSON claims; return the compact JWS as bytes."""
    data = signing_input(payload, identity.kid)
    return compact(data, identity.sign(data))


def sign_claims(claims: Mapping[str, Any], identity: Identity) -> bytes:
    """Sign a claims mapping; ``source`` and ``tenant`` must name ``identity``'s owner."""
    principal = identity.principal
    if claims.get("source") != principal.source or claims.get("tenant") != principal.tenant:
        raise OwnerMismatch(f"claims must name source {principal.source!r}", kid=identity.kid)
    return sign_payload(encode_claims(claims), identity)


def message_id(token: bytes) -> str:
    """A de-duplication id bound to the signed bytes: the SHA-256 of the token's signature
    part. An Ed25519 signature commits to the whole signing input (header and payload) and
    is deterministic, so a retried publish of the same event has the same id, any other
    event another id, and nobody can know the id of an event before it is signed. Hashing
    the 86 signature characters instead of the whole token saves hashing every payload
    byte once more on the publish path."""
    return b64url_encode(hashlib.sha256(token[token.rfind(b".") + 1 :]).digest()).decode()


def _split(token: bytes, max_bytes: int) -> tuple[bytes, bytes, bytes]:
    if not isinstance(token, bytes | bytearray | memoryview):
        raise MalformedEnvelope(f"expected bytes, got {type(token).__name__}")
    if len(token) > max_bytes:
        raise OversizedEnvelope(f"{len(token)} bytes > limit {max_bytes}")
    parts = (token if type(token) is bytes else bytes(token)).split(b".")
    if len(parts) != 3:
        raise MalformedEnvelope(f"a compact JWS has 3 parts, got {len(parts)}")
    header, payload, signature = parts
    if len(header) > _MAX_HEADER_BYTES:
        raise MalformedEnvelope("protected header too large")
    return header, payload, signature


@functools.lru_cache(maxsize=4096)
def _read_kid(header_b64: bytes) -> str:
    """The kid of a protected header; cached, as a sender's header is the same every time."""
    try:
        header = strict_loads(b64url_decode(header_b64), max_depth=1)
    except ValueError as exc:
        raise MalformedEnvelope(f"protected header: {exc}") from exc
    if not isinstance(header, dict) or set(header) != {"alg", "kid"}:
        raise MalformedEnvelope("protected header must have exactly 'alg' and 'kid'")
    if header["alg"] != ALG:
        raise MalformedEnvelope(f"alg must be {ALG!r}, got {header['alg']!r}")
    kid = header["kid"]
    if not isinstance(kid, str) or not kid:
        raise MalformedEnvelope("kid must be a non-empty string")
    return kid


@dataclass(frozen=True, slots=True)
class UnverifiedEnvelope:
    """An envelope whose shape, header and key were checked, but not yet its signature.

    Split so a caller can run :meth:`signature_valid` (the costly, GIL-releasing part) on
    worker threads, then :meth:`open` on its own thread. Claims are never parsed before
    the signature over the exact received bytes has been checked.
    """

    token: bytes
    signer: TrustedKey
    signing_input: bytes
    signature: bytes
    payload_b64: bytes

    def signature_valid(self) -> bool:
        return self.signer.public_key.verify(self.signing_input, self.signature)

    def open(self, signature_valid: bool, *, max_depth: int = 32) -> VerifiedEnvelope:
        """Parse the claims strictly, given the outcome of :meth:`signature_valid`."""
        kid = self.signer.kid
        if not signature_valid:
            raise BadSignature("signature does not verify", kid=kid)
        try:
            claims = strict_loads(b64url_decode(self.payload_b64), max_depth=max_depth)
        except ValueError as exc:
            raise MalformedClaims(str(exc), kid=kid) from exc
        if not isinstance(claims, dict):
            raise MalformedClaims("claims must be a JSON object", kid=kid)
        principal = self.signer.principal
        if claims.get("source") != principal.source or claims.get("tenant") != principal.tenant:
            raise OwnerMismatch(
                f"source {claims.get('source')!r} / tenant {claims.get('tenant')!r} "
                f"is not the key owner {principal.source!r}",
                kid=kid,
            )
        return VerifiedEnvelope(claims=claims, signer=self.signer, token=self.token)


def read_envelope(
    token: bytes,
    keyring: Keyring,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    now: datetime | None = None,
) -> UnverifiedEnvelope:
    """Check size, shape, protected header and key; raise an :class:`EnvelopeError` if bad."""
    header_b64, payload_b64, signature_b64 = _split(token, max_bytes)
    data = token if type(token) is bytes else bytes(token)
    kid = _read_kid(header_b64)
    key = keyring.resolve(kid, now)
    try:
        signature = b64url_decode(signature_b64)
    except ValueError as exc:
        raise MalformedEnvelope(f"signature: {exc}", kid=kid) from exc
    if len(signature) != _SIGNATURE_BYTES:
        raise MalformedEnvelope("an Ed25519 signature is 64 bytes", kid=kid)
    return UnverifiedEnvelope(
        token=data,
        signer=key,
        signing_input=data[: len(header_b64) + 1 + len(payload_b64)],
        signature=signature,
        payload_b64=payload_b64,
    )


def verify_envelope(
    token: bytes,
    keyring: Keyring,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_depth: int = 32,
    now: datetime | None = None,
) -> VerifiedEnvelope:
    """Verify ``token`` and return its claims, or raise an :class:`EnvelopeError` subclass."""
    envelope = read_envelope(token, keyring, max_bytes=max_bytes, now=now)
    return envelope.open(envelope.signature_valid(), max_depth=max_depth)
